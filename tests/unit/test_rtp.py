"""RTP parsing and building: golden cross-checks against aiortc, tables, properties."""

from __future__ import annotations

import struct

import pytest
from aiortc import rtp as aiortc_rtp
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from hypothesis import given, settings
from hypothesis import strategies as st

from mediaserver.sfu.rtp import (
    EXT_ABS_SEND_TIME,
    EXT_AUDIO_LEVEL,
    EXT_MID,
    EXT_REPAIRED_RID,
    EXT_RID,
    EXT_TRANSPORT_CC,
    RtpPacket,
    abs_send_time_24,
    abs_send_time_from_seconds,
    build_rtp,
    header_abs_send_time,
    header_level_abs_send_time,
    is_rtcp,
    pack_audio_level,
    pack_str,
    pack_transport_seq,
    parse_rtp,
    unpack_abs_send_time,
    unpack_audio_level,
    unpack_str,
    unpack_transport_seq,
    unwrap_rtx,
    wrap_rtx,
)

PROPERTY = settings(max_examples=300, deadline=None)


def _build(**kw: object) -> bytes:
    args: dict = dict(
        marker=False, payload_type=96, sequence_number=1, timestamp=2, ssrc=3,
        extensions=(), payload=b"",
    )  # fmt: skip
    args.update(kw)
    return build_rtp(**args)


def _parsed(data: bytes) -> RtpPacket:
    packet = parse_rtp(data)
    assert packet is not None
    return packet


# --- golden cross-check with aiortc ---------------------------------------------------------

# aiortc writes extensions in this order: mid, repaired rid, rid, abs-send-time, audio
# level, transport-cc; ids >14 force the two-byte form in both implementations.
ONE_BYTE_IDS = {"mid": 1, "rrid": 2, "rid": 3, "ast": 4, "level": 5, "twcc": 6}
TWO_BYTE_IDS = {"mid": 1, "rrid": 2, "rid": 3, "ast": 4, "level": 5, "twcc": 200}
URIS = {
    "mid": EXT_MID, "rrid": EXT_REPAIRED_RID, "rid": EXT_RID, "ast": EXT_ABS_SEND_TIME,
    "level": EXT_AUDIO_LEVEL, "twcc": EXT_TRANSPORT_CC,
}  # fmt: skip


def _aiortc_map(ids: dict[str, int]) -> aiortc_rtp.HeaderExtensionsMap:
    m = aiortc_rtp.HeaderExtensionsMap()
    exts = [RTCRtpHeaderExtensionParameters(id=i, uri=URIS[k]) for k, i in ids.items()]
    m.configure(RTCRtpParameters(headerExtensions=exts))
    return m


@pytest.mark.parametrize("ids", [ONE_BYTE_IDS, TWO_BYTE_IDS], ids=["one-byte", "two-byte"])
@pytest.mark.parametrize("marker", [False, True])
def test_ours_and_aiortc_build_identical_bytes(ids: dict[str, int], marker: bool) -> None:
    ext_map = _aiortc_map(ids)
    theirs = aiortc_rtp.RtpPacket(
        payload_type=111, marker=int(marker), sequence_number=65535, timestamp=2**32 - 1,
        ssrc=0xDEADBEEF, payload=b"\x01" * 160,
    )  # fmt: skip
    theirs.csrc = [7, 8]
    x = theirs.extensions
    x.mid, x.repaired_rtp_stream_id = "0", "h"
    x.rtp_stream_id, x.abs_send_time, x.audio_level = "q", 0x123456, (True, 33)
    x.transport_sequence_number = 4321
    their_bytes = theirs.serialize(ext_map)
    our_bytes = build_rtp(
        marker=marker, payload_type=111, sequence_number=65535, timestamp=2**32 - 1,
        ssrc=0xDEADBEEF, payload=b"\x01" * 160, csrcs=(7, 8),
        extensions=[
            (ids["mid"], pack_str("0")), (ids["rrid"], pack_str("h")),
            (ids["rid"], pack_str("q")), (ids["ast"], bytes.fromhex("123456")),
            (ids["level"], pack_audio_level(True, 33)),
            (ids["twcc"], pack_transport_seq(4321)),
        ],
    )  # fmt: skip
    assert our_bytes == their_bytes

    ours = _parsed(their_bytes)
    back = aiortc_rtp.RtpPacket.parse(our_bytes, ext_map)
    for p_marker, p_pt, p_seq, p_ts, p_ssrc, p_payload in (
        (ours.marker, ours.payload_type, ours.sequence_number, ours.timestamp, ours.ssrc,
         ours.payload),
        (bool(back.marker), back.payload_type, back.sequence_number, back.timestamp, back.ssrc,
         back.payload),
    ):  # fmt: skip
        assert (p_marker, p_pt, p_seq, p_ts, p_ssrc) == (marker, 111, 65535, 2**32 - 1, 0xDEADBEEF)
        assert p_payload == b"\x01" * 160
    assert ours.csrcs == (7, 8) and back.csrc == [7, 8]
    e = ours.extensions
    assert unpack_str(e[ids["mid"]]) == back.extensions.mid == "0"
    assert unpack_str(e[ids["rid"]]) == back.extensions.rtp_stream_id == "q"
    assert unpack_str(e[ids["rrid"]]) == back.extensions.repaired_rtp_stream_id == "h"
    assert unpack_abs_send_time(e[ids["ast"]]) == back.extensions.abs_send_time == 0x123456
    assert unpack_audio_level(e[ids["level"]]) == back.extensions.audio_level == (True, 33)
    assert unpack_transport_seq(e[ids["twcc"]]) == 4321
    assert back.extensions.transport_sequence_number == 4321


def test_padding_matches_aiortc_except_random_fill() -> None:
    theirs = aiortc_rtp.RtpPacket(payload_type=96, sequence_number=9, timestamp=9, ssrc=9)
    theirs.payload, theirs.padding_size = b"abc", 7
    their_bytes = theirs.serialize()
    ours = _build(sequence_number=9, timestamp=9, ssrc=9, payload=b"abc", padding=7)
    assert len(ours) == len(their_bytes) == 12 + 3 + 7
    assert ours[:-7] == their_bytes[:-7] and ours[-1] == their_bytes[-1] == 7
    parsed = _parsed(their_bytes)
    assert parsed.payload == b"abc" and parsed.padding_size == 7


# --- tables ---------------------------------------------------------------------------------


def test_one_byte_extension_exact_bytes() -> None:
    data = _build(extensions=[(1, b"\xaa"), (14, b"0123456789abcdef")])
    assert data[:12] == bytes.fromhex("9060 0001 00000002 00000003")
    # BEDE, 5 words: 10 aa | ef "0123456789abcdef" | 1 byte of padding
    assert data[12:16] == bytes.fromhex("bede0005")
    assert data[16:] == b"\x10\xaa\xef0123456789abcdef\x00"
    assert _parsed(data).extensions == {1: b"\xaa", 14: b"0123456789abcdef"}


@pytest.mark.parametrize(
    ("ext", "body"),
    [
        ((15, b"x"), b"\x0f\x01x\x00"),  # id 15 is reserved in the one-byte form
        ((1, b""), b"\x01\x00\x00\x00"),  # empty value
        ((2, b"y" * 17), b"\x02\x11" + b"y" * 17 + b"\x00"),  # longer than 16 bytes
        ((255, b"z"), b"\xff\x01z\x00"),
    ],
)
def test_two_byte_extension_exact_bytes(ext: tuple[int, bytes], body: bytes) -> None:
    data = _build(extensions=[ext], payload=b"P")
    assert data[12:16] == struct.pack("!HH", 0x1000, len(body) // 4)
    assert data[16:] == body + b"P"
    parsed = _parsed(data)
    assert parsed.extensions == {ext[0]: ext[1]} and parsed.payload == b"P"


def test_parse_skips_extension_padding_and_stops_at_bad_elements() -> None:
    head = bytes.fromhex("9060000100000002 00000003")
    # one-byte: padding byte between elements, then id 15 ends parsing
    one = head + bytes.fromhex("bede0002") + b"\x10a\x00\x21bc\xf0\x00" + b"PAY"
    p = _parsed(one)
    assert p.extensions == {1: b"a", 2: b"bc"} and p.payload == b"PAY"
    # an element whose value overruns the block is dropped, earlier ones are kept
    over = head + bytes.fromhex("bede0001") + b"\x10a\x2f\x00" + b"PAY"
    p = _parsed(over)
    assert p.extensions == {1: b"a"} and p.payload == b"PAY"
    # two-byte: element header cut by the block end
    two = head + bytes.fromhex("10000001") + b"\x00\x00\x00\x07" + b"P"
    p = _parsed(two)
    assert p.extensions == {} and p.payload == b"P"
    # an unknown profile is skipped as a whole
    other = head + bytes.fromhex("abcd0001") + b"\x10abc" + b"P"
    assert _parsed(other).extensions == {} and _parsed(other).payload == b"P"


def test_header_fields_and_max_values() -> None:
    data = _build(
        marker=True, payload_type=127, sequence_number=65535, timestamp=2**32 - 1,
        ssrc=2**32 - 1, payload=b"xyz",
    )  # fmt: skip
    assert data == bytes.fromhex("80ff ffff ffffffff ffffffff") + b"xyz"
    p = _parsed(data)
    assert p.marker and p.payload_type == 127 and p.sequence_number == 65535
    assert p.timestamp == p.ssrc == 2**32 - 1 and p.csrc_count == 0
    assert p.payload_offset == 12 and p.payload_end == 15 and p.padding_size == 0


def test_values_are_masked_and_invalid_ones_refused() -> None:
    p = _parsed(_build(sequence_number=65536 + 5, timestamp=2**32 + 6, ssrc=-1))
    assert (p.sequence_number, p.timestamp, p.ssrc) == (5, 6, 2**32 - 1)
    for bad in (
        dict(payload_type=128), dict(payload_type=-1), dict(padding=256),
        dict(extensions=[(0, b"a")]), dict(extensions=[(256, b"a")]),
        dict(extensions=[(1, b"a" * 256)]), dict(csrcs=tuple(range(16))),
    ):  # fmt: skip
        with pytest.raises(ValueError):
            _build(**bad)


def test_csrcs() -> None:
    data = _build(csrcs=(1, 2, 2**32 - 1), extensions=[(3, b"e")], payload=b"p")
    p = _parsed(data)
    assert p.csrc_count == 3 and p.csrcs == (1, 2, 2**32 - 1)
    assert p.extensions == {3: b"e"} and p.payload == b"p"
    assert parse_rtp(bytes([0x8F]) + bytes(11) + bytes(4 * 14)) is None  # 15 CSRCs announced


def test_padding() -> None:
    p = _parsed(_build(payload=b"media", padding=3))
    assert p.payload == b"media" and p.padding_size == 3 and p.data[-3:] == b"\x00\x00\x03"
    probe = _parsed(_build(padding=255))  # padding-only bandwidth probe
    assert probe.payload == b"" and probe.padding_size == 255
    assert probe.payload_offset == probe.payload_end == 12
    zero = bytearray(_build(payload=b"ab", padding=1))
    zero[-1] = 0
    assert parse_rtp(bytes(zero)) is None
    assert parse_rtp(bytes.fromhex("a060000100000002 00000003 0102 04")) is None
    exact = _parsed(bytes.fromhex("a060000100000002 00000003 0102 03"))
    assert exact.payload == b"" and exact.padding_size == 3


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes(11),
        bytes.fromhex("4060000100000002 00000003 00"),  # version 1
        bytes.fromhex("c060000100000002 00000003 00"),  # version 3
        bytes.fromhex("8160000100000002 00000003 000000"),  # CSRC cut short
        bytes.fromhex("9060000100000002 00000003 bede"),  # extension header cut short
        bytes.fromhex("9060000100000002 00000003 bede0002 10610000"),  # length overruns
    ],
)
def test_malformed_is_none(data: bytes) -> None:
    assert parse_rtp(data) is None


def test_is_rtcp() -> None:
    assert is_rtcp(bytes([0x80, 200])) and is_rtcp(bytes([0x81, 223]))
    assert not is_rtcp(bytes([0x80, 96])) and not is_rtcp(bytes([0x80, 224]))
    assert not is_rtcp(bytes([0x80, 0xE0])) and not is_rtcp(b"\x80")
    assert not is_rtcp(_build(marker=True, payload_type=111))


def test_rtx_wrap_unwrap_round_trip() -> None:
    original = _parsed(
        _build(
            marker=True, payload_type=96, sequence_number=65535, timestamp=77, ssrc=1,
            payload=b"vp8 data", padding=4, csrcs=(9,), extensions=[(1, b"m")],
        )
    )  # fmt: skip
    rtx_bytes = wrap_rtx(
        original, payload_type=97, sequence_number=12, ssrc=2, extensions=[(2, b"\x01\x02")]
    )
    rtx = _parsed(rtx_bytes)
    assert (rtx.payload_type, rtx.sequence_number, rtx.ssrc) == (97, 12, 2)
    assert rtx.marker and rtx.timestamp == 77 and rtx.csrcs == (9,)
    assert rtx.extensions == {2: b"\x01\x02"} and rtx.padding_size == 0
    assert rtx.payload == b"\xff\xff" + b"vp8 data"
    assert unwrap_rtx(rtx) == (65535, b"vp8 data")

    theirs = aiortc_rtp.wrap_rtx(
        aiortc_rtp.RtpPacket.parse(_build(sequence_number=300, payload=b"abc")),
        payload_type=97, sequence_number=12, ssrc=2,
    )  # fmt: skip
    ours = wrap_rtx(
        _parsed(_build(sequence_number=300, payload=b"abc")),
        payload_type=97, sequence_number=12, ssrc=2, extensions=(),
    )  # fmt: skip
    assert ours == theirs.serialize()


def test_unwrap_rtx_too_short() -> None:
    assert unwrap_rtx(_parsed(_build(payload=b"\x01"))) is None
    assert unwrap_rtx(_parsed(_build(payload=b"\x01\x02", padding=2))) == (0x0102, b"")
    assert unwrap_rtx(_parsed(_build(padding=10))) is None


def test_extension_value_helpers() -> None:
    assert pack_audio_level(True, 0) == b"\x80" and pack_audio_level(False, 127) == b"\x7f"
    assert pack_audio_level(False, 500) == b"\x7f" and pack_audio_level(True, -3) == b"\x80"
    assert unpack_audio_level(b"\xa1") == (True, 33) and unpack_audio_level(b"") is None
    assert abs_send_time_from_seconds(1.5) == bytes.fromhex("060000")
    assert abs_send_time_from_seconds(64.0) == b"\x00\x00\x00"
    assert abs_send_time_from_seconds(63.999999) == b"\x00\x00\x00"  # rounds to 64 == 0
    unix = 1_700_000_000.25
    assert abs_send_time_from_seconds(unix) == abs_send_time_from_seconds(unix + 2208988800)
    assert unpack_abs_send_time(abs_send_time_from_seconds(unix)) == 0x010000  # 0.25 s
    assert unpack_abs_send_time(b"\x01\x02") is None
    assert pack_transport_seq(65537) == b"\x00\x01" and unpack_transport_seq(b"\xff\xfe") == 65534
    assert unpack_transport_seq(b"\x01") is None
    assert unpack_str(b"abc") == "abc" and unpack_str(b"ab\x00\x00") == "ab"
    assert unpack_str(b"") is None and unpack_str(b"\x00x") is None and unpack_str(b"\xff") is None


# --- properties -----------------------------------------------------------------------------


def _check_bounds(data: bytes, p: RtpPacket) -> None:
    assert 12 <= p.payload_offset <= p.payload_end <= len(data)
    assert p.data is data and p.payload == data[p.payload_offset : p.payload_end]
    assert 0 <= p.payload_type < 128 and 0 <= p.sequence_number < 65536
    assert all(v in data for v in p.extensions.values())


@PROPERTY
@given(st.binary(max_size=120))
def test_parse_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    p = parse_rtp(data)
    if p is not None:
        _check_bounds(data, p)


def _extensions(one_byte: bool, blob: bytes) -> list[tuple[int, bytes]]:
    """Up to four extensions with distinct ids, decoded from hypothesis-drawn bytes."""
    exts: dict[int, bytes] = {}
    pos = 0
    while pos + 2 <= len(blob) and len(exts) < 4:
        if one_byte:
            xid, size = blob[pos] % 14 + 1, blob[pos + 1] % 16 + 1
        else:
            xid, size = blob[pos] % 255 + 1, blob[pos + 1] % 41
        exts.setdefault(xid, blob[pos + 2 : pos + 2 + size].ljust(size, b"v"))
        pos += 2 + size
    return list(exts.items())


# One draw per field group keeps hypothesis fast; field values still come from its bytes.
packets = st.builds(
    lambda head, one_byte, ext_blob, payload, padding, csrc_blob: dict(
        marker=head[0] > 127,
        payload_type=head[0] & 0x7F,
        sequence_number=int.from_bytes(head[1:3]),
        timestamp=int.from_bytes(head[3:7]),
        ssrc=int.from_bytes(head[7:11]),
        extensions=_extensions(one_byte, ext_blob),
        payload=payload,
        padding=padding,
        csrcs=struct.unpack(f"!{len(csrc_blob) // 4}I", csrc_blob[: len(csrc_blob) & ~3]),
    ),
    st.binary(min_size=11, max_size=11),
    st.booleans(),
    st.binary(max_size=60),
    st.binary(max_size=32),
    st.integers(0, 255),
    st.binary(max_size=16),
)


@PROPERTY
@given(packets)
def test_build_parse_round_trip(fields: dict) -> None:
    data = build_rtp(**fields)
    p = _parsed(data)
    _check_bounds(data, p)
    assert p.marker == fields["marker"] and p.payload_type == fields["payload_type"]
    assert p.sequence_number == fields["sequence_number"] and p.timestamp == fields["timestamp"]
    assert p.ssrc == fields["ssrc"] and p.csrcs == fields["csrcs"]
    assert p.extensions == dict(fields["extensions"])
    assert p.payload == fields["payload"] and p.padding_size == fields["padding"]


@PROPERTY
@given(
    packets,
    st.sampled_from(["truncate", "cc", "extlen", "padding", "byte"]),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
)
def test_parse_never_raises_on_corrupted_packets(
    fields: dict, kind: str, where: int, value: int
) -> None:
    """Valid packets with one structural lie: cut short, CSRC count, extension length,
    padding length, or any single byte."""
    buf = bytearray(build_rtp(**fields))
    if kind == "truncate":
        del buf[where % (len(buf) + 1) :]
    elif kind == "cc":
        buf[0] = (buf[0] & 0xF0) | (value & 0x0F)
    elif kind == "extlen":
        buf[0] |= 0x10
        at = 12 + 4 * (buf[0] & 0x0F)
        if at + 4 <= len(buf):
            struct.pack_into("!H", buf, at + 2, value)
    elif kind == "padding":
        buf[0] |= 0x20
        buf[-1] = value & 0xFF
    else:
        buf[where % len(buf)] = value & 0xFF
    raw = bytes(buf)
    p = parse_rtp(raw)
    if p is not None:
        _check_bounds(raw, p)


# -- the forwarding path's one-pack headers must equal build_rtp's ----------------------

@pytest.mark.parametrize("marker,pt,seq,ts,ssrc,ext_id,t", [
    (False, 96, 0, 0, 1, 1, 0.0),
    (True, 111, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 14, 63.999999),
    (True, 0, 70000, 1 << 33, 12345, 3, 1795667413.181748),  # reduced modulo field size
    (False, 127, 1, 2, 3, 7, 64.0),                          # abs-send-time wraps at 64 s
])
def test_abs_send_time_header_equals_build_rtp(marker: bool, pt: int, seq: int, ts: int,
                                               ssrc: int, ext_id: int, t: float) -> None:
    payload = b"\x90\x80\x12\x34payload"
    expected = build_rtp(marker=marker, payload_type=pt, sequence_number=seq, timestamp=ts,
                         ssrc=ssrc, extensions=[(ext_id, abs_send_time_from_seconds(t))],
                         payload=payload)
    got = header_abs_send_time(marker, pt, seq, ts, ssrc, ext_id, abs_send_time_24(t)) + payload
    assert got == expected
    assert parse_rtp(got).extensions == {ext_id: abs_send_time_from_seconds(t)}


@pytest.mark.parametrize("level_id,level,ext_id", [(1, 0x00, 3), (14, 0xFF, 1), (10, 0x7F, 14)])
def test_level_and_abs_send_time_header_equals_build_rtp(level_id: int, level: int,
                                                         ext_id: int) -> None:
    t, payload = 12.345678, b"\xfc\x01\x02"
    expected = build_rtp(marker=True, payload_type=111, sequence_number=9, timestamp=960,
                         ssrc=77, extensions=[(level_id, bytes([level])),
                                              (ext_id, abs_send_time_from_seconds(t))],
                         payload=payload)
    got = header_level_abs_send_time(True, 111, 9, 960, 77, level_id, level, ext_id,
                                     abs_send_time_24(t)) + payload
    assert got == expected
