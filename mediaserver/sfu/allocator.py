"""Per-subscriber stream allocator: share one bandwidth estimate among the tracks it receives.

Pure logic in the spirit of LiveKit's streamallocator and mediasoup's consumer layer selection:
an estimate, the demands and ``now`` go in, one Allocation per track comes out. Nothing here
reads the clock or touches the network; the subscriber's control task applies the decisions.

Why the order: a therapy session survives without video, never without voice, so audio is
allocated first and is never paused to make room for video. Screen share carries the content
both sides are looking at, then come pinned tiles, the active speaker, and everyone else.
That order first hands out each video track's lowest rung, then what is left: a face in a
small tile beats a paused one, so no track goes to a larger layer while another one that
the estimate could show is paused.

Why a ladder of spatial and temporal layers: a track with VP8 temporal layers can be thinned
to fewer frames per second (TL1, TL0) without a keyframe or a change of resolution. Its
rungs are ordered by spatial layer, then temporal layer, so when the budget shrinks the
frame rate goes first and the resolution only after; variants of the larger layers slower
than ``min_fps`` are left out (a face at 4 fps is worse than a smaller one at 15), while the
lowest layer keeps them all: a few frames a second beat a paused tile.

Why hysteresis and a hold time: every layer switch costs a keyframe and a visible quality
jump. Going down happens at once (a congested link must be relieved now); going up needs
headroom (``up_hysteresis``) and ``min_hold`` seconds of calm, one layer per step, so an
estimate that wobbles around a layer boundary never makes a track flap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

Kind = Literal["audio", "video"]
Source = Literal["microphone", "camera", "screen", "screen_audio"]
PriorityHint = Literal["pinned", "speaker"] | None
Reason = Literal["bandwidth", "disabled", "preference"] | None

_LayerKey = tuple[int, int]


# Layer, TrackDemand and Allocation are named tuples, immutable as frozen dataclasses are:
# each adaptation step makes one demand per track, one layer per rung and one allocation
# per track for every subscriber, and a frozen dataclass's __init__ sets every field
# through object.__setattr__.
class Layer(NamedTuple):
    spatial: int
    temporal: int
    bitrate: int  # bps, as measured on the publisher side
    width: int | None = None
    height: int | None = None
    fps: float | None = None

    @property
    def key(self) -> _LayerKey:
        return (self.spatial, self.temporal)


class TrackDemand(NamedTuple):
    track_id: str
    kind: Kind
    source: Source
    priority_hint: PriorityHint
    layers: tuple[Layer, ...]  # what the publisher sends now; audio has one
    max_width: int | None = None
    max_height: int | None = None
    max_fps: float | None = None
    disabled: bool = False


class Allocation(NamedTuple):
    track_id: str
    layer: Layer | None  # None means paused
    reason: Reason = None


@dataclass
class _TrackState:
    layer: _LayerKey | None
    changed_at: float


def _rank(demand: TrackDemand) -> int:
    """Lower rank is served first among video tracks."""
    if demand.source == "screen":
        return 0
    if demand.priority_hint == "pinned":
        return 1
    if demand.priority_hint == "speaker":
        return 2
    return 3


def _wanted_layers(demand: TrackDemand, ordered: list[Layer]) -> list[Layer]:
    """The layers a subscriber's preferences allow, worst first.

    ``max_width``/``max_height`` describe the element the video is shown in, so the layer
    that covers it (the smallest at least that size) is allowed, and everything smaller; a
    tile of 600 pixels gets the 640-wide layer scaled down, not the 320-wide one scaled up.
    ``max_fps`` is a plain cap. An unknown dimension cannot violate a cap: the publisher
    simply did not report it.
    """
    cover: int | None = None
    if demand.max_width is not None or demand.max_height is not None:
        big_enough = [la.width for la in ordered if la.width and la.height
                      and (demand.max_width is None or la.width >= demand.max_width)
                      and (demand.max_height is None or la.height >= demand.max_height)]
        cover = min(big_enough) if big_enough else None

    def allowed(la: Layer) -> bool:
        if demand.max_fps is not None and la.fps is not None and la.fps > demand.max_fps:
            return False
        if la.width is None or (demand.max_width is None and demand.max_height is None):
            return True
        if cover is not None:
            return la.width <= cover
        return ((demand.max_width is None or la.width <= demand.max_width)
                and (demand.max_height is None or la.height is None
                     or la.height <= demand.max_height))

    return [la for la in ordered if allowed(la)]


def current_cost(demands: list[TrackDemand], previous: dict[str, Allocation]) -> int:
    """What the layers allocated last time cost now, as measured in ``demands``.

    A layer that flows while the link shows no sign of congestion fits the link, whatever
    the estimate says: the estimate is only as high as the last probe asked, and a layer's
    measured rate grows with its keyframes (another subscriber's switch asks for some).
    """
    total = 0
    for d in demands:
        before = previous.get(d.track_id)
        if before is None or before.layer is None or d.disabled:
            continue
        now = next((la for la in d.layers if la.key == before.layer.key), None)
        if now is not None:
            total += now.bitrate
    return total


class StreamAllocator:
    """Allocates one subscriber's estimate; keeps per-track state between calls."""

    def __init__(
        self,
        min_hold: float = 2.0,
        up_hysteresis: float = 1.15,
        audio_only_floor: int = 60_000,
        down_tolerance: float = 1.1,
        min_fps: float = 7.0,
    ) -> None:
        self._min_hold = min_hold
        self._up = up_hysteresis
        # A layer being forwarded keeps its place until it exceeds the budget by this
        # much: its measured bitrate swings with keyframes more than the link does.
        self._down = down_tolerance
        self._floor = audio_only_floor
        self._min_fps = min_fps
        self._audio_only = False
        self._tracks: dict[str, _TrackState] = {}

    @property
    def audio_only_floor(self) -> int:
        return self._floor

    @property
    def up_hysteresis(self) -> float:
        return self._up

    @property
    def audio_only(self) -> bool:
        return self._audio_only

    def ladder(self, demand: TrackDemand) -> list[Layer]:
        """The layers a video track can be given, worst first, within its preferences."""
        return self._ladder(demand)[0]

    def _ladder(self, demand: TrackDemand) -> tuple[list[Layer], bool]:
        """``ladder`` and whether the preferences left rungs out (or were below every rung:
        the smallest is then the closest we can offer)."""
        ordered = self._rungs(demand)
        wanted = _wanted_layers(demand, ordered)
        return wanted or ordered[:1], len(wanted) < len(ordered)

    def _rungs(self, demand: TrackDemand) -> list[Layer]:
        ordered = sorted(demand.layers, key=lambda la: (la.spatial, la.temporal))
        if not ordered:
            return ordered
        lowest = ordered[0].spatial
        top = {la.spatial: la.temporal for la in ordered}  # sorted: the last one wins
        return [la for la in ordered
                if la.spatial == lowest or la.temporal == top[la.spatial]
                or la.fps is None or la.fps >= self._min_fps]

    def allocate(
        self, estimate_bps: int, demands: list[TrackDemand], now: float
    ) -> list[Allocation]:
        result: dict[str, Allocation] = {}
        audio_bps = 0
        for d in demands:
            if d.kind != "audio":
                continue
            if d.disabled or not d.layers:
                result[d.track_id] = Allocation(d.track_id, None, "disabled")
                continue
            layer = max(d.layers, key=lambda la: la.bitrate)
            audio_bps += layer.bitrate
            result[d.track_id] = Allocation(d.track_id, layer, None)

        budget = max(0, estimate_bps - audio_bps)
        if self._audio_only:
            self._audio_only = budget <= self._floor * self._up
        else:
            self._audio_only = budget < self._floor

        video = [d for d in demands if d.kind == "video"]
        video.sort(key=_rank)  # stable: equal ranks keep the caller's order
        # Each track's ladder, worked out once a call (and whether preferences cut it).
        ladders = [self._ladder(d) for d in video]
        reserves = self._reserves(video, budget, [ladder for ladder, _ in ladders])
        for d, reserved, (ladder, capped) in zip(video, reserves, ladders, strict=True):
            alloc = self._allocate_video(d, max(0, budget - reserved), now, ladder, capped)
            if alloc.layer is not None:
                budget -= alloc.layer.bitrate
            result[d.track_id] = alloc

        live = {d.track_id for d in video}
        for track_id in list(self._tracks):
            if track_id not in live:
                del self._tracks[track_id]
        return [result[d.track_id] for d in demands]

    def _reserves(self, video: list[TrackDemand], budget: int, ladders: list[list[Layer]]
                  ) -> list[int]:
        """Per video track (in rank order), what the tracks after it keep back.

        Every track first gets its lowest rung, in rank order, as far as the budget goes;
        only what is left lifts tracks above it. Without this reservation the first track
        would settle on a larger layer and pause the next one although the budget covers
        both: a subscriber of two cameras saw one of them frozen for seconds at the start,
        until a probe raised the estimate.
        """
        floors: list[int] = []
        left = budget
        for d, ladder in zip(video, ladders, strict=True):
            lowest = ladder[0].bitrate if d.layers and not d.disabled else None
            if lowest is not None and lowest <= left:
                left -= lowest
                floors.append(lowest)
            else:
                floors.append(0)  # paused anyway, or nothing to keep
        return [sum(floors[i + 1:]) for i in range(len(floors))]

    def _allocate_video(self, d: TrackDemand, budget: int, now: float, wanted: list[Layer],
                        capped: bool) -> Allocation:
        """``wanted``, ``capped``: the track's ``_ladder``."""
        if d.disabled or not d.layers:
            self._set(d.track_id, None, now)
            return Allocation(d.track_id, None, "disabled")
        if self._audio_only:
            self._set(d.track_id, None, now)
            return Allocation(d.track_id, None, "bandwidth")

        chosen = self._choose(d.track_id, wanted, budget, now)
        self._set(d.track_id, chosen.key if chosen else None, now)
        if chosen is None:
            return Allocation(d.track_id, None, "bandwidth")
        if chosen is not wanted[-1]:
            return Allocation(d.track_id, chosen, "bandwidth")
        return Allocation(d.track_id, chosen, "preference" if capped else None)

    def _choose(
        self, track_id: str, wanted: list[Layer], budget: int, now: float
    ) -> Layer | None:
        fitting = [la for la in wanted if la.bitrate <= budget]
        best = fitting[-1] if fitting else None
        state = self._tracks.get(track_id)
        if state is None:
            return best  # first sight: settle straight onto the best fit
        keys = [la.key for la in wanted]
        if state.layer is not None and state.layer not in keys:
            return best  # layer vanished or preferences shrank: re-place now
        if state.layer is None:
            index = -1
        else:
            index = keys.index(state.layer)
            if wanted[index].bitrate > budget * self._down:
                return best  # no longer fits: step down at once
        current = wanted[index] if index >= 0 else None
        if index + 1 >= len(wanted) or now - state.changed_at < self._min_hold:
            return current
        step = wanted[index + 1]
        return step if step.bitrate * self._up <= budget else current

    def _set(self, track_id: str, key: _LayerKey | None, now: float) -> None:
        state = self._tracks.get(track_id)
        if state is None:
            self._tracks[track_id] = _TrackState(key, now)
        elif state.layer != key:
            state.layer = key
            state.changed_at = now
