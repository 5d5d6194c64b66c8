"""The room's control task drives what used to wake the loop on timers of its own: each
connection's RTCP report when due, and a long step's pauses only once it has run a while."""

from __future__ import annotations

import asyncio
import time

import pytest

from mediaserver.rooms import room as room_module
from mediaserver.rooms.room import Room, _Slicer
from mediaserver.sfu import aiortc_adapter
from mediaserver.sfu.transport import RTCP_INTERVAL, PublisherTransport


async def test_a_report_goes_out_when_due_then_at_the_next_report_step() -> None:
    transport = PublisherTransport(aiortc_adapter.CandidatePolicy(addresses=("127.0.0.1",)))
    sent: list[bytes] = []
    times: list[float] = []

    def report(now: float) -> bytes:
        times.append(now)
        return b"report"

    transport.rtcp_report = report  # type: ignore[method-assign]
    transport.send_rtcp = lambda data: sent.append(data) is None  # type: ignore[method-assign]
    try:
        transport.rtcp_tick(5.0)  # not connected yet: nothing is due
        assert sent == []
        transport._next_rtcp = 10.0
        transport.rtcp_tick(9.99)
        assert sent == []
        transport.rtcp_tick(10.0)
        assert sent == [b"report"] and times == [10.0]
        due = transport._next_rtcp
        assert due == 10.0 + RTCP_INTERVAL / 2
        transport.rtcp_tick(due - 0.01)
        assert len(sent) == 1
        transport.rtcp_tick(10.0 + RTCP_INTERVAL)  # the next step
        assert len(sent) == 2 and times == [10.0, 10.0 + RTCP_INTERVAL]
    finally:
        await transport.close()
    transport.rtcp_tick(1e9)  # a closed connection sends nothing
    assert len(sent) == 2


async def test_a_report_with_nothing_to_say_sends_nothing_and_waits_its_turn() -> None:
    transport = PublisherTransport(aiortc_adapter.CandidatePolicy(addresses=("127.0.0.1",)))
    sent: list[bytes] = []
    transport.send_rtcp = lambda data: sent.append(data) is None  # type: ignore[method-assign]
    try:
        transport._next_rtcp = 1.0
        transport.rtcp_tick(1.0)  # no streams yet: rtcp_report is None
        assert sent == []
        assert transport._next_rtcp is not None and transport._next_rtcp > 1.0
    finally:
        await transport.close()


async def test_the_room_sends_reports_at_its_quality_step_only() -> None:
    room = Room("r", "group", 16, aiortc_adapter.CandidatePolicy(addresses=("127.0.0.1",)),
                empty_timeout=60, max_duration=3600)
    steps: list[float] = []
    room._rtcp_reports = steps.append  # type: ignore[method-assign]
    start = room.started
    ticks = [start + room_module.TICK * i for i in range(1, 10)]
    for now in ticks:
        await room.tick(now)
    # The first tick runs the quality step, then every QUALITY_INTERVAL (= RTCP_INTERVAL).
    per_step = round(room_module.QUALITY_INTERVAL / room_module.TICK)
    assert len(steps) == len(ticks[::per_step]) == 3
    assert room_module.QUALITY_INTERVAL == RTCP_INTERVAL


async def _others_ran(slicer: _Slicer, pauses: int) -> int:
    ran = 0

    async def other() -> None:
        nonlocal ran
        while True:
            ran += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    await asyncio.sleep(0)  # the other task starts
    start = ran
    for _ in range(pauses):
        await slicer.pause()
    task.cancel()
    return ran - start


async def test_a_short_step_keeps_the_loop_a_long_one_gives_it_back(monkeypatch) -> None:
    monkeypatch.setattr(room_module, "STEP_SLICE", 3600.0)
    assert await _others_ran(_Slicer(), 20) == 0
    monkeypatch.setattr(room_module, "STEP_SLICE", 0.0)
    assert await _others_ran(_Slicer(), 20) == 20


@pytest.mark.parametrize("elapsed, yields", [(0.0, False), (room_module.STEP_SLICE, True)])
async def test_the_slice_counts_from_the_last_pause(monkeypatch, elapsed, yields) -> None:
    clock = [100.0]
    monkeypatch.setattr(room_module.time, "perf_counter", lambda: clock[0])
    slicer = _Slicer()
    clock[0] += elapsed
    assert await _others_ran(slicer, 1) == (1 if yields else 0)


async def test_the_loop_lag_goes_to_the_probe_once_a_quality_step(monkeypatch) -> None:
    class Probe:
        def __init__(self) -> None:
            self.samples: list[tuple[float, float]] = []
            self.reporting = 0

        def reporter_started(self) -> None:
            self.reporting += 1

        def reporter_stopped(self) -> None:
            self.reporting -= 1

        def sample(self, lag: float, now: float) -> None:
            self.samples.append((lag, now))
            if len(self.samples) == 2:  # while the room's task sleeps, hold the loop 50 ms
                asyncio.get_running_loop().call_later(0.002, hold)
            if len(self.samples) >= 5:
                enough.set()

    def hold() -> None:
        until = time.perf_counter() + 0.05
        while time.perf_counter() < until:  # blocking work, on purpose: a late tick
            pass

    enough = asyncio.Event()
    probe = Probe()
    monkeypatch.setattr(room_module.metrics, "LAG_PROBE", probe)
    monkeypatch.setattr(room_module, "TICK", 0.01)
    monkeypatch.setattr(room_module, "QUALITY_INTERVAL", 0.04)
    room = Room("r", "group", 16, aiortc_adapter.CandidatePolicy(addresses=("127.0.0.1",)),
                empty_timeout=3600, max_duration=3600)
    quality_steps: list[float] = []

    async def quality_step(now: float) -> None:
        quality_steps.append(now)

    room._quality_step = quality_step  # type: ignore[method-assign]

    async def closed() -> None:
        pass

    task = asyncio.create_task(room.run(closed))
    await asyncio.wait_for(enough.wait(), timeout=30)
    room.closed = True
    await task
    assert probe.reporting == 0
    # One sample per quality step, at its time, each the worst oversleep since the last:
    # the stalled tick's shows in exactly one sample, after the first two.
    assert [now for _, now in probe.samples] == quality_steps[:len(probe.samples)]
    late = [i for i, (lag, _) in enumerate(probe.samples) if lag >= 0.04]
    assert len(late) == 1 and late[0] >= 2, probe.samples
