"""Table-driven tests for the stream allocator; time is a plain number passed in."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediaserver.sfu.allocator import (
    Allocation,
    Layer,
    StreamAllocator,
    TrackDemand,
    current_cost,
)

MIC = Layer(0, 0, 32_000)
SIMULCAST = (
    Layer(0, 2, 150_000, 320, 180, 15.0),
    Layer(1, 2, 500_000, 640, 360, 30.0),
    Layer(2, 2, 1_500_000, 1280, 720, 30.0),
)


def audio(track_id: str = "a1") -> TrackDemand:
    return TrackDemand(track_id, "audio", "microphone", None, (MIC,))


def video(track_id: str = "v1", source: Any = "camera", **kw: Any) -> TrackDemand:
    return TrackDemand(track_id, "video", source, layers=SIMULCAST, **{"priority_hint": None, **kw})


def by_id(allocs: list[Allocation]) -> dict[str, Allocation]:
    return {a.track_id: a for a in allocs}


def spatial(a: Allocation) -> int | None:
    return None if a.layer is None else a.layer.spatial


@pytest.mark.parametrize(
    ("estimate", "want_spatial", "want_reason", "want_audio_only"),
    [
        (100_000, None, "bandwidth", True),
        (250_000, 0, "bandwidth", False),
        (800_000, 1, "bandwidth", False),
        (2_000_000, 2, None, False),
    ],
)
def test_estimate_picks_layer(
    estimate: int, want_spatial: int | None, want_reason: str | None, want_audio_only: bool
) -> None:
    alloc = StreamAllocator()
    got = by_id(alloc.allocate(estimate, [audio("a1"), audio("a2"), video()], now=0.0))
    assert got["a1"].layer == MIC and got["a2"].layer == MIC
    assert spatial(got["v1"]) == want_spatial
    assert got["v1"].reason == want_reason
    assert alloc.audio_only is want_audio_only


def test_audio_is_kept_even_above_estimate() -> None:
    alloc = StreamAllocator()
    demands = [audio(f"a{i}") for i in range(5)] + [video()]
    got = by_id(alloc.allocate(50_000, demands, now=0.0))
    assert all(got[f"a{i}"].layer == MIC for i in range(5))
    assert got["v1"] == Allocation("v1", None, "bandwidth")


@pytest.mark.parametrize(
    ("prefs", "want_spatial", "want_reason"),
    [
        ({"max_width": 320}, 0, "preference"),
        ({"max_width": 400}, 1, "preference"),  # the layer that covers the element
        ({"max_width": 300, "max_height": 300}, 1, "preference"),  # covers both
        ({"max_width": 640, "max_height": 360}, 1, "preference"),
        ({"max_height": 720}, 2, None),
        ({"max_fps": 15.0}, 0, "preference"),
        ({"max_width": 100}, 0, "preference"),  # below every layer: smallest offered
        ({"disabled": True}, None, "disabled"),
    ],
)
def test_preferences_cap_layer(
    prefs: dict[str, Any], want_spatial: int | None, want_reason: str | None
) -> None:
    got = by_id(StreamAllocator().allocate(10_000_000, [audio(), video(**prefs)], now=0.0))
    assert spatial(got["v1"]) == want_spatial
    assert got["v1"].reason == want_reason


@pytest.mark.parametrize(
    ("demands", "winner"),
    [
        ([video("cam"), video("scr", source="screen")], "scr"),
        ([video("cam"), video("spk", priority_hint="speaker")], "spk"),
        ([video("spk", priority_hint="speaker"), video("pin", priority_hint="pinned")], "pin"),
        ([video("pin", priority_hint="pinned"), video("scr", source="screen")], "scr"),
        ([video("first"), video("second")], "first"),
    ],
)
def test_priority_when_only_one_fits(demands: list[TrackDemand], winner: str) -> None:
    # 300k - 32k audio leaves room for exactly one 150k layer.
    got = by_id(StreamAllocator().allocate(300_000, [audio(), *demands], now=0.0))
    for d in demands:
        if d.track_id == winner:
            assert spatial(got[d.track_id]) == 0
        else:
            assert got[d.track_id] == Allocation(d.track_id, None, "bandwidth")


@pytest.mark.parametrize(
    ("center", "start_high"),
    [
        (532_000, True),  # around the mid layer (500k + 32k audio)
        (532_000, False),
        (1_532_000, True),  # around the top layer
        (182_000, True),  # around the lowest layer
        (152_000, True),  # around the audio-only floor (120k + 32k audio)
        (152_000, False),
    ],
)
def test_oscillating_estimate_does_not_flap(center: int, start_high: bool) -> None:
    alloc = StreamAllocator()
    demands = [audio(), video()]
    previous: tuple[int | None, bool] | None = None
    switches = 0
    for step in range(120):  # 60 s, a new estimate every 0.5 s
        now = step * 0.5
        high = (step % 2 == 0) == start_high
        estimate = int(center * (1.05 if high else 0.95))
        state = (spatial(by_id(alloc.allocate(estimate, demands, now))["v1"]), alloc.audio_only)
        if previous is not None and state != previous and now >= 1.0:
            switches += 1
        previous = state
    assert switches == 0


def run(alloc: StreamAllocator, schedule: list[tuple[float, int]], end: float) -> list[tuple]:
    """Feed (start_time, estimate) segments every 0.1 s; return (now, spatial) per call."""
    out = []
    for tick in range(round(end * 10) + 1):
        now = tick / 10
        estimate = [e for t, e in schedule if t <= now][-1]
        out.append((now, spatial(by_id(alloc.allocate(estimate, [audio(), video()], now))["v1"])))
    return out


def test_drop_adapts_at_once() -> None:
    trace = dict(run(StreamAllocator(), [(0.0, 2_000_000), (10.0, 250_000)], end=12.0))
    assert trace[9.9] == 2
    assert trace[10.0] == 0


@pytest.mark.parametrize("min_hold", [0.5, 1.0, 2.0, 3.0])
def test_recovery_reaches_top_within_three_holds(min_hold: float) -> None:
    alloc = StreamAllocator(min_hold=min_hold)
    rise = 10.0
    trace = run(alloc, [(0.0, 2_000_000), (1.0, 250_000), (rise, 2_000_000)], end=30.0)
    assert dict(trace)[rise - 0.1] == 0
    reached = min(t for t, s in trace if t >= rise and s == 2)
    assert reached <= rise + 3 * min_hold
    # one step per hold: the middle layer is visited on the way up
    assert any(s == 1 for t, s in trace if rise <= t < reached)


def test_no_step_up_within_hold() -> None:
    alloc = StreamAllocator(min_hold=2.0)
    demands = [audio(), video()]
    alloc.allocate(250_000, demands, now=0.0)
    got = alloc.allocate(2_000_000, demands, now=1.9)
    assert spatial(got[1]) == 0
    assert spatial(alloc.allocate(2_000_000, demands, now=2.0)[1]) == 1


LAYER = st.builds(
    Layer,
    spatial=st.integers(0, 2),
    temporal=st.integers(0, 2),
    bitrate=st.integers(0, 3_000_000),
    width=st.none() | st.integers(1, 1920),
    height=st.none() | st.integers(1, 1080),
    fps=st.none() | st.floats(1, 60),
)
DEMAND = st.builds(
    TrackDemand,
    track_id=st.sampled_from(["t0", "t1", "t2", "t3", "t4", "t5"]),
    kind=st.sampled_from(["audio", "video"]),
    source=st.sampled_from(["microphone", "camera", "screen", "screen_audio"]),
    layers=st.lists(LAYER, max_size=4).map(tuple),
    priority_hint=st.sampled_from(["pinned", "speaker", None]),
    max_width=st.none() | st.integers(1, 1920),
    max_height=st.none() | st.integers(1, 1080),
    max_fps=st.none() | st.floats(1, 60),
    disabled=st.booleans(),
)
STEP = st.tuples(
    st.integers(0, 5_000_000),
    st.floats(0, 5),
    st.lists(DEMAND, max_size=6, unique_by=lambda d: d.track_id),
)


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(STEP, min_size=1, max_size=20))
def test_never_over_allocates_video(steps: list[tuple[int, float, list[TrackDemand]]]) -> None:
    alloc = StreamAllocator()
    now = 0.0
    for estimate, dt, demands in steps:
        now += dt
        got = alloc.allocate(estimate, demands, now)
        assert [a.track_id for a in got] == [d.track_id for d in demands]
        kinds = {d.track_id: d.kind for d in demands}
        audio_bps = sum(a.layer.bitrate for a in got if a.layer and kinds[a.track_id] == "audio")
        video_bps = sum(a.layer.bitrate for a in got if a.layer and kinds[a.track_id] == "video")
        assert video_bps <= max(0, estimate - audio_bps)
        for d, a in zip(demands, got, strict=True):
            if d.kind == "audio" and not d.disabled and d.layers:
                assert a.layer is not None
            if a.layer is not None:
                assert a.layer in d.layers


# A simulcast track whose layers each carry three temporal layers (a 30 fps source, L1T3):
# TL0 7.5 fps, TL0+1 15 fps, all 30 fps.
LADDER = tuple(
    Layer(s, t, rate, w, h, fps)
    for s, (w, h), rates in (
        (0, (320, 180), (40_000, 65_000, 80_000)),
        (1, (640, 360), (160_000, 240_000, 320_000)),
        (2, (1280, 720), (500_000, 750_000, 1_000_000)),
    )
    for t, (rate, fps) in enumerate(zip(rates, (7.5, 15.0, 30.0), strict=True))
)


def layer_of(a: Allocation) -> tuple[int, int] | None:
    return None if a.layer is None else a.layer.key


@pytest.mark.parametrize(
    ("estimate", "want"),
    [
        (2_000_000, (2, 2)),
        (900_000, (2, 1)),  # the top layer at 15 fps rather than the middle one at 30
        (600_000, (2, 0)),
        (400_000, (1, 2)),
        (250_000, (1, 0)),
        (120_000, (0, 2)),
        (100_000, (0, 1)),
        (95_000, (0, 0)),  # a few frames a second rather than a paused tile...
        (80_000, None),  # ...down to the audio-only floor
    ],
)
def test_temporal_layers_are_rungs_between_spatial_ones(estimate: int,
                                                        want: tuple[int, int] | None) -> None:
    demand = TrackDemand("v1", "video", "camera", None, LADDER)
    got = by_id(StreamAllocator().allocate(estimate, [audio(), demand], now=0.0))
    assert layer_of(got["v1"]) == want


def test_a_shrinking_budget_takes_frame_rate_before_resolution() -> None:
    alloc = StreamAllocator()
    demands = [audio(), TrackDemand("v1", "video", "camera", None, LADDER)]
    trace = [layer_of(alloc.allocate(e, demands, now)[1])
             for now, e in ((0.0, 2_000_000), (1.0, 900_000), (2.0, 600_000), (3.0, 400_000))]
    assert trace == [(2, 2), (2, 1), (2, 0), (1, 2)]


def test_a_growing_budget_climbs_one_rung_per_hold() -> None:
    alloc = StreamAllocator(min_hold=2.0)
    demands = [audio(), TrackDemand("v1", "video", "camera", None, LADDER)]
    alloc.allocate(400_000, demands, now=0.0)
    trace = [layer_of(alloc.allocate(2_000_000, demands, now)[1])
             for now in (1.0, 2.0, 3.0, 4.0, 6.0, 8.0)]
    assert trace == [(1, 2), (2, 0), (2, 0), (2, 1), (2, 2), (2, 2)]


@pytest.mark.parametrize(
    ("min_fps", "fps", "want"),
    [
        # A 15 fps source: TL0 is 3.75 fps, too slow for the larger layers.
        (7.0, (3.75, 7.5, 15.0), [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2)]),
        (3.0, (3.75, 7.5, 15.0), [(s, t) for s in range(3) for t in range(3)]),
        # Unknown frame rates leave every rung in.
        (7.0, (None, None, None), [(s, t) for s in range(3) for t in range(3)]),
    ],
)
def test_ladder_leaves_out_slow_variants_of_the_larger_layers(
    min_fps: float, fps: tuple[float | None, ...], want: list[tuple[int, int]]
) -> None:
    layers = tuple(Layer(la.spatial, la.temporal, la.bitrate, la.width, la.height,
                         fps[la.temporal]) for la in reversed(LADDER))
    demand = TrackDemand("v1", "video", "camera", None, layers)
    assert [la.key for la in StreamAllocator(min_fps=min_fps).ladder(demand)] == want


@pytest.mark.parametrize(
    ("max_fps", "want"),
    [(30.0, (2, 2)), (20.0, (2, 1)), (10.0, (2, 0)), (5.0, (0, 0))],
)
def test_max_fps_picks_the_temporal_layer(max_fps: float, want: tuple[int, int]) -> None:
    demand = TrackDemand("v1", "video", "camera", None, LADDER, max_fps=max_fps)
    got = by_id(StreamAllocator().allocate(10_000_000, [audio(), demand], now=0.0))
    assert layer_of(got["v1"]) == want
    assert got["v1"].reason == ("preference" if max_fps < 30 else None)


def test_ladder_follows_preferences() -> None:
    # What probing aims at: the next rung the subscriber would accept, not one it refuses.
    demand = TrackDemand("v1", "video", "camera", None, LADDER, max_fps=10.0)
    assert [la.key for la in StreamAllocator().ladder(demand)] == [(0, 0), (1, 0), (2, 0)]
    capped = TrackDemand("v1", "video", "camera", None, LADDER, max_fps=1.0)
    assert [la.key for la in StreamAllocator().ladder(capped)] == [(0, 0)]  # the closest


# Two cameras as the load test publishes them (80x60, 160x120, 320x240 at 15 fps; wire
# rates as measured) next to two Opus tracks of a subscriber.
CAM = (Layer(0, 0, 42_000, 80, 60, 15.0), Layer(1, 0, 119_000, 160, 120, 15.0),
       Layer(2, 0, 279_000, 320, 240, 15.0))


def cam(track_id: str, source: Any = "camera", **kw: Any) -> TrackDemand:
    return TrackDemand(track_id, "video", source, layers=CAM, **{"priority_hint": None, **kw})


@pytest.mark.parametrize(
    ("estimate", "demands", "want"),
    [
        # The start-up estimate (200k) less two 32k audio tracks: 136k. Both lowest layers
        # (84k) fit; the first camera must not take the middle one (119k) and pause the
        # second.
        (200_000, [cam("c1"), cam("c2")], {"c1": 0, "c2": 0}),
        # Room for one middle layer next to the other's lowest: the first in rank gets it.
        (64_000 + 119_000 + 42_000, [cam("c1"), cam("c2")], {"c1": 1, "c2": 0}),
        (64_000 + 119_000 + 42_000, [cam("c1"), cam("c2", priority_hint="speaker")],
         {"c1": 0, "c2": 1}),
        # Room for both middle layers.
        (64_000 + 2 * 119_000, [cam("c1"), cam("c2")], {"c1": 1, "c2": 1}),
        # Room for one lowest layer only: rank decides who is shown.
        (64_000 + 60_000, [cam("c1"), cam("c2")], {"c1": 0, "c2": None}),
        (64_000 + 60_000, [cam("c1"), cam("c2", source="screen")], {"c1": None, "c2": 0}),
        # Three tracks, room for two lowest layers and a little more.
        (64_000 + 2 * 42_000 + 30_000, [cam("c1"), cam("c2"), cam("c3")],
         {"c1": 0, "c2": 0, "c3": None}),
        # A screen share keeps the larger layer when the camera's lowest still fits.
        (64_000 + 279_000 + 42_000, [cam("c1"), cam("s1", source="screen")],
         {"c1": 0, "s1": 2}),
        # ...and steps down when it does not: what is left then lifts the camera.
        (64_000 + 279_000 + 30_000, [cam("c1"), cam("s1", source="screen")],
         {"c1": 1, "s1": 1}),
        # A disabled track keeps nothing back.
        (64_000 + 119_000 + 30_000, [cam("c1"), cam("c2", disabled=True)],
         {"c1": 1, "c2": None}),
        # Preferences: the capped track's lowest rung is what is kept for it.
        (64_000 + 279_000 + 42_000, [cam("c1"), cam("c2", max_width=80)],
         {"c1": 2, "c2": 0}),
    ],
)
def test_every_track_gets_its_lowest_rung_before_any_gets_more(
        estimate: int, demands: list[TrackDemand], want: dict[str, int | None]) -> None:
    got = by_id(StreamAllocator().allocate(estimate, [audio("a1"), audio("a2"), *demands],
                                           now=0.0))
    assert {d.track_id: spatial(got[d.track_id]) for d in demands} == want


def test_a_track_measured_later_is_not_paused_by_one_settled_before_it() -> None:
    # The second camera's layers are measured one control step after the first's: the
    # first, alone, settles on its middle layer, then gives way at once.
    alloc = StreamAllocator()
    first = by_id(alloc.allocate(200_000, [audio("a1"), audio("a2"), cam("c1")], now=0.0))
    assert spatial(first["c1"]) == 1
    got = by_id(alloc.allocate(200_000, [audio("a1"), audio("a2"), cam("c1"), cam("c2")],
                               now=0.5))
    assert (spatial(got["c1"]), spatial(got["c2"])) == (0, 0)


@pytest.mark.parametrize(
    ("previous", "want"),
    [
        ({}, 0),  # nothing allocated yet
        ({"a1": Allocation("a1", MIC), "v1": Allocation("v1", LADDER[4])}, 32_000 + 240_000),
        # A layer's rate is taken as measured now, not as it was when allocated.
        ({"v1": Allocation("v1", Layer(1, 1, 100_000))}, 240_000),
        ({"v1": Allocation("v1", None, "bandwidth")}, 0),  # paused
        ({"v1": Allocation("v1", Layer(2, 2, 1))}, 0),  # no longer measured
        ({"gone": Allocation("gone", MIC)}, 0),  # a track that went away
    ],
)
def test_current_cost(previous: dict[str, Allocation], want: int) -> None:
    demands = [audio("a1"), TrackDemand("v1", "video", "camera", None, LADDER[:6])]
    assert current_cost(demands, previous) == want
