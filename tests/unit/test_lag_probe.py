"""Event-loop lag measured on timers the process runs anyway (the rooms' ticks): one sample
every half second, the worst seen since the last; the monitor's own timer only while no
other timer reports."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from mediaserver import metrics
from mediaserver.metrics import LAG_INTERVAL, LagProbe, monitor_event_loop
from tests.conftest import wait_until


@pytest.fixture
def published() -> Iterator[list[float]]:
    seen: list[float] = []
    metrics.LAG_OBSERVERS.append(seen.append)
    yield seen
    metrics.LAG_OBSERVERS.remove(seen.append)


def _gauge() -> float | None:
    return metrics.REGISTRY.get_sample_value("mediaserver_event_loop_lag_seconds")


def test_one_sample_per_interval_the_worst_since_the_last(published) -> None:
    probe = LagProbe()
    t = 1000.0
    assert probe.sample(0.001, t) == 0.001  # the first is published at once
    assert _gauge() == 0.001
    for dt, lag in ((0.1, 0.020), (0.2, 0.004), (0.3, 0.002)):
        assert probe.sample(lag, t + dt) is None  # within the interval: kept, not published
    assert probe.sample(0.003, t + LAG_INTERVAL) == 0.020  # the worst since the last sample
    assert _gauge() == 0.020
    assert probe.sample(0.0, t + LAG_INTERVAL + 0.1) is None
    assert probe.sample(0.0, t + 2 * LAG_INTERVAL) == 0.0  # the worst starts over each time
    assert published == [0.001, 0.020, 0.0]


async def test_the_monitor_stands_aside_while_rooms_tick_and_resumes_when_they_stop(
        published) -> None:
    # Alone: a sample every interval (the probe publishes at most every LAG_INTERVAL).
    before = len(published)
    alone = asyncio.create_task(monitor_event_loop(LagProbe(), interval=0.02))
    await wait_until(lambda: len(published) > before, timeout=5, message="a sample, alone")
    alone.cancel()
    # A room's task reports: the monitor keeps no timer and adds nothing of its own (an
    # absence: it can only be watched for a while).
    probe = LagProbe()
    probe.reporter_started()
    probe.reporter_started()
    monitor = asyncio.create_task(monitor_event_loop(probe, interval=0.02))
    before = len(published)
    await asyncio.sleep(2 * LAG_INTERVAL + 0.2)
    assert len(published) == before
    probe.reporter_stopped()  # one of two stops: still quiet
    await asyncio.sleep(LAG_INTERVAL + 0.1)
    assert len(published) == before
    probe.reporter_stopped()  # the last one: the monitor samples again, at once
    await wait_until(lambda: len(published) > before, timeout=5,
                     message="the monitor's own sample")
    monitor.cancel()


def test_a_loop_closed_with_rooms_ticking_does_not_silence_the_next() -> None:
    probe = LagProbe()

    async def leave_one_running() -> int:
        probe.reporter_started()  # its task never got to reporter_stopped
        return probe.reporting()

    async def next_loop() -> int:
        await asyncio.wait_for(probe.quiet(), timeout=1)  # nobody reports here: at once
        return probe.reporting()

    assert asyncio.run(leave_one_running()) == 1
    assert asyncio.run(next_loop()) == 0
