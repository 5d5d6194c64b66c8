"""A node dies (kill -9): its rooms move once their leases lapse; other rooms never notice."""

from __future__ import annotations

import asyncio
import json
import time

from loadtest.client import SignalClient
from loadtest.media import SineAudioTrack
from tests.cluster.conftest import LEASE_TTL, frames_from, media_flows
from tests.conftest import token, wait_until


async def _stall_monitor(a: SignalClient, b: SignalClient, gaps: list[float],
                         stop: asyncio.Event) -> None:
    """Longest time without a new audio frame from b at a, sampled every 0.1 s."""
    last_count, last_change = frames_from(a, b), time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(0.1)
        count, now = frames_from(a, b), time.monotonic()
        if count != last_count:
            last_count, last_change = count, now
        gaps.append(now - last_change)


async def test_killed_node_rooms_move_and_resume_while_other_rooms_carry_on(cluster):
    a, b, c = cluster.start("a"), cluster.start("b"), cluster.start("c")
    await cluster.ready(a, b, c)
    for node, room in ((b, "doomed"), (c, "steady")):
        status, body = await node.request("POST", "/v1/rooms",
                                          json={"room": room, "kind": "one_to_one",
                                                "options": {"waiting_room": True}})
        assert status == 201, body
    # a is the "load balancer" for the doomed room's people; the steady room's use c.
    t1 = SignalClient(a.ws_url, token("doomed", "t1", role="host"))
    c1 = SignalClient(a.ws_url, token("doomed", "c1"))
    t2 = SignalClient(c.ws_url, token("steady", "t2", role="host"))
    c2 = SignalClient(c.ws_url, token("steady", "c2"))
    stop = asyncio.Event()
    gaps: list[float] = []
    monitor = None
    try:
        for host, guest in ((t1, c1), (t2, c2)):
            assert (await host.connect())["type"] == "joined"
            reply = await guest.connect()
            assert reply["type"] == "joined" and reply["state"] == "waiting"
            await host.request({"type": "admit", "participant_id": guest.participant_id})
            await host.publish(SineAudioTrack(440))
            await guest.publish(SineAudioTrack(1000))
        assert t1.node_url == b.ws_url and t2.node_url == c.ws_url
        await media_flows(t1, c1)
        await media_flows(t2, c2)
        assert (await t1.request({"type": "lock_room", "locked": True}))["type"] == "ack"
        session_key = f"{cluster.prefix}:room:doomed:session"

        async def saved_both() -> bool:
            raw = await cluster.redis.get(session_key)
            people = json.loads(raw)["participants"] if raw else {}
            return raw is not None and json.loads(raw)["locked"] and {
                t1.participant_id, c1.participant_id} <= set(people) and not any(
                p["waiting"] for p in people.values())

        await wait_until(saved_both, message="the doomed room's session state saved")
        monitor = asyncio.create_task(_stall_monitor(t2, c2, gaps, stop))

        killed_at = time.monotonic()
        b.kill()
        await wait_until(lambda: t1.ws.closed and c1.ws.closed, timeout=10,
                         message="the doomed room's sockets dropped")
        replies = await asyncio.gather(t1.resume(retry_for=30), c1.resume(retry_for=30))
        for reply in replies:
            assert reply["type"] == "resumed" and reply["restored"] is True, reply
            assert reply["state"] == "active"  # admission kept: no second waiting room
        resumed_at = time.monotonic()
        new_owner = await cluster.owner("doomed")
        assert new_owner in ("a", "c") and t1.node_url == c1.node_url == (
            cluster.nodes[new_owner].ws_url)
        assert replies[0]["permissions"] == t1.joined["permissions"]
        assert replies[0]["room"]["locked"] is True
        await t1.publish(SineAudioTrack(440))
        await c1.publish(SineAudioTrack(1000))
        await media_flows(t1, c1, more=10, timeout=30)
        flowing_at = time.monotonic()
        print(f"\nfailover (lease {LEASE_TTL} s): kill -> resumed {resumed_at - killed_at:.2f} s,"
              f" kill -> media flowing again {flowing_at - killed_at:.2f} s")

        owner_node = cluster.nodes[new_owner]
        assert await owner_node.metric("mediaserver_cluster_rooms_moved_in_total") == 1
        # Same people, same ids: they see each other again.
        await wait_until(lambda: any(e.get("type") == "participant_joined" for e in t1.events
                                     if e.get("participant", {}).get("participant_id")
                                     == c1.participant_id) or any(
            p["participant_id"] == c1.participant_id for p in replies[0]["participants"]),
            message="t1 sees c1 again")
        # The room's settings moved with it: still locked for newcomers.
        late = SignalClient(c.ws_url, token("doomed", "late"))
        try:
            assert (await late.connect())["code"] == "room_locked"
        finally:
            await late.close()
        # The steady room on c never noticed.
        await media_flows(t2, c2)
        stop.set()
        await monitor
        assert max(gaps) < 1.0, f"steady room stalled {max(gaps):.2f} s"
        assert not t2.ws.closed and not c2.ws.closed
        assert not any(e.get("type") in ("removed", "participant_left")
                       for e in t2.events + c2.events)
        assert await cluster.owner("steady") == "c"
        assert sorted(await c.local_rooms()) == sorted(
            ["steady"] + (["doomed"] if new_owner == "c" else []))
        assert not await cluster.redis.exists(f"{cluster.prefix}:node:b")
    finally:
        stop.set()
        if monitor is not None:
            await asyncio.gather(monitor, return_exceptions=True)
        await asyncio.gather(*(x.close() for x in (t1, c1, t2, c2)))
