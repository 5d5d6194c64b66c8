"""VP8 payload descriptor: hand-built tables, real encoder output, rewriting, properties."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest
from aiortc.codecs.vpx import Vp8Encoder
from hypothesis import given, settings
from hypothesis import strategies as st

from mediaserver.sfu.vp8 import Vp8Descriptor, parse_vp8, rewrite_vp8

PROPERTY = settings(max_examples=300, deadline=None)
INTER = b"\x01\x02\x03"  # VP8 frame tag with P = 1 (interframe)
# keyframe tag (P = 0), start code, width 0x0140 with scale bits 11, height 0x00f0
KEY_320x240 = bytes.fromhex("50 2a 00 9d012a 40c1 f000") + b"rest"


def _desc(payload: bytes) -> Vp8Descriptor:
    desc = parse_vp8(payload)
    assert desc is not None
    return desc


def _fields(d: Vp8Descriptor) -> tuple:
    return (
        d.start_of_partition, d.partition_id, d.non_reference, d.picture_id, d.picture_id_bits,
        d.tl0picidx, d.tid, d.layer_sync, d.keyidx, d.header_size,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("descriptor", "fields"),
    [
        # S PID N pic bits tl0 tid Y keyidx size
        ("10", (True, 0, False, None, 0, None, None, False, None, 1)),
        ("03", (False, 3, False, None, 0, None, None, False, None, 1)),
        ("2f", (False, 7, True, None, 0, None, None, False, None, 1)),  # N; R bit 3 ignored
        ("80 00", (False, 0, False, None, 0, None, None, False, None, 2)),  # X, nothing set
        ("90 80 25", (True, 0, False, 0x25, 7, None, None, False, None, 3)),
        ("90 80 81 23", (True, 0, False, 0x0123, 15, None, None, False, None, 4)),
        ("90 80 ff ff", (True, 0, False, 0x7FFF, 15, None, None, False, None, 4)),
        ("90 40 11", (True, 0, False, None, 0, 0x11, None, False, None, 3)),
        ("80 20 40", (False, 0, False, None, 0, None, 1, False, None, 3)),  # T only
        ("80 10 1f", (False, 0, False, None, 0, None, None, False, 31, 3)),  # K only
        ("b1 f0 80 05 11 a5", (True, 1, True, 5, 15, 0x11, 2, True, 5, 6)),  # I M L T K
        ("90 e0 7f fe 60", (True, 0, False, 0x7F, 7, 0xFE, 1, True, None, 5)),  # I L T
    ],
)
def test_descriptor_table(descriptor: str, fields: tuple) -> None:
    head = bytes.fromhex(descriptor)
    desc = _desc(head + INTER)
    assert _fields(desc) == fields
    assert not desc.is_keyframe and desc.width is None and desc.height is None
    assert parse_vp8(head) is None  # no VP8 data after the descriptor
    for cut in range(1, len(head)):
        assert parse_vp8(head[:cut]) is None  # truncated descriptor


def test_keyframe_detection_and_dimensions() -> None:
    for head in ("10", "90 80 81 23", "90 e0 7f fe 60"):
        desc = _desc(bytes.fromhex(head) + KEY_320x240)
        assert desc.is_keyframe and (desc.width, desc.height) == (320, 240)
    # P bit set, a later partition, or not the start of the partition: no keyframe
    assert not _desc(b"\x10" + b"\x51" + KEY_320x240[1:]).is_keyframe
    assert not _desc(b"\x11" + KEY_320x240).is_keyframe
    assert not _desc(b"\x00" + KEY_320x240).is_keyframe
    # a keyframe whose header is cut or lacks the start code: no dimensions
    cut = _desc(b"\x10" + KEY_320x240[:9])
    assert cut.is_keyframe and cut.width is None and cut.height is None
    wrong = _desc(b"\x10" + KEY_320x240[:3] + b"\x00\x00\x00" + KEY_320x240[6:])
    assert wrong.is_keyframe and wrong.width is None


def _frame(i: int) -> av.VideoFrame:
    image = np.full((48, 64, 3), (i * 37) % 256, np.uint8)
    image[::4, :, 1] = 200 - i * 10
    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    frame.pts, frame.time_base = i * 3000, fractions.Fraction(1, 90000)
    return frame


def test_real_vp8_encoder_output() -> None:
    encoder = Vp8Encoder()
    first, _ = encoder.encode(_frame(0))
    key = _desc(first[0])
    assert key.is_keyframe and (key.width, key.height) == (64, 48)
    assert key.picture_id_bits == 15 and key.start_of_partition
    for i in (1, 2):
        later, _ = encoder.encode(_frame(i))
        desc = _desc(later[0])
        assert not desc.is_keyframe and desc.width is None
        assert desc.picture_id == ((key.picture_id or 0) + i) & 0x7FFF
    forced, _ = encoder.encode(_frame(3), force_keyframe=True)
    assert _desc(forced[0]).is_keyframe
    # a keyframe split over several packets: only the first one starts the frame
    packets = Vp8Encoder._packetize(b"\x50\x2a\x00\x9d\x01\x2a\x40\x00\xf0\x00" * 300, 5)
    assert len(packets) > 1
    assert [_desc(p).is_keyframe for p in packets] == [True] + [False] * (len(packets) - 1)


def test_rewrite() -> None:
    payload = bytes.fromhex("b1 f0 80 05 11 a5") + INTER
    desc = _desc(payload)
    out = rewrite_vp8(payload, desc, picture_id=0x8123, tl0picidx=0x1FE)
    new = _desc(out)
    assert (new.picture_id, new.tl0picidx) == (0x0123, 0xFE)  # 15 bits, 8 bits
    assert out[new.header_size :] == INTER and out[:2] == payload[:2] and out[5] == payload[5]
    assert (new.tid, new.layer_sync, new.keyidx, new.header_size) == (2, True, 5, 6)

    short = bytes.fromhex("90 e0 7f fe 60") + INTER
    new = _desc(rewrite_vp8(short, _desc(short), picture_id=0x1FF, tl0picidx=None))
    assert (new.picture_id, new.picture_id_bits, new.tl0picidx) == (0x7F, 7, 0xFE)
    new = _desc(rewrite_vp8(short, _desc(short), picture_id=3, tl0picidx=0))
    assert (new.picture_id, new.tl0picidx, new.header_size) == (3, 0, 5)


def test_rewrite_returns_same_object_when_nothing_changes() -> None:
    payload = bytes.fromhex("90 e0 7f fe 60") + INTER
    desc = _desc(payload)
    assert rewrite_vp8(payload, desc, picture_id=None, tl0picidx=None) is payload
    assert rewrite_vp8(payload, desc, picture_id=0x7F, tl0picidx=0xFE) is payload
    assert rewrite_vp8(payload, desc, picture_id=0xFF, tl0picidx=0x1FE) is payload  # masked
    bare = b"\x10" + INTER  # no PictureID or TL0PICIDX to rewrite
    assert rewrite_vp8(bare, _desc(bare), picture_id=5, tl0picidx=6) is bare


@PROPERTY
@given(st.binary(max_size=24))
def test_parse_never_raises(data: bytes) -> None:
    desc = parse_vp8(data)
    if desc is not None:
        assert 1 <= desc.header_size < len(data) <= 24
        assert desc.picture_id_bits in (0, 7, 15)
        assert (desc.picture_id is None) == (desc.picture_id_bits == 0)
        assert desc.is_keyframe or desc.width is None
    view = parse_vp8(memoryview(data))
    assert (view is None) == (desc is None)
    if view is not None and desc is not None:
        assert _fields(view) == _fields(desc) and view.is_keyframe == desc.is_keyframe


def _descriptor(b0: int, x: int, picture_id: bytes, tl0: int, tk: int, rest: bytes) -> bytes:
    """A well-formed descriptor for the I/L/T/K bits in ``x`` (0 means no X byte)."""
    if not x:
        return bytes([b0 & 0x7F]) + rest
    out = bytes([b0 | 0x80, x])
    if x & 0x80:
        out += picture_id if picture_id[0] & 0x80 else picture_id[:1]
    if x & 0x40:
        out += bytes([tl0])
    if x & 0x30:
        out += bytes([tk])
    return out + rest


descriptors = st.builds(
    _descriptor,
    st.integers(0, 255),
    st.integers(0, 255),
    st.binary(min_size=2, max_size=2),
    st.integers(0, 255),
    st.integers(0, 255),
    st.binary(min_size=1, max_size=12),
)


@PROPERTY
@given(descriptors, st.none() | st.integers(0, 2**20), st.none() | st.integers(0, 2**10))
def test_rewrite_round_trip(payload: bytes, picture_id: int | None, tl0: int | None) -> None:
    desc = _desc(payload)
    out = rewrite_vp8(payload, desc, picture_id=picture_id, tl0picidx=tl0)
    new = _desc(out)
    assert len(out) == len(payload) and new.header_size == desc.header_size
    assert out[desc.header_size :] == payload[desc.header_size :]
    mask = 0x7F if desc.picture_id_bits == 7 else 0x7FFF
    want_pid = desc.picture_id
    if picture_id is not None and want_pid is not None:
        want_pid = picture_id & mask
    want_tl0 = desc.tl0picidx
    if tl0 is not None and want_tl0 is not None:
        want_tl0 = tl0 & 0xFF
    assert (new.picture_id, new.tl0picidx) == (want_pid, want_tl0)
    assert (new.tid, new.keyidx, new.layer_sync, new.picture_id_bits) == (
        desc.tid, desc.keyidx, desc.layer_sync, desc.picture_id_bits,
    )  # fmt: skip
    assert new.is_keyframe == desc.is_keyframe and new.width == desc.width
