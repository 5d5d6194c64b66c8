"""The C datagram handler of an ICE socket (fastsend.Receiver) does what the Python
closure of aiortc_adapter._fast_path did: SRTP and SRTCP unprotected (real libsrtp) and
handed on, everything else to the protocol's own handler, every Nth RTP packet timed from
the kernel's receive stamp to its last copy sent, refusals and handler failures counted,
never raised into the socket's callback; with a publisher's stream table, media packets
of known streams taken by the C receive path itself."""

from __future__ import annotations

import gc
import socket
import weakref
from typing import Any

import pytest

from mediaserver.sfu import fastsend
from mediaserver.sfu.aiortc_adapter import unprotector
from mediaserver.sfu.rtcp import build_pli
from mediaserver.sfu.rtp import build_rtp
from tests.conftest import srtp_sessions
from tests.fastgraph import OPUS, Graph

if not fastsend.AVAILABLE:  # pragma: no cover - .ci/run installs a compiler
    pytest.fail("the _fastpath extension was not built (no C compiler at install?)",
                pytrace=False)

ADDR = ("127.0.0.1", 5000)


class Calls:
    """Every hand-off the receiver makes, in order."""

    def __init__(self, rx: Any = None) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.rx = rx
        self.refreshes = 0
        self.raise_in_rtp: BaseException | None = None

    def receiver(self, every: int = 4, streams: dict[int, Any] | None = None,
                 fd: int = -1) -> Any:
        return fastsend.Receiver(self.original, self.on_rtp, self.on_rtcp, self.refresh,
                                 fd, self.observe, every, self.srtp_error, self.failed,
                                 streams)

    def original(self, data: bytes, addr: Any) -> None:
        self.log.append(("original", data, addr))

    def on_rtp(self, data: bytes, arrival: int) -> None:
        self.log.append(("rtp", data, arrival))
        if self.raise_in_rtp is not None:
            raise self.raise_in_rtp

    def on_rtcp(self, data: bytes) -> None:
        self.log.append(("rtcp", data))

    def refresh(self) -> Any:
        self.refreshes += 1
        return self.rx

    def observe(self, seconds: float) -> None:
        self.log.append(("observe", seconds))

    def srtp_error(self) -> None:
        self.log.append(("srtp_error",))

    def failed(self, exc: BaseException) -> None:
        self.log.append(("failed", type(exc).__name__))


def _rtp(seq: int, ssrc: int = 77, pt: int = 111) -> bytes:
    return build_rtp(marker=False, payload_type=pt, sequence_number=seq, timestamp=seq * 960,
                     ssrc=ssrc, extensions=[], payload=bytes(range(40)))


def test_not_srtp_goes_to_the_protocol_and_srtp_waits_for_the_session() -> None:
    calls = Calls()
    r = calls.receiver()
    for data in (b"\x00\x01stun", b"\x16\xfe\xfddtls", b"", b"\xc0too high"):
        r.datagram_received(data, ADDR)
    r.datagram_received(b"\x80\x6fno session yet", ADDR)  # refresh() gives None: as is
    assert [e[0] for e in calls.log] == ["original"] * 5
    assert calls.log[0] == ("original", b"\x00\x01stun", ADDR)
    assert calls.refreshes == 1


def test_srtp_and_srtcp_unprotected_and_handed_on() -> None:
    tx, rx = srtp_sessions()
    calls = Calls(unprotector(rx))
    r = calls.receiver(every=3)
    packets = [_rtp(seq) for seq in range(1, 8)]
    for p in packets:
        r.datagram_received(tx.protect(p), ADDR)
    pli = build_pli(1, 77)
    r.datagram_received(tx.protect_rtcp(pli), ADDR)
    assert calls.refreshes == 1  # the session is asked for once, then kept
    kinds = [e[0] for e in calls.log]
    # every third RTP packet is a sample, but without a socket there is no stamp to time
    assert kinds == ["rtp"] * 7 + ["rtcp"]
    assert [e[1] for e in calls.log if e[0] == "rtp"] == packets
    assert calls.log[-1] == ("rtcp", pli)


def test_refusals_and_failures_are_counted_not_raised() -> None:
    tx, rx = srtp_sessions()
    calls = Calls(unprotector(rx))
    r = calls.receiver(every=1000)
    r.datagram_received(b"\x80\x6f" + bytes(40), ADDR)  # not authentic
    replay = tx.protect(_rtp(1))
    r.datagram_received(replay, ADDR)
    r.datagram_received(replay, ADDR)  # a replay
    calls.raise_in_rtp = ValueError("handler bug")
    r.datagram_received(tx.protect(_rtp(2)), ADDR)
    assert [e[0] for e in calls.log] == ["srtp_error", "rtp", "srtp_error", "rtp", "failed"]
    assert calls.log[-1] == ("failed", "ValueError")
    calls.raise_in_rtp = KeyboardInterrupt()  # not an Exception: it is not swallowed
    with pytest.raises(KeyboardInterrupt):
        r.datagram_received(tx.protect(_rtp(3)), ADDR)
    with pytest.raises(TypeError):
        r.datagram_received(b"\x80")  # one argument


def test_known_streams_are_taken_by_the_c_receive_path() -> None:
    tx, rx = srtp_sessions()
    g = Graph("audio", OPUS)
    try:
        stream = g.producer.streams[0]
        calls = Calls(unprotector(rx))
        r = calls.receiver(every=1000, streams={77: stream})
        for seq in range(1, 6):
            r.datagram_received(tx.protect(_rtp(seq)), ADDR)
        assert calls.log == []  # none reached on_rtp
        assert stream.stats.packets_received == 5
        assert all(c.stats.packets_sent == 5 for c in g.consumers)
        unknown, other_pt = _rtp(6, ssrc=99), _rtp(7, pt=63)
        r.datagram_received(tx.protect(unknown), ADDR)
        r.datagram_received(tx.protect(other_pt), ADDR)
        assert calls.log == [("rtp", unknown, 0), ("rtp", other_pt, 0)]
        assert stream.stats.packets_received == 5
    finally:
        g.close()


def test_every_nth_forwarded_packet_is_timed_from_the_kernel_stamp() -> None:
    tx, rx = srtp_sessions()
    g = Graph("audio", OPUS)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    try:
        stream = g.producer.streams[0]
        calls = Calls(unprotector(rx))
        r = calls.receiver(every=2, streams={77: stream}, fd=sock.fileno())

        def arrive(packet: bytes) -> None:  # through the kernel, as uvloop reads it
            peer.sendto(tx.protect(packet), sock.getsockname())
            r.datagram_received(sock.recv(2048), ADDR)

        for seq in range(1, 9):
            arrive(_rtp(seq))
        # packets 2, 4, 6, 8 are samples; the first stamp asked for only switches stamps on
        delays = [e[1] for e in calls.log if e[0] == "observe"]
        assert len(delays) == 3 and calls.log == [("observe", d) for d in delays]
        assert all(0.0 <= d < 1.0 for d in delays)
        assert all(c.stats.packets_sent == 8 for c in g.consumers)
        for c in g.consumers:  # nothing sent: no sample
            c.paused = True
        arrive(_rtp(9))
        arrive(_rtp(10))
        assert len([e for e in calls.log if e[0] == "observe"]) == 3
        assert all(c.stats.packets_sent == 8 for c in g.consumers)
    finally:
        sock.close()
        peer.close()
        g.close()


def test_a_receiver_in_a_reference_cycle_is_collected() -> None:
    class Owner:
        pass

    owner = Owner()
    probe = weakref.ref(owner)
    calls = Calls()
    r = calls.receiver()
    owner.handler = r.datagram_received  # type: ignore[attr-defined]
    calls.owner = owner  # type: ignore[attr-defined]  # receiver -> calls -> owner -> receiver
    del owner, calls, r
    gc.collect()
    assert probe() is None
