"""Rate and admission limits as tables: time is a parameter, nothing sleeps."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mediaserver.limits import (
    JOIN_RATE_LIMITED,
    NODE_FULL,
    NODE_OVERLOADED,
    Admission,
    AdmissionLimits,
    ConnectionCounter,
    TokenBucket,
    bitrate_bucket,
)


@pytest.mark.parametrize(("rate", "burst", "steps"), [
    # steps: (now, cost, expected result)
    (1, 3, [(0, 1, True), (0, 1, True), (0, 1, True), (0, 1, False)]),  # burst, then empty
    (1, 3, [(0, 3, True), (0.5, 1, False), (1.0, 1, True), (1.0, 1, False)]),  # refills at rate
    (10, 5, [(0, 5, True), (100, 5, True), (100, 1, False)]),  # never more than the burst
    (2, 2, [(0, 2, True), (-5, 1, False), (0.5, 1, True)]),  # a clock going back adds nothing
    (1, 2, [(0, 3, False), (0, 2, True)]),  # a cost above the burst never passes
])  # fmt: skip
def test_token_bucket(rate: float, burst: float, steps: list[tuple[float, float, bool]]) -> None:
    bucket = TokenBucket(rate, burst)
    assert [bucket.take(now, cost) for now, cost, _ in steps] == [ok for *_, ok in steps]


def test_token_bucket_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 1)
    with pytest.raises(ValueError):
        TokenBucket(1, 0)


@given(st.floats(0.1, 1000), st.floats(1, 1000),
       st.lists(st.tuples(st.floats(0, 1), st.floats(0.1, 10)), max_size=200))
def test_token_bucket_never_passes_more_than_rate_times_time_plus_burst(
        rate: float, burst: float, steps: list[tuple[float, float]]) -> None:
    bucket = TokenBucket(rate, burst)
    now = passed = 0.0
    for dt, cost in steps:
        now += dt
        if bucket.take(now, cost):
            passed += cost
    assert passed <= burst + rate * now + 1e-6


def test_connection_counter() -> None:
    c = ConnectionCounter(2)
    assert [c.acquire("a"), c.acquire("a"), c.acquire("a"), c.acquire("b")] == [
        True, True, False, True]
    c.release("a")
    assert c.acquire("a")
    for _ in range(3):
        c.release("b")  # releasing more than acquired does not go negative
    assert "b" not in c.open
    unlimited = ConnectionCounter(0)
    assert all(unlimited.acquire("x") for _ in range(1000))


@pytest.mark.parametrize(("limits", "events", "expected"), [
    # events: ("lag", seconds) or ("join", participants, now); expected: result of each join
    (AdmissionLimits(max_participants=3),
     [("join", 2, 0), ("join", 3, 0), ("join", 4, 0)], [None, NODE_FULL, NODE_FULL]),
    (AdmissionLimits(),  # no limits at all
     [("lag", 5.0), ("join", 10**6, 0)], [None]),
    (AdmissionLimits(max_loop_lag=0.2),  # one long pause is smoothed away...
     [("lag", 0.5), ("join", 0, 0), ("lag", 0.0), ("lag", 0.0), ("join", 0, 1)],
     [None, None]),
    (AdmissionLimits(max_loop_lag=0.2),  # ...a loop that stays late is not, and recovers
     [("lag", 0.5), ("lag", 0.5), ("lag", 0.5), ("join", 0, 0),
      *[("lag", 0.0)] * 8, ("join", 0, 5)],
     [NODE_OVERLOADED, None]),
    (AdmissionLimits(joins_per_second=2),
     [("join", 0, 0), ("join", 0, 0), ("join", 0, 0), ("join", 0, 0.5), ("join", 0, 0.5)],
     [None, None, JOIN_RATE_LIMITED, None, JOIN_RATE_LIMITED]),
    (AdmissionLimits(max_participants=1, joins_per_second=1),  # a full node spends no token
     [("join", 1, 0), ("join", 0, 0)], [NODE_FULL, None]),
])  # fmt: skip
def test_admission(limits: AdmissionLimits, events: list[tuple], expected: list) -> None:
    admission = Admission(limits)
    results = []
    for event in events:
        if event[0] == "lag":
            admission.observe_lag(event[1])
        else:
            results.append(admission.check(event[1], event[2]))
    assert results == expected


def test_bitrate_bucket_passes_the_budget_and_drops_a_tenfold_flood() -> None:
    assert bitrate_bucket(0) is None
    bucket = bitrate_bucket(800)  # 100 kB/s, burst 100 kB
    assert bucket is not None
    size, passed, now = 1000, 0, 0.0
    for i in range(10 * 100 * 10):  # 10 s of 1 MB/s: ten times the budget
        now = i / 1000
        passed += size if bucket.take(now, size) else 0
    assert 100_000 * 10 <= passed <= 100_000 * 11 + size
