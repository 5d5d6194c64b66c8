"""Micro-benchmarks behind figures in docs/benchmarks.md, each printing what it measured.

    .venv/bin/python bench/micro.py srtp      # pylibsrtp's protect against FastSrtp's
    .venv/bin/python bench/micro.py wakeup    # a bare uvloop UDP endpoint: CPU per datagram
    .venv/bin/python bench/micro.py tracker   # QualityTracker.update, clean and lossy links
    .venv/bin/python bench/micro.py relay     # a joined client's ping: one process vs a front

Run as a script (not ``-m bench.micro``) so that ``PYTHONPATH=<an older checkout>`` measures
that checkout's code with the same benchmark (``tracker`` and ``srtp`` when it has FastSrtp).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import struct
import sys
import time
import timeit
from collections.abc import Callable
from typing import Literal

import pylibsrtp


def _srtp_pair() -> pylibsrtp.Session:
    key = os.urandom(30)
    return pylibsrtp.Session(pylibsrtp.Policy(key=key,
                                              ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))


def srtp(packets: int = 30000) -> None:
    """Microseconds per protect of a 1112-byte RTP packet, best of 5 runs of ``packets``."""
    data = [struct.pack("!BBHII", 0x80, 96, i & 0xFFFF, 1234, 5678) + bytes(1100)
            for i in range(packets * 5 * 2)]

    def best(protect: Callable[[bytes], bytes], offset: int) -> float:
        def one(r: int) -> float:
            chunk = iter(data[offset + r * packets: offset + (r + 1) * packets])
            return timeit.timeit(lambda: protect(next(chunk)), number=packets)

        return min(one(r) for r in range(5)) / packets * 1e6

    print(f"pylibsrtp Session.protect: {best(_srtp_pair().protect, 0):.2f} us per packet")
    try:
        from mediaserver.sfu.aiortc_adapter import FastSrtp
    except ImportError:
        print("FastSrtp: not in this checkout")
        return
    fast = FastSrtp(_srtp_pair())
    print(f"FastSrtp.protect:          {best(fast.protect, packets * 5):.2f} us per packet")


def _send(port: int, rate: int, seconds: float) -> None:
    """One 1200-byte datagram at a time, ``rate`` a second, for ``seconds`` (child process)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        start, k = time.monotonic(), 0
        while time.monotonic() - start < seconds:
            s.sendto(bytes(1200), ("127.0.0.1", port))
            k += 1
            time.sleep(max(0.0, start + k / rate - time.monotonic()))


def wakeup(rates: tuple[int, ...] = (200, 1000), seconds: float = 8.0) -> None:
    """Process CPU per datagram of a uvloop endpoint that does nothing with them, fed one
    1200-byte datagram at a time at each rate by a child process (the cost of waking the
    event loop for a packet that arrives alone)."""
    import uvloop

    received = [0]

    class Sink(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            received[0] += 1

    async def measure(sock: socket.socket) -> tuple[float, int]:
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Sink, sock=sock)
        await asyncio.sleep(1.0)  # the sender's start-up: not measured
        t0, n0 = os.times(), received[0]
        await asyncio.sleep(seconds)  # the measured window
        t1, n = os.times(), received[0] - n0
        transport.close()
        return (t1.user + t1.system) - (t0.user + t0.system), n

    for rate in rates:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        pid = os.fork()
        if pid == 0:
            _send(sock.getsockname()[1], rate, seconds + 2)
            os._exit(0)
        cpu, n = uvloop.run(measure(sock))
        os.waitpid(pid, 0)
        print(f"{rate} datagrams/s: {n} received, {cpu * 1000 / seconds:.2f} ms CPU per s, "
              f"{cpu * 1e6 / max(1, n):.1f} us per datagram")


def tracker(trackers: int = 50, windows: int = 80) -> None:
    """Process CPU per QualityTracker.update once its pool fills (one window a second per
    track), best of 5, on a clean link and on one losing a packet in a quarter of windows."""
    from mediaserver.quality.score import QualityTracker, WindowStats

    def run(lossy: bool) -> float:
        rng = random.Random(1)
        items = []
        for step in range(windows):
            for i in range(trackers):
                kind: Literal["audio", "video"] = "video" if i % 2 else "audio"
                fps = 25.0 if kind == "video" else None
                items.append((i, step, WindowStats(
                    kind=kind, duration=1.0, packets_expected=50,
                    packets_lost=rng.choice([0, 0, 0, 1]) if lossy else 0, rtt=0.02,
                    jitter=0.003, bitrate=500e3, frame_rate=fps, expected_frame_rate=fps)))
        pool = [QualityTracker() for _ in range(trackers)]
        t0 = time.process_time()
        for i, step, w in items:
            pool[i].update(w, float(step))
        return (time.process_time() - t0) / len(items) * 1e6

    print(f"clean link: {min(run(False) for _ in range(5)):.1f} us per update")
    print(f"lossy link: {min(run(True) for _ in range(5)):.1f} us per update")


def relay(pings: int = 400) -> None:
    """Round trip of a joined participant's ``ping`` (answered by the room's worker) against
    ``mediaserver serve --workers 1`` (no front) and ``--workers 2`` (relayed by the front).
    Paced at 40 a second, under the signalling rate limit (50 a second)."""
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench import servers
    from loadtest.client import SignalClient
    from loadtest.report import pct
    from mediaserver.tokens import create_token

    async def one(workers: int, log: Path) -> list[float]:
        port = servers.free_port()
        proc = servers.spawn(servers.mediaserver_cmd(port, "127.0.0.1", workers), log)
        server = servers.Server("mediaserver", proc, f"ws://127.0.0.1:{port}/v1/signal",
                                f"http://127.0.0.1:{port}", log)
        try:
            await servers.wait_ready(server)
            token = create_token("devkey", "devsecret", room="relay", identity="p",
                                 kind="group", now=time.time())
            client = SignalClient(server.url, token)
            await client.connect()
            rtts = []
            for _ in range(pings):
                t0 = time.perf_counter()
                await client.request({"type": "ping"})
                rtts.append((time.perf_counter() - t0) * 1e6)
                await asyncio.sleep(0.025)
            await client.close()
            return rtts
        finally:
            server.stop()

    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            rtts = asyncio.run(one(workers, Path(tmp) / f"w{workers}.log"))
            print(f"--workers {workers}: ping round trip median {pct(rtts, 50):.0f} us, "
                  f"p95 {pct(rtts, 95):.0f} us ({pings} pings)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("what", choices=["srtp", "wakeup", "tracker", "relay"])
    args = p.parse_args(argv)
    benches: dict[str, Callable[[], None]] = {"srtp": srtp, "wakeup": wakeup,
                                               "tracker": tracker, "relay": relay}
    benches[args.what]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
