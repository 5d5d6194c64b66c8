"""Time spent per call in the live server's packet path, under the load of bench.capacity.

The tight loop (bench/packet_path.py) runs warm; a live server meets each packet with cold
caches. This starts the server with a wrapper around a few methods of the packet path
(``perf_counter_ns`` before and after each call, the wrapper's own cost included) pinned to
one core, drives it with one cheap-mode load-test generator on the other, and prints the mean
time per call over the window:

- SRTP unprotect of one packet (the C ``Input`` behind a Python proxy, or ``FastSrtp``);
- ``PublisherTransport.on_rtp``: parse to the last copy sent;
- ``RecvStream._deliver``; ``Consumer.forward`` (one copy); ``Consumer._send`` where it exists.

``--checkout`` measures another checkout's code (its directory goes first on ``sys.path``):

    .venv/bin/python -m bench.percall --kind group --size 7
    .venv/bin/python -m bench.percall --kind one_to_one --size 2 --checkout /tmp/old
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parents[1]
MARK = "PERCALL "


def _instrument() -> None:
    """In the server process: wrap the packet path's methods; SIGUSR1 starts a window,
    SIGUSR2 prints it."""
    from mediaserver.sfu import aiortc_adapter, consumer, producer, transport

    acc: dict[str, list[int]] = {}
    clock = time.perf_counter_ns

    def timed(label: str, func: Any) -> Any:
        def wrapper(*args: Any, **kw: Any) -> Any:
            t0 = clock()
            try:
                return func(*args, **kw)
            finally:
                cell = acc.setdefault(label, [0, 0])
                cell[0] += clock() - t0
                cell[1] += 1
        return wrapper

    for cls, name, label in [
        (transport.PublisherTransport, "on_rtp", "PublisherTransport.on_rtp"),
        (producer.RecvStream, "_deliver", "RecvStream._deliver"),
        (consumer.Consumer, "forward", "Consumer.forward"),
        (consumer.Consumer, "_send", "Consumer._send"),
    ]:
        if hasattr(cls, name):
            setattr(cls, name, timed(label, getattr(cls, name)))
    if hasattr(aiortc_adapter, "unprotector"):
        class Timed:
            def __init__(self, inner: Any) -> None:
                self.unprotect = timed("unprotect", inner.unprotect)
                self.unprotect_rtcp = inner.unprotect_rtcp

        make = aiortc_adapter.unprotector
        aiortc_adapter.unprotector = lambda *a, **kw: Timed(make(*a, **kw))  # type: ignore[assignment]
    else:
        srtp = aiortc_adapter.FastSrtp
        srtp.unprotect = timed("unprotect", srtp.unprotect)  # type: ignore[method-assign]

    started = [time.monotonic()]

    def start(*_: Any) -> None:
        acc.clear()
        started[0] = time.monotonic()

    def report(*_: Any) -> None:
        seconds = time.monotonic() - started[0]
        print(MARK + json.dumps({k: [v[0] / max(v[1], 1) / 1000, v[1] / seconds]
                                 for k, v in acc.items()}), flush=True)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, report)


def serve(argv: list[str]) -> None:
    checkout = os.environ.get("PERCALL_CHECKOUT")
    if checkout:
        sys.path.insert(0, checkout)
    _instrument()
    import runpy

    sys.argv = ["mediaserver", *argv]
    runpy.run_module("mediaserver", run_name="__main__", alter_sys=True)


async def measure(args: argparse.Namespace, workdir: Path) -> dict[str, list[float]]:
    import aiohttp

    from bench import servers
    from bench.capacity import pinned, server_cmd, start_generators, total
    from bench.forwarding import poll, scrape

    port = servers.free_port()
    cmd = [sys.executable, str(SCRIPT), "--serve",
           *server_cmd(port, 1)[3:]]  # the server's own arguments, after "-m mediaserver"
    log = workdir / "server.log"
    env = dict(os.environ, PERCALL_CHECKOUT=str(args.checkout))
    proc = servers.spawn(pinned(cmd, args.server_cpu), log, env=env)
    server = servers.Server("mediaserver", proc, f"ws://127.0.0.1:{port}/v1/signal",
                            f"http://127.0.0.1:{port}", log)
    generators = []
    try:
        await servers.wait_ready(server)
        gen_args = argparse.Namespace(generators=1, size=args.size, kind=args.kind,
                                      video=args.video, ramp_up=10,
                                      generator_cpus=args.generator_cpus)
        generators = start_generators(1, gen_args, port, args.warmup + args.window + 20,
                                      workdir)
        async with aiohttp.ClientSession() as http:
            async def joined() -> bool:
                m = await scrape(http, server.http or "")
                return total(m, "mediaserver_participants") >= args.size

            await poll(joined, 60, "every participant")
        await asyncio.sleep(args.warmup)  # key frames, estimates settle: not measured
        proc.send_signal(signal.SIGUSR1)
        await asyncio.sleep(args.window)  # the measured window
        proc.send_signal(signal.SIGUSR2)

        def reported() -> str | None:
            lines = [ln for ln in log.read_text(errors="replace").splitlines()
                     if ln.startswith(MARK)]
            return lines[-1] if lines else None

        async def has_report() -> bool:
            return reported() is not None

        await poll(has_report, 10, "the per-call report")
        return json.loads((reported() or "")[len(MARK):])  # type: ignore[no-any-return]
    finally:
        for g in generators:
            g.terminate()
            g.wait(timeout=30)
        server.stop()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        serve(argv[1:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--kind", choices=["one_to_one", "couples", "group"], default="group")
    p.add_argument("--size", type=int, default=7, help="participants in the one room")
    p.add_argument("--video", default="640x480@25")
    p.add_argument("--checkout", type=Path, default=ROOT, help="whose code the server runs")
    p.add_argument("--warmup", type=float, default=8.0)
    p.add_argument("--window", type=float, default=20.0)
    p.add_argument("--server-cpu", default="1")
    p.add_argument("--generator-cpus", default="0")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="percall-") as tmp:
        result = asyncio.run(measure(args, Path(tmp)))
    print(f"# per call in the live server: {args.kind} of {args.size}, code of {args.checkout}")
    for label, (us, rate) in sorted(result.items()):
        print(f"{label:28} {us:8.1f} us per call ({rate:.0f} calls/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
