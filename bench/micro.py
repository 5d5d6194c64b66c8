"""Micro-benchmarks behind figures in docs/benchmarks.md, each printing what it measured.

    .venv/bin/python bench/micro.py srtp      # pylibsrtp's protect against FastSrtp's
    .venv/bin/python bench/micro.py wakeup    # a bare uvloop UDP endpoint: CPU per datagram
    .venv/bin/python bench/micro.py tracker   # QualityTracker.update, clean and lossy links
    .venv/bin/python bench/micro.py quality   # ParticipantQuality.update: a group-of-7 member
                                              # (--participants 2: a 1:1 call's)
    .venv/bin/python bench/micro.py allocate  # a group-of-7 subscriber's demands, allocated
    .venv/bin/python bench/micro.py relay     # a joined client's ping: one process vs a front
    .venv/bin/python bench/micro.py send      # a forwarded copy: Python + uvloop against C
    .venv/bin/python bench/micro.py cold      # SRTP unprotect back to back and after idling

Run as a script (not ``-m bench.micro``) so that ``PYTHONPATH=<an older checkout>`` measures
that checkout's code with the same benchmark (``tracker`` and ``srtp`` when it has FastSrtp).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import socket
import struct
import sys
import time
import timeit
from collections.abc import Awaitable, Callable
from typing import Any, Literal

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


def _cpu() -> float:
    """This process's CPU seconds so far (getrusage: finer than os.times' clock ticks)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _fed(rate: int, seconds: float,
         receive: Callable[[socket.socket], tuple[float, int]]) -> tuple[float, int]:
    """``receive(sock)`` -> (CPU seconds, datagrams) on a fresh loopback socket that a
    child process feeds at ``rate`` (for a little longer than ``seconds``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    pid = os.fork()
    if pid == 0:
        _send(sock.getsockname()[1], rate, seconds + 2)
        os._exit(0)
    try:
        return receive(sock)
    finally:
        sock.close()
        os.waitpid(pid, 0)


def blocked_wakeup(rate: int = 200, seconds: float = 8.0) -> tuple[float, int]:
    """(us of CPU per datagram, datagrams) of a thread blocked in ``recv``, no event loop,
    fed one 1200-byte datagram at a time at ``rate``: what waking up for a packet that
    arrives alone costs on this machine right now (bench.compare prints it with its runs)."""
    def blocking(sock: socket.socket) -> tuple[float, int]:
        sock.settimeout(0.2)
        buf, n, start = bytearray(2048), 0, time.monotonic()
        t0 = _cpu()
        while time.monotonic() - start < seconds:
            try:
                sock.recv_into(buf)
                n += 1
            except TimeoutError:
                pass
        return _cpu() - t0, n

    cpu, n = _fed(rate, seconds, blocking)
    return cpu * 1e6 / max(1, n), n


def wakeup(rates: tuple[int, ...] = (200, 1000), seconds: float = 8.0) -> None:
    """Process CPU per datagram of a uvloop endpoint that does nothing with them, fed one
    1200-byte datagram at a time at each rate by a child process (the cost of waking the
    event loop for a packet that arrives alone); the same through the server's own media
    socket reader (mediasocket.MediaTransport), when this checkout has it; and a thread
    blocked in recv, with no event loop at all."""
    import uvloop

    received = [0]

    class Sink(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            received[0] += 1

    def on_loop(open_endpoint: Callable[[socket.socket], Awaitable[Any]]
                ) -> Callable[[socket.socket], tuple[float, int]]:
        async def measure(sock: socket.socket) -> tuple[float, int]:
            transport = await open_endpoint(sock)
            await asyncio.sleep(1.0)  # the sender's start-up: not measured
            t0, n0 = _cpu(), received[0]
            await asyncio.sleep(seconds)  # the measured window
            cpu, n = _cpu() - t0, received[0] - n0
            transport.close()
            return cpu, n

        return lambda sock: uvloop.run(measure(sock))

    async def uvloop_endpoint(sock: socket.socket) -> Any:
        loop = asyncio.get_running_loop()
        return (await loop.create_datagram_endpoint(Sink, sock=sock))[0]

    async def media_endpoint(sock: socket.socket) -> Any:
        from mediaserver.sfu import mediasocket
        loop = asyncio.get_running_loop()
        return mediasocket.open_endpoint(loop, Sink, sock, print)[0]

    try:
        from mediaserver.sfu import mediasocket
        media = mediasocket.usable()
    except ImportError:
        media = False
    for rate in rates:
        cpu, n = _fed(rate, seconds, on_loop(uvloop_endpoint))
        print(f"{rate} datagrams/s: {n} received, {cpu * 1000 / seconds:.2f} ms CPU per s, "
              f"{cpu * 1e6 / max(1, n):.1f} us per datagram")
        if media:
            cpu, n = _fed(rate, seconds, on_loop(media_endpoint))
            print(f"{rate} datagrams/s, media socket reader (recvmmsg): {n} received, "
                  f"{cpu * 1e6 / max(1, n):.1f} us per datagram")
        # The floor of a wake-up: the kernel and the interpreter's own return to Python.
        per, n = blocked_wakeup(rate, seconds)
        print(f"{rate} datagrams/s, blocking recv, no event loop: {n} received, "
              f"{per:.1f} us per datagram")


def tracker(trackers: int = 50, windows: int = 80, measured: int = 40) -> None:
    """Process CPU per QualityTracker.update once its pool is full (one window a second per
    track; ``windows`` first fill the pools, unmeasured, then ``measured`` more are timed),
    best of 5, on a clean link and on one losing a packet in a quarter of windows."""
    from mediaserver.quality.score import QualityTracker, WindowStats

    def run(lossy: bool) -> float:
        rng = random.Random(1)
        items = []
        for step in range(windows + measured):
            for i in range(trackers):
                kind: Literal["audio", "video"] = "video" if i % 2 else "audio"
                fps = 25.0 if kind == "video" else None
                items.append((i, step, WindowStats(
                    kind=kind, duration=1.0, packets_expected=50,
                    packets_lost=rng.choice([0, 0, 0, 1]) if lossy else 0, rtt=0.02,
                    jitter=0.003, bitrate=500e3, frame_rate=fps, expected_frame_rate=fps)))
        pool = [QualityTracker() for _ in range(trackers)]
        split = windows * trackers
        for i, step, w in items[:split]:
            pool[i].update(w, float(step))
        t0 = time.process_time()
        for i, step, w in items[split:]:
            pool[i].update(w, float(step))
        return (time.process_time() - t0) / (len(items) - split) * 1e6

    print(f"clean link: {min(run(False) for _ in range(5)):.1f} us per update")
    print(f"lossy link: {min(run(True) for _ in range(5)):.1f} us per update")


def quality(participants: int = 7, seconds: int = 100, measured: int = 40) -> None:
    """Process CPU per link of ``ParticipantQuality.update`` (windows, trackers, metrics),
    each participant of a group of ``participants`` with two uplinks and an audio and a video
    downlink from every other one, one reading a second; the first ``seconds - measured``
    fill the pools unmeasured. Best of 5, on clean links and on links losing a packet in a
    quarter of the windows."""
    from mediaserver.quality.monitor import LinkCounters, ParticipantQuality

    lost: dict[tuple[int, str], int] = {}

    def readings(p: int, t: int, rng: random.Random, lossy: bool) -> list[LinkCounters]:
        loss = [0, 0, 0, 1] if lossy else [0]
        out = []
        for kind in ("audio", "video"):
            rate = 50 if kind == "audio" else 60
            lost[p, kind] = lost.get((p, kind), 0) + rng.choice(loss)
            out.append(LinkCounters(
                key=f"p{p}{kind}:uplink", direction="uplink", kind=kind,  # type: ignore[arg-type]
                packets_expected=rate * t, packets_lost=lost[p, kind], fraction_lost=None,
                bytes=rate * t * 900, frames=25 * t, jitter=0.003, rtt=0.02))
            for other in range(participants):
                if other != p:
                    out.append(LinkCounters(
                        key=f"p{other}{kind}:downlink", direction="downlink",
                        kind=kind,  # type: ignore[arg-type]
                        packets_expected=rate * t, packets_lost=None,
                        fraction_lost=rng.choice(loss) / 100,
                        bytes=rate * t * 900, frames=25 * t, jitter=0.002, rtt=0.02))
        return out

    def run(lossy: bool) -> float:
        rng = random.Random(1)
        lost.clear()
        monitors = [ParticipantQuality(f"p{p}") for p in range(participants)]
        script = [(m, readings(p, t, rng, lossy), float(t)) for t in range(seconds)
                  for p, m in enumerate(monitors)]
        split = (seconds - measured) * participants
        for m, counters, now in script[:split]:
            m.update(counters, now)
        links = sum(len(c) for _, c, _ in script[split:])
        t0 = time.process_time()
        for m, counters, now in script[split:]:
            m.update(counters, now)
        return (time.process_time() - t0) / links * 1e6

    for lossy in (False, True):
        print(f"group of {participants}, {'lossy' if lossy else 'clean'} links: "
              f"{min(run(lossy) for _ in range(5)):.1f} us per link a second "
              "(monitor, trackers, metrics)")


def allocate(steps: int = 2000) -> None:
    """Process CPU of one allocation of a group-of-7 subscriber: its twelve demands built
    (six audio, six two-rung video tracks) and ``StreamAllocator.allocate`` run on them, as
    the adaptation step does twice a second. Best of 5."""
    from mediaserver.sfu.allocator import Layer, StreamAllocator, TrackDemand

    def demands() -> list[TrackDemand]:
        out = []
        for i in range(6):
            out.append(TrackDemand(track_id=f"a{i}", kind="audio", source="microphone",
                                   priority_hint=None, layers=(Layer(0, 0, 40_000),)))
            out.append(TrackDemand(
                track_id=f"v{i}", kind="video", source="camera", priority_hint=None,
                layers=(Layer(0, 0, 200_000, 320, 240, 12.5), Layer(0, 1, 400_000, 320, 240, 25.0)),
                max_width=None, max_height=None, max_fps=None, disabled=False))
        return out

    allocator = StreamAllocator()
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for step in range(steps):
            allocator.allocate(5_000_000, demands(), step * 0.5)
        best = min(best, (time.process_time() - t0) / steps)
    print(f"12 demands built and allocated: {best * 1e6:.1f} us")


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


def send(copies: int = 20000, rounds: int = 5) -> None:
    """CPU per forwarded copy of a 1000-byte payload, header to kernel, on loopback: the
    Python path (struct header + payload, FastSrtp.protect, uvloop's sendto) against the C
    extension's Output.send_rtp; best of ``rounds``, the receiving socket drained
    (its cost included in both)."""
    import uvloop

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from mediaserver.sfu import fastsend
    from mediaserver.sfu.aiortc_adapter import FastSrtp, attach_srtp
    from mediaserver.sfu.rtp import header_abs_send_time

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    dest = ("127.0.0.1", sink.getsockname()[1])
    data = bytes(1004)

    def drain() -> None:
        try:
            while True:
                sink.recv(4096, socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass

    async def run() -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                           local_addr=("127.0.0.1", 0))
        fd = transport.get_extra_info("socket").fileno()
        session = _srtp_pair()  # one session, a fresh SSRC per round (SRTP refuses replays)
        fast = FastSrtp(session)
        payload = memoryview(data)[4:]
        output = None
        if fastsend.AVAILABLE:
            output = fastsend.Output()
            attach_srtp(output, session)
            output.set_destination(fd, *dest)
        best_py = best_c = float("inf")
        for r in range(rounds):
            drain()
            t0 = time.process_time()
            for i in range(copies):
                transport.sendto(fast.protect(header_abs_send_time(
                    False, 96, i, i, 1000 + 2 * r, 3, i) + payload), dest)
                if i % 100 == 99:
                    drain()
            best_py = min(best_py, (time.process_time() - t0) / copies * 1e6)
            if output is None:
                continue
            drain()
            t0 = time.process_time()
            for i in range(copies):
                output.send_rtp(False, 96, i, i, 1001 + 2 * r, 0, 0, 3, i, data, 4, len(data))
                if i % 100 == 99:
                    drain()
            best_c = min(best_c, (time.process_time() - t0) / copies * 1e6)
        transport.close()
        print(f"Python (struct + FastSrtp.protect + uvloop sendto): {best_py:.2f} us per copy")
        print("C Output.send_rtp: " + (f"{best_c:.2f} us per copy" if output is not None
                                        else "not built"))

    uvloop.run(run())


def cold(calls: int = 400, gaps: tuple[float, ...] = (0.0, 0.0005, 0.002)) -> None:
    """Median and p90 time of one SRTP unprotect (1012-byte packets) back to back and with
    the thread asleep for a gap before each call, as a packet arriving alone finds it:
    FastSrtp (pylibsrtp through cffi) and the C extension's Input."""
    import statistics

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from mediaserver.sfu.aiortc_adapter import unprotector

    key = os.urandom(30)
    for fast in (False, True):
        tx = pylibsrtp.Session(pylibsrtp.Policy(key=key,
                                                ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
        rx = unprotector(pylibsrtp.Session(pylibsrtp.Policy(
            key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND)), fast=fast)
        name = type(rx).__name__
        seq = 0
        for gap in gaps:
            times = []
            for _ in range(calls):
                seq += 1
                packet = tx.protect(struct.pack("!BBHII", 0x80, 96, seq, seq, 5) + bytes(1000))
                if gap:
                    time.sleep(gap)
                t0 = time.perf_counter_ns()
                rx.unprotect(packet)
                times.append((time.perf_counter_ns() - t0) / 1000)
            times.sort()
            print(f"{name:12} gap {gap * 1000:3.1f} ms: median {statistics.median(times):5.1f} us, "
                  f"p90 {times[int(len(times) * 0.9)]:5.1f} us")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("what", choices=["srtp", "wakeup", "tracker", "quality", "allocate",
                                          "relay", "send", "cold"])
    p.add_argument("--participants", type=int, default=7,
                   help="quality: the size of the group whose members are rated")
    args = p.parse_args(argv)
    benches: dict[str, Callable[[], None]] = {"srtp": srtp, "wakeup": wakeup,
                                               "tracker": tracker,
                                               "quality": lambda: quality(args.participants),
                                               "allocate": allocate, "relay": relay,
                                               "send": send, "cold": cold}
    benches[args.what]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
