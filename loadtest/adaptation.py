"""Bandwidth-adaptation scenarios on a real shaped link, with figures.

A simulcast publisher and an unconstrained subscriber on loopback, and one subscriber in a
network namespace whose downlink tbf caps, following a schedule of (second, kbit/s or None
for unshaped). The constrained subscriber's own record (loadtest.shaped) is cut into
phases and summarised: video frame rate and the widths (layers) received, audio gaps and
RTP loss, layer switches, and how long adaptation took after each change.

    python -m loadtest.adaptation --scenario drop           # against a server it starts
    python -m loadtest.adaptation --scenario cap250 --plain # the same, plain forwarding

Run as root (network namespaces). The tests in tests/integration/test_adaptation.py use
``run`` directly.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from loadtest.client import SignalClient
from loadtest.shaped import ShapedLink, descheduled, net_gap, watch_stalls
from loadtest.simulcast import SimulcastPublisher


def width_reversals(widths: list[int]) -> int:
    """How often the received width turned around (up then down, or down then up): a climb
    through the layers has none, one excursion down and back has two whatever its depth,
    a flapping link one per turn."""
    steps = [b - a for a, b in itertools.pairwise(widths) if a != b]
    return sum(1 for a, b in itertools.pairwise(steps) if (a > 0) != (b > 0))


@dataclass
class Scenario:
    name: str
    schedule: list[tuple[float, int | None]]  # (seconds from start, kbit/s or None)
    duration: float
    audio_only: bool = False
    start_kbit: int | None = None  # the subscriber's own word for its link at the start


SCENARIOS = {
    "cap250": Scenario("cap250", [(0, 250)], 25),
    "drop": Scenario("drop", [(0, None), (15, 250), (30, None)], 50),
    "cap100": Scenario("cap100", [(0, 100), (20, None)], 40),
    # The same link, with the client saying what it is (its browser's downlink estimate).
    "cap100-hint": Scenario("cap100-hint", [(0, 100), (20, None)], 40, start_kbit=100),
    "stable": Scenario("stable", [(0, None)], 75),
}


def _phases(s: Scenario) -> list[tuple[float, float, int | None]]:
    out = []
    for i, (start, rate) in enumerate(s.schedule):
        end = s.schedule[i + 1][0] if i + 1 < len(s.schedule) else s.duration
        out.append((start, end, rate))
    return out


def summarise(record: dict[str, Any], publisher_id: str, origin: float, scenario: Scenario,
              top_width: int, low_width: int,
              server_idle: Sequence[tuple[float, float]] = ()) -> dict[str, Any]:
    """Per phase: frame rate, widths, audio gaps; adaptation times; switch counts.

    ``server_idle``: (from, to) in wall time where the machine did not run the process
    holding the server and the publisher (``shaped.descheduled``).
    """
    video = next(t for t in record["tracks"]
                 if t["participant_id"] == publisher_id and t["kind"] == "video")
    audio = next(t for t in record["tracks"]
                 if t["participant_id"] == publisher_id and t["kind"] == "audio")
    v = [(t - origin, w) for t, w in video["arrivals"]]
    a = [t - origin for t, _ in audio["arrivals"]]
    stalls = [(x - origin, y - origin) for x, y in record.get("stalls", [])]
    idle = stalls + [(x - origin, y - origin) for x, y in server_idle]
    phases = []
    for start, end, rate in _phases(scenario):
        settle = start + 5  # judge the steady state, not the transition
        frames = [(t, w) for t, w in v if settle <= t < end]
        seconds = [sum(1 for t, _ in frames if s <= t < s + 1)
                   for s in range(int(settle), int(end) - 1)]
        audio_in = [t for t in a if start <= t < end]
        gaps = [y - x for x, y in itertools.pairwise(audio_in)]
        running = [net_gap(x, y, idle) for x, y in itertools.pairwise(audio_in)]
        widths: dict[int, int] = {}
        for _, w in frames:
            widths[w] = widths.get(w, 0) + 1
        change = {}
        if start > 0:
            # Adaptation time: from the change until the received width settles.
            target = low_width if rate is not None and rate <= 300 else top_width
            if rate is not None and rate < 150:
                target = 0
            after = [(t, w) for t, w in v if t >= start]
            settled = _settled_at(after, target, end)
            change = {"target_width": target,
                      "adapted_after_s": None if settled is None else round(settled - start, 2)}
        phases.append({
            "from_s": start, "to_s": end, "cap_kbit": rate,
            "video_fps_min": min(seconds) if seconds else 0,
            "video_fps_median": statistics.median(seconds) if seconds else 0,
            "widths": widths,
            "audio_frames": len(audio_in),
            "audio_max_gap_ms": round(max(gaps) * 1000) if gaps else None,
            # The same, less the time the subscriber's own process did not run, and the
            # time the machine did not run the server's (its own code holding its loop up
            # still counts).
            "audio_max_gap_running_ms": round(max(running) * 1000) if running else None,
            **change,
        })
    switches = sum(1 for (_, w1), (_, w2) in itertools.pairwise(v) if w1 != w2)
    reversals = width_reversals([w for _, w in v])
    rtp = record.get("rtp", {}).get("audio", {})
    received = rtp.get("packets_received", 0)
    lost = max(0, rtp.get("packets_lost", 0))
    states = [e for _, e in record["events"] if e.get("type") == "stream_state"]
    # Where the audio broke up, for reading a run (seconds from the start, gap in ms).
    long_gaps = [(round(x, 2), round((y - x) * 1000)) for x, y in itertools.pairwise(a)
                 if y - x > 0.1]
    return {"scenario": scenario.name, "phases": phases, "width_switches": switches,
            "width_reversals": reversals,
            "first_audio_s": round(a[0], 2) if a else None,
            "first_video_s": round(v[0][0], 2) if v else None,
            "audio_gaps_over_100ms": long_gaps,
            "subscriber_stalls": [(round(x, 2), round((y - x) * 1000)) for x, y in stalls],
            "audio_loss_pct": round(100 * lost / max(1, received + lost), 2),
            "stream_states": [(e["state"], e.get("reason"), e.get("width")) for e in states]}


def _settled_at(frames: list[tuple[float, int]], width: int, end: float) -> float | None:
    """The time after which every frame (until ``end``) has ``width`` (0: no video at all)."""
    inside = [(t, w) for t, w in frames if t < end]
    if width == 0:
        return inside[-1][0] if inside else (frames[0][0] if frames else None)
    last_other = None
    for t, w in inside:
        if w != width:
            last_other = t
    hits = [t for t, w in inside if w == width and (last_other is None or t > last_other)]
    return hits[0] if hits else None


async def run(url: str, tokens: dict[str, str], scenario: Scenario, host_ip: str,
              link: ShapedLink, python: str = sys.executable,
              trace: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Run one scenario against a server reachable on loopback and at ``host_ip``."""
    publisher = SignalClient(url, tokens["publisher"])
    viewer = SignalClient(url, tokens["viewer"])
    sim: SimulcastPublisher | None = None
    server_stalls: list[tuple[float, float]] = []  # this process: the server and publisher
    server_cpu: list[float] = []  # the process's CPU time within each of them
    watcher: asyncio.Future[None] | None = None
    try:
        reply = await publisher.connect()
        if reply["type"] != "joined":
            raise RuntimeError(f"publisher could not join: {reply}")
        # Encoding the layers' loops takes seconds of CPU: off the event loop, whose lag
        # would otherwise make the server (in the same process) refuse the next joins.
        sim = await asyncio.to_thread(SimulcastPublisher, publisher)
        await sim.start()
        await viewer.connect()
        shaped_url = url.replace("127.0.0.1", host_ip)
        origin = time.time()
        watcher = asyncio.ensure_future(watch_stalls(server_stalls, server_cpu))
        proc = link.spawn(python, "-m", "loadtest.shaped", "--url", shaped_url,
                          "--token", tokens["constrained"], "--address", link.ns_ip,
                          "--duration", str(scenario.duration),
                          *(["--audio-only"] if scenario.audio_only else []),
                          *(["--start-bitrate", str(scenario.start_kbit * 1000)]
                            if scenario.start_kbit is not None else []))
        last_trace = None
        waiting = asyncio.get_running_loop().run_in_executor(None, proc.communicate)
        for at, rate in scenario.schedule:
            while time.time() < origin + at:
                await asyncio.sleep(min(1.0, max(0.0, origin + at - time.time())))
                if trace is not None:
                    last_trace = trace() or last_trace
            link.set_rate(rate)
        while not waiting.done():
            await asyncio.wait([waiting], timeout=1.0)
            if trace is not None:
                last_trace = trace() or last_trace
        out, err = await waiting
        if proc.returncode != 0:
            raise RuntimeError(f"constrained subscriber failed: {err.decode()[-2000:]}")
        record = json.loads(out)
        top = max(la.config.width for la in sim.layers)
        low = min(la.config.width for la in sim.layers)
        summary = summarise(record, publisher.participant_id or "", origin, scenario, top, low,
                            descheduled(server_stalls, server_cpu))
        # The unconstrained viewer over the same run, for "the others are unaffected".
        (vtrack,) = viewer.tracks_from(publisher.participant_id or "", "video")
        mono_origin = time.monotonic() - (time.time() - origin)
        tail = [w for t, w in vtrack.arrivals if t - mono_origin > scenario.duration - 10]
        summary["unconstrained_viewer"] = {
            "fps_last_10s": round(len(tail) / 10, 1),
            "widths_last_10s": sorted(set(tail)),
            "top_share_last_10s": round(tail.count(top) / len(tail), 2) if tail else 0.0,
        }
        summary["publisher_layers_active"] = [la.active for la in sim.layers]
        # (from, ms, CPU ms used within): little CPU, the machine did not run the process.
        summary["server_process_stalls"] = [
            (round(x - origin, 2), round((y - x) * 1000), round(used * 1000))
            for (x, y), used in zip(server_stalls, server_cpu, strict=True)]
        if last_trace is not None:
            summary["estimator"] = last_trace
        return summary
    finally:
        if watcher is not None:
            watcher.cancel()
        if sim is not None:
            await sim.stop()
        await asyncio.gather(publisher.close(), viewer.close())


def main(argv: list[str] | None = None) -> None:
    from mediaserver.config import DEV_API_KEY, DEV_API_SECRET, build_config
    from mediaserver.sfu import aiortc_adapter
    from mediaserver.signaling.app import ROOMS_KEY, create_app
    from mediaserver.tokens import create_token

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=sorted(SCENARIOS), default="drop")
    ap.add_argument("--plain", action="store_true",
                    help="plain forwarding (no allocation, top layer to everyone)")
    args = ap.parse_args(argv)
    scenario = SCENARIOS[args.scenario]

    async def go() -> dict[str, Any]:
        from aiohttp import web

        aiortc_adapter.install()
        with ShapedLink() as link:
            config = build_config({"dev": True, "host": "0.0.0.0",
                                   "bind_host": link.host_ip, "allow_loopback": True,
                                   "adaptation": not args.plain}, {}, None)
            app = create_app(config)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "0.0.0.0", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            try:
                def token(identity: str) -> str:
                    return create_token(DEV_API_KEY, DEV_API_SECRET, room="adapt",
                                        identity=identity, kind="group", now=time.time())

                tokens = {k: token(k) for k in ("publisher", "viewer", "constrained")}

                samples: list[Any] = []
                t0 = time.time()
                mono0 = time.monotonic()

                def trace() -> Any:
                    room = app[ROOMS_KEY].rooms.get("adapt")
                    p = room.by_identity("constrained") if room else None
                    if p is None or p.subscriber is None:
                        return None
                    est = p.subscriber.adaptation.estimator
                    video = [c for c in p.subscriber.consumers.values() if c.kind == "video"]
                    layers = [[s.wire_bitrate for s in c.producer.streams] for c in
                              p.subscriber.consumers.values()]
                    samples.append([round(time.time() - t0, 1), est.value, layers] + [
                        (c.spatial, c.target.spatial, c.paused, c.waiting_keyframe,
                         c.stats.packets_sent, c.nacks_received, c.retransmitted,
                         c.keyframe_requests,
                         c.layer_switches)
                        for c in video])
                    return {"estimate": est.value, "samples": samples[-60:],
                            "probes_ok": est.probes_ok,
                            "probes_failed": est.probes_failed,
                            "history": [(round(t - mono0, 1), c, b)
                                        for t, c, b in est.history]}

                return await run(f"ws://127.0.0.1:{port}/v1/signal", tokens, scenario,
                                 link.host_ip, link, trace=trace)
            finally:
                await runner.cleanup()

    print(json.dumps(asyncio.run(go()), indent=2))


if __name__ == "__main__":
    main()
