"""A publisher's sender reports noted in C (``fastsend.sender_reports``, what the Receiver
does with a compound RTCP packet) leave its streams exactly as
``PublisherTransport.handle_rtcp`` does; a compound the C code declines is left untouched
for Python (it returns False and changes nothing)."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest

from mediaserver.sfu import fastsend, rtcp
from mediaserver.sfu.transport import PublisherTransport
from tests.fastgraph import Graph, snapshot

if not fastsend.AVAILABLE:  # pragma: no cover - .ci/run installs a compiler
    pytest.fail("the _fastpath extension was not built (no C compiler at install?)",
                pytrace=False)

SSRC = 77  # the graph's stream
NTP = 0xE8F1_2345_6789_ABCD
NOW = 1234.5


def sr(ssrc: int = SSRC, blocks: int = 0) -> bytes:
    reports = [rtcp.ReportBlock(ssrc=9 + i, fraction_lost=3, packets_lost=5, highest_seq=100,
                                jitter=7, lsr=11, dlsr=13) for i in range(blocks)]
    return rtcp.build_sr(ssrc, NTP + ssrc, 90000 + ssrc, 500, 60000, reports)


SDES = rtcp.build_sdes(SSRC, "{a-cname}")

TAKEN = [
    ("an SR and its SDES", sr() + SDES),
    ("an SR alone", sr()),
    ("an SR with report blocks", sr(blocks=2) + SDES),
    ("an SR of no stream of ours", sr(ssrc=5) + rtcp.build_sdes(5, "x")),
    ("two SRs, one ours", sr(ssrc=5) + sr() + SDES),
    ("an SDES alone", SDES),
]
DECLINED = [
    ("with an RR", sr() + rtcp.build_rr(SSRC) + SDES),
    ("with a BYE", sr() + rtcp.build_bye([SSRC])),
    ("with a NACK", sr() + rtcp.build_nack(1, SSRC, [3])),
    ("padded", bytes([sr()[0] | 0x20]) + sr()[1:-1] + b"\x04"),
    ("cut short", (sr() + SDES)[:-3]),
    ("two bytes left over", sr() + SDES + b"\x81\xca"),
    ("an SR shorter than its blocks", bytes([sr()[0] | 1]) + sr()[1:]),
    ("a malformed SDES", sr() + SDES[:8] + b"\x01\x30" + SDES[10:]),
    ("version 1", bytes([sr()[0] & 0x3F | 0x40]) + sr()[1:]),
    ("empty", b""),
]


def python_path(graph: Graph, data: bytes) -> None:
    packets, bad = rtcp.parse_rtcp(data)
    assert bad == 0
    owner = SimpleNamespace(by_ssrc={SSRC: graph.producer.streams[0]})
    PublisherTransport.handle_rtcp(owner, packets, NOW)  # type: ignore[arg-type]


def state(graph: Graph) -> Any:
    return snapshot(graph.producer)


@pytest.mark.parametrize("data", [c[1] for c in TAKEN], ids=[c[0] for c in TAKEN])
def test_noted_as_python_does(data: bytes) -> None:
    c_graph, py_graph = Graph("video"), Graph("video")
    try:
        assert fastsend.sender_reports({SSRC: c_graph.producer.streams[0]}, data, NOW)
        python_path(py_graph, data)
        assert state(c_graph) == state(py_graph)
    finally:
        c_graph.close()
        py_graph.close()


def test_the_sr_is_noted() -> None:
    graph = Graph("video")
    try:
        stream = graph.producer.streams[0]
        assert fastsend.sender_reports({SSRC: stream}, sr() + SDES, NOW)
        assert stream.last_sr == (NTP + SSRC, 90000 + SSRC, NOW)
        assert stream.stats.last_sr_ntp_middle == ((NTP + SSRC) >> 16) & 0xFFFFFFFF
        assert stream.stats.last_sr_arrival == NOW
    finally:
        graph.close()


@pytest.mark.parametrize("data", [c[1] for c in DECLINED], ids=[c[0] for c in DECLINED])
def test_declined_untouched(data: bytes) -> None:
    graph = Graph("video")
    try:
        before = state(graph)
        assert not fastsend.sender_reports({SSRC: graph.producer.streams[0]}, data, NOW)
        assert state(graph) == before
    finally:
        graph.close()


def test_a_recording_tap_gets_python() -> None:
    graph = Graph("video")
    try:
        graph.producer.taps.append(object())
        before = state(graph)
        assert not fastsend.sender_reports({SSRC: graph.producer.streams[0]}, sr(), NOW)
        assert state(graph) == before
    finally:
        graph.producer.taps.clear()
        graph.close()


def test_damaged_compounds() -> None:
    """Random damage: never an exception; taken only when Python would parse it whole
    (nothing malformed, only SR and SDES) and then with Python's result."""
    rng = random.Random(3)
    good = sr(blocks=1) + SDES
    taken = 0
    for _ in range(1500):
        data = bytearray(good)
        for _ in range(rng.choice([1, 2])):
            if not data:
                break
            if rng.random() < 0.7:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            else:
                del data[rng.randrange(len(data)):]
        data_b = bytes(data)
        c_graph = Graph("video")
        before = state(c_graph)
        if not fastsend.sender_reports({SSRC: c_graph.producer.streams[0]}, data_b, NOW):
            assert state(c_graph) == before
            c_graph.close()
            continue
        taken += 1
        packets, bad = rtcp.parse_rtcp(data_b)
        assert bad == 0
        assert all(isinstance(p, (rtcp.SenderReport, rtcp.Sdes)) for p in packets)
        py_graph = Graph("video")
        python_path(py_graph, data_b)
        assert state(c_graph) == state(py_graph)
        c_graph.close()
        py_graph.close()
    assert 0 < taken < 1500
