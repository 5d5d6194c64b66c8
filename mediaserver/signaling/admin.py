"""Admin REST API (JSON) for the app's backend: rooms and their participants.

Authentication: ``Authorization: Bearer <token>`` where the token is an access token with
the ``admin`` grant, signed with one of the node's API keys (``mediaserver token create
--admin``). Errors are ``{"code": ..., "message": ...}`` with a fitting HTTP status.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from mediaserver import safejson
from mediaserver.config import Config
from mediaserver.rooms import RoomError, RoomManager
from mediaserver.tokens import Claims, SessionKind, TokenError, verify_token

KINDS = tuple(k.value for k in SessionKind)
ROOM_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_STATUS = {"room_not_found": 404, "participant_not_found": 404, "room_exists": 409,
           "permission_denied": 403, "recording_unavailable": 409}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


def admin_claims(request: web.Request, config: Config) -> Claims | web.Response:
    """The claims of the request's admin token, or the error response to send instead."""
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return _error(401, "unauthorized", "missing Bearer token")
    try:
        claims = verify_token(header[7:].strip(), config.api_keys, now=time.time(),
                              audience=config.token_audience)
    except TokenError as exc:
        return _error(401, exc.code, exc.message)
    if not claims.grants.admin:
        return _error(403, "permission_denied", "the token has no admin grant")
    return claims


def add_routes(app: web.Application, config_key: web.AppKey[Config],
               rooms_key: web.AppKey[RoomManager]) -> None:
    def authed(handler: Callable[[web.Request, RoomManager], Awaitable[web.Response]]
               ) -> Handler:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            claims = admin_claims(request, request.app[config_key])
            if isinstance(claims, web.Response):
                return claims
            room = request.match_info.get("room")
            if claims.room is not None and (room is None or room != claims.room):
                # An admin token minted for one room administers that room only.
                return _error(403, "permission_denied", "the token is for another room")
            try:
                return await handler(request, request.app[rooms_key])
            except RoomError as exc:
                return _error(_STATUS.get(exc.code, 400), exc.code, exc.message)
        return wrapper

    app.router.add_get("/v1/rooms", authed(list_rooms))
    app.router.add_post("/v1/rooms", authed(create_room))
    app.router.add_get("/v1/rooms/{room}", authed(get_room))
    app.router.add_delete("/v1/rooms/{room}", authed(end_room))
    app.router.add_get("/v1/rooms/{room}/report", authed(room_report))
    app.router.add_delete("/v1/rooms/{room}/participants/{identity}", authed(remove_participant))
    app.router.add_post("/v1/rooms/{room}/recording", authed(recording))


async def list_rooms(request: web.Request, rooms: RoomManager) -> web.Response:
    return web.json_response({"rooms": [r.info() for r in rooms.rooms.values()]})


async def create_room(request: web.Request, rooms: RoomManager) -> web.Response:
    try:
        body: Any = safejson.loads(await request.text())
    except (ValueError, UnicodeDecodeError):
        return _error(400, "bad_json", "body is not valid JSON")
    if not isinstance(body, dict):
        return _error(400, "invalid_request", "body must be a JSON object")
    name, kind = body.get("room"), body.get("kind", "one_to_one")
    if not isinstance(name, str) or not ROOM_NAME.match(name):
        return _error(400, "invalid_request", "room must be 1-128 of A-Z a-z 0-9 _ . -")
    if kind not in KINDS:
        return _error(400, "invalid_request", f"kind must be one of {', '.join(KINDS)}")
    max_p = body.get("max_participants")
    if max_p is not None and (not isinstance(max_p, int) or isinstance(max_p, bool)
                              or max_p < 1):
        return _error(400, "invalid_request", "max_participants must be a positive integer")
    options = body.get("options", {})
    if not isinstance(options, dict) or len(json.dumps(options)) > 4096:
        return _error(400, "invalid_request", "options must be an object under 4 KiB")
    problem = _check_options(options)
    if problem:
        return _error(400, "invalid_request", problem)
    room = rooms.create(name, kind, max_p, options)
    room.mark_persistent()
    return web.json_response(room.info(), status=201)


ROOM_OPTIONS = {"waiting_room": bool, "observers_visible": bool, "empty_timeout": int,
                "max_duration": int}


def _check_options(options: dict[str, Any]) -> str | None:
    for key, value in options.items():
        wanted = ROOM_OPTIONS.get(key)
        if wanted is None:
            return f"unknown room option {key[:40]!r}"
        if type(value) is not wanted:
            return f"option {key} must be a {wanted.__name__}"
        if isinstance(value, int) and not isinstance(value, bool) and not 1 <= value <= 604800:
            return f"option {key} must be between 1 and 604800 seconds"
    return None


async def get_room(request: web.Request, rooms: RoomManager) -> web.Response:
    room = rooms.rooms.get(request.match_info["room"])
    if room is None:
        raise RoomError("room_not_found", "no such room")
    info = room.info()
    info["participants"] = [
        {"participant_id": p.id, "identity": p.identity, "name": p.name, "role": p.role,
         "joined_at": int(p.joined_at),
         "tracks": [t["track_id"] for t in p.info()["tracks"]]}
        for p in room.participants.values()]
    return web.json_response(info)


async def room_report(request: web.Request, rooms: RoomManager) -> web.Response:
    report = rooms.report(request.match_info["room"])
    if report is None:
        raise RoomError("room_not_found", "no such room, and no report kept for it")
    return web.json_response(report)


async def end_room(request: web.Request, rooms: RoomManager) -> web.Response:
    await rooms.end(request.match_info["room"])
    return web.json_response({"ended": True})


async def remove_participant(request: web.Request, rooms: RoomManager) -> web.Response:
    room = rooms.rooms.get(request.match_info["room"])
    if room is None:
        raise RoomError("room_not_found", "no such room")
    p = room.by_identity(request.match_info["identity"])
    if p is None:
        raise RoomError("participant_not_found", "no such participant in the room")
    await rooms.leave(room, p, reason="removed_by_admin")
    return web.json_response({"removed": True})


async def recording(request: web.Request, rooms: RoomManager) -> web.Response:
    """Start or stop a recording on behalf of a host in the room (the clinic's own app).

    Consent works exactly as when the host sends ``record_start``: the host named counts as
    the one asking, everyone else is asked, and nothing is written before all have agreed.
    """
    room = rooms.rooms.get(request.match_info["room"])
    if room is None:
        raise RoomError("room_not_found", "no such room")
    try:
        body: Any = safejson.loads(await request.text())
    except (ValueError, UnicodeDecodeError):
        return _error(400, "bad_json", "body is not valid JSON")
    if not isinstance(body, dict) or body.get("action") not in ("start", "stop") \
            or not isinstance(body.get("identity"), str):
        return _error(400, "invalid_request",
                      'body must be {"action": "start" or "stop", "identity": <a host>}')
    p = room.by_identity(body["identity"])
    if p is None:
        raise RoomError("participant_not_found", "no such participant in the room")
    state = await room.record(p, body["action"] == "start")
    return web.json_response(state)
