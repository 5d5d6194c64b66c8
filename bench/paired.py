"""Two checkouts of the server side by side on one core, under the same load: CPU per
forwarded packet of each, and their ratio.

On a shared VM the CPU per packet of one run can differ from the next by 10-20 %, more
than most single changes are worth, so figures from runs made one after the other compare
the moments as much as the code. Here both servers run at the same time, pinned to the same
CPU (``--server-cpu``), each with its own load-test generator (cheap mode, pinned to the
other CPUs) driving the same rooms; whatever the machine does to one it does to the other.
Each run swaps which checkout starts first. The ratio ``new/old`` is printed per run, then
what the runs say together (``estimate``): the change as a ratio with its 90 % interval, and
the order effect (here the server started second paid 0.95-1.09 times the first's CPU per
packet by the fit, in whichever checkout, and up to 1.21 times in single runs), fitted
together so that the order does not widen the change's interval. An interval that holds 1.0
is a change the runs do not resolve.

Each server runs ``python -m mediaserver`` with its checkout as working directory, which
puts that checkout first on ``sys.path`` (an editable install of the other one does not
win; ``PYTHONPATH`` would not do it, the working directory comes first). For a C
extension the old checkout must have it built (``python setup.py build_ext --inplace``).

    git worktree add /tmp/old <commit>
    .venv/bin/python -m bench.paired --old /tmp/old --kind group --size 7 --runs 4
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from bench import servers
from bench.capacity import pinned, server_cmd, total
from bench.forwarding import machine, poll, scrape

ROOT = Path(__file__).resolve().parents[1]

# Student's t, two-sided 90 %, by degrees of freedom (above the last: the normal's 1.645).
T90 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860,
       9: 1.833, 10: 1.812, 12: 1.782, 15: 1.753, 20: 1.725, 30: 1.697}


def _t90(df: int) -> float:
    return T90[max(k for k in T90 if k <= df)] if df <= 30 else 1.645


def estimate(ratios: list[float], new_second: list[bool]) -> dict[str, float | None]:
    """The runs' new/old ratios, each with whether the new checkout started second, as one
    figure: log(ratio) = change + order x (+1 when new started second, -1 when first) +
    noise, fitted by least squares. Returns ``change`` and ``order`` (the second-started
    server's CPU over the first's) as ratios, and ``low``/``high``, the change's 90 %
    interval (None with fewer than three runs, or with every run in one order, where the
    two cannot be told apart; then ``change`` is the plain geometric mean)."""
    if len(ratios) != len(new_second) or not ratios or min(ratios) <= 0:
        raise ValueError("one positive ratio and one order per run")
    y = [math.log(r) for r in ratios]
    x = [1.0 if second else -1.0 for second in new_second]
    n = len(y)
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((xi - mx) ** 2 for xi in x)
    if sxx == 0:  # one order only: no order effect to fit
        return {"change": math.exp(my), "order": None, "low": None, "high": None}
    slope = sum((xi - mx) * (yi - my) for xi, yi in zip(x, y, strict=True)) / sxx
    intercept = my - slope * mx  # the change: log ratio at no order effect (x = 0)
    out: dict[str, float | None] = {"change": math.exp(intercept), "order": math.exp(slope),
                                    "low": None, "high": None}
    if n >= 3:
        residual = sum((yi - intercept - slope * xi) ** 2 for xi, yi in zip(x, y, strict=True))
        sd = math.sqrt(residual / (n - 2))
        se = sd * math.sqrt(1 / n + mx * mx / sxx)
        half = _t90(n - 2) * se
        out["low"], out["high"] = math.exp(intercept - half), math.exp(intercept + half)
    return out


def _server(checkout: Path, port: int, cpu: str, log: Path) -> servers.Server:
    proc = servers.spawn(pinned(server_cmd(port, 1), cpu), log, cwd=checkout)
    return servers.Server(str(checkout), proc, f"ws://127.0.0.1:{port}/v1/signal",
                          f"http://127.0.0.1:{port}", log)


def _generator(server: servers.Server, args: argparse.Namespace, cpus: str | None,
               log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "loadtest", "--url", server.url, "--rooms", str(args.rooms),
           "--participants-per-room", str(args.size), "--kind", args.kind,
           "--video", args.video, "--mode", "cheap", "--ramp-up", "10",
           "--duration", str(args.warmup + args.window + 10), "--quiet"]
    with open(log, "wb") as out:
        return subprocess.Popen(pinned(cmd, cpus), stdout=out, stderr=subprocess.STDOUT,
                                cwd=ROOT)


async def one_run(order: list[tuple[str, Path]], args: argparse.Namespace,
                  workdir: Path) -> dict[str, dict[str, float]]:
    """Both servers under load at once; CPU seconds and packets forwarded in the window."""
    started = [(name, _server(path, servers.free_port(), args.server_cpu,
                              workdir / f"{name}.log")) for name, path in order]
    generators: list[subprocess.Popen[bytes]] = []
    try:
        for _, server in started:
            await servers.wait_ready(server)
        for name, server in started:
            generators.append(_generator(server, args, args.generator_cpus,
                                         workdir / f"gen-{name}.log"))
        people = args.rooms * args.size
        async with aiohttp.ClientSession() as http:
            for _, server in started:
                base = server.http or ""

                async def joined(base: str = base) -> bool:
                    if any(g.poll() is not None for g in generators):
                        raise RuntimeError(f"a generator exited early; see {workdir}")
                    return total(await scrape(http, base), "mediaserver_participants") >= people

                await poll(joined, 60 + people, "every participant")
            await asyncio.sleep(args.warmup)
            before = [(await scrape(http, s.http or ""), servers.process_tree_cpu(s.pid))
                      for _, s in started]
            await asyncio.sleep(args.window)
            after = [(await scrape(http, s.http or ""), servers.process_tree_cpu(s.pid))
                     for _, s in started]
        result = {}
        for (name, _), (m0, c0), (m1, c1) in zip(started, before, after, strict=True):
            out = (total(m1, "mediaserver_rtp_packets_total", direction="out")
                   - total(m0, "mediaserver_rtp_packets_total", direction="out"))
            result[name] = {"cpu_s": c1 - c0, "forwarded": out,
                            "us_per_forwarded": (c1 - c0) * 1e6 / out if out else float("nan")}
        return result
    finally:
        for g in generators:
            if g.poll() is None:
                g.terminate()
        for g in generators:
            try:
                g.wait(timeout=30)
            except subprocess.TimeoutExpired:
                g.kill()
        for _, server in started:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--old", required=True, type=Path, help="the checkout to compare against")
    p.add_argument("--new", type=Path, default=ROOT, help="the checkout under test (this one)")
    p.add_argument("--kind", choices=["one_to_one", "couples", "group"], default="group")
    p.add_argument("--size", type=int, default=7, help="participants per room")
    p.add_argument("--rooms", type=int, default=1, help="rooms per server")
    p.add_argument("--video", default="640x480@25")
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--warmup", type=float, default=8.0)
    p.add_argument("--window", type=float, default=25.0)
    p.add_argument("--server-cpu", default="1", help="the CPU both servers are pinned to")
    p.add_argument("--generator-cpus", default="0")
    args = p.parse_args(argv)
    for path in (args.old, args.new):
        if not (path / "mediaserver" / "__main__.py").exists():
            p.error(f"{path} is not a checkout of this project")
    print(f"# paired: old {args.old} / new {args.new}; {args.rooms} x {args.kind} of "
          f"{args.size}, both servers on CPU {args.server_cpu}; {machine()}")
    ratios: list[float] = []
    new_second: list[bool] = []  # per run: whether the new checkout started second
    runs: list[dict[str, Any]] = []
    for i in range(args.runs):
        order = [("old", args.old), ("new", args.new)]
        if i % 2:
            order.reverse()
        new_second.append(order[1][0] == "new")
        with tempfile.TemporaryDirectory(prefix="paired-") as tmp:
            r = asyncio.run(one_run(order, args, Path(tmp)))
        ratio = r["new"]["us_per_forwarded"] / r["old"]["us_per_forwarded"]
        ratios.append(ratio)
        runs.append(r)
        print(f"run {i + 1} ({order[0][0]} first): old {r['old']['us_per_forwarded']:.1f} us, "
              f"new {r['new']['us_per_forwarded']:.1f} us per forwarded packet "
              f"({r['old']['forwarded']:.0f} / {r['new']['forwarded']:.0f} packets), "
              f"new/old {ratio:.3f}")
    print(f"# new/old median {statistics.median(ratios):.3f} over {len(ratios)} runs "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
    est = estimate(ratios, new_second)
    if est["low"] is not None and est["high"] is not None and est["order"] is not None:
        verdict = ("not resolved: the interval holds 1.0"
                   if est["low"] <= 1.0 <= est["high"] else
                   "cheaper" if est["high"] < 1.0 else "dearer")
        print(f"# new/old {est['change']:.3f}, 90 % interval {est['low']:.3f}-"
              f"{est['high']:.3f} ({verdict}); the server started second paid "
              f"{est['order']:.3f}x the first")
    else:
        print(f"# new/old {est['change']:.3f} (geometric mean; too few runs for an interval)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
