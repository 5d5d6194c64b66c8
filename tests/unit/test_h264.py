"""H.264 keyframe detection: hand-built payloads, real encoder output, properties."""

from __future__ import annotations

import fractions
import struct

import av
import numpy as np
import pytest
from aiortc.codecs.h264 import H264Encoder
from hypothesis import given, settings
from hypothesis import strategies as st

from mediaserver.sfu.h264 import h264_nal_types, is_h264_keyframe

SPS = bytes.fromhex("6742c01f da0140")
PPS = bytes.fromhex("68ce3c80")
IDR = bytes.fromhex("6588840021") + b"\x00" * 8
SLICE = bytes.fromhex("419a2211") + b"\x00" * 4
SEI = bytes.fromhex("0605ff")


def stap(nals: list[bytes], header: int = 0x78, don: bytes = b"") -> bytes:
    return bytes([header]) + don + b"".join(struct.pack("!H", len(n)) + n for n in nals)


def fu(nal: bytes, start: bool, end: bool = False, fu_type: int = 28) -> bytes:
    indicator = (nal[0] & 0xE0) | fu_type
    header = (0x80 if start else 0) | (0x40 if end else 0) | (nal[0] & 0x1F)
    return bytes([indicator, header]) + nal[1:]


@pytest.mark.parametrize(
    ("payload", "types", "key"),
    [
        (b"", [], False),
        (IDR, [5], True),
        (SPS, [7], True),
        (PPS, [8], False),
        (SLICE, [1], False),
        (SEI, [6], False),
        (b"\x65", [5], True),  # a bare NAL header is still an IDR unit
        (stap([SPS, PPS, IDR]), [7, 8, 5], True),
        (stap([PPS, SEI]), [8, 6], False),
        (stap([SLICE, SLICE]), [1, 1], False),
        (stap([SEI, IDR])[:-3], [6], False),  # truncated second unit is dropped
        (stap([SEI]) + b"\x00", [6], False),  # trailing byte too short for a size
        (stap([SEI]) + b"\x00\x00" + IDR, [6], False),  # zero-size unit ends the packet
        (stap([SPS], header=0x79, don=b"\x00\x01"), [7], True),  # STAP-B
        (b"\x7a\x00\x01" + b"\x00\x06\x00\x00\x10" + IDR[:3], [5], True),  # MTAP16
        (b"\x7b\x00\x01" + b"\x00\x07\x00\x00\x00\x10" + SLICE[:3], [1], False),  # MTAP24
        (fu(IDR, start=True), [5], True),
        (fu(IDR, start=False), [5], False),
        (fu(IDR, start=False, end=True), [5], False),
        (fu(SPS, start=True), [7], True),
        (fu(SLICE, start=True), [1], False),
        (fu(IDR, start=True, fu_type=29), [5], True),  # FU-B
        (b"\x7c", [], False),  # FU indicator without FU header
        (b"\x60", [], False),  # type 0: unspecified
        (b"\x7e\x85", [], False),  # type 30: reserved
        (b"\x7c\x80", [], False),  # FU of type 0
        (stap([b"\x00\x01", b"\x78\x00", IDR]), [5], True),  # invalid units are left out
    ],
)
def test_table(payload: bytes, types: list[int], key: bool) -> None:
    assert h264_nal_types(payload) == types
    assert is_h264_keyframe(payload) is key


def _frame(i: int) -> av.VideoFrame:
    image = np.full((48, 64, 3), (i * 37) % 256, np.uint8)
    image[::4, :, 1] = 200 - i * 10
    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    frame.pts, frame.time_base = i * 3000, fractions.Fraction(1, 90000)
    return frame


def _encoder() -> H264Encoder:
    try:
        av.codec.Codec("libx264", "w")
    except Exception as exc:  # pragma: no cover - depends on how PyAV was built
        print(f"skipping real H.264 output: libx264 not available in PyAV ({exc})")
        pytest.skip(f"libx264 not available in PyAV: {exc}")
    return H264Encoder()


def test_real_h264_encoder_output() -> None:
    encoder = _encoder()
    first, _ = encoder.encode(_frame(0))
    assert is_h264_keyframe(first[0])
    assert {7, 8, 5} <= {t for p in first for t in h264_nal_types(p)}
    for i in (1, 2):
        later, _ = encoder.encode(_frame(i))
        assert later and not any(is_h264_keyframe(p) for p in later)
    forced, _ = encoder.encode(_frame(3), force_keyframe=True)
    assert any(is_h264_keyframe(p) for p in forced)


def test_aiortc_fu_a_fragments() -> None:
    big_idr = b"\x65" + bytes(range(256)) * 12
    fragments = H264Encoder._packetize([big_idr])
    assert len(fragments) > 1 and all(f[0] & 0x1F == 28 for f in fragments)
    assert [is_h264_keyframe(f) for f in fragments] == [True] + [False] * (len(fragments) - 1)
    assert all(h264_nal_types(f) == [5] for f in fragments)
    aggregated = H264Encoder._packetize([SPS, PPS, IDR])
    assert len(aggregated) == 1 and h264_nal_types(aggregated[0]) == [7, 8, 5]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_never_raises(payload: bytes) -> None:
    types = h264_nal_types(payload)
    assert all(0 < t < 32 for t in types)
    key = is_h264_keyframe(payload)
    assert not key or any(t in (5, 7) for t in types)
