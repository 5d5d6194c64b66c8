"""Probe shape, limits and backoff (mediaserver/sfu/probe.py) as tables; time is passed in."""

from __future__ import annotations

import pytest

from mediaserver.sfu.probe import Probe, ProbePlanner

RAMP = Probe(base=100_000, goal=400_000, started=10.0, ramp_ends=10.6, ends=10.8, settles=11.8)


@pytest.mark.parametrize(
    ("now", "rate"),
    [
        (9.9, 0),  # not started
        (10.0, 100_000),  # starts at what already flows
        (10.3, 250_000),  # halfway up the ramp
        (10.6, 400_000),  # at the goal...
        (10.7, 400_000),  # ...held
        (10.8, 0),  # padding over; only feedback is awaited now
        (11.5, 0),
    ],
)
def test_the_probe_ramps_from_what_flows_to_its_goal_then_holds(now: float, rate: int) -> None:
    assert RAMP.rate_at(now) == rate


@pytest.mark.parametrize(
    ("now", "estimate", "level"),
    [
        (10.0, 100_000, 100_000),  # failed at once: the rate before the probe
        (10.45, 100_000, 325_000),  # on the ramp: where it stood
        (10.7, 100_000, 400_000),  # holding
        (11.2, 100_000, 400_000),  # in the feedback window: the goal was sent
        # From audio only (100 kbps flowing, the estimate 260 kbps): never below the
        # estimate, or the next probes could not reach the lowest video layer again.
        (10.1, 260_000, 260_000),
        (10.45, 260_000, 325_000),
    ],
)
def test_a_failure_is_remembered_where_the_probe_stood(now: float, estimate: int, level: int
                                                        ) -> None:
    assert ProbePlanner.failure_level(RAMP, now, estimate) == level


def test_start_shapes_the_probe() -> None:
    planner = ProbePlanner(ramp=0.5, hold=0.25, settle=1.0)
    assert planner.start(120_000, 300_000, 5.0) == Probe(120_000, 300_000, 5.0, 5.5, 5.75, 6.75)
    # Media above the goal (a keyframe burst measured): the ramp is flat at the goal.
    assert planner.start(350_000, 300_000, 5.0).base == 300_000
    # From audio only the ramp is slower (the subscriber's estimator starts from nothing).
    cold = ProbePlanner(ramp=0.5, cold_ramp=1.5, hold=0.25, settle=1.0)
    assert cold.start(60_000, 150_000, 5.0, cold=True) == Probe(60_000, 150_000, 5.0, 6.5,
                                                                6.75, 7.75)


# Each row: events before the question as (time, "ok" with the goal, "fail" with the level,
# or "near" with the subscriber's hint), then
# (wanted, estimate, now) and the goal the planner allows (None: wait).
GOAL_CASES = [
    ("fresh: at most 1.5x the estimate", [], (1_000_000, 200_000, 0.0), 300_000),
    ("fresh: the wanted rate if below that", [], (250_000, 200_000, 0.0), 250_000),
    ("nothing to gain", [], (200_000, 200_000, 0.0), None),
    ("after a success: up to 2x", [(1.0, "ok", 300_000)], (1_000_000, 300_000, 1.0), 600_000),
    ("backing off after a failure", [(1.0, "fail", 340_000)], (1_000_000, 200_000, 2.9), None),
    ("after the backoff: a small step above the failed level",
     [(1.0, "fail", 250_000)], (1_000_000, 240_000, 3.1), 300_000),
    ("below the failed level the usual step applies",
     [(1.0, "fail", 1_000_000)], (1_000_000, 200_000, 3.1), 300_000),
    ("the failed level is the lowest recent one",
     [(1.0, "fail", 300_000), (3.5, "fail", 250_000)], (1_000_000, 240_000, 8.0), 300_000),
    ("a success at or above the failed level forgets it",
     [(1.0, "fail", 250_000), (4.0, "ok", 300_000)], (1_000_000, 300_000, 4.0), 600_000),
    ("a success below it does not",
     [(1.0, "fail", 250_000), (4.0, "ok", 240_000)], (1_000_000, 240_000, 4.0), 300_000),
    ("time forgets it too", [(1.0, "fail", 250_000)], (1_000_000, 240_000, 40.0), 360_000),
    ("too close to a failure to be worth a probe",
     [(1.0, "fail", 200_000)], (1_000_000, 250_000, 4.0), None),
    # The subscriber's word on its link: a small step above it, at once (no backoff).
    ("a start hint caps the first probe as a failure would",
     [(1.0, "near", 100_000)], (1_000_000, 100_000, 1.0), 120_000),
    ("a success above the hint forgets it",
     [(1.0, "near", 100_000), (4.0, "ok", 120_000)], (1_000_000, 120_000, 4.0), 240_000),
    ("a failure below the hint lowers the level",
     [(1.0, "near", 100_000), (3.0, "fail", 90_000)], (1_000_000, 80_000, 5.0), 108_000),
]


@pytest.mark.parametrize(("history", "question", "want"), [c[1:] for c in GOAL_CASES],
                         ids=[c[0] for c in GOAL_CASES])
def test_goal(history: list[tuple[float, str, int]], question: tuple[int, int, float],
              want: int | None) -> None:
    planner = ProbePlanner(step=1.5, success_step=2.0, near_failure_step=1.2,
                           backoff_min=2.0, backoff_max=8.0, failure_memory=30.0)
    for at, outcome, rate in history:
        if outcome == "ok":
            planner.on_success(Probe(rate // 2, rate, at - 1.8, at - 1.2, at - 1.0, at), at)
        elif outcome == "near":
            planner.near(rate, at)
        else:
            planner.on_failure(rate, at)
    assert planner.goal(*question) == want


@pytest.mark.parametrize(
    ("failures", "allowed_at"),
    [
        ([0.0], 2.0),
        ([0.0, 2.5], 6.5),  # 4 s after the second failure
        ([0.0, 2.5, 7.0], 15.0),  # 8 s, the maximum
        ([0.0, 2.5, 7.0, 15.5], 23.5),  # stays at the maximum
    ],
)
def test_backoff_doubles_up_to_its_maximum(failures: list[float], allowed_at: float) -> None:
    planner = ProbePlanner(backoff_min=2.0, backoff_max=8.0)
    for at in failures:
        planner.on_failure(300_000, at)
    assert planner.goal(1_000_000, 200_000, allowed_at - 0.01) is None
    assert planner.goal(1_000_000, 200_000, allowed_at) is not None
    assert planner.failed == len(failures)


def test_a_success_resets_the_backoff() -> None:
    planner = ProbePlanner(backoff_min=2.0, backoff_max=8.0)
    planner.on_failure(300_000, 0.0)
    planner.on_failure(300_000, 2.5)
    planner.on_success(Probe(100_000, 350_000, 7.0, 7.6, 7.8, 8.8), 8.8)
    planner.on_failure(400_000, 9.0)
    assert planner.goal(1_000_000, 350_000, 10.99) is None
    assert planner.goal(1_000_000, 350_000, 11.0) == 480_000  # 1.2x the failed level
