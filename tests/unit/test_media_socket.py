"""A media socket read by the C extension (mediasocket.MediaTransport, fastsend.Reader):
real UDP sockets on loopback, a real event loop, real libsrtp. Datagrams reach the
protocol's current handler with their source address, several to a system call; a C
Receiver installed as the handler takes SRTP without an address and times samples from
each datagram's own kernel stamp; failures are counted and the socket's reading goes on;
closing lets go of the socket."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from mediaserver.sfu import fastsend, mediasocket
from mediaserver.sfu.aiortc_adapter import unprotector
from mediaserver.sfu.rtp import build_rtp
from tests.conftest import srtp_sessions
from tests.fastgraph import OPUS, Graph

if not fastsend.AVAILABLE:  # pragma: no cover - .ci/run installs a compiler
    pytest.fail("the _fastpath extension was not built (no C compiler at install?)",
                pytrace=False)


class Recorder(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: list[tuple[bytes, Any]] = []
        self.errors: list[OSError] = []
        self.lost: list[Exception | None] = []
        self.transport: Any = None
        self.raise_on: bytes | None = None
        self.raise_with: BaseException = ValueError("handler bug")

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.append((data, addr))
        if data == self.raise_on:
            raise self.raise_with

    def error_received(self, exc: Exception) -> None:
        assert isinstance(exc, OSError)
        self.errors.append(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def _udp(host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


def _open(sock: socket.socket, failures: list[BaseException] | None = None
          ) -> tuple[mediasocket.MediaTransport, Recorder]:
    sink = failures if failures is not None else []
    transport, protocol = mediasocket.open_endpoint(
        asyncio.get_running_loop(), Recorder, sock, sink.append)
    assert isinstance(protocol, Recorder) and protocol.transport is transport
    return transport, protocol


async def test_datagrams_reach_the_handler_with_their_source_several_to_a_read() -> None:
    peer = _udp()
    transport, protocol = _open(_udp())
    try:
        where = transport.get_extra_info("sockname")
        assert transport.get_extra_info("socket").getsockname() == where
        payloads = [bytes([i]) * (100 + i) for i in range(20)] + [b"\x00" * 9000]
        for p in payloads:  # all queued before the loop looks: batches of up to 16
            peer.sendto(p, where)
        await until(lambda: len(protocol.got) == len(payloads))
        assert [d for d, _ in protocol.got] == payloads
        assert {a for _, a in protocol.got} == {peer.getsockname()}
        assert transport.datagrams == len(payloads)
        assert 2 <= transport.reads < len(payloads)
        transport.sendto(b"answer", peer.getsockname())
        peer.settimeout(5)
        assert peer.recvfrom(100) == (b"answer", where)
    finally:
        transport.close()
        peer.close()


def test_the_same_under_uvloop_as_the_server_runs() -> None:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(test_datagrams_reach_the_handler_with_their_source_several_to_a_read())
        runner.run(test_a_c_receiver_takes_srtp_and_times_samples_from_each_stamp())


async def test_an_ipv6_source_has_asyncios_four_items() -> None:
    try:
        sock, peer = _udp("::1"), _udp("::1")
    except OSError as exc:  # pragma: no cover - IPv6 loopback is up here and in CI
        pytest.fail(f"no IPv6 loopback: {exc}")
    transport, protocol = _open(sock)
    try:
        peer.sendto(b"six", transport.get_extra_info("sockname"))
        await until(lambda: len(protocol.got) == 1)
        data, addr = protocol.got[0]
        assert data == b"six" and len(addr) == 4
        assert addr == peer.getsockname()
    finally:
        transport.close()
        peer.close()


async def test_a_handler_failure_is_counted_and_reading_goes_on() -> None:
    peer = _udp()
    failures: list[BaseException] = []
    transport, protocol = _open(_udp(), failures)
    try:
        where = transport.get_extra_info("sockname")
        protocol.raise_on = b"bad"
        for p in (b"one", b"bad", b"two"):
            peer.sendto(p, where)
        await until(lambda: len(protocol.got) == 3)
        assert [d for d, _ in protocol.got] == [b"one", b"bad", b"two"]
        assert [type(e) for e in failures] == [ValueError]
    finally:
        transport.close()
        peer.close()


async def test_an_interrupt_is_not_swallowed() -> None:
    peer = _udp()
    sock = _udp()
    protocol = Recorder()
    protocol.raise_on, protocol.raise_with = b"stop", KeyboardInterrupt()
    failures: list[BaseException] = []
    reader = fastsend.Reader(sock.fileno(), protocol, failures.append)
    try:
        peer.sendto(b"stop", sock.getsockname())
        deadline = time.monotonic() + 5
        with pytest.raises(KeyboardInterrupt):
            while time.monotonic() < deadline:  # no loop: called as the loop would
                reader.readable()
        assert protocol.got[0][0] == b"stop" and not failures
    finally:
        sock.close()
        peer.close()


def test_a_receive_error_goes_to_error_received() -> None:
    sock = _udp()
    protocol = Recorder()
    reader = fastsend.Reader(sock.fileno(), protocol, lambda exc: None)
    sock.close()  # the descriptor is gone under the reader
    reader.readable()
    assert len(protocol.errors) == 1 and protocol.errors[0].errno is not None
    reader.forget()
    reader.readable()  # forgotten: reads nothing, reports nothing
    assert len(protocol.errors) == 1


async def test_close_lets_go_of_the_socket() -> None:
    peer = _udp()
    sock = _udp()
    transport, protocol = _open(sock)
    other, witness = _open(_udp())  # still open: shows when the loop has read again
    try:
        where = transport.get_extra_info("sockname")
        transport.close()
        transport.close()  # twice is once
        assert transport.is_closing()
        assert sock.fileno() == -1  # at once: a loop that stops now leaves nothing open
        await until(lambda: protocol.lost == [None])
        transport.sendto(b"late", peer.getsockname())  # after close: nothing, no error
        peer.sendto(b"unread", where)
        peer.sendto(b"probe", other.get_extra_info("sockname"))
        await until(lambda: [d for d, _ in witness.got] == [b"probe"])
        assert protocol.got == [] and protocol.errors == []
    finally:
        other.close()
        peer.close()


def _rtp(seq: int) -> bytes:
    return build_rtp(marker=False, payload_type=111, sequence_number=seq, timestamp=seq * 960,
                     ssrc=77, extensions=[], payload=bytes(range(40)))


async def test_a_c_receiver_takes_srtp_and_times_samples_from_each_stamp() -> None:
    tx, rx = srtp_sessions()
    g = Graph("audio", OPUS)
    peer = _udp()
    transport, protocol = _open(_udp())
    observed: list[float] = []
    original: list[tuple[bytes, Any]] = []
    receiver = fastsend.Receiver(
        lambda data, addr: original.append((data, addr)), lambda data, arrival: None,
        lambda data: None, lambda: unprotector(rx), -1, observed.append, 2,
        lambda: None, lambda exc: None, {77: g.producer.streams[0]})
    protocol.datagram_received = receiver.datagram_received  # type: ignore[method-assign]
    try:
        where = transport.get_extra_info("sockname")
        peer.sendto(b"\x00\x01stun", where)  # not SRTP: the original handler, with a source
        for seq in range(1, 9):
            peer.sendto(tx.protect(_rtp(seq)), where)
        await until(lambda: all(c.stats.packets_sent == 8 for c in g.consumers))
        assert original == [(b"\x00\x01stun", peer.getsockname())]
        assert g.producer.streams[0].stats.packets_received == 8
        # packets 2, 4, 6, 8 are samples, each timed from its own stamp (no socket to ask:
        # fd -1), so the first counts too
        assert len(observed) == 4 and all(0.0 <= d < 1.0 for d in observed)
        assert protocol.got == []  # the recorder's own handler was replaced
    finally:
        transport.close()
        peer.close()
        g.close()
