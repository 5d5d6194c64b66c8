"""RED (RFC 2198) for audio: redundant Opus frames in one RTP payload (sans-IO).

With RED negotiated ("red/48000/2", fmtp "111/111": the formats it wraps) and preferred,
Chrome sends each 20 ms Opus frame again in the next packet (and the one after, at
higher loss): a lost packet's frame arrives with the next. The SFU forwards RED as it is
to subscribers that negotiated it (block payload types rewritten if the subscriber's Opus
payload type differs), and only the primary block, as a plain Opus packet, to those that
did not.

    redundant block header, 4 bytes: |F=1| block PT (7) | timestamp offset (14) | length (10) |
    primary block header, 1 byte:    |F=0| block PT (7) |
    then each block's data in the same order, the primary's last (the rest of the payload).

Everything that reads a payload from the network returns None when it is malformed (a
header chain that runs past the end, block lengths longer than the payload); the caller
counts and drops the packet. ``build_red`` raises ValueError for its caller's own mistakes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mediaserver.sfu.rtp import RtpPacket

MAX_BLOCK_LENGTH = (1 << 10) - 1
MAX_TIMESTAMP_OFFSET = (1 << 14) - 1


@dataclass(frozen=True)
class RedBlock:
    payload_type: int
    timestamp_offset: int  # how much earlier than the packet's timestamp; 0 for the primary
    data: bytes


def _headers(payload: bytes | memoryview) -> tuple[list[tuple[int, int, int]], int, int] | None:
    """((PT, timestamp offset, length) per redundant block, primary PT, where data starts)."""
    n = len(payload)
    pos = 0
    redundant: list[tuple[int, int, int]] = []
    total = 0
    while pos < n:
        b = payload[pos]
        if not b & 0x80:
            start = pos + 1
            if start + total > n:
                return None
            return redundant, b & 0x7F, start
        if pos + 4 > n:
            return None
        offset = (payload[pos + 1] << 6) | (payload[pos + 2] >> 2)
        length = ((payload[pos + 2] & 0x03) << 8) | payload[pos + 3]
        redundant.append((b & 0x7F, offset, length))
        total += length
        pos += 4
    return None  # no primary header


def parse_red(payload: bytes | memoryview) -> list[RedBlock] | None:
    """Every block, the redundant ones first (oldest first, as sent) and the primary last."""
    parsed = _headers(payload)
    if parsed is None:
        return None
    redundant, primary_pt, pos = parsed
    blocks = []
    for pt, offset, length in redundant:
        blocks.append(RedBlock(pt, offset, bytes(payload[pos:pos + length])))
        pos += length
    blocks.append(RedBlock(primary_pt, 0, bytes(payload[pos:])))
    return blocks


def primary_offset(payload: bytes | memoryview) -> tuple[int, int] | None:
    """(primary block's PT, where its data starts in ``payload``)."""
    parsed = _headers(payload)
    if parsed is None:
        return None
    redundant, primary_pt, pos = parsed
    return primary_pt, pos + sum(length for _, _, length in redundant)


def primary_view(pkt: RtpPacket) -> RtpPacket | None:
    """The primary block as a plain packet: the same buffer, header fields and extensions,
    the payload narrowed to the block and the payload type its own. No copy is made."""
    found = primary_offset(memoryview(pkt.data)[pkt.payload_offset:pkt.payload_end])
    if found is None:
        return None
    pt, offset = found
    return RtpPacket(pkt.data, pkt.marker, pt, pkt.sequence_number, pkt.timestamp, pkt.ssrc,
                     pkt.csrc_count, pkt.payload_offset + offset, pkt.payload_end,
                     pkt.extensions)


def with_block_payload_type(payload: bytes | memoryview, old: int, new: int
                            ) -> bytes | None:
    """``payload`` with the blocks of payload type ``old`` renamed ``new``."""
    parsed = _headers(payload)
    if parsed is None:
        return None
    redundant, _, start = parsed
    head = bytearray(payload[:start])
    for i in range(len(redundant)):
        if head[4 * i] & 0x7F == old:
            head[4 * i] = 0x80 | new
    if head[-1] & 0x7F == old:
        head[-1] = new
    return bytes(head) + bytes(payload[start:])


def build_red(blocks: Sequence[RedBlock]) -> bytes:
    """A RED payload from its blocks, the primary last (clients and tests)."""
    if not blocks:
        raise ValueError("RED needs at least the primary block")
    head = bytearray()
    for block in blocks[:-1]:
        if len(block.data) > MAX_BLOCK_LENGTH or block.timestamp_offset > MAX_TIMESTAMP_OFFSET:
            raise ValueError("a redundant block is too long or too old for RED")
        head += bytes((0x80 | block.payload_type, block.timestamp_offset >> 6,
                       ((block.timestamp_offset & 0x3F) << 2) | (len(block.data) >> 8),
                       len(block.data) & 0xFF))
    head.append(blocks[-1].payload_type & 0x7F)
    return bytes(head) + b"".join(block.data for block in blocks)


def wrapped_formats(parameters: dict[str, Any]) -> list[int] | None:
    """The payload types a RED fmtp ("111/111") names; None if it is not one."""
    keys = [k for k, v in parameters.items() if v is None]
    if len(keys) != 1 or len(parameters) != 1:
        return None
    try:
        formats = [int(x) for x in keys[0].split("/")]
    except ValueError:
        return None
    return formats if all(0 <= x < 128 for x in formats) else None


def red_for(codecs: Sequence[Any], payload_type: int) -> Any | None:
    """The RED codec among ``codecs`` (aiortc codec parameters) that wraps only
    ``payload_type`` ("111/111"), or None."""
    return next((c for c in codecs if c.mimeType.lower() == "audio/red"
                 and set(wrapped_formats(c.parameters) or ()) == {payload_type}), None)


class RedOutput:
    """How one subscriber gets a publisher's RED packets: as RED, or as plain Opus."""

    __slots__ = ("_pt", "_pt_in", "_red", "red_in")

    def __init__(self, pt_in: int, red_in: int, pt: int, red: int | None) -> None:
        self._pt_in = pt_in  # the publisher's Opus payload type...
        self.red_in = red_in  # ...and its RED one
        self._pt = pt  # the subscriber's
        self._red = red  # None: the subscriber did not negotiate RED

    @classmethod
    def between(cls, pt_in: int, red_in: int | None, pt: int, red: int | None
                ) -> RedOutput | None:
        """None when the publisher's codec has no RED: nothing to convert."""
        return None if red_in is None else cls(pt_in, red_in, pt, red)

    def convert(self, pkt: RtpPacket, primary: RtpPacket | None = None
                ) -> tuple[int, RtpPacket, bytes | None] | None:
        """(payload type, packet, payload to send instead of the packet's, if any).

        ``primary`` is the packet's ``primary_view``, when the caller already has it.
        """
        if self._red is None:
            view = primary or primary_view(pkt)
            return None if view is None else (self._pt, view, None)
        if self._pt == self._pt_in:
            return self._red, pkt, None
        payload = with_block_payload_type(
            memoryview(pkt.data)[pkt.payload_offset:pkt.payload_end], self._pt_in, self._pt)
        return None if payload is None else (self._red, pkt, payload)
