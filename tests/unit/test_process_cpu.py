"""The benchmarks' CPU figure of a server process: to the nanosecond, threads included."""

from __future__ import annotations

import os
import subprocess
import sys

from bench.servers import process_cpu_clock, process_tree_cpu

SPIN = """
import threading, time
def spin(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
t = threading.Thread(target=spin, args=(0.15,))
t.start(); spin(0.15); t.join()  # a thread that ends: its time stays the process's
print("spun", flush=True)
time.sleep(30)
"""


def _stat_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_the_cpu_clock_counts_every_thread_finer_than_a_clock_tick() -> None:
    child = subprocess.Popen([sys.executable, "-c", SPIN], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "spun"
        precise = process_tree_cpu(child.pid)
        clock = process_cpu_clock(child.pid)
        assert clock is not None and abs(clock - precise) < 0.005
        assert precise >= 0.3  # both threads' spin, the ended thread's included
        # utime + stime say the same, to a clock tick or two of rounding
        assert abs(precise - _stat_seconds(child.pid)) <= 0.03
        # ... but only the clock has digits below the tick
        assert round(precise * 100) != precise * 100
    finally:
        child.kill()
        child.wait()
    assert process_cpu_clock(child.pid) is None  # gone: no clock
