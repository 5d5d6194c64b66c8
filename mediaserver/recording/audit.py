"""Append-only, hash-chained audit log of consent events (one canonical JSON object per line).

Each entry's ``hash`` is SHA-256 over the canonical JSON of the entry without ``hash``; its
``prev`` is the previous entry's ``hash`` (``GENESIS`` for the first). Because every line must be
exactly the canonical form of its entry, the hash pins the line byte for byte: an edited,
deleted, inserted or reordered line breaks the chain at a line number ``verify_log`` reports.

Anyone who can rewrite the whole file can also recompute the chain; to catch that (or the
removal of the newest lines) compare the head hash with one kept elsewhere (``anchor``).
Writers take turns through a file lock, so any number of them (rooms, worker processes) may
append to one log; each entry is fsynced before ``append`` returns.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mediaserver.recording.errors import RecordingError, RecordingErrorCode
from mediaserver.recording.events import AuditEvent

GENESIS = "0" * 64
FIELDS = frozenset({"seq", "time", "event", "session_id", "participant", "details", "prev", "hash"})
_EVENTS = frozenset(e.value for e in AuditEvent)
_HASH_RE = re.compile(r"[0-9a-f]{64}")
_TOKEN_RE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.")  # a JWT's header and body


def canonical(obj: Any) -> bytes:
    """Sorted keys, no spaces, ASCII only, no NaN: one byte string per value."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def make_entry(*, seq: int, prev: str, event: str, session_id: str, participant: str | None,
               details: dict[str, Any], now: float) -> dict[str, Any]:
    """The next entry of a chain (pure); raises ``RecordingError`` for a bad event or field."""
    if event not in _EVENTS:
        raise RecordingError(RecordingErrorCode.AUDIT_UNKNOWN_EVENT,
                             f"unknown audit event {event!r}")
    if not isinstance(session_id, str) or not session_id:
        raise RecordingError(RecordingErrorCode.AUDIT_BAD_ENTRY, "session_id must be a string")
    if participant is not None and (not isinstance(participant, str) or not participant):
        raise RecordingError(RecordingErrorCode.AUDIT_BAD_ENTRY,
                             "participant must be an identity string or None")
    if not isinstance(details, dict) or not isinstance(now, int | float) or not math.isfinite(now):
        raise RecordingError(RecordingErrorCode.AUDIT_BAD_ENTRY,
                             "details must be a dict and now a finite number")
    entry: dict[str, Any] = {"seq": seq, "time": now, "event": event, "session_id": session_id,
                             "participant": participant, "details": details, "prev": prev}
    try:
        text = canonical(entry)
    except (TypeError, ValueError) as exc:
        raise RecordingError(RecordingErrorCode.AUDIT_BAD_ENTRY,
                             f"details must be plain JSON: {exc}") from None
    if _TOKEN_RE.search(text.decode()):
        raise RecordingError(RecordingErrorCode.AUDIT_BAD_ENTRY,
                             "entry holds what looks like an access token; log identities only")
    entry["hash"] = hashlib.sha256(text).hexdigest()
    return entry


@dataclass(frozen=True)
class VerifyResult:
    """``entries``: how many lines verified; ``line``: the 1-based line that failed."""

    ok: bool
    entries: int
    error: str | None = None
    line: int | None = None
    head: str = GENESIS  # hash of the last verified entry


def _check_line(number: int, raw: bytes, prev: str) -> tuple[str | None, str]:
    """(error or None, this entry's hash)."""
    if not raw.endswith(b"\n"):
        return "incomplete last line: the log was cut off", prev
    try:
        entry = json.loads(raw)
    except (ValueError, RecursionError):
        return "not a JSON object", prev
    if not isinstance(entry, dict) or set(entry) != FIELDS:
        return "not an audit entry (fields missing or extra)", prev
    try:
        is_canonical = canonical(entry) + b"\n" == raw
    except (ValueError, RecursionError):
        is_canonical = False
    if not is_canonical:
        return "not in canonical form: the line was edited", prev
    own = entry["hash"]
    if not isinstance(own, str) or own != entry_hash(entry):
        return "hash does not match the entry: the line was edited", prev
    if entry["prev"] != prev:
        return ("prev does not match the hash of the line before: a line was deleted, inserted "
                "or moved"), prev
    if type(entry["seq"]) is not int or entry["seq"] != number:
        return f"seq is {entry['seq']!r}, expected {number}", prev
    if entry["event"] not in _EVENTS:
        return f"unknown event {entry['event']!r}", prev
    return None, own


def verify_lines(lines: Iterable[bytes], *, anchor: str | None = None) -> VerifyResult:
    """Check a chain given as raw lines (each with its newline); see the module docstring.

    ``anchor``, a head hash saved earlier, must be the hash of some entry: otherwise newer
    lines were cut off or the log was rewritten.
    """
    prev, count, seen_anchor = GENESIS, 0, anchor is None or anchor == GENESIS
    for number, raw in enumerate(lines, start=1):
        error, prev_next = _check_line(number, raw, prev)
        if error is not None:
            return VerifyResult(False, count, f"line {number}: {error}", number, prev)
        prev, count = prev_next, number
        seen_anchor = seen_anchor or prev == anchor
    if not seen_anchor:
        return VerifyResult(False, count, "the anchored entry is missing: the log was truncated "
                                          "or rewritten", None, prev)
    return VerifyResult(True, count, None, None, prev)


def verify_log(path: str | os.PathLike[str], *, anchor: str | None = None) -> VerifyResult:
    try:
        with open(path, "rb") as f:
            return verify_lines(f, anchor=anchor)
    except OSError as exc:
        return VerifyResult(False, 0, f"cannot read {path}: {exc.strerror}", None)


class AuditLog:
    """Appends entries to ``path``, continuing the chain of an existing log.

    Refuses to open a log that does not verify (extending a broken chain would bury the
    damage), and stops accepting entries after a failed write for the same reason.

    Several writers may share one log: every room of a node has its own ``AuditLog``, and a
    node of several worker processes has several of those. Each append holds an exclusive
    lock on the file and, when the file is not as this writer left it, continues from the
    entry at its end, so the chain stays one chain.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._seq, self._head, self._broken = 0, GENESIS, False
        self._size = -1  # the file's size after our last append; -1: read its end first
        if self.path.exists():
            result = verify_log(self.path)
            if not result.ok:
                raise RecordingError(RecordingErrorCode.AUDIT_LOG_CORRUPT,
                                     f"{self.path}: {result.error}; not extending a broken log")
            self._seq, self._head = result.entries, result.head

    @property
    def head(self) -> tuple[int, str]:
        """(entries, hash of the newest) as of this writer's last look: anchor it elsewhere."""
        return self._seq, self._head

    def append(self, event: str, *, session_id: str, participant: str | None,
               details: dict[str, Any], now: float) -> dict[str, Any]:
        if self._broken:
            raise RecordingError(RecordingErrorCode.AUDIT_LOG_CORRUPT,
                                 f"{self.path}: an earlier write failed; open the log again")
        fields: dict[str, Any] = {"event": event, "session_id": session_id,
                                  "participant": participant, "details": details, "now": now}
        entry = make_entry(seq=self._seq + 1, prev=self._head, **fields)  # a bad one: no file
        created = not self.path.exists()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError:
            self._broken = True
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by the close below
            size = os.fstat(fd).st_size
            if size != self._size:  # another writer appended since: continue after it
                self._seq, self._head = _last_entry(fd, size, self.path)
                entry = make_entry(seq=self._seq + 1, prev=self._head, **fields)
            line = canonical(entry) + b"\n"
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            self._size = size + len(line)
        except OSError:
            self._broken = True
            raise
        finally:
            os.close(fd)
        try:
            if created:
                fsync_dir(self.path.parent)
        except OSError:
            self._broken = True
            raise
        self._seq, self._head = entry["seq"], entry["hash"]
        return entry


def _last_entry(fd: int, size: int, path: Path) -> tuple[int, str]:
    """(seq, hash) of the entry on the last line of an open log of ``size`` bytes."""
    if size == 0:
        return 0, GENESIS
    span = 4096
    while True:
        start = max(0, size - span)
        tail = os.pread(fd, size - start, start)
        cut = tail.rfind(b"\n", 0, len(tail) - 1)
        if cut >= 0 or start == 0:
            break
        span *= 4
    raw = tail[cut + 1:]
    try:
        entry = json.loads(raw)
        seq, prev = entry["seq"], entry["prev"]
    except (ValueError, RecursionError, TypeError, KeyError):
        seq, prev = None, None
    error = ("not an audit entry" if type(seq) is not int or not isinstance(prev, str)
             else _check_line(seq, raw, prev)[0])
    if error is not None:
        raise RecordingError(RecordingErrorCode.AUDIT_LOG_CORRUPT,
                             f"{path}: last line: {error}; not extending a broken log")
    return seq, entry["hash"]


def fsync_dir(path: Path) -> None:
    """Make a file's creation or rename durable (the directory entry itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
