"""Two checkouts of the server side by side on one core, under the same load: CPU per
forwarded packet of each, and their ratio.

On a shared VM the CPU per packet of one run can differ from the next by 10-20 %, more
than most single changes are worth, so figures from runs made one after the other compare
the moments as much as the code. Here both servers run at the same time, pinned to the same
CPU (``--server-cpu``), each with its own load-test generator (cheap mode, pinned to the
other CPUs) driving the same rooms; whatever the machine does to one it does to the other.
Each run swaps which checkout starts first. The ratio ``new/old`` is printed per run and as
a median over the runs.

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
    runs: list[dict[str, Any]] = []
    for i in range(args.runs):
        order = [("old", args.old), ("new", args.new)]
        if i % 2:
            order.reverse()
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
