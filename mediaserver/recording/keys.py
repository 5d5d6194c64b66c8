"""Key-encryption keys (KEKs) from the operator, and wrapping of per-recording data keys.

Each recording gets a fresh 256-bit data key (DEK); the DEK is stored only wrapped under a KEK.
The wrap is AES-256-GCM with a random 96-bit nonce rather than RFC 3394/5649 key wrap because
GCM takes associated data: the wrapped DEK is bound to its recording id and KEK id, so a key
blob copied onto another recording is refused instead of silently decrypting it, and the whole
feature needs one primitive. Random nonces are safe up to about 2**32 wraps per KEK, far more
recordings than any KEK will see before rotation.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mediaserver.recording.errors import RecordingError, RecordingErrorCode

KEY_BYTES = 32
WRAP_NONCE_BYTES = 12
WRAPPED_DEK_BYTES = WRAP_NONCE_BYTES + KEY_BYTES + 16  # nonce, encrypted DEK, GCM tag
KEK_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_B64_RE = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_WRAP_LABEL = b"mediaserver-recording-dek-v1"

RandBytes = Callable[[int], bytes]


def _lp(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def wrap_aad(recording_id: str, kek_id: str) -> bytes:
    """What a wrapped DEK is bound to: a label, the recording id and the KEK id."""
    return _WRAP_LABEL + _lp(recording_id.encode()) + _lp(kek_id.encode())


class KeyRing:
    """The operator's KEKs by id; the first is current (wraps new DEKs), the rest only unwrap.

    ``repr`` shows ids only, so a key ring in a log or traceback leaks nothing.
    """

    __slots__ = ("_current", "_keys")

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise RecordingError(RecordingErrorCode.KEK_EMPTY, "the key ring has no KEKs")
        self._keys: dict[str, bytes] = {}
        for kek_id, key in keys:
            if not KEK_ID_RE.fullmatch(kek_id):
                raise RecordingError(RecordingErrorCode.KEK_MALFORMED,
                                     f"KEK id {kek_id!r} must be 1-64 of A-Z a-z 0-9 . _ -")
            if len(key) != KEY_BYTES:
                raise RecordingError(RecordingErrorCode.KEK_BAD_LENGTH,
                                     f"KEK {kek_id!r} is {len(key)} bytes; need {KEY_BYTES}")
            if kek_id in self._keys:
                raise RecordingError(RecordingErrorCode.KEK_DUPLICATE,
                                     f"KEK id {kek_id!r} appears twice")
            self._keys[kek_id] = bytes(key)
        self._current = keys[0][0]

    @property
    def current_id(self) -> str:
        return self._current

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def __contains__(self, kek_id: object) -> bool:
        return kek_id in self._keys

    def __repr__(self) -> str:
        return f"KeyRing(current={self._current!r}, ids={list(self._keys)!r})"

    def wrap(self, dek: bytes, *, recording_id: str,
             randbytes: RandBytes = os.urandom) -> tuple[str, bytes]:
        """Wrap ``dek`` under the current KEK; returns (kek_id, nonce + ciphertext + tag)."""
        nonce = randbytes(WRAP_NONCE_BYTES)
        sealed = AESGCM(self._keys[self._current]).encrypt(
            nonce, dek, wrap_aad(recording_id, self._current))
        return self._current, nonce + sealed

    def unwrap(self, kek_id: str, wrapped: bytes, *, recording_id: str) -> bytes:
        key = self._keys.get(kek_id)
        if key is None:
            raise RecordingError(
                RecordingErrorCode.UNKNOWN_KEK,
                f"recording {recording_id!r} was encrypted under KEK {kek_id!r}, which is not in "
                f"the key ring (have {', '.join(self._keys)}); keep old KEKs after rotation")
        if len(wrapped) != WRAPPED_DEK_BYTES:
            raise RecordingError(RecordingErrorCode.HEADER_MALFORMED,
                                 f"wrapped data key is {len(wrapped)} bytes, "
                                 f"expected {WRAPPED_DEK_BYTES}")
        nonce, sealed = wrapped[:WRAP_NONCE_BYTES], wrapped[WRAP_NONCE_BYTES:]
        try:
            return AESGCM(key).decrypt(nonce, sealed, wrap_aad(recording_id, kek_id))
        except InvalidTag:
            raise RecordingError(
                RecordingErrorCode.WRONG_KEK,
                f"the data key of recording {recording_id!r} does not open with KEK {kek_id!r}: "
                "the key ring holds a different key under that id, or the wrapped key "
                "was altered") from None


def parse_keks(text: str, *, source: str = "KEK list") -> KeyRing:
    """Parse ``key_id:base64(32 bytes)`` lines; blank lines and ``#`` comments are skipped.

    Messages name the line number and key id, never the line itself (it holds a key).
    """
    keys: list[tuple[str, bytes]] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        kek_id, sep, encoded = line.partition(":")
        kek_id, encoded = kek_id.strip(), encoded.strip()
        if not sep or not KEK_ID_RE.fullmatch(kek_id) or not _B64_RE.fullmatch(encoded):
            raise RecordingError(RecordingErrorCode.KEK_MALFORMED,
                                 f"{source} line {number}: expected key_id:base64 with an id of "
                                 "1-64 of A-Z a-z 0-9 . _ -")
        try:
            normal = encoded.replace("-", "+").replace("_", "/").rstrip("=")
            key = base64.b64decode(normal + "=" * (-len(normal) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise RecordingError(RecordingErrorCode.KEK_MALFORMED,
                                 f"{source} line {number}: key {kek_id!r} is not valid "
                                 "base64") from None
        if len(key) != KEY_BYTES:
            raise RecordingError(RecordingErrorCode.KEK_BAD_LENGTH,
                                 f"{source} line {number}: key {kek_id!r} is {len(key)} bytes; "
                                 f"need {KEY_BYTES} (generate with: openssl rand -base64 32)")
        if kek_id in seen:
            raise RecordingError(RecordingErrorCode.KEK_DUPLICATE,
                                 f"{source} line {number}: key id {kek_id!r} is used twice")
        seen.add(kek_id)
        keys.append((kek_id, key))
    if not keys:
        raise RecordingError(RecordingErrorCode.KEK_EMPTY, f"{source} holds no keys")
    return KeyRing(keys)


def _is_key_text(spec: str) -> bool:
    """Several lines, a comment, or ``id:...`` not starting like a path: key text, not a path."""
    text = spec.strip()
    return ("\n" in text or text.startswith("#")
            or (":" in text and not text.startswith(("/", ".", "~"))))


def load_keks(spec: str) -> KeyRing:
    """KEKs from ``spec``: either the key lines themselves (an env var) or a path to a file."""
    if not spec.strip():
        raise RecordingError(RecordingErrorCode.KEK_EMPTY, "no KEKs given (empty value)")
    if _is_key_text(spec):
        return parse_keks(spec, source="KEK value")
    path = Path(spec.strip()).expanduser()
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise RecordingError(RecordingErrorCode.KEK_UNREADABLE,
                             f"cannot read KEK file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise RecordingError(RecordingErrorCode.KEK_UNREADABLE,
                             f"KEK file {path} is not UTF-8 text") from None
    return parse_keks(text, source=f"KEK file {path}")


def new_kek_line(kek_id: str, randbytes: RandBytes = os.urandom) -> str:
    """A fresh ``key_id:base64`` line for the operator's KEK file."""
    if not KEK_ID_RE.fullmatch(kek_id):
        raise RecordingError(RecordingErrorCode.INVALID_ARGUMENT,
                             f"KEK id {kek_id!r} must be 1-64 of A-Z a-z 0-9 . _ -")
    return f"{kek_id}:{base64.b64encode(randbytes(KEY_BYTES)).decode()}"


# Detached keys: deleting a recording's key file (and every backup of it) crypto-shreds it.


def key_path(recording_path: str | os.PathLike[str]) -> Path:
    """Where a detached key lives: ``<recording file name>.key`` in the same directory."""
    path = Path(recording_path)
    return path.with_name(path.name + ".key")


def write_key_file(recording_path: str | os.PathLike[str], key_blob: bytes) -> Path:
    """Store a detached key (owner-only, fsynced); refuses to overwrite an existing one."""
    path = key_path(recording_path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_blob)
        f.flush()
        os.fsync(f.fileno())
    return path


def read_key_file(recording_path: str | os.PathLike[str]) -> bytes | None:
    """The detached key of a recording, or None if it is gone (the recording is shredded)."""
    try:
        return key_path(recording_path).read_bytes()
    except FileNotFoundError:
        return None


def shred_key_file(recording_path: str | os.PathLike[str]) -> bool:
    """Delete a recording's detached key; False if it was already gone.

    This destroys the recording only if no copy of the key file survives (backups, snapshots).
    """
    path = key_path(recording_path)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True
