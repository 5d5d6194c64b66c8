"""RTCP (RFC 3550, 4585, 5104) plus REMB and transport-wide congestion control feedback.

RTCP arrives tens of times per second per transport, not per media packet, so packets are
small frozen dataclasses. ``parse_rtcp`` reads bytes from the network and never raises: a
malformed sub-packet is skipped and counted, and the walk through a compound packet stops
at the first length field that points past the end of the datagram (nothing after it can
be trusted). Builders return bytes; a compound packet is their concatenation. Builders
raise ``ValueError`` only for values that cannot be represented (our own misuse).

aiortc 1.16 dispatches every RTPFB to its NACK parser and so reads transport-cc feedback
as a list of bogus lost packets; here the feedback message type selects the parser.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SR, RR, SDES, BYE, APP, RTPFB, PSFB = 200, 201, 202, 203, 204, 205, 206
RTPFB_NACK, RTPFB_TCC = 1, 15
PSFB_PLI, PSFB_FIR, PSFB_AFB = 1, 4, 15

NTP_UNIX_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01
REMB_MAX_BITRATE = 0x3FFFF << 63  # 18-bit mantissa, 6-bit exponent
TCC_DELTA_US = 250  # transport-cc receive delta unit
TCC_REFERENCE_US = 64000  # transport-cc reference time unit

_HEADER = struct.Struct("!BBH")
_U32 = struct.Struct("!I")
_U32X2 = struct.Struct("!II")
_U16X2 = struct.Struct("!HH")
_SENDER_INFO = struct.Struct("!IQIII")  # ssrc + sender info
_REPORT = struct.Struct("!IIIIII")
_FIR_ENTRY = struct.Struct("!IB3x")
_TCC_HEAD = struct.Struct("!IIHHI")
_I16 = struct.Struct("!h")


@dataclass(frozen=True, slots=True)
class ReportBlock:
    ssrc: int
    fraction_lost: int
    packets_lost: int  # signed 24-bit cumulative count
    highest_seq: int  # extended highest sequence number received
    jitter: int
    lsr: int
    dlsr: int


@dataclass(frozen=True, slots=True)
class SenderReport:
    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    ssrc: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class Sdes:
    chunks: tuple[tuple[int, str | None], ...]  # (ssrc, CNAME or None)


@dataclass(frozen=True, slots=True)
class Bye:
    ssrcs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Nack:
    sender_ssrc: int
    media_ssrc: int
    lost: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Pli:
    sender_ssrc: int
    media_ssrc: int


@dataclass(frozen=True, slots=True)
class Fir:
    sender_ssrc: int
    entries: tuple[tuple[int, int], ...]  # (media ssrc, command sequence number)


@dataclass(frozen=True, slots=True)
class Remb:
    sender_ssrc: int
    bitrate: int
    ssrcs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TransportFeedback:
    sender_ssrc: int
    media_ssrc: int
    base_seq: int
    packet_status_count: int
    reference_time: int  # signed 24-bit, in 64 ms units
    fb_pkt_count: int
    # (transport seq, arrival in us after reference_time or None if not received)
    packets: tuple[tuple[int, int | None], ...]


@dataclass(frozen=True, slots=True)
class Unknown:
    packet_type: int
    fmt: int


RtcpPacket = (
    SenderReport | ReceiverReport | Sdes | Bye | Nack | Pli | Fir | Remb | TransportFeedback
    | Unknown
)  # fmt: skip


# --- parsing -----------------------------------------------------------------------------


def _reports(body: bytes, pos: int, count: int) -> tuple[ReportBlock, ...]:
    out = []
    for ssrc, word, highest, jitter, lsr, dlsr in _REPORT.iter_unpack(body[pos : pos + 24 * count]):
        lost = (word & 0xFFFFFF) - (0x1000000 if word & 0x800000 else 0)
        out.append(ReportBlock(ssrc, word >> 24, lost, highest, jitter, lsr, dlsr))
    return tuple(out)


def _parse_sr(body: bytes, count: int) -> SenderReport | None:
    if len(body) < 24 + 24 * count:
        return None
    ssrc, ntp, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(body)
    return SenderReport(ssrc, ntp, rtp_ts, packets, octets, _reports(body, 24, count))


def _parse_rr(body: bytes, count: int) -> ReceiverReport | None:
    if len(body) < 4 + 24 * count:
        return None
    return ReceiverReport(_U32.unpack_from(body)[0], _reports(body, 4, count))


def _parse_sdes(body: bytes, count: int) -> Sdes | None:
    chunks = []
    pos, n = 0, len(body)
    for _ in range(count):
        if pos + 4 > n:
            return None
        ssrc, cname = _U32.unpack_from(body, pos)[0], None
        pos += 4
        while pos < n and body[pos]:  # items up to the END (zero) item
            if pos + 2 > n or pos + 2 + body[pos + 1] > n:
                return None
            end = pos + 2 + body[pos + 1]
            if body[pos] == 1:  # CNAME
                cname = body[pos + 2 : end].decode("utf-8", "replace")
            pos = end
        if pos >= n:
            return None
        pos = (pos + 4) & ~3  # past END, to the next 32-bit boundary
        chunks.append((ssrc, cname))
    return Sdes(tuple(chunks))


def _parse_bye(body: bytes, count: int) -> Bye | None:
    if len(body) < 4 * count:
        return None
    return Bye(struct.unpack_from(f"!{count}I", body))


def _parse_nack(body: bytes) -> Nack | None:
    if len(body) < 8:
        return None
    sender, media = _U32X2.unpack_from(body)
    lost = []
    for pid, blp in _U16X2.iter_unpack(body[8 : len(body) & ~3]):
        lost.append(pid)
        lost.extend((pid + d) & 0xFFFF for d in range(1, 17) if blp >> (d - 1) & 1)
    return Nack(sender, media, tuple(lost))


def _parse_tcc(body: bytes) -> TransportFeedback | None:
    n = len(body)
    if n < 16:
        return None
    sender, media, base_seq, count, ref_fb = _TCC_HEAD.unpack_from(body)
    ref = ref_fb >> 8
    if ref & 0x800000:
        ref -= 0x1000000
    symbols: list[int] = []
    pos = 16
    delta_bytes = 0  # lower bound of the receive-delta bytes the chunks announce
    while len(symbols) < count:
        if pos + 2 > n:
            return None
        chunk = (body[pos] << 8) | body[pos + 1]
        pos += 2
        left = count - len(symbols)
        if chunk < 0x8000:  # run length: 2-bit symbol, 13-bit length
            run = min(chunk & 0x1FFF, left)
            symbols.extend([chunk >> 13] * run)
            delta_bytes += run * (chunk >> 13)
        else:  # status vector: 14 one-bit or 7 two-bit symbols
            bits, mask = (2, 3) if chunk & 0x4000 else (1, 1)
            for k in range(1, min(14 // bits, left) + 1):
                symbols.append((chunk >> (14 - bits * k)) & mask)
                delta_bytes += symbols[-1]
        if pos + delta_bytes > n:
            return None
    packets: list[tuple[int, int | None]] = []
    ticks = 0
    for i, symbol in enumerate(symbols):
        if symbol == 1:
            ticks += body[pos]
            pos += 1
        elif symbol == 2:
            ticks += _I16.unpack_from(body, pos)[0]
            pos += 2
        elif symbol == 3:  # reserved: libwebrtc rejects the whole message too
            return None
        packets.append(((base_seq + i) & 0xFFFF, ticks * TCC_DELTA_US if symbol else None))
    return TransportFeedback(sender, media, base_seq, count, ref, ref_fb & 0xFF, tuple(packets))


def _parse_psfb(body: bytes, fmt: int) -> RtcpPacket | None:
    if len(body) < 8:
        return None
    sender, media = _U32X2.unpack_from(body)
    if fmt == PSFB_PLI:
        return Pli(sender, media)
    if fmt == PSFB_FIR:
        return Fir(sender, tuple(_FIR_ENTRY.iter_unpack(body[8 : len(body) & ~7])))
    if fmt == PSFB_AFB and body[8:12] == b"REMB":
        if len(body) < 16:
            return None
        num, word = body[12], _U32.unpack_from(body, 12)[0]
        if len(body) < 16 + 4 * num:
            return None
        bitrate = (word & 0x3FFFF) << ((word >> 18) & 0x3F)
        return Remb(sender, bitrate, struct.unpack_from(f"!{num}I", body, 16))
    return Unknown(PSFB, fmt)


def _parse_rtpfb(body: bytes, fmt: int) -> RtcpPacket | None:
    if fmt == RTPFB_NACK:
        return _parse_nack(body)
    if fmt == RTPFB_TCC:
        return _parse_tcc(body)
    return Unknown(RTPFB, fmt) if len(body) >= 8 else None


_PARSERS = {
    SR: _parse_sr, RR: _parse_rr, SDES: _parse_sdes, BYE: _parse_bye,
    RTPFB: _parse_rtpfb, PSFB: _parse_psfb,
}  # fmt: skip


def parse_rtcp(data: bytes) -> tuple[list[RtcpPacket], int]:
    """Parse a (compound) RTCP packet: (packets understood, malformed sub-packets skipped)."""
    packets: list[RtcpPacket] = []
    skipped = 0
    pos, n = 0, len(data)
    while pos < n:
        if pos + 4 > n:
            skipped += 1
            break
        b0, packet_type, words = _HEADER.unpack_from(data, pos)
        end = pos + 4 + 4 * words
        if end > n:
            skipped += 1
            break
        body = data[pos + 4 : end]
        pos = end
        pad = (body[-1] if body else 0) if b0 & 0x20 else 0
        if b0 >> 6 != 2 or pad > len(body) or (b0 & 0x20 and not pad):
            skipped += 1
            continue
        if pad:
            body = body[:-pad]
        parser = _PARSERS.get(packet_type)
        count = b0 & 0x1F
        packet = parser(body, count) if parser else Unknown(packet_type, count)
        if packet is None:
            skipped += 1
        else:
            packets.append(packet)
    return packets, skipped


# --- building ----------------------------------------------------------------------------


def _packet(packet_type: int, count: int, body: bytes, padded: bool = False) -> bytes:
    b0 = (0xA0 if padded else 0x80) | count
    return _HEADER.pack(b0, packet_type, len(body) >> 2) + body


def _check_count(items: Sequence[object], what: str) -> None:
    if len(items) > 31:
        raise ValueError(f"at most 31 {what} fit in one RTCP packet, got {len(items)}")


def _pack_reports(reports: Sequence[ReportBlock]) -> bytes:
    """Report blocks; cumulative loss is clamped to its signed 24-bit range."""
    _check_count(reports, "report blocks")
    return b"".join(
        _REPORT.pack(
            r.ssrc,
            ((r.fraction_lost & 0xFF) << 24)
            | (max(-0x800000, min(r.packets_lost, 0x7FFFFF)) & 0xFFFFFF),
            *(v & 0xFFFFFFFF for v in (r.highest_seq, r.jitter, r.lsr, r.dlsr)),
        )
        for r in reports
    )


def build_sr(
    ssrc: int,
    ntp_timestamp: int,
    rtp_timestamp: int,
    packet_count: int,
    octet_count: int,
    reports: Sequence[ReportBlock] = (),
) -> bytes:
    counters = (v & 0xFFFFFFFF for v in (rtp_timestamp, packet_count, octet_count))
    info = _SENDER_INFO.pack(ssrc, ntp_timestamp & 0xFFFFFFFFFFFFFFFF, *counters)
    return _packet(SR, len(reports), info + _pack_reports(reports))


def build_rr(ssrc: int, reports: Sequence[ReportBlock] = ()) -> bytes:
    return _packet(RR, len(reports), _U32.pack(ssrc) + _pack_reports(reports))


def build_sdes(ssrc: int, cname: str) -> bytes:
    value = cname.encode("utf-8")
    if len(value) > 255:
        raise ValueError("a CNAME is at most 255 bytes")
    chunk = _U32.pack(ssrc) + bytes((1, len(value))) + value
    chunk += b"\x00" * (4 - (len(chunk) & 3))  # END item plus padding to 32 bits
    return _packet(SDES, 1, chunk)


def build_bye(ssrcs: Sequence[int]) -> bytes:
    _check_count(ssrcs, "SSRCs")
    return _packet(BYE, len(ssrcs), b"".join(_U32.pack(s) for s in ssrcs))


def _rtp_order(seqs: Iterable[int]) -> list[int]:
    """Distinct 16-bit sequence numbers in RTP order: start after the widest gap."""
    ordered = sorted({s & 0xFFFF for s in seqs})
    if len(ordered) < 2:
        return ordered
    start, widest = 0, ordered[0] + 0x10000 - ordered[-1]
    for i in range(1, len(ordered)):
        gap = ordered[i] - ordered[i - 1]
        if gap > widest:
            start, widest = i, gap
    return ordered[start:] + ordered[:start]


def build_nack(sender_ssrc: int, media_ssrc: int, seqs: Iterable[int]) -> bytes:
    """Generic NACK with the fewest PID/BLP pairs (greedy in RTP order, across the wrap)."""
    fci = []
    pid = blp = -1
    for seq in _rtp_order(seqs):
        d = (seq - pid) & 0xFFFF
        if pid >= 0 and 0 < d <= 16:
            blp |= 1 << (d - 1)
            continue
        if pid >= 0:
            fci.append(_U16X2.pack(pid, blp))
        pid, blp = seq, 0
    if pid >= 0:
        fci.append(_U16X2.pack(pid, blp))
    return _packet(RTPFB, RTPFB_NACK, _U32X2.pack(sender_ssrc, media_ssrc) + b"".join(fci))


def build_pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    return _packet(PSFB, PSFB_PLI, _U32X2.pack(sender_ssrc, media_ssrc))


def build_fir(sender_ssrc: int, entries: Sequence[tuple[int, int]]) -> bytes:
    fci = b"".join(_FIR_ENTRY.pack(ssrc, seq & 0xFF) for ssrc, seq in entries)
    return _packet(PSFB, PSFB_FIR, _U32X2.pack(sender_ssrc, 0) + fci)


def build_remb(sender_ssrc: int, bitrate: int, ssrcs: Sequence[int]) -> bytes:
    """REMB; the bitrate is rounded down to what 18-bit mantissa << exponent can carry."""
    if len(ssrcs) > 255:
        raise ValueError("at most 255 SSRCs fit in one REMB")
    mantissa = max(0, min(int(bitrate), REMB_MAX_BITRATE))
    exponent = max(0, mantissa.bit_length() - 18)
    mantissa >>= exponent
    fci = b"REMB" + _U32.pack((len(ssrcs) << 24) | (exponent << 18) | mantissa)
    fci += b"".join(_U32.pack(s) for s in ssrcs)
    return _packet(PSFB, PSFB_AFB, _U32X2.pack(sender_ssrc, 0) + fci)


def _tcc_chunks(symbols: list[int]) -> list[bytes]:
    chunks = []
    i, n = 0, len(symbols)
    while i < n:
        run = 1
        while i + run < n and run < 0x1FFF and symbols[i + run] == symbols[i]:
            run += 1
        one_bit = 2 not in symbols[i : i + 14]
        if run >= 14 or (run >= 7 and not one_bit) or i + run == n:
            chunks.append(((symbols[i] << 13) | run).to_bytes(2, "big"))
            i += run
            continue
        bits = 1 if one_bit else 2
        word = 0x8000 if one_bit else 0xC000
        for k, symbol in enumerate(symbols[i : i + 14 // bits]):
            word |= symbol << (14 - bits * (k + 1))
        chunks.append(word.to_bytes(2, "big"))
        i += 14 // bits
    return chunks


def build_transport_feedback(
    sender_ssrc: int,
    media_ssrc: int,
    base_seq: int,
    reference_time: int,
    fb_pkt_count: int,
    arrivals: Sequence[int | None],
) -> bytes:
    """Transport-cc feedback for ``base_seq + i`` arriving at ``arrivals[i]``.

    Arrival times are microseconds after ``reference_time`` (64 ms units), None when lost;
    they are rounded to 250 us. Raises ValueError if two arrivals are more than about
    8 s apart or ``arrivals`` is longer than 65535.
    """
    if len(arrivals) > 0xFFFF:
        raise ValueError("transport-cc feedback covers at most 65535 packets")
    symbols: list[int] = []
    deltas: list[bytes] = []
    last = 0
    for arrival in arrivals:
        if arrival is None:
            symbols.append(0)
            continue
        tick = (arrival + TCC_DELTA_US // 2) // TCC_DELTA_US
        delta, last = tick - last, tick
        if 0 <= delta <= 0xFF:
            symbols.append(1)
            deltas.append(bytes((delta,)))
        elif -0x8000 <= delta <= 0x7FFF:
            symbols.append(2)
            deltas.append(_I16.pack(delta))
        else:
            raise ValueError(f"receive delta of {delta * TCC_DELTA_US} us does not fit")
    ref_fb = ((reference_time & 0xFFFFFF) << 8) | (fb_pkt_count & 0xFF)
    body = _TCC_HEAD.pack(sender_ssrc, media_ssrc, base_seq & 0xFFFF, len(arrivals), ref_fb)
    body += b"".join(_tcc_chunks(symbols)) + b"".join(deltas)
    pad = -len(body) & 3
    if pad:  # RTCP padding, as libwebrtc sends it
        body += b"\x00" * (pad - 1) + bytes((pad,))
    return _packet(RTPFB, RTPFB_TCC, body, padded=bool(pad))


# --- NTP time ----------------------------------------------------------------------------


def ntp_from_seconds(unix_seconds: float) -> int:
    """64-bit NTP timestamp (32.32 fixed point since 1900, modulo 2**64) of a Unix time."""
    whole = int(unix_seconds // 1)
    frac = int((unix_seconds - whole) * 4294967296.0)
    return (((whole + NTP_UNIX_OFFSET) << 32) + frac) & 0xFFFFFFFFFFFFFFFF


def ntp_middle32(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp, as carried in LSR (RFC 3550 6.4.1)."""
    return (ntp >> 16) & 0xFFFFFFFF


def seconds_from_ntp(ntp: int) -> float:
    """Unix time of an NTP timestamp; seconds fields below 2**31 are read as era 1 (2036+)."""
    secs = (ntp >> 32) & 0xFFFFFFFF
    if secs < 0x80000000:
        secs += 1 << 32
    return secs - NTP_UNIX_OFFSET + (ntp & 0xFFFFFFFF) / 4294967296.0
