"""The C sender (mediaserver/sfu/_fastpath.c) against the Python packet builder.

Real sockets on loopback and real libsrtp sessions: what arrives is unprotected with the
receiving session and must equal, byte for byte, what ``build_rtp`` writes for the same
fields, for every header the forwarding path asks the C sender for.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from types import SimpleNamespace

import pylibsrtp
import pytest

from mediaserver import metrics
from mediaserver.sfu import fastsend
from mediaserver.sfu.aiortc_adapter import PacketSender, attach_srtp, unprotector
from mediaserver.sfu.fastsend import sent
from mediaserver.sfu.rtp import build_rtp
from tests.conftest import srtp_sessions
from tests.fastgraph import Subscriber

if not fastsend.AVAILABLE:  # pragma: no cover - .ci/run installs a compiler
    pytest.fail("the _fastpath extension was not built (no C compiler at install?)",
                pytrace=False)

from mediaserver.sfu import _fastpath

Output = _fastpath.Output


@pytest.fixture
def link() -> Iterator[tuple[Output, socket.socket, pylibsrtp.Session, socket.socket]]:
    """An output sending from one loopback socket to another, and the receiving session."""
    sub = Subscriber(with_output=True)
    sub.b.settimeout(5)
    assert sub.output is not None
    yield sub.output, sub.b, sub.rx, sub.a
    sub.close()


PAYLOAD = bytes(range(256)) * 4


@pytest.mark.parametrize(("marker", "level_id", "level", "ast_id", "exts"), [
    (False, 0, 0, 0, []),                                      # no extension negotiated
    (True, 0, 0, 3, [(3, b"\x12\x34\x56")]),                    # video: abs-send-time
    (False, 2, 0x85, 3, [(2, b"\x85"), (3, b"\x12\x34\x56")]),  # audio: level + ast
    (True, 2, 0x7F, 0, [(2, b"\x7f")]),                         # audio: level only
    (False, 14, 1, 1, [(14, b"\x01"), (1, b"\x12\x34\x56")]),   # highest and lowest ids
])
def test_headers_match_build_rtp(link, marker, level_id, level, ast_id, exts) -> None:
    out, receiver, rx, _ = link
    for seq, (start, end) in enumerate([(0, len(PAYLOAD)), (7, 900), (100, 100)]):
        n = out.send_rtp(marker, 96, 65535 + seq, 0xFFFFFFFF + seq, 0xDEADBEEF, level_id,
                         level, ast_id, 0x123456, PAYLOAD, start, end)
        want = build_rtp(marker=marker, payload_type=96, sequence_number=(65535 + seq) & 0xFFFF,
                         timestamp=(0xFFFFFFFF + seq) & 0xFFFFFFFF, ssrc=0xDEADBEEF,
                         extensions=exts, payload=PAYLOAD[start:end])
        assert n == len(want)
        datagram = receiver.recv(4096)
        assert len(datagram) > n  # protected: an authentication tag was added
        assert rx.unprotect(datagram) == want


def test_payload_from_a_memoryview_and_bytearray(link) -> None:
    out, receiver, rx, _ = link
    for i, buf in enumerate([memoryview(PAYLOAD)[10:500], bytearray(PAYLOAD[:300])]):
        assert out.send_rtp(False, 111, i, 960 * i, 42, 0, 0, 0, 0, buf, 0, len(buf)) > 0
        got = rx.unprotect(receiver.recv(4096))
        assert got[12:] == bytes(buf)


def test_whole_packets_and_rtcp(link) -> None:
    out, receiver, rx, _ = link
    packet = build_rtp(marker=False, payload_type=97, sequence_number=9, timestamp=1, ssrc=7,
                       extensions=[(5, b"\x00\x01")], payload=b"\x00\x09" + PAYLOAD[:50])
    assert out.send_packet(packet) == len(packet)
    assert rx.unprotect(receiver.recv(4096)) == packet
    report = bytes([0x80, 201, 0, 1]) + (1234).to_bytes(4, "big")
    assert out.send_rtcp(report) == len(report)
    assert rx.unprotect_rtcp(receiver.recv(4096)) == report


def test_keeps_sending_after_the_original_socket_is_closed(link) -> None:
    """The output owns a duplicate of the socket: closing (and reusing) the number the ICE
    transport had cannot redirect it."""
    out, receiver, rx, original = link
    port = original.getsockname()[1]
    original.close()
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # likely the old number
    stranger.bind(("127.0.0.1", 0))
    try:
        assert out.send_rtp(False, 96, 1, 1, 1, 0, 0, 0, 0, PAYLOAD, 0, 10) > 0
        datagram, source = receiver.recvfrom(4096)
        assert source[1] == port  # still the connection's own socket
        assert rx.unprotect(datagram)[12:] == PAYLOAD[:10]
    finally:
        stranger.close()


def test_not_ready_until_session_and_destination() -> None:
    tx, _ = srtp_sessions()
    out = Output()
    assert not out.ready
    assert out.send_rtp(False, 96, 1, 1, 1, 0, 0, 0, 0, PAYLOAD, 0, 10) == 0
    assert out.send_packet(PAYLOAD[:40]) == 0
    attach_srtp(out, tx)
    assert not out.ready and out.send_rtcp(PAYLOAD[:40]) == 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        out.set_destination(s.fileno(), "127.0.0.1", 9)
        assert out.ready
        out.clear()
        assert not out.ready
        assert out.send_rtp(False, 96, 1, 1, 1, 0, 0, 0, 0, PAYLOAD, 0, 10) == 0


def test_failures_are_codes_not_exceptions(link) -> None:
    out, _, _, original = link
    big = bytes(_fastpath.MAX_PLAIN + 1)
    assert out.send_packet(big) == _fastpath.ERR_SIZE
    assert out.send_rtp(False, 96, 1, 1, 1, 0, 0, 3, 0, big, 0, len(big)) == _fastpath.ERR_SIZE
    # An IPv6 destination on an IPv4 socket: the kernel refuses every datagram.
    out.set_destination(original.fileno(), "::1", 9)
    assert out.send_rtp(False, 96, 1, 1, 1, 0, 0, 0, 0, PAYLOAD, 0, 10) == fastsend.ERR_SOCKET
    before = metrics.DROP["socket_full"]._value.get()
    assert sent(fastsend.ERR_SOCKET) is True  # lost on the way, as the network would
    assert metrics.DROP["socket_full"]._value.get() == before + 1


def test_garbage_arguments_raise_clear_errors(link) -> None:
    out, _, _, original = link
    with pytest.raises(ValueError, match="bounds"):
        out.send_rtp(False, 96, 1, 1, 1, 0, 0, 0, 0, PAYLOAD, 10, 5)
    with pytest.raises(ValueError, match="bounds"):
        out.send_rtp(False, 96, 1, 1, 1, 0, 0, 0, 0, PAYLOAD, 0, len(PAYLOAD) + 1)
    with pytest.raises(ValueError, match="ids"):
        out.send_rtp(False, 96, 1, 1, 1, 15, 0, 3, 0, PAYLOAD, 0, 10)
    with pytest.raises(TypeError):
        out.send_rtp(False, 96, 1, 1, 1, 0, 0, 0, 0, "text", 0, 1)
    with pytest.raises(TypeError):
        out.send_rtp(False, 96, 1)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="numeric"):
        out.set_destination(original.fileno(), "localhost", 9)
    with pytest.raises(OSError):
        out.set_destination(-1, "127.0.0.1", 9)
    with pytest.raises(ValueError, match="port"):
        out.set_destination(original.fileno(), "127.0.0.1", 0)
    with pytest.raises(ValueError):
        out.set_srtp(object(), 0, 0, 0)


@pytest.mark.parametrize("fast", [True, False])
def test_unprotector_c_and_python_agree(fast: bool) -> None:
    """The receive side: the C Input and the pure-Python fallback give the same packets,
    and None (never an exception) for what libsrtp refuses."""
    tx, rx = srtp_sessions()
    unprotect = unprotector(rx, fast=fast)
    assert isinstance(unprotect, _fastpath.Input) == fast
    for seq in range(1, 40):
        packet = build_rtp(marker=seq % 2 == 0, payload_type=96, sequence_number=seq,
                           timestamp=seq * 3000, ssrc=77, extensions=[(3, b"\x01\x02\x03")],
                           payload=PAYLOAD[: 20 * seq])
        protected = tx.protect(packet)
        assert unprotect.unprotect(protected) == packet
        assert unprotect.unprotect(protected) is None  # a replay
    report = bytes([0x80, 201, 0, 1]) + (77).to_bytes(4, "big")
    assert unprotect.unprotect_rtcp(tx.protect_rtcp(report)) == report
    for garbage in (b"", b"\x80", b"\x80\x60" + bytes(30), b"\x80\x60" + bytes(5000),
                    memoryview(b"\x80\xc9" + bytes(40))):
        assert unprotect.unprotect(garbage) is None
        assert unprotect.unprotect_rtcp(garbage) is None


class _Socketless:
    """A transport that will not hand out its socket (as some event loops' do not)."""

    def __init__(self, transport: asyncio.DatagramTransport) -> None:
        self._transport = transport

    def get_extra_info(self, name: str) -> None:
        return None

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self._transport.sendto(data, addr)


@pytest.mark.parametrize("socketless", [False, True])
async def test_packet_sender_uses_the_output_or_falls_back(socketless: bool) -> None:
    """PacketSender on a connected session and a nominated pair: packets go through the C
    output when it could take the pair's socket, and through the pair's transport when it
    could not; closing it stops both."""
    tx, rx = srtp_sessions()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(5)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                       local_addr=("127.0.0.1", 0))
    pair = SimpleNamespace(
        protocol=SimpleNamespace(transport=_Socketless(transport) if socketless else transport),
        remote_addr=sink.getsockname())
    connection = SimpleNamespace(_nominated={})
    dtls = SimpleNamespace(state="new", _tx_srtp=tx, transport=SimpleNamespace(
        _connection=connection))
    sender = PacketSender(dtls)  # type: ignore[arg-type]
    packet = build_rtp(marker=False, payload_type=96, sequence_number=1, timestamp=1,
                       ssrc=5, extensions=[], payload=PAYLOAD[:100])
    try:
        assert sender.send_rtp(packet) is False  # DTLS not up
        dtls.state = "connected"
        assert sender.send_rtp(packet) is False  # no pair nominated
        connection._nominated[1] = pair
        assert sender.send_rtp(packet) is True
        assert sender.output.ready is (not socketless)
        assert rx.unprotect(sink.recv(4096)) == packet
        report = bytes([0x80, 201, 0, 1]) + (5).to_bytes(4, "big")
        assert sender.send_rtcp(report) is True
        assert rx.unprotect_rtcp(sink.recv(4096)) == report
        sender.close()
        assert not sender.output.ready
        assert sender.send_rtp(packet) is False
    finally:
        transport.close()
        sink.close()
