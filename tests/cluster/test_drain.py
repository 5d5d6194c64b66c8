"""Drain: readiness false at once, no new rooms, exit when empty or hand off at the timeout."""

from __future__ import annotations

import asyncio
import signal
import time

from loadtest.client import SignalClient
from loadtest.media import SineAudioTrack
from tests.cluster.conftest import media_flows
from tests.conftest import token, wait_until


async def _ready_status(node) -> int:
    status, _ = await node.get("/readyz")
    return status


async def test_drain_by_signal_exits_once_the_last_session_is_over(cluster):
    a, b = cluster.start("a"), cluster.start("b")
    await cluster.ready(a, b)
    host = SignalClient(a.ws_url, token("last", "t1", role="host"))
    try:
        assert (await host.connect())["type"] == "joined"
        assert await cluster.owner("last") == "a"
        assert await _ready_status(a) == 200
        a.proc.send_signal(signal.SIGUSR1)
        await wait_until(lambda: _is(_ready_status(a), 503), timeout=5,
                         message="a not ready once draining")
        # Still serving its session: the host may come back on a new socket.
        await host.kill_socket()
        assert (await host.resume())["type"] == "resumed"
        assert a.proc.poll() is None  # still running while someone is in
        await host.request({"type": "leave"})
        await wait_until(lambda: a.proc.poll() is not None, timeout=15,
                         message="a exits once empty")
        assert a.proc.returncode == 0
        keys = [f"{cluster.prefix}:node:a", f"{cluster.prefix}:room:last:owner"]
        assert await cluster.redis.exists(*keys) == 0
    finally:
        await host.close()


async def _is(coro, value) -> bool:
    return await coro == value


async def test_drain_by_admin_call_moves_new_rooms_away_and_hands_off_at_the_timeout(cluster):
    a, b = cluster.start("a", "--drain-timeout", "5"), cluster.start("b")
    await cluster.ready(a, b)
    status, body = await a.request("POST", "/v1/rooms", json={"room": "long", "kind": "couples"})
    assert status == 201, body
    # Their load balancer is b: they are redirected to a, where the room is.
    t1 = SignalClient(b.ws_url, token("long", "t1", role="host", kind="couples"))
    c1 = SignalClient(b.ws_url, token("long", "c1", kind="couples"))
    newcomer = SignalClient(a.ws_url, token("fresh", "n1"))
    try:
        for client in (t1, c1):
            assert (await client.connect())["type"] == "joined"
            assert client.node_url == a.ws_url
        await t1.publish(SineAudioTrack(440))
        await c1.publish(SineAudioTrack(1000))
        await media_flows(t1, c1)

        status, body = await a.request("POST", "/v1/node/drain")
        assert status == 202, body
        drained_at = time.monotonic()
        assert await _ready_status(a) == 503  # at once
        status, body = await b.get("/v1/node")
        assert {n["node_id"]: n["draining"] for n in body["nodes"]} == {"a": True, "b": False}
        # A new room asked for at a goes elsewhere; the running session carries on.
        assert (await newcomer.connect())["type"] == "joined"
        assert newcomer.redirects == [b.ws_url] and await cluster.owner("fresh") == "b"
        await media_flows(t1, c1)

        # The timeout: a hands its session off (state kept, lease released) and exits.
        await wait_until(lambda: a.proc.poll() is not None, timeout=20,
                         message="a exits after its drain timeout")
        exited_at = time.monotonic()
        assert a.proc.returncode == 0 and exited_at - drained_at >= 4.5
        await wait_until(lambda: t1.ws.closed and c1.ws.closed, timeout=10,
                         message="sockets closed by a")
        replies = await asyncio.gather(t1.resume(retry_for=10), c1.resume(retry_for=10))
        handed_off_at = time.monotonic()
        assert all(r["type"] == "resumed" and r["restored"] for r in replies), replies
        assert t1.node_url == c1.node_url == b.ws_url
        assert await cluster.owner("long") == "b"
        # No lease to wait for: the room was released, not abandoned.
        assert handed_off_at - exited_at < 2.0, handed_off_at - exited_at
        await t1.publish(SineAudioTrack(440))
        await c1.publish(SineAudioTrack(1000))
        await media_flows(t1, c1, more=10)
        print(f"\ndrain: exit {exited_at - drained_at:.1f} s after the call, clients resumed "
              f"on b {handed_off_at - exited_at:.2f} s after the exit")
    finally:
        await asyncio.gather(t1.close(), c1.close(), newcomer.close())
