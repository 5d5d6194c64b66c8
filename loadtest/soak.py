"""Soak mode: join/leave cycles of a group session, checking the server returns to baseline.

A leak per session (an asyncio task that outlives its peer connection, a socket left open,
a cache keyed by a room that is gone) is invisible in a 30-second load test and fatal after
a week of therapy sessions. Each cycle here opens a fresh room, has ``participants`` people
join and publish, waits until everyone hears everyone, has them all leave and ends the room;
then it waits for the node to go idle and samples its resident memory, open file
descriptors and asyncio task count from ``/metrics`` (``process_resident_memory_bytes``,
``process_open_fds``, ``mediaserver_asyncio_tasks``).

The verdict (``evaluate``, pure) compares the last sample with the baseline taken after a
few warm-up cycles (first-time imports, caches and allocator arenas are not leaks): tasks
and descriptors must come back (a little slack for timers in flight) and memory must stay
flat, both in total and as a least-squares slope per cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from loadtest.client import SignalClient
from loadtest.media import SineAudioTrack, SyntheticVideoTrack
from mediaserver.tokens import Grants, create_token


@dataclass(frozen=True)
class SoakSpec:
    url: str
    api_key: str = "devkey"
    api_secret: str = "devsecret"
    cycles: int = 100
    minutes: float | None = None  # stop starting cycles after this long (cycles still caps)
    participants: int = 3
    video: bool = False  # the first participant also sends 320x240@15 video
    hold: float = 2.0  # seconds of audio everyone must have heard from everyone per cycle
    warmup: int = 3  # cycles before the baseline sample
    settle_timeout: float = 30.0  # for the node to go idle after a cycle
    media_timeout: float = 30.0  # for everyone to hear everyone
    max_task_growth: int = 2
    max_fd_growth: int = 4
    max_rss_growth_mb: float = 24.0
    max_rss_slope_kb: float = 100.0  # per cycle, fitted over the second half after warm-up


@dataclass
class Sample:
    cycle: int  # 0: before the first cycle
    at: float  # seconds since the start
    rss_mb: float
    fds: int
    tasks: int
    cycle_s: float = 0.0


@dataclass
class SoakResult:
    spec: dict[str, Any]
    samples: list[Sample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    error: str | None = None
    refusals: int = 0  # joins the node refused as overloaded or too fast, then retried

    @property
    def passed(self) -> bool:
        return self.error is None and not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "passed": self.passed, "failures": self.failures,
                "error": self.error, "refusals": self.refusals,
                "summary": summarize(self.samples, self.spec["warmup"]),
                "samples": [asdict(s) for s in self.samples]}


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 for fewer than two distinct x)."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    if var == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / var


def summarize(samples: list[Sample], warmup: int) -> dict[str, Any]:
    if not samples:
        return {}
    base = next((s for s in samples if s.cycle == warmup), samples[0])
    last = samples[-1]
    # The slope is fitted over the second half of the cycles after the warm-up: memory that
    # climbs and then levels off (allocator arenas filling) is not a leak; a steady climb is.
    middle = base.cycle + (last.cycle - base.cycle) // 2
    after = [(float(s.cycle), s.rss_mb) for s in samples if s.cycle >= middle]
    return {
        "cycles": last.cycle, "seconds": round(last.at, 1),
        "start": {"rss_mb": samples[0].rss_mb, "fds": samples[0].fds, "tasks": samples[0].tasks},
        "baseline": {"cycle": base.cycle, "rss_mb": base.rss_mb, "fds": base.fds,
                     "tasks": base.tasks},
        "end": {"rss_mb": last.rss_mb, "fds": last.fds, "tasks": last.tasks},
        "rss_growth_mb": round(last.rss_mb - base.rss_mb, 2),
        "rss_slope_kb_per_cycle": round(slope(after) * 1024, 1),
        "slope_from_cycle": middle,
        "max": {"rss_mb": max(s.rss_mb for s in samples), "fds": max(s.fds for s in samples),
                "tasks": max(s.tasks for s in samples)},
    }


def evaluate(samples: list[Sample], spec: SoakSpec) -> list[str]:
    """The thresholds that failed, as sentences; empty when the node came back flat."""
    if not samples or samples[-1].cycle <= spec.warmup:
        return [f"too few cycles: need more than {spec.warmup} (the warm-up) to judge"]
    s = summarize(samples, spec.warmup)
    base, end = s["baseline"], s["end"]
    failures = []
    if end["tasks"] > base["tasks"] + spec.max_task_growth:
        failures.append(f"asyncio tasks grew from {base['tasks']} to {end['tasks']}")
    if end["fds"] > base["fds"] + spec.max_fd_growth:
        failures.append(f"open file descriptors grew from {base['fds']} to {end['fds']}")
    if s["rss_growth_mb"] > spec.max_rss_growth_mb:
        failures.append(f"resident memory grew {s['rss_growth_mb']} MB "
                        f"(limit {spec.max_rss_growth_mb})")
    if s["rss_slope_kb_per_cycle"] > spec.max_rss_slope_kb:
        failures.append(f"resident memory grows {s['rss_slope_kb_per_cycle']} kB per cycle "
                        f"(limit {spec.max_rss_slope_kb})")
    return failures


def parse_metrics(text: str) -> dict[str, float]:
    """The node's figures the soak watches, summed over labels."""
    wanted = {"process_resident_memory_bytes", "process_open_fds", "mediaserver_asyncio_tasks",
              "mediaserver_participants", "mediaserver_rooms"}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def http_base(ws_url: str) -> str:
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))


class Soak:
    def __init__(self, spec: SoakSpec, progress: TextIO | None = sys.stderr,
                 ssl: Any = None) -> None:
        self.spec = spec
        self.progress = progress
        self.ssl = ssl
        self.base = http_base(spec.url)
        self.result = SoakResult(spec=asdict(spec))

    def _token(self, room: str, identity: str, **kw: Any) -> str:
        return create_token(self.spec.api_key, self.spec.api_secret, room=room,
                            identity=identity, now=time.time(), **kw)

    async def _metrics(self, http: aiohttp.ClientSession) -> dict[str, float]:
        async with http.get(self.base + "/metrics", ssl=self.ssl) as resp:
            resp.raise_for_status()
            return parse_metrics(await resp.text())

    async def _idle_sample(self, http: aiohttp.ClientSession, cycle: int, started: float,
                           cycle_s: float) -> Sample:
        """Wait for no rooms, no participants and (after the baseline) tasks back down."""
        base = next((s for s in self.result.samples if s.cycle == self.spec.warmup), None)
        deadline = time.monotonic() + self.spec.settle_timeout
        while True:
            m = await self._metrics(http)
            idle = m.get("mediaserver_rooms", 0) == 0 and m.get("mediaserver_participants", 0) == 0
            settled = base is None or m.get("mediaserver_asyncio_tasks", 0) <= base.tasks
            if (idle and settled) or time.monotonic() > deadline:
                if not idle:
                    raise RuntimeError(f"cycle {cycle}: the node did not go idle within "
                                       f"{self.spec.settle_timeout}s")
                return Sample(cycle, round(time.monotonic() - started, 1),
                              round(m.get("process_resident_memory_bytes", 0) / 2**20, 2),
                              int(m.get("process_open_fds", 0)),
                              int(m.get("mediaserver_asyncio_tasks", 0)), round(cycle_s, 2))
            await asyncio.sleep(0.25)

    async def _cycle(self, http: aiohttp.ClientSession, cycle: int) -> None:
        spec = self.spec
        room = f"soak-{int(time.time())}-{cycle}"
        clients = [SignalClient(spec.url, self._token(room, f"soak-{cycle}-{i}", kind="group"),
                                ssl=self.ssl)
                   for i in range(spec.participants)]
        try:
            for i, c in enumerate(clients):
                reply = await c.connect()
                for _ in range(10):  # a busy node says so; the soak waits rather than fails
                    if reply.get("code") not in ("node_overloaded", "join_rate_limited"):
                        break
                    self.result.refusals += 1
                    await asyncio.sleep(1.0)
                    reply = await c.request({"type": "join", "token": c.token})
                    if reply.get("type") == "joined":
                        c.joined, c.participant_id = reply, reply["participant_id"]
                if reply.get("type") != "joined":
                    raise RuntimeError(f"cycle {cycle}: join refused: {reply}")
                tracks: list[Any] = [SineAudioTrack(300 + 100 * i)]
                if spec.video and i == 0:
                    tracks.append(SyntheticVideoTrack((200, 60, 60), width=320, height=240,
                                                      fps=15))
                reply = await c.publish(*tracks)
                if reply.get("type") != "publish_answer":
                    raise RuntimeError(f"cycle {cycle}: publish refused: {reply}")
            deadline = time.monotonic() + spec.media_timeout
            while not all(self._hears_everyone(c, clients) for c in clients):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cycle {cycle}: media did not reach everyone within "
                                       f"{spec.media_timeout}s")
                # Polled: the condition is frames counted by the clients' receive tasks.
                await asyncio.sleep(0.1)
        finally:
            for c in clients:
                with contextlib.suppress(Exception):
                    await c.close()
        admin = create_token(spec.api_key, spec.api_secret, identity="soak", now=time.time(),
                             grants=Grants(publish=False, subscribe=False, admin=True))
        async with http.delete(f"{self.base}/v1/rooms/{room}", ssl=self.ssl,
                               headers={"Authorization": f"Bearer {admin}"}) as resp:
            if resp.status not in (200, 404):
                raise RuntimeError(f"cycle {cycle}: ending the room: HTTP {resp.status}")

    def _hears_everyone(self, c: SignalClient, clients: list[SignalClient]) -> bool:
        need = max(10, int(50 * self.spec.hold))  # 20 ms audio frames
        for other in clients:
            if other is c or other.participant_id is None:
                continue
            audio = c.tracks_from(other.participant_id, "audio")
            if not audio or audio[0].frames < need:
                return False
        return True

    async def execute(self) -> SoakResult:
        spec, result = self.spec, self.result
        started = time.monotonic()
        async with aiohttp.ClientSession() as http:
            try:
                result.samples.append(await self._idle_sample(http, 0, started, 0.0))
                for cycle in range(1, spec.cycles + 1):
                    if spec.minutes is not None and time.monotonic() - started > spec.minutes * 60:
                        break
                    t0 = time.monotonic()
                    await self._cycle(http, cycle)
                    sample = await self._idle_sample(http, cycle, started, time.monotonic() - t0)
                    result.samples.append(sample)
                    if self.progress is not None:
                        print(f"cycle {cycle}: {sample.cycle_s:.1f}s rss {sample.rss_mb} MB "
                              f"fds {sample.fds} tasks {sample.tasks}", file=self.progress,
                              flush=True)
            except (RuntimeError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                result.error = str(exc) or type(exc).__name__
        if result.error is None:
            result.failures = evaluate(result.samples, spec)
        return result


def format_soak(doc: dict[str, Any]) -> str:
    s = doc["summary"]
    if not s:
        return f"soak: no samples ({doc['error']})"
    lines = [
        f"soak: {s['cycles']} cycles in {s['seconds']} s, "
        f"{doc['spec']['participants']} participants per cycle",
        f"  start     rss {s['start']['rss_mb']} MB, fds {s['start']['fds']}, "
        f"tasks {s['start']['tasks']}",
        f"  baseline  rss {s['baseline']['rss_mb']} MB, fds {s['baseline']['fds']}, "
        f"tasks {s['baseline']['tasks']} (after cycle {s['baseline']['cycle']})",
        f"  end       rss {s['end']['rss_mb']} MB, fds {s['end']['fds']}, "
        f"tasks {s['end']['tasks']}",
        f"  rss growth {s['rss_growth_mb']} MB, slope {s['rss_slope_kb_per_cycle']} kB/cycle",
    ]
    if doc["error"]:
        lines.append(f"error: {doc['error']}")
    lines += [f"FAIL: {f}" for f in doc["failures"]]
    lines.append("result: " + ("PASS" if doc["passed"] else "FAIL"))
    return "\n".join(lines)
