"""Consent to record a session, as a pure state machine (inputs with ``now`` in, events out).

Rules (docs/recording.md): media is recorded only while every person present, hidden
observers included, has said yes. A no, a withdrawal, or someone joining who has not said yes
pauses the recording at once; it resumes when everyone present has consented again, which a
person leaving can bring about. The host may stop at any time. Asking for a recording counts as
the asker's own yes. Consent belongs to one request round: it survives leaving and rejoining,
and a new request after a stop asks everyone afresh.

Participants are identities (stable across reconnects), never display names. The caller
checks who may request or stop (the ``record`` grant), sends the prompts listed in
``Step.ask``, writes ``Step.events`` to the audit log, and starts or pauses the media tap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from mediaserver.recording.errors import RecordingError, RecordingErrorCode
from mediaserver.recording.events import AuditEvent


class RecordingPhase(StrEnum):
    IDLE = "idle"  # nobody has asked to record
    WAITING = "waiting_consent"  # asked; not everyone present has said yes yet
    RECORDING = "recording"
    PAUSED = "paused"  # was recording; someone present has not (or no longer) said yes
    STOPPED = "stopped"  # the host ended it; a new request starts a new round


_ACTIVE = (RecordingPhase.WAITING, RecordingPhase.RECORDING, RecordingPhase.PAUSED)


@dataclass(frozen=True)
class ConsentEvent:
    """One audit log entry to write: ``participant`` is who it concerns (or who acted)."""

    event: AuditEvent
    participant: str | None
    details: dict[str, Any]
    time: float


@dataclass(frozen=True)
class Step:
    """What one input caused: events in order, and whom the caller must now ask to consent."""

    events: list[ConsentEvent] = field(default_factory=list)
    ask: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [e.event.value for e in self.events]


class ConsentState:
    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self._phase = RecordingPhase.IDLE
        self._present: dict[str, None] = {}  # insertion-ordered set: prompts go out in join order
        self._consented: set[str] = set()
        self._declined: set[str] = set()
        self._requested_by: str | None = None

    @property
    def recording(self) -> RecordingPhase:
        return self._phase

    @property
    def present(self) -> list[str]:
        return list(self._present)

    @property
    def consented(self) -> frozenset[str]:
        """Who has said yes in this round (also after a stop, until the next request)."""
        return frozenset(self._consented)

    @property
    def pending(self) -> list[str]:
        """Present participants without a yes: while any exist, nothing is recorded."""
        return [p for p in self._present if p not in self._consented]

    @property
    def declined(self) -> frozenset[str]:
        return frozenset(self._declined)

    # Inputs

    @property
    def requested_by(self) -> str | None:
        """Who asked to record in the current round."""
        return self._requested_by

    def participant_joined(self, pid: str, *, now: float) -> Step:
        if pid in self._present:
            return Step()
        self._present[pid] = None
        if self._phase not in _ACTIVE or pid in self._consented:
            return Step(self._settle(now))
        events = self._pause(pid, "joined", now)
        events.append(self._event(AuditEvent.CONSENT_REQUESTED, pid, now,
                                  by=self._requested_by))
        return Step(events, [pid])

    def participant_left(self, pid: str, *, now: float) -> Step:
        if pid not in self._present:
            return Step()
        del self._present[pid]
        return Step(self._settle(now))

    def request(self, by: str, *, now: float) -> Step:
        """``by`` asks to record; returns the prompts to send. Repeating it re-asks the pending."""
        self._require_present(by)
        if self._phase not in _ACTIVE:
            self._phase, self._requested_by = RecordingPhase.WAITING, by
            self._consented.clear()
            self._declined.clear()
        events = []
        if by not in self._consented:
            self._consented.add(by)
            self._declined.discard(by)
            events.append(self._event(AuditEvent.CONSENT_GRANTED, by, now, via="request"))
        ask = self.pending
        events += [self._event(AuditEvent.CONSENT_REQUESTED, p, now, by=by) for p in ask]
        return Step(events + self._settle(now), ask)

    def answer(self, pid: str, yes: bool, *, now: float) -> Step:
        if self._phase not in _ACTIVE:
            raise RecordingError(RecordingErrorCode.CONSENT_NOT_REQUESTED,
                                 f"no recording is being requested ({self._phase})")
        self._require_present(pid)
        if not yes:
            return self._refuse(pid, now, withdrawn=pid in self._consented)
        if pid in self._consented:
            return Step()
        self._consented.add(pid)
        self._declined.discard(pid)
        return Step([self._event(AuditEvent.CONSENT_GRANTED, pid, now), *self._settle(now)])

    def withdraw(self, pid: str, *, now: float) -> Step:
        """Take back a yes, at any moment; logged even if ``pid`` has left or after a stop.

        Only a present participant's withdrawal pauses: whoever has left is not being recorded.
        """
        if pid not in self._consented:
            return Step()
        return self._refuse(pid, now, withdrawn=True)

    def stop(self, by: str, *, now: float) -> Step:
        if self._phase not in _ACTIVE:
            return Step()
        was, self._phase = self._phase, RecordingPhase.STOPPED
        return Step([self._event(AuditEvent.RECORDING_STOPPED, by, now, was=was.value)])

    # Helpers

    def _refuse(self, pid: str, now: float, *, withdrawn: bool) -> Step:
        if not withdrawn and pid in self._declined:
            return Step()
        self._consented.discard(pid)
        self._declined.add(pid)
        name = AuditEvent.CONSENT_WITHDRAWN if withdrawn else AuditEvent.CONSENT_DECLINED
        details = {"phase": self._phase.value} if withdrawn else {}
        event = ConsentEvent(name, pid, details, now)
        return Step([event, *self._pause(pid, name.removeprefix("consent_"), now)])

    def _pause(self, pid: str, reason: str, now: float) -> list[ConsentEvent]:
        if self._phase is not RecordingPhase.RECORDING or pid not in self._present:
            return []
        self._phase = RecordingPhase.PAUSED
        return [self._event(AuditEvent.RECORDING_PAUSED, pid, now, reason=reason)]

    def _settle(self, now: float) -> list[ConsentEvent]:
        """Start or resume once everyone present (at least one person) has said yes."""
        if self._phase not in (RecordingPhase.WAITING, RecordingPhase.PAUSED) or self.pending \
                or not self._present:
            return []
        name = (AuditEvent.RECORDING_STARTED if self._phase is RecordingPhase.WAITING
                else AuditEvent.RECORDING_RESUMED)
        self._phase = RecordingPhase.RECORDING
        return [self._event(name, None, now, present=sorted(self._present))]

    def _event(self, name: AuditEvent, pid: str | None, now: float, **details: Any) -> ConsentEvent:
        return ConsentEvent(name, pid, details, now)

    def _require_present(self, pid: str) -> None:
        if pid not in self._present:
            raise RecordingError(RecordingErrorCode.CONSENT_NOT_PRESENT,
                                 f"{pid!r} is not in session {self.session_id!r}")
