"""Pure helpers of bench/capacity.py: histogram quantiles between two scrapes, room split."""

from __future__ import annotations

import math

import pytest

from bench.capacity import quantile, split

INF = math.inf


@pytest.mark.parametrize("before,after,q,expected", [
    # 10 observations, all in (1, 2]: the median interpolates to the middle of that bucket
    ([(1.0, 0), (2.0, 0), (INF, 0)], [(1.0, 0), (2.0, 10), (INF, 10)], 0.5, 1.5),
    # only the difference between the scrapes counts
    ([(1.0, 5), (2.0, 5), (INF, 5)], [(1.0, 5), (2.0, 15), (INF, 15)], 0.5, 1.5),
    # half in the first bucket (from 0), half in the second
    ([(1.0, 0), (2.0, 0), (INF, 0)], [(1.0, 5), (2.0, 10), (INF, 10)], 0.25, 0.5),
    ([(1.0, 0), (2.0, 0), (INF, 0)], [(1.0, 5), (2.0, 10), (INF, 10)], 0.99, 1.98),
    # beyond the last finite bound: that bound, not infinity
    ([(1.0, 0), (2.0, 0), (INF, 0)], [(1.0, 0), (2.0, 0), (INF, 4)], 0.5, 2.0),
])
def test_quantile(before: list[tuple[float, float]], after: list[tuple[float, float]],
                  q: float, expected: float) -> None:
    assert quantile(before, after, q) == pytest.approx(expected)


def test_quantile_without_observations() -> None:
    rows = [(1.0, 3.0), (INF, 3.0)]
    assert quantile(rows, rows, 0.5) is None


@pytest.mark.parametrize("rooms,parts,expected", [
    (10, 1, [10]), (10, 3, [4, 3, 3]), (2, 4, [1, 1]), (1, 1, [1]), (5, 0, [5]),
])
def test_split(rooms: int, parts: int, expected: list[int]) -> None:
    assert split(rooms, parts) == expected


def test_profile_shares_count_a_function_once_per_stack() -> None:
    from bench.capacity import profile_shares

    lines = [
        "run (loop.py:1);recv (a.py:2);send (a.py:9) 6\n",
        "run (loop.py:1);recv (a.py:2);recv (a.py:3) 2\n",  # recursion: once
        "run (loop.py:1) 2\n",
        "garbage line\n",
    ]
    shares = dict(profile_shares(lines))
    assert shares == {"run": 1.0, "recv": 0.8, "send": 0.6}
    assert profile_shares([]) == []


def test_profile_own_shares_are_the_innermost_frames() -> None:
    from bench.capacity import profile_shares

    lines = ["run (l.py:1);recv (a.py:2);send (a.py:9) 6\n", "run (l.py:1) 4\n"]
    assert dict(profile_shares(lines, own=True)) == {"send": 0.6, "run": 0.4}
