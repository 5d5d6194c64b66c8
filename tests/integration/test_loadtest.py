"""The load-test CLI end to end: `python -m loadtest` in a subprocess against a real server
in this process, plus table tests of the measuring pieces it relies on."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadtest.__main__ import main
from loadtest.media import (
    STRIP,
    frames_kbps,
    latency_ms,
    read_frame_number,
    read_stamp,
    replay_frames,
    synthetic_image,
)
from loadtest.profiles import CLEAN, PROFILES, PacketTap, assign_profiles, parse_profile
from loadtest.report import TrackStats

ROOT = Path(__file__).resolve().parents[2]


async def run_cli(*args: str, timeout: float = 90) -> tuple[int, str, str]:
    """Run the CLI as its own process (its own CPU, its own event loop) while this process's
    event loop keeps serving the server."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtest", "--quiet", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def run_report(tmp_path: Path, *args: str, expect: int = 0, timeout: float = 90
                     ) -> tuple[dict[str, Any], str]:
    """Run the CLI with ``--json``; check its exit code; the JSON document and stdout."""
    report = tmp_path / "report.json"
    code, out, err = await run_cli(*args, "--json", str(report), timeout=timeout)
    assert code == expect, out + err
    return json.loads(report.read_text()), out


async def test_full_run_measures_every_track_and_passes(server, tmp_path):
    doc, out = await run_report(
        tmp_path, "--url", server.ws_url, "--rooms", "1", "--participants-per-room", "3",
        "--video", "160x120@10", "--duration", "8", "--ramp-up", "10", "--max-loss", "0.05")
    video = [t for t in doc["tracks"] if t["kind"] == "video"]
    audio = [t for t in doc["tracks"] if t["kind"] == "audio"]
    assert len(video) == len(audio) == 6  # 3 subscribers x 2 other publishers
    for t in video:
        assert t["decoded"] and t["fps"] > 5, t
        assert t["latency_ms"]["p95"] is not None and t["latency_ms"]["p95"] < 1000, t
        assert t["first_frame_ms"] is not None and t["first_frame_ms"] < 5000, t
        assert t["packets"] > 0 and t["kbps"] > 0, t
    for t in audio:
        assert t["frames"] > 100 and t["audio_pattern_ok"] > 0.9, t  # whose tone it is
    summary = doc["summary"]
    assert summary["join_ms"]["max"] is not None
    assert summary["tracks_received"] == summary["tracks_expected"] == 12
    assert doc["passed"] and doc["failures"] == []
    assert "result: PASS" in out and "lat p95" in out
    assert doc["generator"]["cpu_pct"] > 0 and doc["generator"]["lag_ms"]["p95"] is not None


async def test_an_impossible_threshold_fails_the_run(server, tmp_path):
    doc, out = await run_report(
        tmp_path, "--url", server.ws_url, "--participants-per-room", "2", "--video",
        "160x120@10", "--duration", "3", "--min-fps", "1000", expect=1)
    assert not doc["passed"]
    assert any(f.startswith("min video fps") for f in doc["failures"]), doc["failures"]
    assert "result: FAIL" in out


async def test_cheap_mode_counts_packets_and_decodes_nothing(server, tmp_path):
    doc, out = await run_report(
        tmp_path, "--url", server.ws_url, "--rooms", "2", "--participants-per-room", "2",
        "--video", "160x120@10", "--duration", "4", "--ramp-up", "10", "--mode", "cheap",
        "--video-bitrate", "60", "--max-loss", "0.05")
    assert len(doc["tracks"]) == 8  # 2 rooms x 2 subscribers x (video + audio)
    for t in doc["tracks"]:
        assert not t["decoded"] and "frames" not in t and "latency_ms" not in t, t
        assert t["packets"] > 0 and t["loss"] is not None, t
    assert doc["summary"]["latency_ms"]["p95"] is None
    assert {t["room"] for t in doc["tracks"]} == {"room0", "room1"}
    assert doc["scenario"]["video_bitrate_kbps"] == 60
    assert 45 <= doc["replay_video_kbps"] <= 75, doc["replay_video_kbps"]
    assert "nothing decoded" in out and "replayed at" in out


async def test_a_bandwidth_capped_participant_loses_what_its_link_cannot_carry(server, tmp_path):
    # p1's downlink is capped at 200 kbit/s with a 100 ms queue; p0's is clean. p1 is sent
    # about 400 kbit/s of video and 130 of audio (cheap mode: the server gets no feedback).
    doc, _ = await run_report(
        tmp_path, "--url", server.ws_url, "--rooms", "1", "--participants-per-room", "2",
        "--video", "320x240@15", "--duration", "5", "--ramp-up", "10", "--mode", "cheap",
        "--video-bitrate", "400", "--profile", "rate=200,queue=100:1")
    by_label = {p["label"]: p for p in doc["participants"]}
    assert by_label["p0"]["profile"] == "clean" and by_label["p0"]["profile_queue_drops"] == 0
    capped = by_label["p1"]
    assert capped["profile"] == "rate=200,queue=100"
    received = sum(t["packets"] for t in doc["tracks"] if t["subscriber"] == "p1")
    # Roughly 200 of 530 kbit/s get through: well over a third of the packets are dropped.
    assert capped["profile_queue_drops"] > 0.35 * received, (capped, received)


async def test_a_capped_participant_that_says_so_gets_audio_only(server, tmp_path):
    # --start-hint: p1 (capped at 100 kbit/s) tells the server its rate when it joins. Audio
    # plus p0's video do not fit, so the server holds the video back from the start; cheap
    # subscribers send no reports, so no probe ever lets it in. p0 is unaffected.
    doc, out = await run_report(
        tmp_path, "--url", server.ws_url, "--rooms", "1", "--participants-per-room", "2",
        "--video", "320x240@15", "--duration", "4", "--ramp-up", "10", "--mode", "cheap",
        "--video-bitrate", "300", "--profile", "rate=100:1", "--start-hint")
    assert doc["scenario"]["start_hint"] is True
    got = {(t["subscriber"], t["kind"]): t["packets"] for t in doc["tracks"]}
    assert got[("p1", "audio")] > 100 and got.get(("p1", "video"), 0) == 0, got
    assert got[("p0", "audio")] > 100 and got[("p0", "video")] > 20, got
    # Held back by the server, so reported as such and not as a track that never arrived.
    assert doc["summary"]["missing"] == [], doc["summary"]
    assert doc["summary"]["paused_by_server"] == ["p1 <- p0 video (audio_only)"], doc["summary"]
    assert "paused by the server at the end: 1 track(s)" in out


async def test_simulcast_publishers_and_one_layer_per_subscriber(server, tmp_path):
    # Two simulcast publishers (80x60, 160x120, 320x240) and one plain subscriber, decoded.
    doc, _ = await run_report(
        tmp_path, "--url", server.ws_url, "--rooms", "1", "--participants-per-room", "3",
        "--publishers", "2", "--video", "320x240@15", "--video-bitrate", "300", "--simulcast",
        "--duration", "6", "--ramp-up", "10", timeout=150)
    assert doc["scenario"]["simulcast"] is True
    video = [t for t in doc["tracks"] if t["kind"] == "video"]
    assert len(video) == 4  # p2 sees p0 and p1; p0 and p1 see each other
    for t in video:
        # One layer per subscriber, not three (their sum is ~450 kbit/s), decoded.
        # ... at the publisher's frame rate, p2's two videos included (each had its lowest
        # layer reserved before either got more: neither starts paused).
        assert t["decoded"] and t["packets"] > 0 and t["fps"] > 10, t
        assert t["kbps"] < 400 and t["loss"] < 0.02, t
    audio = [t for t in doc["tracks"] if t["kind"] == "audio"]
    assert all(t["audio_pattern_ok"] > 0.9 for t in audio), audio  # each publisher's own tone


async def test_unreachable_server_and_bad_options_exit_2(tmp_path):
    code, _, err = await run_cli("--url", "ws://127.0.0.1:9/v1/signal", "--duration", "1",
                                 timeout=30)
    assert code == 2 and "cannot connect" in err
    assert main(["--kind", "one_to_one", "--participants-per-room", "3"]) == 2
    assert main(["--mode", "cheap", "--min-fps", "10"]) == 2
    assert main(["--profile", "nonsense"]) == 2
    assert main(["--video-bitrate", "500"]) == 2  # full mode encodes live


def test_replay_holds_the_requested_video_bitrate() -> None:
    """--video-bitrate 500 at 640x480@25: the warmed-up replay is within 10 % of 500 kbps,
    from its first frame (a key frame) on."""
    frames = replay_frames(640, 480, 25, bitrate=500_000, warmup=1.0)
    assert len(frames) == 50
    assert 450 <= frames_kbps(frames, 25) <= 550
    assert 450 <= frames_kbps(frames[:25], 25) <= 550  # no slow start at the loop's head
    assert frames[0][0] & 1 == 0  # VP8 frame tag: a key frame


# -- the measuring pieces, as tables ---------------------------------------------------------


@pytest.mark.parametrize(("stamp", "now", "expected"), [
    (1000, 1.050, 50),  # 1050 ms read, stamped at 1000
    (65530, 65.546 + 65.536, 10 + 6),  # the 16-bit stamp wrapped between send and receive
    (0, 65.536, 0),
])
def test_latency_from_a_16_bit_stamp(stamp: int, now: float, expected: int) -> None:
    assert latency_ms(stamp, now) == expected


def test_stamp_and_number_survive_drawing_and_a_flipped_block_is_refused() -> None:
    base = np.full((120, 160, 3), 80, dtype=np.uint8)
    img = synthetic_image(base, 4242, 51234)
    assert read_frame_number(img) == 4242 and read_stamp(img) == 51234
    img[STRIP:2 * STRIP, 0:8] = 255 - img[STRIP:2 * STRIP, 0:8]  # one stamp bit misread
    assert read_stamp(img) is None


def test_a_frame_narrower_than_the_number_strip_reads_its_low_bits() -> None:
    narrow = synthetic_image(np.full((60, 80, 3), 80, dtype=np.uint8), 0b1100_0000_0101, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice" from the missing blocks
        assert read_frame_number(narrow) == 0b0101  # 80 px hold bits 0-9; 10 and 11 are lost


def test_track_stats_count_freezes_skips_and_a_trailing_stall() -> None:
    stats = TrackStats("video", fps=10)  # freeze: a gap over 0.3 s
    for now, number in [(0.0, 0), (0.1, 1), (0.2, 2), (0.7, 3), (0.8, 6)]:
        stats.on_video(now, number, 40)
    assert (stats.frames, stats.stalls, stats.skipped) == (5, 1, 2)
    assert stats.stalls_until(0.9) == (1, pytest.approx(0.5))
    assert stats.stalls_until(2.0) == (2, pytest.approx(0.5 + 1.2))


def _rtp(seq: int, ssrc: int = 7) -> bytes:
    return bytes([0x80, 96]) + seq.to_bytes(2, "big") + bytes(4) + ssrc.to_bytes(4, "big") + b"x"


@pytest.mark.parametrize(("seqs", "received", "lost"), [
    ([1, 2, 3, 4], 4, 0),
    ([1, 2, 4, 5], 4, 1),
    ([65534, 65535, 0, 2], 4, 1),  # across the wrap, 1 missing
    ([10, 12, 11, 13], 4, 0),  # reordered, nothing lost
])
def test_packet_tap_counts_loss_from_sequence_numbers(seqs: list[int], received: int,
                                                      lost: int) -> None:
    tap = PacketTap(CLEAN, random.Random(1), drop_rtp=True)
    drops = [tap.on_datagram(_rtp(s), now=i * 0.02) for i, s in enumerate(seqs)]
    assert all(drops)  # cheap mode: counted, then dropped before SRTP
    (stream,) = tap.streams.values()
    assert (stream.received, stream.lost) == (received, lost)
    assert not tap.on_datagram(b"\x00\x01" + bytes(18), now=1.0)  # STUN passes, uncounted


def test_profiles_parse_and_fill_from_the_last_participant() -> None:
    three_g = parse_profile("3g:1")
    assert three_g.profile.delay_ms == 150 and three_g.count == 1
    assert assign_profiles([three_g, parse_profile("lossy:1")], 4) == [
        CLEAN, CLEAN, PROFILES["lossy"], PROFILES["3g"]]
    with pytest.raises(ValueError):
        parse_profile("3g:zero")


def test_lossy_profile_drops_about_its_share() -> None:
    tap = PacketTap(PROFILES["lossy"], random.Random(3), drop_rtp=False)
    dropped = sum(tap.on_datagram(_rtp(i), now=0.0) for i in range(4000))
    assert 0.04 < dropped / 4000 < 0.06 and tap.impaired == dropped
