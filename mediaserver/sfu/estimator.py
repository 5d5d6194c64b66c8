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
to that rate; one that does is stopped at the first sign (a REMB burst or fall, a NACK, a
lossy receiver report), and what it reached is remembered so the next one steps near it
with care (probe.py: the probe's shape, its limits and the backoff).

Loss: above ``loss_high`` the estimate drops to what actually got through; below
``loss_low`` the link counts as calm. Every rate here is on the wire (RTP plus an allowance
for SRTP/UDP/IP headers), in bits per second.
"""

from __future__ import annotations

from collections import deque

from mediaserver.sfu.probe import Probe, ProbePlanner

# A REMB sooner than this after the previous one from the same source is an overuse burst:
# aiortc's receiver sends one every 500 ms, and one per packet while its detector says
# "overusing"; libwebrtc's sends at once when its estimate falls.
REMB_BURST = 0.12
# During a probe, a REMB this much below the previous one is the first sign of a queue.
PROBE_REMB_FALL = 0.97
# Signs that cannot be a probe's doing: a NACK this soon after it started is for a packet
# sent before it (the loss, its detection and the NACK's trip take longer); a receiver
# report this soon after describes mostly the time before it (aiortc reports every
# 0.5-1.5 s, browsers every second or so).
PROBE_NACK_GRACE = 0.2
PROBE_REPORT_GRACE = 0.5
# A receiver report's round trip this far above the lowest of the recent ones: a queue
# stands on the link (the SFU's sender report waited in it). Over RTT_WINDOW reports.
QUEUE_DELAY = 0.1
RTT_WINDOW = 30
# Loss the SFU counts itself from NACKs (first requests for packets it sent) over about a
# second: this much of NACK_SAMPLE packets or more is a link that lost its capacity, seen
# a second or two before a receiver report or a delay-based REMB says so. A 10 % lossy
# radio reaches 30 % of 40 packets about once in 10^4 tries.
NACK_LOSS_HEAVY = 0.3
NACK_SAMPLE = 40


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
        cut_guard: float = 2.0,
        upgrade_trial: float = 4.0,
        planner: ProbePlanner | None = None,
    ) -> None:
        self.estimate = initial
        self.floor = floor
        self.ceiling = ceiling
        self.cap: int | None = None  # what the subscriber asked for at most
        # What the subscriber said its link carries when it joined (set_bandwidth
        # start_bitrate), until a probe shows more: evidence, like loss, that may keep video
        # paused from the start.
        self.start_hint: int | None = None
        self._loss_high = loss_high
        self._loss_heavy = loss_heavy
        self._last_remb_fall = float("-inf")
        self._loss_avg = 0.0
        self._loss_low = loss_low
        self._quiet = quiet
        self._cut_guard = cut_guard
        self.planner = planner or ProbePlanner()
        self._calm_reports = 0  # receiver reports in a row with little loss and no queue
        self._rtts: deque[float] = deque(maxlen=RTT_WINDOW)
        self._last_probe_ok = float("-inf")
        self._upgrade_trial = upgrade_trial
        self._last_remb: dict[int, tuple[int, float]] = {}  # source -> (bps, when)
        self.last_congestion = float("-inf")
        self.last_loss = float("-inf")
        self._guard_until = float("-inf")
        self._cut_until = float("-inf")  # the guard after a cut (not after a failed probe)
        self.sent_rate = 0
        self.probe: Probe | None = None
        # Recent decisions with their cause, for statistics and scenario reports.
        self.history: deque[tuple[float, str, int]] = deque(maxlen=64)

    @property
    def value(self) -> int:
        value = min(self.estimate, self.ceiling)
        if self.cap is not None:
            value = min(value, self.cap)
        return max(self.floor, value)

    @property
    def limit(self) -> int:
        """The most the subscriber may get whatever is measured: its cap, or the ceiling."""
        return self.ceiling if self.cap is None else min(self.cap, self.ceiling)

    @property
    def probes_ok(self) -> int:
        return self.planner.ok

    @property
    def probes_failed(self) -> int:
        return self.planner.failed

    def lossy_within(self, seconds: float, now: float) -> bool:
        """Whether the link lost packets heavily (over ``loss_heavy``) lately.

        Only that may pause video or go audio-only. A falling REMB alone can also mean a
        receiver too busy to keep its own timing (a cheap phone decoding several
        streams), and moderate loss a lossy radio: enough to hold layers down, not to
        take the picture away.
        """
        return now - self.last_loss < seconds

    def start_at(self, bps: int | None, now: float) -> None:
        """Take the subscriber's own word for its link before anything is measured
        (None: the subscriber took it back; the estimate stays as it is).

        A receiver's first reports come a second or two after media starts (aiortc reports
        every 0.5-1.5 s, and only after a sender report); on a link thinner than audio and
        the lowest video layer together, that is long enough to overflow its queue and lose
        audio. A client that knows its link is weak (the browser's own downlink estimate, or
        what its last call measured) says so, and video starts only once a probe shows room.
        """
        self.start_hint = bps
        if bps is not None:
            self.estimate = max(self.floor, min(self.ceiling, bps))
            self.history.append((now, "start hint", self.estimate))
            self.planner.near(self.estimate, now)

    # -- feedback ------------------------------------------------------------------------

    def on_sent(self, bps: int) -> None:
        """What the SFU put on this subscriber's link over the last interval."""
        self.sent_rate = bps

    def on_remb(self, bps: int, now: float, source: int = 0) -> None:
        """A REMB from the subscriber; ``source`` tells its estimators apart.

        aiortc runs one receive-side estimator per video receiver, each with its own
        REMB stream (its sender SSRC): comparing one stream's value with another's would
        read as a fall.
        """
        last = self._last_remb.get(source)
        self._last_remb[source] = (bps, now)
        if last is None:
            return
        last_bps, last_at = last
        if now - last_at < REMB_BURST:
            # aiortc's receiver says "overusing" with a REMB per packet: its delay detector
            # sees a queue growing on the link (or, for a CPU-starved receiver, in its own
            # socket buffer). Not a cut on its own; it makes the loss that follows count.
            self._last_remb_fall = now
        if self.probe is not None and (bps < last_bps * PROBE_REMB_FALL
                                       or now - last_at < REMB_BURST):
            if bps < last_bps * 0.9:
                self._last_remb_fall = now  # a queue sign, whoever built the queue
            self._probe_failed(now, "probe failed: remb")
            return
        if bps >= last_bps * 0.9:
            return
        self._last_remb_fall = now
        # The receiver's delay-based detector saw overuse and reports ~85 % of what it
        # received. Far below what is being sent, that is a real capacity drop: take it.
        # Near it, a keyframe burst may have filled a queue for a moment: keep what is
        # flowing (the allocator's layers fit it) but lose the headroom and probe later.
        if now < self._cut_until and self.probe is None:
            # Falling on after a cut: the cut was a first guess at a link still emptying.
            # REMB measures what arrives, so a lower one is no second cut on old news.
            self.history.append((now, "remb", bps))
            self.estimate = max(self.floor, min(self.estimate, bps))
        elif now < self._guard_until or bps < self.sent_rate * 0.7:
            self._congested(max(bps, self.floor), now, "remb")
        else:
            self.last_congestion = now
            self.history.append((now, "remb (soft)", bps))
            self.estimate = max(self.floor, min(self.estimate, max(bps, self.sent_rate)))

    def on_nack(self, now: float) -> None:
        """The subscriber lost a packet: during a probe, the first sign it overfilled."""
        if self.probe is not None and now - self.probe.started >= PROBE_NACK_GRACE:
            self._probe_failed(now, "probe failed: nack")

    def queued(self, rtt: float | None) -> bool:
        """Whether a report's round trip says a queue stands on the link."""
        return rtt is not None and bool(self._rtts) and rtt - min(self._rtts) > QUEUE_DELAY

    def on_loss(self, fraction: float, now: float, rtt: float | None = None) -> None:
        """Loss (0..1) and, if it carried one, the round trip (s) of a receiver report."""
        if rtt is not None:
            self._rtts.append(rtt)
        queued = self.queued(rtt)
        # Calm: little loss and no standing queue. A link that cannot carry what flows
        # fills its queue for a moment before it drops anything: reports from that moment
        # are not calm, so no probe piles onto it.
        if fraction > self._loss_low or queued:
            self._calm_reports = 0
        elif rtt is not None:
            self._calm_reports += 1
        # (A report without a round trip, for a stream that had no sender report yet, cannot
        # tell a queue apart: it neither confirms the rate nor breaks the streak. Counted
        # as calm, two such reports let a probe start onto a link still filling.)
        # Loss with no sign of a queue (no REMB fall lately, no grown round trip) and below
        # ``loss_heavy`` is taken as a lossy radio, not a full link: cutting the rate would
        # not cure it and would only starve the video. GCC's loss controller lacks this
        # distinction. Without a queue, "heavy" is judged on the last two reports together:
        # one small report of a 10 % lossy radio can read 25 %, two in a row rarely do; a
        # full link reads 50 % and more. With one, loss over ``loss_high`` is a full link's
        # and as heavy: waiting for a second report costs a second of audio on it.
        self._loss_avg = (self._loss_avg + fraction) / 2
        queue_sign = queued or now - self._last_remb_fall < 3.0
        heavy = self._loss_avg > self._loss_heavy or (
            fraction > self._loss_high and queue_sign)
        if heavy:
            self.last_loss = now
        if fraction > self._loss_high and (heavy or queue_sign):
            base = self.sent_rate or self.estimate
            self._congested(int(base * (1 - 0.5 * fraction)), now, f"loss {fraction:.2f}")
        elif ((fraction > self._loss_low or queued) and self.probe is not None
              and now - self.probe.started >= PROBE_REPORT_GRACE):
            cause = f"loss {fraction:.2f}" if fraction > self._loss_low else "queue"
            self._probe_failed(now, f"probe failed: {cause}")

    def on_nack_loss(self, lost: int, sent: int, now: float) -> None:
        """``lost`` of the ``sent`` video packets of the last second were NACKed (first
        requests only): heavy loss when it is over ``NACK_LOSS_HEAVY`` of enough packets.

        The cut is to what got through, not GCC's gentler ``1 - loss/2``: a link that
        drops a third of its packets or more has far less room than it is given.
        """
        if sent < NACK_SAMPLE or lost <= NACK_LOSS_HEAVY * sent:
            return
        fraction = lost / sent
        self.last_loss = now
        base = self.sent_rate or self.estimate
        self._congested(int(base * (1 - fraction)), now, f"nack loss {fraction:.2f}")

    def _congested(self, bps: int, now: float, cause: str) -> None:
        self.history.append((now, cause, bps))
        self.last_congestion = now
        if self.probe is not None:
            self._probe_failed(now, f"probe failed: {cause}")
            return
        if now < self._guard_until:
            return
        if now - self._last_probe_ok < self._upgrade_trial:
            # The layer that the last probe let in did not fit after all: the probe was too
            # short to fill the link's queue. Treat it as failed at the rate that flowed.
            self.history.append((now, "upgrade failed", bps))
            self._last_probe_ok = float("-inf")
            self.planner.on_failure(max(self.sent_rate, bps), now)
        self.estimate = max(self.floor, min(self.estimate, bps))
        # Reports in the next moments still describe the rate before this cut: receiver
        # reports cover the last second, and a lower layer only flows from its next
        # keyframe on. Acting on them again would cut twice.
        self._guard_until = self._cut_until = now + self._cut_guard

    def _probe_failed(self, now: float, cause: str) -> None:
        """Stop the probe, keep the estimate the media had before it, remember the level.

        The queue it built takes a moment to drain, so the signals in that moment say
        nothing new either.
        """
        probe = self.probe
        if probe is None:
            return
        self.probe = None
        level = ProbePlanner.failure_level(probe, now, self.value)
        self.history.append((now, cause, level))
        self.last_congestion = now
        self._guard_until = max(self._guard_until, now + probe.settles - probe.ends)
        self.planner.on_failure(level, now)

    # -- probing -------------------------------------------------------------------------

    def want_probe(self, goal: int, now: float, cold: bool = False) -> bool:
        """Start a probe towards ``goal`` bps if the link has been calm long enough
        (``cold``: from audio only, see ``ProbePlanner.start``)."""
        if self.probe is not None or goal <= self.value:
            return False
        if self.cap is not None and self.estimate >= self.cap:
            return False
        if now - self.last_congestion < self._quiet:
            return False
        if self._calm_reports < 2:  # the subscriber has confirmed the current rate
            return False
        target = self.planner.goal(goal, self.value, now)
        if target is None:
            return False
        self.probe = self.planner.start(self.sent_rate, target, now, cold)
        self.history.append((now, "probe", target))
        return True

    def cancel_probe(self, now: float) -> None:
        """Drop the probe in flight without a verdict (it could not be sent)."""
        if self.probe is not None:
            self.probe = None
            self.history.append((now, "probe cancelled", self.value))

    def padding_rate(self, media_bps: int, now: float) -> int:
        """Padding to send now on top of ``media_bps`` (0 when not probing)."""
        probe = self.probe
        if probe is None:
            return 0
        return max(0, probe.rate_at(now) - media_bps)

    def tick(self, now: float) -> None:
        """Close a probe whose feedback window passed without congestion: it succeeded."""
        probe = self.probe
        if probe is not None and now >= probe.settles:
            self.probe = None
            self._last_probe_ok = now
            self.planner.on_success(probe, now)
            self.start_hint = None  # measured now: more than the subscriber thought
            self.estimate = min(self.ceiling, max(self.estimate, probe.goal))
            self.history.append((now, "probe ok", self.estimate))
