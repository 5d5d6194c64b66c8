"""An aiortc client of the signalling protocol: the tests' and the load test's participant.

It speaks protocol v1 over a WebSocket, publishes on a connection it offers and receives
on a connection the server offers, and records what it receives (decoded video frames,
audio frames) so that callers can assert on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.sdp import SessionDescription

from loadtest.media import body_color, read_frame_number
from mediaserver.sfu import aiortc_adapter

LOOPBACK = aiortc_adapter.CandidatePolicy(addresses=("127.0.0.1",))
MAX_REDIRECTS = 3
RETRYABLE = ("room_unavailable", "cluster_unavailable")  # the room is moving: retry
RETRY_INTERVAL = 0.25


async def json_messages(ws: aiohttp.ClientWebSocketResponse
                        ) -> AsyncIterator[dict[str, Any]]:
    """The JSON text messages of a signalling WebSocket, until it closes."""
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            yield json.loads(msg.data)


def _config() -> RTCConfiguration:
    # max-bundle: aiortc's default "balanced" policy gives the second and later audio
    # m-lines of one offer a transport that BUNDLE then discards, so they never play.
    return RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


@dataclass
class ReceivedTrack:
    track_id: str
    participant_id: str
    kind: str
    frames: int = 0
    first_frame_at: float | None = None
    last_frame_numbers: list[int] = field(default_factory=list)
    colors: list[tuple[int, int, int]] = field(default_factory=list)
    audio: list[np.ndarray] = field(default_factory=list)
    audio_rate: int = 48000
    # (arrival time, width) of recent frames: frame rate, gaps and the layer received.
    arrivals: list[tuple[float, int]] = field(default_factory=list)
    keep_arrivals: int = 3000

    def widths_since(self, since: float) -> list[int]:
        return [w for t, w in self.arrivals if t >= since]

    def max_gap(self, since: float, until: float | None = None) -> float:
        """The longest time without a frame between ``since`` and ``until`` (or the last)."""
        times = [t for t, _ in self.arrivals if t >= since and (until is None or t <= until)]
        if len(times) < 2:
            return float("inf")
        return max(b - a for a, b in itertools.pairwise(times))


class SignalClient:
    def __init__(self, url: str, token: str, *, policy: aiortc_adapter.CandidatePolicy = LOOPBACK,
                 keep_audio_frames: int = 100, ssl: Any = None, red: bool = False) -> None:
        self.url = url
        self.ssl = ssl  # an ssl.SSLContext for wss:// with a private CA, else the default
        self.token = token
        self.policy = policy
        self.keep_audio_frames = keep_audio_frames
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.participant_id: str | None = None
        self.joined: dict[str, Any] | None = None
        self.events: list[dict[str, Any]] = []
        self.publisher: RTCPeerConnection | None = None
        self.subscriber: RTCPeerConnection | None = None
        self.received: dict[str, ReceivedTrack] = {}
        self.published: list[dict[str, Any]] = []
        self.on_subscriber_pc: Callable[[RTCPeerConnection], None] | None = None
        # aiortc cannot decode RED: a client leaves it out of its answers unless told to
        # unwrap it (loadtest.red.receive_red, kept here once installed).
        self.red = red
        self.red_receiver: Any = None
        self._ids = itertools.count(1)
        self._waiters: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._offer_lock = asyncio.Lock()
        self.node_url: str | None = None  # the node this client is connected to
        self.redirects: list[str] = []  # signalling URLs it was sent to, in order
        self.join_seconds: float | None = None  # connect() to its reply, redirects included

    # -- signalling ----------------------------------------------------------------------

    async def connect(self, **join_fields: Any) -> dict[str, Any]:
        """Join; a ``redirect`` reply (the room lives on another node) is followed."""
        self.session = aiohttp.ClientSession()
        started = time.monotonic()
        reply = await self._enter({"type": "join", "token": self.token, **join_fields},
                                  self.url)
        self.join_seconds = time.monotonic() - started
        if reply["type"] == "joined":
            self.joined = reply
            self.participant_id = reply["participant_id"]
        return reply

    async def _open(self, url: str) -> None:
        assert self.session is not None
        self.ws = await self.session.ws_connect(url, heartbeat=15, ssl=self._ssl_arg)
        self._reader = asyncio.create_task(self._read())

    async def _close_socket(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()

    async def _enter(self, msg: dict[str, Any], url: str) -> dict[str, Any]:
        """Send ``join``/``resume`` on a new socket to ``url``, following redirects."""
        for _ in range(MAX_REDIRECTS + 1):
            await self._open(url)
            reply = await self.request(msg)
            if reply.get("type") != "redirect":
                self.node_url = url
                return reply
            self.redirects.append(reply["url"])
            url = reply["url"]
            await self._close_socket()
        raise RuntimeError(f"more than {MAX_REDIRECTS} redirects")

    @property
    def _ssl_arg(self) -> Any:
        return True if self.ssl is None else self.ssl  # aiohttp's default: verify

    async def kill_socket(self) -> None:
        """Drop the signalling connection without a leave, as a network change would."""
        assert self.ws is not None
        if self._reader is not None:
            self._reader.cancel()
        conn = getattr(self.ws, "_conn", None)
        transport = getattr(conn, "transport", None)
        if transport is not None:
            transport.abort()  # a reset, not a polite close
        await self.ws.close()

    async def resume(self, retry_for: float = 0.0) -> dict[str, Any]:
        """Come back on a new socket as the same participant.

        Tries the node it was on, then the URL it started from (a load balancer, any node),
        following redirects. While the room is moving to another node (``room_unavailable``,
        or the old node refuses connections) it retries for up to ``retry_for`` seconds.
        A ``resumed`` reply with ``restored: true`` means the room moved: the media
        connections are gone (forgotten here already) and the caller publishes again.
        """
        assert self.session is not None and self.joined is not None
        msg = {"type": "resume", "token": self.token, "participant_id": self.participant_id,
               "resume_token": self.joined["resume_token"]}
        deadline = time.monotonic() + retry_for
        urls = list(dict.fromkeys([self.node_url or self.url, self.url]))
        while True:
            reply: dict[str, Any] | None = None
            for url in urls:
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    reply = await self._enter(msg, url)
                    if reply.get("code") not in RETRYABLE:
                        return reply
                    await self._close_socket()
            if time.monotonic() >= deadline:
                if reply is None:
                    raise ConnectionError("no node accepted the connection")
                return reply
            await asyncio.sleep(RETRY_INTERVAL)

    def _forget_media(self) -> None:
        """The room moved to another node: the old connections lead nowhere."""
        for task in list(self._tasks):
            task.cancel()
        for pc in (self.publisher, self.subscriber):
            if pc is not None:
                self._spawn(pc.close())
        self.publisher = self.subscriber = None
        self.received.clear()
        self.published = []

    async def send(self, msg: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps(msg))

    async def send_raw(self, raw: str) -> None:
        assert self.ws is not None
        await self.ws.send_str(raw)

    async def request(self, msg: dict[str, Any], timeout: float = 20.0) -> dict[str, Any]:
        request_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = fut
        await self.send({**msg, "id": request_id})
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiters.pop(request_id, None)

    async def _read(self) -> None:
        assert self.ws is not None
        async for data in json_messages(self.ws):
            self.events.append(data)
            if data.get("type") == "resumed" and data.get("restored"):
                self._forget_media()  # before any offer from the new node is handled
            waiter = self._waiters.get(data.get("id"))
            if waiter is not None and not waiter.done():
                waiter.set_result(data)
            if data.get("type") == "subscriber_offer":
                self._spawn(self._answer_subscriber(data))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_event(self, predicate: Callable[[dict[str, Any]], bool],
                         timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if predicate(event):
                    return event
            await asyncio.sleep(0.02)
        raise TimeoutError("event did not arrive")

    # -- media ---------------------------------------------------------------------------

    async def publish(self, *tracks: MediaStreamTrack,
                      codec_preferences: dict[str, list[Any]] | None = None,
                      restart: bool = False) -> dict[str, Any]:
        pc = self.publisher
        if pc is None:
            pc = self.publisher = RTCPeerConnection(_config())
        for track in tracks:
            transceiver = pc.addTransceiver(track, direction="sendonly")
            if codec_preferences and track.kind in codec_preferences:
                transceiver.setCodecPreferences(codec_preferences[track.kind])
        aiortc_adapter.apply_candidate_policy(pc, self.policy)
        await pc.setLocalDescription(await pc.createOffer())
        meta: list[dict[str, Any]] = []
        previous = list(self.published) if restart else []
        for t in pc.getTransceivers():
            m = {"mid": t.mid, "source": "camera" if t.kind == "video" else "microphone"}
            same_kind = next((p for p in previous if p["kind"] == t.kind), None)
            if same_kind is not None:
                previous.remove(same_kind)
                m["track_id"] = same_kind["track_id"]  # the same track on a new connection
            meta.append(m)
        reply = await self.request({"type": "publish_offer", "sdp": pc.localDescription.sdp,
                                    "tracks": meta, "restart": restart})
        if reply["type"] == "publish_answer":
            await pc.setRemoteDescription(RTCSessionDescription(reply["sdp"], "answer"))
            known = {p["track_id"] for p in self.published}
            self.published += [t for t in reply["tracks"] if t["track_id"] not in known]
        return reply

    async def reconnect_media(self, *tracks: MediaStreamTrack) -> None:
        """New media connections after the network path changed (aiortc has no ICE restart).

        The tracks keep their ids: the server moves them to the new publisher connection,
        and rebuilds the subscriber connection with the same subscriptions.
        """
        for pc in (self.publisher, self.subscriber):
            if pc is not None:
                await pc.close()
        self.publisher = self.subscriber = None
        for task in list(self._tasks):
            task.cancel()
        self.received.clear()
        reply = await self.publish(*tracks, restart=True)
        assert reply["type"] == "publish_answer", reply
        await self.request({"type": "subscriber_restart"})

    async def _answer_subscriber(self, offer: dict[str, Any]) -> None:
        async with self._offer_lock:
            pc = self.subscriber
            if pc is None:
                pc = self.subscriber = RTCPeerConnection(_config())
                self._spawn(self._renack(pc))
            await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
            aiortc_adapter.apply_candidate_policy(pc, self.policy)
            if not self.red:
                for t in pc.getTransceivers():
                    aiortc_adapter.restrict_codecs(t, lambda c: True)
            if self.on_subscriber_pc is not None:
                self.on_subscriber_pc(pc)
            by_mid = {t["mid"]: t for t in offer.get("tracks", [])}
            for transceiver in pc.getTransceivers():
                info = by_mid.get(transceiver.mid)
                if info is None or info["track_id"] in self.received:
                    continue
                rec = ReceivedTrack(info["track_id"], info["participant_id"], info["kind"])
                self.received[info["track_id"]] = rec
                self._spawn(self._consume(transceiver.receiver.track, rec))
            await pc.setLocalDescription(await pc.createAnswer())
            aiortc_adapter.route_rtx_to_receivers(pc)
            if self.red:
                from loadtest.red import receive_red, red_payload_types

                if self.red_receiver is None:
                    self.red_receiver = receive_red(pc)
                self.red_receiver.red_pts.update(red_payload_types(pc))
            await self.request({"type": "subscriber_answer", "sdp": pc.localDescription.sdp})

    async def _renack(self, pc: RTCPeerConnection) -> None:
        """Re-ask for lost packets on a timer, as browsers do (see renack_missing)."""
        with contextlib.suppress(asyncio.CancelledError):
            while pc.connectionState not in ("closed", "failed"):
                await asyncio.sleep(0.25)
                if pc.connectionState == "connected":
                    await aiortc_adapter.renack_missing(pc, time.monotonic())

    async def _consume(self, track: MediaStreamTrack, rec: ReceivedTrack) -> None:
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame = await track.recv()
                rec.frames += 1
                now = time.monotonic()
                if rec.first_frame_at is None:
                    rec.first_frame_at = now
                rec.arrivals.append((now, getattr(frame, "width", 0)))
                if len(rec.arrivals) > 2 * rec.keep_arrivals:
                    del rec.arrivals[:-rec.keep_arrivals]
                if rec.kind == "video":
                    img = frame.to_ndarray(format="rgb24")  # type: ignore[union-attr]
                    rec.last_frame_numbers.append(read_frame_number(img))
                    rec.colors.append(body_color(img))
                    del rec.last_frame_numbers[:-50], rec.colors[:-50]
                else:
                    samples = frame.to_ndarray()  # type: ignore[union-attr]
                    rec.audio_rate = frame.sample_rate  # type: ignore[union-attr]
                    rec.audio.append(samples.reshape(-1, frame.layout.nb_channels  # type: ignore[union-attr]
                                                     )[:, 0].astype(np.float64))
                    del rec.audio[:-self.keep_audio_frames]

    def tracks_from(self, participant_id: str, kind: str) -> list[ReceivedTrack]:
        return [r for r in self.received.values()
                if r.participant_id == participant_id and r.kind == kind]

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.ws is not None and not self.ws.closed:
            with contextlib.suppress(Exception):
                await self.send({"type": "leave"})
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
        for pc in (self.publisher, self.subscriber):
            if pc is not None:
                await pc.close()
        if self.session is not None:
            await self.session.close()

    def subscriber_ssrcs(self) -> dict[int, tuple[str, bool]]:
        """SSRC -> (track id, is RTX) of what the server sends us, from its latest offer.

        For counting packets before SRTP (the header names the SSRC, not the track).
        """
        pc = self.subscriber
        if pc is None or pc.remoteDescription is None:
            return {}
        track_by_mid: dict[str, str] = {}
        for event in self.events:
            if event.get("type") == "subscriber_offer":
                for t in event.get("tracks", []):
                    track_by_mid[t["mid"]] = t["track_id"]
        return ssrcs_by_track(pc.remoteDescription.sdp, track_by_mid)


def ssrcs_by_track(sdp: str, track_by_mid: dict[str, str]) -> dict[int, tuple[str, bool]]:
    """SSRC -> (track id, is RTX) from the ``a=ssrc`` lines and FID groups of an SDP whose
    m-sections map to tracks by mid (any SFU's offer to a subscriber)."""
    result: dict[int, tuple[str, bool]] = {}
    for media in SessionDescription.parse(sdp).media:
        track_id = track_by_mid.get(media.rtp.muxId)
        if track_id is None:
            continue
        rtx = {g.items[1] for g in media.ssrc_group
               if g.semantic == "FID" and len(g.items) == 2}
        for info in media.ssrc:
            result[info.ssrc] = (track_id, info.ssrc in rtx)
    return result
