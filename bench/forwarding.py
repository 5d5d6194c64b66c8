"""Server CPU per forwarded RTP packet: one publisher to N subscribers in one group room.

The server runs as a subprocess, so its CPU time (utime + stime, /proc/<pid>/stat) is its
own; over a steady window it is divided by the packets the server sent (Prometheus
``mediaserver_rtp_packets_total{direction="out"}``) and received. Subscribers count and drop
RTP datagrams before SRTP (no decoding); RTCP still flows. From the repository root:

    .venv/bin/python -m bench.forwarding --subscribers 1,4,8 --window 15 --warmup 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiortc import RTCPeerConnection
from av import VideoFrame
from prometheus_client.parser import text_string_to_metric_families

from bench import servers
from loadtest.client import SignalClient
from loadtest.media import STRIP, SineAudioTrack, SyntheticVideoTrack
from mediaserver.sfu.aiortc_adapter import drop_incoming
from mediaserver.tokens import create_token

API_KEY, API_SECRET = "devkey", "devsecret"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
Snap = dict[str, Any]


class NoisyVideoTrack(SyntheticVideoTrack):
    """SyntheticVideoTrack plus +-16 levels of noise (cycling 8 images) below the number strip.

    A flat colour codes to ~40-60 kbps; with this noise aiortc's VP8 settles at its 500 kbps
    target (full-range noise overshoots to ~5-7 Mbps even at qmax)."""

    def __init__(self, color: tuple[int, int, int], width: int, height: int, fps: int) -> None:
        super().__init__(color, width, height, fps)
        rng = np.random.default_rng(1)
        self._images = []
        for _ in range(8):
            img = self._base.astype(np.int16)
            img[STRIP:] += rng.integers(-16, 17, img[STRIP:].shape, dtype=np.int16)
            self._images.append(np.clip(img, 0, 255).astype(np.uint8))

    async def recv(self) -> VideoFrame:
        self._base = self._images[self.frame_number % len(self._images)]
        return await super().recv()


def snapshot(pid: int, counts: list[int]) -> Snap:
    """Server (utime, stime) from /proc/<pid>/stat, this process's CPU, machine-wide busy
    jiffies from /proc/stat (idle and iowait excluded), and the subscribers' counters."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return {"t": time.monotonic(), "user": int(fields[11]) / tick,
            "sys": int(fields[12]) / tick, "own": sum(os.times()[:2]),
            "busy": sum(cpu) - cpu[3] - cpu[4], "jiffies": sum(cpu), "counts": list(counts)}


async def scrape(http: aiohttp.ClientSession, base: str) -> Samples:
    async with http.get(f"{base}/metrics") as r:
        text = await r.text()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


async def poll(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def expect(reply: dict[str, Any], kind: str) -> None:
    if reply.get("type") != kind:
        raise RuntimeError(f"expected {kind}, got {reply}")


def machine() -> dict[str, Any]:
    with open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    return {"nproc": os.cpu_count(), "cpu": model, "python": sys.version.split()[0]}


def counting_hook(counts: list[int], i: int) -> Callable[[RTCPeerConnection], None]:
    def should_drop(data: bytes) -> bool:  # RTP: version 2, not an RTCP packet type
        rtp = len(data) > 1 and 128 <= data[0] <= 191 and not 192 <= data[1] <= 223
        counts[i] += rtp
        return rtp  # STUN, DTLS and RTCP go through

    return lambda pc: drop_incoming(pc, should_drop)


async def drive(n: int, port: int, proc: subprocess.Popen[bytes],
                args: argparse.Namespace) -> tuple[Samples, Snap, Samples, Snap]:
    """Join N subscribers and a publisher, warm up, and snapshot around the window."""
    base, ws_url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/v1/signal"
    room, now = f"bench-{n}", time.time()

    def token(identity: str) -> str:
        return create_token(API_KEY, API_SECRET, identity=identity, room=room, kind="group",
                            now=now)

    counts = [0] * n
    clients: list[SignalClient] = []

    async def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"{base}/readyz") as r:
                return r.status == 200
        return False

    async def all_receiving() -> bool:
        return all(counts)

    try:
        async with aiohttp.ClientSession() as http:
            await poll(ready, 30, "/readyz")
            for i in range(n):
                sub = SignalClient(ws_url, token(f"sub{i}"))
                sub.on_subscriber_pc = counting_hook(counts, i)
                clients.append(sub)
                expect(await sub.connect(), "joined")
            pub = SignalClient(ws_url, token("pub"))
            clients.append(pub)
            expect(await pub.connect(), "joined")
            track_cls = NoisyVideoTrack if args.noise else SyntheticVideoTrack
            video = track_cls((200, 60, 60), width=640, height=480, fps=30)
            expect(await pub.publish(video, SineAudioTrack(440.0)), "publish_answer")
            await poll(all_receiving, 60, "every subscriber to receive RTP")
            await asyncio.sleep(args.warmup)  # a fixed warm-up duration, not a condition
            m0, s0 = await scrape(http, base), snapshot(proc.pid, counts)
            await asyncio.sleep(args.window)  # the measurement window itself
            s1, m1 = snapshot(proc.pid, counts), await scrape(http, base)
            if proc.poll() is not None:
                raise RuntimeError(f"server died during the window ({proc.returncode})")
    finally:
        for c in clients:
            with contextlib.suppress(Exception):
                await c.close()
    return m0, s0, m1, s1


def run_point(n: int, args: argparse.Namespace) -> dict[str, Any]:
    port = servers.free_port()
    cmd = servers.mediaserver_cmd(port, "127.0.0.1")  # one process: its CPU from /proc/<pid>
    log_start = os.path.getsize(args.server_log) if os.path.exists(args.server_log) else 0
    with open(args.server_log, "ab") as log:
        log.write(f"=== {n} subscriber(s): {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        m0, s0, m1, s1 = asyncio.run(drive(n, port, proc, args))
    finally:
        proc.terminate()  # SIGTERM: a graceful shutdown
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    dt, user, sys_time = s1["t"] - s0["t"], s1["user"] - s0["user"], s1["sys"] - s0["sys"]
    cpu = user + sys_time

    def delta(name: str, **labels: str) -> float:  # mediaserver_rtp_<name>_total, summed
        want, full = set(labels.items()), f"mediaserver_rtp_{name}_total"
        return sum(v - m0.get((nm, lab), 0.0) for (nm, lab), v in m1.items()
                   if nm == full and want <= lab)

    pkts_in, pkts_out = delta("packets", direction="in"), delta("packets", direction="out")

    def changed(name: str) -> dict[str, float]:  # counters that moved in the window, by label
        return {",".join(v for _, v in sorted(lab)): v1 - m0.get((nm, lab), 0.0)
                for (nm, lab), v1 in m1.items() if nm == name and v1 > m0.get((nm, lab), 0.0)}

    with open(args.server_log, "rb") as f:  # warnings, errors and traceback lines
        f.seek(log_start)
        problems = [ln for ln in f.read().decode(errors="replace").splitlines()
                    if not (ln.startswith("===") or " INFO " in ln[:32])]
    return {
        "subscribers": n, "window_s": round(dt, 2), "server_exit_code": proc.returncode,
        "packets_in_per_s": pkts_in / dt, "packets_out_per_s": pkts_out / dt,
        "server_cpu_pct": 100 * cpu / dt, "server_sys_share": sys_time / cpu if cpu else None,
        "us_per_packet_out": 1e6 * cpu / pkts_out if pkts_out else None,
        "us_per_packet_in": 1e6 * cpu / pkts_in if pkts_in else None,
        "subscriber_packets_per_s": [(b - a) / dt for a, b in zip(s0["counts"], s1["counts"],
                                                                  strict=True)],
        "video_kbps_in": delta("bytes", direction="in", kind="video") * 8 / dt / 1000,
        "audio_kbps_in": delta("bytes", direction="in", kind="audio") * 8 / dt / 1000,
        "video_packets_in_per_s": delta("packets", direction="in", kind="video") / dt,
        "bench_client_cpu_pct": 100 * (s1["own"] - s0["own"]) / dt,  # the clients' process
        # Of all cores, so that other load on the machine shows.
        "machine_busy_pct": 100 * (s1["busy"] - s0["busy"]) / (s1["jiffies"] - s0["jiffies"]),
        "server_drops": changed("mediaserver_dropped_packets_total"),
        "rtcp_feedback": changed("mediaserver_rtcp_feedback_total"),
        "retransmissions": changed("mediaserver_retransmissions_total"),
        "server_log_problems": problems[:60],
    }


def print_table(results: list[dict[str, Any]]) -> None:
    print(f"{'subs':>4} {'in pkt/s':>8} {'out pkt/s':>9} {'srv CPU%':>8} {'us/out':>7} "
          f"{'us/in':>7} {'video kbps':>10} {'client%':>7} {'machine%':>8}  per-sub pkt/s")
    for r in results:
        subs = ",".join(f"{x:.0f}" for x in r["subscriber_packets_per_s"])
        print(f"{r['subscribers']:>4} {r['packets_in_per_s']:>8.1f} {r['packets_out_per_s']:>9.1f} "
              f"{r['server_cpu_pct']:>8.1f} {r['us_per_packet_out'] or 0:>7.1f} "
              f"{r['us_per_packet_in'] or 0:>7.1f} {r['video_kbps_in']:>10.0f} "
              f"{r['bench_client_cpu_pct']:>7.1f} {r['machine_busy_pct']:>8.1f}  {subs}")
    for r in results:
        if r["video_kbps_in"] < 400:
            print(f"note: N={r['subscribers']}: the publisher's VP8 reached only "
                  f"{r['video_kbps_in']:.0f} kbps (target ~500); try --noise")
        for key in ("server_drops", "rtcp_feedback", "retransmissions"):
            if r[key]:
                print(f"note: N={r['subscribers']}: {key} {r[key]}")
        for line in r["server_log_problems"]:
            print(f"server log (N={r['subscribers']}): {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", default="1,4,8", help="comma-separated N (1,4,8)")
    parser.add_argument("--window", type=float, default=15.0, help="seconds measured (15)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before window (5)")
    parser.add_argument("--noise", action="store_true",
                        help="noisy video, so that VP8 reaches its 500 kbps target")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--server-log", default=os.path.join(tempfile.gettempdir(),
                        "mediaserver-bench-forwarding.log"), help="server stdout+stderr file")
    args = parser.parse_args()
    results = []
    for n in (int(x) for x in args.subscribers.split(",")):
        print(f"measuring {n} subscriber(s)...", file=sys.stderr)
        results.append(run_point(n, args))
    print_table(results)
    if args.json:
        doc = {"noise": args.noise, "window_s": args.window, "warmup_s": args.warmup,
               "machine": machine(), "results": results}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"server log: {args.server_log}", file=sys.stderr)


if __name__ == "__main__":
    main()
