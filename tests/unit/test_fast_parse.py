"""The C RTP parser (mediaserver/sfu/_fastpath.c) against the Python one, packet for packet.

``rtp.parse_rtp`` is the C parser when the extension is built; ``rtp._parse_rtp_py`` the
Python one whose rules are the reference (and whose own tests are in test_rtp.py). Both
must agree on every input: well-formed packets, every way of being malformed, and random
bytes.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediaserver.sfu import fastsend, rtp
from mediaserver.sfu.rtp import RtpPacket, build_rtp

if not fastsend.AVAILABLE:  # pragma: no cover - .ci/run installs a compiler
    pytest.fail("the _fastpath extension was not built (no C compiler at install?)",
                pytrace=False)

from mediaserver.sfu import _fastpath

FIELDS = RtpPacket.__slots__


def _as_tuple(pkt: RtpPacket | None) -> tuple[object, ...] | None:
    if pkt is None:
        return None
    return tuple(getattr(pkt, f) for f in FIELDS)


def _same(data: bytes) -> None:
    c, py = rtp.parse_rtp(data), rtp._parse_rtp_py(data)
    assert _as_tuple(c) == _as_tuple(py), data.hex()
    if c is not None:
        assert type(c) is RtpPacket
        assert type(c.marker) is bool and type(c.extensions) is dict
        assert c.data is data  # the packet keeps the buffer, as the Python parser does


def test_the_c_parser_is_in_use() -> None:
    assert rtp.parse_rtp is _fastpath.parse_rtp


ONE_BYTE = [(1, b"0"), (3, b"\x01\x02\x03"), (14, bytes(16))]
TWO_BYTE = [(1, b""), (200, bytes(255)), (15, b"x")]


@pytest.mark.parametrize("extensions", [[], ONE_BYTE, TWO_BYTE, [(2, b"\x85")]])
@pytest.mark.parametrize("padding", [0, 1, 17])
@pytest.mark.parametrize("csrcs", [(), (1, 0xFFFFFFFF)])
def test_well_formed_packets(extensions, padding, csrcs) -> None:
    data = build_rtp(marker=True, payload_type=127, sequence_number=0xFFFF,
                     timestamp=0xFFFFFFFF, ssrc=0x80000000, extensions=extensions,
                     payload=b"payload", padding=padding, csrcs=csrcs)
    _same(data)
    pkt = rtp.parse_rtp(data)
    assert pkt is not None
    assert pkt.payload == b"payload" and pkt.extensions == dict(extensions)
    assert (pkt.marker, pkt.payload_type, pkt.sequence_number, pkt.timestamp, pkt.ssrc) == (
        True, 127, 0xFFFF, 0xFFFFFFFF, 0x80000000)


HEADER = bytes([0x90, 0x60, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3])


@pytest.mark.parametrize("data", [
    b"",
    bytes(11),                                     # shorter than a header
    bytes([0x40]) + bytes(11),                     # version 1
    bytes([0x8F]) + bytes(11),                     # 15 CSRCs announced, none there
    HEADER,                                        # extension bit, no extension header
    HEADER + b"\xbe\xde\x00\x05" + bytes(4),       # extension longer than the packet
    HEADER + b"\xbe\xde\x00\x01\x22\xaa\xbb\xcc",  # element runs past the block: kept so far
    HEADER + b"\xbe\xde\x00\x01\x00\x10\xaa\xf0",  # padding, element, then id 15: stop
    HEADER + b"\xbe\xde\x00\x01\x05\x10\xaa\x00",  # id 0 with a length: stop
    HEADER + b"\x10\x00\x00\x01\x00\x05\x02\xaa",  # two-byte: length past the block
    HEADER + b"\x12\x34\x00\x01\x11\x22\x33\x44",  # unknown profile: no extensions
    HEADER + b"\xbe\xde\x00\x01\x10\xaa\x10\xbb",  # the same id twice: the later wins
    bytes([0xA0, 0x60]) + bytes(10) + b"\x00",     # padding count 0
    bytes([0xA0, 0x60]) + bytes(10) + b"ab\x05",   # padding longer than the payload
    bytes([0xA0, 0x60]) + bytes(10) + b"ab\x03",   # padding is the whole payload
])
def test_malformed_and_odd_packets(data) -> None:
    _same(data)


def test_other_buffers_go_to_the_python_parser() -> None:
    data = build_rtp(marker=False, payload_type=96, sequence_number=1, timestamp=2, ssrc=3,
                     extensions=[(1, b"a")], payload=b"x")
    for buf in (bytearray(data), memoryview(data)):
        pkt = rtp.parse_rtp(buf)  # type: ignore[arg-type]
        assert pkt is not None and pkt.data is buf and pkt.payload_end == len(data)


def test_registration_checks_the_class() -> None:
    class NoSlots:
        pass

    with pytest.raises(AttributeError):
        _fastpath.set_packet_class(NoSlots, rtp._parse_rtp_py)
    with pytest.raises(TypeError):
        _fastpath.set_packet_class("not a class", rtp._parse_rtp_py)  # type: ignore[arg-type]
    assert rtp.parse_rtp(HEADER[:1]) is None  # the registered class is still in place


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=80))
def test_random_bytes(data: bytes) -> None:
    _same(data)


@settings(max_examples=1500, deadline=None)
@given(first=st.integers(0x80, 0xBF), second=st.integers(0, 255),
       body=st.binary(min_size=10, max_size=60),
       ext=st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=20)), max_size=4),
       profile=st.sampled_from([b"\xbe\xde", b"\x10\x00", b"\x10\x07", b"\x00\x00"]))
def test_random_version_2_packets(first, second, body, ext, profile) -> None:
    """Mostly-plausible packets: version 2, an extension block of random elements."""
    elements = b"".join(bytes([xid, len(v)]) + v for xid, v in ext)
    words = (len(elements) + 3) // 4
    block = profile + words.to_bytes(2, "big") + elements.ljust(words * 4, b"\x00")
    _same(bytes([first | 0x10, second]) + body[:10] + block + body[10:])
    _same(bytes([first, second]) + body)
