"""RTP stream statistics as RFC 3550 defines them (sans-IO, time passed in).

``ReceiveStats`` is kept for each stream the SFU receives (loss from sequence gaps,
interarrival jitter, the last sender report) and produces the report block of the
receiver reports the SFU sends upstream. ``SendStats`` is kept for each stream the SFU
sends: packet and octet counts for its sender reports, and the round-trip time computed
from the LSR/DLSR fields of the subscriber's receiver reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mediaserver.sfu.native import int_fields


@dataclass(frozen=True, slots=True)
class ReportBlockValues:
    """What goes into one RTCP report block (RFC 3550 section 6.4.1)."""

    ssrc: int
    fraction_lost: int
    packets_lost: int
    highest_seq: int
    jitter: int
    lsr: int
    dlsr: int


_ReceiveInts: Any
_ReceiveInts, _RECEIVE_SLOTS = int_fields(
    "ReceiveInts", "base_seq", "bytes_received", "clock_rate", "highest_seq", "packets_received")


class ReceiveStats(_ReceiveInts):
    """Statistics of one received RTP stream.

    ``on_packet`` takes the extended sequence number (see seqnum.Unwrapper), the RTP
    timestamp, and the arrival time in seconds.
    """

    __slots__ = (
        "_last_transit",
        "expected_prior",
        "jitter",
        "last_sr_arrival",
        "last_sr_ntp_middle",
        "received_prior",
        "ssrc",
        *_RECEIVE_SLOTS,  # C integers where the extension is built (sfu/native.py)
    )

    def __init__(self, ssrc: int, clock_rate: int) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self.base_seq = -1
        self.highest_seq = -1
        self.packets_received = 0
        self.bytes_received = 0
        self.expected_prior = 0
        self.received_prior = 0
        self.jitter = 0.0
        self._last_transit: float | None = None
        self.last_sr_ntp_middle = 0
        self.last_sr_arrival = 0.0

    def on_packet(self, ext_seq: int, rtp_timestamp: int, size: int, now: float) -> None:
        if self.base_seq < 0:
            self.base_seq = ext_seq
            self.highest_seq = ext_seq
        elif ext_seq > self.highest_seq:
            self.highest_seq = ext_seq
        self.packets_received += 1
        self.bytes_received += size
        # Interarrival jitter (RFC 3550 A.8), in timestamp units. Retransmitted packets
        # should not be fed here: their transit time says nothing about the network.
        transit = now * self.clock_rate - rtp_timestamp
        last = self._last_transit
        self._last_transit = transit
        if last is not None:
            d = abs(transit - last)
            if d < self.clock_rate * 10:  # ignore timestamp jumps (source restart)
                self.jitter += (d - self.jitter) / 16.0

    def on_sender_report(self, ntp_middle32: int, now: float) -> None:
        self.last_sr_ntp_middle = ntp_middle32
        self.last_sr_arrival = now

    @property
    def packets_expected(self) -> int:
        if self.base_seq < 0:
            return 0
        return self.highest_seq - self.base_seq + 1

    @property
    def packets_lost(self) -> int:
        # May be negative with duplicates (RFC 3550 allows it); clamp to the 24-bit field.
        return max(-(1 << 23), min((1 << 23) - 1, self.packets_expected - self.packets_received))

    def report_block(self, now: float) -> ReportBlockValues:
        """Values for a report block; moves the 'prior' interval markers forward."""
        expected = self.packets_expected
        expected_interval = expected - self.expected_prior
        received_interval = self.packets_received - self.received_prior
        self.expected_prior = expected
        self.received_prior = self.packets_received
        lost_interval = expected_interval - received_interval
        if expected_interval <= 0 or lost_interval <= 0:
            fraction = 0
        else:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        dlsr = 0
        if self.last_sr_ntp_middle:
            delay = now - self.last_sr_arrival
            if 0 < delay < 65536:
                dlsr = int(delay * 65536)
        return ReportBlockValues(
            ssrc=self.ssrc,
            fraction_lost=fraction,
            packets_lost=self.packets_lost,
            highest_seq=self.highest_seq & 0xFFFFFFFF if self.highest_seq >= 0 else 0,
            jitter=int(self.jitter),
            lsr=self.last_sr_ntp_middle,
            dlsr=dlsr,
        )


_SendInts: Any
_SendInts, _SEND_SLOTS = int_fields("SendInts", "frames_sent", "octets_sent", "packets_sent")


class SendStats(_SendInts):
    """Counters of one sent RTP stream and the round trip measured through it (the
    packet path's counters C integers where the extension is built: sfu/native.py)."""

    __slots__ = ("fraction_lost", "jitter", "packets_lost", "reports", "rtt", *_SEND_SLOTS)

    def __init__(self) -> None:
        self.packets_sent = 0
        self.octets_sent = 0
        self.frames_sent = 0
        self.rtt: float | None = None  # smoothed
        self.fraction_lost = 0
        self.packets_lost = 0
        self.jitter = 0  # as the receiver reports it, in timestamp units
        self.reports = 0

    def on_receiver_report(self, lsr: int, dlsr: int, fraction_lost: int, packets_lost: int,
                           now_ntp_middle32: int, jitter: int = 0) -> float | None:
        """Take a report block about this stream; ``now_ntp_middle32`` is our clock.

        Returns the round trip this block measured (s), or None when it carries none.
        """
        self.reports += 1
        self.fraction_lost = fraction_lost
        self.packets_lost = packets_lost
        self.jitter = jitter
        if not lsr:
            return None
        rtt_units = (now_ntp_middle32 - lsr - dlsr) & 0xFFFFFFFF
        if rtt_units >= (1 << 31):
            return None
        rtt = rtt_units / 65536.0
        self.rtt = rtt if self.rtt is None else 0.8 * self.rtt + 0.2 * rtt
        return rtt
