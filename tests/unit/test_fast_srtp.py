"""FastSrtp against pylibsrtp's own Session on the same keys."""

from __future__ import annotations

import pylibsrtp
import pytest

from mediaserver.sfu.aiortc_adapter import FastSrtp
from mediaserver.sfu.rtp import build_rtp, parse_rtp
from tests.conftest import srtp_sessions


def _rtp(seq: int, size: int = 1000) -> bytes:
    return build_rtp(marker=False, payload_type=96, sequence_number=seq, timestamp=seq * 90,
                     ssrc=1234, extensions=[], payload=bytes(i & 0xFF for i in range(size)))


def test_roundtrip_both_ways_with_stock_sessions() -> None:
    tx, rx = srtp_sessions()
    fast_tx = FastSrtp(tx)
    for seq in range(1, 50):
        packet = _rtp(seq)
        protected = fast_tx.protect(packet)
        assert protected != packet and len(protected) > len(packet)
        assert rx.unprotect(protected) == packet
    tx2, rx2 = srtp_sessions()
    fast_rx = FastSrtp(rx2)
    for seq in range(1, 50):
        packet = _rtp(seq, 512)
        assert fast_rx.unprotect(tx2.protect(packet)) == packet


def test_rtcp_roundtrip() -> None:
    tx, rx = srtp_sessions()
    report = bytes([0x80, 201, 0, 1]) + (1234).to_bytes(4, "big")
    assert FastSrtp(rx).unprotect_rtcp(FastSrtp(tx).protect_rtcp(report)) == report


@pytest.mark.parametrize("data", [
    b"\x80\x60" + bytes(30),           # not authentic
    b"\x80",                           # too short for a header
    b"\x80\x60" + bytes(2000),         # larger than any datagram we accept
])
def test_garbage_raises_pylibsrtp_error(data: bytes) -> None:
    _, rx = srtp_sessions()
    with pytest.raises(pylibsrtp.Error):
        FastSrtp(rx).unprotect(data)


def test_oversized_protect_is_refused_before_touching_the_buffer() -> None:
    tx, rx = srtp_sessions()
    fast = FastSrtp(tx)
    with pytest.raises(pylibsrtp.Error):
        fast.protect(_rtp(1, 1500))
    packet = _rtp(2)
    assert parse_rtp(rx.unprotect(fast.protect(packet))) is not None
