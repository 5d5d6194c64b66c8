"""A room's recording: consent decides, the recorder writes, the audit log remembers.

``ConsentState`` (pure) says when recording may run; this controller turns each of its
steps into audit-log entries and into the recording session's state: started when
everyone present has said yes, paused at once when someone has not (a no, a withdrawal,
a newcomer), resumed when everyone has again, closed when a host stops. Recorder taps hang
off the producers: while paused they write nothing.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mediaserver.recording.audit import AuditLog
from mediaserver.recording.consent import ConsentState, RecordingPhase, Step
from mediaserver.recording.errors import RecordingError
from mediaserver.recording.keys import KeyRing
from mediaserver.recording.recorder import RecordingSession
from mediaserver.sfu.producer import Producer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordingSettings:
    directory: Path
    keyring: KeyRing

    @property
    def audit_path(self) -> Path:
        return self.directory / "audit.log"


class RoomRecording:
    def __init__(self, room: str, settings: RecordingSettings,
                 identity_of: Callable[[str], str | None] = lambda pid: pid) -> None:
        self.room = room
        self.identity_of = identity_of  # audit entries name people by identity
        self.settings = settings
        self.consent = ConsentState(f"{room}-{secrets.token_hex(4)}")
        self.audit = AuditLog(settings.audit_path)
        self.session: RecordingSession | None = None
        self.recordings: list[str] = []
        self._producers: dict[str, tuple[Producer, str]] = {}

    @property
    def phase(self) -> RecordingPhase:
        return self.consent.recording

    def state(self) -> dict[str, Any]:
        return {"state": self.phase.value, "pending": self.consent.pending,
                "recording_id": self.session.recording_id if self.session else None}

    def apply(self, step: Step, now: float) -> Step:
        """Write the step's events to the audit log and bring the recorder in line."""
        for event in step.events:
            who = event.participant
            self.audit.append(event.event.value, session_id=self.consent.session_id,
                              participant=self.identity_of(who) if who else None,
                              details=event.details, now=time.time())
        phase = self.phase
        if phase is RecordingPhase.RECORDING:
            if self.session is None:
                self._start(now)
            elif self.session.paused:
                self.session.resume(now)
        elif phase in (RecordingPhase.PAUSED, RecordingPhase.WAITING):
            if self.session is not None:
                self.session.pause(now)
        elif self.session is not None:  # stopped (or idle after a stop)
            self._close(now)
        return step

    def _start(self, now: float) -> None:
        # No room name in it: recording ids show up in file names and operators' logs.
        rid = f"rec-{int(time.time())}-{secrets.token_hex(4)}"
        # Keys in separate files, so that deleting them shreds the recording (retention.py).
        self.session = RecordingSession(self.settings.directory, self.settings.keyring, rid,
                                        now=now, wall_time=time.time(), detached_keys=True)
        self.recordings.append(rid)
        for producer, identity in list(self._producers.values()):
            self._attach(producer, identity, now)
        log.info("recording started room_recording=%s tracks=%d", rid, len(self._producers))

    def _attach(self, producer: Producer, identity: str, now: float) -> None:
        session = self.session
        if session is None or producer.track_id in session.tracks:
            return
        try:
            recorder = session.add_track(
                producer.track_id, kind=producer.kind, codec_name=producer.codec.name,
                clock_rate=producer.codec.clock_rate, participant=identity, now=now,
                channels=producer.codec.channels or 2, source=producer.source)
        except RecordingError as exc:
            # E.g. an H.264 camera: the call goes on, that track is not recorded.
            log.warning("track not recorded (%s): %s", exc.code, exc.message)
            return
        producer.taps.append(recorder)
        producer.request_keyframe(now)

    def _close(self, now: float) -> None:
        session, self.session = self.session, None
        if session is None:
            return
        for producer, _ in self._producers.values():
            producer.taps[:] = [t for t in producer.taps if t not in session.tracks.values()]
        session.close(now)
        log.info("recording closed room_recording=%s", session.recording_id)

    def producer_added(self, producer: Producer, identity: str, now: float) -> None:
        self._producers[producer.track_id] = (producer, identity)
        self._attach(producer, identity, now)

    def producer_removed(self, producer: Producer) -> None:
        self._producers.pop(producer.track_id, None)
        if self.session is not None:
            recorder = self.session.tracks.get(producer.track_id)
            if recorder in producer.taps:
                producer.taps.remove(recorder)

    def flush(self) -> None:
        if self.session is not None:
            self.session.flush()

    def close(self, now: float) -> None:
        if self.session is not None:
            self.apply(self.consent.stop("server", now=now), now)
            self._close(now)
