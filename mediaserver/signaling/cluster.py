"""The HTTP side of routing: redirects, resumes on a moved room, admin forwarding, drain.

With a single node (``LocalRouter``) none of this does anything except drain. With Redis:

- ``redirect_join``: a ``join`` for a room hosted elsewhere gets a ``redirect`` reply with the
  owner's signalling URL (the client reconnects there and joins again); a room placed here
  that has saved state (its node went away) is rebuilt from it first.
- ``resume_elsewhere``: a ``resume`` for a room that is not here is redirected, or, when the
  room's node is gone, the room is rebuilt here and the participant seated again with its
  id, identity and admission (``resumed`` with ``restored: true``: media starts anew).
- ``forward_admin``: admin calls about a room are forwarded over HTTP, with the caller's own
  credential, to the node hosting the room; ``GET /v1/rooms`` asks every node.
- ``/v1/node`` (status) and ``POST /v1/node/drain``; SIGUSR1 drains too (``run_server``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from mediaserver import metrics, safejson
from mediaserver.config import Config
from mediaserver.rooms import RoomError, RoomManager
from mediaserver.routing import NodeInfo, Router, RoutingError, make_router
from mediaserver.routing.session import readmit, rebuild_room
from mediaserver.signaling import protocol as proto
from mediaserver.signaling.admin import admin_claims

if TYPE_CHECKING:
    from mediaserver.signaling.app import SignalSession

log = logging.getLogger(__name__)

FORWARDED = "X-Mediaserver-Forwarded"  # set on calls between nodes: never forwarded again
FORWARD_TIMEOUT = aiohttp.ClientTimeout(total=5.0)


@dataclass
class NodeControl:
    """The node's lifecycle switches: ``stop`` is set by run_server (absent in tests)."""

    config: Config
    router: Router
    rooms: RoomManager
    stop: Callable[[], None] | None = None
    http: aiohttp.ClientSession | None = None
    drain_task: asyncio.Task[None] | None = None

    def drain(self) -> None:
        """Readiness false at once, no new rooms here; exit when empty or after the timeout."""
        if self.drain_task is not None:
            return
        log.info("drain: no new sessions; exit when the last participant left or after %ds",
                 self.config.cluster.drain_timeout)
        self.router.drain()
        metrics.CLUSTER_DRAINING.set(1)
        self.drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.config.cluster.drain_timeout
        while True:
            left = self.participants()
            if left == 0 or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.5)
        log.info("drain: %s; stopping", "empty" if not left else
                 f"timeout with {left} participants (they resume on other nodes)")
        if self.stop is not None:
            self.stop()

    def participants(self) -> int:
        return sum(len(r.participants) for r in self.rooms.rooms.values())


CONTROL_KEY = web.AppKey("node_control", NodeControl)


def setup(app: web.Application, config: Config, rooms: RoomManager) -> Router:
    router = make_router(config, rooms)
    rooms.on_closed = router.room_closed
    app[CONTROL_KEY] = NodeControl(config, router, rooms)
    app.router.add_get("/v1/node", node_status)
    app.router.add_post("/v1/node/drain", node_drain)
    if router.clustered:
        app.middlewares.append(forward_admin)
    app.cleanup_ctx.append(_lifecycle)
    return router


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    control = app[CONTROL_KEY]
    if control.router.clustered:
        control.http = aiohttp.ClientSession(timeout=FORWARD_TIMEOUT)
    await control.router.start()
    yield
    if control.drain_task is not None:
        control.drain_task.cancel()
    await control.router.stop()
    if control.http is not None:
        await control.http.close()


def router_of(app: web.Application) -> Router:
    return app[CONTROL_KEY].router


# -- signalling -----------------------------------------------------------------------------


async def _placed(router: Router, room: str) -> Any:
    try:
        return await router.place(room)
    except RoutingError as exc:
        raise RoomError(exc.code, exc.message) from None


async def _saved(router: Router, room: str) -> dict[str, Any] | None:
    try:
        return await router.saved_room(room)
    except RoutingError as exc:
        raise RoomError(exc.code, exc.message) from None


async def _redirect(session: SignalSession, node: NodeInfo, request_id: Any,
                    message: str) -> None:
    metrics.CLUSTER_REDIRECTS.labels(message=message).inc()
    await session.send(proto.reply("redirect", request_id, url=node.signal_url,
                                   node_id=node.node_id))
    session._schedule_close(1000, b"redirect")


async def redirect_join(session: SignalSession, room_name: str, request_id: Any) -> bool:
    """True when the join was answered with a redirect; else the room is (to be) here."""
    rooms, router = session.rooms, router_of(session.app)
    if room_name in rooms.rooms:
        return False
    placement = await _placed(router, room_name)
    if placement.node is not None:
        await _redirect(session, placement.node, request_id, "join")
        return True
    if router.clustered:
        saved = await _saved(router, room_name)
        if saved is not None and room_name not in rooms.rooms:
            router.adopted(rebuild_room(rooms, saved), saved)
    return False


async def resume_elsewhere(session: SignalSession, claims: Any, msg: dict[str, Any],
                           request_id: Any) -> bool:
    """Resume a participant this node does not hold; False leaves it to the usual path."""
    rooms, router = session.rooms, router_of(session.app)
    name, pid = claims.room, msg["participant_id"]
    if not router.clustered:
        return False
    room = rooms.rooms.get(name)
    if room is not None and pid in room.participants:
        return False
    if room is None:
        placement = await _placed(router, name)
        if placement.node is not None:
            await _redirect(session, placement.node, request_id, "resume")
            return True
    saved = await _saved(router, name)
    if saved is None or pid not in (saved.get("participants") or {}):
        raise RoomError("resume_failed", "nothing to resume: join again")
    room = rooms.rooms.get(name)  # again: another resume may have rebuilt it meanwhile
    if room is None:
        room = rebuild_room(rooms, saved)
        router.adopted(room, saved)
    p = readmit(room, saved, claims, pid, msg["resume_token"], session.send)
    session._attach(room, p)
    await session.send(proto.reply("resumed", request_id, restored=True,
                                   **room.joined_reply(p)))
    router.room_changed(room)
    await room.announce(p)
    return True


# -- admin ----------------------------------------------------------------------------------


def _admin(request: web.Request, any_room: bool) -> web.Response | None:
    """An error response unless the request carries an admin token (for all rooms)."""
    claims = admin_claims(request, request.app[CONTROL_KEY].config)
    if isinstance(claims, web.Response):
        return claims
    if any_room and claims.room is not None:
        return _error(403, "permission_denied", "needs an admin token for all rooms")
    return None


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


async def node_status(request: web.Request) -> web.Response:
    denied = _admin(request, any_room=True)
    if denied is not None:
        return denied
    control = request.app[CONTROL_KEY]
    router = control.router
    body: dict[str, Any] = {"node_id": router.node_id, "clustered": router.clustered,
                            "available": router.available, "draining": router.draining,
                            "rooms": sorted(control.rooms.rooms),
                            "participants": control.participants()}
    if router.clustered:
        try:
            body["nodes"] = [n.to_json() for n in await router.nodes()]
        except RoutingError as exc:
            body["nodes_error"] = exc.code
    return web.json_response(body)


async def node_drain(request: web.Request) -> web.Response:
    denied = _admin(request, any_room=True)
    if denied is not None:
        return denied
    request.app[CONTROL_KEY].drain()
    return web.json_response({"draining": True}, status=202)


async def _forward(request: web.Request, node: NodeInfo, body: bytes | None = None
                   ) -> web.Response:
    http = request.app[CONTROL_KEY].http
    assert http is not None
    headers = {FORWARDED: request.app[CONTROL_KEY].router.node_id}
    for name in ("Authorization", "Content-Type"):
        if name in request.headers:
            headers[name] = request.headers[name]
    data = body if body is not None else await request.read()
    try:
        async with http.request(request.method, node.url + request.path_qs, data=data or None,
                                headers=headers) as r:
            payload = await r.read()
            return web.Response(body=payload, status=r.status,
                                content_type=r.content_type or "application/json")
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("admin call not forwarded to node %s: %s", node.node_id, exc)
        return _error(502, "node_unreachable", f"the room's node {node.node_id} did not answer")


async def _list_everywhere(request: web.Request, handler: Any) -> web.StreamResponse:
    router = router_of(request.app)
    local = await handler(request)
    if not isinstance(local, web.Response) or local.status != 200 or local.body is None:
        return local
    body = json.loads(bytes(local.body))  # type: ignore[arg-type]
    for room in body["rooms"]:
        room["node_id"] = router.node_id
    unreachable: list[str] = []
    try:
        nodes = await router.nodes()
    except RoutingError:
        body["cluster_unavailable"] = True  # Redis is away: this node's rooms only
        nodes = []
    for node in nodes:
        if node.node_id == router.node_id:
            continue
        r = await _forward(request, node)
        if r.status != 200 or r.body is None:
            unreachable.append(node.node_id)
            continue
        for room in json.loads(bytes(r.body))["rooms"]:  # type: ignore[arg-type]
            room.setdefault("node_id", node.node_id)
            body["rooms"].append(room)
    if unreachable:
        body["unreachable_nodes"] = unreachable
    return web.json_response(body)


@web.middleware
async def forward_admin(request: web.Request, handler: Any) -> web.StreamResponse:
    """Send an admin call to the node that hosts its room (the caller's credential travels)."""
    if (not request.path.startswith("/v1/rooms") or FORWARDED in request.headers
            or "Authorization" not in request.headers):
        return await handler(request)
    router = router_of(request.app)
    rooms = request.app[CONTROL_KEY].rooms
    try:
        if request.path in ("/v1/rooms", "/v1/rooms/"):
            if request.method == "GET":
                return await _list_everywhere(request, handler)
            if request.method == "POST":
                try:
                    body = safejson.loads(await request.text())
                except (ValueError, UnicodeDecodeError):
                    return await handler(request)  # it answers bad_json
                name = body.get("room") if isinstance(body, dict) else None
                if isinstance(name, str) and name and name not in rooms.rooms:
                    placement = await router.place(name)
                    if placement.node is not None:
                        return await _forward(request, placement.node)
            return await handler(request)
        name = request.match_info.get("room")
        if name and name not in rooms.rooms:
            owner = await router.owner(name)
            if owner is not None:
                return await _forward(request, owner)
            if request.method == "GET" and request.path.endswith("/report"):
                return await _report_anywhere(request, handler)
    except RoutingError as exc:
        return _error(503, exc.code, exc.message)
    return await handler(request)


async def _report_anywhere(request: web.Request, handler: Any) -> web.StreamResponse:
    """An ended session's report stays on the node that hosted it: ask them all."""
    local = await handler(request)
    if local.status != 404:
        return local
    router = router_of(request.app)
    for node in await router.nodes():
        if node.node_id != router.node_id:
            r = await _forward(request, node)
            if r.status == 200:
                return r
    return local
