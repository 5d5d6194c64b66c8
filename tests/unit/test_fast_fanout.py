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
from typing import Any

import pytest

from mediaserver import metrics
from mediaserver.sfu import fastsend
from mediaserver.sfu.consumer import Consumer
from tests.fastgraph import Graph, consumer_state, media_packet

if not fastsend.AVAILABLE:  # pragma: no cover - .ci/run installs a compiler
    pytest.fail("the _fastpath extension was not built (no C compiler at install?)",
                pytrace=False)

KEYFRAME = b"\x10\x00\x9d\x01\x2a\x40\x01\xf0\x00"  # VP8 descriptor + keyframe header
DELTA = b"\x10\x01\x00\x00\x00"


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


def _apply(step: tuple[Any, ...], g: Graph, now: float) -> None:
    producer, consumers, subscribers = g.producer, g.consumers, g.subscribers
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
        producer.on_rtp(media_packet(producer, *step[1:]), now)


@pytest.mark.parametrize("kind", ["audio", "video"])
@pytest.mark.parametrize("seed", range(6))
def test_fanout_leaves_consumers_as_python_does(kind: str, seed: int, monkeypatch) -> None:
    c_graph = Graph(kind)
    py_graph = Graph(kind)
    tally = metrics.rtp_tally("out", kind)
    try:
        script = _script(seed, kind, 400)
        for i, step in enumerate(script):
            now = 10.0 + i * 0.01
            before = (tally.packets, tally.bytes)
            monkeypatch.setattr(fastsend, "AVAILABLE", True)
            _apply(step, c_graph, now)
            c_moved = (tally.packets - before[0], tally.bytes - before[1])
            before = (tally.packets, tally.bytes)
            monkeypatch.setattr(fastsend, "AVAILABLE", False)
            _apply(step, py_graph, now)
            py_moved = (tally.packets - before[0], tally.bytes - before[1])
            assert c_moved == py_moved, (i, step[0])
            for j, (a, b) in enumerate(zip(c_graph.consumers, py_graph.consumers, strict=True)):
                assert consumer_state(a) == consumer_state(b), (i, j, step[0])
        assert c_graph.same_delivery(py_graph) > 400  # forwarded, to several subscribers
    finally:
        c_graph.close()
        py_graph.close()


def test_fanout_takes_the_c_path_for_plain_consumers(monkeypatch) -> None:
    """The comparison above would pass if fanout always deferred to Python: a plain
    consumer must not reach Consumer.forward at all."""
    g = Graph("audio")
    consumers = g.consumers
    calls: list[str] = []
    original = Consumer.forward

    def spy(self: Consumer, *args: Any) -> None:
        calls.append(self.subscriber_id)
        original(self, *args)

    monkeypatch.setattr(Consumer, "forward", spy)
    try:
        for seq in range(1, 6):
            _apply(("rtp", seq, seq * 960, False, b"\x01" * 40, b"\x85"), g,
                   1.0 + seq * 0.02)
        # Every consumer's first copy is Python's (the rewriter sets its offsets there;
        # s1's also times the join); s3 has no C output. The rest went the C way.
        assert calls.count("s0") == calls.count("s1") == calls.count("s2") == 1
        assert calls.count("s3") == 5
        assert [c.stats.packets_sent for c in consumers] == [5, 5, 5, 5]
    finally:
        g.close()


def test_fanout_refuses_bad_arguments() -> None:
    with pytest.raises(TypeError):
        fastsend.fanout((), None, None, 1, 1, False, 0.0)  # not a list
    with pytest.raises(TypeError):
        fastsend.fanout([], None, None)  # too few arguments
