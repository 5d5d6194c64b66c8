"""Helpers of bench/capacity.py: histogram quantiles between two scrapes, room split, the
profiles it prints."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.capacity import hook_env, quantile, split

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


def _between_two_signals(tmp_path: Path, before: str, during: str, **flag: str) -> Path:
    """Run ``before``, then ``during`` between two SIGUSR2, in a Python started with the
    environment ``hook_env`` gives a server for ``flag`` (cprofile= or activity_cpu=);
    the path the hook writes to."""
    args = argparse.Namespace(**{"cprofile": None, "activity_cpu": None, **flag})
    env = hook_env(args, 1, tmp_path)
    assert env is not None
    signal = "os.kill(os.getpid(), signal.SIGUSR2)\n"
    subprocess.run([sys.executable, "-c", "import os, signal\n" + before + signal + during
                    + signal], check=True, timeout=120, env=env)
    return Path(f"{next(iter(flag.values()))}.1")


def test_cprofile_roots_are_what_nothing_profiled_called(tmp_path: Path) -> None:
    import cProfile

    from bench.capacity import loop_roots

    def leaf() -> int:
        return sum(range(2000))

    def step() -> int:
        return leaf() + leaf()

    profile = cProfile.Profile()
    profile.enable()
    for _ in range(5):
        step()
    leaf()
    profile.disable()
    path = tmp_path / "stats"
    profile.dump_stats(path)
    roots = {name.split("(")[1].rstrip(")"): calls for name, calls, _ in loop_roots(str(path))}
    assert roots["step"] == 5 and "leaf" not in roots  # leaf was also called by step
    every = {name.split("(")[1].rstrip(")"): calls
             for name, calls, _ in loop_roots(str(path), roots_only=False)}
    assert every["leaf"] == 11

    # The hook a server gets on its PYTHONPATH: SIGUSR2 on, SIGUSR2 off and stats written.
    out = _between_two_signals(tmp_path, "", "def work():\n    return sum(range(10000))\n"
                               "work(); work()\n", cprofile=str(tmp_path / "server.prof"))
    names = [name for name, _, _ in loop_roots(str(out), roots_only=False)]
    assert any(name.endswith("(work)") for name in names)


def test_the_activity_hook_times_the_listed_calls_between_two_signals(tmp_path: Path) -> None:
    import json

    from bench.capacity import activity_rows

    out = _between_two_signals(
        tmp_path,
        "from mediaserver.metrics import LagProbe\n"
        "probe = LagProbe()\n"
        "probe.sample(0.0, 0.0)  # before the window: not counted\n",
        "for i in range(5):\n    probe.sample(0.001, float(i))\n"
        "import asyncio\n"
        "from mediaserver.rooms.room import Room\n"
        "from mediaserver.sfu.aiortc_adapter import CandidatePolicy\n"
        "room = Room('r', 'group', 16, CandidatePolicy(addresses=('127.0.0.1',)),\n"
        "            empty_timeout=60, max_duration=3600)\n"
        "asyncio.run(room.tick(room.started + 1.0))\n",
        activity_cpu=str(tmp_path / "activity.json"))
    doc = json.loads(out.read_text())
    assert doc["missing"] == []  # every listed entry point exists
    assert doc["activities"]["loop-lag sample"][0] == 5
    # A coroutine is timed through its awaits: the room's tick, and the step inside it.
    assert doc["activities"]["a room's tick, whole (its steps above inside it)"][0] == 1
    assert doc["activities"]["speaker detection: a room's tick"][0] == 1
    assert doc["seconds"] > 0 and doc["thread_cpu"] > 0
    rows = activity_rows({"seconds": 2.0, "thread_cpu": 0.5,
                          "activities": {"a": [10, 0.1], "b": [4, 0.2]}})
    assert rows == [("b", 2.0, 50000.0, 0.4), ("a", 5.0, 10000.0, 0.2)]
