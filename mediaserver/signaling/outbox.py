"""Messages to one signalling WebSocket: queued, written by one task, bounded.

A room tells everyone about everything (a mute, a newcomer, a speaker change). If sending
to one participant awaited that participant's socket, one client that stops reading (a
frozen tab, a phone on a dying link) would hold up every event of its room once its TCP
buffers filled. So ``put`` never waits: it queues, and a writer task drains the queue. A
socket whose queue reaches ``limit`` messages is cut off (the participant is treated as
dropped and may resume); a single write that takes longer than ``write_timeout`` is too.

``close`` is ordered after everything already queued, so a final ``removed`` or ``error``
reaches the client before the close frame.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web

from mediaserver import metrics

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, ws: web.WebSocketResponse, limit: int, abort: Callable[[], None],
                 write_timeout: float = 10.0) -> None:
        self.ws = ws
        self.limit = limit
        self.write_timeout = write_timeout
        self.overflowed = False
        self._abort = abort
        self._queue: deque[dict[str, Any]] = deque()
        self._close: tuple[int, bytes] | None = None
        self._dead = False
        self._in_send = False
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="signal-outbox")

    @property
    def closing(self) -> bool:
        return self._close is not None or self._dead

    def put(self, msg: dict[str, Any]) -> bool:
        """Queue ``msg``; False if the socket is closing or was just cut off for overflow."""
        if self.closing:
            return False
        if len(self._queue) >= self.limit and self._in_send:
            # Only a write stuck on the socket makes a client slow: a burst of our own
            # (many events queued before the writer ran) drains by itself.
            self.overflowed = True
            metrics.LIMIT["slow_consumer"].inc()
            log.info("signalling socket cut off: %d messages unsent", len(self._queue))
            self._kill()
            return False
        self._queue.append(msg)
        self._wake.set()
        return True

    def close(self, code: int = 1000, reason: bytes = b"") -> None:
        """Close the socket once everything queued so far is written (first call wins)."""
        if not self.closing:
            self._close = (code, reason)
            self._wake.set()

    async def aclose(self, timeout: float) -> None:
        """Flush and close within ``timeout`` seconds, else cut the connection."""
        self.close(1000)
        done, _ = await asyncio.wait({self._task}, timeout=timeout)
        if not done:
            self._kill()
            await asyncio.wait({self._task})

    def _kill(self, from_writer: bool = False) -> None:
        self._dead = True
        self._queue.clear()
        self._abort()
        if not from_writer:
            self._task.cancel()

    async def _run(self) -> None:
        ws = self.ws
        try:
            while True:
                while self._queue:
                    msg = self._queue.popleft()
                    if ws.closed:
                        self._queue.clear()
                        return
                    self._in_send = True
                    try:
                        await asyncio.wait_for(ws.send_json(msg), self.write_timeout)
                    except TimeoutError:
                        metrics.LIMIT["slow_consumer"].inc()
                        self._kill(from_writer=True)
                        return
                    except (ConnectionError, RuntimeError):
                        return  # the socket went away under us
                    finally:
                        self._in_send = False
                if self._close is not None:
                    if not ws.closed:
                        code, reason = self._close
                        await asyncio.wait_for(ws.close(code=code, message=reason),
                                               self.write_timeout)
                    return
                self._wake.clear()
                await self._wake.wait()
        except (ConnectionError, RuntimeError, TimeoutError):
            return
