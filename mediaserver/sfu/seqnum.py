"""Modular arithmetic for RTP sequence numbers and timestamps, in one place.

RTP sequence numbers are 16-bit and timestamps 32-bit; both wrap. The SFU unwraps them
once, where a packet enters (``Unwrapper``), and works with extended (unbounded) integers
from then on. Only when a packet leaves does ``OutputRewriter`` fold them back into the
subscriber's own 16/32-bit space, with offsets chosen so that the subscriber sees one
continuous stream even when the source changes underneath (a publisher restart, a later
simulcast layer switch, a pause and resume).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from mediaserver.sfu.native import int_fields

SEQ_MOD = 1 << 16
SEQ_MASK = SEQ_MOD - 1
SEQ_HALF = SEQ_MOD >> 1
TS_MOD = 1 << 32
TS_MASK = TS_MOD - 1
TS_HALF = TS_MOD >> 1


def seq_diff(a: int, b: int) -> int:
    """Signed distance from 16-bit ``b`` to ``a`` (positive when ``a`` is newer)."""
    d = (a - b) & SEQ_MASK
    return d - SEQ_MOD if d >= SEQ_HALF else d


def seq_newer(a: int, b: int) -> bool:
    """True when 16-bit ``a`` comes after ``b`` in RTP order."""
    return seq_diff(a, b) > 0


def ts_diff(a: int, b: int) -> int:
    """Signed distance from 32-bit ``b`` to ``a``."""
    d = (a - b) & TS_MASK
    return d - TS_MOD if d >= TS_HALF else d


# The packet path's own state: C integers where the extension is built (sfu/native.py).
_UnwrapperInts: Any
_UnwrapperInts, _UNWRAPPER_SLOTS = int_fields("UnwrapperInts", "_half", "_last", "_mask", "_mod")
_RewriterInts: Any
_RewriterInts, _REWRITER_SLOTS = int_fields(
    "RewriterInts", "_base_in", "_highest_in", "_last_out_seq", "_last_out_ts", "_seq_offset",
    "_switch_ts_gap", "_ts_offset")


class Unwrapper(_UnwrapperInts):
    """Turns a wrapping counter of ``bits`` bits into an extended integer.

    The first value is taken as is (plus one full cycle, so that a packet slightly older
    than the first one still unwraps to a non-negative number). Later values land on the
    candidate closest to the last extended value, which handles both wraparound and
    reordering of up to half the range.
    """

    __slots__ = _UNWRAPPER_SLOTS

    def __init__(self, bits: int) -> None:
        self._mod = 1 << bits
        self._mask = self._mod - 1
        self._half = self._mod >> 1
        self._last = -1

    @property
    def last(self) -> int:
        """The most recent extended value returned (-1 before the first)."""
        return self._last

    def unwrap(self, value: int) -> int:
        last = self._last
        if last < 0:
            ext = self._mod + value
        else:
            d = (value - last) & self._mask
            if d >= self._half:
                d -= self._mod
            ext = last + d
        self._last = ext
        return ext

    def peek(self, value: int) -> int:
        """Unwrap without updating state (for packets that may be rejected)."""
        last = self._last
        if last < 0:
            return self._mod + value
        d = (value - last) & self._mask
        if d >= self._half:
            d -= self._mod
        return last + d


class OutputRewriter(_RewriterInts):
    """Maps extended input sequence numbers and timestamps to a subscriber's output space.

    One instance per outgoing stream. ``rewrite`` is called for each forwarded packet;
    ``skip`` for a packet that is deliberately not forwarded (padding, a filtered temporal
    layer), so that the output keeps no hole the subscriber would NACK in vain;
    ``switch_source`` when the next packet comes from a different input stream (a new
    publisher SSRC, another simulcast layer, a resume): the offsets are recomputed so the
    output continues right after the last packet sent.

    Sequence output is ``ext_seq + offset - (skipped inputs below ext_seq)``, the scheme of
    mediasoup's SeqManager: a late packet that arrives after a skipped one still gets the
    number it would have had, so reordering never produces duplicates. Timestamp output is
    ``ext_ts + ts_offset``. Packets older than the current source's first packet are
    refused (``None``): their output numbers could collide with packets already sent.
    """

    __slots__ = ("_pending_switch", "_skipped", *_REWRITER_SLOTS)

    # Skipped inputs remembered for reordering; older ones are folded into the offset and
    # packets older than them refused (3000 packets is several seconds of video).
    MAX_SKIPPED = 128
    REORDER_WINDOW = 3000

    def __init__(self, initial_seq: int, initial_ts: int) -> None:
        # The first output packet gets ``initial_seq``/``initial_ts`` (random per RFC 3550).
        self._last_out_seq = initial_seq - 1
        self._last_out_ts = initial_ts
        self._seq_offset = 0
        self._ts_offset = 0
        self._highest_in = -1
        self._base_in = -1
        self._pending_switch = True
        self._switch_ts_gap = 0
        self._skipped: list[int] = []

    @property
    def last_out_seq(self) -> int:
        """Extended sequence number of the last packet sent (initial - 1 before any)."""
        return self._last_out_seq

    @property
    def last_out_ts(self) -> int:
        """Extended timestamp of the newest packet sent."""
        return self._last_out_ts

    @property
    def ts_offset(self) -> int:
        return self._ts_offset

    @property
    def started(self) -> bool:
        """True once a packet has been rewritten."""
        return self._highest_in >= 0

    def switch_source(self, ts_gap: int = 1) -> None:
        """The next packet starts a new input stream; keep the output continuous.

        ``ts_gap`` is how far (in clock ticks) the first new timestamp should sit after the
        last one sent; the caller derives it from wall-clock time since the last packet.
        """
        self._pending_switch = True
        self._switch_ts_gap = max(1, ts_gap)

    def rewrite(self, ext_seq: int, ext_ts: int) -> tuple[int, int] | None:
        """Output (seq16, ts32) for a packet, or None if it must be dropped as too old."""
        skipped = self._skipped
        if self._pending_switch:
            self._pending_switch = False
            skipped.clear()
            self._seq_offset = self._last_out_seq + 1 - ext_seq
            if self._highest_in < 0:
                self._ts_offset = self._last_out_ts - ext_ts
            else:
                self._ts_offset = self._last_out_ts + self._switch_ts_gap - ext_ts
            self._base_in = ext_seq
            self._highest_in = ext_seq
        elif ext_seq > self._highest_in:
            self._highest_in = ext_seq
        elif ext_seq < self._base_in or ext_seq < self._highest_in - self.REORDER_WINDOW:
            return None
        elif skipped and ext_seq in skipped:
            return None
        out_seq = ext_seq + self._seq_offset
        if skipped:
            out_seq -= bisect_left(skipped, ext_seq)
        out_ts = ext_ts + self._ts_offset
        if out_seq > self._last_out_seq:
            self._last_out_seq = out_seq
            self._last_out_ts = out_ts
        return out_seq & SEQ_MASK, out_ts & TS_MASK

    def skip(self, ext_seq: int) -> None:
        """Account for an input packet that is not forwarded.

        Only a packet newer than everything seen so far can be closed up over; for an older
        one the output numbers around it are already on the wire, so its hole stays.
        """
        if self._pending_switch or ext_seq <= self._highest_in:
            return
        self._highest_in = ext_seq
        skipped = self._skipped
        skipped.append(ext_seq)
        if len(skipped) > self.MAX_SKIPPED or skipped[0] < ext_seq - self.REORDER_WINDOW:
            oldest = skipped.pop(0)
            self._seq_offset -= 1
            self._base_in = max(self._base_in, oldest + 1)
