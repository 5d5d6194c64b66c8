"""A cluster of nodes coordinated through Redis (redis.asyncio); keys in docs/cluster.md.

- Registry: every ``lease_ttl / 3`` seconds the node writes its NodeInfo with a
  ``lease_ttl`` expiry, so a dead node disappears by itself.
- Placement: ``place`` runs one Lua script (scripts.PLACE) that reads the owner and, only if
  there is none, picks the least-loaded candidate and writes the lease: two nodes racing for
  one new room get the same answer.
- Leases: the heartbeat extends the lease of every room open here (scripts.RENEW); when the
  node dies they lapse with its registry entry, and the next ``place`` puts the room on a
  live node, which rebuilds it from the saved session state.
- Outages: Redis errors mark the router unavailable; new rooms are refused
  (``cluster_unavailable``) while running ones carry on untouched. The heartbeat retries with
  backoff and, once Redis answers, registers again and re-asserts its leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import socket
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from mediaserver import metrics
from mediaserver.config import Config
from mediaserver.rooms import Room, RoomManager
from mediaserver.routing import scripts, session
from mediaserver.routing.interface import NodeInfo, Placement, RoutingError
from mediaserver.routing.keys import Keys

log = logging.getLogger(__name__)

MAX_BACKOFF = 5.0
MOVED = "room_moved"  # the reason given to participants of a copy that lost its lease
BUSY_CPU = 0.9  # a node above this share of a core gets new rooms only if all are busy
_UNAVAILABLE = ("cluster_unavailable",
                "the cluster's coordination store (Redis) is unreachable: new sessions "
                "cannot be placed now; retry shortly")


def default_node_id() -> str:
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())
    return f"{host[:40] or 'node'}-{secrets.token_hex(3)}"


def _no_maint() -> dict[str, Any]:
    """redis-py >= 7 probes every new connection for Redis Enterprise's maintenance
    notifications; that extra round trip is of no use here and delays reconnecting."""
    try:
        from redis.maint_notifications import MaintNotificationsConfig
    except ImportError:
        return {}
    return {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}


def _json_or_none(raw: Any, what: str) -> Any:
    """Parsed JSON, or None (logged) for a value another version or a person wrote badly."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        log.warning("cluster: ignoring unreadable %s in Redis", what)
        return None


def _node_or_none(raw: Any) -> NodeInfo | None:
    data = _json_or_none(raw, "node entry")
    try:
        return NodeInfo.from_json(data) if isinstance(data, dict) else None
    except (KeyError, TypeError, ValueError):
        log.warning("cluster: ignoring unreadable node entry in Redis")
        return None


class LoadSampler:
    """CPU share and forwarded bitrate between two heartbeats."""

    def __init__(self) -> None:
        self._at = time.monotonic()
        self._cpu = time.process_time()
        self._bytes = self._sent_bytes()
        self.cpu = 0.0
        self.bitrate = 0

    @staticmethod
    def _sent_bytes() -> float:
        total = 0.0
        for kind in ("audio", "video"):
            value = metrics.REGISTRY.get_sample_value(
                "mediaserver_rtp_bytes_total", {"direction": "out", "kind": kind})
            total += value or 0.0
        return total

    def sample(self) -> None:
        now, cpu, sent = time.monotonic(), time.process_time(), self._sent_bytes()
        elapsed = now - self._at
        if elapsed >= 0.2:
            self.cpu = max(0.0, (cpu - self._cpu) / elapsed)
            self.bitrate = int(max(0.0, sent - self._bytes) * 8 / elapsed)
            self._at, self._cpu, self._bytes = now, cpu, sent


class RedisRouter:
    clustered = True

    def __init__(self, config: Config, rooms: RoomManager,
                 client: aioredis.Redis | None = None) -> None:
        c = config.cluster
        assert config.redis_url is not None and c.node_url is not None
        self.rooms = rooms
        self.node_id = c.node_id or default_node_id()
        self.url: str = c.node_url
        self.capacity = c.capacity
        self.keys = Keys(c.prefix)
        self.lease_ms = c.lease_ttl * 1000
        self.interval = c.lease_ttl / 3
        # Long enough for a room's clients to come back after its node died or handed off.
        self.session_ms = (2 * c.lease_ttl + config.rooms.resume_grace + 30) * 1000
        self.resume_grace = config.rooms.resume_grace
        self.redis = client or aioredis.Redis.from_url(
            config.redis_url, decode_responses=True, socket_timeout=1.0,
            socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 1), **_no_maint())
        self._place = self.redis.register_script(scripts.PLACE)
        self._renew = self.redis.register_script(scripts.RENEW)
        self._release = self.redis.register_script(scripts.RELEASE)
        self._available = False
        self._draining = False
        self._started_at = time.time()
        self._load = LoadSampler()
        # Participants of rooms moved here who have not resumed yet: room -> id -> record.
        self._absent: dict[str, dict[str, tuple[float, dict[str, Any]]]] = {}
        self._wake = asyncio.Event()
        self._stopped = False
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    # -- state --------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self._available

    @property
    def draining(self) -> bool:
        return self._draining

    def info(self) -> NodeInfo:
        live = [r for r in self.rooms.rooms.values() if not r.closed]
        return NodeInfo(node_id=self.node_id, url=self.url, capacity=self.capacity,
                        draining=self._draining, cpu=self._load.cpu, rooms=len(live),
                        participants=sum(len(r.participants) for r in live),
                        bitrate=self._load.bitrate, started_at=self._started_at)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            metrics.CLUSTER_REDIS_UP.set(0)
            await self._beat()  # registered before the first client arrives, if Redis is up
            self._available = True
            metrics.CLUSTER_REDIS_UP.set(1)
            log.info("cluster: node %s registered at %s", self.node_id, self.url)
        self._task = asyncio.create_task(self._heartbeat())

    async def stop(self) -> None:
        """Leave the registry. Rooms closed for shutdown have released their leases already
        (room_closed) and kept their session state, so their clients can resume elsewhere."""
        if self._stopped:
            return
        self._stopped = True
        self._wake.set()
        if self._task is not None:
            # Asked to finish rather than cancelled first: redis-py's own timeouts can turn a
            # cancellation that lands inside a command into a TimeoutError, which the loop
            # would take for an outage and carry on.
            done, _ = await asyncio.wait([self._task], timeout=2.0)
            if not done:
                self._task.cancel()
                done, _ = await asyncio.wait([self._task], timeout=2.0)
                if not done:
                    log.warning("cluster: heartbeat did not stop; leaving it behind")
        if self._pending:
            await asyncio.wait(self._pending, timeout=2.0)
        with contextlib.suppress(RedisError, OSError):
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(self.keys.node(self.node_id))
            pipe.zrem(self.keys.nodes, self.node_id)
            await pipe.execute()
        await self.redis.aclose()

    def drain(self) -> None:
        self._draining = True
        self._wake.set()  # publish it now, not at the next heartbeat

    async def _heartbeat(self) -> None:
        backoff = 0.25
        while not self._stopped:
            try:
                await self._beat()
                if not self._available:
                    log.info("cluster: node %s registered at %s", self.node_id, self.url)
                self._available, backoff, delay = True, 0.25, self.interval
                metrics.CLUSTER_REDIS_UP.set(1)
            except (RedisError, OSError) as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from exc  # not an outage: we are cancelled
                if self._available:
                    log.warning("cluster: Redis unreachable (%s); running sessions continue, "
                                "new rooms are refused until it is back", exc)
                self._available = False
                metrics.CLUSTER_REDIS_UP.set(0)
                delay, backoff = backoff, min(backoff * 2, MAX_BACKOFF)
            except Exception:
                log.exception("cluster: heartbeat failed")
                delay = self.interval
            if self._stopped:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _beat(self) -> None:
        """Register, extend (or re-assert) the leases of local rooms, save their state."""
        self._load.sample()
        k, now = self.keys, time.time()
        local = [r for r in self.rooms.rooms.values() if not r.closed]
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(k.node(self.node_id), json.dumps(self.info().to_json()), px=self.lease_ms)
        pipe.zadd(k.nodes, {self.node_id: int(now * 1000) + self.lease_ms})
        pipe.zremrangebyscore(k.nodes, 0, int(now * 1000) - 60_000)  # long dead, any node
        pipe.pexpire(k.nodes, 10 * self.lease_ms)
        for room in local:
            saved = json.dumps(self._snapshot(room, now))
            await self._renew(keys=[k.owner(room.name), k.session(room.name)],
                              args=[self.node_id, self.lease_ms, saved,
                                    self._keep_ms(room, now)],
                              client=pipe)
        if local:
            pipe.sadd(k.node_rooms(self.node_id), *[r.name for r in local])
        pipe.pexpire(k.node_rooms(self.node_id), self.lease_ms)
        results = await pipe.execute()
        for room, status in zip(local, results[4:4 + len(local)], strict=True):
            self._lease_status(room.name, int(status))
        await self._forget_strays({r.name for r in local})

    def _lease_status(self, name: str, status: int) -> None:
        if status == 0:
            metrics.CLUSTER_LEASE_CONFLICTS.inc()
            # Our lease lapsed (a heartbeat stalled past lease_ttl) and another node took the
            # room. Two copies must not live on: the lease holder keeps it, ours ends and its
            # people resume there (``removed`` with reason ``room_moved``).
            log.error("cluster: room %s is open here but another node holds its lease now; "
                      "ending it here so that its participants resume there", name)
            task = asyncio.get_running_loop().create_task(self._give_up(name))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        elif status == 2:
            log.info("cluster: re-asserted the lease of room %s", name)

    async def _give_up(self, name: str) -> None:
        if name in self.rooms.rooms:
            await self.rooms.end(name, MOVED)

    async def _forget_strays(self, local: set[str]) -> None:
        """Drop rooms from our set that were placed here but never opened (lease lapsed)."""
        members = await self.redis.smembers(self.keys.node_rooms(self.node_id))
        strays = sorted({str(m) for m in members} - local)
        if not strays:
            return
        owners = await self.redis.mget([self.keys.owner(r) for r in strays])
        gone = [r for r, o in zip(strays, owners, strict=True) if o != self.node_id]
        if gone:
            await self.redis.srem(self.keys.node_rooms(self.node_id), *gone)

    def _keep_ms(self, room: Room | dict[str, Any], now: float) -> int:
        """How long a room's saved state lives. A room created ahead through the admin API
        keeps its options until its time limit, even if its node goes away before anyone
        joined; other rooms only need their clients to have time to come back."""
        if isinstance(room, Room):
            persistent, ends = room.persistent, room.created_at + room.max_duration
        else:
            persistent = bool(room.get("persistent"))
            ends = float(room.get("created_at", now)) + float(room.get("max_duration", 0))
        if not persistent:
            return self.session_ms
        return max(self.session_ms, int((ends - now) * 1000))

    def _snapshot(self, room: Room, now: float) -> dict[str, Any]:
        absent = self._absent.get(room.name, {})
        for pid in [pid for pid, (until, _) in absent.items()
                    if until < now or pid in room.participants]:
            del absent[pid]
        return session.snapshot(room, self.node_id, {pid: rec for pid, (_, rec) in
                                                     absent.items()})

    # -- placement ----------------------------------------------------------------------

    async def nodes(self) -> list[NodeInfo]:
        try:
            ids = await self.redis.zrangebyscore(self.keys.nodes, int(time.time() * 1000), "+inf")
            raw = await self.redis.mget([self.keys.node(str(i)) for i in ids]) if ids else []
        except (RedisError, OSError):
            raise RoutingError(*_UNAVAILABLE) from None
        found = [node for node in map(_node_or_none, raw) if node is not None]
        if not any(n.node_id == self.node_id for n in found):
            found.append(self.info())  # registered moments from now
        return found

    async def place(self, room: str) -> Placement:
        if room in self.rooms.rooms:
            return Placement()  # open here: its lease is ours as far as we know
        if not self._available:
            raise RoutingError(*_UNAVAILABLE)
        nodes = {n.node_id: n for n in await self.nodes()}
        candidates = [n for n in nodes.values() if not n.draining]
        if self._draining:
            candidates = [n for n in candidates if n.node_id != self.node_id]
        idle = [n for n in candidates if n.cpu < BUSY_CPU]
        candidates = idle or candidates
        random.shuffle(candidates)
        # On a tie this node wins: the client is already connected here.
        candidates.sort(key=lambda n: n.node_id != self.node_id)
        args: list[Any] = [self.lease_ms, self.keys.prefix, room]
        for n in candidates:
            args += [n.node_id, n.capacity]
        try:
            owner, _placed = await self._place(keys=[self.keys.owner(room)], args=args)
        except (RedisError, OSError):
            raise RoutingError(*_UNAVAILABLE) from None
        if not owner:
            code = "node_draining" if self._draining and len(nodes) == 1 else "cluster_full"
            raise RoutingError(code, "no node can take a new session now; retry later")
        if owner == self.node_id:
            return Placement()
        node = nodes.get(owner)
        if node is None:
            # The lease outlives a node that died: wait for it to lapse.
            raise RoutingError("room_unavailable", "the session's server stopped answering; "
                               "it moves to another server within seconds: retry",
                               retry_after=self.interval)
        return Placement(node)

    async def owner(self, room: str) -> NodeInfo | None:
        if room in self.rooms.rooms:
            return None
        try:
            owner = await self.redis.get(self.keys.owner(room))
            if not owner or owner == self.node_id:
                return None
            raw = await self.redis.get(self.keys.node(str(owner)))
        except (RedisError, OSError):
            raise RoutingError(*_UNAVAILABLE) from None
        return _node_or_none(raw)

    # -- session state ------------------------------------------------------------------

    async def saved_room(self, room: str) -> dict[str, Any] | None:
        if room in self.rooms.rooms:
            absent = self._absent.get(room, {})
            return {"participants": {pid: rec for pid, (_, rec) in absent.items()}}
        try:
            raw = await self.redis.get(self.keys.session(room))
        except (RedisError, OSError):
            raise RoutingError(*_UNAVAILABLE) from None
        return _json_or_none(raw, f"saved state of room {room}")

    def adopted(self, room: Room, saved: dict[str, Any]) -> None:
        until = time.time() + self.resume_grace + self.lease_ms / 1000
        people = saved.get("participants") or {}
        self._absent[room.name] = {pid: (until, rec) for pid, rec in people.items()}
        metrics.CLUSTER_ROOMS_MOVED_IN.inc()
        log.info("cluster: room %s moved here from node %s (%d participants to resume)",
                 room.name, saved.get("node"), len(people))
        self._wake.set()

    def room_changed(self, room: Room) -> None:
        self._wake.set()

    def room_closed(self, room: Room, reason: str) -> None:
        """Release the lease. State stays for a shutdown (clients resume on another node)."""
        keep = reason == "server_shutdown"
        saved = self._snapshot(room, time.time()) if keep else None
        self._absent.pop(room.name, None)
        task = asyncio.get_running_loop().create_task(self._released(room.name, saved))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _released(self, name: str, saved: dict[str, Any] | None) -> None:
        k = self.keys
        mode = (["keep", json.dumps(saved), self._keep_ms(saved, time.time())]
                if saved is not None else ["drop"])
        try:
            await self._release(keys=[k.owner(name), k.session(name), k.node_rooms(self.node_id)],
                                args=[self.node_id, name, *mode])
        except (RedisError, OSError) as exc:
            log.warning("cluster: could not release room %s (%s); its lease lapses by itself",
                        name, exc)
