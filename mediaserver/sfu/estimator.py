"""Per-subscriber downlink bandwidth estimate and probing decisions (sans-IO).

Inputs are what a subscriber tells the SFU anyway: REMB (its receive-side, delay-based
estimate) and the loss in its receiver reports, plus what the SFU itself sent. Output is
one number the stream allocator shares out, and when to probe for more.

Why not take REMB as the estimate: a receive-side estimator (libwebrtc's and aiortc's)
never reports more than about 1.5x what it currently receives and grows by 8 % a second,
so a subscriber whose video was cut to the low layer would take half a minute to climb
back (the "never recovers" complaints against other SFUs). Here REMB counts only as a
congestion signal, when it falls; growth comes from probes: padding sent for a moment at
the rate the next layer needs. A probe that raises no congestion signal lifts the estimate
to that rate; one that does is stopped at once and the next waits longer (backoff).

Loss: above ``loss_high`` the estimate drops to what actually got through; below
``loss_low`` the link counts as calm. Every rate here is on the wire (RTP plus an allowance
for SRTP/UDP/IP headers), in bits per second.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass
class Probe:
    goal: int  # the total rate being tried, bps
    started: float
    ends: float  # padding stops here
    settles: float  # feedback about the probe has arrived by then


class BandwidthEstimator:
    def __init__(
        self,
        initial: int = 200_000,
        floor: int = 40_000,
        ceiling: int = 10_000_000,
        loss_high: float = 0.10,
        loss_heavy: float = 0.2,
        loss_low: float = 0.02,
        quiet: float = 1.5,
        probe_duration: float = 0.8,
        probe_step: float = 1.5,
        probe_settle: float = 1.0,
        backoff_min: float = 2.0,
        backoff_max: float = 5.0,
        cut_guard: float = 2.0,
        upgrade_trial: float = 4.0,
    ) -> None:
        self.estimate = initial
        self.floor = floor
        self.ceiling = ceiling
        self.cap: int | None = None  # what the subscriber asked for at most
        self._loss_high = loss_high
        self._loss_heavy = loss_heavy
        self._last_remb_fall = float("-inf")
        self._loss_avg = 0.0
        self._loss_low = loss_low
        self._quiet = quiet
        self._probe_duration = probe_duration
        self._probe_step = probe_step
        self._probe_settle = probe_settle
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._cut_guard = cut_guard
        self._backoff = backoff_min
        self._streak = 0  # probes in a row that went through
        self._calm_reports = 0  # receiver reports in a row with little loss
        self._last_probe_ok = float("-inf")
        self._upgrade_trial = upgrade_trial
        self._last_remb: int | None = None
        self.last_congestion = float("-inf")
        self.last_loss = float("-inf")
        self._guard_until = float("-inf")
        self._next_probe_at = float("-inf")
        self.sent_rate = 0
        self.probe: Probe | None = None
        self.probes_ok = 0
        self.probes_failed = 0
        # Recent decisions with their cause, for statistics and scenario reports.
        self.history: deque[tuple[float, str, int]] = deque(maxlen=64)

    @property
    def value(self) -> int:
        value = min(self.estimate, self.ceiling)
        if self.cap is not None:
            value = min(value, self.cap)
        return max(self.floor, value)

    def lossy_within(self, seconds: float, now: float) -> bool:
        """Whether the link lost packets heavily (over ``loss_heavy``) lately.

        Only that may pause video or go audio-only. A falling REMB alone can also mean a
        receiver too busy to keep its own timing (a cheap phone decoding several
        streams), and moderate loss a lossy radio: enough to hold layers down, not to
        take the picture away.
        """
        return now - self.last_loss < seconds

    # -- feedback ------------------------------------------------------------------------

    def on_sent(self, bps: int) -> None:
        """What the SFU put on this subscriber's link over the last interval."""
        self.sent_rate = bps

    def on_remb(self, bps: int, now: float) -> None:
        last = self._last_remb
        self._last_remb = bps
        if last is None or bps >= last * 0.9:
            return
        self._last_remb_fall = now
        # The receiver's delay-based detector saw overuse and reports ~85 % of what it
        # received. Far below what is being sent, that is a real capacity drop: take it.
        # Near it, a keyframe burst may have filled a queue for a moment: keep what is
        # flowing (the allocator's layers fit it) but lose the headroom and probe later.
        if self.probe is not None or now < self._guard_until or bps < self.sent_rate * 0.7:
            self._congested(max(bps, self.floor), now, "remb")
        else:
            self.last_congestion = now
            self.history.append((now, "remb (soft)", bps))
            self.estimate = max(self.floor, min(self.estimate, max(bps, self.sent_rate)))

    def on_loss(self, fraction: float, now: float) -> None:
        """Loss (0..1) from a receiver report of this subscriber."""
        self._calm_reports = self._calm_reports + 1 if fraction <= self._loss_low else 0
        # Loss with no sign of a queue (no REMB fall lately) and below ``loss_heavy`` is
        # taken as a lossy radio, not a full link: cutting the rate would not cure it and
        # would only starve the video. GCC's loss controller lacks this distinction.
        # "Heavy" is judged on the last two reports together: one small report of a 10 %
        # lossy radio can read 25 %, two in a row rarely do; a full link reads 50 % and more.
        self._loss_avg = (self._loss_avg + fraction) / 2
        heavy = self._loss_avg > self._loss_heavy
        congestive = heavy or now - self._last_remb_fall < 3.0
        if heavy:
            self.last_loss = now
        if fraction > self._loss_high and congestive:
            base = self.sent_rate or self.estimate
            self._congested(int(base * (1 - 0.5 * fraction)), now, f"loss {fraction:.2f}")
        elif fraction > self._loss_low and self.probe is not None:
            self.probe = None  # the probe hurt: give it up, keep the estimate
            self.history.append((now, f"probe failed: loss {fraction:.2f}", self.estimate))
            self._probe_failed(now)

    def _congested(self, bps: int, now: float, cause: str) -> None:
        self.history.append((now, cause, bps))
        self.last_congestion = now
        if self.probe is not None:
            # The probe overfilled the link: stop it and keep the estimate the media had
            # before it; the queue it built takes a moment to drain, so the signals in
            # that moment say nothing new either.
            self.probe = None
            self._guard_until = now + self._probe_settle
            self._probe_failed(now)
            return
        if now < self._guard_until:
            return
        if now - self._last_probe_ok < self._upgrade_trial:
            # The layer that the last probe let in did not fit after all: the probe was too
            # short to fill the link's queue. Treat it as failed, so the next waits longer.
            self.history.append((now, "upgrade failed", bps))
            self._last_probe_ok = float("-inf")
            self._probe_failed(now)
        self.estimate = max(self.floor, min(self.estimate, bps))
        # Reports in the next moments still describe the rate before this cut: receiver
        # reports cover the last second, and a lower layer only flows from its next
        # keyframe on. Acting on them again would cut twice.
        self._guard_until = now + self._cut_guard

    def _probe_failed(self, now: float) -> None:
        self.probes_failed += 1
        self._streak = 0
        self._next_probe_at = now + self._backoff
        self._backoff = min(self._backoff * 2, self._backoff_max)

    # -- probing -------------------------------------------------------------------------

    def want_probe(self, goal: int, now: float) -> bool:
        """Start a probe at ``goal`` bps if the link has been calm long enough."""
        if self.probe is not None or goal <= self.value:
            return False
        if self.cap is not None and self.estimate >= self.cap:
            return False
        # Never more than half again the estimate in one probe: a probe that overfills a
        # weak link costs its queue (and audio) dearly; several smaller steps get there.
        # After a probe that went through, the next may go twice as far: a link that has
        # just opened up is climbed in a few steps.
        step = self._probe_step * (4 / 3 if self._streak else 1)
        goal = min(goal, int(self.value * step))
        if now < self._next_probe_at or now - self.last_congestion < self._quiet:
            return False
        if self._calm_reports < 2:  # the subscriber has confirmed the current rate
            return False
        self.probe = Probe(goal, now, now + self._probe_duration,
                           now + self._probe_duration + self._probe_settle)
        self.history.append((now, "probe", goal))
        return True

    def padding_rate(self, media_bps: int, now: float) -> int:
        """Padding to send now on top of ``media_bps`` (0 when not probing)."""
        probe = self.probe
        if probe is None or now >= probe.ends:
            return 0
        return max(0, probe.goal - media_bps)

    def tick(self, now: float) -> None:
        """Close a probe whose feedback window passed without congestion: it succeeded."""
        probe = self.probe
        if probe is not None and now >= probe.settles:
            self.probe = None
            self.probes_ok += 1
            self._last_probe_ok = now
            self._streak += 1
            self._backoff = self._backoff_min
            self._next_probe_at = now
            self.estimate = min(self.ceiling, max(self.estimate, probe.goal))
            self.history.append((now, "probe ok", self.estimate))
