"""Signalling from any node: joins are redirected to the room's node; placement is atomic."""

from __future__ import annotations

import asyncio
import collections
import statistics

from loadtest.client import SignalClient
from loadtest.media import SineAudioTrack, SyntheticVideoTrack
from tests.cluster.conftest import frames_from, media_flows
from tests.conftest import token, wait_until


async def test_join_through_any_node_reaches_the_rooms_node_and_media_flows(cluster):
    a, b, c = cluster.start("a"), cluster.start("b"), cluster.start("c")
    await cluster.ready(a, b, c)
    # An admin call on b places the room there (an idle node keeps what it is asked for).
    status, body = await b.request("POST", "/v1/rooms", json={"room": "s1", "kind": "one_to_one"})
    assert status == 201, body
    assert await cluster.owner("s1") == "b"

    therapist = SignalClient(a.ws_url, token("s1", "t1", role="host"))  # enters through a
    client = SignalClient(c.ws_url, token("s1", "c1"))  # ... and through c
    try:
        assert (await therapist.connect())["type"] == "joined"
        assert (await client.connect())["type"] == "joined"
        assert therapist.redirects == [b.ws_url] and client.redirects == [b.ws_url]
        assert therapist.node_url == client.node_url == b.ws_url
        assert await a.metric('mediaserver_cluster_redirects_total{message="join"}') == 1
        print(f"\njoin with one redirect: therapist {therapist.join_seconds * 1000:.0f} ms, "
              f"client {client.join_seconds * 1000:.0f} ms")

        await therapist.publish(SyntheticVideoTrack((220, 40, 40)), SineAudioTrack(440))
        await client.publish(SyntheticVideoTrack((40, 40, 220)), SineAudioTrack(1000))
        await media_flows(therapist, client, kind="audio", timeout=60)
        await wait_until(lambda: frames_from(therapist, client, "video") >= 15
                         and frames_from(client, therapist, "video") >= 15,
                         timeout=60, message="video both ways")

        # A dropped socket resumed through the entry node only: redirected, nothing moved.
        await client.kill_socket()
        client.node_url = None  # as a client that only knows the load balancer's URL
        reply = await client.resume()
        assert reply["type"] == "resumed" and "restored" not in reply, reply
        assert client.redirects == [b.ws_url, b.ws_url] and client.node_url == b.ws_url
        await media_flows(therapist, client, kind="audio")

        # The admin API answers about the room from every node (forwarded to b).
        status, room = await a.get("/v1/rooms/s1")
        assert status == 200, room
        assert sorted(p["identity"] for p in room["participants"]) == ["c1", "t1"]
        status, listing = await c.get("/v1/rooms")
        assert [(r["room"], r["node_id"], r["participants"]) for r in listing["rooms"]] == [
            ("s1", "b", 2)]
        status, report = await c.get("/v1/rooms/s1/report")
        assert status == 200 and report["room"] == "s1"
        # Starting a recording from any node reaches the room's node, which answers (these
        # nodes have no recording configured; c alone would have said room_not_found).
        status, body = await c.request("POST", "/v1/rooms/s1/recording",
                                       json={"action": "start", "identity": "t1"})
        assert status == 409 and body["code"] == "recording_unavailable", body
        status, body = await c.request("DELETE", "/v1/rooms/s1/participants/c1")
        assert status == 200, body
        removed = await client.wait_event(lambda e: e.get("type") == "removed")
        assert removed["reason"] == "removed_by_admin"
        status, body = await a.request("DELETE", "/v1/rooms/s1")
        assert status == 200, body
        ended = await therapist.wait_event(lambda e: e.get("type") == "removed")
        assert ended["reason"] == "room_ended"
        # The lease goes with the room: nothing left behind for s1.
        await wait_until(lambda: _gone(cluster, "s1"), message="s1's keys released")
        status, body = await a.get("/v1/rooms/s1")
        assert status == 404 and body["code"] == "room_not_found"
    finally:
        await therapist.close()
        await client.close()


async def _gone(cluster, room: str) -> bool:
    keys = [f"{cluster.prefix}:room:{room}:owner", f"{cluster.prefix}:room:{room}:session"]
    return await cluster.redis.exists(*keys) == 0


async def test_twenty_concurrent_new_rooms_spread_and_none_is_hosted_twice(cluster):
    nodes = [cluster.start("a"), cluster.start("b"), cluster.start("c")]
    await cluster.ready(*nodes)
    rooms = [f"race-{i}" for i in range(20)]
    # Two people per room, entering at the same moment through two different nodes: both
    # nodes race to place the room.
    clients = [SignalClient(nodes[(i + k) % 3].ws_url, token(room, f"p{k}"))
               for i, room in enumerate(rooms) for k in (0, 1)]
    try:
        replies = await asyncio.gather(*(c.connect(auto_subscribe=False) for c in clients))
        assert all(r["type"] == "joined" for r in replies), [r for r in replies
                                                             if r["type"] != "joined"]
        owners = {room: await cluster.owner(room) for room in rooms}
        for i, room in enumerate(rooms):
            first, second = clients[2 * i], clients[2 * i + 1]
            assert first.node_url == second.node_url == cluster.nodes[owners[room]].ws_url
        # Each node's own view: every room on exactly one node, the one Redis names.
        hosted = {n.name: set(await n.local_rooms()) for n in nodes}
        for room in rooms:
            holders = [name for name, names in hosted.items() if room in names]
            assert holders == [owners[room]], (room, holders)
        spread = collections.Counter(owners.values())
        print(f"\nplacement of 20 new rooms: {dict(sorted(spread.items()))}")
        assert set(spread) == {"a", "b", "c"} and min(spread.values()) >= 4, spread
        # The cluster-wide list from any node: each room once, with both participants.
        status, listing = await nodes[1].get("/v1/rooms")
        assert status == 200
        assert sorted((r["room"], r["participants"]) for r in listing["rooms"]) == sorted(
            (room, 2) for room in rooms)
        assert all(r["node_id"] == owners[r["room"]] for r in listing["rooms"])
        redirected = [c.join_seconds for c in clients if c.redirects]
        direct = [c.join_seconds for c in clients if not c.redirects]
        print(f"join latency: direct median {statistics.median(direct) * 1000:.0f} ms "
              f"({len(direct)}), with a redirect median "
              f"{statistics.median(redirected) * 1000:.0f} ms ({len(redirected)})")
    finally:
        await asyncio.gather(*(c.close() for c in clients))
