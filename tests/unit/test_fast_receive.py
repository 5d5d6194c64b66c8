"""The C receive path leaves a publisher's stream, and everything downstream, exactly as
RecvStream.on_rtp would.

Two identical graphs (tests/fastgraph.py) take the same random script: packets in order,
lost (NACKs upstream), reordered, duplicated, far too old, padding-only, over the
publisher's byte budget, keyframes and not, audio levels (a speaker detector listening),
time jumps that make NACK retries due, keyframe requests merged
and due, consumers paused and resumed. One graph takes each packet through
``fastsend.receive``, the other through ``RecvStream.on_rtp`` with the Python fan-out. After
every step the whole producer (its stream, unwrappers, statistics, cache, NACK and keyframe
state, budget, speaker detector) and every consumer must be equal, and so must the RTCP
the producer sent upstream and the packets the subscribers received.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from mediaserver import metrics
from mediaserver.limits import bitrate_bucket
from mediaserver.sfu import fastsend
from mediaserver.sfu.speakers import SpeakerDetector
from tests.fastgraph import H264, OPUS, VP8, Graph, consumer_state, media_packet, snapshot

if not fastsend.AVAILABLE:  # pragma: no cover - .ci/run installs a compiler
    pytest.fail("the _fastpath extension was not built (no C compiler at install?)",
                pytrace=False)

VP8_KEY = b"\x10\x00\x9d\x01\x2a\x40\x01\xf0\x00"  # descriptor + keyframe header, 320x240
VP8_DELTA = b"\x10\x01\x00\x00\x00"
VP8_CONTINUATION = b"\x00\x00\x00\x00"  # not the start of a partition
H264_IDR = b"\x65\x88\x84\x00"
H264_SLICE = b"\x41\x9a\x00\x00"


def _vp8_head(rng: random.Random) -> bytes:
    """A descriptor with any of its extensions, then a payload header: a keyframe's whole or
    cut short, or a delta frame's; sometimes the descriptor alone, truncated."""
    x = rng.choice([0, 0x80, 0x40, 0x20, 0x10, 0x30, 0xF0, 0xC0])
    b0 = (0x80 if x else 0) | rng.choice([0x10, 0x10, 0x30, 0x11, 0x00])
    desc = bytes([b0]) + (bytes([x]) if x else b"")
    if x & 0x80:
        desc += rng.choice([b"\x85\x21", b"\x05", b"\xff"])  # 15-bit, 7-bit, cut short
    if x & 0x40:
        desc += bytes([rng.randrange(256)])
    if x & 0x30:
        desc += bytes([rng.randrange(256)])
    width, height = rng.choice([(320, 240), (160, 120), (0, 0), (16383, 9)])
    frame = rng.choice([
        b"\x00\x00\x00\x9d\x01\x2a" + width.to_bytes(2, "little") + height.to_bytes(2, "little"),
        b"\x00\x00\x00\x9d\x01\x2a\x40",  # the size cut off
        b"\x00\x00\x00\x9d\x01\x2b\x40\x01\xf0\x00",  # no start code
        b"\x01\x00\x00",  # a delta frame
        b"",
    ])
    return (desc + frame)[:rng.choice([1, 2, 3, 4, 64])] if rng.random() < 0.1 else desc + frame


def _payload(rng: random.Random, kind: str, codec_name: str) -> bytes:
    if kind == "audio":
        head = b""
    elif codec_name == "VP8":
        head = rng.choice([VP8_KEY, VP8_DELTA, VP8_DELTA, VP8_CONTINUATION, VP8_CONTINUATION,
                           _vp8_head(rng), _vp8_head(rng)])
        if len(head) < 10 and rng.random() < 0.5:
            return head  # nothing after: the header is all there is
    else:
        head = rng.choice([H264_IDR, H264_SLICE, H264_SLICE, H264_SLICE])
    return head + bytes(rng.randrange(256) for _ in range(rng.randrange(20, 400)))


def _script(seed: int, kind: str, codec_name: str, steps: int) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    out: list[tuple[Any, ...]] = []
    seq = 65200  # wraps within the script
    ts = 0xFFFF0000  # ... and so does the timestamp
    sent: list[tuple[int, int]] = []
    now = 10.0
    for _ in range(steps):
        r = rng.random()
        now += rng.choice([0.0, 0.005, 0.02, 0.02, 0.05, 0.3, 1.2])
        if r < 0.03:
            out.append(("pause", now, rng.randrange(4), rng.random() < 0.5))
        elif r < 0.06:
            out.append(("keyframe_request", now))
        elif r < 0.07:
            out.append(("budget", now, rng.choice([0, 40, 400, 4000])))
        else:
            r = rng.random()
            if r < 0.06 and sent:
                s, t = rng.choice(sent[-30:])  # a duplicate or a late one
            elif r < 0.08:
                s, t = seq - 5000, ts  # far too old
            else:
                seq += 1
                if rng.random() < 0.08:
                    seq += rng.choice([1, 2, 3, 40, 700])  # lost, sometimes many
                ts += rng.choice([0, 960, 3000])
                s, t = seq, ts
            sent.append((s, t))
            payload = _payload(rng, kind, codec_name)
            if rng.random() < 0.04:
                payload = b""  # padding-only
            level = (rng.choice([None, b"\x85", b"\x10", b"", b"\x01\x02"])
                     if kind == "audio" else None)
            out.append(("rtp", now, s & 0xFFFF, t & 0xFFFFFFFF, rng.random() < 0.3, payload,
                        level))
    return out


def _apply(step: tuple[Any, ...], g: Graph, use_c: bool | str) -> None:
    """One step; a packet through RecvStream.on_rtp (use_c False), fastsend.receive on its
    packet object (True), or the Receiver's path from the bytes ("bytes": fastsend.route,
    no packet object unless a Python path needs one)."""
    op, now = step[0], step[1]
    producer = g.producer
    if op == "pause":
        g.consumers[step[2]].set_paused(step[3], now)
    elif op == "keyframe_request":
        producer.request_keyframe(now)
    elif op == "budget":
        producer.budget = bitrate_bucket(step[2])
    else:
        pkt = media_packet(producer, *step[2:])
        stream = producer.streams[0]
        if use_c == "bytes":
            assert fastsend.route({77: stream}, bytes(pkt.data), now) is True
        elif use_c:
            fastsend.receive(stream, pkt, now)
        else:
            stream.on_rtp(pkt, now)


def _graph(kind: str, codec: Any) -> Graph:
    g = Graph(kind, codec)
    if kind == "audio":
        g.producer.speakers = SpeakerDetector()
    return g


@pytest.mark.parametrize(("kind", "codec"), [("audio", OPUS), ("video", VP8),
                                             ("video", H264)])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("entry", [True, "bytes"])
def test_receive_leaves_everything_as_python_does(kind, codec, seed, entry, monkeypatch) -> None:
    c_graph, py_graph = _graph(kind, codec), _graph(kind, codec)
    tally_in, tally_out = metrics.rtp_tally("in", kind), metrics.rtp_tally("out", kind)
    try:
        for i, step in enumerate(_script(seed, kind, codec.name, 500)):
            moved = []
            for g, use_c in ((c_graph, entry), (py_graph, False)):
                before = (tally_in.packets, tally_in.bytes, tally_out.packets, tally_out.bytes)
                monkeypatch.setattr(fastsend, "AVAILABLE", bool(use_c))
                _apply(step, g, use_c)
                after = (tally_in.packets, tally_in.bytes, tally_out.packets, tally_out.bytes)
                moved.append(tuple(b - a for a, b in zip(before, after, strict=True)))
            assert moved[0] == moved[1], (i, step[0])
            assert snapshot(c_graph.producer) == snapshot(py_graph.producer), (i, step[0])
            assert snapshot(c_graph.producer.streams[0]) == \
                snapshot(py_graph.producer.streams[0]), (i, step[0])
            for a, b in zip(c_graph.consumers, py_graph.consumers, strict=True):
                assert consumer_state(a) == consumer_state(b), (i, step[0])
            assert c_graph.rtcp == py_graph.rtcp, i
        stream = c_graph.producer.streams[0]
        assert stream.stats.packets_received > 300
        if kind == "video":
            assert stream.nacks_sent > 0 and c_graph.rtcp  # the script did lose packets
        assert c_graph.same_delivery(py_graph) > 300
    finally:
        c_graph.close()
        py_graph.close()


def test_receive_takes_the_c_path_for_a_plain_stream(monkeypatch) -> None:
    """The comparison above would pass if receive always deferred to Python."""
    g = _graph("video", VP8)
    stream = g.producer.streams[0]
    calls: list[float] = []
    original = type(stream).on_rtp

    def spy(self: Any, pkt: Any, now: float) -> None:
        calls.append(now)
        original(self, pkt, now)

    monkeypatch.setattr(type(stream), "on_rtp", spy)
    try:
        for seq in range(1, 11):
            _apply(("rtp", 1.0 + seq * 0.04, seq, seq * 3000, seq % 2 == 0,
                    VP8_KEY if seq == 1 else VP8_DELTA, None), g, True)
        assert calls == []
        assert stream.stats.packets_received == 10 and stream.frames == 5
        assert all(c.stats.packets_sent == 10 for c in g.consumers)
        g.producer.budget = bitrate_bucket(1)  # 125 bytes/s: the next packet is over it
        g.producer.budget.tokens = 0.0
        _apply(("rtp", 2.0, 11, 33000, False, VP8_DELTA + bytes(500), None), g, True)
        assert calls == [2.0]  # Python dropped it, and counted it there
        assert stream.stats.packets_received == 10
    finally:
        g.close()


def test_audio_levels_are_counted_in_c_once_the_stream_is_known(monkeypatch) -> None:
    """The speaker detector's per-packet count runs in C on its own objects (the comparison
    above would pass if every level still went through SpeakerDetector.observe); a speaker
    heard for the first time goes through the method, which makes its record."""
    g = _graph("audio", OPUS)
    detector = g.producer.speakers
    calls: list[int] = []
    original = SpeakerDetector.observe

    def spy(self: Any, key: str, level: int) -> None:
        calls.append(level)
        original(self, key, level)

    monkeypatch.setattr(SpeakerDetector, "observe", spy)
    reference = SpeakerDetector()
    levels = [30, 127, 0, 49, 50, 51, 17, 90, 3]
    try:
        for seq, level in enumerate(levels, start=1):
            _apply(("rtp", 1.0 + seq * 0.02, seq, seq * 960, False, bytes(80),
                    bytes([level | 0x80])), g, True)  # the voice bit set: masked off
            original(reference, g.producer.participant_id, level)
        assert calls == [30]  # only the first packet's, which made the record
        assert snapshot(detector) == snapshot(reference)
        assert detector._streams[g.producer.participant_id].count == len(levels)
    finally:
        g.close()


def test_receive_refuses_bad_arguments() -> None:
    with pytest.raises(TypeError):
        fastsend.receive(None, None)


@pytest.mark.parametrize("entry", ["object", "bytes"])
def test_no_memory_grows_per_packet(entry: str) -> None:
    """Once the caches and histories are full, thousands more packets through the C path
    (receive, fan-out, sends, NACK gaps, a budget; from a packet object, or from the bytes
    as a Receiver takes them, a packet object made only for keyframes' Python) leave the
    Python heap where it was: no reference leaked per packet."""
    import tracemalloc

    g = _graph("video", VP8)
    g.producer.budget = bitrate_bucket(100_000)
    stream = g.producer.streams[0]

    def run(first: int, count: int) -> None:
        for seq in range(first, first + count):
            if seq % 97 == 0:
                continue  # a loss now and then: the NACK path too
            pkt = media_packet(g.producer, seq & 0xFFFF, (seq * 3000) & 0xFFFFFFFF,
                               seq % 3 == 0, VP8_KEY if seq % 500 == 1 else VP8_DELTA + bytes(300),
                               None)
            if entry == "bytes":
                assert fastsend.route({77: stream}, bytes(pkt.data), 1.0 + seq * 0.001)
            else:
                fastsend.receive(stream, pkt, 1.0 + seq * 0.001)
        for sub in g.subscribers:
            sub.received()  # drain the sockets...
            sub.built.clear()  # ... and what the test itself keeps
        g.rtcp.clear()

    try:
        run(1, 2000)  # caches, histories and the metric tallies fill up
        tracemalloc.start()
        run(2001, 3000)  # ... and are all replaced by what tracemalloc sees
        before = tracemalloc.get_traced_memory()[0]
        run(5001, 6000)
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert grown < 64 * 1024, grown  # a leaked int per packet would be ~170 kB
        assert all(c.stats.packets_sent > 10000 for c in g.consumers[:3])
    finally:
        g.close()
