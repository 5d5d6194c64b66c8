"""Bandwidth adaptation for one subscriber: estimate, allocate, apply, probe.

The decisions are made by the pure parts (estimator.BandwidthEstimator,
allocator.StreamAllocator); this class feeds them what the subscriber's connection saw,
applies their answers to the consumers (layer targets, pauses) and paces probe padding.
The room's control task calls ``step`` about twice a second; RTCP feedback arrives
between steps through ``on_remb``/``on_loss``/``on_nack``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mediaserver import metrics
from mediaserver.sfu.allocator import (
    Allocation,
    Layer,
    StreamAllocator,
    TrackDemand,
    current_cost,
)
from mediaserver.sfu.estimator import BandwidthEstimator

# SRTP tag + UDP + IPv4 headers per packet, so that rates compare with the link's.
from mediaserver.sfu.producer import WIRE_OVERHEAD
from mediaserver.sfu.temporal import MAX_TID

if TYPE_CHECKING:
    from mediaserver.sfu.consumer import Consumer
    from mediaserver.sfu.producer import RecvStream
    from mediaserver.sfu.transport import SubscriberTransport

# A single-encoding video track can be squeezed (the publisher is asked for less by REMB),
# so it only needs this much to stay on; below it the track is paused. Until the link has
# lost packets (and for a while after), such tracks are neither counted nor capped: the
# estimate only grows by probing, and probing needs a layer to aim at.
ELASTIC_MIN = 80_000
LOSS_MEMORY = 20.0
PACE_INTERVAL = 0.02
STEP_INTERVAL = 0.5
# Without a congestion signal (REMB fall, lossy report, failed probe) for this long, the
# layers that flow are kept even when their measured rate outgrows the estimate.
CALM_HOLD = 10.0


@dataclass
class StreamState:
    """What the subscriber was last told about one track."""

    active: bool
    reason: str | None
    spatial: int | None
    temporal: int | None


def _audio_cost(stream: RecvStream) -> int:
    """An audio stream's rate on the wire, or a guess (Opus at 32-96 kbps) before measured."""
    return stream.wire_bitrate or 64_000


def stream_layers(stream: RecvStream, bitrate: int) -> list[Layer]:
    """A simulcast layer as the allocator sees it: one rung per temporal layer measured.

    ``bitrate`` is the whole stream's (its last measurement, for a layer stopped upstream);
    the temporal layers' own rates are known only while the stream arrives.
    """
    rates, fps = stream.temporal.rates, stream.temporal.fps
    size = (stream.width, stream.height)
    top = Layer(stream.spatial, max(0, len(rates) - 1), bitrate, *size, stream.fps or None)
    if len(rates) < 2 or not stream.wire_bitrate:
        return [top]
    return [Layer(stream.spatial, t, rates[t], *size, fps[t] or None)
            for t in range(len(rates) - 1)] + [top]


class SubscriberAdaptation:
    def __init__(self, transport: SubscriberTransport,
                 estimator: BandwidthEstimator | None = None,
                 allocator: StreamAllocator | None = None) -> None:
        self.transport = transport
        self.estimator = estimator or BandwidthEstimator()
        self.allocator = allocator or StreamAllocator()
        self.audio_only_requested = False
        self.states: dict[str, StreamState] = {}
        self.allocations: dict[str, Allocation] = {}
        self.switches = 0  # spatial layer changes
        self.temporal_switches = 0  # temporal layer changes within one spatial layer
        self.allocations_applied: dict[str, tuple[int, int]] = {}
        self._sent_bytes = 0
        self._last_step: float | None = None
        # Video packets sent and first-time NACKed, per step, over the last two steps.
        self._nack_lost = 0
        self._video_sent = 0
        self._nack_window: deque[tuple[int, int]] = deque(maxlen=2)
        self._pacer: asyncio.Task[None] | None = None
        self.padding_sent = 0
        self._padding_at_step = 0
        self.media_rate = 0
        self.audio_only = False

    def starts_without_video(self) -> bool:
        """Whether a new video track waits for a probe instead of starting at its lowest
        layer: the subscriber's start hint leaves no room for video beside its audio."""
        hint = self.estimator.start_hint
        if hint is None:
            return False
        audio = sum(_audio_cost(c.producer.streams[0])
                    for c in self.transport.consumers.values()
                    if c.kind == "audio" and not c.closed)
        return hint - audio < self.allocator.audio_only_floor

    # -- feedback (from the subscriber transport's RTCP) ----------------------------------

    def on_remb(self, bps: int, now: float, source: int = 0) -> None:
        self.estimator.on_remb(bps, now, source)

    def on_nack(self, now: float, lost: int) -> None:
        """A NACK that names ``lost`` packets the subscriber's link lost for the first time.

        Only those tell of this link: a receiver repeats its missing list with every new
        NACK (and the load-test client re-asks on a timer), and asks for packets the SFU
        never had (lost upstream) or skipped (a paused track's numbering).
        """
        if lost:
            self._nack_lost += lost
            self.estimator.on_nack(now)

    def on_loss(self, fraction: float, now: float, rtt: float | None = None) -> None:
        self.estimator.on_loss(fraction, now, rtt)

    # -- the control step ----------------------------------------------------------------

    def _wire_bytes(self) -> int:
        total = self.padding_sent
        for c in self.transport.consumers.values():
            st = c.stats
            total += st.octets_sent + st.packets_sent * (12 + WIRE_OVERHEAD)
        return total

    def _demand(self, c: Consumer, prefs: dict[str, Any], hint: str | None, now: float
                ) -> TrackDemand:
        producer = c.producer
        layers: list[Layer] = []
        if producer.kind == "audio":
            stream = producer.streams[0]
            layers.append(Layer(0, 0, _audio_cost(stream)))
        elif not producer.simulcast:
            stream = producer.streams[0]
            cost = ELASTIC_MIN if self.estimator.lossy_within(LOSS_MEMORY, now) else 0
            layers.append(Layer(0, 0, cost, stream.width, stream.height, stream.fps or None))
        else:
            for s in producer.streams:
                bitrate = s.wire_bitrate or s.last_wire_bitrate
                if bitrate and (s.active or s.paused_upstream or now < s.expected_until):
                    layers += stream_layers(s, bitrate)
        return TrackDemand(
            track_id=producer.track_id, kind="audio" if producer.kind == "audio" else "video",
            source=producer.source,  # type: ignore[arg-type]
            priority_hint=hint,  # type: ignore[arg-type]
            layers=tuple(layers),
            max_width=prefs.get("max_width"), max_height=prefs.get("max_height"),
            max_fps=prefs.get("max_fps"),
            disabled=bool(prefs.get("disabled")) or (
                self.audio_only_requested and producer.kind == "video"))

    def step(self, now: float, preferences: dict[str, dict[str, Any]],
             hint_for: Callable[[Consumer], str | None]
             ) -> list[dict[str, Any]]:
        """Re-allocate; return the stream_state events to tell the subscriber."""
        est = self.estimator
        wire = self._wire_bytes()
        padding = self.padding_sent
        if self._last_step is not None and now > self._last_step:
            elapsed = now - self._last_step
            est.on_sent(int((wire - self._sent_bytes) * 8 / elapsed))
            self.media_rate = int((wire - padding - self._sent_bytes + self._padding_at_step)
                                  * 8 / elapsed)
        self._sent_bytes, self._last_step, self._padding_at_step = wire, now, padding
        video_sent = sum(c.stats.packets_sent for c in self.transport.consumers.values()
                         if c.kind == "video")
        # (A consumer gone since the last step takes its count with it: never below 0.)
        self._nack_window.append((self._nack_lost, max(0, video_sent - self._video_sent)))
        self._nack_lost, self._video_sent = 0, video_sent
        est.on_nack_loss(sum(lost for lost, _ in self._nack_window),
                         sum(sent for _, sent in self._nack_window), now)
        est.tick(now)
        consumers = []
        demands = []
        for c in self.transport.consumers.values():
            if c.closed or c.producer.closed:
                continue
            d = self._demand(c, preferences.get(c.producer.track_id, {}), hint_for(c), now)
            if not d.layers and not d.disabled:
                continue  # nothing measured yet: decide once the layers are known
            consumers.append(c)
            demands.append(d)
        estimate = est.value
        # Audio and every video track's lowest layer: what a new subscriber starts with.
        live = [d for d in demands if not d.disabled]
        audio = sum(min((la.bitrate for la in d.layers), default=0)
                    for d in live if d.kind == "audio")
        video = sum(min((la.bitrate for la in d.layers), default=0)
                    for d in live if d.kind == "video")
        has_video = any(d.kind == "video" for d in live)
        if has_video:
            # Above the audio-only floor as well: fat audio (aiortc sends 96 kbps Opus)
            # must not, on its own, look like a link too thin for video.
            video = max(video, self.allocator.audio_only_floor)
        minimal = int((audio + video) * self.allocator.up_hysteresis)
        if est.start_hint is not None and has_video and est.value >= minimal:
            est.start_hint = None  # the subscriber's word leaves room for video: done
        if not est.lossy_within(LOSS_MEMORY, now) and est.start_hint is None:
            # Without loss (or the subscriber's own word) to prove the link short, every
            # track keeps at least its lowest layer: a new subscriber starts there, and a
            # falling REMB holds layers down but never pauses video on its own.
            estimate = max(estimate, minimal)
        if now - est.last_congestion > CALM_HOLD:
            # No congestion signal for a while: what flows fits; a layer's rate growing
            # past the estimate is no reason to step down (only probes raise the estimate).
            # Never above what the subscriber asked for (set_bandwidth max_bitrate).
            estimate = max(estimate, min(current_cost(demands, self.allocations), est.limit))
        metrics.SUBSCRIBER_ESTIMATE.observe(estimate)
        allocations = self.allocator.allocate(estimate, demands, now)
        self.audio_only = self.allocator.audio_only or self.audio_only_requested
        events = []
        audio_bps = 0
        video_bps = 0
        deficit: list[tuple[Allocation, TrackDemand]] = []
        for c, d, a in zip(consumers, demands, allocations, strict=True):
            self.allocations[d.track_id] = a
            if d.kind == "audio":
                if a.layer is not None:
                    audio_bps += a.layer.bitrate
                continue
            if a.layer is not None:
                video_bps += a.layer.bitrate
            if a.reason == "bandwidth":
                deficit.append((a, d))
            event = self._apply(c, d, a, now)
            if event is not None:
                events.append(event)
        self._set_upstream_caps(consumers, demands, allocations, estimate - audio_bps,
                                est.lossy_within(LOSS_MEMORY, now))
        self._maybe_probe(audio_bps + video_bps, deficit, now)
        return events

    def _apply(self, c: Consumer, d: TrackDemand, a: Allocation, now: float
               ) -> dict[str, Any] | None:
        paused = a.layer is None
        reason: str | None = a.reason
        if paused and self.audio_only and (reason == "bandwidth" or
                                           self.audio_only_requested):
            reason = "audio_only"
        if c.bandwidth_paused != paused:
            c.bandwidth_paused = paused
            c.refresh_paused(now)
            metrics.LAYER_CHANGES.labels(direction="pause" if paused else "resume").inc()
        spatial = temporal = None
        if a.layer is not None:
            spatial, temporal = a.layer.spatial, a.layer.temporal
            before = self.allocations_applied.get(d.track_id)
            if c.producer.simulcast and before is not None and before != (spatial, temporal):
                metrics.LAYER_CHANGES.labels(
                    direction="up" if (spatial, temporal) > before else "down").inc()
                if before[0] != spatial:
                    self.switches += 1
                else:
                    self.temporal_switches += 1
            self.allocations_applied[d.track_id] = (spatial, temporal)
            # The top temporal layer of a simulcast layer means "all of its frames", also
            # those of temporal layers not measured yet.
            top = max(la.temporal for la in d.layers if la.spatial == spatial)
            c.set_layer(spatial, temporal if temporal < top else MAX_TID, now)
        state = StreamState(not paused, reason, spatial, temporal)
        if self.states.get(d.track_id) == state:
            return None
        self.states[d.track_id] = state
        return {"type": "stream_state", "track_id": d.track_id,
                "participant_id": c.producer.participant_id,
                "state": "paused" if paused else "active", "reason": reason,
                "spatial": spatial, "temporal": temporal,
                "width": a.layer.width if a.layer else None,
                "height": a.layer.height if a.layer else None}

    def _set_upstream_caps(self, consumers: list[Consumer], demands: list[TrackDemand],
                           allocations: list[Allocation], video_budget: int,
                           congested: bool) -> None:
        """Single-encoding video: the share of the estimate goes upstream as REMB."""
        if not congested:
            for c in consumers:
                c.target_bitrate = None  # the subscriber's own REMB passes on unchanged
            return
        elastic = [(c, a) for c, d, a in zip(consumers, demands, allocations, strict=True)
                   if d.kind == "video" and not c.producer.simulcast and a.layer is not None]
        fixed = sum(a.layer.bitrate for c, d, a in zip(consumers, demands, allocations,
                                                        strict=True)
                    if d.kind == "video" and c.producer.simulcast and a.layer is not None)
        if not elastic:
            return
        share = max(ELASTIC_MIN, (video_budget - fixed) // len(elastic))
        for c, _ in elastic:
            c.target_bitrate = share

    def _maybe_probe(self, allocated: int, deficit: list[tuple[Allocation, TrackDemand]],
                     now: float) -> None:
        if not deficit:
            return
        # The cheapest step up (the next rung of its ladder) among the tracks held back by
        # bandwidth.
        steps = []
        for a, d in deficit:
            ladder = self.allocator.ladder(d)
            keys = [la.key for la in ladder]
            index = keys.index(a.layer.key) if a.layer and a.layer.key in keys else -1
            if index + 1 < len(ladder):
                current = a.layer.bitrate if a.layer else 0
                steps.append(max(1, ladder[index + 1].bitrate - current))
        if not steps:
            return
        step = min(steps)
        if self.allocator.audio_only:
            # Out of audio only the allocator goes only above its floor (with hysteresis),
            # whatever the lowest layer costs: a probe to less could never let video in.
            step = max(step, self.allocator.audio_only_floor)
        # Headroom over the step: layer bitrates swing with keyframes and content.
        goal = int((allocated + step) * self.allocator.up_hysteresis * 1.25)
        if self.estimator.want_probe(goal, now, cold=self.audio_only):
            self._start_pacer()

    # -- probe padding ---------------------------------------------------------------------

    def _start_pacer(self) -> None:
        if self._pacer is None or self._pacer.done():
            self._pacer = asyncio.get_running_loop().create_task(self._pace())

    async def _pace(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            last = time.monotonic()
            while not self.transport.closed:
                await asyncio.sleep(PACE_INTERVAL)
                now = time.monotonic()
                probe = self.estimator.probe
                if probe is None or now >= probe.ends:
                    break
                rate = self.estimator.padding_rate(self.media_rate, now)
                # A late wake-up (a busy loop) must not turn into one burst of padding.
                want = int(rate / 8 * min(now - last, 2 * PACE_INTERVAL))
                last = now
                carrier = self._padding_carrier()
                if carrier is None:
                    # Nothing can carry padding: a probe that sent none proved nothing.
                    self.estimator.cancel_probe(now)
                    break
                if want > 0:
                    self.padding_sent += carrier.send_padding(want, now)

    def _padding_carrier(self) -> Consumer | None:
        for c in self.transport.consumers.values():
            if c.kind == "video" and not c.closed and c.rtx_ssrc is not None:
                return c
        return None

    def close(self) -> None:
        if self._pacer is not None:
            self._pacer.cancel()
