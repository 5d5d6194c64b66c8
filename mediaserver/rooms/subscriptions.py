"""Keeping a participant's subscriber connection in line with what it should receive.

One negotiation loop per participant, one offer in flight at a time (no glare: only the
server offers on this connection). Any change (a track published or unpublished, a
subscription changed, a participant admitted) sets ``needs_negotiation`` and the loop
runs again until the connection matches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from mediaserver.rooms.participant import ACTIVE, DISCONNECTED, Participant, track_info
from mediaserver.sfu.aiortc_adapter import CandidatePolicy
from mediaserver.sfu.producer import Producer
from mediaserver.sfu.transport import NegotiationError, SubscriberTransport

log = logging.getLogger(__name__)

ANSWER_TIMEOUT = 20.0


def wanted(p: Participant, candidates: Iterable[Producer]) -> list[Producer]:
    """The producers ``p`` should receive, from those it may see."""
    out = []
    for prod in candidates:
        if prod.closed or prod.participant_id == p.id:
            continue
        if p.auto_subscribe:
            if prod.track_id not in p.unsubscribed:
                out.append(prod)
        elif prod.track_id in p.subscribed:
            out.append(prod)
    return out


class Negotiator:
    """Runs the subscriber negotiation loop of each participant of one room."""

    def __init__(self, policy: CandidatePolicy,
                 visible_producers: Callable[[Participant], list[Producer]],
                 on_remb: Callable[[Producer, float], None], adaptation: bool = True) -> None:
        self.policy = policy
        self.visible_producers = visible_producers
        self.on_remb = on_remb
        self.adaptation = adaptation  # the room adapts (False: plain forwarding)

    def schedule(self, p: Participant) -> None:
        if p.closed or (p.state != ACTIVE and p.state != DISCONNECTED):
            return
        if not p.claims.grants.subscribe:
            return
        p.needs_negotiation = True
        if p.negotiate_task is None or p.negotiate_task.done():
            p.negotiate_task = asyncio.create_task(self._run(p))

    async def _run(self, p: Participant) -> None:
        try:
            while p.needs_negotiation and not p.closed:
                p.needs_negotiation = False
                await self._once(p)
        except asyncio.CancelledError:
            pass
        except (TimeoutError, NegotiationError) as exc:
            log.warning("subscriber negotiation failed for a participant: %s", exc)
            p.answer_waiter = p.pending_offer = None
            await p.deliver({"type": "error", "code": "negotiation_failed",
                             "message": "subscriber negotiation failed"})

    async def _once(self, p: Participant) -> None:
        if p.subscriber is None:
            first = p.subscriber_generation == 0
            p.subscriber = SubscriberTransport(
                self.policy, p.id, p.joined_monotonic if first else None)
            p.subscriber_generation += 1
            p.subscriber.set_remb_listener(self.on_remb)
            if self.adaptation and p.start_bitrate is not None:
                p.subscriber.adaptation.estimator.start_at(p.start_bitrate, time.monotonic())
        sub = p.subscriber
        want = wanted(p, self.visible_producers(p))
        have = {c.producer for c in sub.consumers.values() if not c.closed}
        add = [prod for prod in want if prod not in have]
        remove = [mid for mid, c in sub.consumers.items() if c.closed or c.producer not in want]
        if not add and not remove:
            return
        sdp = await sub.create_offer(add, remove)
        mids = {prod: mid for mid, prod in sub.pending.items()}
        p.answer_waiter = asyncio.get_running_loop().create_future()
        p.pending_offer = {"type": "subscriber_offer", "sdp": sdp, "tracks": [
            dict(track_info(prod), mid=mids.get(prod)) for prod in add]}
        await p.deliver(p.pending_offer)
        answer = await asyncio.wait_for(p.answer_waiter, ANSWER_TIMEOUT)
        p.answer_waiter = p.pending_offer = None
        now = time.monotonic()
        for consumer in await sub.handle_answer(answer, now):
            if consumer.producer.closed:
                consumer.close()
                p.needs_negotiation = True
                continue
            consumer.disabled = consumer.producer.track_id in p.disabled_tracks
            # On a link the subscriber said is too thin, video waits for a probe (the next
            # allocation step tells the subscriber so) instead of flooding it at once.
            consumer.bandwidth_paused = (self.adaptation and consumer.kind == "video"
                                         and sub.adaptation.starts_without_video())
            consumer.producer.add_consumer(consumer, now)
            consumer.refresh_paused(now)

    @staticmethod
    def answer(p: Participant, sdp: str) -> bool:
        waiter = p.answer_waiter
        if waiter is None or waiter.done():
            return False
        waiter.set_result(sdp)
        return True

    async def restart(self, p: Participant) -> None:
        """A new subscriber connection (the old one's network path is gone)."""
        if p.negotiate_task is not None:
            p.negotiate_task.cancel()
        if p.answer_waiter is not None and not p.answer_waiter.done():
            p.answer_waiter.cancel()
        p.answer_waiter = p.pending_offer = None
        if p.subscriber is not None:
            await p.subscriber.close()
            p.subscriber = None
        self.schedule(p)
