"""Prometheus metrics of the node (docs/metrics.md lists every series and its labels).

Labels have bounded cardinality: kinds, roles, reasons, directions, levels, never a room,
participant, track or name. The packet path increments plain counters through pre-bound
label children (``DROP["unknown_ssrc"].inc()``), which costs one method call, not a label
lookup. Known label combinations are created up front, so a dashboard shows 0 rather than
"no data" before the first event.

Two direction vocabularies, each fixed by where it is seen from:
``in``/``out`` is the server's view (packets it receives / sends), and
``uplink``/``downlink`` is a participant's view of its link quality (what it publishes to
the server / what it receives from it).

Helpers the rest of the code calls (none of them awaits; they raise ValueError on a label
value outside the closed sets, because that is our bug, not a peer's):

``observe_link(direction, kind, rtt, jitter, loss_ratio)``
    One quality sample of a stream, in seconds and as a ratio in 0..1; None (not known
    yet) or a non-finite value is skipped, out-of-range values are clamped.
``observe_mos(direction, mos)``
    An estimated audio MOS (1..4.5) of a participant's uplink or downlink.
``observe_join_to_first_packet(seconds)``
    From the join request to the first packet forwarded to or from the new participant.
``set_quality_counts(counts)``
    Node-wide participants per quality level; a level left out counts as 0.
``cleanup_ctx(app)``
    aiohttp cleanup context that runs ``monitor_event_loop`` for the app's lifetime.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from mediaserver.limits import LIMIT_REASONS
from mediaserver.sfu.native import int_fields
from mediaserver.tokens import Role, SessionKind

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, process_resident_memory_bytes...
PlatformCollector(registry=REGISTRY)  # python_info

Direction = Literal["uplink", "downlink"]
Kind = Literal["audio", "video"]
DIRECTIONS: tuple[Direction, ...] = ("uplink", "downlink")
KINDS: tuple[Kind, ...] = ("audio", "video")
QUALITY_LEVELS = ("excellent", "good", "poor", "lost")
ROOM_KINDS = tuple(k.value for k in SessionKind)
ROLES = tuple(r.value for r in Role)
RTCP_TYPES = ("nack", "pli", "fir", "remb", "twcc")

# -- rooms, participants, packets (existing names; they already follow the conventions) --

ROOMS = Gauge("mediaserver_rooms", "Rooms open on this node", ["kind"], registry=REGISTRY)
PARTICIPANTS = Gauge(
    "mediaserver_participants", "Participants joined on this node", ["role"], registry=REGISTRY
)
TRACKS = Gauge("mediaserver_tracks", "Published tracks", ["kind"], registry=REGISTRY)


_TallyInts: Any
_TallyInts, _TALLY_SLOTS = int_fields("TallyInts", "bytes", "packets")


class RtpTally(_TallyInts):
    """RTP packets and bytes of one (direction, kind), as plain integers.

    Counted once per packet in and once per packet forwarded, so a Prometheus Counter
    (a lock and three calls per ``inc``) cost more than the rest of the accounting; these
    are read when /metrics is scraped (``_RtpCollector``) instead.
    """

    __slots__ = _TALLY_SLOTS  # C integers where the extension is built (sfu/native.py)

    def __init__(self) -> None:
        self.packets = 0
        self.bytes = 0


RTP_DIRECTIONS = ("in", "out")
RTP_TALLIES: dict[tuple[str, str], RtpTally] = {
    (d, k): RtpTally() for d in RTP_DIRECTIONS for k in KINDS}


def rtp_tally(direction: str, kind: str) -> RtpTally:
    """The tally of one direction ("in"/"out") and media kind ("audio"/"video")."""
    return RTP_TALLIES.setdefault((direction, kind), RtpTally())


class _RtpCollector:
    def collect(self) -> Iterator[Metric]:
        packets = CounterMetricFamily("mediaserver_rtp_packets", "RTP packets",
                                      labels=["direction", "kind"])
        octets = CounterMetricFamily("mediaserver_rtp_bytes", "RTP bytes",
                                     labels=["direction", "kind"])
        for (direction, kind), tally in RTP_TALLIES.items():
            packets.add_metric([direction, kind], tally.packets)
            octets.add_metric([direction, kind], tally.bytes)
        yield packets
        yield octets


REGISTRY.register(_RtpCollector())  # type: ignore[arg-type]


class TallyHistogram:
    """One labelled child of a histogram, as plain numbers: ``observe`` is a bisect and two
    additions. prometheus_client's takes a lock and walks the buckets in Python (1.5 us; the
    quality step observes three or four values per link a second). Read at scrape time by
    ``TallyHistogramFamily``; the event loop's thread is the only writer."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self._bounds, value)] += 1  # value <= its bucket's le
        self.sum += value


class TallyHistogramFamily:
    """A histogram of ``TallyHistogram`` children, exported as prometheus_client's own."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...],
                 buckets: tuple[float, ...], registry: CollectorRegistry | None = None
                 ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self.buckets = tuple(sorted(float(b) for b in buckets))
        self._children: dict[tuple[str, ...], TallyHistogram] = {}
        (REGISTRY if registry is None else registry).register(self)  # type: ignore[arg-type]

    def labels(self, **labels: str) -> TallyHistogram:
        key = tuple(labels[n] for n in self.labelnames)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = TallyHistogram(self.buckets)
        return child

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation,
                                       labels=list(self.labelnames))
        les = [floatToGoString(b) for b in self.buckets] + ["+Inf"]
        for key, child in list(self._children.items()):
            total, buckets = 0, []
            for le, count in zip(les, list(child.counts), strict=True):
                total += count
                buckets.append((le, total))
            family.add_metric(list(key), buckets, child.sum)
        yield family
RTCP = Counter(
    "mediaserver_rtcp_feedback_total",
    "RTCP feedback messages (nack, pli, fir, remb, twcc) by direction",
    ["direction", "type"],
    registry=REGISTRY,
)
RETRANSMISSIONS = Counter(
    "mediaserver_retransmissions_total",
    "Packets retransmitted to subscribers on NACK, or NACKed but no longer cached",
    ["result"],
    registry=REGISTRY,
)
DROPS = Counter(
    "mediaserver_dropped_packets_total",
    "Packets dropped on the forwarding path, by reason",
    ["reason"],
    registry=REGISTRY,
)
SIGNAL_ERRORS = Counter(
    "mediaserver_signal_errors_total", "Signalling error replies by code", ["code"],
    registry=REGISTRY,
)
JOIN_LATENCY = Histogram(
    "mediaserver_join_seconds",
    "Time from join request to joined reply",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)

DROP_REASONS = (
    "unknown_ssrc",
    "malformed_rtp",
    "malformed_rtcp",
    "waiting_keyframe",
    "too_old",
    "not_connected",
    "padding",
    "paused",
    "handler_error",
    "srtp_error",
    "temporal_layer",
    "rate_limited",
    "malformed_red",
    "socket_full",
)
DROP = {reason: DROPS.labels(reason=reason) for reason in DROP_REASONS}
RETRANSMITTED = RETRANSMISSIONS.labels(result="sent")
RETRANSMIT_MISSING = RETRANSMISSIONS.labels(result="missing")
RETRANSMIT_OBSOLETE = RETRANSMISSIONS.labels(result="obsolete_layer")
RETRANSMIT_GIVEN_UP = RETRANSMISSIONS.labels(result="given_up")

# -- bandwidth adaptation ----------------------------------------------------------------

PADDING_BYTES = Counter(
    "mediaserver_probe_padding_bytes",
    "Padding bytes sent to subscribers to probe for more bandwidth",
    registry=REGISTRY,
)
LAYER_CHANGES = Counter(
    "mediaserver_layer_changes",
    "Layer decisions of the stream allocator, by direction",
    ["direction"],  # up, down, pause, resume
    registry=REGISTRY,
)
SUBSCRIBER_ESTIMATE = TallyHistogramFamily(
    "mediaserver_subscriber_estimate_bps",
    "Per-subscriber bandwidth estimates, sampled at each adaptation step",
    (), buckets=(100e3, 150e3, 250e3, 400e3, 600e3, 1e6, 1.5e6, 2.5e6, 4e6),
).labels()
AUDIO_ONLY = Gauge(
    "mediaserver_audio_only_subscribers",
    "Subscribers receiving audio only (chosen, or below the bandwidth floor)",
    registry=REGISTRY,
)

# -- network quality ---------------------------------------------------------------------

JOIN_TO_FIRST_PACKET = Histogram(
    "mediaserver_join_to_first_packet_seconds",
    "Time from join request to the first packet forwarded to or from the participant",
    buckets=(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 20),
    registry=REGISTRY,
)
FORWARDING_LATENCY = TallyHistogramFamily(
    "mediaserver_forwarding_latency_seconds",
    "Sampled RTP packets: from the kernel receiving the packet to the last copy sent", (),
    buckets=(50e-6, 100e-6, 150e-6, 200e-6, 300e-6, 400e-6, 600e-6, 800e-6, 1e-3, 1.5e-3,
             2e-3, 3e-3, 5e-3, 7.5e-3, 10e-3, 15e-3, 20e-3, 30e-3, 50e-3, 100e-3),
).labels()
RTT = TallyHistogramFamily(
    "mediaserver_rtt_seconds",
    "Round-trip time of a participant's uplink or downlink, from RTCP reports",
    ("direction", "kind"),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2),
)
JITTER = TallyHistogramFamily(
    "mediaserver_jitter_seconds",
    "RTP interarrival jitter (RFC 3550) of a participant's uplink or downlink",
    ("direction", "kind"),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.3, 0.5),
)
PACKET_LOSS = TallyHistogramFamily(
    "mediaserver_packet_loss_ratio",
    "Fraction of packets lost (0..1) on a participant's uplink or downlink, per report",
    ("direction", "kind"),
    buckets=(0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1),
)
MOS = TallyHistogramFamily(
    "mediaserver_audio_mos",
    "Estimated audio mean opinion score (1..4.5) of a participant's uplink or downlink",
    ("direction",),
    buckets=(1, 1.5, 2, 2.5, 3, 3.25, 3.5, 3.75, 4, 4.1, 4.2, 4.3, 4.4, 4.5),
)
QUALITY = Gauge(
    "mediaserver_quality_level_participants",
    "Participants on this node by connection quality level",
    ["level"],
    registry=REGISTRY,
)

# -- the process -------------------------------------------------------------------------

EVENT_LOOP_LAG = Gauge(
    "mediaserver_event_loop_lag_seconds",
    "How late the event loop woke its timers, the worst of the last half second's (a busy "
    "loop delays every packet)",
    registry=REGISTRY,
)
GC_PAUSE = Histogram(  # prometheus_client's, with its lock: a collection may run in any thread
    "mediaserver_gc_pause_seconds",
    "Python garbage-collector pauses (every packet waits them out), by generation",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
    registry=REGISTRY,
)
EVENT_LOOP_LAG_DISTRIBUTION = TallyHistogramFamily(
    "mediaserver_event_loop_lag_distribution_seconds",
    "How late the event loop woke each lag probe", (),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
).labels()
CONTROL_STEPS = ("quality", "adaptation", "rtcp")
CONTROL_SECONDS = dict.fromkeys(CONTROL_STEPS, 0.0)  # read at scrape time


class _ControlCollector:
    """``mediaserver_control_cpu_seconds_total`` from ``CONTROL_SECONDS``: a step adds a float
    to a dict, not prometheus_client's ``inc`` (a lock; RTCP counts each packet read)."""

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "mediaserver_control_cpu_seconds",
            "CPU seconds the event loop's thread spent in the control plane, by step: the "
            "rooms' quality and adaptation steps, and RTCP (reading feedback, building "
            "reports)", labels=["step"])
        for step, seconds in list(CONTROL_SECONDS.items()):
            family.add_metric([step], seconds)
        yield family


REGISTRY.register(_ControlCollector())  # type: ignore[arg-type]


class control_step:  # lower case: read as a function, ``with metrics.control_step(...)``
    """``with control_step("quality"):`` counts the block's thread CPU (time.thread_time, a
    system call: 0.2-1 us a read on this VM by timeit) to that step. The block must not
    await: other work would be counted."""

    __slots__ = ("_started", "_step")

    def __init__(self, step: str) -> None:
        if step not in CONTROL_SECONDS:
            raise ValueError(f"unknown control step {step!r}")
        self._step = step
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.thread_time()

    def __exit__(self, *exc: object) -> None:
        spent = time.thread_time() - self._started
        CONTROL_SECONDS[self._step] += spent if spent > 0.0 else 0.0


ASYNCIO_TASKS = Gauge(
    "mediaserver_asyncio_tasks",
    "asyncio tasks alive in the server's event loop (a leak shows as growth across sessions)",
    registry=REGISTRY,
)
LIMITED = Counter(
    "mediaserver_limited_total",
    "Requests, connections and packets refused or cut off by a limit, by limit",
    ["limit"],
    registry=REGISTRY,
)
LIMIT = {reason: LIMITED.labels(limit=reason) for reason in LIMIT_REASONS}
CONSENT_EXPIRED = Counter(
    "mediaserver_ice_consent_expired_total",
    "ICE connections closed because the peer's consent checks stopped (RFC 7675)",
    registry=REGISTRY,
)
BUILD_INFO = Info("mediaserver", "Version of the running server", registry=REGISTRY)

# -- cluster (docs/cluster.md) -----------------------------------------------------------

CLUSTER_REDIS_UP = Gauge(
    "mediaserver_cluster_redis_up", "1 while Redis answers (always 1 on a single node)",
    registry=REGISTRY,
)
CLUSTER_DRAINING = Gauge(
    "mediaserver_cluster_draining", "1 once this node drains", registry=REGISTRY
)
CLUSTER_REDIRECTS = Counter(
    "mediaserver_cluster_redirects_total", "join/resume answered with a redirect to another node",
    ["message"], registry=REGISTRY,
)
CLUSTER_ROOMS_MOVED_IN = Counter(
    "mediaserver_cluster_rooms_moved_in_total",
    "Rooms rebuilt here from the saved state of a node that went away", registry=REGISTRY,
)
CLUSTER_LEASE_CONFLICTS = Counter(
    "mediaserver_cluster_lease_conflicts_total",
    "Rooms ended here because another node held their lease (room_moved)", registry=REGISTRY,
)


def _version() -> str:
    try:
        return version("mediaserver")
    except PackageNotFoundError:
        return "unknown"


BUILD_INFO.info({"version": _version()})

for _kind in KINDS:
    TRACKS.labels(kind=_kind)
for _generation in ("0", "1", "2"):
    GC_PAUSE.labels(generation=_generation)
for _room_kind in ROOM_KINDS:
    ROOMS.labels(kind=_room_kind)
CLUSTER_REDIS_UP.set(1)
for _message in ("join", "resume"):
    CLUSTER_REDIRECTS.labels(message=_message)
for _role in ROLES:
    PARTICIPANTS.labels(role=_role)
RTCP_IN = {t: RTCP.labels(direction="in", type=t) for t in RTCP_TYPES}  # pre-bound children
RTCP_OUT = {t: RTCP.labels(direction="out", type=t) for t in RTCP_TYPES}

_LINK = {(d, k): (RTT.labels(direction=d, kind=k), JITTER.labels(direction=d, kind=k),
                  PACKET_LOSS.labels(direction=d, kind=k))
         for d in DIRECTIONS for k in KINDS}
_MOS = {d: MOS.labels(direction=d) for d in DIRECTIONS}
_QUALITY = {level: QUALITY.labels(level=level) for level in QUALITY_LEVELS}


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def observe_link(direction: Direction, kind: Kind, rtt: float | None, jitter: float | None,
                 loss_ratio: float | None) -> None:
    """Record one quality sample of a stream: rtt and jitter in seconds, loss in 0..1."""
    try:
        rtt_h, jitter_h, loss_h = _LINK[(direction, kind)]
    except KeyError:
        raise ValueError(f"observe_link: direction must be one of {DIRECTIONS} and kind one "
                         f"of {KINDS}, not {direction!r}, {kind!r}") from None
    if (value := _finite(rtt)) is not None:
        rtt_h.observe(max(0.0, value))
    if (value := _finite(jitter)) is not None:
        jitter_h.observe(max(0.0, value))
    if (value := _finite(loss_ratio)) is not None:
        loss_h.observe(min(1.0, max(0.0, value)))


def observe_mos(direction: Direction, mos: float) -> None:
    """Record one audio MOS estimate (clamped to 1..4.5; a non-finite value is skipped)."""
    child = _MOS.get(direction)
    if child is None:
        raise ValueError(f"observe_mos: direction must be one of {DIRECTIONS}, "
                         f"not {direction!r}")
    if (value := _finite(mos)) is not None:
        child.observe(min(4.5, max(1.0, value)))


def packets_sent() -> int:
    """RTP packets forwarded so far (all kinds), from the plain tallies."""
    return sum(t.packets for (direction, _), t in RTP_TALLIES.items() if direction == "out")


def observe_join_to_first_packet(seconds: float) -> None:
    """Record how long a participant waited from join to its first forwarded packet."""
    JOIN_TO_FIRST_PACKET.observe(max(0.0, seconds))


def set_quality_counts(counts: Mapping[str, int]) -> None:
    """Set the node-wide number of participants per quality level (missing levels: 0)."""
    unknown = set(counts) - set(QUALITY_LEVELS)
    if unknown:
        raise ValueError(f"set_quality_counts: unknown levels {sorted(unknown)}; "
                         f"levels are {QUALITY_LEVELS}")
    for level, gauge in _QUALITY.items():
        gauge.set(counts.get(level, 0))


# -- event-loop lag ----------------------------------------------------------------------

def loop_lag(slept_at: float, woke_at: float, interval: float) -> float:
    """How much later than asked a sleep of ``interval`` started at ``slept_at`` woke up."""
    return max(0.0, woke_at - slept_at - interval)


LAG_OBSERVERS: list[Callable[[float], None]] = []  # e.g. limits.Admission.observe_lag
LAG_INTERVAL = 0.5  # seconds between two lag samples


class LagProbe:
    """Event-loop lag from timers the process runs anyway: each room's control task says
    how late its tick woke (``sample``), and one sample every LAG_INTERVAL (the worst seen
    since the last) goes to the gauge, the histogram and ``LAG_OBSERVERS``. While such
    tasks run on a loop (``reporter_started`` / ``reporter_stopped``, from inside it),
    ``monitor_event_loop`` keeps no timer of its own there: a node with rooms never wakes
    for the probe, where it woke twice a second. No clock reads: callers pass ``now``
    (time.monotonic()). Counted per loop: a test process runs many loops, one after the
    other, and a loop closed with rooms still ticking must not silence the next one's."""

    __slots__ = ("_published", "_reporters", "_waiters", "_worst")

    def __init__(self) -> None:
        self._worst = 0.0
        self._published = -math.inf
        self._reporters: dict[asyncio.AbstractEventLoop, int] = {}
        self._waiters: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}

    def sample(self, lag: float, now: float) -> float | None:
        """Take one timer's lateness; returns the sample published, if this one was due."""
        if lag > self._worst:
            self._worst = lag
        if now - self._published < LAG_INTERVAL:
            return None
        worst, self._worst, self._published = self._worst, 0.0, now
        EVENT_LOOP_LAG.set(worst)
        EVENT_LOOP_LAG_DISTRIBUTION.observe(worst)
        for observe in LAG_OBSERVERS:
            observe(worst)
        return worst

    def reporter_started(self) -> None:
        loop = asyncio.get_running_loop()
        self._reporters[loop] = self._reporters.get(loop, 0) + 1

    def reporter_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        left = self._reporters.pop(loop, 1) - 1
        if left > 0:
            self._reporters[loop] = left
            return
        for waiter in self._waiters.pop(loop, []):
            if not waiter.done():
                waiter.set_result(None)

    def reporting(self) -> int:
        """How many tasks report on the running loop."""
        return self._reporters.get(asyncio.get_running_loop(), 0)

    async def quiet(self) -> None:
        """Until no task reports on the running loop (at once if none does)."""
        loop = asyncio.get_running_loop()
        if not self._reporters.get(loop):
            return
        waiter = loop.create_future()
        self._waiters.setdefault(loop, []).append(waiter)
        await waiter


LAG_PROBE = LagProbe()


def count_tasks() -> None:
    """Set the asyncio task gauge; call from inside the loop (the /metrics handler does)."""
    ASYNCIO_TASKS.set(len(asyncio.all_tasks()))


async def monitor_event_loop(probe: LagProbe = LAG_PROBE, interval: float = LAG_INTERVAL
                             ) -> None:
    """Sleep ``interval`` again and again and give ``probe`` how late each wake-up is, until
    cancelled; while other tasks report to the probe (rooms' ticks), wait for them to stop.

    The lag is the time every other callback waited too (a packet, a signalling message),
    so it is the first thing to look at when media stutters and CPU looks fine.
    """
    while True:
        await probe.quiet()
        slept_at = time.monotonic()
        await asyncio.sleep(interval)
        woke = time.monotonic()
        probe.sample(loop_lag(slept_at, woke, interval), woke)


def _time_gc() -> Callable[[str, dict[str, int]], None]:
    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            GC_PAUSE.labels(generation=str(info.get("generation", 2))).observe(
                time.perf_counter() - started[0])

    return callback


async def cleanup_ctx(app: object) -> AsyncIterator[None]:
    """aiohttp cleanup context: the metrics' background tasks live as long as the app."""
    task = asyncio.create_task(monitor_event_loop(), name="metrics-event-loop-lag")
    gc_timer = _time_gc()
    gc.callbacks.append(gc_timer)
    yield
    gc.callbacks.remove(gc_timer)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
