"""A stream's rate window is closed by ``RecvStream.measure`` (the control task's step,
every 0.5 s), never from the packet path: the same figures whichever path (C or Python)
took the packets."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mediaserver.sfu import fastsend
from mediaserver.sfu.producer import RATE_WINDOW, WIRE_OVERHEAD, RecvStream
from tests.fastgraph import Graph, media_packet

PAYLOAD = 100

# (case, packet arrival times, measure() times, bitrate and wire bitrate after the last
# measure). Every packet carries PAYLOAD bytes of payload (plus its 12-byte header and the
# 8 bytes of its audio-level extension).
SIZE = PAYLOAD + 12 + 8
CASES = [
    ("open until a whole window has passed", [0.0, 0.5, 0.9], [0.5, 0.99], 0, 0),
    ("closed at the first step after a window", [0.0, 0.5, 0.9], [0.5, 1.0],
     3 * SIZE * 8, 3 * (SIZE + WIRE_OVERHEAD) * 8),
    ("a step that lands late: the rate over the time that passed", [0.0, 0.5, 1.2], [1.5],
     int(3 * SIZE * 8 / 1.5), int(3 * (SIZE + WIRE_OVERHEAD) * 8 / 1.5)),
    ("a layer silent for two windows is forgotten", [0.0, 0.5], [1.0, 3.1], 0, 0),
    ("the next window starts at the close", [0.0, 0.5, 1.0, 1.5, 1.9], [1.0, 2.0],
     2 * SIZE * 8, 3 * (SIZE + WIRE_OVERHEAD) * 8),  # the wire rate is the peak of windows
]


def _python(stream: RecvStream, pkt: object, now: float) -> None:
    stream.on_rtp(pkt, now)  # type: ignore[arg-type]


def _c(stream: RecvStream, pkt: object, now: float) -> None:
    fastsend.receive(stream, pkt, now)


PATHS: list[tuple[str, Callable[[RecvStream, object, float], None]]] = [("python", _python)]
if fastsend.AVAILABLE:
    PATHS.append(("c", _c))


@pytest.mark.parametrize("path", [p[1] for p in PATHS], ids=[p[0] for p in PATHS])
@pytest.mark.parametrize(("arrivals", "steps", "bitrate", "wire"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_the_window_closes_at_the_step(path: Callable[[RecvStream, object, float], None],
                                       arrivals: list[float], steps: list[float],
                                       bitrate: int, wire: int) -> None:
    graph = Graph("audio")
    try:
        stream = graph.producer.streams[0]
        events = sorted([(t, 0) for t in arrivals] + [(t, 1) for t in steps])
        seq = 100
        before = []
        for now, is_step in events:
            if is_step:
                stream.measure(now)
                continue
            before.append(stream.bitrate)
            path(stream, media_packet(graph.producer, seq, seq * 960, False,
                                      bytes(PAYLOAD), b"\x10"), now)
            assert stream.bitrate == before[-1]  # a packet never closes the window
            seq += 1
        assert (stream.bitrate, stream.wire_bitrate) == (bitrate, wire)
        assert RATE_WINDOW == 1.0  # the cases' times assume it
    finally:
        graph.close()
