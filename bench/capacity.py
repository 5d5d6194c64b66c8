"""Sessions per core: 1:1 calls or groups, stepped up until loss or latency gives out.

Each step starts a fresh server pinned to one CPU (``taskset``), so what it carries is what
one core carries (one worker process; a node runs one per core). Load-test generators
(``python -m loadtest --mode cheap``: publishers replay pre-encoded 500 kbps VP8 at 25 fps
plus Opus, subscribers count RTP before SRTP) run as separate processes pinned to the other
CPUs, each driving a share of the rooms. Everyone publishes and everyone subscribes to
everyone. Per step, over a steady window after everyone joined:

- server CPU (utime + stime from /proc) as a share of its core, and per forwarded packet;
- forwarding latency p50/p99 from the server's ``mediaserver_forwarding_latency_seconds``
  (kernel receive stamp to last copy sent, every 16th packet), interpolated in its buckets;
- packet loss seen by the subscribers, and join times (join to first audio packet);
- server RSS over its idle RSS, per participant.

A step passes when loss <= ``--max-loss``, latency p99 <= ``--max-latency-p99`` and CPU
<= ``--max-cpu``; the sweep stops at the first failing step. When a generator reports itself
saturated (its own CPU or event-loop lag), the step is marked: its figures describe the
generator, and the capacity is then estimated from the server's CPU share instead.

    .venv/bin/python -m bench.capacity --kind one_to_one --sessions 5,10,20,30
    .venv/bin/python -m bench.capacity --kind group --size 6 --sessions 1,2,4,6

``--cprofile PATH`` profiles the Python the server's event loop runs over each window with
cProfile (a ``sitecustomize`` on the server's PYTHONPATH installs a SIGUSR2 handler that
turns it on and off; the stats go to PATH.<step>) and prints what the loop called from C
(its tasks, callbacks and the packet path's calls back into Python) by cumulative time,
with call counts. cProfile slows the Python it watches about twofold, so that step's CPU
figures are not the server's; its call counts and relative shares are what it is for.

``--activity-cpu PATH`` times a fixed list of the control plane's entry points (``ACTIVITIES``:
RTCP read and reports, the quality and adaptation steps, STUN) call by call in thread CPU,
wrapped at the server's start-up by the same kind of hook: what each costs as the loop runs
it, cold caches included (an SR read costs several times what ``timeit`` says), with no
profiler slowing the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import servers
from bench.forwarding import Samples, machine, poll, scrape
from bench.servers import pinned
from loadtest.report import pct
from mediaserver import metrics

LATENCY = "mediaserver_forwarding_latency_seconds"


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (nm, lab), v in samples.items() if nm == name and want <= lab)


def buckets(samples: Samples, name: str = LATENCY) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a histogram, in bound order, summed over its
    label sets (the workers', the GC generations)."""
    counts: dict[float, float] = {}
    for (nm, lab), v in samples.items():
        if nm == f"{name}_bucket":
            le = float(dict(lab)["le"])
            counts[le] = counts.get(le, 0.0) + v
    return sorted(counts.items())


def quantile(before: list[tuple[float, float]], after: list[tuple[float, float]],
             q: float) -> float | None:
    """The q-quantile of the observations made between two scrapes, interpolated linearly
    inside its bucket (None without observations; the last finite bound if it is beyond)."""
    counts = [(le, a - b) for (le, a), (_, b) in zip(after, before, strict=True)]
    n = counts[-1][1] if counts else 0.0
    if n <= 0:
        return None
    rank, lower, below = q * n, 0.0, 0.0
    for le, cum in counts:
        if cum >= rank:
            if math.isinf(le):
                return lower
            return lower + (le - lower) * (rank - below) / max(cum - below, 1e-12)
        lower, below = le, cum
    return lower


def split(rooms: int, parts: int) -> list[int]:
    """Rooms per generator: as even as possible, no generator without a room."""
    parts = max(1, min(parts, rooms))
    return [rooms // parts + (i < rooms % parts) for i in range(parts)]


def server_cmd(port: int, workers: int) -> list[str]:
    # Every participant comes from this host, and they join fast: lift the per-address
    # connection cap and the node's join rate, which would refuse a load test.
    return [*servers.mediaserver_cmd(port, "127.0.0.1", workers),
            "--connections-per-ip", "0", "--joins-per-second", "0"]


def start_generators(step: int, args: argparse.Namespace, port: int, duration: float,
                     workdir: Path) -> list[subprocess.Popen[bytes]]:
    generators = []
    for i, rooms in enumerate(split(step, args.generators)):
        cmd = [sys.executable, "-m", "loadtest", "--url", f"ws://127.0.0.1:{port}/v1/signal",
               "--rooms", str(rooms), "--participants-per-room", str(args.size),
               "--kind", args.kind, "--video", args.video, "--mode", "cheap",
               "--ramp-up", str(args.ramp_up), "--duration", str(duration), "--quiet",
               "--json", str(workdir / f"gen{i}.json")]
        with open(workdir / f"gen{i}.log", "wb") as log:
            generators.append(subprocess.Popen(pinned(cmd, args.generator_cpus),
                                               stdout=log, stderr=subprocess.STDOUT))
    return generators


async def measure(step: int, args: argparse.Namespace, port: int,
                  server: servers.Server, workdir: Path) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    participants = step * args.size

    await servers.wait_ready(server)
    async with aiohttp.ClientSession() as http:
        idle_rss = servers.process_tree_rss(server.pid)
        duration = args.warmup + args.window + 10
        generators = start_generators(step, args, port, duration, workdir)

        async def everyone_joined() -> bool:
            for g in generators:
                if g.poll() is not None:
                    raise RuntimeError(f"a generator exited early ({g.returncode}); see "
                                       f"{workdir}")
            return total(await scrape(http, base), "mediaserver_participants") >= participants

        await poll(everyone_joined, 60 + participants / args.ramp_up * 2, "every participant")
        await asyncio.sleep(args.warmup)  # fixed warm-up: key frames, estimates settle
        tree_cpu = servers.process_tree_cpu
        m0, c0, t0 = await scrape(http, base), tree_cpu(server.pid), time.monotonic()
        spy = await start_profile(args, server.pid, step)
        hooked = bool(args.cprofile or args.activity_cpu)  # see hook_env
        if hooked:
            os.kill(server.pid, signal.SIGUSR2)  # the hook's window starts
        await asyncio.sleep(args.window)  # the measurement window itself
        if hooked:
            os.kill(server.pid, signal.SIGUSR2)  # ... and ends: its figures are written
        c1, t1, m1 = tree_cpu(server.pid), time.monotonic(), await scrape(http, base)
        if spy is not None:
            await spy.wait()
        loaded_rss = servers.process_tree_rss(server.pid)
        for g in generators:
            g.wait(timeout=duration + 120)

    docs = [json.loads((workdir / f"gen{i}.json").read_text())
            for i in range(len(generators)) if (workdir / f"gen{i}.json").exists()]
    tracks = [t for d in docs for t in d["tracks"]]
    expected = sum(d["summary"]["tracks_expected"] for d in docs)
    received = sum(d["summary"]["tracks_received"] for d in docs)
    packets = sum(t["packets"] for t in tracks)
    lost = sum(t["packets_lost"] for t in tracks)
    join_ms = [float(t["first_frame_ms"]) for t in tracks
               if t["kind"] == "audio" and t.get("first_frame_ms") is not None]
    dt = t1 - t0
    cpu = c1 - c0
    out = total(m1, "mediaserver_rtp_packets_total", direction="out") - \
        total(m0, "mediaserver_rtp_packets_total", direction="out")
    inn = total(m1, "mediaserver_rtp_packets_total", direction="in") - \
        total(m0, "mediaserver_rtp_packets_total", direction="in")
    b0, b1 = buckets(m0), buckets(m1)
    p50, p99 = quantile(b0, b1, 0.5), quantile(b0, b1, 0.99)
    saturated = [r for d in docs for r in d["generator"]["reasons"]]
    gc_name = "mediaserver_gc_pause_seconds"
    g0, g1 = buckets(m0, gc_name), buckets(m1, gc_name)
    l0 = buckets(m0, "mediaserver_event_loop_lag_distribution_seconds")
    l1 = buckets(m1, "mediaserver_event_loop_lag_distribution_seconds")
    gc_max = quantile(g0, g1, 1.0)
    control = "mediaserver_control_cpu_seconds_total"
    control_cpu = {step: total(m1, control, step=step) - total(m0, control, step=step)
                   for step in metrics.CONTROL_STEPS}
    lag_p99 = quantile(l0, l1, 0.99)
    return {
        "sessions": step, "participants": participants,
        "packets_in_per_s": inn / dt, "packets_out_per_s": out / dt,
        "server_cpu_pct": 100 * cpu / dt,
        "us_per_forwarded_packet": cpu * 1e6 / out if out else None,
        "latency_p50_ms": None if p50 is None else p50 * 1e3,
        "latency_p99_ms": None if p99 is None else p99 * 1e3,
        "latency_samples": (b1[-1][1] - b0[-1][1]) if b1 else 0,
        "loss": lost / (packets + lost) if packets + lost else None,
        "tracks": f"{received}/{expected}",
        "join_audio_ms_p50": pct(join_ms, 50),
        "join_audio_ms_p95": pct(join_ms, 95),
        "rss_idle_mb": idle_rss / 2**20, "rss_loaded_mb": loaded_rss / 2**20,
        "mb_per_participant": (loaded_rss - idle_rss) / 2**20 / participants,
        "gc_pauses": (g1[-1][1] - g0[-1][1]) if g1 and g0 else 0,
        "gc_pause_max_ms": None if gc_max is None else gc_max * 1e3,
        "loop_lag_p99_ms": None if lag_p99 is None else lag_p99 * 1e3,
        # The control plane's steps, each as a share of the server's CPU in the window.
        "control_pct": {k: 100 * v / cpu if cpu > 0 else None for k, v in control_cpu.items()},
        "generator_cpu_pct": [d["generator"]["cpu_pct"] for d in docs],
        "generator_saturated": sorted(set(saturated)),
    }


async def start_profile(args: argparse.Namespace, pid: int, step: int
                        ) -> asyncio.subprocess.Process | None:
    """py-spy sampling the server over the window (``--profile``), raw stacks to a file."""
    if not args.profile:
        return None
    path = f"{args.profile}.{step}"
    return await asyncio.create_subprocess_exec(
        args.py_spy, "record", "--pid", str(pid), "--rate", "1000", "--duration",
        str(int(args.window)), "--nonblocking", "--format", "raw", "-o", path,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)


def profile_shares(lines: list[str], top: int = 25, own: bool = False
                   ) -> list[tuple[str, float]]:
    """From py-spy's raw output ("frame;frame;... count" per stack): each function's share
    of the samples, inclusive (a function counted once per stack) or, with ``own``, only
    where it is the innermost Python frame (its own code and the C it calls), largest first."""
    counts: dict[str, int] = {}
    total = 0
    for line in lines:
        stack, _, n = line.rstrip().rpartition(" ")
        if not stack or not n.isdigit():
            continue
        total += int(n)
        frames = [frame.split(" (")[0] for frame in stack.split(";")]
        for name in frames[-1:] if own else set(frames):
            counts[name] = counts.get(name, 0) + int(n)
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return [(name, n / total) for name, n in ranked] if total else []


def print_profile(path: str) -> None:
    with open(path) as f:
        lines = f.readlines()
    samples = sum(int(ln.rsplit(" ", 1)[1]) for ln in lines if ln.rstrip()[-1:].isdigit())
    for own, what in ((False, "inclusive"), (True, "own")):
        print(f"# py-spy, {what} share of the server's {samples} busy samples ({path}):")
        for name, share in profile_shares(lines, 25 if not own else 12, own):
            print(f"#   {100 * share:5.1f} %  {name}")


def verdict(row: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Why a step failed (empty: it passed)."""
    why = []
    if row["tracks"].split("/")[0] != row["tracks"].split("/")[1]:
        why.append(f"tracks {row['tracks']}")
    if row["loss"] is None or row["loss"] > args.max_loss:
        why.append(f"loss {row['loss']}")
    if row["latency_p99_ms"] is None or row["latency_p99_ms"] > args.max_latency_p99:
        why.append(f"latency p99 {row['latency_p99_ms']}")
    if row["server_cpu_pct"] > args.max_cpu:
        why.append(f"cpu {row['server_cpu_pct']:.0f}%")
    return why


CPROFILE_ENV = "MEDIASERVER_BENCH_CPROFILE"
CPROFILE_HOOK = f"""import os, signal
if os.environ.get("{CPROFILE_ENV}"):
    import cProfile
    _on = []
    def _toggle(signum, frame):
        if not _on:
            _on.append(cProfile.Profile())
            _on[0].enable()
        else:
            p = _on.pop()
            p.disable()
            p.dump_stats(os.environ["{CPROFILE_ENV}"])
    signal.signal(signal.SIGUSR2, _toggle)
"""


ACTIVITY_ENV = "MEDIASERVER_BENCH_ACTIVITY"
# What the loop runs of the control plane, one call at a time: (module, class, method, what
# one call is). Nested ones count inside their callers too (a STUN answer's send).
ACTIVITIES = (
    ("mediaserver.sfu.transport", "PeerTransport", "on_rtcp", "RTCP read: a compound packet"),
    ("mediaserver.sfu.transport", "PeerTransport", "rtcp_tick",
     "RTCP reports: a connection, at a room tick"),
    ("mediaserver.quality.monitor", "ParticipantQuality", "update",
     "quality step: a participant's links"),
    ("mediaserver.sfu.adaptation", "SubscriberAdaptation", "step",
     "adaptation step: a subscriber"),
    ("mediaserver.sfu.producer", "RecvStream", "_close_window",
     "a stream's rate window closed"),
    ("mediaserver.metrics", "LagProbe", "sample", "loop-lag sample"),
    ("mediaserver.rooms.room", "Room", "tick",
     "a room's tick, whole (its steps above inside it)"),
    ("mediaserver.sfu.speakers", "SpeakerDetector", "tick", "speaker detection: a room's tick"),
    ("aioice.ice", "StunProtocol", "datagram_received", "STUN read (and answered)"),
    ("aioice.ice", "Connection", "build_request", "ICE consent request built"),
    ("aioice.ice", "StunProtocol", "send_stun", "STUN sent"),
)
ACTIVITY_HOOK = f"""import os
if os.environ.get("{ACTIVITY_ENV}"):
    import functools, importlib, inspect, json, signal, time
    _calls, _window, _missing = {{}}, [], []
    def _count(label, started):
        entry = _calls.setdefault(label, [0, 0.0])
        entry[0] += 1
        entry[1] += time.thread_time() - started
    def _timed(f, label):
        if inspect.iscoroutinefunction(f):  # its awaits count too: for steps that rarely wait
            @functools.wraps(f)
            async def timed_async(*args, **kwargs):
                started = time.thread_time()
                try:
                    return await f(*args, **kwargs)
                finally:
                    _count(label, started)
            return timed_async
        @functools.wraps(f)
        def timed(*args, **kwargs):
            started = time.thread_time()
            try:
                return f(*args, **kwargs)
            finally:
                _count(label, started)
        return timed
    # At start-up, before any object captures a bound method (the C receiver does).
    for _module, _cls, _name, _label in {ACTIVITIES!r}:
        try:
            _owner = getattr(importlib.import_module(_module), _cls)
            setattr(_owner, _name, _timed(getattr(_owner, _name), _label))
        except (ImportError, AttributeError):
            _missing.append(_label)
    def _toggle(signum, frame):
        if not _window:
            _calls.clear()
            _window.append((time.monotonic(), time.thread_time()))
            return
        started, cpu = _window.pop()
        with open(os.environ["{ACTIVITY_ENV}"], "w") as out:
            json.dump({{"seconds": time.monotonic() - started,
                       "thread_cpu": time.thread_time() - cpu,
                       "activities": _calls, "missing": _missing}}, out)
    signal.signal(signal.SIGUSR2, _toggle)
"""


def hook_env(args: argparse.Namespace, step: int, workdir: Path) -> dict[str, str] | None:
    """The server's environment with the hook of ``--cprofile`` or ``--activity-cpu`` on
    its PYTHONPATH (a ``sitecustomize``; SIGUSR2 starts and ends its window), or None."""
    if args.cprofile:
        code, env, out = CPROFILE_HOOK, CPROFILE_ENV, args.cprofile
    elif args.activity_cpu:
        code, env, out = ACTIVITY_HOOK, ACTIVITY_ENV, args.activity_cpu
    else:
        return None
    hook = workdir / "bench-hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(code)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, env: os.path.abspath(f"{out}.{step}"),
            "PYTHONPATH": str(hook) + (os.pathsep + path if path else "")}


def activity_rows(doc: dict[str, Any]) -> list[tuple[str, float, float, float]]:
    """From the hook's JSON: (activity, calls a second, us of thread CPU a call, share of
    the loop thread's CPU), largest share first."""
    seconds, cpu = doc["seconds"], doc["thread_cpu"]
    rows = [(label, calls / seconds, 1e6 * spent / calls if calls else 0.0,
             spent / cpu if cpu > 0 else 0.0)
            for label, (calls, spent) in doc["activities"].items()]
    return sorted(rows, key=lambda r: -r[3])


def print_activity(path: str) -> None:
    doc = json.loads(Path(path).read_text())
    print(f"# thread CPU of the control plane's Python, call by call ({path}; the loop's "
          f"thread: {1e3 * doc['thread_cpu'] / doc['seconds']:.2f} ms a second):")
    for label, rate, each, share in activity_rows(doc):
        print(f"#   {100 * share:5.1f} %  {rate:7.2f}/s  {each:7.1f} us each  {label}")
    if doc.get("missing"):
        print(f"#   not found, not timed: {', '.join(doc['missing'])}")


def loop_roots(path: str, top: int | None = 20, roots_only: bool = True
               ) -> list[tuple[str, int, float]]:
    """From cProfile stats: the functions nothing profiled called (what the event loop ran
    from C; every function without ``roots_only``), as (function, calls, cumulative
    seconds), largest first."""
    stats = pstats.Stats(path).stats  # type: ignore[attr-defined]
    rows = [(f"{Path(file).name}:{line}({name})", calls, cum)
            for (file, line, name), (_, calls, _, cum, callers) in stats.items()
            if not (roots_only and callers)]
    return sorted(rows, key=lambda r: -r[2])[:top]  # (all of them when top is None)


def print_cprofile(path: str) -> None:
    roots = loop_roots(path, top=None)
    total = sum(cum for _, _, cum in roots)
    print(f"# cProfile of the event loop's Python ({path}; {1e3 * total:.0f} ms profiled), "
          f"what the loop ran, by cumulative time:")
    for name, calls, cum in roots[:20]:
        print(f"#   {100 * cum / total if total else 0:5.1f} %  {1e3 * cum:7.1f} ms  "
              f"{calls:7d} calls  {name}")
    print("# ... and every function by cumulative time (a coroutine counts each resumption):")
    for name, calls, cum in loop_roots(path, top=25, roots_only=False):
        print(f"#   {100 * cum / total if total else 0:5.1f} %  {1e3 * cum:7.1f} ms  "
              f"{calls:7d} calls  {name}")


def run_step(step: int, args: argparse.Namespace) -> dict[str, Any]:
    port = servers.free_port()
    workdir = Path(tempfile.mkdtemp(prefix=f"capacity-{step}-"))
    log_path = workdir / "server.log"
    env = hook_env(args, step, workdir)
    proc = servers.spawn(pinned(server_cmd(port, args.workers), args.server_cpu), log_path,
                         **({"env": env} if env is not None else {}))
    server = servers.Server("mediaserver", proc, f"ws://127.0.0.1:{port}/v1/signal",
                            f"http://127.0.0.1:{port}", log_path)
    try:
        row = asyncio.run(measure(step, args, port, server, workdir))
    finally:
        server.stop(timeout=30)
    row["failed"] = verdict(row, args)
    row["workdir"] = str(workdir)
    return row


def fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_row(r: dict[str, Any]) -> None:
    sat = "SATURATED" if r["generator_saturated"] else ""
    print(f"{r['sessions']:>8} {r['participants']:>6} {r['packets_in_per_s']:>8.0f} "
          f"{r['packets_out_per_s']:>8.0f} {r['server_cpu_pct']:>6.1f} "
          f"{fmt(r['us_per_forwarded_packet'], '.1f'):>7} {fmt(r['latency_p50_ms'], '.2f'):>7} "
          f"{fmt(r['latency_p99_ms'], '.2f'):>7} {fmt(r['loss'] and 100 * r['loss'], '.2f'):>6} "
          f"{r['tracks']:>9} {fmt(r['join_audio_ms_p50'], '.0f'):>6} "
          f"{fmt(r['join_audio_ms_p95'], '.0f'):>6} {r['mb_per_participant']:>6.2f} "
          f"{'+'.join(f'{c:.0f}' for c in r['generator_cpu_pct']):>8} "
          f"{fmt(r['gc_pause_max_ms'], '.1f'):>6} {fmt(r['loop_lag_p99_ms'], '.1f'):>6} "
          f"{'FAIL ' + '; '.join(r['failed']) if r['failed'] else 'ok'} {sat}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--kind", choices=["one_to_one", "couples", "group"], default="one_to_one")
    p.add_argument("--size", type=int, default=None,
                   help="participants per session (2 for one_to_one, 3 couples, 6 group)")
    p.add_argument("--sessions", default="5,10,20", help="steps: sessions (rooms) at once")
    p.add_argument("--video", default="640x480@25")
    p.add_argument("--window", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--ramp-up", type=float, default=20.0, help="joins per second, per generator")
    p.add_argument("--generators", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="load-test processes")
    p.add_argument("--server-cpu", default="1", help="CPU list the server is pinned to")
    p.add_argument("--workers", type=int, default=1,
                   help="server worker processes (CPU and RSS are summed over them)")
    p.add_argument("--generator-cpus", default=None,
                   help="CPU list for the generators (default: every CPU but the server's)")
    p.add_argument("--max-loss", type=float, default=0.01)
    p.add_argument("--max-latency-p99", type=float, default=20.0, help="ms")
    p.add_argument("--max-cpu", type=float, default=95.0, help="server CPU, %% of its core")
    p.add_argument("--json", help="write every step as JSON")
    p.add_argument("--profile", metavar="PATH",
                   help="py-spy the server over each window: raw stacks to PATH.<step>, and "
                        "the largest inclusive shares printed (needs py-spy, --workers 1)")
    p.add_argument("--cprofile", metavar="PATH",
                   help="cProfile the server's event loop over each window: stats to "
                        "PATH.<step>, what the loop ran printed (--workers 1; slows the "
                        "Python it watches, so not for the step's CPU figures)")
    p.add_argument("--activity-cpu", metavar="PATH",
                   help="time the control plane's Python call by call in the server (thread "
                        "CPU, cold caches and all, no profiler in between): JSON to "
                        "PATH.<step>, a table printed (--workers 1)")
    p.add_argument("--py-spy", default=shutil.which("py-spy") or
                   os.path.join(os.path.dirname(sys.executable), "py-spy"))
    args = p.parse_args(argv)
    if (args.profile or args.cprofile or args.activity_cpu) and args.workers != 1:
        p.error("--profile, --cprofile and --activity-cpu watch one process: use --workers 1")
    if args.cprofile and args.activity_cpu:
        p.error("--cprofile and --activity-cpu both use SIGUSR2: one at a time")
    args.size = args.size or {"one_to_one": 2, "couples": 3, "group": 6}[args.kind]
    if args.generator_cpus is None:
        others = [str(c) for c in sorted(os.sched_getaffinity(0))
                  if str(c) not in args.server_cpu.split(",")]
        args.generator_cpus = ",".join(others) or None
    steps = [int(s) for s in args.sessions.split(",")]
    info = machine()
    print(f"# capacity: {args.kind} x{args.size}, video {args.video} cheap replay, server on "
          f"CPU {args.server_cpu}, {args.generators} generator(s) on CPU "
          f"{args.generator_cpus}; {info}")
    print(f"{'sessions':>8} {'people':>6} {'in/s':>8} {'out/s':>8} {'cpu%':>6} {'us/fwd':>7} "
          f"{'lat p50':>7} {'lat p99':>7} {'loss%':>6} {'tracks':>9} {'join50':>6} "
          f"{'join95':>6} {'MB/pp':>6} {'gen cpu':>8} {'gc max':>6} {'lag99':>6} verdict")
    rows = []
    for step in steps:
        row = run_step(step, args)
        rows.append(row)
        print_row(row)
        shares = ", ".join(f"{k} {v:.1f} %" for k, v in row["control_pct"].items()
                           if v is not None)
        print(f"#   control plane, share of the server's CPU: {shares or '-'}")
        if args.profile and os.path.exists(f"{args.profile}.{step}"):
            print_profile(f"{args.profile}.{step}")
        for path, show, none in ((args.cprofile, print_cprofile, "cProfile: the server wrote "
                                  "no stats"),
                                 (args.activity_cpu, print_activity, "activity CPU: the server "
                                  "wrote nothing")):
            if path:
                out = f"{path}.{step}"
                if os.path.exists(out):
                    show(out)
                else:
                    print(f"# {none} to {out}")
        if row["failed"]:
            break
    clean = [r for r in rows if not r["failed"] and not r["generator_saturated"]]
    best = clean[-1] if clean else None
    summary: dict[str, Any] = {"capacity_measured": best["sessions"] if best else 0}
    if best and best["server_cpu_pct"] > 0:
        summary["capacity_by_cpu"] = int(best["sessions"] * args.max_cpu / best["server_cpu_pct"])
    print(f"# largest passing step: {summary['capacity_measured']} session(s)"
          + (f"; at that step's CPU per session, {summary['capacity_by_cpu']} would fill "
             f"{args.max_cpu:.0f}% of the core" if "capacity_by_cpu" in summary else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "machine": info,
                                               "steps": rows, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
