"""A person in a room, as the server tracks them."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from mediaserver.sfu.producer import Producer
from mediaserver.sfu.transport import PublisherTransport, SubscriberTransport
from mediaserver.tokens import Claims

log = logging.getLogger(__name__)

SendFn = Callable[[dict[str, Any]], Awaitable[None]]

WAITING = "waiting"  # in the waiting room: no media, no roster
ACTIVE = "active"
DISCONNECTED = "disconnected"  # signalling lost; may resume within the grace period


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(9)}"


async def _discard(msg: dict[str, Any]) -> None:
    return None


@dataclass
class Participant:
    id: str
    identity: str
    name: str
    role: str
    claims: Claims
    send: SendFn
    joined_at: float
    joined_monotonic: float = field(default_factory=time.monotonic)
    state: str = ACTIVE
    resume_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    disconnected_at: float | None = None
    publisher: PublisherTransport | None = None
    subscriber: SubscriberTransport | None = None
    producers: dict[str, Producer] = field(default_factory=dict)
    # Subscriptions: everything (minus ``unsubscribed``) when auto, else ``subscribed``.
    auto_subscribe: bool = True
    subscribed: set[str] = field(default_factory=set)
    unsubscribed: set[str] = field(default_factory=set)
    disabled_tracks: set[str] = field(default_factory=set)
    preferences: dict[str, dict[str, Any]] = field(default_factory=dict)
    audio_only: bool = False  # the subscriber chose to receive no video
    max_bitrate: int | None = None  # the subscriber's own cap on its downlink, bps
    start_bitrate: int | None = None  # what the subscriber says its downlink carries, bps
    # Subscriber negotiation (one offer in flight at a time).
    answer_waiter: asyncio.Future[str] | None = None
    pending_offer: dict[str, Any] | None = None
    negotiate_task: asyncio.Task[None] | None = None
    needs_negotiation: bool = False
    subscriber_generation: int = 0
    closed: bool = False
    # Signalling: which connection owns the participant (a resume takes it over).
    connection: int = 0
    on_takeover: Callable[[], None] | None = None

    def info(self) -> dict[str, Any]:
        """The participant as others see it in rosters and events."""
        return {
            "participant_id": self.id,
            "identity": self.identity,
            "name": self.name,
            "role": self.role,
            "tracks": [track_info(p) for p in self.producers.values()],
        }

    def detach_signalling(self) -> None:
        """The socket is gone: events are dropped until the participant resumes."""
        self.send = _discard

    async def deliver(self, msg: dict[str, Any]) -> None:
        """Send an event; a dead socket must not stop the sender's loop."""
        try:
            await self.send(msg)
        except Exception:
            log.debug("event not delivered to a participant")


def track_info(p: Producer) -> dict[str, Any]:
    return {"track_id": p.track_id, "participant_id": p.participant_id, "kind": p.kind,
            "source": p.source, "codec": p.codec.mime_type, "muted": p.muted}
