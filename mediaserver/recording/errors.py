"""The one error type of the recording layer, and its stable codes.

Messages name files, key ids, line and segment numbers; they never contain key material or
plaintext, so they are safe to log and to show an operator.
"""

from __future__ import annotations

from enum import StrEnum


class RecordingErrorCode(StrEnum):
    # Key-encryption keys supplied by the operator.
    KEK_UNREADABLE = "kek_unreadable"
    KEK_EMPTY = "kek_empty"
    KEK_MALFORMED = "kek_malformed"
    KEK_BAD_LENGTH = "kek_bad_length"
    KEK_DUPLICATE = "kek_duplicate"
    # Opening an encrypted recording.
    NOT_A_RECORDING = "not_a_recording"
    UNSUPPORTED_VERSION = "unsupported_version"
    HEADER_MALFORMED = "header_malformed"
    UNKNOWN_KEK = "unknown_kek"
    WRONG_KEK = "wrong_kek"
    KEY_DESTROYED = "key_destroyed"
    KEY_MISMATCH = "key_mismatch"
    # Damage found while reading the segments.
    TRUNCATED = "truncated"
    SEGMENT_MALFORMED = "segment_malformed"
    SEGMENT_AUTH_FAILED = "segment_auth_failed"
    TRAILING_DATA = "trailing_data"
    # Misuse by the caller.
    INVALID_ARGUMENT = "invalid_argument"
    WRITER_CLOSED = "writer_closed"
    # Audit log.
    AUDIT_UNKNOWN_EVENT = "audit_unknown_event"
    AUDIT_BAD_ENTRY = "audit_bad_entry"
    AUDIT_LOG_CORRUPT = "audit_log_corrupt"
    # Consent state machine.
    CONSENT_NOT_PRESENT = "consent_not_present"
    CONSENT_NOT_REQUESTED = "consent_not_requested"


class RecordingError(Exception):
    """A refused operation or a damaged file; ``code`` is stable, ``message`` explains."""

    def __init__(self, code: RecordingErrorCode | str, message: str) -> None:
        super().__init__(message)
        self.code = RecordingErrorCode(code)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"
