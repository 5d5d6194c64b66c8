"""Participants behind a real constrained link: a network namespace shaped with tc tbf.

``ShapedLink`` makes a namespace joined to the host by a veth pair and shapes the
host-side end with a token bucket (tbf), so everything the server sends into the
namespace is squeezed to the given rate, as on a weak mobile downlink. A subscriber runs
inside it as its own process (``python -m loadtest.shaped subscribe ...``) and writes
what it received as JSON: when each video frame arrived and at what width (which layer),
when each audio frame arrived, its RTP loss, and the server's events with their times.

Needs root, iproute2 and the sch_tbf module; ``available()`` says why not otherwise.
netem (delay, loss) is not available on this kind of machine; tbf is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from loadtest.client import SignalClient
from mediaserver import metrics
from mediaserver.sfu import aiortc_adapter


def available() -> str | None:
    """None if shaped links can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"'{tool}' (iproute2) is not installed"
    probe = f"msprobe{os.getpid() % 10000}"
    try:
        subprocess.run(["ip", "netns", "add", probe], check=True, capture_output=True)
        subprocess.run(["ip", "netns", "del", probe], check=True, capture_output=True)
    except subprocess.CalledProcessError as exc:
        return f"cannot create a network namespace: {exc.stderr.decode().strip()}"
    return None


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


class ShapedLink:
    """A namespace whose downlink (host -> namespace) is capped by tbf."""

    def __init__(self, rate_kbit: int | None = None) -> None:
        n = random.randrange(1, 250)
        tag = f"{os.getpid() % 10000}{n}"
        self.netns = f"msn{tag}"
        self.host_if = f"msh{tag}"
        self.ns_if = f"msc{tag}"
        self.host_ip = f"10.{200 + n % 50}.{n}.1"
        self.ns_ip = f"10.{200 + n % 50}.{n}.2"
        self.rate_kbit = rate_kbit
        self._up = False
        self._shaped = False  # a tbf is on the link

    def __enter__(self) -> ShapedLink:
        _run("ip", "netns", "add", self.netns)
        self._up = True
        _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _run("ip", "link", "set", self.ns_if, "netns", self.netns)
        _run("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
        _run("ip", "link", "set", self.host_if, "up")
        ns = ("ip", "netns", "exec", self.netns)
        _run(*ns, "ip", "addr", "add", f"{self.ns_ip}/24", "dev", self.ns_if)
        _run(*ns, "ip", "link", "set", self.ns_if, "up")
        _run(*ns, "ip", "link", "set", "lo", "up")
        self.set_rate(self.rate_kbit)
        return self

    def set_rate(self, rate_kbit: int | None) -> None:
        """Cap the downlink at ``rate_kbit`` (None: unshaped).

        Once shaped, the link keeps its tbf and only its rate changes (``tc qdisc change``
        keeps the queue): deleting the qdisc would drop the packets it holds, which a real
        link that gets faster or slower does not do. Unshaped again is a rate far above
        anything sent here.
        """
        self.rate_kbit = rate_kbit
        if rate_kbit is None:
            if self._shaped:
                _run("tc", "qdisc", "change", "dev", self.host_if, "root", "tbf",
                     "rate", "1gbit", "burst", "1mb", "latency", "200ms")
            return
        # A bucket of ~40 ms at the rate (at least two full packets), and up to 200 ms of
        # queue before tbf drops: a plausible mobile downlink.
        burst = max(3200, rate_kbit * 1000 // 8 // 25)
        _run("tc", "qdisc", "change" if self._shaped else "add", "dev", self.host_if, "root",
             "tbf", "rate", f"{rate_kbit}kbit", "burst", str(burst), "latency", "200ms")
        self._shaped = True

    def spawn(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["ip", "netns", "exec", self.netns, *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def __exit__(self, *exc: object) -> None:
        if self._up:
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
            subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
            self._up = False


# -- the subscriber inside the namespace -------------------------------------------------

STALL_TICK = 0.02  # seconds between a stall watcher's wakes
STALL_MIN = 0.05  # a wake this much later than asked: the process did not run meanwhile


async def watch_stalls(out: list[tuple[float, float]], cpu: list[float] | None = None
                       ) -> None:
    """Append (from, to) in wall time wherever this process's loop did not run.

    A starved machine (CI's two shared cores) can stop a process for a few hundred
    milliseconds; a gap in what it received then says nothing of the link or the server.
    With ``cpu``, also the CPU seconds the process (all its threads) spent within each
    stall: near none, it was not scheduled; near the stall's length, its own code held the
    loop, which says something of whatever runs in it (``descheduled``).
    """
    last = time.time()
    last_cpu = time.process_time()
    while True:
        await asyncio.sleep(STALL_TICK)
        now = time.time()
        now_cpu = time.process_time()
        if metrics.loop_lag(last, now, STALL_TICK) > STALL_MIN:
            out.append((last + STALL_TICK, now))
            if cpu is not None:
                cpu.append(now_cpu - last_cpu)
        last, last_cpu = now, now_cpu


def descheduled(stalls: Sequence[tuple[float, float]], cpu: Sequence[float]
                ) -> list[tuple[float, float]]:
    """The stalls (of ``watch_stalls`` with its ``cpu``) in which the process used less
    than half the stall's time in CPU: the machine did not run it, its own code did not
    hold it up."""
    return [(a, b) for (a, b), used in zip(stalls, cpu, strict=True) if used < (b - a) / 2]


def net_gap(start: float, end: float, stalls: Sequence[tuple[float, float]]) -> float:
    """The time from ``start`` to ``end`` less what of it falls in any (from, to) stall."""
    idle = sum(max(0.0, min(end, b) - max(start, a)) for a, b in stalls)
    return end - start - idle


async def subscribe(url: str, token: str, address: str, duration: float,
                    audio_only: bool = False, start_bitrate: int | None = None
                    ) -> dict[str, Any]:
    client = SignalClient(url, token,
                          policy=aiortc_adapter.CandidatePolicy(addresses=(address,)))
    events: list[tuple[float, dict[str, Any]]] = []
    stalls: list[tuple[float, float]] = []
    watcher = asyncio.ensure_future(watch_stalls(stalls))
    try:
        reply = await client.connect()
        if reply["type"] != "joined":
            return {"error": reply}
        if audio_only or start_bitrate is not None:
            # What a phone's browser knows of its link (navigator.connection.downlink), said
            # before the subscriber connection is answered.
            await client.request({"type": "set_bandwidth", "audio_only": audio_only,
                                  **({"start_bitrate": start_bitrate}
                                     if start_bitrate is not None else {})})
        end = time.time() + duration
        seen = 0
        while time.time() < end:
            await asyncio.sleep(0.05)
            while seen < len(client.events):
                events.append((time.time(), client.events[seen]))
                seen += 1
        stats: dict[str, Any] = {}
        if client.subscriber is not None:
            report = await client.subscriber.getStats()
            for s in report.values():
                if getattr(s, "type", "") == "inbound-rtp":
                    stats[s.kind] = {"packets_received": s.packetsReceived,
                                     "packets_lost": s.packetsLost}
        offset = time.time() - time.monotonic()  # arrivals are monotonic; report wall time
        return {
            "participant_id": client.participant_id,
            "tracks": [{"track_id": r.track_id, "participant_id": r.participant_id,
                        "kind": r.kind,
                        "arrivals": [(t + offset, w) for t, w in r.arrivals]}
                       for r in client.received.values()],
            "rtp": stats,
            "stalls": stalls,
            "events": [(t, e) for t, e in events
                       if e.get("type") in ("stream_state", "connection_quality")],
        }
    finally:
        watcher.cancel()
        await client.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="a subscriber for shaped-link scenarios")
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--address", required=True, help="this namespace's own IP address")
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--audio-only", action="store_true")
    ap.add_argument("--start-bitrate", type=int, default=None,
                    help="tell the server the link carries this many bit/s at the start")
    args = ap.parse_args(argv)
    aiortc_adapter.install()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    result = asyncio.run(subscribe(args.url, args.token, args.address, args.duration,
                                   args.audio_only, args.start_bitrate))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
