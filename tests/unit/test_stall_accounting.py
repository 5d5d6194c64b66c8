"""Gaps in what a shaped-link subscriber received, less the time its own process stood still
(and the time the machine did not run the server's)."""

from __future__ import annotations

import asyncio
import time

import pytest

from loadtest.shaped import STALL_MIN, STALL_TICK, descheduled, net_gap, watch_stalls
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


def _hold(seconds: float, busy: bool = False) -> tuple[float, float]:
    """Keep the running loop from running for ``seconds``: the stall under test. Asleep, as
    a process the machine does not run; ``busy``, as code that holds the loop up."""
    held_from = time.time()
    if busy:
        while time.time() - held_from < seconds:
            pass
    else:
        time.sleep(seconds)
    return held_from, time.time()


async def _first_reading() -> None:
    """Let a watcher just started take its first clock readings (it runs up to its first
    await), so that a hold after this falls inside what it watches."""
    await asyncio.sleep(0)


@pytest.mark.parametrize(("stalls", "cpu", "expected"), [
    ([], [], []),
    ([(1.0, 1.2)], [0.0], [(1.0, 1.2)]),  # not run at all
    ([(1.0, 1.2)], [0.09], [(1.0, 1.2)]),  # less than half
    ([(1.0, 1.2)], [0.1], []),  # half of it in CPU: its own code
    ([(1.0, 1.2)], [0.25], []),  # more than the stall (two threads)
    ([(1.0, 1.2), (3.0, 3.4)], [0.2, 0.01], [(3.0, 3.4)]),
])
def test_descheduled(stalls: list[tuple[float, float]], cpu: list[float],
                     expected: list[tuple[float, float]]) -> None:
    assert descheduled(stalls, cpu) == expected


@pytest.mark.parametrize("busy", [False, True], ids=["asleep", "busy"])
async def test_the_watcher_tells_a_process_not_run_from_a_loop_held_up(busy: bool) -> None:
    stalls: list[tuple[float, float]] = []
    cpu: list[float] = []
    watcher = asyncio.ensure_future(watch_stalls(stalls, cpu))
    try:
        await _first_reading()
        before = len(stalls)
        _hold(0.3, busy)
        await wait_until(lambda: len(stalls) > before, timeout=10)
    finally:
        watcher.cancel()
    assert len(cpu) == len(stalls)
    found = stalls[before:before + 1]
    assert descheduled(found, cpu[before:before + 1]) == ([] if busy else found), (stalls, cpu)


async def test_a_blocked_loop_is_seen_as_a_stall() -> None:
    stalls: list[tuple[float, float]] = []
    watcher = asyncio.ensure_future(watch_stalls(stalls))
    try:
        await _first_reading()
        before = len(stalls)
        held_from, held_to = _hold(0.3)
        await wait_until(lambda: len(stalls) > before, timeout=10)
    finally:
        watcher.cancel()
    a, b = stalls[before]
    # The stall found covers the hold, give or take one tick of the watcher.
    assert a <= held_from + STALL_TICK and b >= held_to, (stalls, held_from, held_to)
    assert b - a >= 0.3 - STALL_TICK - STALL_MIN
