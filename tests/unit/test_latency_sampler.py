"""Forwarding-latency sampling on a real UDP socket (kernel receive timestamps)."""

from __future__ import annotations

import socket

from mediaserver import metrics
from mediaserver.sfu.aiortc_adapter import LATENCY_SAMPLE_EVERY, LatencySampler


def _count() -> float:
    return metrics.REGISTRY.get_sample_value("mediaserver_forwarding_latency_seconds_count") or 0.0


def _received(rx: socket.socket, tx: socket.socket) -> bytes:
    tx.sendto(b"\x80\x60packet", rx.getsockname())
    return rx.recv(2048)


def test_samples_forwarded_packets_after_the_first_ioctl() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    try:
        sampler = LatencySampler(rx.fileno())
        out = metrics.rtp_tally("out", "audio")
        seen: list[bytes] = []

        def forward(data: bytes, _arrival: int) -> None:
            seen.append(data)
            out.packets += 1

        def drop(data: bytes, _arrival: int) -> None:
            seen.append(data)

        before = _count()
        sampler.forward(_received(rx, tx), forward)  # switches timestamps on: no sample
        assert _count() == before
        sampler.forward(_received(rx, tx), forward)
        assert _count() == before + 1
        sampler.forward(_received(rx, tx), drop)  # nothing forwarded: no sample
        assert _count() == before + 1
        assert len(seen) == 3 and sampler.countdown == LATENCY_SAMPLE_EVERY
    finally:
        rx.close()
        tx.close()


def test_without_a_socket_packets_still_flow() -> None:
    sampler = LatencySampler(-1)
    got: list[bytes] = []
    before = _count()
    sampler.forward(b"x", lambda data, _a: got.append(data))
    assert got == [b"x"] and _count() == before
