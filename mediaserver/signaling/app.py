"""The HTTP side of a node: WebSocket signalling, admin REST API, health and metrics.

aiohttp lives here and nowhere else. Room policy and media are behind RoomManager.
The access token travels inside the first WebSocket message (``join``), never in the
URL, so it cannot end up in access logs.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from aiortc.sdp import candidate_from_sdp
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mediaserver import limits, metrics
from mediaserver.config import Config
from mediaserver.recording.keys import load_keks
from mediaserver.rooms import Participant, Room, RoomError, RoomManager
from mediaserver.rooms.recording import RecordingSettings
from mediaserver.sfu import aiortc_adapter
from mediaserver.signaling import admin, cluster
from mediaserver.signaling import protocol as proto
from mediaserver.signaling.accept import accept_socket
from mediaserver.signaling.outbox import Outbox
from mediaserver.signaling.tls import ssl_context
from mediaserver.tokens import Claims, TokenError

log = logging.getLogger(__name__)

JOIN_TIMEOUT = proto.JOIN_DEADLINE
CONFIG_KEY = web.AppKey("config", Config)
ROOMS_KEY = web.AppKey("rooms", RoomManager)
STATE_KEY = web.AppKey("state", dict)


def candidate_policy(config: Config) -> aiortc_adapter.CandidatePolicy:
    media = config.media
    return aiortc_adapter.CandidatePolicy(
        addresses=aiortc_adapter.host_addresses(media.bind_host, media.allow_loopback),
        port_min=media.port_min, port_max=media.port_max, announced_ip=media.announced_ip)


def recording_settings(config: Config) -> RecordingSettings | None:
    rec = config.recording
    if not rec.enabled or rec.directory is None or rec.keys is None:
        return None
    directory = Path(rec.directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return RecordingSettings(directory=directory, keyring=load_keks(rec.keys))


def create_app(config: Config) -> web.Application:
    aiortc_adapter.verify()
    aiortc_adapter.install()
    app = web.Application(client_max_size=1024 * 1024)
    app[CONFIG_KEY] = config
    app[ROOMS_KEY] = RoomManager(
        candidate_policy(config), config.group_max_participants, config.rooms,
        recording_settings(config),
        publish_kbps={"audio": config.limits.publish_audio_kbps,
                      "video": config.limits.publish_video_kbps},
        adaptation=config.media.adaptation)
    lim = config.limits
    app[STATE_KEY] = {
        "ready": True, "sessions": set(),
        "connections": limits.ConnectionCounter(lim.connections_per_ip),
        "admission": limits.Admission(limits.AdmissionLimits(
            max_participants=lim.max_participants, max_loop_lag=lim.max_loop_lag_ms / 1000,
            joins_per_second=lim.joins_per_second)),
    }
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/v1/signal", signal_handler)
    if config.web_enabled:  # the session page and the JavaScript SDK, as files
        from mediaserver.signaling import webpage

        webpage.add_routes(app)
    admin.add_routes(app, CONFIG_KEY, ROOMS_KEY)
    cluster.setup(app, config, app[ROOMS_KEY])  # routing: local, or Redis with redis_url
    app.on_shutdown.append(_on_shutdown)
    if config.recording.enabled and config.recording.retention_days:
        app.cleanup_ctx.append(_retention_ctx)
    app.cleanup_ctx.append(metrics.cleanup_ctx)  # event-loop lag monitor
    app.cleanup_ctx.append(_admission_ctx)
    return app


RETENTION_SWEEP_INTERVAL = 3600.0


async def _retention_ctx(app: web.Application) -> AsyncIterator[None]:
    """Shred recordings older than the retention period, hourly, for the app's lifetime."""
    from mediaserver.recording.retention import sweep

    config = app[CONFIG_KEY]
    assert config.recording.directory is not None
    root = Path(config.recording.directory)
    keep = config.recording.retention_days * 86400

    async def loop() -> None:
        while True:
            for rid in sweep(root, time.time(), keep):
                log.info("recording shredded after its retention period: %s", rid)
            await asyncio.sleep(RETENTION_SWEEP_INTERVAL)

    task = asyncio.create_task(loop())
    yield
    task.cancel()


async def _admission_ctx(app: web.Application) -> AsyncIterator[None]:
    """Feed the event-loop lag probes to admission control for the app's lifetime."""
    observe = app[STATE_KEY]["admission"].observe_lag
    metrics.LAG_OBSERVERS.append(observe)
    yield
    metrics.LAG_OBSERVERS.remove(observe)


async def _on_shutdown(app: web.Application) -> None:
    """Refuse newcomers, end every room (participants get ``removed`` with the reason
    ``server_shutdown``, recordings are sealed), then flush and close every socket.

    Bounded by ``shutdown_timeout`` overall (run_server also bounds the whole cleanup).
    """
    state, config = app[STATE_KEY], app[CONFIG_KEY]
    state["ready"] = False
    deadline = time.monotonic() + config.shutdown_timeout
    try:
        await asyncio.wait_for(app[ROOMS_KEY].close_all(), config.shutdown_timeout)
    except TimeoutError:
        log.warning("shutdown: rooms did not close within %ss", config.shutdown_timeout)
    sessions = list(state["sessions"])
    for session in sessions:
        session.outbox.close(1001, b"server shutting down")
    remaining = max(0.1, deadline - time.monotonic())
    await asyncio.gather(*(s.outbox.aclose(remaining) for s in sessions))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if request.app[STATE_KEY]["ready"] and not cluster.router_of(request.app).draining:
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "not ready"}, status=503)


async def metrics_handler(request: web.Request) -> web.Response:
    metrics.set_quality_counts(request.app[ROOMS_KEY].quality_counts())
    metrics.count_tasks()
    body = generate_latest(metrics.REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class SignalSession:
    """One WebSocket client: before join it may only join or resume; then it talks to its room.

    When the socket drops without a ``leave``, the participant is kept for the resume
    grace period (media keeps flowing) and can come back with ``resume``.
    """

    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        self.app = request.app
        self.config = request.app[CONFIG_KEY]
        self.rooms = request.app[ROOMS_KEY]
        self.ws = ws
        self.room: Room | None = None
        self.participant: Participant | None = None
        self.bad_messages = 0
        self.routed_room = request.headers.get(proto.ROUTED_ROOM_HEADER)  # behind a front
        lim = self.config.limits
        self.rate = limits.TokenBucket(lim.messages_per_second, lim.message_burst)
        transport = request.transport

        def abort() -> None:
            if transport is not None:
                transport.abort()

        # Every message to the client goes through the outbox: a room's events never wait
        # for this socket, and a client that stops reading is cut off (outbox.py).
        self.outbox = Outbox(ws, lim.send_queue, abort)

    async def send(self, msg: dict[str, Any]) -> None:
        self.outbox.put(msg)
        if msg.get("type") in ("removed", "denied"):
            # The room let this participant go: nothing more to say on this socket.
            self.participant = self.room = None
            self._schedule_close(1000, b"removed")

    def _schedule_close(self, code: int, reason: bytes) -> None:
        self.outbox.close(code, reason)  # after what is already queued

    async def fail(self, code: str, message: str, request_id: Any = None) -> None:
        metrics.SIGNAL_ERRORS.labels(code=code).inc()
        await self.send(proto.error(code, message, request_id))

    async def run(self) -> None:
        started = last_message = time.monotonic()
        try:
            while not self.ws.closed:
                # Deadlines of our own: aiohttp restarts receive()'s timeout on every
                # heartbeat pong, so it cannot tell an idle client from a live one.
                now = time.monotonic()
                if self.participant is None:
                    timeout = JOIN_TIMEOUT - (now - started)
                    if timeout <= 0:
                        await self.fail(proto.JOIN_TIMEOUT, "no join message within "
                                        f"{int(JOIN_TIMEOUT)} seconds")
                        return
                else:
                    timeout = self.config.signal_idle_timeout - (now - last_message)
                    if timeout <= 0:
                        self._schedule_close(1000, b"idle")
                        return
                try:
                    msg = await asyncio.wait_for(self.ws.receive(), timeout)
                except TimeoutError:
                    continue
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    last_message = time.monotonic()
                    await self.handle_raw(msg.data)
                    await asyncio.sleep(0)  # let the outbox write between buffered requests
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED,
                                  WSMsgType.ERROR):
                    return
        finally:
            await self.detach()

    def _attach(self, room: Room, p: Participant) -> None:
        self.room, self.participant = room, p
        p.on_takeover = self._taken_over

    def _taken_over(self) -> None:
        """A resume on another socket took the participant: let go without leaving."""
        self.room = self.participant = None
        self._schedule_close(1000, b"resumed elsewhere")

    async def detach(self, leaving: bool = False) -> None:
        room, p = self.room, self.participant
        self.room = self.participant = None
        if room is None or p is None or p.closed:
            return
        if leaving or not room.disconnect(p):
            await self.rooms.leave(room, p)

    async def handle_raw(self, raw: str | bytes) -> None:
        try:
            if not self.rate.take(time.monotonic()):
                metrics.LIMIT[limits.RATE_LIMITED].inc()
                raise proto.ProtocolError(limits.RATE_LIMITED, "too many messages: at most "
                                          f"{self.config.limits.messages_per_second} a second")
            msg = proto.decode(raw, self.config.max_message_bytes)
        except proto.ProtocolError as exc:
            self.bad_messages += 1
            await self.fail(exc.code, exc.message, exc.request_id)
            if self.bad_messages >= proto.MAX_INVALID_MESSAGES:
                self._schedule_close(1008, b"too many invalid messages")
            return
        request_id = msg.get("id")
        try:
            await self.dispatch(msg, request_id)
        except (RoomError, proto.ProtocolError, TokenError) as exc:
            await self.fail(exc.code, exc.message, request_id)
        except Exception:
            log.exception("signalling handler failed")
            await self.fail(proto.INTERNAL_ERROR, "internal error", request_id)

    async def dispatch(self, msg: dict[str, Any], request_id: Any) -> None:
        mtype = msg["type"]
        if mtype == "ping":
            extra = {"timestamp": msg["timestamp"]} if "timestamp" in msg else {}
            await self.send(proto.reply("pong", request_id, **extra))
            return
        if mtype in ("join", "resume"):
            await (self.join(msg, request_id) if mtype == "join" else
                   self.resume(msg, request_id))
            return
        room, p = self.room, self.participant
        if room is None or p is None:
            raise proto.ProtocolError(proto.NOT_JOINED, "send join first")
        handler = _HANDLERS[mtype]
        result = await handler(self, room, p, msg)
        if result is not None:
            await self.send(proto.reply(result[0], request_id, **result[1]))

    def _claims(self, msg: dict[str, Any]) -> Claims:
        if self.participant is not None:
            raise proto.ProtocolError(proto.ALREADY_JOINED, "already joined")
        claims = proto.entry_claims(msg, self.config.api_keys, self.config.token_audience,
                                    time.time())
        if self.routed_room is not None and claims.room != self.routed_room:
            raise proto.ProtocolError(proto.TOKEN_WRONG_ROOM, "this connection was opened "
                                      "for another room: open a new one")
        return claims

    def _admit(self) -> None:
        """Node-wide admission: refuse a newcomer rather than degrade every session."""
        admission: limits.Admission = self.app[STATE_KEY]["admission"]
        code = admission.check(self.rooms.participant_count(), time.monotonic())
        if code is not None:
            metrics.LIMIT[code].inc()
            raise proto.ProtocolError(code, _ADMISSION_MESSAGES[code])

    async def join(self, msg: dict[str, Any], request_id: Any) -> None:
        started = time.monotonic()
        claims = self._claims(msg)
        assert claims.room is not None
        if await cluster.redirect_join(self, claims.room, request_id):
            return  # the room lives on another node: the client reconnects there
        self._admit()
        room = self.rooms.get_or_create(claims.room, claims.kind.value if claims.kind else None)
        p = await room.join(claims, self.send, auto_subscribe=msg.get("auto_subscribe", True))
        self._attach(room, p)
        cluster.router_of(self.app).room_changed(room)
        ice = [s.to_json() for s in self.config.ice_servers_for(claims.identity, time.time())]
        await self.send(proto.reply("joined", request_id, protocol=proto.PROTOCOL_VERSION,
                                    ice_servers=ice, **room.joined_reply(p)))
        metrics.JOIN_LATENCY.observe(time.monotonic() - started)
        await room.announce(p)

    async def resume(self, msg: dict[str, Any], request_id: Any) -> None:
        claims = self._claims(msg)
        assert claims.room is not None
        if await cluster.resume_elsewhere(self, claims, msg, request_id):
            return  # redirected, or seated again in a room moved here from a lost node
        room = self.rooms.rooms.get(claims.room)
        if room is None:
            raise RoomError("resume_failed", "nothing to resume: join again")
        p = room.resume(claims, msg["participant_id"], msg["resume_token"], self.send)
        self._attach(room, p)
        await self.send(proto.reply("resumed", request_id, **room.joined_reply(p)))
        if p.pending_offer is not None:
            await self.send(p.pending_offer)  # the offer sent while the socket was down

    async def add_candidate(self, p: Participant, msg: dict[str, Any]) -> None:
        transport = p.publisher if msg["target"] == "publisher" else p.subscriber
        if transport is None:
            raise proto.ProtocolError(proto.INVALID_MESSAGE, "no such connection yet")
        c = msg["candidate"]
        if c is None or not c.get("candidate"):
            await transport.add_ice_candidate(None)
            return
        text = str(c["candidate"])
        if text.startswith("candidate:"):
            text = text[len("candidate:"):]
        if c.get("sdpMid") is None and c.get("sdpMLineIndex") is None:
            raise proto.ProtocolError(proto.INVALID_MESSAGE,
                                      "candidate: sdpMid or sdpMLineIndex is required")
        try:
            candidate = candidate_from_sdp(text)
            candidate.sdpMid = c.get("sdpMid")
            candidate.sdpMLineIndex = c.get("sdpMLineIndex")
            await transport.add_ice_candidate(candidate)
        except Exception:  # aiortc raises ValueError, IndexError, AssertionError...
            raise proto.ProtocolError(proto.INVALID_MESSAGE,
                                      "candidate: cannot parse or apply") from None


Reply = tuple[str, dict[str, Any]] | None
Handler = Callable[[SignalSession, Room, Participant, dict[str, Any]], Awaitable[Reply]]
ACK: Reply = ("ack", {})


async def _publish_offer(s: SignalSession, room: Room, p: Participant, m: dict[str, Any]
                         ) -> Reply:
    result = await room.publish_offer(p, m["sdp"], m.get("tracks") or [],
                                      restart=m.get("restart", False))
    return "publish_answer", result


async def _subscriber_answer(s: SignalSession, room: Room, p: Participant, m: dict[str, Any]
                             ) -> Reply:
    if not room.negotiator.answer(p, m["sdp"]):
        raise RoomError("no_pending_offer", "there is no subscriber offer to answer")
    return ACK


async def _subscriber_restart(s: SignalSession, room: Room, p: Participant,
                              m: dict[str, Any]) -> Reply:
    await room.negotiator.restart(p)
    return ACK


async def _candidate(s: SignalSession, room: Room, p: Participant, m: dict[str, Any]) -> Reply:
    await s.add_candidate(p, m)
    return ACK


async def _unpublish(s: SignalSession, room: Room, p: Participant, m: dict[str, Any]) -> Reply:
    await room.unpublish(p, m["track_id"])
    return ACK


async def _mute(s: SignalSession, room: Room, p: Participant, m: dict[str, Any]) -> Reply:
    await room.set_own_muted(p, m["track_id"], m["muted"])
    return ACK


async def _subscribe(s: SignalSession, room: Room, p: Participant, m: dict[str, Any]) -> Reply:
    room.set_subscription(p, m["track_id"], m["type"] == "subscribe")
    return ACK


async def _preferences(s: SignalSession, room: Room, p: Participant, m: dict[str, Any]
                       ) -> Reply:
    prefs: dict[str, Any] = {k: m[k] for k in ("disabled", "max_width", "max_height", "max_fps",
                                               "pinned") if k in m}
    room.set_preferences(p, m["track_id"], prefs)
    return ACK


async def _bandwidth(s: SignalSession, room: Room, p: Participant, m: dict[str, Any]) -> Reply:
    room.set_bandwidth(p, audio_only=m.get("audio_only"), max_bitrate=m.get("max_bitrate"),
                       start_bitrate=m.get("start_bitrate"))
    return ACK


async def _admit(s: SignalSession, room: Room, p: Participant, m: dict[str, Any]) -> Reply:
    await room.admit(p, m["participant_id"])
    return ACK


async def _deny(s: SignalSession, room: Room, p: Participant, m: dict[str, Any]) -> Reply:
    await room.deny(p, m["participant_id"], m.get("reason", ""))
    return ACK


async def _mute_participant(s: SignalSession, room: Room, p: Participant, m: dict[str, Any]
                            ) -> Reply:
    await room.mute_participant(p, m["participant_id"], m.get("track_id"), m["muted"])
    return ACK


async def _remove_participant(s: SignalSession, room: Room, p: Participant,
                              m: dict[str, Any]) -> Reply:
    await room.remove_participant(p, m["participant_id"])
    return ACK


async def _lock(s: SignalSession, room: Room, p: Participant, m: dict[str, Any]) -> Reply:
    await room.lock(p, m["locked"])
    return ACK


async def _end(s: SignalSession, room: Room, p: Participant, m: dict[str, Any]) -> Reply:
    room.check_end(p)
    await s.send(proto.reply("ack", m.get("id")))
    await s.rooms.end(room.name, "room_ended")
    return None


async def _get_stats(s: SignalSession, room: Room, p: Participant, m: dict[str, Any]
                     ) -> Reply:
    return "stats", room.stats_for(p)


async def _record(s: SignalSession, room: Room, p: Participant, m: dict[str, Any]) -> Reply:
    return "recording_state", await room.record(p, m["type"] == "record_start")


async def _consent(s: SignalSession, room: Room, p: Participant, m: dict[str, Any]) -> Reply:
    if m["type"] == "consent_withdraw":
        return "recording_state", await room.withdraw_consent(p)
    return "recording_state", await room.answer_consent(p, m["granted"])


async def _leave(s: SignalSession, room: Room, p: Participant, m: dict[str, Any]) -> Reply:
    await s.send(proto.reply("ack", m.get("id")))
    await s.detach(leaving=True)
    s._schedule_close(1000, b"")
    return None


_ADMISSION_MESSAGES = {
    limits.NODE_FULL: "this server is full; try again later",
    limits.NODE_OVERLOADED: "this server is overloaded; try again later",
    limits.JOIN_RATE_LIMITED: "too many joins right now; try again in a second",
}


_HANDLERS: dict[str, Handler] = {
    "publish_offer": _publish_offer,
    "subscriber_answer": _subscriber_answer,
    "subscriber_restart": _subscriber_restart,
    "candidate": _candidate,
    "unpublish": _unpublish,
    "mute": _mute,
    "subscribe": _subscribe,
    "unsubscribe": _subscribe,
    "set_preferences": _preferences,
    "set_bandwidth": _bandwidth,
    "admit": _admit,
    "deny": _deny,
    "mute_participant": _mute_participant,
    "remove_participant": _remove_participant,
    "lock_room": _lock,
    "end_room": _end,
    "leave": _leave,
    "get_stats": _get_stats,
    "record_start": _record,
    "record_stop": _record,
    "consent": _consent,
    "consent_withdraw": _consent,
}


async def signal_handler(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    async with accept_socket(request, request.app[CONFIG_KEY], state["ready"],
                             state["connections"],
                             metrics.LIMIT[limits.TOO_MANY_CONNECTIONS].inc) as ws:
        if not isinstance(ws, web.WebSocketResponse):
            return ws  # refused before the upgrade
        session = SignalSession(request, ws)
        state["sessions"].add(session)
        try:
            await session.run()
        finally:
            state["sessions"].discard(session)
            await session.outbox.aclose(5.0)  # what is queued (an error, removed) goes first
    return ws


# Young collections rarer (objects have time to die before they are promoted) and full ones
# much rarer: a full collection scans every live object (aiortc keeps thousands per peer
# connection), a pause of 100-250 ms at 240 connections, for every packet of the node.
GC_THRESHOLDS = (50_000, 20, 100)


def run_server(config: Config, unix_path: str | None = None,
               until: Callable[[], Coroutine[Any, Any, object]] | None = None) -> None:
    """Run one node until SIGINT/SIGTERM; then shut down within ``shutdown_timeout``.

    On the signal: new connections are refused, every room ends (clients get ``removed``
    with the reason ``server_shutdown``, recordings are sealed), sockets are flushed and
    closed. A second signal, or the timeout, ends the process without waiting further.

    A worker behind a front (docs/workers.md) passes ``unix_path``: it serves plain HTTP on
    that Unix socket, without an access log (the front logs each request), and ``until``,
    whose return (the front went away) shuts it down as SIGTERM would.
    """

    async def main() -> None:
        app = create_app(config)
        # Everything loaded so far (modules, codec tables, the app) lives as long as the
        # process: out of the collector's sight, full collections scan only what sessions
        # create, which keeps their pauses short (mediaserver_gc_pause_seconds).
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        logging_kw: dict[str, Any] = ({"access_log": None} if unix_path else
                                      {"access_log_format": '%a "%r" %s %b %Tf'})
        runner = web.AppRunner(app, shutdown_timeout=float(config.shutdown_timeout),
                               **logging_kw)
        await runner.setup()
        site: web.BaseSite
        if unix_path is not None:
            site = web.UnixSite(runner, unix_path)
            await site.start()
            log.info("mediaserver worker listening on %s", unix_path)
        else:
            tls = ssl_context(config)
            site = web.TCPSite(runner, config.host, config.port, ssl_context=tls)
            await site.start()
            log.info("mediaserver listening on %s://%s:%d", "https" if tls else "http",
                     config.host, config.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        control = app[cluster.CONTROL_KEY]
        control.stop = stop.set  # a drain ends the process when its sessions are done
        loop.add_signal_handler(signal.SIGUSR1, control.drain)
        watcher: asyncio.Task[object] | None = None if until is None else (
            asyncio.create_task(until()))
        if watcher is not None:
            watcher.add_done_callback(lambda _: stop.set())
        await stop.wait()
        log.info("shutting down (at most %ss)", config.shutdown_timeout)
        stop.clear()
        cleanup = asyncio.create_task(runner.cleanup())
        waiter = asyncio.create_task(stop.wait())  # a second signal: stop waiting
        done, _ = await asyncio.wait({cleanup, waiter}, timeout=config.shutdown_timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if cleanup not in done:
            log.warning("shutdown did not finish within %ss; exiting anyway",
                        config.shutdown_timeout)
            cleanup.cancel()
        if watcher is not None:
            watcher.cancel()
        log.info("stopped")

    asyncio.run(main())
