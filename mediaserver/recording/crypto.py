"""Streaming encryption of recordings: a header, then AES-256-GCM segments (docs/recording.md).

The writer holds at most one segment of plaintext in memory and writes only ciphertext. Every
segment is bound (through its nonce and associated data) to the header, its index, and whether
it is the last, so reordering, truncation and appending are detected. Readers never release a
byte of plaintext before its segment has authenticated.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mediaserver.recording.errors import RecordingError, RecordingErrorCode
from mediaserver.recording.format import (
    DEFAULT_SEGMENT_SIZE,
    KEY_MAGIC,
    MAGIC,
    MAX_RECORDING_ID_BYTES,
    MAX_SEGMENT_SIZE,
    NONCE_PREFIX_BYTES,
    SEGMENT_LENGTH,
    TAG_BYTES,
    RecordingHeader,
    encode_key_blob,
    parse_key_blob,
    read_exact,
    read_header,
    segment_aad,
    segment_nonce,
    write_all,
)
from mediaserver.recording.keys import (
    KEY_BYTES,
    KeyRing,
    RandBytes,
    key_path,
    load_keks,
    new_kek_line,
    parse_keks,
    read_key_file,
    shred_key_file,
    write_key_file,
)

__all__ = [
    "DEFAULT_SEGMENT_SIZE", "KEY_MAGIC", "MAGIC", "DecryptResult", "EncryptedReader",
    "EncryptedWriter", "KeyRing", "RecordingHeader", "decrypt_stream", "key_path", "load_keks",
    "new_kek_line", "parse_keks", "read_key_file", "shred_key_file", "verify_stream",
    "write_key_file",
]

E = RecordingErrorCode


@dataclass(frozen=True)
class DecryptResult:
    """``complete``: the final segment authenticated and nothing follows it.

    ``segments`` and ``plaintext_bytes`` count what authenticated (and was written out).
    """

    complete: bool
    segments: int
    plaintext_bytes: int
    error: str | None = None
    code: RecordingErrorCode | None = None


def _unwrap_dek(header: RecordingHeader, keyring: KeyRing, key_blob: bytes | None) -> bytes:
    wrapped = header.wrapped_dek
    if header.detached:
        if key_blob is None:
            raise RecordingError(E.KEY_DESTROYED,
                                 f"recording {header.recording_id!r} keeps its key in a separate "
                                 "key file and none was given; if that file was deleted, the "
                                 "recording is destroyed and cannot be decrypted")
        rid, kek_id, wrapped = parse_key_blob(key_blob)
        if (rid, kek_id) != (header.recording_id.encode(), header.kek_id.encode()):
            raise RecordingError(E.KEY_MISMATCH, "the key file belongs to another recording")
    elif key_blob is not None:
        raise RecordingError(E.INVALID_ARGUMENT,
                             "this recording carries its key in its header; pass no key file")
    return keyring.unwrap(header.kek_id, wrapped, recording_id=header.recording_id)


class EncryptedWriter:
    """A write-only file object that encrypts into ``sink`` (which it does not close).

    Call ``close()`` to write the final segment; a file without one reads as incomplete.
    Full segments reach ``sink`` as soon as they fill; ``flush()`` flushes ``sink`` but
    cannot push out a partial segment, so up to one segment is lost if the process dies.
    If ``sink`` raises, the writer aborts: a nonce is never used twice.
    """

    def __init__(self, sink: BinaryIO, keyring: KeyRing, *, recording_id: str,
                 segment_size: int = DEFAULT_SEGMENT_SIZE, detached_key: bool = False,
                 randbytes: RandBytes = os.urandom) -> None:
        if not 1 <= segment_size <= MAX_SEGMENT_SIZE:
            raise RecordingError(E.INVALID_ARGUMENT,
                                 f"segment_size must be 1..{MAX_SEGMENT_SIZE}, got {segment_size}")
        if not 1 <= len(recording_id.encode()) <= MAX_RECORDING_ID_BYTES:
            raise RecordingError(E.INVALID_ARGUMENT,
                                 f"recording_id must be 1..{MAX_RECORDING_ID_BYTES} UTF-8 bytes")
        dek = randbytes(KEY_BYTES)
        kek_id, wrapped = keyring.wrap(dek, recording_id=recording_id, randbytes=randbytes)
        self.header = RecordingHeader(recording_id, kek_id, segment_size,
                                      randbytes(NONCE_PREFIX_BYTES),
                                      b"" if detached_key else wrapped, detached_key)
        self.key_blob = encode_key_blob(recording_id, kek_id, wrapped) if detached_key else None
        raw = self.header.encode()
        self._header_hash = hashlib.sha256(raw).digest()
        self._aead: AESGCM | None = AESGCM(dek)
        self._sink = sink
        self._buffer = bytearray()
        self.segments_written = 0
        self.bytes_in = 0
        self.bytes_out = len(raw)
        write_all(sink, raw)

    @property
    def closed(self) -> bool:
        return self._aead is None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._aead is None:
            raise RecordingError(E.WRITER_CLOSED, "write to a closed recording writer")
        view = memoryview(data).cast("B")
        size = self.header.segment_size
        pos = 0
        while pos < len(view):
            take = min(size - len(self._buffer), len(view) - pos)
            self._buffer += view[pos:pos + take]
            pos += take
            if len(self._buffer) == size:
                self._seal(final=False)
        self.bytes_in += len(view)
        return len(view)

    def flush(self) -> None:
        self._sink.flush()

    def close(self) -> None:
        """Write the final segment (possibly empty) and flush; calling again does nothing."""
        if self._aead is not None:
            self._seal(final=True)
            self._sink.flush()
            self._aead = None

    def abort(self) -> None:
        """Drop buffered plaintext without a final segment: the file will read as incomplete."""
        self._buffer[:] = bytes(len(self._buffer))
        self._buffer.clear()
        self._aead = None

    def __enter__(self) -> EncryptedWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _seal(self, *, final: bool) -> None:
        assert self._aead is not None
        index = self.segments_written
        sealed = self._aead.encrypt(segment_nonce(self.header.nonce_prefix, index),
                                    bytes(self._buffer),
                                    segment_aad(self._header_hash, index, final))
        self._buffer[:] = bytes(len(self._buffer))  # overwrite before dropping
        self._buffer.clear()
        try:
            write_all(self._sink, SEGMENT_LENGTH.pack(len(sealed)) + sealed)
        except BaseException:
            self.abort()  # never seal again under this segment's nonce
            raise
        self.segments_written += 1
        self.bytes_out += SEGMENT_LENGTH.size + len(sealed)


class EncryptedReader:
    """Opens a recording (raising ``RecordingError`` if it cannot) and yields its plaintext.

    Iterating yields each segment's plaintext after it authenticates. Damage stops the
    iteration without raising; ``result()`` then says what was found.
    """

    def __init__(self, src: BinaryIO, keyring: KeyRing, *, key_blob: bytes | None = None) -> None:
        self.header, raw = read_header(src)
        self._aead = AESGCM(_unwrap_dek(self.header, keyring, key_blob))
        self._header_hash = hashlib.sha256(raw).digest()
        self._src = src
        self._result = DecryptResult(False, 0, 0, "not read yet", None)
        self._damage: RecordingError | None = None

    def result(self) -> DecryptResult:
        return self._result

    def __iter__(self) -> Iterator[bytes]:
        segments = plaintext = 0
        for data in self._segments():
            segments += 1
            plaintext += len(data)
            self._result = DecryptResult(False, segments, plaintext, "not read to the end", None)
            yield data
        if self._damage is None:
            self._result = DecryptResult(True, segments, plaintext)
        else:
            self._result = DecryptResult(False, segments, plaintext, self._damage.message,
                                         self._damage.code)

    def _segments(self) -> Iterator[bytes]:
        """Authenticated segments in order; on damage sets ``_damage`` and stops."""
        full = self.header.segment_size + TAG_BYTES
        index = 0
        while True:
            length = read_exact(self._src, SEGMENT_LENGTH.size)
            size = SEGMENT_LENGTH.unpack(length)[0] if len(length) == SEGMENT_LENGTH.size else 0
            body = read_exact(self._src, size) if TAG_BYTES <= size <= full else b""
            if not length:
                after = f"segment {index - 1}" if index else "the header"
                self._damage = RecordingError(
                    E.TRUNCATED, f"file ends after {after} without a final segment")
            elif len(length) < SEGMENT_LENGTH.size:
                self._damage = RecordingError(
                    E.TRUNCATED, f"file ends inside the length of segment {index}")
            elif not TAG_BYTES <= size <= full:
                self._damage = RecordingError(
                    E.SEGMENT_MALFORMED,
                    f"segment {index} claims {size} bytes; must be {TAG_BYTES}..{full}")
            elif len(body) < size:
                self._damage = RecordingError(
                    E.TRUNCATED,
                    f"file ends inside segment {index} ({len(body)} of {size} bytes)")
            if self._damage is not None:
                return
            final = size < full
            try:
                data = self._aead.decrypt(segment_nonce(self.header.nonce_prefix, index), body,
                                          segment_aad(self._header_hash, index, final))
            except InvalidTag:
                self._damage = RecordingError(
                    E.SEGMENT_AUTH_FAILED,
                    f"segment {index} failed authentication: it was altered or moved, "
                    "or the header was changed")
                return
            yield data
            index += 1
            if final:
                if self._src.read(1):
                    self._damage = RecordingError(
                        E.TRAILING_DATA, f"data follows the final segment {index - 1}")
                return


def _run(src: BinaryIO, keyring: KeyRing, out: BinaryIO | None,
         key_blob: bytes | None) -> DecryptResult:
    try:
        reader = EncryptedReader(src, keyring, key_blob=key_blob)
    except RecordingError as exc:
        if exc.code is E.TRUNCATED:
            return DecryptResult(False, 0, 0, exc.message, exc.code)
        raise
    for data in reader:
        if out is not None:
            out.write(data)
    return reader.result()


def decrypt_stream(src: BinaryIO, keyring: KeyRing, out: BinaryIO, *,
                   key_blob: bytes | None = None) -> DecryptResult:
    """Write every authenticated segment's plaintext to ``out``, up to the first damage.

    Raises ``RecordingError`` when the file cannot be opened at all (not a recording, unknown
    or wrong KEK, key destroyed); damage after the header is reported in the result.
    """
    return _run(src, keyring, out, key_blob)


def verify_stream(src: BinaryIO, keyring: KeyRing, *,
                  key_blob: bytes | None = None) -> DecryptResult:
    """Authenticate every segment, writing plaintext nowhere; raises as ``decrypt_stream``."""
    return _run(src, keyring, None, key_blob)
