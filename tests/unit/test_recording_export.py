"""``recordings export``: a real two-participant recording into one MP4, flash and beep in sync."""

from __future__ import annotations

import argparse
import fractions
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder

from mediaserver.recording.crypto import KeyRing, parse_keks
from mediaserver.recording.recorder import MANIFEST_NAME, RecordingSession
from mediaserver.recording.tools import EXIT_OK, EXIT_USAGE, add_recordings_parser
from mediaserver.sfu.rtp import RtpPacket, build_rtp, parse_rtp
from mediaserver.sfu.seqnum import Unwrapper

KEK_LINE = "k1:" + "A" * 43 + "=\n"
RING: KeyRing = parse_keks(KEK_LINE)
T0, WALL0 = 1000.0, 1_750_000_000.0
FPS = 15
FLASH_FRAME = 30  # A's video turns white here: 2.0 s at 15 fps
BEEP_SAMPLE = 96000  # A's 1 kHz tone starts here: 2.0 s at 48 kHz
LENGTH = 4.0  # seconds recorded
B_JOINS = 1.0


def rtp(seq: int, ts: int, payload: bytes, marker: bool) -> RtpPacket:
    pkt = parse_rtp(build_rtp(marker=marker, payload_type=96, sequence_number=seq,
                              timestamp=ts, ssrc=1234, extensions=[], payload=payload))
    assert pkt is not None
    return pkt


class Packets:
    def __init__(self, seq0: int, ts0: int) -> None:
        self.seq, self.ts0 = seq0, ts0
        self.seq_unwrap, self.ts_unwrap = Unwrapper(16), Unwrapper(32)

    def wrap(self, payloads: list[bytes], ts: int, marker: bool) -> list[tuple[RtpPacket, int,
                                                                            int]]:
        out = []
        for i, payload in enumerate(payloads):
            pkt = rtp(self.seq & 0xFFFF, (self.ts0 + ts) & 0xFFFFFFFF, payload,
                      marker and i == len(payloads) - 1)
            out.append((pkt, self.seq_unwrap.unwrap(pkt.sequence_number),
                        self.ts_unwrap.unwrap(pkt.timestamp)))
            self.seq += 1
        return out


class VideoSource(Packets):
    """160x120 at 15 fps through aiortc's Vp8Encoder; ``level(i)`` is frame i's grey."""

    def __init__(self, level: Callable[[int], int], seq0: int, ts0: int) -> None:
        super().__init__(seq0, ts0)
        self.encoder, self.level, self.index = Vp8Encoder(), level, 0

    def frame(self, force_keyframe: bool) -> list[tuple[RtpPacket, int, int]]:
        image = np.full((120, 160, 3), self.level(self.index), np.uint8)
        vf = av.VideoFrame.from_ndarray(image, format="rgb24")
        vf.pts, vf.time_base = self.index * 90000 // FPS, fractions.Fraction(1, 90000)
        self.index += 1
        payloads, ts = self.encoder.encode(vf, force_keyframe=force_keyframe)
        return self.wrap(payloads, ts, True)


class BeepSource(Packets):
    """Silence, then a 1 kHz tone from sample ``BEEP_SAMPLE``; 20 ms Opus packets."""

    def __init__(self) -> None:
        super().__init__(65530, 123456)
        self.encoder, self.index = OpusEncoder(), 0

    def frame(self) -> list[tuple[RtpPacket, int, int]]:
        n = np.arange(960) + self.index * 960
        tone = np.sin(2 * np.pi * 1000 * n / 48000) * 8000 * (n >= BEEP_SAMPLE)
        af = av.AudioFrame.from_ndarray(np.repeat(tone.astype(np.int16), 2).reshape(1, -1),
                                        format="s16", layout="stereo")
        af.sample_rate, af.pts = 48000, self.index * 960
        af.time_base = fractions.Fraction(1, 48000)
        self.index += 1
        payloads, ts = self.encoder.encode(af)
        return self.wrap(payloads, ts, False)


def record(root: Path) -> dict[str, Any]:
    """A: video (dark, white from 2.0 s) + audio (beep from 2.0 s); B: video from 1.0 s.

    Every packet is handed over at its capture time (``now``), so the only offsets between
    the tracks are the ones the recording itself introduces.
    """
    session = RecordingSession(root, RING, "rec-x", now=T0, wall_time=WALL0)
    a_video = session.add_track("A_video", kind="video", codec_name="VP8", clock_rate=90000,
                                participant="alice", now=T0)
    a_audio = session.add_track("A_audio", kind="audio", codec_name="opus", clock_rate=48000,
                                participant="alice", now=T0)
    a_src = VideoSource(lambda i: 235 if i >= FLASH_FRAME else 16, 100, 5000)
    b_src = VideoSource(lambda i: 128, 40000, 777)
    beep = BeepSource()
    b_video = None
    events: list[tuple[float, int, Callable[[float], None]]] = []

    def a_frame(now: float) -> None:
        for pkt, seq, ts in a_src.frame(a_video.needs_keyframe):
            a_video.on_packet(pkt, seq, ts, False, now)

    def b_frame(now: float) -> None:
        nonlocal b_video
        if b_video is None:
            b_video = session.add_track("B_video", kind="video", codec_name="VP8",
                                        clock_rate=90000, participant="bob", now=now)
        for pkt, seq, ts in b_src.frame(b_video.needs_keyframe):
            b_video.on_packet(pkt, seq, ts, False, now)

    def a_beep(now: float) -> None:
        for pkt, seq, ts in beep.frame():
            a_audio.on_packet(pkt, seq, ts, False, now)

    for i in range(round(LENGTH * FPS)):
        events.append((T0 + i / FPS, 0, a_frame))
        if i >= B_JOINS * FPS:
            events.append((T0 + i / FPS, 1, b_frame))
    for j in range(round(LENGTH * 50)):
        events.append((T0 + j * 0.02, 2, a_beep))
    for now, _, action in sorted(events, key=lambda e: e[:2]):
        action(now)
    return session.close(T0 + LENGTH)


def seconds(frame: Any) -> float:
    assert frame.pts is not None and frame.time_base is not None
    return float(frame.pts * frame.time_base)


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_recordings_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.handler(args, {}))


def test_export_lines_up_flash_and_beep(tmp_path: Path) -> None:
    manifest = record(tmp_path / "recordings")
    rec = tmp_path / "recordings" / "rec-x"
    before = sorted(p.name for p in rec.iterdir())
    keys = tmp_path / "keks"
    keys.write_text(KEK_LINE)
    keys.chmod(0o600)
    out = tmp_path / "out" / "export.mp4"
    out.parent.mkdir()

    assert run_cli(["recordings", "export", str(rec), str(out), "--keys", str(keys),
                    "--size", "320x240", "--fps", str(FPS)]) == EXIT_OK
    assert sorted(p.name for p in rec.iterdir()) == before  # no plaintext next to it
    assert MANIFEST_NAME in before
    assert out.stat().st_mode & 0o777 == 0o600
    # Never overwrites, never writes into the recordings directory.
    assert run_cli(["recordings", "export", str(rec), str(out), "--keys", str(keys)]) \
        == EXIT_USAGE
    assert run_cli(["recordings", "export", str(rec), str(rec / "x.mp4"), "--keys",
                    str(keys)]) == EXIT_USAGE
    assert not (rec / "x.mp4").exists()

    length = max(t["first_frame"]["offset"] + t["duration"] for t in manifest["tracks"])
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.audio[0].codec_context.name == "aac"
        assert container.duration is not None
        duration = container.duration / av.time_base
        video = [(seconds(f), f.to_ndarray(format="rgb24"))
                 for f in container.decode(video=0)]
        container.seek(0)
        audio = [(seconds(f), f.to_ndarray().reshape(-1))
                 for f in container.decode(audio=0)]

    # (1) decodes, (2) lasts as long as the recording.
    assert len(video) == pytest.approx(length * FPS, abs=1)
    assert {img.shape for _, img in video} == {(240, 320, 3)}
    assert duration == pytest.approx(length, rel=0.05)

    # Two participants: A left, B right (160x240 tiles; 160x120 video centred in each).
    def a_level(img: np.ndarray) -> float:
        return float(img[90:150, 20:140].mean())

    def b_level(img: np.ndarray) -> float:
        return float(img[90:150, 180:300].mean())

    flash = next(t for t, img in video if a_level(img) > 180)
    assert all(a_level(img) < 60 for t, img in video if t < flash)
    b_start = next(t for t, img in video if b_level(img) > 80)
    assert all(b_level(img) < 10 for t, img in video if t < b_start)  # black: not there
    assert b_start == pytest.approx(B_JOINS, abs=1.5 / FPS)

    # (3) the first 1 ms window with tone energy; samples are placed by their pts.
    start = audio[0][0]
    samples = np.concatenate([s for _, s in audio])
    window = 48
    rms = np.sqrt(np.mean(samples[:len(samples) // window * window]
                          .reshape(-1, window) ** 2, axis=1))
    beep = start + int(np.argmax(rms > 0.05)) * window / 48000
    assert rms.max() > 0.05
    print(f"flash at {flash:.3f} s, beep at {beep:.3f} s, offset {beep - flash:+.3f} s")
    assert flash == pytest.approx(2.0, abs=0.1)
    assert beep == pytest.approx(2.0, abs=0.1)
    assert abs(beep - flash) <= 0.1
