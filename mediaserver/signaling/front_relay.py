"""Signalling at a multi-worker front: each WebSocket goes to its room's worker, then is relayed.

Until a ``join`` or ``resume`` with a valid token arrives, the front answers as a node would:
the same validation (``protocol.decode``), token checks (``protocol.entry_claims``) and
error codes, ``pong``, the join deadline, the rate limit, the cut-off after too many invalid
messages. The token's room then picks the worker (``workers/placement.py``). The front opens a
WebSocket to it, marked with that room (``ROUTED_ROOM_HEADER``: the worker refuses any other
room on it), passes the message on unchanged and from then on relays frames both ways without
reading them; the worker verifies the token again and is the authority from there. A close
from either side is passed on with its code; a worker that goes away without one closes its
clients' sockets with 1012, and they resume or join again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol

import aiohttp
from aiohttp import WSMessage, WSMsgType, web

from mediaserver import limits
from mediaserver.signaling import protocol as proto
from mediaserver.signaling.accept import accept_socket
from mediaserver.signaling.front import FRONT_KEY, WORKER_URL, Front
from mediaserver.tokens import TokenError

ROOM_UNAVAILABLE = "room_unavailable"  # the client retries (as for a room that is moving)
WORKER_LOST = (1012, b"worker restarted")  # 1012: service restart; resume or join again
CLIENT_LOST = (1001, b"")  # the client's connection dropped: the worker keeps it resumable
OPEN_TIMEOUT = 5.0
_CLOSED = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)

Close = tuple[int, bytes]


class _Socket(Protocol):
    """What the relay uses of either end (aiohttp's server and client WebSockets)."""

    async def receive(self) -> WSMessage: ...

    async def send_str(self, data: str) -> None: ...

    async def send_bytes(self, data: bytes) -> None: ...


async def signal_handler(request: web.Request) -> web.StreamResponse:
    front = request.app[FRONT_KEY]
    async with accept_socket(request, front.config, not front.stopping,
                             front.connections) as ws:
        if not isinstance(ws, web.WebSocketResponse):
            return ws  # refused before the upgrade
        front.clients.add(ws)
        try:
            upstream = await _entry(front, ws)
            if upstream is not None:
                try:
                    await _relay(ws, upstream)
                finally:
                    await upstream.close()
        except ConnectionError:
            pass  # the client went away while the front was answering it
        finally:
            front.clients.discard(ws)
            await ws.close()
    return ws


async def _entry(front: Front, ws: web.WebSocketResponse
                 ) -> aiohttp.ClientWebSocketResponse | None:
    """Answer what comes before a routable join or resume; then the worker's socket."""
    config, lim = front.config, front.config.limits
    rate = limits.TokenBucket(lim.messages_per_second, lim.message_burst)
    started, bad = time.monotonic(), 0

    async def fail(code: str, message: str, request_id: object = None) -> None:
        front.errors[code] += 1
        await ws.send_json(proto.error(code, message, request_id))

    while not ws.closed:
        left = proto.JOIN_DEADLINE - (time.monotonic() - started)
        if left <= 0:
            await fail(proto.JOIN_TIMEOUT, f"no join message within {int(proto.JOIN_DEADLINE)}"
                       " seconds")
            return None
        try:
            msg = await asyncio.wait_for(ws.receive(), left)
        except TimeoutError:
            continue
        if msg.type in _CLOSED:
            return None
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            continue
        try:
            if not rate.take(time.monotonic()):
                raise proto.ProtocolError(limits.RATE_LIMITED, "too many messages: at most "
                                          f"{lim.messages_per_second} a second")
            parsed = proto.decode(msg.data, config.max_message_bytes)
        except proto.ProtocolError as exc:
            bad += 1
            await fail(exc.code, exc.message, exc.request_id)
            if bad >= proto.MAX_INVALID_MESSAGES:
                await ws.close(code=1008, message=b"too many invalid messages")
                return None
            continue
        request_id = parsed.get("id")
        if parsed["type"] == "ping":
            extra = {"timestamp": parsed["timestamp"]} if "timestamp" in parsed else {}
            await ws.send_json(proto.reply("pong", request_id, **extra))
            continue
        try:
            if parsed["type"] not in ("join", "resume"):
                raise proto.ProtocolError(proto.NOT_JOINED, "send join first")
            claims = proto.entry_claims(parsed, config.api_keys, config.token_audience,
                                        time.time())
            assert claims.room is not None
            upstream = await _open(front, claims.room)
        except (proto.ProtocolError, TokenError) as exc:
            await fail(exc.code, exc.message, request_id)
            continue
        try:
            await (upstream.send_str(msg.data) if isinstance(msg.data, str)
                   else upstream.send_bytes(msg.data))
        except (ConnectionError, aiohttp.ClientError):
            await upstream.close()
            await fail(ROOM_UNAVAILABLE, "the session's worker is restarting; try again "
                       "shortly", request_id)
            continue
        return upstream
    return None


async def _open(front: Front, room: str) -> aiohttp.ClientWebSocketResponse:
    """A WebSocket to the worker of ``room`` (placing a new room); ProtocolError if none."""
    worker = front.placement.route(room, time.monotonic(), allow_new=not front.draining)
    if worker is None:
        if front.draining:
            raise proto.ProtocolError("node_draining", "this server is shutting down: no new "
                                      "sessions")
        raise proto.ProtocolError(ROOM_UNAVAILABLE, "no worker can take this session now; "
                                  "try again shortly")
    try:
        return await asyncio.wait_for(front.http[worker].ws_connect(
            WORKER_URL + "/v1/signal", headers={proto.ROUTED_ROOM_HEADER: room},
            max_msg_size=0), OPEN_TIMEOUT)
    except (aiohttp.ClientError, OSError, TimeoutError):
        raise proto.ProtocolError(ROOM_UNAVAILABLE, "the session's worker is restarting; "
                                  "try again shortly") from None


async def _relay(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse
                 ) -> None:
    """Frames both ways until one side closes; then the other is closed alike."""
    to_worker = asyncio.create_task(_pump(client, upstream, CLIENT_LOST))
    to_client = asyncio.create_task(_pump(upstream, client, WORKER_LOST))
    try:
        done, _ = await asyncio.wait({to_worker, to_client},
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (to_worker, to_client):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if to_client in done:
        code, reason = to_client.result()
        await client.close(code=code, message=reason)
        await upstream.close()
    else:
        code, reason = to_worker.result()
        await upstream.close(code=code, message=reason)


async def _pump(src: _Socket, dst: _Socket, lost: Close) -> Close:
    """Frames from ``src`` to ``dst`` until ``src`` ends; the close to give the other side."""
    try:
        while True:
            msg = await src.receive()
            if msg.type == WSMsgType.TEXT:
                await dst.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await dst.send_bytes(msg.data)
            elif msg.type == WSMsgType.CLOSE:
                return _sendable(msg.data), str(msg.extra or "").encode()[:120]
            elif msg.type in _CLOSED:
                return lost
    except (ConnectionError, aiohttp.ClientError):
        return lost  # ``dst`` is gone: closing it is then a formality


def _sendable(code: object) -> int:
    """A close code that may go in a close frame (1005, 1006, 1015 are only ever reported)."""
    if isinstance(code, int) and (1000 <= code <= 1003 or 1007 <= code <= 1014
                                  or 3000 <= code <= 4999):
        return code
    return 1000
