"""bench/compare.py's accounting as tables: a point's figures and failures, the ratios,
and the Janus configuration it writes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from bench.compare import _figures, order, rounds_summary, table
from bench.servers import write_janus_config
from loadtest.__main__ import main
from loadtest.window import summarise


def _rows(media: list[int]) -> list[dict[str, Any]]:
    return [{"room": "room0", "subscriber": f"p{i}", "publisher": "p9", "kind": "video",
             "media": m, "rtx": 0, "padding": 0, "lost": 0, "expected": m, "bytes": 1000 * m}
            for i, m in enumerate(media)]


def _point(media: list[int], cpu: float = 0.5, exit_code: int = 0) -> dict[str, Any]:
    doc = {"window": summarise(_rows(media), 0, 10.0, 500), "participants": [],
           "generator": {"cpu_pct": 3.0}, "failures": []}
    marks = {"window_start": {"t": 100.0, "cpu": 2.0, "machine": (0, 0)},
             "window_end": {"t": 110.0, "cpu": 2.0 + cpu, "machine": (10, 100)}}
    return _figures("janus", 2, doc, marks, {"loadtest_exit_code": exit_code,
                                              "loadtest_stderr": [],
                                              "server_alive_at_end": True})


def test_a_point_is_cpu_over_the_media_packets_of_its_window() -> None:
    r = _point([1000, 1500])
    assert r["us_per_forwarded_packet"] == 200.0  # 0.5 s / 2500 packets
    assert r["server_cpu_pct"] == 5.0 and r["forwarded_per_s"] == 250.0
    assert r["packets_in_per_s"] == 50.0 and r["machine_busy_pct"] == 10.0
    assert "error" not in r


def test_a_subscription_without_packets_fails_the_point_loudly() -> None:
    r = _point([1000, 0])
    assert r["error"].startswith("1 subscription(s) received nothing in the window: room0/p1")
    assert "load test exit code 1" in _point([1000, 1000], exit_code=1)["error"]


def test_table_ratios() -> None:
    results = [{"target": t, "participants": 4, "us_per_forwarded_packet": us}
               for t, us in (("mediaserver", 30.0), ("janus", 60.0), ("relay", 900.0))]
    assert table(results, [4]) == [{"participants": 4, "mediaserver_us": 30.0,
                                    "janus_us": 60.0, "relay_us": 900.0,
                                    "ours_over_janus": 0.5, "relay_over_ours": 30.0}]
    assert table([], [7])[0]["ours_over_janus"] is None


def test_rounds_alternate_the_servers_order() -> None:
    targets = ["mediaserver", "janus", "relay"]
    assert order(targets, 0) == targets and order(targets, 2) == targets
    assert order(targets, 1) == ["relay", "janus", "mediaserver"]
    assert targets == ["mediaserver", "janus", "relay"]  # not reversed in place


def test_rounds_summary_takes_the_median_of_the_rounds_with_a_figure() -> None:
    def rows(us: dict[str, float | None]) -> list[dict[str, Any]]:
        return table([{"target": t, "participants": 2, "us_per_forwarded_packet": v}
                      for t, v in us.items()], [2])

    by_round = [rows({"mediaserver": 60.0, "janus": 100.0, "relay": 600.0}),
                rows({"mediaserver": 70.0, "janus": 100.0, "relay": 1400.0}),
                rows({"mediaserver": 45.0, "janus": 100.0}),
                rows({"mediaserver": 50.0, "janus": None})]  # Janus failed that round
    (s,) = rounds_summary(by_round, [2])
    assert s["ours_over_janus"] == [0.6, 0.7, 0.45, None]
    assert s["ours_over_janus_median"] == 0.6  # of 0.6, 0.7, 0.45
    assert s["relay_over_ours_median"] == 15.0  # of 10 and 20
    assert rounds_summary([rows({"mediaserver": 50.0})], [2])[0][
        "ours_over_janus_median"] is None


def test_janus_config_loads_only_videoroom_and_websockets(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    for sub, name in (("plugins", "libjanus_videoroom.so"), ("plugins", "libjanus_sip.so"),
                      ("transports", "libjanus_websockets.so"),
                      ("transports", "libjanus_http.so")):
        (lib / sub).mkdir(parents=True, exist_ok=True)
        (lib / sub / name).touch()
    conf = tmp_path / "conf"
    write_janus_config(conf, 18188, lib, "192.0.2.7")
    assert sorted(p.name for p in (conf / "plugins").iterdir()) == ["libjanus_videoroom.so"]
    assert sorted(p.name for p in (conf / "transports").iterdir()) == [
        "libjanus_websockets.so"]
    core = (conf / "janus.jcfg").read_text()
    assert 'ice_enforce_list = "192.0.2.7"' in core and "stun" not in core
    ws = (conf / "janus.transport.websockets.jcfg").read_text()
    assert 'ws_ip = "127.0.0.1"' in ws and "ws_port = 18188" in ws
    assert "string_ids = true" in (conf / "janus.plugin.videoroom.jcfg").read_text()


def test_load_test_drives_janus_in_cheap_mode_only() -> None:
    assert main(["--target", "janus"]) == 2  # full mode would decode: not for Janus


def test_window_overlap_is_the_common_span_over_the_covered_span() -> None:
    from bench.compare import window_overlap
    cases = [
        ([(0.0, 30.0), (0.0, 30.0)], 1.0),
        ([(0.0, 30.0), (3.0, 33.0)], 0.818),  # 27 s common of 33 s covered
        ([(0.0, 10.0), (20.0, 30.0)], 0.0),  # apart: nothing in common, not negative
        ([(0.0, 30.0)], 1.0),
        ([], None),
        ([(5.0, 5.0), (5.0, 5.0)], None),  # no span at all
    ]
    for spans, expected in cases:
        assert window_overlap(spans) == expected, spans


def test_servers_pinned_through_taskset_keep_the_commands_pid() -> None:
    import shutil
    import subprocess

    from bench.servers import pinned
    assert pinned(["x", "-y"], None) == ["x", "-y"]
    if shutil.which("taskset") is None:
        print("taskset missing: the command runs unpinned")
        assert pinned(["x"], "0") == ["x"]
        return
    assert pinned(["x", "-y"], "1") == ["taskset", "-c", "1", "x", "-y"]
    # taskset execs the command: the pid measured is the server's, not a wrapper's
    proc = subprocess.Popen(pinned(["sh", "-c", "echo $$"], "0"), stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=10)
    assert int(out) == proc.pid


def test_a_point_splits_user_and_system_and_counts_wakeups_per_packet() -> None:
    doc = {"window": summarise(_rows([1000, 1500]), 0, 10.0, 500), "participants": [],
           "generator": {"cpu_pct": 3.0}, "failures": []}
    split0 = {"user_s": 1.0, "system_s": 1.0, "threads": {"1/1": 40, "1/2": 60}}
    split1 = {"user_s": 1.3, "system_s": 1.1, "threads": {"1/1": 290, "1/2": 1060}}
    marks = {"window_start": {"t": 100.0, "cpu": 2.0, "machine": (0, 0), "split": split0},
             "window_end": {"t": 110.0, "cpu": 2.4, "machine": (10, 100), "split": split1}}
    r = _figures("mediaserver", 2, doc, marks, {"loadtest_exit_code": 0,
                                                "loadtest_stderr": [],
                                                "server_alive_at_end": True})
    assert r["user_share"] == 0.75  # 0.3 s of 0.4
    assert r["wakeups_per_packet"] == 0.5  # 1,250 wake-ups for 2,500 packets
    assert _point([1000])["user_share"] is None  # marks without a split: no figure


def test_the_split_of_a_live_process_tree() -> None:
    import os
    import threading

    from bench.servers import process_tree_split, wakeups_between
    s = process_tree_split(os.getpid())
    assert s["user_s"] > 0 and s["system_s"] >= 0
    assert all(n >= 0 for n in s["threads"].values())
    assert f"{os.getpid()}/{threading.get_native_id()}" in s["threads"]
    assert process_tree_split(2**22 + 12345) == {"user_s": 0.0, "system_s": 0.0,
                                                 "threads": {}}
    # A thread that sleeps and wakes many times and then exits between two readings: the
    # totals fall, the wake-ups between them do not go negative.
    started, stop = threading.Event(), threading.Event()

    def sleeper() -> None:
        started.set()
        while not stop.wait(0.001):
            pass

    t = threading.Thread(target=sleeper)
    t.start()
    assert started.wait(5)
    key = f"{os.getpid()}/{t.native_id}"
    deadline = time.monotonic() + 30
    before = process_tree_split(os.getpid())
    while before["threads"].get(key, 0) <= 200 and time.monotonic() < deadline:
        time.sleep(0.05)
        before = process_tree_split(os.getpid())
    stop.set()
    t.join()
    # join() returns once Python is done with the thread; the OS thread (and its /proc
    # entry) may outlive that by a moment.
    after = process_tree_split(os.getpid())
    while key in after["threads"] and time.monotonic() < deadline:
        time.sleep(0.01)
        after = process_tree_split(os.getpid())
    assert before["threads"].get(key, 0) > 200 and key not in after["threads"]
    # what the difference of the totals would give
    assert sum(after["threads"].values()) < sum(before["threads"].values())
    assert wakeups_between(before, after) >= 0


@pytest.mark.parametrize("start, end, expected", [
    # each thread's increase
    ({"threads": {"1/1": 10, "1/2": 20}}, {"threads": {"1/1": 15, "1/2": 30}}, 15),
    # a thread exited in between: its count goes, the others' increase stays (the
    # totals' difference would be 15 - 1010)
    ({"threads": {"1/1": 10, "1/2": 1000}}, {"threads": {"1/1": 15}}, 5),
    # a thread born in between counts from 0
    ({"threads": {"1/1": 10}}, {"threads": {"1/1": 12, "1/3": 10}}, 12),
    # a child process's threads, keyed apart from the parent's of the same tid
    ({"threads": {"1/7": 10}}, {"threads": {"1/7": 11, "2/7": 3}}, 4),
    # every thread of the first reading gone, new ones in their place: never below 0
    ({"threads": {"1/1": 100}}, {"threads": {"1/2": 40}}, 40),
])
def test_wakeups_between_two_readings(start: dict, end: dict, expected: int) -> None:
    from bench.servers import wakeups_between
    assert wakeups_between(start, end) == expected
