"""The admin API, ``/v1/node`` and ``/metrics`` at a multi-worker front.

The workers do the checking: every call goes to a worker with the caller's own
``Authorization``, and whatever a worker refuses (401, 403, 400...) is answered as it
answered it. The front only decides where a call goes and merges answers:

- about one room: to the worker that hosts it; a room no worker hosts now (an ended
  session's report, a typo) is asked of every worker, and the first answer other than 404
  wins;
- ``POST /v1/rooms``: a new room is placed like one created by a join;
- ``GET /v1/rooms``, ``GET /v1/node``: every worker, merged (each room says its ``worker``);
- ``POST /v1/node/drain``: one worker checks the token, then the whole node drains;
- ``/metrics``: every worker's exposition and the front's own, each sample labelled with
  its ``worker``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mediaserver import safejson
from mediaserver.signaling.front import FRONT_KEY, WORKER_URL, Front
from mediaserver.workers import exposition

log = logging.getLogger(__name__)

FORWARD_TIMEOUT = aiohttp.ClientTimeout(total=5.0)
NO_WORKER = ("no_worker", "no worker answered; try again shortly")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/v1/node", node_status)
    app.router.add_post("/v1/node/drain", node_drain)
    app.router.add_get("/v1/rooms", list_rooms)
    app.router.add_post("/v1/rooms", create_room)
    app.router.add_route("*", "/v1/rooms/{room}", room_call)
    app.router.add_route("*", "/v1/rooms/{room}/{rest:.+}", room_call)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


async def forward(front: Front, worker: int, request: web.Request, body: bytes = b""
                  ) -> web.Response:
    """The worker's answer to the caller's request (502 ``worker_unreachable`` if none)."""
    headers = {name: request.headers[name] for name in ("Authorization", "Content-Type")
               if name in request.headers}
    try:
        async with front.http[worker].request(
                request.method, WORKER_URL + request.path_qs, data=body or None,
                headers=headers, timeout=FORWARD_TIMEOUT) as r:
            payload = await r.read()
            return web.Response(body=payload, status=r.status,
                                content_type=r.content_type or "application/json")
    except (aiohttp.ClientError, TimeoutError, OSError):
        log.warning("admin call not forwarded: worker %d did not answer", worker)
        return _error(502, "worker_unreachable", f"worker {worker} did not answer")


async def _everywhere(request: web.Request, body: bytes = b""
                      ) -> list[tuple[int, web.Response]]:
    front = request.app[FRONT_KEY]
    workers = front.ready_workers()  # one still starting has no rooms yet
    answers = await asyncio.gather(*(forward(front, w, request, body) for w in workers))
    return list(zip(workers, answers, strict=True))


def _json(response: web.Response) -> Any:
    assert response.body is not None
    return json.loads(bytes(response.body))  # type: ignore[arg-type]


def _refused(answers: list[tuple[int, web.Response]], ok: int) -> web.Response | None:
    """A worker's refusal (bad token, no admin grant) to pass on, or 503 if none answered."""
    for _, r in answers:
        if r.status not in (ok, 502):
            return r
    if not any(r.status == ok for _, r in answers):
        return _error(503, *NO_WORKER)
    return None


async def list_rooms(request: web.Request) -> web.Response:
    answers = await _everywhere(request)
    refused = _refused(answers, 200)
    if refused is not None:
        return refused
    rooms: list[dict[str, Any]] = []
    unreachable = []
    for worker, r in answers:
        if r.status != 200:
            unreachable.append(worker)
            continue
        rooms += [{**room, "worker": worker} for room in _json(r)["rooms"]]
    body: dict[str, Any] = {"rooms": rooms}
    if unreachable:
        body["unreachable_workers"] = unreachable
    return web.json_response(body)


def _room_named(body: bytes) -> str | None:
    try:
        data = safejson.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    room = data.get("room") if isinstance(data, dict) else None
    return room if isinstance(room, str) and room else None


async def create_room(request: web.Request) -> web.Response:
    front = request.app[FRONT_KEY]
    body = await request.read()
    name = _room_named(body)
    if name is None:  # any worker answers the error (bad_json, invalid_request)
        ready = front.ready_workers()
        return await forward(front, ready[0], request, body) if ready else _error(
            503, *NO_WORKER)
    placed_before = front.placement.owner(name) is not None
    worker = front.placement.route(name, time.monotonic(), allow_new=not front.draining)
    if worker is None:
        if front.draining:
            return _error(503, "node_draining", "this server is shutting down: no new sessions")
        return _error(503, *NO_WORKER)
    response = await forward(front, worker, request, body)
    if not placed_before and response.status != 201:
        front.placement.release(name, worker)
    return response


async def room_call(request: web.Request) -> web.Response:
    front = request.app[FRONT_KEY]
    body = await request.read()
    worker = front.placement.owner(request.match_info["room"])
    if worker is not None:
        return await forward(front, worker, request, body)
    answers = await _everywhere(request, body)
    for _, r in answers:
        if r.status not in (404, 502):
            return r
    return next((r for _, r in answers if r.status == 404),
                answers[0][1] if answers else _error(503, *NO_WORKER))


async def node_status(request: web.Request) -> web.Response:
    front = request.app[FRONT_KEY]
    answers = dict(await _everywhere(request))
    refused = _refused(list(answers.items()), 200)
    if refused is not None:
        return refused
    workers = []
    for w in front.workers:
        r = answers.get(w.index)
        body = _json(r) if r is not None and r.status == 200 else {}
        workers.append({"worker": w.index, "pid": w.pid, "state": front.state_of(w.index),
                        "restarts": w.restarts, "rooms": body.get("rooms", []),
                        "participants": body.get("participants", 0)})
    return web.json_response({
        "node_id": "local", "clustered": False, "available": True,
        "draining": front.draining, "rooms": sorted(r for w in workers for r in w["rooms"]),
        "participants": sum(w["participants"] for w in workers), "workers": workers})


async def node_drain(request: web.Request) -> web.Response:
    front = request.app[FRONT_KEY]
    ready = front.ready_workers()
    if not ready:
        return _error(503, *NO_WORKER)
    checked = await forward(front, ready[0], request)  # that worker drains itself if allowed
    if checked.status != 202:
        return checked
    front.drain()
    return web.json_response({"draining": True}, status=202)


async def metrics_handler(request: web.Request) -> web.Response:
    front = request.app[FRONT_KEY]

    async def scrape(worker: int) -> tuple[str, str] | None:
        try:
            async with front.http[worker].get(WORKER_URL + "/metrics",
                                              timeout=FORWARD_TIMEOUT) as r:
                return (str(worker), await r.text()) if r.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, OSError, UnicodeDecodeError):
            return None

    parts = [p for p in await asyncio.gather(*map(scrape, front.ready_workers())) if p]
    parts.append(("front", generate_latest(front.registry).decode()))
    return web.Response(body=exposition.merge(parts).encode(),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})
