"""Rooms and participants: who may be in a session, and which media flows to whom.

This layer holds the policy (room kinds and their sizes, grants) and wires the SFU
objects together: a participant's PublisherTransport yields Producers, and every other
participant allowed to subscribe gets a Consumer of each through its SubscriberTransport.
It never imports aiohttp: signalling reaches it through ``RoomManager`` and hands each
participant a ``send`` callable for its events.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from mediaserver import metrics
from mediaserver.sfu.aiortc_adapter import CandidatePolicy
from mediaserver.sfu.producer import Producer
from mediaserver.sfu.transport import (
    NegotiationError,
    PublisherTransport,
    SubscriberTransport,
)
from mediaserver.tokens import Claims

log = logging.getLogger(__name__)

KIND_LIMITS = {"one_to_one": 2, "couples": 3}
SOURCES = ("camera", "microphone", "screen", "screen_audio")
ANSWER_TIMEOUT = 20.0

SendFn = Callable[[dict[str, Any]], Awaitable[None]]


class RoomError(Exception):
    """A request the room refuses; ``code`` is stable and part of the protocol."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(9)}"


@dataclass
class Participant:
    id: str
    identity: str
    name: str
    role: str
    claims: Claims
    send: SendFn
    joined_at: float
    publisher: PublisherTransport | None = None
    subscriber: SubscriberTransport | None = None
    producers: dict[str, Producer] = field(default_factory=dict)
    answer_waiter: asyncio.Future[str] | None = None
    negotiate_task: asyncio.Task[None] | None = None
    needs_negotiation: bool = False
    closed: bool = False

    def info(self) -> dict[str, Any]:
        """The participant as others see it in rosters and events."""
        return {
            "participant_id": self.id,
            "identity": self.identity,
            "name": self.name,
            "role": self.role,
            "tracks": [track_info(p) for p in self.producers.values()],
        }


def track_info(p: Producer) -> dict[str, Any]:
    return {"track_id": p.track_id, "participant_id": p.participant_id, "kind": p.kind,
            "source": p.source, "codec": p.codec.mime_type, "muted": p.muted}


class Room:
    def __init__(self, name: str, kind: str, max_participants: int, policy: CandidatePolicy,
                 options: dict[str, Any] | None = None) -> None:
        self.name = name
        self.kind = kind
        self.max_participants = max_participants
        self.policy = policy
        self.options = dict(options or {})
        self.participants: dict[str, Participant] = {}
        self.created_at = time.time()
        self.closed = False
        self.persistent = False  # created through the admin API: kept when empty

    def info(self) -> dict[str, Any]:
        return {"room": self.name, "kind": self.kind, "max_participants": self.max_participants,
                "participants": len(self.participants), "created_at": int(self.created_at),
                "options": self.options}

    def by_identity(self, identity: str) -> Participant | None:
        return next((p for p in self.participants.values() if p.identity == identity), None)

    # -- membership ----------------------------------------------------------------------

    async def join(self, claims: Claims, send: SendFn) -> Participant:
        if self.closed:
            raise RoomError("room_closed", "the room has ended")
        previous = self.by_identity(claims.identity)
        if previous is not None:
            # The same person again (reload, new device): the newest connection wins.
            await self.remove(previous, reason="replaced")
        if len(self.participants) >= self.max_participants:
            raise RoomError("room_full", f"the room is full ({self.kind} rooms hold at most "
                            f"{self.max_participants} participants)")
        p = Participant(id=new_id("PA"), identity=claims.identity, name=claims.name,
                        role=claims.role, claims=claims, send=send, joined_at=time.time())
        others = list(self.participants.values())
        self.participants[p.id] = p
        metrics.PARTICIPANTS.labels(role=p.role).inc()
        await self._broadcast({"type": "participant_joined", "participant": p.info()}, others)
        if claims.grants.subscribe and any(o.producers for o in others):
            self._schedule_negotiation(p)
        return p

    async def remove(self, p: Participant, reason: str = "left") -> None:
        if p.closed:
            return
        p.closed = True
        self.participants.pop(p.id, None)
        metrics.PARTICIPANTS.labels(role=p.role).dec()
        if p.answer_waiter is not None and not p.answer_waiter.done():
            p.answer_waiter.cancel()
        if p.negotiate_task is not None:
            p.negotiate_task.cancel()
        for producer in list(p.producers.values()):
            await self._close_producer(p, producer)
        if reason not in ("left",):
            await _safe_send(p, {"type": "removed", "reason": reason})
        for transport in (p.publisher, p.subscriber):
            if transport is not None:
                await transport.close()
        await self._broadcast({"type": "participant_left", "participant_id": p.id,
                               "reason": reason})

    async def close(self, reason: str = "room_ended") -> None:
        if self.closed:
            return
        self.closed = True
        for p in list(self.participants.values()):
            await self.remove(p, reason=reason)

    # -- publishing ----------------------------------------------------------------------

    async def publish_offer(self, p: Participant, sdp: str,
                            tracks_meta: list[dict[str, Any]]) -> dict[str, Any]:
        if not p.claims.grants.publish:
            raise RoomError("permission_denied", "this participant may not publish")
        if p.publisher is None:
            p.publisher = PublisherTransport(self.policy)
        try:
            answer, added, removed_mids = await p.publisher.handle_offer(sdp)
        except NegotiationError as exc:
            raise RoomError("negotiation_failed", str(exc)) from exc
        meta = {m.get("mid"): m for m in tracks_meta if isinstance(m, dict)}
        published = []
        for track in added:
            source = meta.get(track.mid, {}).get("source")
            if source not in SOURCES:
                source = "microphone" if track.kind == "audio" else "camera"
            producer = Producer(
                track_id=new_id("TR"), participant_id=p.id, kind=track.kind,
                codec=track.codec, ssrc=track.ssrc, rtx_ssrc=track.rtx_ssrc, mid=track.mid,
                source=source, send_rtcp=p.publisher.send_rtcp, rtcp_ssrc=track.rtcp_ssrc,
                audio_level_id=track.audio_level_id)
            producer.muted = bool(meta.get(track.mid, {}).get("muted", False))
            p.publisher.attach(producer)
            p.producers[producer.track_id] = producer
            metrics.TRACKS.labels(kind=producer.kind).inc()
            published.append(producer)
        for mid in removed_mids:
            gone = p.publisher.by_mid.get(mid)
            if gone is not None:
                await self._close_producer(p, gone)
        for producer in published:
            await self._broadcast({"type": "track_published", "track": track_info(producer)},
                                  [o for o in self.participants.values() if o is not p])
        self._renegotiate_others(p)
        return {"sdp": answer, "tracks": [dict(track_info(x), mid=x.mid) for x in published]}

    async def unpublish(self, p: Participant, track_id: str) -> None:
        producer = p.producers.get(track_id)
        if producer is None:
            raise RoomError("track_not_found", "no such track of this participant")
        await self._close_producer(p, producer)
        self._renegotiate_others(p)

    async def set_muted(self, p: Participant, track_id: str, muted: bool) -> None:
        producer = p.producers.get(track_id)
        if producer is None:
            raise RoomError("track_not_found", "no such track of this participant")
        producer.muted = muted
        await self._broadcast({"type": "track_muted" if muted else "track_unmuted",
                               "track_id": track_id, "participant_id": p.id})

    async def _close_producer(self, p: Participant, producer: Producer) -> None:
        if producer.closed:
            return
        producer.close()
        p.producers.pop(producer.track_id, None)
        if p.publisher is not None:
            p.publisher.detach(producer)
        metrics.TRACKS.labels(kind=producer.kind).dec()
        await self._broadcast({"type": "track_unpublished", "track_id": producer.track_id,
                               "participant_id": p.id}, [o for o in self.participants.values()
                                                          if o is not p])
        self._renegotiate_others(p)

    # -- subscribing ---------------------------------------------------------------------

    def _renegotiate_others(self, publisher: Participant) -> None:
        for o in self.participants.values():
            if o is not publisher and o.claims.grants.subscribe:
                self._schedule_negotiation(o)

    def _schedule_negotiation(self, p: Participant) -> None:
        p.needs_negotiation = True
        if p.negotiate_task is None or p.negotiate_task.done():
            p.negotiate_task = asyncio.create_task(self._negotiate(p))

    def _wanted(self, p: Participant) -> list[Producer]:
        return [prod for o in self.participants.values() if o is not p
                for prod in o.producers.values() if not prod.closed]

    async def _negotiate(self, p: Participant) -> None:
        """Bring p's subscriber connection in line with the room, one offer at a time."""
        try:
            while p.needs_negotiation and not p.closed:
                p.needs_negotiation = False
                if p.subscriber is None:
                    p.subscriber = SubscriberTransport(self.policy, p.id)
                    p.subscriber.set_remb_listener(self._relay_remb)
                sub = p.subscriber
                wanted = self._wanted(p)
                have = {c.producer for c in sub.consumers.values() if not c.closed}
                add = [prod for prod in wanted if prod not in have]
                remove = [mid for mid, c in sub.consumers.items()
                          if c.closed or c.producer not in wanted]
                if not add and not remove:
                    continue
                sdp = await sub.create_offer(add, remove)
                mids = {prod: mid for mid, prod in sub._pending.items()}
                loop = asyncio.get_running_loop()
                p.answer_waiter = loop.create_future()
                await p.send({"type": "subscriber_offer", "sdp": sdp, "tracks": [
                    dict(track_info(prod), mid=mids.get(prod)) for prod in add]})
                answer = await asyncio.wait_for(p.answer_waiter, ANSWER_TIMEOUT)
                p.answer_waiter = None
                now = time.monotonic()
                for consumer in await sub.handle_answer(answer, now):
                    if consumer.producer.closed:
                        consumer.close()
                        p.needs_negotiation = True
                    else:
                        consumer.producer.add_consumer(consumer, now)
        except asyncio.CancelledError:
            pass
        except (TimeoutError, NegotiationError) as exc:
            log.warning("subscriber negotiation failed for a participant: %s", exc)
            await _safe_send(p, {"type": "error", "code": "negotiation_failed",
                                 "message": "subscriber negotiation failed"})

    def subscriber_answer(self, p: Participant, sdp: str) -> None:
        waiter = p.answer_waiter
        if waiter is None or waiter.done():
            raise RoomError("no_pending_offer", "there is no subscriber offer to answer")
        waiter.set_result(sdp)

    def _relay_remb(self, producer: Producer, now: float) -> None:
        owner = self.participants.get(producer.participant_id)
        if owner is not None and owner.publisher is not None:
            owner.publisher.relay_remb_now(now)

    async def _broadcast(self, msg: dict[str, Any],
                         targets: list[Participant] | None = None) -> None:
        for p in list(targets if targets is not None else self.participants.values()):
            await _safe_send(p, msg)


async def _safe_send(p: Participant, msg: dict[str, Any]) -> None:
    try:
        await p.send(msg)
    except Exception:  # a dead socket must not stop the others' events
        log.debug("event not delivered to a participant")


class RoomManager:
    """All rooms on this node (the embedded, in-memory routing)."""

    def __init__(self, policy: CandidatePolicy, group_max_participants: int = 16) -> None:
        self.policy = policy
        self.group_max = group_max_participants
        self.rooms: dict[str, Room] = {}

    def limit_for(self, kind: str) -> int:
        return KIND_LIMITS.get(kind, self.group_max)

    def create(self, name: str, kind: str, max_participants: int | None = None,
               options: dict[str, Any] | None = None) -> Room:
        if name in self.rooms:
            raise RoomError("room_exists", "a room with this name already exists")
        limit = self.limit_for(kind)
        if max_participants is not None:
            limit = min(limit, max_participants)
        room = Room(name, kind, limit, self.policy, options)
        self.rooms[name] = room
        metrics.ROOMS.labels(kind=kind).inc()
        return room

    def get_or_create(self, name: str, kind: str) -> Room:
        room = self.rooms.get(name)
        if room is None:
            return self.create(name, kind)
        if room.kind != kind:
            raise RoomError("room_kind_mismatch",
                            f"the room is a {room.kind} session, the token says {kind}")
        return room

    async def end(self, name: str) -> None:
        room = self.rooms.pop(name, None)
        if room is None:
            raise RoomError("room_not_found", "no such room")
        metrics.ROOMS.labels(kind=room.kind).dec()
        await room.close()

    async def leave(self, room: Room, p: Participant, reason: str = "left") -> None:
        await room.remove(p, reason)
        if not room.participants and room.name in self.rooms and not room.persistent:
            self.rooms.pop(room.name, None)
            metrics.ROOMS.labels(kind=room.kind).dec()
            room.closed = True

    async def close_all(self) -> None:
        for name in list(self.rooms):
            await self.end(name)
