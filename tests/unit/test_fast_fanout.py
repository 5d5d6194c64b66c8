"""The C fan-out leaves every consumer exactly as Consumer.forward would.

Two identical graphs (a producer, four consumers with the same seeds, each on its own real
libsrtp session and loopback socket) take the same random script of packets (in order,
lost, reordered, duplicated, far too old, padding-only, keyframes, odd audio levels) and of
control changes (pause, resume, mute, an output that goes away and comes back, a
subscriber's first packet). One graph goes through ``fastsend.fanout``, the other through
the Python loop over ``Consumer.forward``. After every step each consumer's rewriter,
history, counters and flags must be equal, the out tally must have moved by the same
amount, and in the end every subscriber must have received the same plain packets.
"""

from __future__ import annotations

import random
import socket
from typing import Any

import pytest

from mediaserver import metrics
from mediaserver.sfu import fastsend
from mediaserver.sfu.aiortc_adapter import attach_srtp
from mediaserver.sfu.consumer import Consumer, DownstreamContext
from mediaserver.sfu.producer import CodecInfo, Producer
from mediaserver.sfu.rtp import build_rtp, parse_rtp
from tests.conftest import srtp_sessions

if not fastsend.AVAILABLE:  # pragma: no cover - .ci/run installs a compiler
    pytest.fail("the _fastpath extension was not built (no C compiler at install?)",
                pytrace=False)

OPUS = CodecInfo("audio/opus", 48000, 111)
VP8 = CodecInfo("video/VP8", 90000, 96, rtx_payload_type=97)
KEYFRAME = b"\x10\x00\x9d\x01\x2a\x40\x01\xf0\x00"  # VP8 descriptor + keyframe header
DELTA = b"\x10\x01\x00\x00\x00"
REWRITER_SLOTS = ("_base_in", "_highest_in", "_last_out_seq", "_last_out_ts",
                  "_pending_switch", "_seq_offset", "_skipped", "_switch_ts_gap",
                  "_ts_offset")


class Subscriber:
    """One consumer's connection: a C output on a real socket, or Python's send."""

    def __init__(self, with_output: bool) -> None:
        self.tx, self.rx = srtp_sessions()
        self.a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.a.bind(("127.0.0.1", 0))
        self.b.bind(("127.0.0.1", 0))
        self.b.setblocking(False)
        self.built: list[bytes] = []  # packets the Python path built and sent whole
        self.output = fastsend.Output() if with_output else None
        if self.output is not None:
            attach_srtp(self.output, self.tx)
            self.connect()

    def connect(self) -> None:
        assert self.output is not None
        self.output.set_destination(self.a.fileno(), "127.0.0.1", self.b.getsockname()[1])

    def send_rtp(self, data: bytes) -> bool:
        self.built.append(data)
        return True

    def received(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.rx.unprotect(self.b.recv(4096)))
            except BlockingIOError:
                return out

    def close(self) -> None:
        if self.output is not None:
            self.output.clear()
        self.a.close()
        self.b.close()


def _graph(kind: str) -> tuple[Producer, list[Consumer], list[Subscriber]]:
    codec = OPUS if kind == "audio" else VP8
    producer = Producer(track_id="t", participant_id="p", kind=kind, codec=codec, ssrc=77,
                        rtx_ssrc=None, mid="0",
                        source="microphone" if kind == "audio" else "camera",
                        send_rtcp=lambda data: True, rtcp_ssrc=1,
                        audio_level_id=1 if kind == "audio" else None)
    consumers, subscribers = [], []
    for i in range(4):
        sub = Subscriber(with_output=i != 3)  # the last one: no C output (Python builds)
        random.seed(1000 + i)
        ctx = DownstreamContext(sub.send_rtp, joined_at=5.0 if i == 1 else None,
                                output=sub.output)
        c = Consumer(producer=producer, subscriber_id=f"s{i}", context=ctx, ssrc=4242 + i,
                     rtx_ssrc=None, payload_type=codec.payload_type, rtx_payload_type=None,
                     audio_level_id=(5 if i != 2 else None) if kind == "audio" else None,
                     abs_send_time_id=3 if i != 0 else None, transport_cc_id=None,
                     mid="0")
        producer.add_consumer(c, 0.0)
        consumers.append(c)
        subscribers.append(sub)
    return producer, consumers, subscribers


def _state(c: Consumer) -> dict[str, Any]:
    rw = c.rewriter
    return {
        "rewriter": {name: (list(getattr(rw, name)) if name == "_skipped"
                            else getattr(rw, name)) for name in REWRITER_SLOTS},
        "history": list(c._history),
        "resent_at": list(c._resent_at),
        "resends": bytes(c._resends),
        "stats": (c.stats.packets_sent, c.stats.octets_sent, c.stats.frames_sent),
        "last_sent_at": c.last_sent_at,
        "flags": (c.paused, c.waiting_keyframe, c.context.joined_at),
    }


def _script(seed: int, kind: str, steps: int) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    out: list[tuple[Any, ...]] = []
    seq = 65000  # wraps within the script
    sent: list[int] = []
    for _ in range(steps):
        r = rng.random()
        if r < 0.04:
            out.append(("pause", rng.randrange(4), rng.random() < 0.5))
        elif r < 0.06:
            out.append(("mute", rng.random() < 0.3))
        elif r < 0.08:
            out.append(("disconnect", rng.randrange(3)))
        elif r < 0.10:
            out.append(("connect", rng.randrange(3)))
        else:
            r = rng.random()
            if r < 0.08 and sent:
                s = rng.choice(sent[-20:])  # a duplicate or a late one
            elif r < 0.10:
                s = seq - 5000  # far too old
            else:
                seq += 1 + (rng.random() < 0.1) * rng.randrange(1, 4)  # some lost
                s = seq
            sent.append(s)
            if kind == "video":
                payload = KEYFRAME if rng.random() < 0.15 else DELTA
                payload += bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
            else:
                payload = bytes(rng.randrange(256) for _ in range(rng.randrange(20, 90)))
            if rng.random() < 0.05:
                payload = b""  # padding-only
            level = rng.choice([None, b"\x85", b"\x30", b"\x01\x02"]) if kind == "audio" \
                else None
            out.append(("rtp", s & 0xFFFF, (s * 960) & 0xFFFFFFFF, rng.random() < 0.3,
                        payload, level))
    return out


def _apply(step: tuple[Any, ...], producer: Producer, consumers: list[Consumer],
           subscribers: list[Subscriber], now: float) -> None:
    op = step[0]
    if op == "pause":
        consumers[step[1]].set_paused(step[2], now)
    elif op == "mute":
        producer.set_muted(step[1], now)
    elif op == "disconnect":
        out = subscribers[step[1]].output
        assert out is not None
        out.clear()
    elif op == "connect":
        subscribers[step[1]].connect()
    else:
        _, seq, ts, marker, payload, level = step
        exts = [(1, level)] if level is not None else []
        data = build_rtp(marker=marker, payload_type=producer.codec.payload_type,
                         sequence_number=seq, timestamp=ts, ssrc=77, extensions=exts,
                         payload=payload, padding=32 if not payload else 0)
        pkt = parse_rtp(data)
        assert pkt is not None
        producer.on_rtp(pkt, now)


@pytest.mark.parametrize("kind", ["audio", "video"])
@pytest.mark.parametrize("seed", range(6))
def test_fanout_leaves_consumers_as_python_does(kind: str, seed: int, monkeypatch) -> None:
    c_graph = _graph(kind)
    py_graph = _graph(kind)
    tally = metrics.rtp_tally("out", kind)
    try:
        script = _script(seed, kind, 400)
        for i, step in enumerate(script):
            now = 10.0 + i * 0.01
            before = (tally.packets, tally.bytes)
            monkeypatch.setattr(fastsend, "AVAILABLE", True)
            _apply(step, *c_graph, now)
            c_moved = (tally.packets - before[0], tally.bytes - before[1])
            before = (tally.packets, tally.bytes)
            monkeypatch.setattr(fastsend, "AVAILABLE", False)
            _apply(step, *py_graph, now)
            py_moved = (tally.packets - before[0], tally.bytes - before[1])
            assert c_moved == py_moved, (i, step[0])
            for j, (a, b) in enumerate(zip(c_graph[1], py_graph[1], strict=True)):
                assert _state(a) == _state(b), (i, j, step[0])
        forwarded = 0
        for a, b in zip(c_graph[2], py_graph[2], strict=True):
            got = a.received()
            assert got == b.received()
            assert a.built == b.built
            forwarded += len(got) + len(a.built)
        assert forwarded > 400  # the script did forward, to several subscribers
    finally:
        for sub in c_graph[2] + py_graph[2]:
            sub.close()


def test_fanout_takes_the_c_path_for_plain_consumers(monkeypatch) -> None:
    """The comparison above would pass if fanout always deferred to Python: a plain
    consumer must not reach Consumer.forward at all."""
    producer, consumers, subscribers = _graph("audio")
    calls: list[str] = []
    original = Consumer.forward

    def spy(self: Consumer, *args: Any) -> None:
        calls.append(self.subscriber_id)
        original(self, *args)

    monkeypatch.setattr(Consumer, "forward", spy)
    try:
        for seq in range(1, 6):
            _apply(("rtp", seq, seq * 960, False, b"\x01" * 40, b"\x85"), producer,
                   consumers, subscribers, 1.0 + seq * 0.02)
        # Every consumer's first copy is Python's (the rewriter sets its offsets there;
        # s1's also times the join); s3 has no C output. The rest went the C way.
        assert calls.count("s0") == calls.count("s1") == calls.count("s2") == 1
        assert calls.count("s3") == 5
        assert [c.stats.packets_sent for c in consumers] == [5, 5, 5, 5]
    finally:
        for sub in subscribers:
            sub.close()


def test_fanout_refuses_bad_arguments() -> None:
    with pytest.raises(TypeError):
        fastsend.fanout((), None, None, 1, 1, False, 0.0, 0)  # not a list
    with pytest.raises(TypeError):
        fastsend.fanout([], None, None)  # too few arguments
