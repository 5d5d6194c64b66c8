"""The consent audit log: chaining, reopening, and every kind of tampering found at its line."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mediaserver.recording.audit import (
    FIELDS,
    GENESIS,
    AuditLog,
    VerifyResult,
    canonical,
    verify_lines,
    verify_log,
)
from mediaserver.recording.errors import RecordingError
from mediaserver.recording.errors import RecordingErrorCode as C
from mediaserver.recording.events import AuditEvent

T0 = 1_700_000_000.0
EVENTS = [e.value for e in AuditEvent]  # all eight, in a plausible order


def write_chain(path: Path, n: int = 8) -> list[dict[str, Any]]:
    log = AuditLog(path)
    return [log.append(EVENTS[i % 8], session_id="sess-1",
                       participant=None if i % 3 == 2 else f"user-{i % 2}",
                       details={"i": i, "by": "host-1"}, now=T0 + i * 1.5) for i in range(n)]


@pytest.fixture
def chain(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    path = tmp_path / "consent.audit.jsonl"
    return path, write_chain(path)


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def rewrite(path: Path, lines: list[bytes]) -> VerifyResult:
    path.write_bytes(b"".join(lines))
    return verify_log(path)


def test_a_chain_of_eight_verifies(chain: tuple[Path, list[dict[str, Any]]]) -> None:
    path, entries = chain
    assert verify_log(path) == VerifyResult(True, 8, None, None, entries[-1]["hash"])
    prev = GENESIS
    for number, (raw, entry) in enumerate(zip(lines_of(path), entries, strict=True), start=1):
        parsed = json.loads(raw)
        assert parsed == entry and set(parsed) == FIELDS
        assert raw == canonical(entry) + b"\n"
        body = {k: v for k, v in entry.items() if k != "hash"}
        assert entry["hash"] == hashlib.sha256(canonical(body)).hexdigest()
        assert (entry["seq"], entry["prev"]) == (number, prev)
        prev = entry["hash"]
    assert [e["event"] for e in entries] == EVENTS
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_reopening_continues_the_chain(chain: tuple[Path, list[dict[str, Any]]]) -> None:
    path, entries = chain
    log = AuditLog(path)
    assert log.head == (8, entries[-1]["hash"])
    entry = log.append("consent_withdrawn", session_id="sess-1", participant="user-1",
                       details={}, now=T0 + 100)
    assert (entry["seq"], entry["prev"]) == (9, entries[-1]["hash"])
    assert verify_log(path).ok and verify_log(path).entries == 9


def test_every_append_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    log = AuditLog(tmp_path / "a.log")
    log.append("consent_requested", session_id="s", participant="u", details={}, now=T0)
    first = len(synced)  # the file and, as it was created, its directory
    log.append("consent_granted", session_id="s", participant="u", details={}, now=T0)
    assert first == 2 and len(synced) == 3


FIELD_EDITS: dict[str, Callable[[Any], Any]] = {
    "seq": lambda v: v + 1,
    "time": lambda v: v + 0.5,
    "event": lambda v: "consent_granted" if v != "consent_granted" else "consent_declined",
    "session_id": lambda v: v + "x",
    "participant": lambda v: "someone-else" if v != "someone-else" else None,
    "details": lambda v: {**v, "i": -1},
    "prev": lambda v: "f" * 64 if v != "f" * 64 else GENESIS,
    "hash": lambda v: "0" + v[1:] if v[0] != "0" else "1" + v[1:],
}


@pytest.mark.parametrize("field", sorted(FIELD_EDITS))
@pytest.mark.parametrize("index", range(8))
def test_editing_any_field_of_any_line_is_found_at_that_line(
        chain: tuple[Path, list[dict[str, Any]]], field: str, index: int) -> None:
    path, entries = chain
    lines = lines_of(path)
    edited = dict(entries[index])
    edited[field] = FIELD_EDITS[field](edited[field])
    lines[index] = canonical(edited) + b"\n"
    result = rewrite(path, lines)
    assert (result.ok, result.line, result.entries) == (False, index + 1, index)
    assert result.error is not None and result.error.startswith(f"line {index + 1}: ")


def _delete(i: int) -> Callable[[list[bytes]], list[bytes]]:
    return lambda lines: lines[:i] + lines[i + 1:]


def _swap(i: int) -> Callable[[list[bytes]], list[bytes]]:
    return lambda lines: [*lines[:i], lines[i + 1], lines[i], *lines[i + 2:]]


@pytest.mark.parametrize(("tamper", "line", "message"), [
    (_delete(0), 1, "prev does not match"),
    (_delete(3), 4, "prev does not match"),
    (_delete(6), 7, "prev does not match"),
    (_swap(0), 1, "prev does not match"),
    (_swap(4), 5, "prev does not match"),
    (_swap(6), 7, "prev does not match"),
    (lambda ls: [*ls[:3], ls[2], *ls[3:]], 4, "prev does not match"),  # a line duplicated
    (lambda ls: [*ls[:-1], ls[-1][:-1]], 8, "incomplete last line"),  # only the newline lost
    (lambda ls: [*ls[:-1], ls[-1][:40]], 8, "incomplete last line"),
    (lambda ls: [*ls[:2], ls[2].replace(b",", b", ", 1), *ls[3:]], 3, "canonical"),
    (lambda ls: [*ls[:5], b"\n", *ls[5:]], 6, "not a JSON object"),
    (lambda ls: [*ls[:5], b"[1,2]\n", *ls[5:]], 6, "not an audit entry"),
    (lambda ls: [*ls[:1], b"\xff\xfe\n", *ls[1:]], 2, "not a JSON object"),
], ids=["delete-first", "delete-middle", "delete-next-to-last", "swap-first", "swap-middle",
        "swap-last-two", "duplicate", "truncate-newline", "truncate-line", "whitespace",
        "blank-line", "not-an-entry", "binary"])
def test_tampering_is_found_at_its_line(chain: tuple[Path, list[dict[str, Any]]],
                                        tamper: Callable[[list[bytes]], list[bytes]],
                                        line: int, message: str) -> None:
    path, _ = chain
    result = rewrite(path, tamper(lines_of(path)))
    assert (result.ok, result.line, result.entries) == (False, line, line - 1)
    assert message in (result.error or "")


def test_a_rehashed_edit_is_found_at_the_next_line(
        chain: tuple[Path, list[dict[str, Any]]]) -> None:
    path, entries = chain
    lines = lines_of(path)
    forged = {k: v for k, v in entries[2].items() if k != "hash"}
    forged["event"] = "consent_granted"
    forged["hash"] = hashlib.sha256(canonical(forged)).hexdigest()
    lines[2] = canonical(forged) + b"\n"
    result = rewrite(path, lines)
    assert (result.line, result.entries) == (4, 3)


def test_cut_off_newest_lines_are_found_with_an_anchor(
        chain: tuple[Path, list[dict[str, Any]]]) -> None:
    path, entries = chain
    anchor = entries[-1]["hash"]
    assert verify_log(path, anchor=anchor).ok
    assert verify_log(path, anchor=entries[3]["hash"]).ok  # the log may grow past its anchor
    result = rewrite(path, lines_of(path)[:-1])
    assert result.ok and result.entries == 7  # without an anchor a shorter log looks fine
    anchored = verify_log(path, anchor=anchor)
    assert (anchored.ok, anchored.entries, anchored.line) == (False, 7, None)
    assert "anchored entry is missing" in (anchored.error or "")


def test_empty_and_missing_logs(tmp_path: Path) -> None:
    assert verify_lines([]) == VerifyResult(True, 0)
    missing = verify_log(tmp_path / "nope.log")
    assert not missing.ok and "cannot read" in (missing.error or "")
    (tmp_path / "empty.log").touch()
    log = AuditLog(tmp_path / "empty.log")
    assert log.head == (0, GENESIS)


def test_refuses_to_extend_a_broken_log(chain: tuple[Path, list[dict[str, Any]]]) -> None:
    path, _ = chain
    rewrite(path, [*lines_of(path)[:-1], lines_of(path)[-1][:30]])
    with pytest.raises(RecordingError) as err:
        AuditLog(path)
    assert err.value.code is C.AUDIT_LOG_CORRUPT and "line 8" in err.value.message


def test_a_failed_write_stops_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = AuditLog(tmp_path / "a.log")
    log.append("consent_requested", session_id="s", participant="u", details={}, now=T0)

    def full_disk(fd: int, data: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError):
        log.append("consent_granted", session_id="s", participant="u", details={}, now=T0)
    monkeypatch.undo()
    with pytest.raises(RecordingError) as err:
        log.append("consent_granted", session_id="s", participant="u", details={}, now=T0)
    assert err.value.code is C.AUDIT_LOG_CORRUPT


JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJl"


@pytest.mark.parametrize(("kwargs", "code"), [
    ({"event": "recording_deleted"}, C.AUDIT_UNKNOWN_EVENT),
    ({"session_id": ""}, C.AUDIT_BAD_ENTRY),
    ({"participant": ""}, C.AUDIT_BAD_ENTRY),
    ({"participant": JWT}, C.AUDIT_BAD_ENTRY),
    ({"details": {"token": JWT}}, C.AUDIT_BAD_ENTRY),
    ({"details": {"at": {1, 2}}}, C.AUDIT_BAD_ENTRY),
    ({"details": {"x": float("nan")}}, C.AUDIT_BAD_ENTRY),
    ({"now": float("inf")}, C.AUDIT_BAD_ENTRY),
])
def test_bad_entries_are_refused_and_nothing_is_written(
        tmp_path: Path, kwargs: dict[str, Any], code: C) -> None:
    path = tmp_path / "a.log"
    log = AuditLog(path)
    args: dict[str, Any] = {"event": "consent_granted", "session_id": "s", "participant": "u",
                            "details": {}, "now": T0, **kwargs}
    with pytest.raises(RecordingError) as err:
        log.append(args.pop("event"), **args)
    assert err.value.code is code and JWT not in err.value.message
    assert not path.exists() and log.head == (0, GENESIS)


def test_writers_sharing_a_log_keep_one_chain(tmp_path: Path) -> None:
    """Two rooms of a node (or two worker processes) each hold their own AuditLog."""
    path = tmp_path / "audit.log"
    first, second = AuditLog(path), AuditLog(path)
    order = [first, second, second, first, second, first, first]
    entries = [log.append(EVENTS[i], session_id=f"sess-{id(log) % 7}", participant="u",
                          details={"i": i}, now=T0 + i) for i, log in enumerate(order)]
    assert [e["seq"] for e in entries] == list(range(1, 8))
    assert verify_log(path).ok and verify_log(path).entries == 7
    late = AuditLog(path)  # opened now, appends after whatever came since
    first.append(EVENTS[0], session_id="s", participant="u", details={}, now=T0 + 9)
    assert late.append(EVENTS[1], session_id="s", participant="u", details={},
                       now=T0 + 10)["seq"] == 9
    assert verify_log(path).entries == 9


def test_a_torn_line_left_by_another_writer_is_not_extended(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    log.append(EVENTS[0], session_id="s", participant="u", details={}, now=T0)
    with open(path, "ab") as f:
        f.write(b'{"seq":2,"ti')  # a writer that died mid-line
    with pytest.raises(RecordingError) as err:
        log.append(EVENTS[1], session_id="s", participant="u", details={}, now=T0)
    assert err.value.code is C.AUDIT_LOG_CORRUPT and "last line" in err.value.message


WRITER = """
import sys
from mediaserver.recording.audit import AuditLog
log = AuditLog(sys.argv[1])
for i in range(25):
    log.append("consent_granted", session_id=sys.argv[2], participant="u", details={"i": i},
               now=1.0 + i)
"""


def test_processes_appending_at_once_keep_one_chain(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "audit.log"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"worker-{n}"])
             for n in range(3)]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    result = verify_log(path)
    assert (result.ok, result.entries) == (True, 75), result
