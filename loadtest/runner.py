"""Runs a load-test scenario: joins rooms of aiortc participants, publishes synthetic media,
measures what every subscriber receives, and watches the generator itself.

Everything runs on one event loop in one process, as LiveKit's ``lk load-test`` does; its
own CPU and event-loop lag are measured, because a saturated generator makes the server
look slow (late frames, "freezes") when it is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

import aiohttp
import numpy as np
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from loadtest import media, report, window
from loadtest.client import LOOPBACK, ReceivedTrack, SignalClient
from loadtest.janus import JanusClient
from loadtest.profiles import (
    NetworkProfile,
    PacketTap,
    ProfileAssignment,
    assign_profiles,
    install_tap,
)
from loadtest.simulcast import SimulcastPublisher, scaled_layers
from mediaserver.sfu.aiortc_adapter import CandidatePolicy
from mediaserver.tokens import create_token

JOIN_TIMEOUT_S = 30.0
TARGETS = ("mediaserver", "janus", "relay")
AUDIO_CHECK_EVERY = 25  # audio frames between spectrum checks (one per half second)


class ScenarioError(RuntimeError):
    """The scenario could not run: a participant could not connect, join or publish."""


@dataclass(frozen=True)
class Scenario:
    url: str
    api_key: str = "devkey"
    api_secret: str = "devsecret"
    rooms: int = 1
    participants: int = 2  # per room
    kind: str = "group"
    publishers: int | None = None  # per room; None: everyone
    audio_only: int = 0  # of the publishers, per room
    width: int = 320
    height: int = 240
    fps: int = 15
    video_bitrate_kbps: int | None = None  # cheap mode's replay; None: 0.1 bit per pixel
    simulcast: bool = False  # video publishers send 3 RID layers (loadtest/simulcast.py)
    speakers: bool = False
    ramp_up: float = 5.0  # participants joined per second; 0: all at once
    duration: float = 30.0
    warmup: float = 0.0  # seconds between everyone joined and the measured window
    mode: str = "full"  # or "cheap": no decoding, pre-encoded video
    # mediaserver and relay (bench/relay_server.py) speak our protocol; janus: its VideoRoom
    target: str = "mediaserver"
    ice_address: str = "127.0.0.1"  # where the participants gather ICE candidates
    profiles: tuple[ProfileAssignment, ...] = ()
    # Participants whose profile caps their downlink say so at the start (set_bandwidth
    # start_bitrate), as a phone's browser does from navigator.connection.
    start_hint: bool = False
    thresholds: report.Thresholds = field(default_factory=report.Thresholds)
    seed: int = 1

    @property
    def publishers_per_room(self) -> int:
        return self.participants if self.publishers is None else self.publishers

    def describe(self) -> dict[str, Any]:
        return {"url": self.url, "rooms": self.rooms, "participants_per_room": self.participants,
                "kind": self.kind, "publishers_per_room": self.publishers_per_room,
                "audio_only_per_room": self.audio_only,
                "video": f"{self.width}x{self.height}@{self.fps}",
                "video_bitrate_kbps": self.video_bitrate_kbps, "simulcast": self.simulcast,
                "speakers": self.speakers,
                "ramp_up_per_s": self.ramp_up, "duration_s": self.duration,
                "warmup_s": self.warmup, "mode": self.mode, "target": self.target,
                "ice_address": self.ice_address,
                "profiles": [f"{a.profile.name}:{a.count or 'all'}" for a in self.profiles],
                "start_hint": self.start_hint,
                "thresholds": self.thresholds.as_dict()}


def _server_paused(client: Any, track_id: str) -> str | None:
    """Why the server holds ``track_id`` back from this subscriber now (its last
    ``stream_state`` said paused), or None."""
    last = None
    for e in getattr(client, "events", ()):
        if e.get("type") == "stream_state" and e.get("track_id") == track_id:
            last = e
    if last is None or last.get("state") != "paused":
        return None
    return str(last.get("reason") or "paused")


class MeasuringClient(SignalClient):
    """A SignalClient whose received tracks feed TrackStats (or, cheap: are not read)."""

    def __init__(self, url: str, token: str, *, decode: bool, fps: int,
                 clock: Callable[[], float], policy: CandidatePolicy = LOOPBACK) -> None:
        super().__init__(url, token, policy=policy)
        self.decode, self.fps, self.clock = decode, fps, clock
        self.stats: dict[str, report.TrackStats] = {}

    async def _consume(self, track: MediaStreamTrack, rec: ReceivedTrack) -> None:
        if not self.decode:
            return  # cheap mode: the tap drops RTP before SRTP, nothing reaches the track
        stats = self.stats[rec.track_id] = report.TrackStats(rec.kind, self.fps)
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame: Any = await track.recv()
                now = self.clock()
                if rec.kind == "video":
                    if not media.carries_stamps(frame.width, frame.height):
                        stats.on_video(now, None, None)  # a low simulcast layer
                        continue
                    luma = media.luma_strips(frame)
                    stamp = media.read_stamp(luma)
                    stats.on_video(now, media.read_strip(luma),
                                   None if stamp is None else media.latency_ms(stamp, now))
                    continue
                frequency = None
                if stats.frames % AUDIO_CHECK_EVERY == 0:
                    samples = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0]
                    if np.sqrt(np.mean(samples.astype(np.float64) ** 2)) > 1000:  # not silence
                        frequency = media.dominant_frequency(samples, frame.sample_rate)
                stats.on_audio(now, frequency)


class LoadClient(Protocol):
    """What the runner needs of a participant's client, whichever server it talks to
    (MeasuringClient: our protocol; JanusClient: Janus's VideoRoom)."""

    participant_id: str | None
    joined: dict[str, Any] | None
    events: list[dict[str, Any]]
    stats: dict[str, Any]
    publisher: RTCPeerConnection | None
    on_subscriber_pc: Callable[[RTCPeerConnection], None] | None

    async def connect(self) -> dict[str, Any]: ...

    async def publish(self, *tracks: MediaStreamTrack) -> dict[str, Any]: ...

    def subscriber_ssrcs(self) -> dict[int, tuple[str, bool]]: ...

    async def close(self) -> None: ...


@dataclass
class Participant:
    room: int
    index: int
    label: str  # "p0", unique within its room
    publishes: bool
    audio_only: bool
    profile: NetworkProfile
    frequency: float
    tap: PacketTap
    client: LoadClient | None = None
    connect_started: float | None = None
    published_at: float | None = None
    tracks: list[dict[str, Any]] = field(default_factory=list)  # published: track_id, kind
    media: list[MediaStreamTrack] = field(default_factory=list)  # what it publishes
    simulcast: SimulcastPublisher | None = None  # instead of media, with --simulcast


class GeneratorMonitor:
    """The generator's own CPU and event-loop lag, per phase (``mark`` starts a phase)."""

    def __init__(self, clock: Callable[[], float], interval: float = 0.05) -> None:
        self.clock, self.interval = clock, interval
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._since = self._sample()

    def _sample(self) -> tuple[float, float, float, tuple[int, int] | None]:
        t = os.times()
        return self.clock(), t.user + t.system, time.thread_time(), machine_jiffies()

    async def _run(self) -> None:
        while True:
            before = self.clock()
            await asyncio.sleep(self.interval)
            self.lags.append(max(0.0, self.clock() - before - self.interval) * 1000)

    def start(self) -> None:
        self._since = self._sample()
        self._task = asyncio.create_task(self._run())

    def mark(self) -> dict[str, Any]:
        """Figures since the previous mark (or start); starts the next phase."""
        (w0, p0, t0, m0), now = self._since, self._sample()
        m1 = now[3]
        machine = (100 * (m1[0] - m0[0]) / (m1[1] - m0[1])
                   if m0 is not None and m1 is not None and m1[1] > m0[1] else None)
        phase = report.generator_phase(now[0] - w0, now[1] - p0, now[2] - t0, self.lags,
                                       os.cpu_count() or 1, machine)
        self._since, self.lags = now, []
        return phase

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def machine_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU jiffies of the whole machine (Linux), to tell whether the
    cores were shared with something else, such as the server or other jobs."""
    try:
        with open("/proc/stat") as f:
            cpu = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(cpu) - cpu[3] - cpu[4], sum(cpu)  # idle and iowait are not busy


class DecodeErrorCounter(logging.Filter):
    """Counts, and keeps out of the output, aiortc's "failed to decode" warnings: a
    subscriber that joins mid-stream or loses a packet logs one per undecodable frame."""

    LOGGER = "aiortc.rtcrtpreceiver"

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if "failed to decode" in record.getMessage():
            self.count += 1
            return False
        return True


class Run:
    """One scenario run; ``execute`` returns the result document."""

    def __init__(self, scenario: Scenario, *, progress: TextIO | None = sys.stderr,
                 clock: Callable[[], float] = time.monotonic,
                 on_phase: Callable[[str], None] | None = None) -> None:
        """``on_phase`` is called with "warmup", "window_start" and "window_end" as they
        begin, so that another process can read the server's CPU at the same moments."""
        self.s, self.progress, self.clock = scenario, progress, clock
        self.on_phase = on_phase
        self.run_id = secrets.token_hex(3)
        self.rng = random.Random(scenario.seed)
        self.monitor = GeneratorMonitor(clock)
        self.decode_errors = DecodeErrorCounter()
        self.replay = self._replay() if scenario.mode == "cheap" else []
        self.tones: dict[float, list[bytes]] = {}  # pre-encoded Opus, by frequency
        self.origin = clock()
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.participants = self._plan()

    def _plan(self) -> list[Participant]:
        s = self.s
        profiles = assign_profiles(list(s.profiles), s.participants)
        plan = []
        for room in range(s.rooms):
            for i in range(s.participants):
                publishes = i < s.publishers_per_room
                plan.append(Participant(
                    room, i, f"p{i}", publishes,
                    publishes and i >= s.publishers_per_room - s.audio_only, profiles[i],
                    300.0 + 100 * i,
                    PacketTap(profiles[i], random.Random(self.rng.random()),
                              drop_rtp=s.mode == "cheap")))
        return plan

    def _replay(self) -> list[bytes]:
        s = self.s
        if s.video_bitrate_kbps is None:
            return media.replay_frames(s.width, s.height, s.fps)
        # Warmed up, so that the loop holds the requested rate from its first frame.
        return media.replay_frames(s.width, s.height, s.fps,
                                   bitrate=s.video_bitrate_kbps * 1000, warmup=1.0)

    def room_name(self, room: int) -> str:
        return f"loadtest-{self.run_id}-{room}"

    def _tracks_for(self, p: Participant) -> list[MediaStreamTrack]:
        s = self.s
        tracks: list[MediaStreamTrack] = []
        if not p.audio_only:
            color = (60 + 40 * p.index % 190, 200 - 30 * p.index % 150, 90 + 70 * p.room % 160)
            tracks.append(media.PreEncodedVideoTrack(self.replay, s.fps, self.clock)
                          if s.mode == "cheap" else
                          media.TimestampedVideoTrack(color, s.width, s.height, s.fps, self.clock))
        if s.speakers:  # live encoding: aiortc writes audio levels only for what it encodes
            tracks.append(media.TurnTakingAudioTrack(
                p.frequency, p.index, s.publishers_per_room, self.origin, clock=self.clock))
        else:
            tracks.append(media.PreEncodedAudioTrack(self._tone(p.frequency), self.clock))
        return tracks

    async def _join(self, p: Participant, delay: float) -> None:
        await asyncio.sleep(delay)
        p.client = client = self._client(p)
        client.on_subscriber_pc = lambda pc: install_tap(pc, p.tap, self.clock)
        p.connect_started = self.clock()
        where = f"room{p.room}/{p.label}"
        try:
            reply = await client.connect()
        except (aiohttp.ClientError, OSError) as exc:
            raise ScenarioError(f"{where}: cannot connect to {self.s.url}: {exc}") from exc
        if reply.get("type") != "joined":
            raise ScenarioError(f"{where}: join refused: {reply.get('code')}: "
                                f"{reply.get('message')}")
        if self.s.start_hint and p.profile.rate_kbps and isinstance(client, SignalClient):
            # Before the subscriber offer is answered, so it applies from the first packet.
            await client.request({"type": "set_bandwidth",
                                  "start_bitrate": int(p.profile.rate_kbps * 1000)})
        if p.publishes and self.s.simulcast and not p.audio_only:
            answer = await self._publish_simulcast(p, client)
        elif p.publishes:
            p.media = self._tracks_for(p)
            answer = await client.publish(*p.media)
        if p.publishes:
            if answer.get("type") != "publish_answer":
                raise ScenarioError(f"{where}: publish refused: {answer.get('code')}: "
                                    f"{answer.get('message')}")
            p.published_at = self.clock()
            p.tracks = [{"track_id": t["track_id"], "kind": t["kind"]} for t in answer["tracks"]]

    async def _publish_simulcast(self, p: Participant, client: LoadClient) -> dict[str, Any]:
        """Three RID layers of pre-encoded video (sizes and rates from --video and
        --video-bitrate) plus the participant's own tone, as a browser would publish."""
        s = self.s
        if not isinstance(client, SignalClient):
            raise ScenarioError("--simulcast needs --target mediaserver")
        layers = scaled_layers(s.width, s.height, s.video_bitrate_kbps or 500)
        # Encoding the layers the first time takes seconds: not on the event loop.
        p.simulcast = await asyncio.to_thread(
            SimulcastPublisher, client, layers, s.fps, audio_frames=self._tone(p.frequency))
        return await p.simulcast.start()

    def _tone(self, frequency: float) -> list[bytes]:
        if frequency not in self.tones:
            self.tones[frequency] = media.encode_opus(frequency)
        return self.tones[frequency]

    def _client(self, p: Participant) -> LoadClient:
        s, identity = self.s, f"{p.label}-{self.run_id}"
        policy = CandidatePolicy(addresses=(s.ice_address,))
        if s.target == "janus":
            return JanusClient(s.url, self.room_name(p.room), identity, policy=policy)
        token = create_token(s.api_key, s.api_secret, room=self.room_name(p.room),
                             identity=identity, name=p.label, kind=s.kind, now=time.time())
        return MeasuringClient(s.url, token, decode=s.mode == "full", fps=s.fps,
                               clock=self.clock, policy=policy)

    async def execute(self) -> dict[str, Any]:
        s = self.s
        logging.getLogger(DecodeErrorCounter.LOGGER).addFilter(self.decode_errors)
        self.monitor.start()
        progress = asyncio.create_task(self._progress())
        try:
            step = 1 / s.ramp_up if s.ramp_up > 0 else 0.0
            joins = [asyncio.create_task(self._join(p, i * step))
                     for i, p in enumerate(self.participants)]
            try:
                done = asyncio.gather(*joins)
                await asyncio.wait_for(done, JOIN_TIMEOUT_S + len(joins) * step)
            except TimeoutError as exc:
                raise ScenarioError(f"participants did not join and publish within "
                                    f"{JOIN_TIMEOUT_S:.0f} s (plus ramp-up)") from exc
            finally:
                for task in joins:
                    task.cancel()
            join_phase = self.monitor.mark()
            if s.warmup > 0:
                self._phase("warmup")
                await asyncio.sleep(s.warmup)  # a fixed warm-up duration, not a condition
                self.monitor.mark()  # not part of the window
            before = self._snapshot()
            self._phase("window_start")
            window_start = self.clock()
            sent_before = await self._publisher_packets()
            await asyncio.sleep(s.duration)  # the measurement window itself
            end = self.clock()
            after = self._snapshot()
            self._phase("window_end")
            sent = await self._publisher_packets() - sent_before
            counted = self._window(before, after, end - window_start, sent)
            doc = self._document(end, end - window_start, join_phase, self.monitor.mark(),
                                 counted)
        finally:
            progress.cancel()
            if self.progress is not None and self.progress.isatty():
                print(file=self.progress)  # end the status line
            await self.monitor.stop()
            await self._close_all()
            logging.getLogger(DecodeErrorCounter.LOGGER).removeFilter(self.decode_errors)
        return doc

    async def _close_all(self) -> None:
        for p in self.participants:
            if p.simulcast is not None:
                await p.simulcast.stop()
        clients = [p.client for p in self.participants if p.client is not None]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(c.close() for c in clients),
                                                  return_exceptions=True), 20)

    def _phase(self, name: str) -> None:
        if self.on_phase is not None:
            self.on_phase(name)

    def _subscriptions(self, sub: Participant) -> list[tuple[Participant, dict[str, Any]]]:
        """(publisher, published track) of everything ``sub`` should receive."""
        return [(pub, t) for pub in self.participants
                if pub is not sub and pub.room == sub.room and pub.published_at is not None
                for t in pub.tracks]

    def _snapshot(self) -> list[dict[int, window.Count]]:
        return [window.snapshot(p.tap.streams) for p in self.participants]

    async def _publisher_packets(self) -> int:
        """RTP packets the publishers have sent so far (aiortc's outbound-rtp stats)."""
        total = 0
        for p in self.participants:
            pc = p.client.publisher if p.client is not None else None
            for sender in pc.getSenders() if pc is not None else []:
                for st in (await sender.getStats()).values():
                    if getattr(st, "type", None) == "outbound-rtp":
                        total += st.packetsSent
        return total

    def _window(self, before: list[dict[int, window.Count]],
                after: list[dict[int, window.Count]], seconds: float,
                publisher_packets: int) -> dict[str, Any]:
        rows, unknown = [], 0
        for sub, start, end in zip(self.participants, before, after, strict=True):
            assert sub.client is not None
            tracks, stray = window.subscriber_window(start, end, sub.client.subscriber_ssrcs())
            unknown += stray
            for pub, t in self._subscriptions(sub):
                w = tracks.get(t["track_id"], window.TrackWindow())
                rows.append({"room": f"room{sub.room}", "subscriber": sub.label,
                             "publisher": pub.label, "track_id": t["track_id"],
                             "kind": t["kind"], **vars(w),
                             "paused_by_server": _server_paused(sub.client, t["track_id"])})
        return window.summarise(rows, unknown, seconds, publisher_packets)

    def _rows(self, end: float) -> tuple[list[dict[str, Any]], list[int]]:
        rows, latencies = [], []
        for sub in self.participants:
            assert sub.client is not None and sub.connect_started is not None
            counters: dict[str, report.PacketTotals] = {}
            for ssrc, (track_id, rtx) in sub.client.subscriber_ssrcs().items():
                counter = sub.tap.streams.get(ssrc)
                if counter is not None:
                    totals = counters.setdefault(track_id, report.PacketTotals())
                    (totals.rtx if rtx else totals.media).append(counter)
            for pub, t in self._subscriptions(sub):
                assert pub.published_at is not None
                stats = sub.client.stats.get(t["track_id"])
                if stats is not None and t["kind"] == "video":
                    latencies += stats.latencies
                rows.append(report.track_row(
                    room=f"room{sub.room}", subscriber=sub.label, publisher=pub.label,
                    track_id=t["track_id"], kind=t["kind"],
                    stats=stats if self.s.mode == "full" else None,
                    packets=counters.get(t["track_id"], report.PacketTotals()),
                    ready_at=max(sub.connect_started, pub.published_at), end=end,
                    expected_frequency=pub.frequency))
                rows[-1]["paused_by_server"] = _server_paused(sub.client, t["track_id"])
        return rows, latencies

    def _speakers(self) -> dict[str, Any] | None:
        if not self.s.speakers:
            return None
        clients = [p.client for p in self.participants if p.client is not None]
        labels = {c.participant_id: f"room{p.room}/{p.label}"
                  for p in self.participants if (c := p.client) is not None}
        events = [e for c in clients for e in c.events if e.get("type") == "speakers_changed"]
        seen = sorted({labels.get(e.get("dominant"), "?") for e in events
                       if e.get("dominant")})
        return {"changes_per_subscriber": round(len(events) / max(1, len(clients)), 1),
                "dominant_seen": seen}

    def _document(self, end: float, measured: float, join_phase: dict[str, Any],
                  generated: dict[str, Any], counted: dict[str, Any]) -> dict[str, Any]:
        rows, latencies = self._rows(end)
        summary = report.summarise(rows, latencies)
        summary["decode_errors"] = self.decode_errors.count
        # aiortc's jitter buffer releases a frame when the next one starts arriving.
        summary["latency_includes_frame_hold_ms"] = round(1000 / self.s.fps)
        failures = report.check(summary, self.s.thresholds)
        if counted["missing"]:
            failures.append(f"{len(counted['missing'])} track(s) sent nothing during the "
                            "window: " + ", ".join(counted["missing"][:5]))
        behind = {kind: max((b for p in self.participants for t in p.media if t.kind == kind
                             if (b := media.behind_schedule(t, end)) is not None), default=None)
                  for kind in ("audio", "video")}
        reasons = (generated["reasons"] + [f"while joining: {r}" for r in join_phase["reasons"]]
                   + report.schedule_reasons(behind))
        generator = {**generated, "join_phase": join_phase, "publishers_behind_s": behind,
                     "saturated": bool(reasons), "reasons": reasons}
        return {
            "run_id": self.run_id, "scenario": self.s.describe(),
            # What cheap mode's replayed video really is (VP8 payload, before RTP).
            "replay_video_kbps": (round(media.frames_kbps(self.replay, self.s.fps))
                                  if self.replay else None),
            "measured_s": round(measured, 2), "started_at": self.started_at,
            "participants": [{
                "room": f"room{p.room}", "label": p.label, "publishes": p.publishes,
                "audio_only": p.audio_only, "profile": p.profile.name,
                "participant_id": p.client.participant_id if p.client else None,
                "profile_drops": p.tap.impaired,
                "profile_queue_drops": p.tap.queue_drops,
                "client_errors": getattr(p.client, "errors", []),
            } for p in self.participants],
            "tracks": rows, "window": counted, "summary": summary, "speakers": self._speakers(),
            "generator": generator, "generator_saturated": generator["saturated"],
            "failures": failures, "passed": not failures,
        }

    async def _progress(self) -> None:
        """A status line on stderr every second (rewritten in place on a terminal)."""
        if self.progress is None:
            return
        tty = self.progress.isatty()
        seen: dict[int, int] = {}  # id(TrackStats) -> latencies already counted
        last_frames, last_packets, tick = 0, 0, 0
        while True:
            await asyncio.sleep(1.0)
            tick += 1
            clients = [p.client for p in self.participants if p.client and p.client.joined]
            stats = [st for c in clients for st in c.stats.values() if st.kind == "video"]
            frames = sum(st.frames for st in stats)
            packets = sum(p.tap.packets for p in self.participants)
            fresh: list[int] = []
            for st in stats:
                fresh += st.latencies[seen.get(id(st), 0):]
                seen[id(st)] = len(st.latencies)
            line = report.progress_line(
                self.clock() - self.origin, len(clients), len(self.participants),
                packets - last_packets, len(stats), frames - last_frames, report.pct(fresh, 95),
                max(self.monitor.lags[-20:], default=0.0), decoding=self.s.mode == "full")
            last_frames, last_packets = frames, packets
            if tty:
                print("\r" + line, end="", file=self.progress, flush=True)
            elif tick % 5 == 1:
                print(line, file=self.progress, flush=True)
