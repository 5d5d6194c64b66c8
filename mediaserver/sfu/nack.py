"""Which lost upstream packets to ask the publisher for again, and when (sans-IO).

aiortc's own NackGenerator re-requests the whole missing list on every gap, which under
overload turns into RTX storms (see ../shared/aiortc-sfu-notes.md). This tracker asks for
each missing packet at most ``max_retries`` times, spaced by about one round trip, gives
up on packets too old to be useful, and asks for a keyframe instead when a gap is so
large that retransmission cannot repair it in time.
"""

from __future__ import annotations

from typing import Any

from mediaserver.sfu.native import int_fields

_EMPTY: tuple[int, ...] = ()


_NackInts: Any
_NackInts, _NACK_SLOTS = int_fields("NackInts", "_highest")


class NackTracker(_NackInts):
    """Tracks missing extended sequence numbers of one upstream stream.

    ``on_packet`` is called for every packet (media or RTX-repaired) with its extended
    sequence number; it returns the sequence numbers to NACK now (new gaps at once, earlier
    ones again once their retry time has come). ``now`` is in seconds.
    """

    __slots__ = (
        *_NACK_SLOTS,  # a C integer where the extension is built (sfu/native.py)
        "_keyframe_needed",
        "_max_age",
        "_max_missing",
        "_max_retries",
        "_missing",
        "_next_due",
        "gave_up",
        "recovered",
    )

    def __init__(
        self,
        *,
        max_retries: int = 4,
        max_age: float = 1.0,
        max_missing: int = 500,
    ) -> None:
        # seq -> (retries so far, time of next request)
        self._missing: dict[int, tuple[int, float]] = {}
        self._highest = -1
        self._next_due = float("inf")
        self._max_retries = max_retries
        self._max_age = max_age
        self._max_missing = max_missing
        self._keyframe_needed = False
        self.recovered = 0
        self.gave_up = 0

    @property
    def missing(self) -> list[int]:
        return sorted(self._missing)

    def take_keyframe_request(self) -> bool:
        """True once after a gap too large to repair by retransmission."""
        needed = self._keyframe_needed
        self._keyframe_needed = False
        return needed

    def on_packet(self, ext_seq: int, now: float, rtt: float = 0.1) -> tuple[int, ...]:
        highest = self._highest
        missing = self._missing
        if highest < 0:
            self._highest = ext_seq
            return _EMPTY
        if ext_seq > highest:
            self._highest = ext_seq
            gap = ext_seq - highest - 1
            if gap:
                if gap > self._max_missing:
                    # Retransmitting this much would only add to the congestion that
                    # caused it: start again from a keyframe.
                    self.gave_up += len(missing) + gap
                    missing.clear()
                    self._next_due = float("inf")
                    self._keyframe_needed = True
                    return _EMPTY
                retry_at = now + _retry_interval(rtt)
                for seq in range(highest + 1, ext_seq):
                    missing[seq] = (1, retry_at)
                if len(missing) > self._max_missing:
                    for seq in sorted(missing)[: len(missing) - self._max_missing]:
                        del missing[seq]
                        self.gave_up += 1
                    self._keyframe_needed = True
                self._next_due = min(self._next_due, retry_at)
                due = self._due(now, rtt) if now >= self._next_due else _EMPTY
                return tuple(range(highest + 1, ext_seq)) + due
        elif missing and missing.pop(ext_seq, None) is not None:
            self.recovered += 1
        if missing and now >= self._next_due:
            return self._due(now, rtt)
        return _EMPTY

    def _due(self, now: float, rtt: float) -> tuple[int, ...]:
        missing = self._missing
        out: list[int] = []
        next_due = float("inf")
        retry_at = now + _retry_interval(rtt)
        oldest_useful = self._highest - int(self._max_age * 1000)  # ~1000 packets/s bound
        for seq, (retries, due_at) in list(missing.items()):
            if seq < oldest_useful:
                del missing[seq]
                self.gave_up += 1
                continue
            if due_at <= now:
                if retries >= self._max_retries:
                    del missing[seq]
                    self.gave_up += 1
                    continue
                missing[seq] = (retries + 1, retry_at)
                out.append(seq)
                due_at = retry_at
            next_due = min(next_due, due_at)
        self._next_due = next_due
        return tuple(out)


def _retry_interval(rtt: float) -> float:
    # About one round trip plus a little for the publisher to react, bounded so a bad RTT
    # estimate neither hammers the publisher nor waits past usefulness.
    return min(max(rtt * 1.2, 0.02), 0.25)
