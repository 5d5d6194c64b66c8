"""The signalling WebSocket's upgrade, the same for a node and for a multi-worker front."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from mediaserver import limits
from mediaserver.config import Config

HEARTBEAT = 15.0  # seconds between WebSocket pings; a missed pong drops the socket


@contextlib.asynccontextmanager
async def accept_socket(request: web.Request, config: Config, ready: bool,
                        connections: limits.ConnectionCounter,
                        limited: Callable[[], None] = lambda: None,
                        ) -> AsyncIterator[web.StreamResponse]:
    """The client's WebSocket, prepared, for the ``async with`` body; or the refusal to return.

    Refused before the upgrade: 503 ``not_ready`` while shutting down, 429
    ``too_many_connections`` over ``limits.connections_per_ip`` (``limited`` counts it).
    The address's connection slot is held until the body ends.
    """
    if not ready:
        yield web.json_response({"code": "not_ready", "message": "node is draining"},
                                status=503)
        return
    ip = request.remote or "?"
    if not connections.acquire(ip):
        limited()
        yield web.json_response(
            {"code": limits.TOO_MANY_CONNECTIONS,
             "message": f"at most {config.limits.connections_per_ip} connections per address"},
            status=429)
        return
    try:
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT, max_msg_size=config.max_message_bytes * 4)
        await ws.prepare(request)
        yield ws
    finally:
        connections.release(ip)
