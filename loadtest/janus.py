"""A load-test participant in a Janus VideoRoom (Janus 1.x, WebSocket transport).

It stands where ``loadtest/client.py``'s SignalClient stands for our server, with the same
surface the runner uses (connect, publish, subscriber_ssrcs, close, on_subscriber_pc), so
one runner drives both and counts packets the same way. Per participant:

- one Janus session on one WebSocket (subprotocol ``janus-protocol``), kept alive;
- a publisher handle: creates the room if it does not exist (string ids, 16 publishers,
  VP8 + Opus, no bitrate cap), joins it as a publisher and publishes with an aiortc offer;
  its events announce the other publishers as they appear;
- one multistream subscriber handle for every other publisher's streams: ``join`` as
  subscriber with ``streams``, then ``subscribe`` for later ones; Janus sends the offers
  (``attached``/``updated``, or later when it postponed one) and the client answers each
  with ``start``.

Track ids are ``<publisher id>:<publisher mid>`` on both sides. Janus API reference: the
VideoRoom documentation in janus_videoroom.c (Janus 1.x).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
from collections.abc import Callable
from typing import Any

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from loadtest.client import LOOPBACK, _config, json_messages, ssrcs_by_track
from mediaserver.sfu import aiortc_adapter

PLUGIN = "janus.plugin.videoroom"
KEEPALIVE_S = 20.0  # Janus drops a session after 60 s of silence by default
ROOM_EXISTS = 427  # JANUS_VIDEOROOM_ERROR_ROOM_EXISTS
ROOM_OPTIONS: dict[str, Any] = {
    "publishers": 16, "bitrate": 0, "audiocodec": "opus", "videocodec": "vp8",
    "permanent": False,
}


class JanusError(RuntimeError):
    """Janus (the core or the VideoRoom plugin) refused a request."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"janus error {code}: {reason}")
        self.code, self.reason = code, reason


class JanusSession:
    """One Janus session over one WebSocket: requests matched to replies by transaction,
    everything a handle sends on its own handed to that handle's listener."""

    def __init__(self) -> None:
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.session_id: int | None = None
        self.listeners: dict[int, Callable[[dict[str, Any]], None]] = {}
        # transaction -> (its reply, whether that reply is the ack)
        self._waiters: dict[str, tuple[asyncio.Future[dict[str, Any]], bool]] = {}
        self._prefix = secrets.token_hex(4)
        self._ids = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self, url: str) -> None:
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(url, protocols=("janus-protocol",))
        self._tasks.append(asyncio.create_task(self._read()))
        reply = await self.request({"janus": "create"})
        self.session_id = int(reply["data"]["id"])
        self._tasks.append(asyncio.create_task(self._keepalive()))

    async def attach(self, listener: Callable[[dict[str, Any]], None]) -> int:
        reply = await self.request({"janus": "attach", "plugin": PLUGIN})
        handle = int(reply["data"]["id"])
        self.listeners[handle] = listener
        return handle

    async def request(self, msg: dict[str, Any], timeout: float = 20.0,
                      ack: bool = False) -> dict[str, Any]:
        """Send ``msg``; return the first reply to it that is not an ``ack`` (or, with
        ``ack``, the ack: all a trickle gets)."""
        assert self.ws is not None
        transaction = f"{self._prefix}-{next(self._ids)}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[transaction] = fut, ack
        if self.session_id is not None:
            msg = {**msg, "session_id": self.session_id}
        try:
            await self.ws.send_str(json.dumps({**msg, "transaction": transaction}))
            reply = await asyncio.wait_for(fut, timeout)
        finally:
            self._waiters.pop(transaction, None)
        if reply.get("janus") == "error":
            error = reply.get("error", {})
            raise JanusError(error.get("code"), error.get("reason", "?"))
        data = plugin_data(reply)
        if "error_code" in data:
            raise JanusError(data["error_code"], data.get("error", "?"))
        return reply

    async def message(self, handle: int, body: dict[str, Any],
                      jsep: dict[str, Any] | None = None) -> dict[str, Any]:
        msg: dict[str, Any] = {"janus": "message", "handle_id": handle, "body": body}
        if jsep is not None:
            msg["jsep"] = jsep
        return await self.request(msg)

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in json_messages(self.ws):
            is_ack = msg.get("janus") == "ack"
            waiter, wants_ack = self._waiters.get(msg.get("transaction", ""), (None, False))
            if waiter is not None and not waiter.done() and wants_ack == is_ack:
                waiter.set_result(msg)
            if is_ack:
                continue
            listener = self.listeners.get(msg.get("sender", 0))
            if listener is not None and msg.get("janus") == "event":
                listener(msg)

    async def _keepalive(self) -> None:
        assert self.ws is not None
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            while not self.ws.closed:
                await asyncio.sleep(KEEPALIVE_S)
                await self.ws.send_str(json.dumps({
                    "janus": "keepalive", "session_id": self.session_id,
                    "transaction": f"{self._prefix}-ka"}))

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed and self.session_id is not None:
            with contextlib.suppress(Exception):
                await self.request({"janus": "destroy"}, timeout=5)
        for task in self._tasks:
            task.cancel()
        if self.ws is not None:
            await self.ws.close()
        if self.http is not None:
            await self.http.close()


def plugin_data(msg: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = msg.get("plugindata", {}).get("data", {})
    return data


class JanusClient:
    """One participant: publishes on one connection, receives every other publisher's
    streams on one multistream subscriber connection."""

    def __init__(self, url: str, room: str, display: str, *,
                 policy: aiortc_adapter.CandidatePolicy = LOOPBACK) -> None:
        self.url, self.room, self.display, self.policy = url, room, display, policy
        self.janus = JanusSession()
        self.participant_id: str | None = None
        self.joined: dict[str, Any] | None = None
        self.events: list[dict[str, Any]] = []  # the VideoRoom's event payloads
        self.publisher: RTCPeerConnection | None = None
        self.subscriber: RTCPeerConnection | None = None
        self.on_subscriber_pc: Callable[[RTCPeerConnection], None] | None = None
        self.stats: dict[str, Any] = {}  # nothing is decoded (cheap mode only)
        self.track_by_mid: dict[str, tuple[str, str]] = {}  # subscriber mid -> (id, kind)
        self._pub_handle: int | None = None
        self._sub_handle: int | None = None
        self._feeds: set[str] = set()  # publishers asked for
        self._wanted: list[str] = []  # publishers to ask for
        self._wake = asyncio.Event()
        self._answer_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.errors: list[str] = []
        self._closing = False

    # -- the runner's surface ------------------------------------------------------------

    async def connect(self) -> dict[str, Any]:
        """Session, publisher handle, room (created when missing), join as publisher.
        Returns ``{"type": "joined", ...}`` or ``{"type": "error", "code", "message"}``,
        the shapes our protocol uses, for the runner."""
        try:
            await self.janus.open(self.url)
            self._pub_handle = await self.janus.attach(self._on_publisher_event)
            try:
                await self.janus.message(self._pub_handle, {
                    "request": "create", "room": self.room, **ROOM_OPTIONS})
            except JanusError as exc:
                if exc.code != ROOM_EXISTS:  # another participant created it first
                    raise
            reply = await self.janus.message(self._pub_handle, {
                "request": "join", "ptype": "publisher", "room": self.room,
                "display": self.display})
        except JanusError as exc:
            return {"type": "error", "code": f"janus_{exc.code}", "message": exc.reason}
        data = plugin_data(reply)
        self.participant_id = str(data["id"])
        self.joined = data
        self._spawn(self._subscribe_loop())
        self._add_publishers(data.get("publishers", []))
        return {"type": "joined", "participant_id": self.participant_id}

    async def publish(self, *tracks: MediaStreamTrack) -> dict[str, Any]:
        assert self._pub_handle is not None
        pc = self.publisher = RTCPeerConnection(_config())
        for track in tracks:
            pc.addTransceiver(track, direction="sendonly")
        aiortc_adapter.apply_candidate_policy(pc, self.policy)
        await pc.setLocalDescription(await pc.createOffer())
        try:
            reply = await self.janus.message(
                self._pub_handle, {"request": "publish", "display": self.display},
                {"type": "offer", "sdp": pc.localDescription.sdp})
        except JanusError as exc:
            return {"type": "error", "code": f"janus_{exc.code}", "message": exc.reason}
        await pc.setRemoteDescription(RTCSessionDescription(reply["jsep"]["sdp"], "answer"))
        await self._trickle_done(self._pub_handle)
        return {"type": "publish_answer", "tracks": [
            {"track_id": f"{self.participant_id}:{t.mid}", "kind": t.kind}
            for t in pc.getTransceivers()]}

    def subscriber_ssrcs(self) -> dict[int, tuple[str, bool]]:
        pc = self.subscriber
        if pc is None or pc.remoteDescription is None:
            return {}
        return ssrcs_by_track(pc.remoteDescription.sdp,
                              {mid: tid for mid, (tid, _) in self.track_by_mid.items()})

    async def close(self) -> None:
        self._closing = True  # others leaving make Janus renegotiate: no longer answered
        for task in list(self._tasks):
            task.cancel()
        await self.janus.close()
        for pc in (self.publisher, self.subscriber):
            if pc is not None:
                await pc.close()

    # -- subscribing -----------------------------------------------------------------------

    def _on_publisher_event(self, msg: dict[str, Any]) -> None:
        data = plugin_data(msg)
        self.events.append(data)
        self._add_publishers(data.get("publishers", []))

    def _add_publishers(self, publishers: list[dict[str, Any]]) -> None:
        for pub in publishers:
            feed = str(pub["id"])
            if feed != self.participant_id and feed not in self._feeds and pub.get("streams"):
                self._feeds.add(feed)
                self._wanted.append(feed)
                self._wake.set()

    async def _subscribe_loop(self) -> None:
        """Ask for new publishers' streams, a batch at a time, on one subscriber handle."""
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await self._wake.wait()
                self._wake.clear()
                feeds, self._wanted = self._wanted, []
                streams = [{"feed": f} for f in feeds]
                try:
                    if self._sub_handle is None:
                        self._sub_handle = await self.janus.attach(self._on_subscriber_event)
                        await self.janus.message(self._sub_handle, {
                            "request": "join", "ptype": "subscriber", "room": self.room,
                            "streams": streams})
                    else:
                        await self.janus.message(self._sub_handle,
                                                 {"request": "subscribe", "streams": streams})
                except (JanusError, TimeoutError) as exc:
                    self.errors.append(f"subscribing to {feeds}: {exc}")

    def _on_subscriber_event(self, msg: dict[str, Any]) -> None:
        data = plugin_data(msg)
        self.events.append(data)
        jsep = msg.get("jsep")
        if jsep is not None and jsep.get("type") == "offer" and not self._closing:
            self._spawn(self._answer(jsep["sdp"], data.get("streams", [])))

    async def _answer(self, sdp: str, streams: list[dict[str, Any]]) -> None:
        assert self._sub_handle is not None
        async with self._answer_lock:
            for s in streams:
                if "feed_id" in s:
                    self.track_by_mid[s["mid"]] = (f"{s['feed_id']}:{s['feed_mid']}", s["type"])
            first = self.subscriber is None
            pc = self.subscriber
            if pc is None:
                pc = self.subscriber = RTCPeerConnection(_config())
            await pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
            aiortc_adapter.apply_candidate_policy(pc, self.policy)
            if self.on_subscriber_pc is not None:
                self.on_subscriber_pc(pc)
            await pc.setLocalDescription(await pc.createAnswer())
            try:
                await self.janus.message(self._sub_handle, {"request": "start"},
                                         {"type": "answer", "sdp": pc.localDescription.sdp})
                if first:
                    await self._trickle_done(self._sub_handle)
            except (JanusError, TimeoutError) as exc:
                self.errors.append(f"answering: {exc}")

    async def _trickle_done(self, handle: int) -> None:
        """Our candidates were all in the SDP (aiortc gathers before it describes)."""
        await self.janus.request({"janus": "trickle", "handle_id": handle,
                                  "candidate": {"completed": True}}, ack=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
