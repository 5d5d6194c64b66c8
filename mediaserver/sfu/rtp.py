"""RTP packets (RFC 3550) with RFC 8285 header extensions, parsed once and kept as bytes.

An SFU forwards far more than it inspects, so a parsed packet keeps the original buffer and
only records offsets: the payload is sliced on demand and a forwarded packet is re-emitted
with a new header (``build_rtp``) around the untouched payload. Header extensions are kept
raw (id -> bytes); which id means what is negotiated per transport, so interpreting them is
left to the caller, with the small value codecs at the bottom of this module.

``parse_rtp`` reads bytes from the network and never raises: anything malformed gives
``None``. A single malformed element inside an otherwise well-bounded extension block ends
extension parsing (what was read so far is kept), as libwebrtc does.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence

EXT_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
EXT_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
EXT_REPAIRED_RID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
EXT_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
EXT_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
EXT_TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"

RTP_HEADER_SIZE = 12
ONE_BYTE_PROFILE = 0xBEDE
TWO_BYTE_PROFILE = 0x1000

_HEADER = struct.Struct("!BBHII")
_U16X2 = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_BYTE = tuple(bytes((i,)) for i in range(256))
_ZEROS = (b"", b"\x00", b"\x00\x00", b"\x00\x00\x00")


class RtpPacket:
    """A parsed view of one RTP packet; ``data`` is the whole packet as received.

    ``extensions`` maps the local extension id to its raw value. Instances are created by
    ``parse_rtp`` and are meant to be read, not mutated.
    """

    __slots__ = (
        "csrc_count",
        "data",
        "extensions",
        "marker",
        "payload_end",
        "payload_offset",
        "payload_type",
        "sequence_number",
        "ssrc",
        "timestamp",
    )

    def __init__(
        self,
        data: bytes,
        marker: bool,
        payload_type: int,
        sequence_number: int,
        timestamp: int,
        ssrc: int,
        csrc_count: int,
        payload_offset: int,
        payload_end: int,
        extensions: dict[int, bytes],
    ) -> None:
        self.data = data
        self.marker = marker
        self.payload_type = payload_type
        self.sequence_number = sequence_number
        self.timestamp = timestamp
        self.ssrc = ssrc
        self.csrc_count = csrc_count
        self.payload_offset = payload_offset
        self.payload_end = payload_end
        self.extensions = extensions

    @property
    def payload(self) -> bytes:
        return self.data[self.payload_offset : self.payload_end]

    @property
    def padding_size(self) -> int:
        """Number of RTP padding bytes, including the trailing count byte."""
        return len(self.data) - self.payload_end

    @property
    def csrcs(self) -> tuple[int, ...]:
        return struct.unpack_from(f"!{self.csrc_count}I", self.data, RTP_HEADER_SIZE)

    def __repr__(self) -> str:
        return (
            f"RtpPacket(pt={self.payload_type}, seq={self.sequence_number}, "
            f"ts={self.timestamp}, ssrc={self.ssrc}, marker={self.marker}, "
            f"payload={self.payload_end - self.payload_offset}B, "
            f"padding={self.padding_size}B, ext={sorted(self.extensions)})"
        )


def _parse_one_byte(data: bytes, pos: int, end: int) -> dict[int, bytes]:
    ext: dict[int, bytes] = {}
    while pos < end:
        b = data[pos]
        if not 0x10 <= b < 0xF0:
            if b:  # id 15 is reserved ("stop parsing"); id 0 may only be a padding byte
                break
            pos += 1
            continue
        value_end = pos + 2 + (b & 0x0F)
        if value_end > end:
            break
        ext[b >> 4] = data[pos + 1 : value_end]
        pos = value_end
    return ext


def _parse_two_byte(data: bytes, pos: int, end: int) -> dict[int, bytes]:
    ext: dict[int, bytes] = {}
    while pos < end:
        xid = data[pos]
        if xid == 0:  # padding
            pos += 1
            continue
        if pos + 2 > end:
            break
        value_end = pos + 2 + data[pos + 1]
        if value_end > end:
            break
        ext[xid] = data[pos + 2 : value_end]
        pos = value_end
    return ext


def _parse_rtp_py(data: bytes) -> RtpPacket | None:
    """Parse one RTP packet; ``None`` if it is not a well-formed version 2 packet."""
    n = len(data)
    if n < RTP_HEADER_SIZE:
        return None
    b0, b1, seq, ts, ssrc = _HEADER.unpack_from(data)
    if b0 & 0xC0 != 0x80:
        return None
    cc = b0 & 0x0F
    pos = RTP_HEADER_SIZE + 4 * cc
    if pos > n:
        return None
    if b0 & 0x10:
        if pos + 4 > n:
            return None
        profile, words = _U16X2.unpack_from(data, pos)
        pos += 4
        ext_end = pos + 4 * words
        if ext_end > n:
            return None
        if profile == ONE_BYTE_PROFILE:
            ext = _parse_one_byte(data, pos, ext_end)
        elif profile & 0xFFF0 == TWO_BYTE_PROFILE:
            ext = _parse_two_byte(data, pos, ext_end)
        else:
            ext = {}
        pos = ext_end
    else:
        ext = {}
    end = n
    if b0 & 0x20:
        pad = data[n - 1]
        if pad == 0 or pad > n - pos:
            return None
        end = n - pad
    return RtpPacket(data, b1 > 0x7F, b1 & 0x7F, seq, ts, ssrc, cc, pos, end, ext)


parse_rtp: Callable[[bytes], RtpPacket | None] = _parse_rtp_py
try:
    # The same parser in C (mediaserver/sfu/_fastpath.c), making RtpPacket instances; it
    # hands anything but bytes back to the Python one. Absent when built without a compiler.
    from mediaserver.sfu import _fastpath

    _fastpath.set_packet_class(RtpPacket, _parse_rtp_py)
    parse_rtp = _fastpath.parse_rtp
except ImportError:
    pass


def _pack_extensions(extensions: Sequence[tuple[int, bytes]]) -> bytes:
    parts: list[bytes] = []
    for xid, value in extensions:
        n = len(value)
        if not (0 < xid < 15 and 0 < n <= 16):
            return _pack_two_byte(extensions)
        parts.append(_BYTE[(xid << 4) | (n - 1)])
        parts.append(value)
    return _ext_block(ONE_BYTE_PROFILE, parts)


def _pack_two_byte(extensions: Sequence[tuple[int, bytes]]) -> bytes:
    parts: list[bytes] = []
    for xid, value in extensions:
        n = len(value)
        if not (0 < xid < 256 and n < 256):
            raise ValueError(f"RTP header extension {xid} with {n} bytes cannot be sent")
        parts.append(_BYTE[xid] + _BYTE[n])
        parts.append(value)
    return _ext_block(TWO_BYTE_PROFILE, parts)


def _ext_block(profile: int, parts: list[bytes]) -> bytes:
    body = b"".join(parts)
    pad = -len(body) & 3
    return _U16X2.pack(profile, (len(body) + pad) >> 2) + body + _ZEROS[pad]


def _header(
    marker: bool,
    payload_type: int,
    sequence_number: int,
    timestamp: int,
    ssrc: int,
    extensions: Sequence[tuple[int, bytes]],
    padding: int,
    csrcs: Sequence[int],
) -> bytes:
    if payload_type & ~0x7F:
        raise ValueError(f"RTP payload type {payload_type} is not in 0..127")
    if padding & ~0xFF:
        raise ValueError(f"RTP padding {padding} is not in 0..255")
    b0 = 0x80
    if padding:
        b0 |= 0x20
    if csrcs:
        if len(csrcs) > 15:
            raise ValueError("at most 15 CSRCs fit in an RTP header")
        b0 |= len(csrcs)
    head = _HEADER.pack(
        b0 | (0x10 if extensions else 0),
        (0x80 if marker else 0) | payload_type,
        sequence_number & 0xFFFF,
        timestamp & 0xFFFFFFFF,
        ssrc & 0xFFFFFFFF,
    )
    if csrcs:
        head += b"".join(_U32.pack(c & 0xFFFFFFFF) for c in csrcs)
    if extensions:
        head += _pack_extensions(extensions)
    return head


def _padding(padding: int) -> bytes:
    return b"\x00" * (padding - 1) + bytes((padding,))


def build_rtp(
    *,
    marker: bool,
    payload_type: int,
    sequence_number: int,
    timestamp: int,
    ssrc: int,
    extensions: Sequence[tuple[int, bytes]],
    payload: bytes | memoryview,
    padding: int = 0,
    csrcs: Sequence[int] = (),
) -> bytes:
    """Serialise an RTP packet.

    Extensions use the one-byte form (RFC 8285) when every id is 1..14 and every value
    1..16 bytes, the two-byte form otherwise. ``padding`` counts all padding bytes
    including the final count byte (0 for none); padding bytes are zero, not random.
    Sequence number, timestamp and SSRC are reduced modulo their field size; a payload type,
    padding, CSRC list or extension that cannot be represented raises ``ValueError``.
    """
    if not extensions and not padding and not csrcs:
        if payload_type & ~0x7F:
            raise ValueError(f"RTP payload type {payload_type} is not in 0..127")
        return (
            _HEADER.pack(
                0x80,
                (0x80 if marker else 0) | payload_type,
                sequence_number & 0xFFFF,
                timestamp & 0xFFFFFFFF,
                ssrc & 0xFFFFFFFF,
            )
            + payload
        )
    head = _header(
        marker, payload_type, sequence_number, timestamp, ssrc, extensions, padding, csrcs
    )
    if padding:
        return b"".join((head, payload, _padding(padding)))
    return head + payload


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 demultiplexing: RTCP packet types 192..223 sit where RTP has M + PT 64..95."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def wrap_rtx(
    packet: RtpPacket,
    *,
    payload_type: int,
    sequence_number: int,
    ssrc: int,
    extensions: Sequence[tuple[int, bytes]],
) -> bytes:
    """Build the RFC 4588 retransmission of ``packet``: OSN + original payload.

    Marker, timestamp and CSRCs are those of the original; its padding is not carried.
    """
    data = packet.data
    head = _header(
        packet.marker,
        payload_type,
        sequence_number,
        packet.timestamp,
        ssrc,
        extensions,
        0,
        packet.csrcs if packet.csrc_count else (),
    )
    return b"".join(
        (
            head,
            _U16.pack(packet.sequence_number),
            memoryview(data)[packet.payload_offset : packet.payload_end],
        )
    )


def unwrap_rtx(packet: RtpPacket) -> tuple[int, bytes] | None:
    """(original sequence number, original payload) of an RTX packet; None if too short."""
    start = packet.payload_offset
    if packet.payload_end - start < 2:
        return None
    return _U16.unpack_from(packet.data, start)[0], packet.data[start + 2 : packet.payload_end]


# Header extension values. Unpackers take the raw value from ``RtpPacket.extensions`` and
# return None for a value too short to hold the field (trailing extra bytes are ignored).


def pack_audio_level(voice: bool, level: int) -> bytes:
    """RFC 6464 value: V flag and level in -dBov, clamped to 0..127."""
    level = 0 if level < 0 else 127 if level > 127 else level
    return bytes(((0x80 if voice else 0) | level,))


def unpack_audio_level(b: bytes) -> tuple[bool, int] | None:
    if not b:
        return None
    v = b[0]
    return v > 0x7F, v & 0x7F


_HEADER_AST = struct.Struct("!BBHIIHHI")  # fixed header + a one-word one-byte extension block
_HEADER_LEVEL_AST = struct.Struct("!BBHIIHHBBIH")  # ... a two-word block, 2 bytes of padding


def abs_send_time_24(t: float) -> int:
    """abs-send-time value: seconds in 6.18 fixed point, modulo 64 s.

    Unix and NTP time give the same value: the epochs differ by a multiple of 64 seconds.
    """
    return math.floor(t * 262144.0 + 0.5) & 0xFFFFFF


def header_abs_send_time(marker: bool, payload_type: int, sequence_number: int,
                         timestamp: int, ssrc: int, ext_id: int, ast24: int) -> bytes:
    """The header ``build_rtp`` writes for abs-send-time as its only extension, in one pack.

    The forwarding path's common case (a subscriber's video): ``ext_id`` must be 1..14 and
    ``payload_type`` 0..127, which the negotiated values are.
    """
    return _HEADER_AST.pack(0x90, (0x80 if marker else 0) | payload_type,
                            sequence_number & 0xFFFF, timestamp & 0xFFFFFFFF,
                            ssrc & 0xFFFFFFFF, ONE_BYTE_PROFILE, 1,
                            ((ext_id << 4) | 2) << 24 | ast24)


def header_level_abs_send_time(marker: bool, payload_type: int, sequence_number: int,
                               timestamp: int, ssrc: int, level_id: int, level: int,
                               ext_id: int, ast24: int) -> bytes:
    """As ``header_abs_send_time`` with a one-byte audio level before it (ids 1..14)."""
    return _HEADER_LEVEL_AST.pack(0x90, (0x80 if marker else 0) | payload_type,
                                  sequence_number & 0xFFFF, timestamp & 0xFFFFFFFF,
                                  ssrc & 0xFFFFFFFF, ONE_BYTE_PROFILE, 2, level_id << 4, level,
                                  ((ext_id << 4) | 2) << 24 | ast24, 0)


def abs_send_time_from_seconds(t: float) -> bytes:
    """``abs_send_time_24`` as the extension's three bytes."""
    return abs_send_time_24(t).to_bytes(3, "big")


def unpack_abs_send_time(b: bytes) -> int | None:
    """The raw 24-bit 6.18 fixed-point value (divide by 2**18 for seconds)."""
    if len(b) < 3:
        return None
    return (b[0] << 16) | (b[1] << 8) | b[2]


def pack_transport_seq(n: int) -> bytes:
    return _U16.pack(n & 0xFFFF)


def unpack_transport_seq(b: bytes) -> int | None:
    if len(b) < 2:
        return None
    return (b[0] << 8) | b[1]


def pack_str(s: str) -> bytes:
    """Value for MID / RID / repaired RID; raises ValueError when not ASCII (our misuse)."""
    return s.encode("ascii")


def unpack_str(b: bytes) -> str | None:
    """MID / RID value; a NUL ends the string (as in libwebrtc); None if empty or not ASCII."""
    nul = b.find(b"\x00")
    if nul >= 0:
        b = b[:nul]
    if not b or not b.isascii():
        return None
    return b.decode("ascii")
