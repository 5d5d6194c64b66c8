"""Real clusters for the tests: Redis, server processes on loopback ports, aiortc clients.

Each test gets its own key prefix (other people's tests may share the Redis at
127.0.0.1:6379), removes only its own keys afterwards, and starts its nodes as
``python -m mediaserver serve`` subprocesses with a short lease, so that a killed node's
rooms move within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from bench.servers import free_port
from loadtest.client import SignalClient
from tests.conftest import admin_token, wait_until

SHARED_REDIS = os.environ.get("MEDIASERVER_TEST_REDIS", "redis://127.0.0.1:6379/0")
LEASE_TTL = 3


ADMIN = {"Authorization": f"Bearer {admin_token()}"}


@dataclass
class Node:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/signal"

    def kill(self) -> None:
        """kill -9: no goodbye to Redis, no closing of sockets."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    async def get(self, path: str, headers: dict[str, str] | None = None
                  ) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http, \
                http.get(self.url + path, headers=headers or ADMIN) as r:
            return r.status, await r.json(content_type=None)

    async def request(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http, \
                http.request(method, self.url + path, headers=ADMIN, **kw) as r:
            return r.status, await r.json(content_type=None)

    async def metric(self, line_start: str) -> float:
        """The value of the first /metrics sample line starting with ``line_start``."""
        async with aiohttp.ClientSession() as http, http.get(self.url + "/metrics") as r:
            text = await r.text()
        for line in text.splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no sample {line_start!r}")

    async def local_rooms(self) -> list[str]:
        status, body = await self.get("/v1/node")
        assert status == 200, body
        return list(body["rooms"])


@dataclass
class Cluster:
    prefix: str
    redis_url: str
    tmp: Path
    redis: aioredis.Redis
    nodes: dict[str, Node] = field(default_factory=dict)

    def start(self, name: str, *extra: str) -> Node:
        port = free_port()
        udp = random.randrange(50000, 59000)
        log = self.tmp / f"{name}.log"
        cmd = [sys.executable, "-m", "mediaserver", "serve", "--dev", "--host", "127.0.0.1",
               "--port", str(port), "--bind-host", "127.0.0.1", "--allow-loopback-candidates",
               "--udp-port-range", f"{udp}-{udp + 300}", "--redis-url", self.redis_url,
               "--cluster-prefix", self.prefix, "--node-id", name,
               "--lease-ttl", str(LEASE_TTL), "--log-level", "INFO", *extra]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=Path(__file__).parents[2])
        node = Node(name, port, proc, log)
        self.nodes[name] = node
        return node

    async def ready(self, *nodes: Node, timeout: float = 30) -> None:
        """Each node answers HTTP and is in the registry, seen by every other node."""
        async def up(node: Node) -> bool:
            if node.proc.poll() is not None:
                raise AssertionError(f"{node.name} exited:\n{node.log.read_text()[-3000:]}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                status, body = await node.get("/v1/node")
                return status == 200 and {n.name for n in nodes} <= {
                    x["node_id"] for x in body.get("nodes", [])}
            return False

        for node in nodes:
            await wait_until(lambda n=node: up(n), timeout=timeout,  # type: ignore[misc]
                             interval=0.2, message=f"{node.name} up and registered")

    async def owner(self, room: str) -> str | None:
        return await self.redis.get(f"{self.prefix}:room:{room}:owner")

    async def node_of(self, room: str) -> Node:
        owner = await wait_until(lambda: self.owner(room), message=f"an owner for {room}")
        return self.nodes[owner]

    def stop_all(self) -> None:
        for node in self.nodes.values():
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGKILL)
                node.proc.wait(10)


async def _drop_keys(redis: aioredis.Redis, prefix: str) -> None:
    async for key in redis.scan_iter(match=f"{prefix}:*", count=500):
        await redis.delete(key)


@contextlib.asynccontextmanager
async def make_cluster(tmp: Path, redis_url: str = SHARED_REDIS) -> AsyncIterator[Cluster]:
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    cluster = Cluster(prefix, redis_url, tmp, redis)
    try:
        yield cluster
    finally:
        cluster.stop_all()
        with contextlib.suppress(Exception):
            await _drop_keys(redis, prefix)
        await redis.aclose()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    try:
        probe = aioredis.Redis.from_url(SHARED_REDIS)
        await probe.ping()
        await probe.aclose()
    except Exception:
        pytest.skip(f"no Redis at {SHARED_REDIS} (bash .ci/run starts one)")
    async with make_cluster(tmp_path) as c:
        yield c


@dataclass
class OwnRedis:
    """A redis-server of the test's own, so it can be stopped without disturbing others."""

    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def spawn(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed")
        self.proc = subprocess.Popen(
            [exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def start(self) -> None:
        self.spawn()

        async def pong() -> bool:
            with contextlib.suppress(Exception):
                client = aioredis.Redis.from_url(self.url)
                try:
                    return bool(await client.ping())
                finally:
                    await client.aclose()
            return False

        await wait_until(pong, timeout=10, message="own redis-server up")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
async def own_redis() -> AsyncIterator[OwnRedis]:
    server = OwnRedis(free_port())
    await server.start()
    try:
        yield server
    finally:
        server.stop()


def frames_from(c: SignalClient, other: SignalClient, kind: str = "audio") -> int:
    assert other.participant_id is not None
    return sum(r.frames for r in c.tracks_from(other.participant_id, kind))


async def media_flows(a: SignalClient, b: SignalClient, more: int = 25, kind: str = "audio",
                      timeout: float = 30) -> None:
    """Both directions deliver ``more`` new frames of ``kind`` from now on."""
    start_a, start_b = frames_from(a, b, kind), frames_from(b, a, kind)
    await wait_until(lambda: frames_from(a, b, kind) >= start_a + more
                     and frames_from(b, a, kind) >= start_b + more,
                     timeout=timeout, message=f"{more} new {kind} frames both ways")


async def gather(*aws: Any) -> list[Any]:
    return list(await asyncio.gather(*aws))
