"""Bandwidth probes on one subscriber's downlink: how high, in what shape, and when (sans-IO).

A probe sends padding on top of the media for a moment to learn whether the link carries
more. On a weak link its cost is the queue it builds when the answer is "no": padding
queues ahead of audio, and once the bottleneck's buffer is full (200 ms in the shaped-link
tests, often less on a mobile downlink) audio is dropped with it. Three things keep that
cost small:

- **Shape.** The rate ramps from what already flows up to the goal, then holds briefly.
  A link that cannot carry the goal starts queueing only where the ramp crosses its
  capacity, so the queue grows slowly (quadratically, not linearly) and the subscriber's
  delay detector fires before much has built up. A flat probe at 1.5x the rate overfills
  a link right from its first packet.
- **Memory of failures.** A failed probe leaves the rate it had reached when the first
  sign came (the *failed level*); a subscriber's own word on its link sets one too. Later
  probes go at most ``near_failure_step`` above it: a small step that tests whether the
  link has improved, instead of overfilling it by the same margin again every few
  seconds. A probe that gets through at or above the failed level forgets it; so does
  time (links change).
- **Backoff.** After a failure the next probe waits ``backoff_min`` seconds, doubling up
  to ``backoff_max`` while failures continue.

Growth is still quick once a link opens up: each success lets the next probe go
``success_step`` times the estimate.

Rates are on the wire (RTP plus SRTP/UDP/IP headers), in bits per second; ``now`` is a
plain number the caller passes in.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Probe:
    base: int  # the rate flowing when the probe started
    goal: int  # the total rate tried
    started: float
    ramp_ends: float  # the rate reaches the goal here...
    ends: float  # ...and holds it until here; padding stops
    settles: float  # feedback about the probe has arrived by then

    def rate_at(self, now: float) -> int:
        """The total rate (media plus padding) the probe asks for at ``now``; 0 once over."""
        if now >= self.ends or now < self.started:
            return 0
        if now >= self.ramp_ends:
            return self.goal
        share = (now - self.started) / (self.ramp_ends - self.started)
        return round(self.base + (self.goal - self.base) * share)


class ProbePlanner:
    """Plans probes and learns from their outcomes; the estimator owns the one in flight."""

    def __init__(
        self,
        step: float = 1.5,
        success_step: float = 2.0,
        near_failure_step: float = 1.2,
        ramp: float = 0.6,
        cold_ramp: float = 1.6,
        hold: float = 0.2,
        settle: float = 1.0,
        backoff_min: float = 2.0,
        backoff_max: float = 5.0,
        failure_memory: float = 30.0,
    ) -> None:
        self._step = step
        self._success_step = success_step
        self._near_failure_step = near_failure_step
        self._ramp = ramp
        self._cold_ramp = cold_ramp
        self._hold = hold
        self._settle = settle
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._failure_memory = failure_memory
        self._backoff = backoff_min
        self._streak = 0  # probes in a row that went through
        self.next_at = float("-inf")
        self.failed_level: int | None = None
        self._failed_at = float("-inf")
        self.ok = 0
        self.failed = 0

    def goal(self, wanted: int, estimate: int, now: float) -> int | None:
        """The rate to try now for ``wanted``, or None while backing off.

        At most ``step`` times the estimate (``success_step`` right after a success), and
        at most ``near_failure_step`` above a remembered failure.
        """
        if now < self.next_at:
            return None
        if self.failed_level is not None and now - self._failed_at > self._failure_memory:
            self.failed_level = None
        limit = estimate * (self._success_step if self._streak else self._step)
        if self.failed_level is not None:
            limit = min(limit, self.failed_level * self._near_failure_step)
        goal = int(min(wanted, limit))
        return goal if goal > estimate else None

    def start(self, base: int, goal: int, now: float, cold: bool = False) -> Probe:
        """A probe from ``base`` to ``goal``; ``cold`` when no video flows to the subscriber.

        From audio only the subscriber's delay-based estimator has had nothing to measure:
        its first REMB comes some 0.6 s into the probe (aiortc needs that much arrival
        history), by when a 0.6 s ramp has run its course and overfilled a thin link.
        The cold ramp is slower, so the first feedback finds the rate near the link's
        capacity, not half above it.
        """
        base = max(0, min(base, goal))
        ramp_ends = now + (self._cold_ramp if cold else self._ramp)
        ends = ramp_ends + self._hold
        return Probe(base, goal, now, ramp_ends, ends, ends + self._settle)

    def near(self, level: int, now: float) -> None:
        """The subscriber said its link carries about ``level`` bps: probe past it as past
        a failure, at most ``near_failure_step`` above, without counting one or backing off.

        If the word is true, a probe 1.5x above it overfills the link from the middle of
        its ramp on, and the subscriber's first REMB out of audio only can come too late
        to spare its audio (a CI run lost one packet: a 210 ms gap).
        """
        self._remember(level, now)

    def _remember(self, level: int, now: float) -> None:
        """``level`` as the failed level: the lowest of those within the failure memory."""
        if self.failed_level is None or now - self._failed_at > self._failure_memory:
            self.failed_level = level
        else:
            self.failed_level = min(level, self.failed_level)
        self._failed_at = now

    def on_success(self, probe: Probe, now: float) -> None:
        self.ok += 1
        self._streak += 1
        self._backoff = self._backoff_min
        self.next_at = now
        if self.failed_level is not None and probe.goal >= self.failed_level:
            self.failed_level = None  # the link carries more than it did

    def on_failure(self, level: int, now: float) -> None:
        """A probe (or the layer one let in) congested the link at ``level`` bps."""
        self.failed += 1
        self._streak = 0
        self._remember(level, now)
        self.next_at = now + self._backoff
        self._backoff = min(self._backoff * 2, self._backoff_max)

    @staticmethod
    def failure_level(probe: Probe, now: float, estimate: int) -> int:
        """Where the probe stood when the first sign of congestion came.

        The subscriber's detector reacts a little after the queue starts to grow, so the
        link's capacity is below this; never below the rate that flowed before the probe,
        nor below the estimate the probe started from. A probe from audio only starts at
        the audio's rate, far below the estimate; a failure early in its ramp would
        otherwise hold every later probe under the lowest video layer.
        """
        rate = probe.rate_at(now) if now < probe.ends else probe.goal
        return max(rate, probe.base, estimate)
