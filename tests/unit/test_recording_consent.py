"""Consent state machine: one table row per transition, plus invariants under random inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediaserver.recording.audit import AuditLog, verify_log
from mediaserver.recording.consent import ConsentState, RecordingPhase, Step
from mediaserver.recording.errors import RecordingError
from mediaserver.recording.errors import RecordingErrorCode as C

NOW = 1_700_000_000.0


def do(state: ConsentState, command: str, now: float = NOW) -> Step:
    """``"join a"``, ``"leave a"``, ``"request h"``, ``"yes a"``, ``"no a"``, ``"withdraw a"``,
    ``"stop h"``."""
    verb, who = command.split()
    if verb == "join":
        return state.participant_joined(who, now=now)
    if verb == "leave":
        return state.participant_left(who, now=now)
    if verb == "request":
        return state.request(who, now=now)
    if verb in ("yes", "no"):
        return state.answer(who, verb == "yes", now=now)
    if verb == "withdraw":
        return state.withdraw(who, now=now)
    assert verb == "stop"
    return state.stop(who, now=now)


def given_(*commands: str) -> ConsentState:
    state = ConsentState("sess-1")
    for command in commands:
        do(state, command)
    return state


# h is the host (therapist), a and b are clients, o a hidden observer (supervisor).
ROOM = ("join h", "join a", "join b")
WAITING = (*ROOM, "request h")
RECORDING = (*WAITING, "yes a", "yes b")
PAUSED = (*RECORDING, "withdraw a")
STOPPED = (*RECORDING, "stop h")

ID, W, R, P, S = (RecordingPhase.IDLE, RecordingPhase.WAITING, RecordingPhase.RECORDING,
                  RecordingPhase.PAUSED, RecordingPhase.STOPPED)
REQ, GRANT, DECL, WDRAW = ("consent_requested", "consent_granted", "consent_declined",
                           "consent_withdrawn")
START, PAUSE, RESUME, STOP = ("recording_started", "recording_paused", "recording_resumed",
                              "recording_stopped")

TRANSITIONS = [
    # (case, given, input, phase after, event names, whom to ask)
    ("idle: join", ("join h",), "join a", ID, [], []),
    ("idle: leave", ROOM, "leave a", ID, [], []),
    ("idle: leave unknown", ROOM, "leave zz", ID, [], []),
    ("idle: withdraw without consent", ROOM, "withdraw a", ID, [], []),
    ("idle: stop", ROOM, "stop h", ID, [], []),
    ("idle: request asks everyone else", ROOM, "request h", W, [GRANT, REQ, REQ], ["a", "b"]),
    ("idle: request alone records at once", ("join h",), "request h", R, [GRANT, START], []),
    ("waiting: first yes", WAITING, "yes a", W, [GRANT], []),
    ("waiting: last yes starts", (*WAITING, "yes a"), "yes b", R, [GRANT, START], []),
    ("waiting: yes twice", (*WAITING, "yes a"), "yes a", W, [], []),
    ("waiting: no", WAITING, "no a", W, [DECL], []),
    ("waiting: no twice", (*WAITING, "no a"), "no a", W, [], []),
    ("waiting: no then yes", (*WAITING, "no a", "yes b"), "yes a", R, [GRANT, START], []),
    ("waiting: yes then no", (*WAITING, "yes a"), "no a", W, [WDRAW], []),
    ("waiting: withdraw", (*WAITING, "yes a"), "withdraw a", W, [WDRAW], []),
    ("waiting: host withdraws", WAITING, "withdraw h", W, [WDRAW], []),
    ("waiting: someone joins", WAITING, "join c", W, [REQ], ["c"]),
    ("waiting: observer joins", (*WAITING, "yes a"), "join o", W, [REQ], ["o"]),
    ("waiting: pending one leaves", (*WAITING, "yes a"), "leave b", R, [START], []),
    ("waiting: decliner leaves", (*WAITING, "yes a", "no b"), "leave b", R, [START], []),
    ("waiting: consenter leaves", (*WAITING, "yes a"), "leave a", W, [], []),
    ("waiting: only consenters remain", (*WAITING, "leave a"), "leave b", R, [START], []),
    ("waiting: an empty room never records", (*WAITING, "withdraw h", "leave a", "leave b"),
     "leave h", W, [], []),
    ("waiting: asked again", (*WAITING, "yes a"), "request h", W, [REQ], ["b"]),
    ("waiting: stop cancels", WAITING, "stop h", S, [STOP], []),
    ("recording: no", RECORDING, "no a", P, [WDRAW, PAUSE], []),
    ("recording: withdraw", RECORDING, "withdraw b", P, [WDRAW, PAUSE], []),
    ("recording: host withdraws", RECORDING, "withdraw h", P, [WDRAW, PAUSE], []),
    ("recording: withdraw after leaving", (*RECORDING, "leave a"), "withdraw a", R, [WDRAW], []),
    ("recording: newcomer", RECORDING, "join c", P, [PAUSE, REQ], ["c"]),
    ("recording: hidden observer", RECORDING, "join o", P, [PAUSE, REQ], ["o"]),
    ("recording: rejoin keeps consent", (*RECORDING, "leave a"), "join a", R, [], []),
    ("recording: join twice", RECORDING, "join a", R, [], []),
    ("recording: leave", RECORDING, "leave b", R, [], []),
    ("recording: yes again", RECORDING, "yes a", R, [], []),
    ("recording: request again", RECORDING, "request h", R, [], []),
    ("recording: stop", RECORDING, "stop h", S, [STOP], []),
    ("recording: room empties", (*RECORDING, "leave a", "leave b"), "leave h", R, [], []),
    ("paused: yes again resumes", PAUSED, "yes a", R, [GRANT, RESUME], []),
    ("paused: withdrawer leaves", PAUSED, "leave a", R, [RESUME], []),
    ("paused: newcomer says yes", (*RECORDING, "join c"), "yes c", R, [GRANT, RESUME], []),
    ("paused: newcomer says no", (*RECORDING, "join c"), "no c", P, [DECL], []),
    ("paused: newcomer leaves", (*RECORDING, "join c"), "leave c", R, [RESUME], []),
    ("paused: one of two yes", (*PAUSED, "withdraw b"), "yes a", P, [GRANT], []),
    ("paused: second withdrawal", PAUSED, "withdraw b", P, [WDRAW], []),
    ("paused: consenter leaves", PAUSED, "leave b", P, [], []),
    ("paused: someone joins", PAUSED, "join c", P, [REQ], ["c"]),
    ("paused: asked again", PAUSED, "request h", P, [REQ], ["a"]),
    ("paused: stop", PAUSED, "stop h", S, [STOP], []),
    ("paused: withdrawer rejoins", (*PAUSED, "join c", "leave a"), "join a", P, [REQ], ["a"]),
    ("paused: empty room", (*PAUSED, "leave b", "leave h"), "leave a", P, [], []),
    ("stopped: withdraw is still logged", STOPPED, "withdraw a", S, [WDRAW], []),
    ("stopped: withdraw twice", (*STOPPED, "withdraw a"), "withdraw a", S, [], []),
    ("stopped: stop again", STOPPED, "stop h", S, [], []),
    ("stopped: join", STOPPED, "join c", S, [], []),
    ("stopped: new request asks everyone afresh", STOPPED, "request h", W, [GRANT, REQ, REQ],
     ["a", "b"]),
    ("stopped: another may request", STOPPED, "request a", W, [GRANT, REQ, REQ], ["h", "b"]),
]


@pytest.mark.parametrize(("case", "before", "command", "phase", "events", "ask"), TRANSITIONS,
                         ids=[row[0] for row in TRANSITIONS])
def test_transition(case: str, before: tuple[str, ...], command: str, phase: RecordingPhase,
                    events: list[str], ask: list[str]) -> None:
    state = given_(*before)
    step = do(state, command, now=NOW + 60)
    assert (state.recording, step.names, step.ask) == (phase, events, ask)
    assert all(e.time == NOW + 60 for e in step.events)
    if state.recording is R:
        assert not state.pending


@pytest.mark.parametrize(("before", "command", "code"), [
    (ROOM, "yes a", C.CONSENT_NOT_REQUESTED),
    (ROOM, "no a", C.CONSENT_NOT_REQUESTED),
    (STOPPED, "yes a", C.CONSENT_NOT_REQUESTED),
    (ROOM, "request zz", C.CONSENT_NOT_PRESENT),
    (STOPPED, "request zz", C.CONSENT_NOT_PRESENT),
    (WAITING, "yes zz", C.CONSENT_NOT_PRESENT),
    ((*RECORDING, "leave a"), "no a", C.CONSENT_NOT_PRESENT),
])
def test_refused_inputs_change_nothing(before: tuple[str, ...], command: str, code: C) -> None:
    state = given_(*before)
    snapshot = (state.recording, state.present, state.consented, state.declined)
    with pytest.raises(RecordingError) as err:
        do(state, command)
    assert err.value.code is code
    assert (state.recording, state.present, state.consented, state.declined) == snapshot


def test_event_contents() -> None:
    state = given_(*ROOM)
    step = state.request("h", now=NOW)
    assert [(e.participant, e.details) for e in step.events] == [
        ("h", {"via": "request"}), ("a", {"by": "h"}), ("b", {"by": "h"})]
    state.answer("a", True, now=NOW + 1)
    started = state.answer("b", True, now=NOW + 2).events[-1]
    assert (started.event, started.participant, started.details, started.time) == (
        "recording_started", None, {"present": ["a", "b", "h"]}, NOW + 2)
    joined = state.participant_joined("o", now=NOW + 3).events
    assert [(e.participant, e.details) for e in joined] == [
        ("o", {"reason": "joined"}), ("o", {"by": "h"})]
    withdrawn = state.withdraw("a", now=NOW + 4).events
    assert [(e.event, e.details) for e in withdrawn] == [("consent_withdrawn", {"phase": "paused"})]
    stopped = state.stop("h", now=NOW + 5).events[0]
    assert (stopped.participant, stopped.details) == ("h", {"was": "paused"})
    assert state.declined == {"a"} and state.pending == ["a", "o"]


def test_a_session_written_to_the_audit_log_verifies(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    state = ConsentState("sess-9")
    script = [*ROOM, "request h", "no b", "yes a", "yes b", "join o", "yes o", "withdraw a",
              "leave a", "stop h"]
    names = []
    for i, command in enumerate(script):
        for e in do(state, command, now=NOW + i).events:
            log.append(e.event, session_id=state.session_id, participant=e.participant,
                       details=e.details, now=e.time)
            names.append(e.event.value)
    assert set(names) == {REQ, GRANT, DECL, WDRAW, START, PAUSE, RESUME, STOP}
    result = verify_log(tmp_path / "audit.log")
    assert result.ok and result.entries == len(names)


PEOPLE = ["h", "a", "b", "o"]
COMMANDS = st.tuples(st.sampled_from(["join", "leave", "request", "yes", "no", "withdraw",
                                      "stop"]), st.sampled_from(PEOPLE))


@settings(max_examples=200, deadline=None)
@given(st.lists(COMMANDS, max_size=40))
def test_never_records_without_everyone_present_consenting(
        commands: list[tuple[str, str]]) -> None:
    state = ConsentState("s")
    recording = False
    for verb, who in commands:
        try:
            step = do(state, f"{verb} {who}")
        except RecordingError as err:
            assert err.code in (C.CONSENT_NOT_PRESENT, C.CONSENT_NOT_REQUESTED)
            continue
        for name in step.names:  # the events alone tell whether media may be written
            if name in (START, RESUME):
                assert not recording
                recording = True
            elif name in (PAUSE, STOP):
                recording = False
        assert recording == (state.recording is R)
        if state.recording is R:
            assert set(state.present) <= state.consented
        if state.recording in (W, P) and state.present:
            assert state.pending  # otherwise it should have started or resumed
