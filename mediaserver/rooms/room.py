"""A session: membership, the waiting room, host controls, publishing, events.

Who sees whom: participants see the active, visible participants (observers are hidden
from clients unless the room shows them); hosts also see the waiting room. Nobody in
the waiting room sees anyone or receives any media. Every request is checked against
``policy`` here, whatever the client's UI offers.

One control task per room (``run``) ticks a few times per second: bandwidth adaptation,
connection quality, the connections' RTCP reports, active speakers, the session's time
limit, the empty-room timeout and the resume grace period.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import time
from collections.abc import Callable
from typing import Any

from mediaserver import metrics
from mediaserver.limits import bitrate_bucket
from mediaserver.policy import Permission, allowed, bypasses_waiting_room, permissions, visible_to
from mediaserver.quality.monitor import LinkCounters, ParticipantQuality
from mediaserver.recording.consent import ConsentState, Step
from mediaserver.recording.errors import RecordingError
from mediaserver.rooms.errors import RoomError
from mediaserver.rooms.participant import (
    ACTIVE,
    DISCONNECTED,
    WAITING,
    Participant,
    SendFn,
    new_id,
    track_info,
)
from mediaserver.rooms.recording import RecordingSettings, RoomRecording
from mediaserver.rooms.subscriptions import Negotiator
from mediaserver.sfu.aiortc_adapter import CandidatePolicy
from mediaserver.sfu.consumer import Consumer
from mediaserver.sfu.producer import Producer
from mediaserver.sfu.speakers import SpeakerDetector
from mediaserver.sfu.transport import NegotiationError, PublisherTransport
from mediaserver.tokens import Claims, Role

log = logging.getLogger(__name__)

SOURCES = ("camera", "microphone", "screen", "screen_audio")
TICK = 0.25
QUALITY_INTERVAL = 1.0
ADAPT_INTERVAL = 0.5
LAYER_OFF_DELAY = 5.0  # an unwanted simulcast layer keeps flowing this long before it stops
LAYER_RESUME_GRACE = 3.0  # a layer the publisher was asked to resume, until it shows up
MAX_OBSERVERS = 4
# A step over many participants lets waiting packets through (a sleep(0)) once it has run
# this long: a big group's whole step in one go held every packet of the node back by
# milliseconds, and a yield per participant woke a small room's task several times a tick.
STEP_SLICE = 0.0005


class _Slicer:
    """``await slicer.pause()`` between units of a long step: yields to the loop only once
    STEP_SLICE has passed since the step began or last yielded (perf_counter: no system
    call)."""

    __slots__ = ("_since",)

    def __init__(self) -> None:
        self._since = time.perf_counter()

    async def pause(self) -> None:
        if time.perf_counter() - self._since >= STEP_SLICE:
            await asyncio.sleep(0)
            self._since = time.perf_counter()


class Room:
    def __init__(self, name: str, kind: str, max_participants: int, policy: CandidatePolicy,
                 options: dict[str, Any] | None = None, *, empty_timeout: float = 60,
                 max_duration: float = 4 * 3600, resume_grace: float = 30,
                 recording: RecordingSettings | None = None,
                 publish_kbps: dict[str, int] | None = None, adaptation: bool = True) -> None:
        self.name = name
        self.publish_kbps = publish_kbps or {}  # kind -> byte budget of each published track
        self.adaptation = adaptation
        self.kind = kind
        self.max_participants = max_participants
        self.options = dict(options or {})
        self.waiting_room = bool(self.options.get("waiting_room", False))
        self.observers_visible = bool(self.options.get("observers_visible", False))
        self.empty_timeout = float(self.options.get("empty_timeout", empty_timeout))
        self.max_duration = float(self.options.get("max_duration", max_duration))
        self.resume_grace = resume_grace
        self.locked = False
        self.participants: dict[str, Participant] = {}
        self.banned_tokens: set[str] = set()
        self.created_at = time.time()
        self.started = time.monotonic()
        self.empty_since: float | None = self.started
        self.closed = False
        self.persistent = False  # created through the admin API (see mark_persistent)
        self.speakers = SpeakerDetector()
        self.quality: dict[str, ParticipantQuality] = {}
        self.reports: list[dict[str, Any]] = []  # of participants who left
        self._last_quality = float("-inf")
        self._last_adapt = float("-inf")
        self.negotiator = Negotiator(policy, self._visible_producers, self._relay_remb,
                                     adaptation)
        self.recording = (RoomRecording(name, recording, self._identity_of)
                          if recording is not None else None)
        self._identities: dict[str, str] = {}  # participant id -> identity, for the audit log
        self.policy = policy

    def _identity_of(self, participant_id: str) -> str | None:
        return self._identities.get(participant_id)

    def mark_persistent(self) -> None:
        """Created ahead of time: wait for participants; the empty timer starts once one left."""
        self.persistent = True
        self.empty_since = None

    def info(self) -> dict[str, Any]:
        return {"room": self.name, "kind": self.kind, "max_participants": self.max_participants,
                "participants": sum(p.state != WAITING for p in self.participants.values()),
                "waiting": sum(p.state == WAITING for p in self.participants.values()),
                "locked": self.locked, "created_at": int(self.created_at),
                "options": self.options}

    def by_identity(self, identity: str) -> Participant | None:
        return next((p for p in self.participants.values() if p.identity == identity), None)

    def _get(self, participant_id: str) -> Participant:
        p = self.participants.get(participant_id)
        if p is None:
            raise RoomError("participant_not_found", "no such participant in the room")
        return p

    # -- who sees what -------------------------------------------------------------------

    def _sees(self, viewer: Participant, subject: Participant) -> bool:
        if subject is viewer or subject.state == WAITING or viewer.state == WAITING:
            return False
        return visible_to(viewer.claims, subject.claims, self.observers_visible)

    def roster(self, viewer: Participant) -> list[dict[str, Any]]:
        return [o.info() for o in self.participants.values() if self._sees(viewer, o)]

    def waiting_list(self) -> list[dict[str, Any]]:
        return [{"participant_id": p.id, "identity": p.identity, "name": p.name, "role": p.role}
                for p in self.participants.values() if p.state == WAITING]

    def _visible_producers(self, p: Participant) -> list[Producer]:
        if p.state == WAITING:
            return []
        return [prod for o in self.participants.values() if self._sees(p, o)
                for prod in o.producers.values()]

    async def _tell_viewers(self, subject: Participant, msg: dict[str, Any]) -> None:
        for viewer in list(self.participants.values()):
            if self._sees(viewer, subject):
                await viewer.deliver(msg)

    async def _tell_hosts(self, msg: dict[str, Any]) -> None:
        for p in list(self.participants.values()):
            if p.state != WAITING and allowed(p.claims, Permission.ADMIT):
                await p.deliver(msg)

    async def _tell_all(self, msg: dict[str, Any]) -> None:
        for p in list(self.participants.values()):
            if p.state != WAITING:
                await p.deliver(msg)

    # -- membership ----------------------------------------------------------------------

    def _check_capacity(self, claims: Claims) -> None:
        if claims.role is Role.OBSERVER:
            observers = sum(p.role == Role.OBSERVER for p in self.participants.values())
            if observers >= MAX_OBSERVERS:
                raise RoomError("room_full", f"the room has its {MAX_OBSERVERS} observers")
            return
        seats = sum(p.role != Role.OBSERVER for p in self.participants.values())
        if seats >= self.max_participants:
            raise RoomError("room_full", f"the room is full ({self.kind} rooms hold at most "
                            f"{self.max_participants} participants)")

    async def join(self, claims: Claims, send: SendFn, auto_subscribe: bool = True
                   ) -> Participant:
        if self.closed:
            raise RoomError("room_closed", "the session has ended")
        if (claims.token_id or f"identity:{claims.identity}") in self.banned_tokens:
            raise RoomError("participant_removed", "you were removed from this session")
        if self.locked and claims.role is not Role.HOST:
            raise RoomError("room_locked", "the session is locked: no new participants")
        previous = self.by_identity(claims.identity)
        if previous is not None:
            # The same person again (reload, new device): the newest connection wins.
            await self.remove(previous, reason="replaced")
        self._check_capacity(claims)
        waiting = self.waiting_room and not bypasses_waiting_room(claims)
        p = Participant(id=new_id("PA"), identity=claims.identity, name=claims.name,
                        role=claims.role.value, claims=claims, send=send,
                        joined_at=time.time(), state=WAITING if waiting else ACTIVE,
                        auto_subscribe=auto_subscribe)
        return self._add(p)

    def adopt(self, claims: Claims, participant_id: str, resume_secret: str, waiting: bool,
              joined_at: float, send: SendFn) -> Participant:
        """Take in a participant whose room was moved here from a node that went away.

        Same id, resume secret and admission as before; no media yet (the client publishes
        and subscribes again). The caller has checked the identity and the secret.
        """
        if self.closed:
            raise RoomError("room_closed", "the session has ended")
        old = self.participants.get(participant_id)
        if old is not None:
            return old
        p = Participant(id=participant_id, identity=claims.identity, name=claims.name,
                        role=claims.role.value, claims=claims, send=send, joined_at=joined_at,
                        state=WAITING if waiting else ACTIVE, resume_secret=resume_secret)
        return self._add(p)

    def _add(self, p: Participant) -> Participant:
        self.participants[p.id] = p
        self._identities[p.id] = p.identity
        self.quality[p.id] = ParticipantQuality(p.id)
        self.empty_since = None
        metrics.PARTICIPANTS.labels(role=p.role).inc()
        return p

    def joined_reply(self, p: Participant) -> dict[str, Any]:
        return {"participant_id": p.id, "state": p.state, "resume_token": p.resume_secret,
                "room": {"name": self.name, "kind": self.kind, "locked": self.locked,
                         "max_participants": self.max_participants,
                         "waiting_room": self.waiting_room},
                "participants": self.roster(p),
                "waiting": self.waiting_list() if allowed(p.claims, Permission.ADMIT) else [],
                "permissions": permissions(p.claims),
                "recording": (self.recording_state_for(p) if self.recording is not None
                              and p.state != WAITING else None)}

    async def announce(self, p: Participant) -> None:
        """After the joined reply: tell the others and start receiving."""
        if p.state == WAITING:
            await self._tell_hosts({"type": "participant_waiting", "participant": {
                "participant_id": p.id, "identity": p.identity, "name": p.name,
                "role": p.role}})
            return
        await self._tell_viewers(p, {"type": "participant_joined", "participant": p.info()})
        self.negotiator.schedule(p)
        if self.recording is not None:
            await self._consent(lambda c, now: c.participant_joined(p.id, now=now))

    async def admit(self, host: Participant, participant_id: str) -> None:
        self._require(host, Permission.ADMIT)
        p = self._get(participant_id)
        if p.state != WAITING:
            raise RoomError("not_waiting", "this participant is not in the waiting room")
        p.state = ACTIVE
        await p.deliver({"type": "admitted", "participants": self.roster(p)})
        await self._tell_hosts({"type": "waiting_left", "participant_id": p.id,
                                "reason": "admitted"})
        await self.announce(p)

    async def deny(self, host: Participant, participant_id: str, reason: str) -> None:
        self._require(host, Permission.ADMIT)
        p = self._get(participant_id)
        if p.state != WAITING:
            raise RoomError("not_waiting", "this participant is not in the waiting room")
        await p.deliver({"type": "denied", "reason": reason or "the host did not admit you"})
        await self.remove(p, reason="denied")

    async def remove(self, p: Participant, reason: str = "left") -> None:
        if p.closed:
            return
        was_waiting = p.state == WAITING
        if reason not in ("left", "denied"):
            await p.deliver({"type": "removed", "reason": reason})
        p.closed = True
        self.participants.pop(p.id, None)
        metrics.PARTICIPANTS.labels(role=p.role).dec()
        if p.answer_waiter is not None and not p.answer_waiter.done():
            p.answer_waiter.cancel()
        if p.negotiate_task is not None:
            p.negotiate_task.cancel()
        for producer in list(p.producers.values()):
            await self._close_producer(p, producer)
        for transport in (p.publisher, p.subscriber):
            if transport is not None:
                await transport.close()
        self.speakers.remove(p.id)
        if self.recording is not None and not was_waiting:
            await self._consent(lambda c, now: c.participant_left(p.id, now=now))
        quality = self.quality.pop(p.id, None)
        if quality is not None and not was_waiting:
            report = quality.report(self.started)
            report.update(identity=p.identity, role=p.role, left_reason=reason,
                          joined_at=int(p.joined_at), left_at=int(time.time()))
            self.reports.append(report)
        if was_waiting:
            await self._tell_hosts({"type": "waiting_left", "participant_id": p.id,
                                    "reason": reason})
        else:
            msg = {"type": "participant_left", "participant_id": p.id, "reason": reason}
            for viewer in list(self.participants.values()):
                if viewer.state != WAITING and visible_to(viewer.claims, p.claims,
                                                          self.observers_visible):
                    await viewer.deliver(msg)
        if not self.participants:
            self.empty_since = time.monotonic()

    def disconnect(self, p: Participant) -> bool:
        """Signalling dropped. Keep the participant for the grace period; False if not kept."""
        if p.closed or p.state == WAITING or self.resume_grace <= 0:
            return False
        p.state = DISCONNECTED
        p.disconnected_at = time.monotonic()
        p.detach_signalling()
        return True

    def resume(self, claims: Claims, participant_id: str, secret: str, send: SendFn
               ) -> Participant:
        p = self.participants.get(participant_id)
        if (p is None or p.identity != claims.identity
                or not hmac.compare_digest(p.resume_secret, secret)):
            raise RoomError("resume_failed", "nothing to resume: join again")
        if p.on_takeover is not None:
            p.on_takeover()  # an older socket still open: it lets go without leaving
        p.send = send
        if p.state == DISCONNECTED:
            p.state = ACTIVE  # a waiting participant stays waiting
        p.disconnected_at = None
        p.connection += 1
        return p

    async def close(self, reason: str = "room_ended") -> None:
        if self.closed:
            return
        self.closed = True
        if self.recording is not None:
            self.recording.close(time.monotonic())
        for p in list(self.participants.values()):
            await self.remove(p, reason=reason)

    # -- host controls -------------------------------------------------------------------

    def _require(self, p: Participant, permission: Permission) -> None:
        if p.state == WAITING:
            raise RoomError("not_admitted", "wait until a host admits you")
        if not allowed(p.claims, permission):
            raise RoomError("permission_denied", f"your role may not {permission.value}")

    async def mute_participant(self, host: Participant, participant_id: str,
                               track_id: str | None, muted: bool) -> None:
        self._require(host, Permission.MUTE)
        target = self._get(participant_id)
        tracks = [t for t in target.producers.values()
                  if (track_id is None and t.kind == "audio") or t.track_id == track_id]
        if track_id is not None and not tracks:
            raise RoomError("track_not_found", "no such track of this participant")
        for producer in tracks:
            if muted:
                await self._set_muted(target, producer, True, by=host.id)
            else:
                # Unmuting someone is only a request: their microphone, their choice.
                await target.deliver({"type": "unmute_requested", "track_id": producer.track_id,
                                      "by": host.id})

    async def remove_participant(self, host: Participant, participant_id: str) -> None:
        self._require(host, Permission.REMOVE)
        target = self._get(participant_id)
        self.banned_tokens.add(target.claims.token_id or f"identity:{target.identity}")
        await self.remove(target, reason="removed_by_host")

    async def lock(self, host: Participant, locked: bool) -> None:
        self._require(host, Permission.LOCK)
        self.locked = locked
        await self._tell_all({"type": "room_updated", "locked": locked})

    def check_end(self, host: Participant) -> None:
        self._require(host, Permission.END)

    # -- publishing ----------------------------------------------------------------------

    async def publish_offer(self, p: Participant, sdp: str, tracks_meta: list[Any],
                            restart: bool = False) -> dict[str, Any]:
        self._require(p, Permission.PUBLISH)
        if restart and p.publisher is not None:
            # The old connection's network path is gone; its tracks move to the new one.
            for producer in p.producers.values():
                p.publisher.detach(producer)
            await p.publisher.close()
            p.publisher = None
        if p.publisher is None:
            p.publisher = PublisherTransport(self.policy)
        try:
            answer, added, removed_mids = await p.publisher.handle_offer(sdp)
        except NegotiationError as exc:
            raise RoomError("negotiation_failed", str(exc)) from exc
        if p.closed:
            raise RoomError("room_closed", "you are no longer in the session")
        meta = {m.get("mid"): m for m in tracks_meta if isinstance(m, dict)}
        now = time.monotonic()
        published, rebound = [], []
        for track in added:
            m = meta.get(track.mid, {})
            old = p.producers.get(str(m.get("track_id", "")))
            if old is not None and old.kind == track.kind and old.mid not in p.publisher.by_mid:
                old.rebind(track, p.publisher.send_rtcp, now)
                p.publisher.attach(old)
                rebound.append(old)
                continue
            source = m.get("source")
            if source not in SOURCES:
                source = "microphone" if track.kind == "audio" else "camera"
            producer = Producer(
                track_id=new_id("TR"), participant_id=p.id, kind=track.kind,
                codec=track.codec, ssrc=track.ssrc, rtx_ssrc=track.rtx_ssrc, mid=track.mid,
                source=source, send_rtcp=p.publisher.send_rtcp, rtcp_ssrc=track.rtcp_ssrc,
                audio_level_id=track.audio_level_id, layers=track.layers)
            producer.speakers = self.speakers
            producer.budget = bitrate_bucket(self.publish_kbps.get(track.kind, 0))
            producer.muted = bool(m.get("muted", False))
            if self.recording is not None:
                self.recording.producer_added(producer, p.identity, now)
            p.publisher.attach(producer)
            p.producers[producer.track_id] = producer
            metrics.TRACKS.labels(kind=producer.kind).inc()
            published.append(producer)
        for mid in removed_mids:
            gone = p.publisher.by_mid.get(mid)
            if gone is not None:
                await self._close_producer(p, gone)
        if restart:
            for producer in list(p.producers.values()):
                if producer not in rebound and producer not in published:
                    await self._close_producer(p, producer)  # not carried over
        for producer in published:
            await self._tell_viewers(p, {"type": "track_published", "track": track_info(producer)})
        if published:
            self._renegotiate_viewers(p)
        return {"sdp": answer, "tracks": [dict(track_info(x), mid=x.mid)
                                          for x in published + rebound]}

    async def unpublish(self, p: Participant, track_id: str) -> None:
        producer = p.producers.get(track_id)
        if producer is None:
            raise RoomError("track_not_found", "no such track of this participant")
        await self._close_producer(p, producer)

    async def set_own_muted(self, p: Participant, track_id: str, muted: bool) -> None:
        producer = p.producers.get(track_id)
        if producer is None:
            raise RoomError("track_not_found", "no such track of this participant")
        await self._set_muted(p, producer, muted, by=p.id)

    async def _set_muted(self, owner: Participant, producer: Producer, muted: bool,
                         by: str) -> None:
        if producer.muted == muted:
            return
        producer.set_muted(muted, time.monotonic())
        msg = {"type": "track_muted" if muted else "track_unmuted",
               "track_id": producer.track_id, "participant_id": owner.id, "by": by}
        await owner.deliver(msg)
        await self._tell_viewers(owner, msg)

    async def _close_producer(self, p: Participant, producer: Producer) -> None:
        if producer.closed:
            return
        if self.recording is not None:
            self.recording.producer_removed(producer)
        producer.close()
        p.producers.pop(producer.track_id, None)
        if p.publisher is not None:
            p.publisher.detach(producer)
        metrics.TRACKS.labels(kind=producer.kind).dec()
        await self._tell_viewers(p, {"type": "track_unpublished", "track_id": producer.track_id,
                                     "participant_id": p.id})
        self._renegotiate_viewers(p)

    # -- recording -----------------------------------------------------------------------

    def _recording(self) -> RoomRecording:
        if self.recording is None:
            raise RoomError("recording_unavailable", "recording is not configured on this server")
        return self.recording

    async def _consent(self, make_step: Callable[[ConsentState, float], Step]) -> None:
        """Run one consent input and apply its step: audit, recorder, prompts, new state."""
        rec = self._recording()
        before = rec.state()
        now = time.monotonic()
        try:
            step = make_step(rec.consent, now)
        except RecordingError as exc:
            raise RoomError(str(exc.code), exc.message) from None
        rec.apply(step, now)
        by = rec.consent.requested_by
        for pid in step.ask:
            target = self.participants.get(pid)
            if target is not None:
                await target.deliver({"type": "consent_request", "by": by})
        state = rec.state()
        if state != before:
            for viewer in list(self.participants.values()):
                if viewer.state != WAITING:
                    await viewer.deliver({"type": "recording_state",
                                          **self.recording_state_for(viewer)})

    def recording_state_for(self, viewer: Participant) -> dict[str, Any]:
        """The recording state as ``viewer`` may see it (hidden observers left out)."""
        state = self._recording().state()
        state["pending"] = [pid for pid in state["pending"]
                            if pid == viewer.id or (pid in self.participants
                                                    and self._sees(viewer, self.participants[pid]))]
        return state

    async def record(self, p: Participant, start: bool) -> dict[str, Any]:
        self._require(p, Permission.RECORD)
        if start:
            await self._consent(lambda c, now: c.request(p.id, now=now))
        else:
            await self._consent(lambda c, now: c.stop(p.id, now=now))
        return self.recording_state_for(p)

    async def answer_consent(self, p: Participant, granted: bool) -> dict[str, Any]:
        if p.state == WAITING:
            raise RoomError("not_admitted", "wait until a host admits you")
        await self._consent(lambda c, now: c.answer(p.id, granted, now=now))
        return self.recording_state_for(p)

    async def withdraw_consent(self, p: Participant) -> dict[str, Any]:
        await self._consent(lambda c, now: c.withdraw(p.id, now=now))
        return self.recording_state_for(p)

    # -- subscribing ---------------------------------------------------------------------

    def _renegotiate_viewers(self, publisher: Participant) -> None:
        for o in self.participants.values():
            if self._sees(o, publisher):
                self.negotiator.schedule(o)

    def set_subscription(self, p: Participant, track_id: str, subscribe: bool) -> None:
        self._require(p, Permission.SUBSCRIBE)
        if not any(prod.track_id == track_id for prod in self._visible_producers(p)):
            raise RoomError("track_not_found", "no such track in the session")
        if subscribe:
            p.subscribed.add(track_id)
            p.unsubscribed.discard(track_id)
        else:
            p.unsubscribed.add(track_id)
            p.subscribed.discard(track_id)
        self.negotiator.schedule(p)

    def set_preferences(self, p: Participant, track_id: str, prefs: dict[str, Any]) -> None:
        self._require(p, Permission.SUBSCRIBE)
        if not any(prod.track_id == track_id for prod in self._visible_producers(p)):
            raise RoomError("track_not_found", "no such track in the session")
        p.preferences[track_id] = prefs
        if prefs.get("disabled"):
            p.disabled_tracks.add(track_id)
        else:
            p.disabled_tracks.discard(track_id)
        now = time.monotonic()
        if p.subscriber is not None:
            for consumer in p.subscriber.consumers.values():
                if consumer.producer.track_id == track_id:
                    consumer.disabled = track_id in p.disabled_tracks
                    consumer.refresh_paused(now)

    def set_bandwidth(self, p: Participant, audio_only: bool | None,
                      max_bitrate: int | None, start_bitrate: int | None = None) -> None:
        """The subscriber's own limits: audio only, or at most ``max_bitrate`` bps; and
        ``start_bitrate``, what it believes its link carries (the estimate starts there)."""
        self._require(p, Permission.SUBSCRIBE)
        for name, value in (("max_bitrate", max_bitrate), ("start_bitrate", start_bitrate)):
            if value is not None and value < 0:
                raise RoomError("invalid_field", f"{name} must not be negative")
        p.audio_only = bool(audio_only) if audio_only is not None else p.audio_only
        if max_bitrate is not None:
            p.max_bitrate = max_bitrate or None
        if start_bitrate is not None:
            p.start_bitrate = start_bitrate or None
            if p.subscriber is not None and self.adaptation:
                p.subscriber.adaptation.estimator.start_at(p.start_bitrate, time.monotonic())
        if p.subscriber is not None:
            self._apply_bandwidth_settings(p)

    def _apply_bandwidth_settings(self, p: Participant) -> None:
        if p.subscriber is not None:
            adaptation = p.subscriber.adaptation
            adaptation.audio_only_requested = p.audio_only
            adaptation.estimator.cap = p.max_bitrate
            if (p.start_bitrate is not None and adaptation.estimator.start_hint is None
                    and adaptation.estimator.probes_ok):
                # A probe measured more than the subscriber said: a later connection (after
                # a network change) starts as any other, not held back by an old word.
                p.start_bitrate = None

    # -- bandwidth adaptation ------------------------------------------------------------

    async def _adapt_step(self, now: float) -> None:
        with metrics.control_step("adaptation"):
            for p in self.participants.values():
                for producer in p.producers.values():
                    for stream in producer.streams:
                        stream.measure(now)
        dominant = self.speakers.dominant

        def hint_for(c: Consumer, prefs: dict[str, dict[str, Any]]) -> str | None:
            if prefs.get(c.producer.track_id, {}).get("pinned"):
                return "pinned"
            return "speaker" if c.producer.participant_id == dominant else None

        slicer = _Slicer()
        for p in list(self.participants.values()):
            await slicer.pause()  # packets in between, now and then (see STEP_SLICE)
            sub = p.subscriber
            if (sub is None or p.state == WAITING or not sub.consumers
                    or self.participants.get(p.id) is not p):
                continue
            if not self.adaptation:  # plain forwarding: every track's top layer, always
                for c in sub.consumers.values():
                    c.set_layer(len(c.producer.streams) - 1, 3, now)
                continue
            with metrics.control_step("adaptation"):
                self._apply_bandwidth_settings(p)
                prefs = p.preferences
                events = sub.adaptation.step(now, prefs,
                                             functools.partial(hint_for, prefs=prefs))
            for event in events:
                await p.deliver(event)
        await self._update_publisher_layers(now)

    async def _update_publisher_layers(self, now: float) -> None:
        """Ask each simulcast publisher to send only the layers someone receives."""
        for owner in list(self.participants.values()):
            for producer in owner.producers.values():
                if not producer.simulcast or producer.closed:
                    continue
                wanted = {0}  # the lowest layer always flows: the fallback for everyone
                for c in producer.consumers:
                    if not c.closed and not c.paused:
                        wanted.add(c.target.spatial)
                        if c.stream is not None:
                            wanted.add(c.stream.spatial)
                if producer.taps:
                    wanted.add(producer.record_layer)
                changed = False
                for stream in producer.streams:
                    # A layer never measured yet (a browser starts its top layers only when
                    # its own estimate allows) is left alone: stopping it would hide it.
                    if stream.spatial in wanted or not stream.last_wire_bitrate:
                        stream.unwanted_since = None
                    elif stream.unwanted_since is None:
                        stream.unwanted_since = now
                    paused = (stream.unwanted_since is not None
                              and now - stream.unwanted_since >= LAYER_OFF_DELAY)
                    if paused == stream.paused_upstream:
                        continue
                    changed = True
                    if not paused:
                        # Asked to send again: it counts as available until it arrives.
                        stream.expected_until = now + LAYER_RESUME_GRACE
                    stream.paused_upstream = paused
                rids = [st.rid for st in producer.streams if st.rid and not st.paused_upstream]
                if changed and rids:
                    await owner.deliver({"type": "publisher_layers",
                                         "track_id": producer.track_id, "active": rids})

    def _relay_remb(self, producer: Producer, now: float) -> None:
        owner = self.participants.get(producer.participant_id)
        if owner is not None and owner.publisher is not None:
            owner.publisher.relay_remb_now(now)

    # -- the control task ----------------------------------------------------------------

    def _counters(self, p: Participant) -> list[LinkCounters]:
        out = []
        rtts = []
        if p.subscriber is not None:
            rtts = [c.stats.rtt for c in p.subscriber.consumers.values()
                    if c.stats.rtt is not None and not c.closed]
        rtt = sum(rtts) / len(rtts) if rtts else None
        for prod in p.producers.values():
            st = prod.stats
            out.append(LinkCounters(
                key=f"{prod.track_id}:uplink", direction="uplink",
                kind="audio" if prod.kind == "audio" else "video",
                packets_expected=st.packets_expected, packets_lost=st.packets_lost,
                fraction_lost=None, bytes=st.bytes_received, frames=prod.frames,
                jitter=st.jitter / st.clock_rate, rtt=rtt, muted=prod.muted,
                dtx=_uses_dtx(prod)))
        if p.subscriber is not None:
            for c in p.subscriber.consumers.values():
                if c.closed:
                    continue
                ss = c.stats
                out.append(LinkCounters(
                    key=f"{c.producer.track_id}:downlink", direction="downlink",
                    kind="audio" if c.kind == "audio" else "video",
                    packets_expected=ss.packets_sent, packets_lost=None,
                    fraction_lost=ss.fraction_lost / 256, bytes=ss.octets_sent,
                    frames=ss.frames_sent, jitter=ss.jitter / c.clock_rate, rtt=ss.rtt,
                    muted=c.producer.muted or c.disabled,
                    paused=c.paused and not (c.producer.muted or c.disabled),
                    dtx=_uses_dtx(c.producer)))
        return out

    async def _quality_step(self, now: float) -> None:
        changed: dict[str, dict[str, Any]] = {}
        slicer = _Slicer()
        for p in list(self.participants.values()):
            await slicer.pause()  # packets in between, now and then (see STEP_SLICE)
            q = self.quality.get(p.id)
            if q is None or p.state == WAITING or self.participants.get(p.id) is not p:
                continue
            with metrics.control_step("quality"):
                level = q.update(self._counters(p), now)
            if level is not None:
                changed[p.id] = {"participant_id": p.id, "level": level.value,
                                 "score": None if q.score is None else round(q.score, 2)}
                log.info("quality_change participant=%s level=%s score=%s", p.id, level.value,
                         changed[p.id]["score"])
        if not changed:
            return
        for viewer in list(self.participants.values()):
            if viewer.state == WAITING:
                continue
            updates = [u for pid, u in changed.items()
                       if pid == viewer.id or (pid in self.participants
                                               and self._sees(viewer, self.participants[pid]))]
            if updates:
                await viewer.deliver({"type": "connection_quality", "updates": updates})

    def quality_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for pid, q in self.quality.items():
            p = self.participants.get(pid)
            if q.level is not None and p is not None and p.state != WAITING:
                counts[q.level.value] = counts.get(q.level.value, 0) + 1
        return counts

    def stats_for(self, p: Participant) -> dict[str, Any]:
        q = self.quality.get(p.id)
        if q is None:
            return {}
        tracks = q.details()
        for prod in p.producers.values():
            extra: dict[str, Any] = {"nacks_sent": prod.nacks_sent,
                                     "plis_sent": prod.plis_sent, "muted": prod.muted}
            if prod.is_video:
                extra.update(width=prod.width, height=prod.height)
            tracks.setdefault(f"{prod.track_id}:uplink", {}).update(extra)
        if p.subscriber is not None:
            for c in p.subscriber.consumers.values():
                if c.closed:
                    continue
                extra = {"nacks_received": c.nacks_received, "retransmitted": c.retransmitted,
                         "keyframe_requests": c.keyframe_requests, "paused": c.paused,
                         "layer": 0}  # one layer until simulcast lands
                if c.producer.is_video:
                    extra.update(width=c.producer.width, height=c.producer.height)
                tracks.setdefault(f"{c.producer.track_id}:downlink", {}).update(extra)
        return {"participant_id": p.id, "level": q.level.value if q.level else None,
                "score": None if q.score is None else round(q.score, 2), "tracks": tracks}

    def report(self) -> dict[str, Any]:
        """The session quality report: everyone who left, and everyone still here."""
        present = []
        for p in self.participants.values():
            q = self.quality.get(p.id)
            if q is not None and p.state != WAITING:
                present.append(dict(q.report(self.started), identity=p.identity, role=p.role,
                                    joined_at=int(p.joined_at), left_at=None))
        return {"room": self.name, "kind": self.kind, "created_at": int(self.created_at),
                "duration": round(time.monotonic() - self.started, 1),
                "participants": self.reports + present}

    def _rtcp_reports(self, now: float) -> None:
        """Every connection of the room whose RTCP report is due sends it."""
        for p in self.participants.values():
            if p.publisher is not None:
                p.publisher.rtcp_tick(now)
            if p.subscriber is not None:
                p.subscriber.rtcp_tick(now)

    async def tick(self, now: float) -> str | None:
        """One control step; returns a reason if the room should close."""
        if now - self._last_adapt >= ADAPT_INTERVAL:
            self._last_adapt = now
            await self._adapt_step(now)
        if now - self._last_quality >= QUALITY_INTERVAL:
            self._last_quality = now
            await self._quality_step(now)
            if self.recording is not None:
                self.recording.flush()  # bounds what a crash can lose to about a second
            # The report step, once a second: every connection's report together, right
            # after the quality step read the same statistics (see transport.RTCP_INTERVAL).
            # A fresh reading: the steps above may have yielded, and a report's DLSR (the
            # delay since the peer's last SR) goes straight into the peer's RTT.
            self._rtcp_reports(time.monotonic())
        update = self.speakers.tick(now)
        if update is not None:
            await self._tell_all({"type": "speakers_changed", "dominant": update.dominant,
                                  "speakers": [{"participant_id": k, "level": v}
                                               for k, v in update.speakers]})
        for p in list(self.participants.values()):
            if (p.state == DISCONNECTED and p.disconnected_at is not None
                    and now - p.disconnected_at > self.resume_grace):
                await self.remove(p, reason="disconnected")
        if now - self.started > self.max_duration:
            return "max_duration"
        if self.empty_since is not None and now - self.empty_since >= self.empty_timeout:
            return "empty"
        return None

    async def run(self, on_close: Any) -> None:
        # The loop's lag is measured on this task's timer: while rooms tick, the lag probe
        # needs no timer of its own. The worst of each tick's oversleep goes to the probe
        # once a second, with the quality step (a call into the metrics module at every
        # tick ran cold, ~1 % of a 1:1 call's CPU).
        probe = metrics.LAG_PROBE
        probe.reporter_started()
        worst = 0.0
        try:
            while not self.closed:
                slept_at = time.monotonic()
                await asyncio.sleep(TICK)
                now = time.monotonic()
                worst = max(worst, metrics.loop_lag(slept_at, now, TICK))
                reason = await self.tick(now)
                if self._last_quality == now:
                    probe.sample(worst, now)
                    worst = 0.0
                if reason is not None:
                    await on_close(self, reason)
                    return
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("room control task failed")
        finally:
            probe.reporter_stopped()


def _uses_dtx(producer: Producer) -> bool:
    """Opus with DTX sends nothing in silence: no packets is then not a lost link."""
    return producer.kind == "audio" and ("usedtx", "1") in producer.codec.parameters
