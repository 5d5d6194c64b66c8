"""Admission and rate limits, as pure logic: a decision in, ``now`` passed in, no I/O.

One misbehaving client must not be able to take a node down for everyone else, and a node
near its limits should say no to newcomers rather than let every running session degrade.
Each limit here is a small class the asyncio shell asks before doing the work:

- ``TokenBucket``: a rate with a burst. Used per signalling connection (messages), node-wide
  (joins) and per published track (bytes, a publisher flooding past its budget).
- ``ConnectionCounter``: open signalling connections per client IP.
- ``Admission``: may one more participant join this node now? Refuses with a stable code
  when the node is full, its event loop is lagging, or joins arrive too fast.

The codes are part of the signalling protocol (docs/protocol.md#error-codes).
"""

from __future__ import annotations

from dataclasses import dataclass

RATE_LIMITED = "rate_limited"
TOO_MANY_CONNECTIONS = "too_many_connections"
JOIN_RATE_LIMITED = "join_rate_limited"
NODE_FULL = "node_full"
NODE_OVERLOADED = "node_overloaded"

# Bounded label values of mediaserver_limited_total (metrics.LIMITED).
LIMIT_REASONS = (RATE_LIMITED, TOO_MANY_CONNECTIONS, JOIN_RATE_LIMITED, NODE_FULL,
                 NODE_OVERLOADED, "slow_consumer")


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full.

    ``take(now, cost)`` spends ``cost`` tokens if there are that many and says whether it
    did. Time going backwards (a caller mixing clocks) adds nothing rather than failing.
    """

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.updated: float | None = None

    def _refill(self, now: float) -> None:
        if self.updated is not None and now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        if self.updated is None or now > self.updated:
            self.updated = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        self._refill(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


class ConnectionCounter:
    """Open connections per key (a client IP); ``limit`` 0 means no limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}

    def acquire(self, key: str) -> bool:
        n = self.open.get(key, 0)
        if self.limit and n >= self.limit:
            return False
        self.open[key] = n + 1
        return True

    def release(self, key: str) -> None:
        n = self.open.get(key, 0) - 1
        if n > 0:
            self.open[key] = n
        else:
            self.open.pop(key, None)


@dataclass(frozen=True)
class AdmissionLimits:
    max_participants: int = 0  # on this node; 0: no limit
    max_loop_lag: float = 0.0  # seconds of smoothed event-loop lag; 0: not checked
    joins_per_second: float = 0.0  # node-wide; 0: no limit


class Admission:
    """Whether a node takes one more participant, and if not, the code that says why.

    The event-loop lag is smoothed (an exponentially weighted mean of the probes), so one
    garbage-collection pause does not turn joins away but a loop that stays busy does.
    """

    LAG_WEIGHT = 0.3  # of each new probe in the smoothed lag

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self.lag = 0.0
        rate = limits.joins_per_second
        self._joins = TokenBucket(rate, max(1.0, rate)) if rate > 0 else None

    def observe_lag(self, lag: float) -> None:
        self.lag += self.LAG_WEIGHT * (max(0.0, lag) - self.lag)

    def check(self, participants: int, now: float) -> str | None:
        """None if one more participant may join now, else the refusal code.

        Capacity and lag are checked before the join rate, so a refused join does not use
        up a token of the rate.
        """
        lim = self.limits
        if lim.max_participants and participants >= lim.max_participants:
            return NODE_FULL
        if lim.max_loop_lag and self.lag > lim.max_loop_lag:
            return NODE_OVERLOADED
        if self._joins is not None and not self._joins.take(now):
            return JOIN_RATE_LIMITED
        return None


def bitrate_bucket(kbps: int) -> TokenBucket | None:
    """A byte budget for one published track: ``kbps`` sustained, a second of it as burst.

    The burst (at least 100 kB) lets a keyframe through whole; a publisher sending far
    more than the budget for longer loses the excess, which only hurts its own stream.
    """
    if kbps <= 0:
        return None
    rate = kbps * 125.0  # bytes per second
    return TokenBucket(rate, max(rate, 100_000.0))
