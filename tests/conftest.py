"""Shared fixtures: a real server on loopback, tokens, and a polling wait helper."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pylibsrtp
import pytest
from aiohttp import web

from mediaserver.config import DEV_API_KEY, DEV_API_SECRET, Config, build_config
from mediaserver.rooms import RoomManager
from mediaserver.signaling.app import ROOMS_KEY, create_app
from mediaserver.tokens import Grants, create_token


async def wait_until(condition: Callable[[], Any], timeout: float = 20.0,
                     interval: float = 0.05, message: str = "condition") -> Any:
    """Poll ``condition`` until it is truthy; fail with ``message`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


def srtp_sessions() -> tuple[pylibsrtp.Session, pylibsrtp.Session]:
    """A sending and a receiving libsrtp session on one fresh key."""
    key = os.urandom(30)
    tx = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    rx = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
    return tx, rx


@dataclass
class RunningServer:
    config: Config
    app: web.Application
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/signal"

    @property
    def rooms(self) -> RoomManager:
        return self.app[ROOMS_KEY]

    def token(self, room: str, identity: str, **kw: Any) -> str:
        return token(room, identity, **kw)

    def admin_token(self) -> str:
        return admin_token()


def token(room: str, identity: str, **kw: Any) -> str:
    """A participant's access token from the dev key (a one-to-one room unless told)."""
    kw.setdefault("kind", "one_to_one")
    return create_token(DEV_API_KEY, DEV_API_SECRET, room=room, identity=identity,
                        now=time.time(), **kw)


def admin_token() -> str:
    return create_token(DEV_API_KEY, DEV_API_SECRET, identity="backend", now=time.time(),
                        grants=Grants(publish=False, subscribe=False, admin=True))


def test_config(**flags: Any) -> Config:
    base = {"dev": True, "host": "127.0.0.1", "bind_host": "127.0.0.1",
            "allow_loopback": True}
    base.update(flags)
    return build_config(base, {}, None)


@contextlib.asynccontextmanager
async def start_server(config: Config | None = None, **flags: Any
                       ) -> AsyncIterator[RunningServer]:
    """A real server on a free loopback port, in this process, with ``flags`` applied."""
    config = config or test_config(**flags)
    app = create_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, config.host, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield RunningServer(config, app, port)
    finally:
        await runner.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with start_server() as running:
        yield running
