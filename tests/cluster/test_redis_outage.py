"""Redis goes away during a call: media carries on, new rooms are refused, then recovery."""

from __future__ import annotations

import asyncio

from loadtest.client import SignalClient
from loadtest.media import SineAudioTrack
from tests.cluster.conftest import make_cluster, media_flows
from tests.cluster.test_failover import _stall_monitor
from tests.conftest import token, wait_until


async def _available(node, value: bool) -> bool:
    status, body = await node.get("/v1/node")
    return status == 200 and body["available"] is value


async def test_redis_outage_keeps_calls_refuses_new_rooms_and_recovers(tmp_path, own_redis):
    async with make_cluster(tmp_path, own_redis.url) as cluster:
        a, b = cluster.start("a"), cluster.start("b")
        await cluster.ready(a, b)
        t = SignalClient(a.ws_url, token("call", "t", role="host"))
        c = SignalClient(a.ws_url, token("call", "c"))
        late = SignalClient(b.ws_url, token("new-room", "n"))
        stop = asyncio.Event()
        gaps: list[float] = []
        monitor = None
        try:
            assert (await t.connect())["type"] == "joined"
            assert (await c.connect())["type"] == "joined"
            assert await cluster.owner("call") == "a"
            await t.publish(SineAudioTrack(440))
            await c.publish(SineAudioTrack(1000))
            await media_flows(t, c)
            monitor = asyncio.create_task(_stall_monitor(t, c, gaps, stop))

            own_redis.stop()
            for node in (a, b):
                await wait_until(lambda n=node: _available(n, False), timeout=10,
                                 message=f"{node.name} notices the outage")
            assert await a.metric("mediaserver_cluster_redis_up") == 0
            await media_flows(t, c)  # the call goes on
            reply = await late.connect()  # a new room cannot be placed safely
            assert (reply["type"], reply["code"]) == ("error", "cluster_unavailable"), reply
            assert "Redis" in reply["message"]
            await late.close()
            status, listing = await a.get("/v1/rooms")  # what a knows by itself
            assert status == 200 and listing["cluster_unavailable"] is True
            assert [r["room"] for r in listing["rooms"]] == ["call"]
            # Someone already in the room still gets back in after a dropped socket.
            await c.kill_socket()
            resumed = await c.resume()
            assert resumed["type"] == "resumed" and "restored" not in resumed

            await own_redis.start()  # empty, as after a restart without persistence
            await cluster.redis.connection_pool.disconnect()  # the test's own stale sockets
            for node in (a, b):
                await wait_until(lambda n=node: _available(n, True), timeout=20,
                                 message=f"{node.name} back on Redis")
            assert await a.metric("mediaserver_cluster_redis_up") == 1
            # a registered again and re-asserted its room's lease and session state.
            await wait_until(lambda: cluster.owner("call"), message="call's lease re-asserted")
            assert await cluster.owner("call") == "a"
            assert await cluster.redis.exists(f"{cluster.prefix}:room:call:session")
            assert await cluster.redis.exists(f"{cluster.prefix}:node:a",
                                              f"{cluster.prefix}:node:b") == 2
            late = SignalClient(b.ws_url, token("new-room", "n"))
            assert (await late.connect())["type"] == "joined"
            await media_flows(t, c)
            stop.set()
            await monitor
            assert max(gaps) < 1.0, f"the call stalled {max(gaps):.2f} s"
        finally:
            stop.set()
            if monitor is not None:
                await asyncio.gather(monitor, return_exceptions=True)
            await asyncio.gather(t.close(), c.close(), late.close())
