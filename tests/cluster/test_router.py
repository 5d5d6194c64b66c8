"""RedisRouter in-process against the real Redis: placement races, leases, saved sessions."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from mediaserver.rooms import RoomError, RoomManager
from mediaserver.routing import NodeInfo, RoutingError
from mediaserver.routing.redis_router import RedisRouter
from mediaserver.routing.session import readmit, rebuild_room, snapshot
from mediaserver.sfu.aiortc_adapter import CandidatePolicy
from mediaserver.tokens import Claims, Grants, Role
from tests.cluster.conftest import SHARED_REDIS
from tests.conftest import test_config as make_config
from tests.conftest import wait_until

POLICY = CandidatePolicy(addresses=("127.0.0.1",))


@contextlib.asynccontextmanager
async def routers(*names: str) -> AsyncIterator[tuple[aioredis.Redis, str, list[RedisRouter]]]:
    redis = aioredis.Redis.from_url(SHARED_REDIS, decode_responses=True)
    try:
        await redis.ping()
    except Exception:
        pytest.skip(f"no Redis at {SHARED_REDIS}")
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    started = []
    try:
        for i, name in enumerate(names):
            config = make_config(redis_url=SHARED_REDIS, cluster_prefix=prefix, node_id=name,
                                 node_url=f"http://127.0.0.1:{9000 + i}", lease_ttl="3")
            router = RedisRouter(config, RoomManager(POLICY, limits=config.rooms))
            router.rooms.on_closed = router.room_closed  # as signaling.cluster.setup does
            await router.start()
            started.append(router)
        yield redis, prefix, started
    finally:
        for router in started:
            await router.stop()
        async for key in redis.scan_iter(match=f"{prefix}:*"):
            await redis.delete(key)
        await redis.aclose()


async def test_nodes_racing_for_the_same_new_rooms_all_get_one_answer():
    async with routers("a", "b", "c") as (redis, prefix, nodes):
        rooms = [f"r{i}" for i in range(30)]
        answers = await asyncio.gather(*(n.place(room) for room in rooms for n in nodes))
        owners: dict[str, set[str]] = collections.defaultdict(set)
        for (room, node), placement in zip(((r, n) for r in rooms for n in nodes), answers,
                                           strict=True):
            owners[room].add(node.node_id if placement.local else placement.node.node_id)
        assert all(len(names) == 1 for names in owners.values()), owners
        for room, (name,) in owners.items():
            assert await redis.get(f"{prefix}:room:{room}:owner") == name
        spread = collections.Counter(name for (name,) in owners.values())
        assert min(spread.values()) >= 8, spread  # by rooms placed, not by stale heartbeats


async def test_a_node_never_releases_another_nodes_lease():
    async with routers("a", "b") as (redis, prefix, (a, b)):
        room = rebuild_room(b.rooms, {"room": "mine", "kind": "group", "max_participants": 4})
        assert (await b.place("mine")).local
        b.room_changed(room)
        await wait_until(lambda: redis.get(f"{prefix}:room:mine:owner"), message="lease")
        # a believes it closes "mine" (a stale view): b's lease and state stay.
        a.room_closed(room, "room_ended")
        await asyncio.gather(*a._pending)
        assert await redis.get(f"{prefix}:room:mine:owner") == "b"
        await wait_until(lambda: redis.exists(f"{prefix}:room:mine:session"), message="state")
        await b.rooms.end("mine")
        await wait_until(lambda: _zero(redis.exists(f"{prefix}:room:mine:owner",
                                                    f"{prefix}:room:mine:session")),
                         message="b released its own room")


async def _zero(coro) -> bool:
    return await coro == 0


async def test_a_dead_nodes_room_is_unavailable_until_its_lease_lapses_then_moves():
    async with routers("a", "b") as (redis, prefix, (a, b)):
        assert (await b.place("moving")).local
        # b goes away: no more heartbeats, no registry entry, but its lease lingers a moment.
        await b.stop()
        assert not await redis.exists(f"{prefix}:node:b")
        with pytest.raises(RoutingError) as info:
            await a.place("moving")
        assert info.value.code == "room_unavailable"
        await redis.delete(f"{prefix}:room:moving:owner")  # as the lease lapsing does
        assert (await a.place("moving")).local


def _claims(identity: str, role: Role = Role.PARTICIPANT) -> Claims:
    return Claims(api_key="k", identity=identity, name=identity, room="r", role=role,
                  kind=None, grants=Grants(), expires_at=2**31, not_before=0,
                  token_id="j-" + identity)


async def test_saved_session_rebuilds_the_room_and_checks_identity_and_secret():
    async def send(msg):
        return None

    source = RoomManager(POLICY)
    room = source.create("r", "couples", None, {"waiting_room": True})
    host = await room.join(_claims("t1", Role.HOST), send)
    guest = await room.join(_claims("c1"), send)
    room.locked = True
    saved = snapshot(room, "old")
    assert guest.resume_secret not in str(saved)  # only a hash leaves the node
    target = RoomManager(POLICY)
    moved = rebuild_room(target, saved)
    assert (moved.kind, moved.locked, moved.waiting_room) == ("couples", True, True)
    with pytest.raises(RoomError, match="nothing to resume"):
        readmit(moved, saved, _claims("c1"), guest.id, "wrong secret", send)
    with pytest.raises(RoomError, match="nothing to resume"):
        readmit(moved, saved, _claims("someone-else"), guest.id, guest.resume_secret, send)
    back = readmit(moved, saved, _claims("c1"), guest.id, guest.resume_secret, send)
    assert (back.id, back.state) == (guest.id, "waiting")  # admission as it was
    back_host = readmit(moved, saved, _claims("t1", Role.HOST), host.id, host.resume_secret,
                        send)
    assert back_host.state == "active"
    await source.close_all()
    await target.close_all()


async def test_a_copy_that_lost_its_lease_ends_and_leaves_the_holders_state_alone():
    async with routers("a") as (redis, prefix, (a,)):
        told: list[dict] = []

        async def send(msg):
            told.append(msg)

        assert (await a.place("split")).local
        room = a.rooms.create("split", "group")
        await room.join(_claims("t1", Role.HOST), send)
        a.room_changed(room)
        session_key = f"{prefix}:room:split:session"
        await wait_until(lambda: redis.exists(session_key), message="state saved")
        # a's heartbeat stalled past the lease and node c took the room meanwhile.
        await redis.set(f"{prefix}:room:split:owner", "c", px=60_000)
        await redis.set(session_key, '{"node": "c"}', px=60_000)
        a.room_changed(room)  # the next heartbeat finds out
        await wait_until(lambda: "split" not in a.rooms.rooms, message="a's copy ended")
        assert {"type": "removed", "reason": "room_moved"} in told
        await asyncio.gather(*a._pending)
        assert await redis.get(f"{prefix}:room:split:owner") == "c"
        assert await redis.get(session_key) == '{"node": "c"}'


def test_node_urls_become_signalling_urls():
    assert NodeInfo("n", "http://10.0.0.5:7880").signal_url == "ws://10.0.0.5:7880/v1/signal"
    assert NodeInfo("n", "https://sfu.example.org").signal_url == (
        "wss://sfu.example.org/v1/signal")
    info = NodeInfo("n", "http://h:1", capacity=5, draining=True, cpu=0.25, rooms=2)
    assert NodeInfo.from_json(info.to_json()) == info


async def test_unreadable_registry_entries_are_skipped():
    async with routers("a") as (redis, prefix, (a,)):
        await redis.set(f"{prefix}:node:junk", "{not json", px=60_000)
        await redis.zadd(f"{prefix}:nodes", {"junk": 2**42})
        await redis.set(f"{prefix}:room:bad:session", "[", px=60_000)
        assert [n.node_id for n in await a.nodes()] == ["a"]
        assert await a.saved_room("bad") is None


async def test_a_room_created_ahead_keeps_its_saved_state_until_its_time_limit():
    async with routers("a") as (redis, prefix, (a,)):
        assert (await a.place("booked")).local
        room = a.rooms.create("booked", "one_to_one", None, {"waiting_room": True})
        room.mark_persistent()
        a.room_changed(room)
        key = f"{prefix}:room:booked:session"
        await wait_until(lambda: redis.exists(key), message="state saved")
        assert await redis.pttl(key) > 3600_000  # 4 h limit, not a resume grace
        await a.rooms.end("booked", "server_shutdown")  # a handoff: the state stays
        await asyncio.gather(*a._pending)
        assert await redis.pttl(key) > 3600_000
        assert not await redis.exists(f"{prefix}:room:booked:owner")
