"""Recording: RTP -> frames (tables), frames -> encrypted WebM (real aiortc encoders)."""

from __future__ import annotations

import fractions
import io
import json
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder
from hypothesis import given, settings
from hypothesis import strategies as st

from mediaserver.recording.crypto import EncryptedReader, KeyRing, decrypt_stream, parse_keks
from mediaserver.recording.depacketize import (
    DepacketizerStats,
    Frame,
    OpusDepacketizer,
    ReorderBuffer,
    Vp8Depacketizer,
)
from mediaserver.recording.errors import RecordingError
from mediaserver.recording.recorder import (
    MANIFEST_NAME,
    RecordingSession,
    TrackRecorder,
    vp8_dimensions,
)
from mediaserver.sfu.rtcp import ntp_from_seconds
from mediaserver.sfu.rtp import RtpPacket, build_rtp, parse_rtp
from mediaserver.sfu.seqnum import Unwrapper

RING: KeyRing = parse_keks("k1:" + "A" * 43 + "=\n")
WEBM_MAGIC = b"\x1a\x45\xdf\xa3"
KEY = b"\x10"  # VP8 descriptor: S=1, partition 0, no extensions
CONT = b"\x00"  # continuation of a partition
KEY_BODY = bytes.fromhex("5002009d012aa000780000")  # keyframe tag, start code, 160x120
INTER_BODY = b"\x01\x02\x03"


def rtp(seq: int, ts: int, payload: bytes, marker: bool = False) -> RtpPacket:
    pkt = parse_rtp(build_rtp(marker=marker, payload_type=96, sequence_number=seq,
                              timestamp=ts, ssrc=1234, extensions=[], payload=payload))
    assert pkt is not None
    return pkt


# -- depacketizer tables ---------------------------------------------------------------------

# A frame is (name, key?, packets); each packet is (descriptor, body). Sequence numbers are
# assigned in order starting at ``SEQ0``; rows then reorder, drop or repeat them by index.
SEQ0 = 65530  # the stream wraps across 65535 -> 0 inside every table
STREAM = [
    ("k0", [(KEY, KEY_BODY), (CONT, b"k0-b"), (CONT, b"k0-c")]),
    ("p1", [(KEY, INTER_BODY), (CONT, b"p1-b")]),
    ("p2", [(KEY, INTER_BODY), (CONT, b"p2-b"), (CONT, b"p2-c")]),
    ("k3", [(KEY, KEY_BODY), (CONT, b"k3-b")]),
    ("p4", [(KEY, INTER_BODY)]),
]


def vp8_stream() -> list[tuple[int, int, bytes, bool]]:
    """(seq16, ts32, payload, marker) for STREAM; timestamps wrap across 2**32 as well."""
    out = []
    seq = SEQ0
    for i, (_, packets) in enumerate(STREAM):
        ts = (0xFFFFFFFF - 3000 + i * 3000) & 0xFFFFFFFF
        for j, (desc, body) in enumerate(packets):
            out.append((seq & 0xFFFF, ts, desc + body, j == len(packets) - 1))
            seq += 1
    return out


def feed(depack: Vp8Depacketizer | OpusDepacketizer, order: list[int],
         packets: list[tuple[int, int, bytes, bool]], dt: float = 0.001) -> list[Frame]:
    seq_unwrap, ts_unwrap = Unwrapper(16), Unwrapper(32)
    frames: list[Frame] = []
    for n, i in enumerate(order):
        seq, ts, payload, marker = packets[i]
        frames += depack.push(rtp(seq, ts, payload, marker), seq_unwrap.unwrap(seq),
                              ts_unwrap.unwrap(ts), n * dt)
    return frames


def names(frames: list[Frame]) -> list[str]:
    by_ts = {}
    ts = (1 << 32) + 0xFFFFFFFF - 3000  # what Unwrapper makes of the first timestamp
    for i, (name, _) in enumerate(STREAM):
        by_ts[ts + i * 3000] = name
    return [by_ts[f.timestamp] for f in frames]


ALL = list(range(11))  # 11 packets in STREAM


@pytest.mark.parametrize(
    ("case", "order", "expected", "needs_keyframe", "drops"),
    [
        ("in order", ALL, ["k0", "p1", "p2", "k3", "p4"], False, {}),
        ("reordered inside a frame", [0, 2, 1, *ALL[3:]], ["k0", "p1", "p2", "k3", "p4"],
         False, {}),
        ("reordered across frames", [0, 1, 2, 4, 3, 6, 7, 5, *ALL[8:]],
         ["k0", "p1", "p2", "k3", "p4"], False, {}),
        ("duplicate packets", [0, 1, 1, 2, 3, 4, 4, 0, *ALL[5:]],
         ["k0", "p1", "p2", "k3", "p4"], False, {}),
        # p2's middle packet never comes: p2 is dropped, and nothing until keyframe k3.
        ("lost middle packet", [0, 1, 2, 3, 4, 5, 7, 8, 9, 10],
         ["k0", "p1", "k3", "p4"], False, {"incomplete": 1}),
        # Losing the first packet of p1 breaks p1 and with it p2 (it references p1).
        ("lost start packet", [0, 1, 2, 4, *ALL[5:]], ["k0", "k3", "p4"], False,
         {"incomplete": 1, "waiting_keyframe": 1}),
        # The marker packet of k3 is lost: k3 is dropped, p4 waits for the next keyframe.
        ("lost marker packet", [*ALL[:9], 10], ["k0", "p1", "p2"], True,
         {"incomplete": 1, "waiting_keyframe": 1}),
        # Joining mid-frame: the rest of p1 has no start; p2 has no keyframe to refer to.
        ("no keyframe yet", ALL[4:], ["k3", "p4"], False, {"no_start": 1,
                                                           "waiting_keyframe": 1}),
    ],
)
def test_vp8_depacketizer(case: str, order: list[int], expected: list[str],
                          needs_keyframe: bool, drops: dict[str, int]) -> None:
    depack = Vp8Depacketizer()
    frames = feed(depack, order, vp8_stream(), dt=0.05)
    frames += depack.flush()  # at close: holes still open are given up
    assert names(frames) == expected, case
    assert [f.keyframe for f in frames] == [n.startswith("k") for n in expected]
    assert depack.needs_keyframe is needs_keyframe
    assert depack.stats.dropped == drops


def test_vp8_frame_is_descriptor_stripped_partitions_joined() -> None:
    frames = feed(Vp8Depacketizer(), ALL, vp8_stream())
    assert frames[0].data == KEY_BODY + b"k0-b" + b"k0-c"
    assert frames[2].data == INTER_BODY + b"p2-b" + b"p2-c"
    # A descriptor with PictureID (M=1, 15 bits), TL0PICIDX and TID is stripped as well.
    long_desc = bytes([0x90, 0xE0, 0x80 | 0x12, 0x34, 0x07, 0x40])
    depack = Vp8Depacketizer()
    [frame] = depack.push(rtp(1, 0, long_desc + KEY_BODY, True), 1, 0, 0.0)
    assert frame.data == KEY_BODY and frame.keyframe


def test_vp8_loss_raises_needs_keyframe_until_a_keyframe_completes() -> None:
    packets = vp8_stream()
    depack = Vp8Depacketizer()
    assert depack.needs_keyframe  # nothing recorded yet: the caller sends a PLI
    feed(depack, [0, 1, 2, 3, 4], packets)
    assert not depack.needs_keyframe
    seq_unwrap, ts_unwrap = Unwrapper(16), Unwrapper(32)
    for i in range(5):  # prime the unwrappers as the producer would have them
        seq_unwrap.unwrap(packets[i][0])
        ts_unwrap.unwrap(packets[i][1])
    for i in (5, 7):  # p2's middle packet (6) lost: a hole, then a packet after it
        seq, ts, payload, marker = packets[i]
        depack.push(rtp(seq, ts, payload, marker), seq_unwrap.unwrap(seq),
                    ts_unwrap.unwrap(ts), 0.0)
    assert not depack.needs_keyframe  # still waiting for the retransmission
    seq, ts, payload, marker = packets[8]
    depack.push(rtp(seq, ts, payload, marker), seq_unwrap.unwrap(seq),
                ts_unwrap.unwrap(ts), 1.0)  # the hole waited longer than max_delay
    assert depack.needs_keyframe
    assert depack.stats.lost_packets == 1
    frames = []
    for i in (9, 10):
        seq, ts, payload, marker = packets[i]
        frames += depack.push(rtp(seq, ts, payload, marker), seq_unwrap.unwrap(seq),
                              ts_unwrap.unwrap(ts), 1.0)
    assert names(frames) == ["k3", "p4"] and not depack.needs_keyframe


def test_vp8_restart_of_sequence_numbers_waits_for_keyframe() -> None:
    depack = Vp8Depacketizer()
    assert len(depack.push(rtp(100, 0, KEY + KEY_BODY, True), 100, 0, 0.0)) == 1
    # The publisher reconnected: sequence numbers jump far away; an inter frame is useless.
    assert depack.push(rtp(40000, 90000, KEY + INTER_BODY, True), 40000, 90000, 0.1) == []
    assert depack.needs_keyframe and depack.stats.restarts == 1
    assert len(depack.push(rtp(40001, 93000, KEY + KEY_BODY, True), 40001, 93000, 0.2)) == 1


def test_reorder_buffer_is_bounded_in_packets() -> None:
    stats = DepacketizerStats()
    buf: ReorderBuffer[int] = ReorderBuffer(stats, max_packets=3, max_delay=10.0)
    assert [s for s, *_ in buf.push(0, 0, 0, 0.0)] == [0]
    for seq in (2, 3, 4):  # 1 is missing: wait
        assert buf.push(seq, seq, 0, 0.0) == []
    released = buf.push(5, 5, 0, 0.0)  # a fourth waiting packet: give up on 1
    assert [(s, gap) for s, _, _, gap in released] == [(2, True), (3, False), (4, False),
                                                       (5, False)]
    assert stats.lost_packets == 1 and len(buf) == 0
    assert buf.push(1, 1, 0, 0.0) == [] and stats.late == 1  # too late now


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10), st.integers(-2, 2), st.booleans()),
                min_size=1, max_size=40))
def test_vp8_damaged_stream_gives_a_subsequence_of_the_frames(
        edits: list[tuple[int, int, bool]]) -> None:
    """Any mix of loss, duplication and reordering: never an altered or reordered frame."""
    packets = vp8_stream()
    order = list(ALL)
    for index, shift, duplicate in edits:
        if index >= len(order):
            continue
        if duplicate:
            order.insert(index, order[index])
        elif shift == 0:
            del order[index]
        else:
            order.insert(max(0, index + shift), order.pop(index))
    clean = feed(Vp8Depacketizer(), ALL, packets)
    depack = Vp8Depacketizer()
    damaged = feed(depack, order, packets, dt=0.05) + depack.flush()
    # Compared by content and timestamp modulo 2**32: when the first packets are lost, the
    # feed's fresh unwrapper meets the stream after the timestamp wrap and extends it
    # differently, which is the test harness's doing, not the depacketizer's.
    def key(f: Frame) -> tuple[bytes, int, bool]:
        return f.data, f.timestamp & 0xFFFFFFFF, f.keyframe

    it = iter([key(c) for c in clean])
    assert all(any(key(frame) == c for c in it) for frame in damaged)  # ordered subsequence


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 5), st.binary(max_size=12),
                          st.booleans()), max_size=30))
def test_depacketizers_never_raise_on_random_packets(
        packets: list[tuple[int, int, bytes, bool]]) -> None:
    for depack in (Vp8Depacketizer(max_packets=4), OpusDepacketizer(max_packets=4)):
        seq_unwrap, ts_unwrap = Unwrapper(16), Unwrapper(32)
        for n, (seq, ts, payload, marker) in enumerate(packets):
            frames = depack.push(rtp(seq, ts * 3000, payload, marker), seq_unwrap.unwrap(seq),
                                 ts_unwrap.unwrap(ts * 3000), n * 0.05)
            for frame in frames:
                assert frame.data
        for frame in depack.flush():
            assert frame.data


OPUS = [(65534, 0, b"a"), (65535, 960, b"b"), (0, 1920, b"c"), (1, 2880, b"d")]


@pytest.mark.parametrize(
    ("case", "order", "expected", "flush"),
    [
        ("in order across the wrap", [0, 1, 2, 3], "abcd", ""),
        ("reordered", [0, 2, 1, 3], "abcd", ""),
        ("duplicate", [0, 1, 1, 2, 2, 3], "abcd", ""),
        # Nothing waits long: the lost packet's place is given up at close (flush).
        ("lost", [0, 2, 3], "a", "cd"),
    ],
)
def test_opus_depacketizer(case: str, order: list[int], expected: str, flush: str) -> None:
    depack = OpusDepacketizer()
    packets = [(s, t, p, False) for s, t, p in OPUS]
    frames = feed(depack, order, packets)
    assert b"".join(f.data for f in frames) == expected.encode(), case
    assert b"".join(f.data for f in depack.flush()) == flush.encode()
    all_frames = frames
    assert all(f.keyframe for f in all_frames)
    assert [f.timestamp for f in frames] == sorted({f.timestamp for f in frames})


# -- media sources: aiortc's own encoders, packetised into RTP --------------------------------


class Vp8Source:
    """160x120 noise at 30 fps through aiortc's Vp8Encoder; yields each frame's RTP packets."""

    def __init__(self, seq0: int = 65000, ts0: int = 4_000_000_000) -> None:
        self.encoder = Vp8Encoder()
        self.rng = np.random.default_rng(7)
        self.seq, self.ts0, self.index = seq0, ts0, 0
        self.seq_unwrap, self.ts_unwrap = Unwrapper(16), Unwrapper(32)

    def frame(self, force_keyframe: bool = False) -> list[tuple[RtpPacket, int, int]]:
        image = self.rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
        vf = av.VideoFrame.from_ndarray(image, format="rgb24")
        vf.pts, vf.time_base = self.index * 3000, fractions.Fraction(1, 90000)
        self.index += 1
        payloads, ts = self.encoder.encode(vf, force_keyframe=force_keyframe)
        out = []
        for i, payload in enumerate(payloads):
            pkt = rtp(self.seq & 0xFFFF, (self.ts0 + ts) & 0xFFFFFFFF, payload,
                      i == len(payloads) - 1)
            out.append((pkt, self.seq_unwrap.unwrap(pkt.sequence_number),
                        self.ts_unwrap.unwrap(pkt.timestamp)))
            self.seq += 1
        return out


class OpusSource:
    """A 440 Hz tone, 20 ms per packet, through aiortc's OpusEncoder."""

    def __init__(self, seq0: int = 65530, ts0: int = 123456) -> None:
        self.encoder = OpusEncoder()
        self.seq, self.ts0, self.index = seq0, ts0, 0
        self.seq_unwrap, self.ts_unwrap = Unwrapper(16), Unwrapper(32)

    def frame(self) -> list[tuple[RtpPacket, int, int]]:
        t = (np.arange(960) + self.index * 960) / 48000
        tone = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
        af = av.AudioFrame.from_ndarray(np.repeat(tone, 2).reshape(1, -1), format="s16",
                                        layout="stereo")
        af.sample_rate, af.pts = 48000, self.index * 960
        af.time_base = fractions.Fraction(1, 48000)
        self.index += 1
        payloads, ts = self.encoder.encode(af)
        out = []
        for payload in payloads:
            pkt = rtp(self.seq & 0xFFFF, (self.ts0 + ts) & 0xFFFFFFFF, payload, False)
            out.append((pkt, self.seq_unwrap.unwrap(pkt.sequence_number),
                        self.ts_unwrap.unwrap(pkt.timestamp)))
            self.seq += 1
        return out


T0 = 1000.0  # the caller's monotonic clock at the start
WALL0 = 1_750_000_000.0


def record(root: Path, rid: str = "rec-1", *, video_frames: int = 60,
           pause: tuple[int, int] | None = None, segment_size: int = 4096,
           close: bool = True) -> tuple[RecordingSession, dict[str, Any] | None]:
    """Record ``video_frames`` at 30 fps (and the matching audio) into a session.

    ``pause`` = (first paused video frame, first frame after resuming). The video source
    answers ``needs_keyframe`` with a keyframe, as a publisher answers a PLI.
    """
    session = RecordingSession(root, RING, rid, now=T0, wall_time=WALL0,
                               segment_size=segment_size)
    video = session.add_track("TR_video", kind="video", codec_name="VP8", clock_rate=90000,
                              participant="client-1", source="camera", now=T0)
    audio = session.add_track("TR_audio", kind="audio", codec_name="opus", clock_rate=48000,
                              participant="client-1", source="microphone", now=T0)
    vsrc, asrc = Vp8Source(), OpusSource()
    for i in range(video_frames):
        now = T0 + i / 30
        if pause and i == pause[0]:
            session.pause(now)
        if pause and i == pause[1]:
            session.resume(now)
        for pkt, seq, ts in vsrc.frame(force_keyframe=video.needs_keyframe):
            video.on_packet(pkt, seq, ts, False, now)
        while asrc.index * 960 < (i + 1) * 1600:  # 20 ms audio packets up to this frame
            for pkt, seq, ts in asrc.frame():
                audio.on_packet(pkt, seq, ts, False, T0 + asrc.index * 0.02)
    manifest = session.close(T0 + video_frames / 30) if close else None
    return session, manifest


def decrypt_file(path: Path) -> tuple[bytes, bool]:
    out = io.BytesIO()
    with path.open("rb") as f:
        result = decrypt_stream(f, RING, out)
    return out.getvalue(), result.complete


def decoded(webm: bytes, kind: str) -> list[Any]:
    with av.open(io.BytesIO(webm), "r") as container:
        stream = container.streams.video[0] if kind == "video" else container.streams.audio[0]
        return list(container.decode(stream))


def pts_seconds(item: Any) -> float:
    assert item.pts is not None
    return float(item.pts * item.time_base)


def test_session_round_trip(tmp_path: Path) -> None:
    session, manifest = record(tmp_path)
    assert manifest is not None
    rec = tmp_path / "rec-1"
    assert sorted(p.name for p in rec.iterdir()) == sorted(
        [MANIFEST_NAME, "TR_audio.webm.enc", "TR_video.webm.enc"])
    for path in rec.iterdir():
        raw = path.read_bytes()
        assert WEBM_MAGIC not in raw and b"OpusHead" not in raw and b"webm" not in raw
        assert path.stat().st_mode & 0o777 == 0o600
    assert rec.stat().st_mode & 0o777 == 0o700

    tracks = {t["track_id"]: t for t in manifest["tracks"]}
    video, audio = tracks["TR_video"], tracks["TR_audio"]
    assert (video["kind"], video["codec"], video["width"], video["height"]) == (
        "video", "VP8", 160, 120)
    assert video["frames"] == 60 and video["keyframes"] == 1 and video["dropped_frames"] == 0
    assert video["first_frame"]["wall"] == pytest.approx(WALL0)
    assert video["participant"] == "client-1" and video["complete"]
    assert audio["frames"] == 100 and audio["codec"] == "OPUS" and audio["channels"] == 2
    assert audio["duration"] == pytest.approx(2.0, abs=0.001)
    assert video["duration"] == pytest.approx(2.0, abs=1 / 30)
    assert manifest["pauses"] == []

    # The manifest is encrypted too and matches what the session returned.
    manifest_plain, complete = decrypt_file(rec / MANIFEST_NAME)
    assert complete and json.loads(manifest_plain) == manifest

    webm, complete = decrypt_file(rec / "TR_video.webm.enc")
    assert complete and webm.startswith(WEBM_MAGIC)
    assert video["sha256"] == __import__("hashlib").sha256(
        (rec / "TR_video.webm.enc").read_bytes()).hexdigest()
    frames = decoded(webm, "video")
    assert len(frames) == 60
    assert {(f.width, f.height) for f in frames} == {(160, 120)}
    last = float(frames[-1].pts * frames[-1].time_base)
    assert last + 1 / 30 == pytest.approx(video["duration"], abs=1 / 30)

    ogg_like, complete = decrypt_file(rec / "TR_audio.webm.enc")
    assert complete and b"OpusHead" in ogg_like
    with av.open(io.BytesIO(ogg_like), "r") as container:
        packets = [p for p in container.demux(audio=0) if p.size]
    assert len(packets) == 100
    samples = sum(f.samples for f in decoded(ogg_like, "audio"))
    assert abs(samples - 96000) <= 960  # within one frame (the codec delay is trimmed)
    session.close(T0 + 10)  # idempotent


def test_pause_leaves_a_gap_and_resumes_on_a_keyframe(tmp_path: Path) -> None:
    _, manifest = record(tmp_path, video_frames=90, pause=(30, 60))
    assert manifest is not None
    [pause] = manifest["pauses"]
    start, end = pause["start"]["offset"], pause["end"]["offset"]
    assert (start, end) == pytest.approx((1.0, 2.0))
    rec = tmp_path / "rec-1"
    tracks = {t["track_id"]: t for t in manifest["tracks"]}
    assert tracks["TR_video"]["keyframes"] == 2 and tracks["TR_video"]["frames"] == 60
    assert tracks["TR_video"]["paused_packets"] > 0

    webm, _ = decrypt_file(rec / "TR_video.webm.enc")
    times = [float(f.pts * f.time_base) for f in decoded(webm, "video")]
    assert len(times) == 60
    assert not [t for t in times if start <= t < end - 0.001]
    assert min(t for t in times if t >= end - 0.001) == pytest.approx(end, abs=0.04)
    with av.open(io.BytesIO(webm), "r") as container:
        keys = [pts_seconds(p) for p in container.demux(video=0) if p.is_keyframe]
    assert keys[0] == 0 and keys[1] == pytest.approx(end, abs=0.04)

    audio, _ = decrypt_file(rec / "TR_audio.webm.enc")
    with av.open(io.BytesIO(audio), "r") as container:
        atimes = [pts_seconds(p) for p in container.demux(audio=0) if p.size]
    assert not [t for t in atimes if start + 0.021 < t < end - 0.021]
    assert atimes[-1] > end


def test_crash_leaves_a_playable_prefix(tmp_path: Path) -> None:
    """The process dies mid-recording: no final segments, no manifest, yet it plays."""
    session, _ = record(tmp_path, video_frames=45, close=False)
    session.flush()
    path = tmp_path / "rec-1" / "TR_video.webm.enc"
    # Only what the writer had sealed is on disk (as after a crash): copy that.
    crashed = tmp_path / "crashed.enc"
    crashed.write_bytes(path.read_bytes())
    webm, complete = decrypt_file(crashed)
    assert not complete and webm
    frames = decoded(webm, "video")
    assert 0 < len(frames) < 45
    assert not (tmp_path / "rec-1" / MANIFEST_NAME).exists()


def test_track_recorder_streams_without_seeking() -> None:
    """The muxer never seeks, even a sink that could; clusters leave while recording."""

    class Sink:
        def __init__(self) -> None:
            self.data = bytearray()

        def write(self, data: bytes) -> int:
            self.data += data
            return len(data)

        def seek(self, offset: int, whence: int = 0) -> int:
            raise AssertionError("the muxer must not seek")

        def tell(self) -> int:
            raise AssertionError("the muxer must not seek")

    sink = Sink()
    recorder = TrackRecorder("audio", "opus", 48000, sink)
    src = OpusSource()
    sizes = []
    for i in range(150):  # 3 s: the muxer closes a cluster every second
        for pkt, seq, ts in src.frame():
            recorder.on_packet(pkt, seq, ts, False, T0 + i * 0.02)
        sizes.append(len(sink.data))
    assert len(set(sizes)) >= 3  # header, then clusters as they close
    info = recorder.close()
    assert info.frames == 150 and info.container_bytes == len(sink.data) > sizes[-1]
    assert recorder.close() is info
    assert sum(f.samples for f in decoded(bytes(sink.data), "audio")) == pytest.approx(
        150 * 960, abs=960)


@pytest.mark.parametrize(("seq_shift", "told"), [(20000, False), (-500, True)])
def test_publisher_restart_continues_on_the_wall_clock(seq_shift: int, told: bool) -> None:
    """New random sequence numbers and timestamps behind the same track (Producer.rebind).

    A far jump is recognised as a restart; a near one (which would read as late packets)
    needs ``source_changed``, which the producer calls as it does for its consumers.
    """
    sink = io.BytesIO()
    recorder = TrackRecorder("video", "VP8", 90000, sink)
    src = Vp8Source()
    for i in range(5):
        for pkt, seq, ts in src.frame():
            recorder.on_packet(pkt, seq, ts, False, T0 + i / 30)
    src.ts0 += 1_000_000_000
    src.seq += seq_shift
    src.seq_unwrap, src.ts_unwrap = Unwrapper(16), Unwrapper(32)  # as rebind() does
    if told:
        recorder.source_changed()
    assert recorder.needs_keyframe is told
    for i in range(5, 10):
        for pkt, seq, ts in src.frame(force_keyframe=recorder.needs_keyframe or i == 5):
            recorder.on_packet(pkt, seq, ts, False, T0 + i / 30)
    info = recorder.close()
    assert info.frames == 10 and info.discontinuities == 1
    assert info.duration == pytest.approx(10 / 30, abs=1 / 30)


@pytest.mark.parametrize(
    ("kind", "codec"), [("video", "H264"), ("audio", "VP8"), ("data", "opus")])
def test_unsupported_tracks_are_refused(kind: str, codec: str) -> None:
    with pytest.raises(RecordingError) as info:
        TrackRecorder(kind, codec, 90000, io.BytesIO())
    assert info.value.code == "invalid_argument"


def test_session_refuses_bad_names_and_reuse(tmp_path: Path) -> None:
    for bad in ("../x", ".hidden", "a/b", ""):
        with pytest.raises(RecordingError):
            RecordingSession(tmp_path, RING, bad, now=0.0, wall_time=0.0)
    session = RecordingSession(tmp_path, RING, "r1", now=0.0, wall_time=0.0)
    with pytest.raises(RecordingError):
        RecordingSession(tmp_path, RING, "r1", now=0.0, wall_time=0.0)
    session.add_track("t1", kind="audio", codec_name="opus", clock_rate=48000,
                      participant="p", now=0.0)
    with pytest.raises(RecordingError):
        session.add_track("t1", kind="audio", codec_name="opus", clock_rate=48000,
                          participant="p", now=0.0)
    with pytest.raises(RecordingError):  # refused before any file is created
        session.add_track("t2", kind="video", codec_name="H264", clock_rate=90000,
                          participant="p", now=0.0)
    assert sorted(p.name for p in (tmp_path / "r1").iterdir()) == ["t1.webm.enc"]
    manifest = session.close(1.0)
    assert manifest["tracks"][0]["frames"] == 0
    with (tmp_path / "r1" / "t1.webm.enc").open("rb") as f:
        reader = EncryptedReader(f, RING)
        assert reader.header.recording_id == "r1/t1"


def test_vp8_dimensions() -> None:
    assert vp8_dimensions(KEY_BODY) == (160, 120)
    assert vp8_dimensions(INTER_BODY + bytes(10)) is None
    assert vp8_dimensions(b"") is None


def test_sender_report_maps_ntp_time_to_the_timeline() -> None:
    recorder = TrackRecorder("video", "VP8", 90000, io.BytesIO())
    src = Vp8Source()
    recorder.on_sender_report(ntp_from_seconds(WALL0), 0, T0)  # before any frame: ignored
    for i in range(3):
        for pkt, seq, ts in src.frame():
            recorder.on_packet(pkt, seq, ts, False, T0 + i / 30)
    first = recorder.first_rtp_ts
    assert first is not None
    recorder.on_sender_report(ntp_from_seconds(WALL0 + 5), (first + 90000) & 0xFFFFFFFF, T0)
    report = recorder.close().sender_report
    assert report == {"ntp_time": pytest.approx(WALL0 + 5, abs=1e-6), "pts": 1.0}


def test_failing_sink_stops_the_track_not_the_packet_path() -> None:
    class Full:
        def write(self, data: bytes) -> int:
            raise OSError(28, "No space left on device")

    recorder = TrackRecorder("audio", "opus", 48000, Full())
    assert not recorder.needs_keyframe
    src = OpusSource()
    for i in range(5):
        for pkt, seq, ts in src.frame():
            recorder.on_packet(pkt, seq, ts, False, T0 + i * 0.02)
    info = recorder.close()
    assert info.error is not None and "No space left" in info.error
    assert info.frames == 0
