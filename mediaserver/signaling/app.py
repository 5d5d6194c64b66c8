"""The HTTP side of a node: WebSocket signalling, admin REST API, health and metrics.

aiohttp lives here and nowhere else. Room policy and media are behind RoomManager.
The access token travels inside the first WebSocket message (``join``), never in the
URL, so it cannot end up in access logs.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

from aiohttp import WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mediaserver import metrics
from mediaserver.config import Config
from mediaserver.rooms import Participant, Room, RoomError, RoomManager
from mediaserver.sfu import aiortc_adapter
from mediaserver.signaling import admin
from mediaserver.signaling import protocol as proto
from mediaserver.tokens import TokenError, verify_token

log = logging.getLogger(__name__)

JOIN_TIMEOUT = 10.0
CONFIG_KEY = web.AppKey("config", Config)
ROOMS_KEY = web.AppKey("rooms", RoomManager)
STATE_KEY = web.AppKey("state", dict)


def candidate_policy(config: Config) -> aiortc_adapter.CandidatePolicy:
    media = config.media
    return aiortc_adapter.CandidatePolicy(
        addresses=aiortc_adapter.host_addresses(media.bind_host, media.allow_loopback),
        port_min=media.port_min, port_max=media.port_max, announced_ip=media.announced_ip)


def create_app(config: Config) -> web.Application:
    aiortc_adapter.verify()
    aiortc_adapter.install()
    app = web.Application(client_max_size=1024 * 1024)
    app[CONFIG_KEY] = config
    app[ROOMS_KEY] = RoomManager(candidate_policy(config), config.group_max_participants)
    app[STATE_KEY] = {"ready": True, "sockets": set()}
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/v1/signal", signal_handler)
    admin.add_routes(app, CONFIG_KEY, ROOMS_KEY)
    app.on_shutdown.append(_on_shutdown)
    return app


async def _on_shutdown(app: web.Application) -> None:
    app[STATE_KEY]["ready"] = False
    for ws in list(app[STATE_KEY]["sockets"]):
        await ws.close(code=1001, message=b"server shutting down")
    await app[ROOMS_KEY].close_all()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if request.app[STATE_KEY]["ready"]:
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "not ready"}, status=503)


async def metrics_handler(request: web.Request) -> web.Response:
    body = generate_latest(metrics.REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class SignalSession:
    """One WebSocket client: before join it may only join; after, it talks to its room."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        self.app = request.app
        self.config = request.app[CONFIG_KEY]
        self.rooms = request.app[ROOMS_KEY]
        self.ws = ws
        self.room: Room | None = None
        self.participant: Participant | None = None
        self.bad_messages = 0
        self._send_lock = asyncio.Lock()

    async def send(self, msg: dict[str, Any]) -> None:
        if self.ws.closed:
            return
        async with self._send_lock:
            await self.ws.send_json(msg)

    async def fail(self, code: str, message: str, request_id: Any = None) -> None:
        metrics.SIGNAL_ERRORS.labels(code=code).inc()
        await self.send(proto.error(code, message, request_id))

    async def run(self) -> None:
        try:
            first = asyncio.ensure_future(self.ws.receive())
            done, _ = await asyncio.wait({first}, timeout=JOIN_TIMEOUT)
            if not done:
                first.cancel()
                await self.fail(proto.JOIN_TIMEOUT, "no join message within "
                                f"{int(JOIN_TIMEOUT)} seconds")
                return
            msg: Any = first.result()
            while True:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    await self.handle_raw(msg.data)
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED,
                                  WSMsgType.ERROR):
                    return
                if self.ws.closed:
                    return
                msg = await self.ws.receive()
        finally:
            await self.cleanup()

    async def cleanup(self) -> None:
        if self.room is not None and self.participant is not None:
            await self.rooms.leave(self.room, self.participant)
        self.room = self.participant = None

    async def handle_raw(self, raw: str | bytes) -> None:
        try:
            msg = proto.decode(raw, self.config.max_message_bytes)
        except proto.ProtocolError as exc:
            self.bad_messages += 1
            await self.fail(exc.code, exc.message, exc.request_id)
            if self.bad_messages >= 20:
                await self.ws.close(code=1008, message=b"too many invalid messages")
            return
        request_id = msg.get("id")
        try:
            await self.dispatch(msg, request_id)
        except RoomError as exc:
            await self.fail(exc.code, exc.message, request_id)
        except proto.ProtocolError as exc:
            await self.fail(exc.code, exc.message, request_id)
        except TokenError as exc:
            await self.fail(exc.code, exc.message, request_id)
        except Exception:
            log.exception("signalling handler failed")
            await self.fail(proto.INTERNAL_ERROR, "internal error", request_id)

    async def dispatch(self, msg: dict[str, Any], request_id: Any) -> None:
        mtype = msg["type"]
        if mtype == "ping":
            await self.send(proto.reply("pong", request_id, timestamp=msg.get("timestamp")))
            return
        if mtype == "join":
            await self.join(msg, request_id)
            return
        room, p = self.room, self.participant
        if room is None or p is None:
            raise proto.ProtocolError(proto.NOT_JOINED, "send join first")
        if mtype == "publish_offer":
            result = await room.publish_offer(p, msg["sdp"], msg.get("tracks") or [])
            await self.send(proto.reply("publish_answer", request_id, **result))
        elif mtype == "subscriber_answer":
            room.subscriber_answer(p, msg["sdp"])
            await self.send(proto.reply("ack", request_id))
        elif mtype == "candidate":
            await self.add_candidate(p, msg, request_id)
        elif mtype == "unpublish":
            await room.unpublish(p, msg["track_id"])
            await self.send(proto.reply("ack", request_id))
        elif mtype == "mute":
            await room.set_muted(p, msg["track_id"], msg["muted"])
            await self.send(proto.reply("ack", request_id))
        elif mtype == "leave":
            await self.send(proto.reply("ack", request_id))
            await self.cleanup()
            await self.ws.close()

    async def join(self, msg: dict[str, Any], request_id: Any) -> None:
        started = time.monotonic()
        if self.participant is not None:
            raise proto.ProtocolError(proto.ALREADY_JOINED, "already joined")
        version = msg.get("protocol", proto.PROTOCOL_VERSION)
        if version != proto.PROTOCOL_VERSION:
            raise proto.ProtocolError(proto.UNSUPPORTED_VERSION,
                                      f"protocol {version} not supported; this server speaks "
                                      f"{proto.PROTOCOL_VERSION}")
        now = time.time()
        claims = verify_token(msg["token"], self.config.api_keys, now=now,
                              audience=self.config.token_audience)
        if not claims.room:
            raise RoomError("token_no_room", "the token does not name a room")
        if msg.get("room") is not None and msg["room"] != claims.room:
            raise RoomError("token_wrong_room", "the token is for another room")
        room = self.rooms.get_or_create(claims.room, claims.kind or "group")
        p = await room.join(claims, self.send)
        self.room, self.participant = room, p
        roster = [o.info() for o in room.participants.values() if o is not p]
        await self.send(proto.reply(
            "joined", request_id, protocol=proto.PROTOCOL_VERSION, participant_id=p.id,
            room={"name": room.name, "kind": room.kind, "max_participants": room.max_participants},
            participants=roster,
            ice_servers=[s.to_json() for s in self.config.ice_servers_for(claims.identity, now)],
            grants={"publish": claims.grants.publish, "subscribe": claims.grants.subscribe}))
        metrics.JOIN_LATENCY.observe(time.monotonic() - started)

    async def add_candidate(self, p: Participant, msg: dict[str, Any], request_id: Any) -> None:
        from aiortc.sdp import candidate_from_sdp

        transport = p.publisher if msg["target"] == "publisher" else p.subscriber
        if transport is None:
            raise proto.ProtocolError(proto.INVALID_MESSAGE, "no such connection yet",
                                      request_id)
        c = msg["candidate"]
        if c is None or not c.get("candidate"):
            await transport.add_ice_candidate(None)
        else:
            text = str(c["candidate"])
            if text.startswith("candidate:"):
                text = text[len("candidate:"):]
            try:
                candidate = candidate_from_sdp(text)
            except (ValueError, IndexError):
                raise proto.ProtocolError(proto.INVALID_MESSAGE, "candidate: cannot parse",
                                          request_id) from None
            candidate.sdpMid = c.get("sdpMid")
            candidate.sdpMLineIndex = c.get("sdpMLineIndex")
            await transport.add_ice_candidate(candidate)
        await self.send(proto.reply("ack", request_id))


async def signal_handler(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG_KEY]
    if not request.app[STATE_KEY]["ready"]:
        return web.json_response({"code": "not_ready", "message": "node is draining"},
                                 status=503)
    ws = web.WebSocketResponse(heartbeat=15.0, max_msg_size=config.max_message_bytes * 4)
    await ws.prepare(request)
    sockets = request.app[STATE_KEY]["sockets"]
    sockets.add(ws)
    try:
        await SignalSession(request, ws).run()
    finally:
        sockets.discard(ws)
        if not ws.closed:
            await ws.close()
    return ws


def run_server(config: Config) -> None:
    """Run one node until SIGINT/SIGTERM."""

    async def main() -> None:
        app = create_app(config)
        runner = web.AppRunner(app, access_log_format='%a "%r" %s %b %Tf')
        await runner.setup()
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        log.info("mediaserver listening on http://%s:%d", config.host, config.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down")
        await runner.cleanup()

    asyncio.run(main())
