"""The on-disk layout of encrypted recordings and their detached key files (docs/recording.md).

Pure bytes in and out: building and parsing the header, the key file, and the per-segment nonce
and associated data. ``crypto`` does the sealing and opening.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import BinaryIO

from mediaserver.recording.errors import RecordingError, RecordingErrorCode
from mediaserver.recording.keys import KEK_ID_RE, WRAPPED_DEK_BYTES

MAGIC = b"\x93MSREC\r\n"  # not a media magic; the high byte and CRLF catch text-mode mangling
KEY_MAGIC = b"\x93MSKEY\r\n"
VERSION = 1
FLAG_DETACHED = 0x01
TAG_BYTES = 16
NONCE_PREFIX_BYTES = 4
DEFAULT_SEGMENT_SIZE = 64 * 1024
MAX_SEGMENT_SIZE = 16 * 1024 * 1024
MAX_RECORDING_ID_BYTES = 255
_FIXED = struct.Struct(">8sBBI4s")  # magic, version, flags, segment size, nonce prefix
_U16 = struct.Struct(">H")
SEGMENT_LENGTH = struct.Struct(">I")  # before each segment: ciphertext + tag length
_U64 = struct.Struct(">Q")
E = RecordingErrorCode


@dataclass(frozen=True)
class RecordingHeader:
    """Everything before the first segment; its SHA-256 is bound into every segment."""

    recording_id: str
    kek_id: str
    segment_size: int
    nonce_prefix: bytes
    wrapped_dek: bytes  # empty when the key is detached
    detached: bool

    def encode(self) -> bytes:
        flags = FLAG_DETACHED if self.detached else 0
        fixed = _FIXED.pack(MAGIC, VERSION, flags, self.segment_size, self.nonce_prefix)
        return fixed + b"".join(_U16.pack(len(f)) + f for f in (
            self.recording_id.encode(), self.kek_id.encode(), self.wrapped_dek))


def segment_nonce(prefix: bytes, index: int) -> bytes:
    return prefix + _U64.pack(index)


def segment_aad(header_hash: bytes, index: int, final: bool) -> bytes:
    return header_hash + _U64.pack(index) + (b"\x01" if final else b"\x00")


def read_exact(src: BinaryIO, n: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < n:
        part = src.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def write_all(sink: BinaryIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = sink.write(view)
        view = view[len(view) if written is None else written:]  # raw files may write less


def read_fields(src: BinaryIO, count: int, what: str) -> tuple[list[bytes], bytes]:
    """``count`` length-prefixed fields, and the raw bytes they were read from."""
    fields: list[bytes] = []
    raw = b""
    for _ in range(count):
        size = read_exact(src, _U16.size)
        data = read_exact(src, _U16.unpack(size)[0]) if len(size) == _U16.size else b""
        if len(size) < _U16.size or len(data) < _U16.unpack(size)[0]:
            raise RecordingError(E.TRUNCATED, f"file ends inside the {what}")
        fields.append(data)
        raw += size + data
    return fields, raw


def read_header(src: BinaryIO) -> tuple[RecordingHeader, bytes]:
    fixed = read_exact(src, _FIXED.size)
    if fixed[:len(MAGIC)] != MAGIC[:len(fixed)]:
        raise RecordingError(E.NOT_A_RECORDING, "not an encrypted mediaserver recording")
    if len(fixed) > len(MAGIC) and fixed[len(MAGIC)] != VERSION:
        raise RecordingError(E.UNSUPPORTED_VERSION,
                             f"format version {fixed[len(MAGIC)]}; this server reads {VERSION}")
    if len(fixed) < _FIXED.size:
        raise RecordingError(E.TRUNCATED, "file ends inside the header")
    _, _, flags, segment_size, prefix = _FIXED.unpack(fixed)
    (rid, kek, wrapped), raw = read_fields(src, 3, "header")
    detached = bool(flags & FLAG_DETACHED)
    if flags & ~FLAG_DETACHED or not 1 <= segment_size <= MAX_SEGMENT_SIZE:
        raise RecordingError(E.HEADER_MALFORMED, "header has unknown flags or a bad segment size")
    try:
        recording_id, kek_id = rid.decode(), kek.decode()
    except UnicodeDecodeError:
        raise RecordingError(E.HEADER_MALFORMED, "header ids are not UTF-8") from None
    if (not recording_id or not KEK_ID_RE.fullmatch(kek_id)
            or len(wrapped) != (0 if detached else WRAPPED_DEK_BYTES)):
        raise RecordingError(E.HEADER_MALFORMED, "header has a bad recording id, KEK id or key")
    header = RecordingHeader(recording_id, kek_id, segment_size, prefix, wrapped, detached)
    return header, fixed + raw


def encode_key_blob(recording_id: str, kek_id: str, wrapped: bytes) -> bytes:
    fields = (recording_id.encode(), kek_id.encode(), wrapped)
    return KEY_MAGIC + bytes([VERSION]) + b"".join(_U16.pack(len(f)) + f for f in fields)


def parse_key_blob(blob: bytes) -> tuple[bytes, bytes, bytes]:
    """(recording id, KEK id, wrapped DEK) from a detached key file."""
    src = io.BytesIO(blob)
    try:
        if src.read(len(KEY_MAGIC) + 1) != KEY_MAGIC + bytes([VERSION]):
            raise RecordingError(E.KEY_MISMATCH, "not a recording key")
        (rid, kek_id, wrapped), _ = read_fields(src, 3, "key file")
        if src.read(1):
            raise RecordingError(E.KEY_MISMATCH, "data follows the key")
    except RecordingError as exc:
        raise RecordingError(E.KEY_MISMATCH, f"key file unusable: {exc.message}") from None
    return rid, kek_id, wrapped
