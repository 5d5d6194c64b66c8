"""Gaps in what a shaped-link subscriber received, less the time its own process stood still."""

from __future__ import annotations

import asyncio
import time

import pytest

from loadtest.shaped import STALL_MIN, STALL_TICK, net_gap, watch_stalls
from tests.conftest import wait_until


@pytest.mark.parametrize(("start", "end", "stalls", "expected"), [
    (0.0, 0.3, [], 0.3),                        # no stall: the whole gap
    (0.0, 0.3, [(0.05, 0.25)], 0.1),            # a stall inside the gap
    (0.0, 0.3, [(-1.0, 0.1)], 0.2),             # a stall that began before it
    (0.0, 0.3, [(0.2, 1.0)], 0.2),              # one that ended after it
    (0.0, 0.3, [(-1.0, 2.0)], 0.0),             # one that covers it
    (0.0, 0.3, [(0.3, 0.5), (-0.5, 0.0)], 0.3),  # stalls that only touch it
    (0.0, 0.3, [(0.0, 0.1), (0.2, 0.25)], 0.15),  # two inside
    (1.0, 1.02, [(0.0, 0.5)], 0.02),            # one long before
])
def test_net_gap(start: float, end: float, stalls: list[tuple[float, float]],
                 expected: float) -> None:
    assert net_gap(start, end, stalls) == pytest.approx(expected)


def _hold(seconds: float) -> tuple[float, float]:
    """Keep the running loop from running for ``seconds``: the stall under test."""
    held_from = time.time()
    time.sleep(seconds)
    return held_from, time.time()


async def test_a_blocked_loop_is_seen_as_a_stall() -> None:
    stalls: list[tuple[float, float]] = []
    watcher = asyncio.ensure_future(watch_stalls(stalls))
    try:
        ticks = [0]

        def ticked() -> bool:
            ticks[0] += 1
            return ticks[0] > 5

        await wait_until(ticked, interval=STALL_TICK)  # the watcher runs first
        before = len(stalls)
        held_from, held_to = _hold(0.3)
        await wait_until(lambda: len(stalls) > before, timeout=10)
    finally:
        watcher.cancel()
    a, b = stalls[before]
    # The stall found covers the hold, give or take one tick of the watcher.
    assert a <= held_from + STALL_TICK and b >= held_to, (stalls, held_from, held_to)
    assert b - a >= 0.3 - STALL_TICK - STALL_MIN
