"""VP8 RTP payload descriptor (RFC 7741), read on every forwarded video packet.

The SFU needs the descriptor to switch simulcast layers cleanly (keyframes, temporal layer
ids) and to rewrite PictureID / TL0PICIDX so that a subscriber sees one continuous
sequence across a switch. ``parse_vp8`` reads bytes from the network and never raises.

    byte 0: |X|R|N|S|R| PID |       X: extension byte follows
    X:      |I|L|T|K| RSV   |
    I:      |M| PictureID   | [PictureID low byte when M = 1]
    L:      |   TL0PICIDX   |
    T/K:    |TID|Y| KEYIDX  |

After the descriptor the VP8 payload header starts; its bit 0 (P) is 0 on keyframes,
which then carry the start code 9d 01 2a and 14-bit width and height (little endian).
"""

from __future__ import annotations

_START_CODE = b"\x9d\x01\x2a"


class Vp8Descriptor:
    __slots__ = (
        "header_size",
        "height",
        "is_keyframe",
        "keyidx",
        "layer_sync",
        "non_reference",
        "partition_id",
        "picture_id",
        "picture_id_bits",
        "start_of_partition",
        "tid",
        "tl0picidx",
        "width",
    )

    def __init__(
        self,
        start_of_partition: bool,
        partition_id: int,
        non_reference: bool,
        picture_id: int | None,
        picture_id_bits: int,
        tl0picidx: int | None,
        tid: int | None,
        layer_sync: bool,
        keyidx: int | None,
        header_size: int,
        is_keyframe: bool,
        width: int | None,
        height: int | None,
    ) -> None:
        self.start_of_partition = start_of_partition
        self.partition_id = partition_id
        self.non_reference = non_reference
        self.picture_id = picture_id
        self.picture_id_bits = picture_id_bits
        self.tl0picidx = tl0picidx
        self.tid = tid
        self.layer_sync = layer_sync
        self.keyidx = keyidx
        self.header_size = header_size
        self.is_keyframe = is_keyframe
        self.width = width
        self.height = height

    def __repr__(self) -> str:
        return (
            f"Vp8Descriptor(S={self.start_of_partition}, PID={self.partition_id}, "
            f"N={self.non_reference}, picture_id={self.picture_id}/{self.picture_id_bits}b, "
            f"tl0picidx={self.tl0picidx}, tid={self.tid}, Y={self.layer_sync}, "
            f"keyidx={self.keyidx}, size={self.header_size}, key={self.is_keyframe}, "
            f"{self.width}x{self.height})"
        )


def parse_vp8(payload: bytes | memoryview) -> Vp8Descriptor | None:
    """Parse the descriptor at the start of a VP8 RTP payload.

    None when the descriptor is truncated or no VP8 data follows it.
    """
    n = len(payload)
    if n < 2:
        return None
    b0 = payload[0]
    picture_id: int | None = None
    bits = 0
    tl0: int | None = None
    tid: int | None = None
    sync = False
    keyidx: int | None = None
    pos = 1
    if b0 & 0x80:
        x = payload[1]
        pos = 2
        if x & 0x80:
            if pos >= n:
                return None
            m = payload[pos]
            if m & 0x80:
                if pos + 1 >= n:
                    return None
                picture_id = ((m & 0x7F) << 8) | payload[pos + 1]
                bits = 15
                pos += 2
            else:
                picture_id = m
                bits = 7
                pos += 1
        if x & 0x40:
            if pos >= n:
                return None
            tl0 = payload[pos]
            pos += 1
        if x & 0x30:
            if pos >= n:
                return None
            tk = payload[pos]
            pos += 1
            if x & 0x20:
                tid = tk >> 6
                sync = bool(tk & 0x20)
            if x & 0x10:
                keyidx = tk & 0x1F
    if pos >= n:
        return None
    start = bool(b0 & 0x10)
    pid = b0 & 0x07
    key = start and pid == 0 and not payload[pos] & 0x01
    width: int | None = None
    height: int | None = None
    if key and pos + 10 <= n and payload[pos + 3 : pos + 6] == _START_CODE:
        width = (payload[pos + 6] | (payload[pos + 7] << 8)) & 0x3FFF
        height = (payload[pos + 8] | (payload[pos + 9] << 8)) & 0x3FFF
    return Vp8Descriptor(
        start, pid, bool(b0 & 0x20), picture_id, bits, tl0, tid, sync, keyidx, pos, key,
        width, height,
    )  # fmt: skip


def rewrite_vp8(
    payload: bytes | memoryview,
    desc: Vp8Descriptor,
    *,
    picture_id: int | None,
    tl0picidx: int | None,
) -> bytes | memoryview:
    """Return ``payload`` with PictureID and/or TL0PICIDX replaced.

    Only fields the descriptor already carries are rewritten (None leaves a field alone),
    and the PictureID keeps its width, so the descriptor size never changes. ``payload``
    itself is returned when nothing changes.
    """
    bits = desc.picture_id_bits
    if picture_id is not None:
        picture_id &= 0x7F if bits == 7 else 0x7FFF
        if not bits or picture_id == desc.picture_id:
            picture_id = None
    if tl0picidx is not None:
        tl0picidx &= 0xFF
        if desc.tl0picidx is None or tl0picidx == desc.tl0picidx:
            tl0picidx = None
    if picture_id is None and tl0picidx is None:
        return payload
    head = bytearray(payload[: desc.header_size])
    if picture_id is not None:
        if bits == 7:
            head[2] = picture_id & 0x7F
        else:
            head[2] = 0x80 | ((picture_id >> 8) & 0x7F)
            head[3] = picture_id & 0xFF
    if tl0picidx is not None:
        head[2 + (bits + 1) // 8] = tl0picidx & 0xFF
    return bytes(head) + memoryview(payload)[desc.header_size :]
