"""RTCP: round trips, byte cross-checks against aiortc, transport-cc vectors, properties."""

from __future__ import annotations

import struct

import pytest
from aiortc import rtp as aiortc_rtp
from hypothesis import given, settings
from hypothesis import strategies as st

from mediaserver.sfu.rtcp import (
    REMB_MAX_BITRATE,
    Bye,
    Fir,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    ReportBlock,
    RtcpPacket,
    Sdes,
    SenderReport,
    TransportFeedback,
    Unknown,
    build_bye,
    build_fir,
    build_nack,
    build_pli,
    build_remb,
    build_rr,
    build_sdes,
    build_sr,
    build_transport_feedback,
    ntp_from_seconds,
    ntp_middle32,
    parse_rtcp,
    seconds_from_ntp,
)

PROPERTY = settings(max_examples=300, deadline=None)
BLOCK = ReportBlock(0x11223344, 25, -3, 70000, 120, 0xAABBCCDD, 65536)


def _one(data: bytes) -> RtcpPacket:
    packets, skipped = parse_rtcp(data)
    assert skipped == 0 and len(packets) == 1
    return packets[0]


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (build_sr(1, 2**64 - 1, 2**32 - 1, 5, 6), SenderReport(1, 2**64 - 1, 2**32 - 1, 5, 6)),
        (build_sr(1, 7, 8, 9, 10, [BLOCK, BLOCK]), SenderReport(1, 7, 8, 9, 10, (BLOCK, BLOCK))),
        (build_rr(9), ReceiverReport(9)),
        (build_rr(9, [BLOCK]), ReceiverReport(9, (BLOCK,))),
        (build_sdes(5, "user@host"), Sdes(((5, "user@host"),))),
        (build_sdes(5, ""), Sdes(((5, ""),))),
        (build_sdes(5, "ünïcödé"), Sdes(((5, "ünïcödé"),))),
        (build_bye([1, 2, 3]), Bye((1, 2, 3))),
        (build_bye([]), Bye(())),
        (build_nack(1, 2, [10, 12, 30]), Nack(1, 2, (10, 12, 30))),
        (build_pli(1, 2), Pli(1, 2)),
        (build_fir(1, [(2, 3), (4, 255)]), Fir(1, ((2, 3), (4, 255)))),
        (build_remb(1, 100_000, [2, 3]), Remb(1, 100_000, (2, 3))),
        (build_remb(1, 0, []), Remb(1, 0, ())),
    ],
)
def test_round_trip(data: bytes, expected: RtcpPacket) -> None:
    assert len(data) % 4 == 0
    assert _one(data) == expected


def test_report_block_loss_is_signed_24_bit_and_clamped() -> None:
    for lost, back in [(-1, -1), (-(2**23), -(2**23)), (2**23 - 1, 2**23 - 1), (2**30, 2**23 - 1)]:
        block = ReportBlock(1, 0, lost, 0, 0, 0, 0)
        rr = _one(build_rr(1, [block]))
        assert isinstance(rr, ReceiverReport) and rr.reports[0].packets_lost == back
    with pytest.raises(ValueError):
        build_rr(1, [BLOCK] * 32)


def test_compound_and_unknown() -> None:
    app = struct.pack("!BBHI4s", 0x80, 204, 2, 7, b"name")
    xr = struct.pack("!BBHI", 0x80, 207, 1, 7)
    compound = build_sr(1, 2, 3, 4, 5) + build_sdes(1, "c") + app + xr + build_pli(1, 2)
    packets, skipped = parse_rtcp(compound)
    assert skipped == 0
    assert [type(p) for p in packets] == [SenderReport, Sdes, Unknown, Unknown, Pli]
    assert packets[2] == Unknown(204, 0) and packets[3] == Unknown(207, 0)
    rtpfb_other = struct.pack("!BBHII", 0x83, 205, 2, 1, 2)
    assert parse_rtcp(rtpfb_other) == ([Unknown(205, 3)], 0)


# --- byte cross-checks with aiortc ----------------------------------------------------------


def _aiortc_block(b: ReportBlock) -> aiortc_rtp.RtcpReceiverInfo:
    return aiortc_rtp.RtcpReceiverInfo(
        ssrc=b.ssrc, fraction_lost=b.fraction_lost, packets_lost=b.packets_lost,
        highest_sequence=b.highest_seq, jitter=b.jitter, lsr=b.lsr, dlsr=b.dlsr,
    )  # fmt: skip


def test_bytes_match_aiortc() -> None:
    info = aiortc_rtp.RtcpSenderInfo(
        ntp_timestamp=0x0123456789ABCDEF, rtp_timestamp=5, packet_count=6, octet_count=7
    )
    sr = aiortc_rtp.RtcpSrPacket(ssrc=1, sender_info=info, reports=[_aiortc_block(BLOCK)])
    assert build_sr(1, 0x0123456789ABCDEF, 5, 6, 7, [BLOCK]) == bytes(sr)
    rr = aiortc_rtp.RtcpRrPacket(ssrc=9, reports=[_aiortc_block(BLOCK)] * 2)
    assert build_rr(9, [BLOCK, BLOCK]) == bytes(rr)
    lost = [100, 101, 116, 117, 200, 1000, 1016]
    nack = aiortc_rtp.RtcpRtpfbPacket(fmt=1, ssrc=1, media_ssrc=2, lost=lost)
    assert build_nack(1, 2, lost) == bytes(nack)
    assert build_pli(3, 4) == bytes(aiortc_rtp.RtcpPsfbPacket(fmt=1, ssrc=3, media_ssrc=4))
    assert build_bye([5, 6]) == bytes(aiortc_rtp.RtcpByePacket(sources=[5, 6]))
    for bitrate in (0, 100_000, 2_500_000, 10**10, 2**40 + 12345):
        fci = aiortc_rtp.pack_remb_fci(bitrate, [7, 8])
        remb = aiortc_rtp.RtcpPsfbPacket(fmt=15, ssrc=3, media_ssrc=0, fci=fci)
        assert build_remb(3, bitrate, [7, 8]) == bytes(remb)
    # and aiortc's SDES (which ends a chunk with two null octets) parses here
    sdes = aiortc_rtp.RtcpSdesPacket(
        chunks=[aiortc_rtp.RtcpSourceInfo(ssrc=1, items=[(1, b"abc"), (6, b"tool")])]
    )
    assert _one(bytes(sdes)) == Sdes(((1, "abc"),))
    # parsing their bytes gives what their objects hold
    assert _one(bytes(sr)) == SenderReport(1, 0x0123456789ABCDEF, 5, 6, 7, (BLOCK,))
    assert _one(bytes(nack)) == Nack(1, 2, tuple(lost))


def test_nack_wraparound_is_one_pair() -> None:
    data = build_nack(1, 2, [1, 0, 65535, 65534, 0])
    assert len(data) == 16  # header, two SSRCs, exactly one PID/BLP pair
    assert struct.unpack_from("!HH", data, 12) == (65534, 0b111)
    assert _one(data) == Nack(1, 2, (65534, 65535, 0, 1))


def test_nack_packs_greedily() -> None:
    data = build_nack(1, 2, [5, 21, 22, 60000])
    # RTP order starts after the widest gap (60000 -> 5 across the wrap is the smaller gap)
    assert struct.unpack_from("!HHHH", data, 12) == (60000, 0, 5, 1 << 15)
    assert struct.unpack_from("!HH", data, 20) == (22, 0)
    assert _one(data) == Nack(1, 2, (60000, 5, 21, 22))
    assert _one(build_nack(1, 2, [])) == Nack(1, 2, ())


@pytest.mark.parametrize(
    ("bitrate", "expected"),
    [
        (100_000, 100_000),  # mantissa only
        (2_500_000, 2_500_000),  # 156250 << 4, exact
        (10**10, (10**10 >> 16) << 16),  # 10 Gbps: 18-bit mantissa, exponent 16
        (2**200, REMB_MAX_BITRATE),  # beyond the field: capped
        (-5, 0),
    ],
)
def test_remb_mantissa_exponent(bitrate: int, expected: int) -> None:
    remb = _one(build_remb(1, bitrate, [9]))
    assert isinstance(remb, Remb) and remb.bitrate == expected and remb.ssrcs == (9,)
    if 0 < bitrate <= REMB_MAX_BITRATE:  # rounded down, by less than 2**-17 of the value
        assert 0 <= bitrate - remb.bitrate < bitrate >> 17 or bitrate == remb.bitrate


def test_fir_media_ssrc_field_is_zero() -> None:
    data = build_fir(1, [(0xABCDEF01, 300)])
    assert struct.unpack_from("!II", data, 4) == (1, 0)
    assert data[12:] == bytes.fromhex("abcdef01 2c 000000")


# --- transport-cc ---------------------------------------------------------------------------


def test_transport_cc_draft_chunk_examples() -> None:
    # draft-holmer-rmcat-transport-wide-cc-extensions-01 3.1.3/3.1.4: a run of 221 "not
    # received" (0x00DD), then a 2-bit vector: small, large(negative), not received, small
    # (the remaining three symbols lie beyond the status count and are ignored).
    body = struct.pack("!IIHHI", 1, 2, 65530, 225, (0x800000 << 8) | 9)
    body += bytes.fromhex("00dd") + bytes.fromhex("d840")
    body += bytes.fromhex("04") + struct.pack("!h", -200) + bytes.fromhex("10")
    data = struct.pack("!BBH", 0x8F, 205, len(body) // 4) + body
    tcc = _one(data)
    assert isinstance(tcc, TransportFeedback)
    assert (tcc.base_seq, tcc.packet_status_count, tcc.fb_pkt_count) == (65530, 225, 9)
    assert tcc.reference_time == -(2**23)
    assert len(tcc.packets) == 225
    assert tcc.packets[0] == (65530, None) and tcc.packets[6] == (0, None)
    assert all(arrival is None for _, arrival in tcc.packets[:221])
    assert tcc.packets[221:] == ((215, 1000), (216, -49000), (217, None), (218, -45000))


def test_transport_cc_one_bit_vector_example() -> None:
    # 3.1.4 example 1: 0x9F1C = not received, 5 received, 3 not, 3 received, 2 not
    body = struct.pack("!IIHHI", 1, 2, 10, 14, 1) + bytes.fromhex("9f1c")
    body += bytes(range(1, 9)) + b"\x00\x00"  # 8 small deltas, zero padding
    data = struct.pack("!BBH", 0x8F, 205, len(body) // 4) + body
    tcc = _one(data)
    assert isinstance(tcc, TransportFeedback)
    received = [seq for seq, arrival in tcc.packets if arrival is not None]
    assert received == [11, 12, 13, 14, 15, 19, 20, 21]
    assert [a for _, a in tcc.packets if a is not None][:3] == [250, 750, 1500]


# Captured-style packets from pion/rtcp's tests (MIT): RTCP-padded like libwebrtc sends.
CHROME_TCC_1 = bytes.fromhex("afcd0005 fa17fa17 43032fa0 00990001 3de80217 20019401")
CHROME_TCC_4 = bytes.fromhex(
    "afcd0007 fa17fa17 193dd8bb 00040007 10636e01 20074c24 24100c0c 10000003"
)


def test_transport_cc_captures() -> None:
    assert _one(CHROME_TCC_1) == TransportFeedback(
        4195875351, 1124282272, 153, 1, 4057090, 23, ((153, 37000),)
    )
    tcc = _one(CHROME_TCC_4)
    assert isinstance(tcc, TransportFeedback) and tcc.reference_time == 1074030
    deltas = [19000, 9000, 9000, 4000, 3000, 3000, 4000]
    arrivals = [sum(deltas[: i + 1]) for i in range(7)]
    assert tcc.packets == tuple(zip(range(4, 11), arrivals, strict=True))


def test_transport_cc_not_misread_as_nack() -> None:
    data = build_transport_feedback(1, 2, 100, 5, 1, [1000, 2000])
    assert len(data) % 4 == 0 and data[0] & 0x20 == 0
    theirs = aiortc_rtp.RtcpPacket.parse(data)[0]  # aiortc: a NACK-shaped misreading
    assert isinstance(theirs, aiortc_rtp.RtcpRtpfbPacket) and theirs.fmt == 15 and theirs.lost
    assert _one(data) == TransportFeedback(1, 2, 100, 2, 5, 1, ((100, 1000), (101, 2000)))


def test_transport_cc_malformed() -> None:
    good = bytearray(build_transport_feedback(1, 2, 0, 0, 0, [250] * 20))
    assert isinstance(_one(bytes(good)), TransportFeedback)
    reserved = struct.pack("!IIHHI", 1, 2, 0, 1, 0) + bytes.fromhex("6001") + b"\x00\x00"
    short_deltas = struct.pack("!IIHHI", 1, 2, 0, 3, 0) + bytes.fromhex("2003") + b"\x01\x01"
    no_chunks = struct.pack("!IIHHI", 1, 2, 0, 65535, 0)
    for body in (reserved, short_deltas, no_chunks, b"\x00" * 12):
        data = struct.pack("!BBH", 0x8F, 205, len(body) // 4) + body
        assert parse_rtcp(data) == ([], 1)
    with pytest.raises(ValueError):
        build_transport_feedback(1, 2, 0, 0, 0, [0, 8_200_000])


# --- malformed compounds --------------------------------------------------------------------


def test_lying_and_bad_sub_packets_are_counted() -> None:
    pli = build_pli(1, 2)
    lying = bytearray(build_pli(3, 4))
    lying[2:4] = b"\x00\x09"
    assert parse_rtcp(pli + bytes(lying) + pli) == ([Pli(1, 2)], 1)
    version1 = bytes([0x41]) + pli[1:]
    bad_padding = bytes([0xA1]) + pli[1:-1] + b"\x00"
    short_sr = struct.pack("!BBHI", 0x80, 200, 1, 7)
    rr_missing_block = struct.pack("!BBHI", 0x81, 201, 1, 7)
    sdes_unterminated = struct.pack("!BBHI", 0x81, 202, 2, 7) + b"\x01\x05ab"
    bye_short = struct.pack("!BBHI", 0x82, 203, 1, 7)
    remb_short = struct.pack("!BBHII4s", 0x8F, 206, 3, 1, 0, b"REMB")
    bad_ones = (version1, bad_padding, short_sr, rr_missing_block, sdes_unterminated)
    for bad in (*bad_ones, bye_short, remb_short):
        assert parse_rtcp(pli + bad + pli) == ([Pli(1, 2), Pli(1, 2)], 1)
    assert parse_rtcp(pli + pli[:3]) == ([Pli(1, 2)], 1)  # trailing bytes shorter than a header
    assert parse_rtcp(b"") == ([], 0)


# --- NTP ------------------------------------------------------------------------------------


def test_ntp_helpers() -> None:
    assert ntp_from_seconds(0.0) == 2208988800 << 32
    assert ntp_from_seconds(1.5) == ((2208988801 << 32) | 0x80000000)
    t = 1_700_000_000.123456
    assert abs(seconds_from_ntp(ntp_from_seconds(t)) - t) < 1e-6
    after_2036 = 2_200_000_000.5  # NTP era 1: the seconds field wrapped
    assert ntp_from_seconds(after_2036) >> 32 < 2**31
    assert seconds_from_ntp(ntp_from_seconds(after_2036)) == after_2036
    assert ntp_middle32(0x0123456789ABCDEF) == 0x456789AB
    lsr = ntp_middle32(ntp_from_seconds(t))
    rr = _one(build_rr(1, [ReportBlock(2, 0, 0, 0, 0, lsr, 0)]))
    assert isinstance(rr, ReceiverReport) and rr.reports[0].lsr == lsr


# --- properties -----------------------------------------------------------------------------
# Field values are decoded from drawn byte strings: one draw per packet keeps hypothesis
# fast while every field still takes arbitrary values (and shrinks towards zero bytes).

Item = tuple[bytes, RtcpPacket]


def _u32s(blob: bytes) -> tuple[int, ...]:
    return struct.unpack(f"!{len(blob) // 4}I", blob[: len(blob) & ~3])


def _blocks(blob: bytes) -> list[ReportBlock]:
    out = []
    for i in range(0, len(blob) - 23, 24):
        ssrc, fraction, lost, highest, jitter, lsr, dlsr = struct.unpack_from("!IB3sIIII", blob, i)
        lost_n = int.from_bytes(lost, signed=True)
        out.append(ReportBlock(ssrc, fraction, lost_n, highest, jitter, lsr, dlsr))
    return out


def _sr(head: bytes, blob: bytes) -> Item:
    ssrc, ntp, ts, packets, octets = struct.unpack("!IQIII", head)
    blocks = _blocks(blob)
    expected = SenderReport(ssrc, ntp, ts, packets, octets, tuple(blocks))
    return build_sr(ssrc, ntp, ts, packets, octets, blocks), expected


def _rr(ssrc: int, blob: bytes) -> Item:
    return build_rr(ssrc, _blocks(blob)), ReceiverReport(ssrc, tuple(_blocks(blob)))


def _fir(ssrc: int, blob: bytes) -> Item:
    entries = [struct.unpack_from("!IB", blob, i) for i in range(0, len(blob) - 4, 5)]
    return build_fir(ssrc, entries), Fir(ssrc, tuple(entries))


def _remb(ssrc: int, bitrate: int, blob: bytes) -> Item:
    shift = max(0, bitrate.bit_length() - 18)
    expected = Remb(ssrc, (bitrate >> shift) << shift, _u32s(blob))
    return build_remb(ssrc, bitrate, _u32s(blob)), expected


def _nack(base: int, gaps: bytes) -> Item:
    seqs, offset = [], 0
    for gap in gaps:  # strictly increasing offsets, spanning less than half the range
        offset += gap % 40 + 1
        seqs.append((base + offset) & 0xFFFF)
    scrambled = sorted(seqs, key=lambda seq: (seq * 40503) & 0xFFFF)
    return build_nack(1, 2, scrambled), Nack(1, 2, tuple(seqs))


def _tcc(base: int, ref: int, steps: bytes) -> Item:
    arrivals: list[int | None] = []
    ticks = 0
    for b in steps:  # lost, small (some negative: large symbol) and large deltas
        if b < 40:
            arrivals.append(None)
            continue
        ticks += b - 120 if b < 200 else (b - 228) * 1000
        arrivals.append(ticks * 250)
    expected = tuple(((base + i) & 0xFFFF, a) for i, a in enumerate(arrivals))
    data = build_transport_feedback(7, 8, base, ref, 3, arrivals)
    return data, TransportFeedback(7, 8, base, len(arrivals), ref, 3, expected)


u32 = st.integers(0, 2**32 - 1)
i24 = st.integers(-(2**23), 2**23 - 1)
valid = st.one_of(
    st.builds(_sr, st.binary(min_size=24, max_size=24), st.binary(max_size=72)),
    st.builds(_rr, u32, st.binary(max_size=72)),
    st.builds(
        lambda s, c: (build_sdes(s, c.decode("latin-1")), Sdes(((s, c.decode("latin-1")),))),
        u32, st.binary(max_size=30),
    ),
    st.builds(lambda b: (build_bye(_u32s(b)), Bye(_u32s(b))), st.binary(max_size=24)),
    st.builds(lambda s, m: (build_pli(s, m), Pli(s, m)), u32, u32),
    st.builds(_fir, u32, st.binary(max_size=15)),
    st.builds(_remb, u32, st.integers(0, 2**70), st.binary(max_size=16)),
    st.builds(_nack, st.integers(0, 65535), st.binary(max_size=40)),
    st.builds(_tcc, st.integers(0, 65535), i24, st.binary(max_size=60)),
)  # fmt: skip


@PROPERTY
@given(st.lists(valid, min_size=1, max_size=3))
def test_valid_compound_round_trips(items: list[Item]) -> None:
    packets, skipped = parse_rtcp(b"".join(data for data, _ in items))
    assert skipped == 0 and packets == [expected for _, expected in items]


@PROPERTY
@given(st.binary(max_size=200))
def test_parse_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    packets, skipped = parse_rtcp(data)
    assert skipped >= 0 and len(packets) + skipped <= len(data) // 4 + 1


@PROPERTY
@given(
    st.lists(valid, min_size=1, max_size=3),
    st.integers(0, 2),
    st.integers(0, 0xFFFF),
    st.none() | st.tuples(st.integers(0, 0xFFFF), st.integers(0, 255)),
)
def test_corrupted_length_fields(
    items: list[Item], which: int, words: int, flip: tuple[int, int] | None
) -> None:
    """A length that overruns the datagram ends the walk; any other lie never raises."""
    buf = bytearray(b"".join(d for d, _ in items))
    expected = [e for _, e in items]
    j = which % len(items)
    at = sum(len(d) for d, _ in items[:j])
    struct.pack_into("!H", buf, at + 2, words)
    if flip:
        buf[flip[0] % len(buf)] = flip[1]
    packets, skipped = parse_rtcp(bytes(buf))
    assert len(packets) + skipped <= len(buf) // 4 + 1
    if flip:
        return
    assert packets[:j] == expected[:j]  # everything before the corrupted header is intact
    if at + 4 + 4 * words > len(buf):
        assert (packets, skipped) == (expected[:j], 1)
