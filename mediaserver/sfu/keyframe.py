"""Throttled keyframe requests towards a publisher (sans-IO).

Every new subscriber, every subscriber's PLI/FIR and every unrepairable upstream loss
wants a keyframe. Sending each upstream would make the publisher's encoder emit
keyframes back to back (a bitrate spike on exactly the links that are struggling), so
requests are merged: at most one per ``interval`` seconds, and a request that arrives
inside the interval is remembered and sent when it ends, unless a keyframe has arrived
in the meantime.
"""

from __future__ import annotations


class KeyframeRequester:
    __slots__ = ("_interval", "_last_sent", "_pending", "requests_merged", "requests_sent")

    def __init__(self, interval: float = 0.5) -> None:
        self._interval = interval
        self._last_sent = float("-inf")
        self._pending = False
        self.requests_sent = 0
        self.requests_merged = 0

    @property
    def pending(self) -> bool:
        return self._pending

    def request(self, now: float) -> bool:
        """A keyframe is wanted; True if a PLI should go upstream now."""
        if now - self._last_sent >= self._interval:
            self._last_sent = now
            self._pending = False
            self.requests_sent += 1
            return True
        self._pending = True
        self.requests_merged += 1
        return False

    def on_keyframe(self) -> None:
        """A keyframe arrived: a merged request is no longer needed."""
        self._pending = False

    def poll(self, now: float) -> bool:
        """True if a merged request is due now (call on packets or timer ticks)."""
        if self._pending and now - self._last_sent >= self._interval:
            self._last_sent = now
            self._pending = False
            self.requests_sent += 1
            return True
        return False
