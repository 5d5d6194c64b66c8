"""Encrypted recordings: round trips, format checks, tampering, truncation, keys, fuzzing."""

from __future__ import annotations

import base64
import hashlib
import io
import random
import stat
import struct
import zlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mediaserver.recording.crypto import (
    DEFAULT_SEGMENT_SIZE,
    MAGIC,
    DecryptResult,
    EncryptedReader,
    EncryptedWriter,
    KeyRing,
    decrypt_stream,
    key_path,
    load_keks,
    new_kek_line,
    parse_keks,
    read_key_file,
    shred_key_file,
    verify_stream,
    write_key_file,
)
from mediaserver.recording.errors import RecordingError
from mediaserver.recording.errors import RecordingErrorCode as C

K_OLD, K_NEW = bytes(range(32)), bytes(range(100, 132))
OLD_LINE = "k1:" + base64.b64encode(K_OLD).decode()
NEW_LINE = "k2:" + base64.b64encode(K_NEW).decode()
RING = parse_keks(f"{NEW_LINE}\n{OLD_LINE}\n")  # k2 current, k1 kept for old recordings
WEBM, OGG = b"\x1a\x45\xdf\xa3", b"OggS"
TAG, LEN = 16, 4


def seeded(seed: int = 1):
    return random.Random(seed).randbytes


def payload(n: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(n)


def encrypt(data: bytes, *, ring: KeyRing = RING, segment_size: int = 16, chunk: int = 0,
            detached: bool = False, rid: str = "rec-1") -> tuple[bytes, EncryptedWriter]:
    sink = io.BytesIO()
    w = EncryptedWriter(sink, ring, recording_id=rid, segment_size=segment_size,
                        detached_key=detached, randbytes=seeded())
    step = chunk or max(1, len(data))
    for i in range(0, len(data), step):
        w.write(data[i:i + step])
    w.close()
    return sink.getvalue(), w


def decrypt(blob: bytes, ring: KeyRing = RING, **kw: object) -> tuple[DecryptResult, bytes]:
    out = io.BytesIO()
    result = decrypt_stream(io.BytesIO(blob), ring, out, **kw)  # type: ignore[arg-type]
    return result, out.getvalue()


def header_len(blob: bytes) -> int:
    # fixed part (18) + three u16-prefixed fields
    pos = 18
    for _ in range(3):
        pos += 2 + int.from_bytes(blob[pos:pos + 2], "big")
    return pos


# Round trips


@pytest.mark.parametrize("segment_size", [1, 16, 1000, DEFAULT_SEGMENT_SIZE])
@pytest.mark.parametrize("size_of", [
    lambda s: 0, lambda s: 1, lambda s: s - 1, lambda s: s, lambda s: s + 1, lambda s: 5 * s + 3,
], ids=["empty", "one-byte", "seg-1", "exactly-one-seg", "seg+1", "many"])
@pytest.mark.parametrize("chunk", [0, 7])
def test_round_trip(segment_size: int, size_of, chunk: int) -> None:
    n = size_of(segment_size)
    data = payload(n)
    blob, w = encrypt(data, segment_size=segment_size, chunk=chunk)
    full, rest = divmod(n, segment_size)
    assert (w.segments_written, w.bytes_in, w.bytes_out) == (full + 1, n, len(blob))
    assert len(blob) == header_len(blob) + full * (LEN + segment_size + TAG) + LEN + rest + TAG
    result, out = decrypt(blob)
    assert result == DecryptResult(True, full + 1, n)
    assert out == data
    assert verify_stream(io.BytesIO(blob), RING) == result


def test_header_fields_are_readable() -> None:
    blob, w = encrypt(b"x", segment_size=1000, rid="sess-42/rec-3")
    reader = EncryptedReader(io.BytesIO(blob), RING)
    h = reader.header
    assert blob.startswith(MAGIC) and h == w.header
    assert (h.recording_id, h.kek_id, h.segment_size, h.detached) == ("sess-42/rec-3", "k2",
                                                                       1000, False)
    assert list(reader) == [b"x"] and reader.result().complete


def test_golden_file_pins_the_format() -> None:
    blob, _ = encrypt(b"hello, recording" * 3, segment_size=16)
    assert hashlib.sha256(blob).hexdigest() == (
        "5a7666263c05bdb7b1bd3b2531d6d4e25b5b14ea63d4b9bf85ebab7eccb86d9d")


def test_format_matches_the_documented_layout() -> None:
    """An independent reader written from docs/recording.md alone."""
    data = payload(40)
    blob, _ = encrypt(data, segment_size=16, rid="rec-9")
    assert blob[:8] == b"\x93MSREC\r\n" and blob[8] == 1 and blob[9] == 0
    segment_size, prefix = struct.unpack(">I", blob[10:14])[0], blob[14:18]
    pos, fields = 18, []
    for _ in range(3):
        n = struct.unpack(">H", blob[pos:pos + 2])[0]
        fields.append(blob[pos + 2:pos + 2 + n])
        pos += 2 + n
    rid, kek_id, wrapped = fields
    assert (segment_size, rid, kek_id, len(wrapped)) == (16, b"rec-9", b"k2", 60)
    aad = b"mediaserver-recording-dek-v1" + b"\x00\x05rec-9" + b"\x00\x02k2"
    dek = AESGCM(K_NEW).decrypt(wrapped[:12], wrapped[12:], aad)
    header_hash = hashlib.sha256(blob[:pos]).digest()
    plain, index = b"", 0
    while pos < len(blob):
        n = struct.unpack(">I", blob[pos:pos + 4])[0]
        final = n < segment_size + TAG
        nonce = prefix + index.to_bytes(8, "big")
        aad = header_hash + index.to_bytes(8, "big") + bytes([final])
        plain += AESGCM(dek).decrypt(nonce, blob[pos + 4:pos + 4 + n], aad)
        pos, index = pos + 4 + n, index + 1
    assert plain == data and index == 3 and final


def test_ciphertext_has_no_media_magic_and_looks_random() -> None:
    media = (WEBM + b"\x00" * 60 + OGG + b"\x00" * 60) * 2000  # very compressible, full of magic
    blob, _ = encrypt(media, segment_size=DEFAULT_SEGMENT_SIZE)
    assert not blob.startswith((WEBM, OGG))
    assert WEBM not in blob and OGG not in blob
    body = blob[header_len(blob):]
    assert len(zlib.compress(body, 9)) > 0.99 * len(body)
    assert len(zlib.compress(media, 9)) < 0.05 * len(media)


def test_writer_never_hands_plaintext_to_the_sink_and_buffers_under_one_segment() -> None:
    marker = b"SECRET-THERAPY-NOTES-" * 4

    class Spy(io.BytesIO):
        chunks: list[bytes]

        def write(self, b) -> int:  # type: ignore[no-untyped-def, override]
            self.chunks.append(bytes(b))
            return super().write(b)

    sink = Spy()
    sink.chunks = []
    w = EncryptedWriter(sink, RING, recording_id="r", segment_size=256)
    for _ in range(50):
        w.write(marker)
        assert w.bytes_in - w.segments_written * 256 < 256  # at most one segment held
    w.close()
    assert all(marker[:16] not in c for c in sink.chunks)
    assert not sink.closed  # the caller owns the sink


def test_writer_lifecycle() -> None:
    sink = io.BytesIO()
    w = EncryptedWriter(sink, RING, recording_id="r", segment_size=8)
    w.write(b"abc")
    w.flush()
    w.close()
    w.close()  # idempotent
    assert w.closed and w.segments_written == 1
    with pytest.raises(RecordingError) as err:
        w.write(b"more")
    assert err.value.code is C.WRITER_CLOSED


def test_writer_aborted_by_exception_leaves_an_incomplete_file() -> None:
    sink = io.BytesIO()
    with pytest.raises(RuntimeError), EncryptedWriter(sink, RING, recording_id="r",
                                                      segment_size=4) as w:
        w.write(b"12345678ab")
        raise RuntimeError("encoder died")
    result, out = decrypt(sink.getvalue())
    assert (result.complete, result.code, result.segments, out) == (False, C.TRUNCATED, 2,
                                                                    b"12345678")


def test_a_failing_sink_aborts_the_writer() -> None:
    """After a failed write the writer refuses more data, so no segment nonce is reused."""

    class DiskFull(io.BytesIO):
        def write(self, b) -> int:  # type: ignore[no-untyped-def, override]
            if self.tell() > 200:
                raise OSError(28, "No space left on device")
            return super().write(b)

    sink = DiskFull()
    w = EncryptedWriter(sink, RING, recording_id="r", segment_size=64)
    with pytest.raises(OSError):
        for _ in range(10):
            w.write(b"x" * 64)
    assert w.closed
    with pytest.raises(RecordingError) as err:
        w.write(b"more")
    assert err.value.code is C.WRITER_CLOSED
    w.close()  # nothing left to do
    result, out = decrypt(sink.getvalue())
    assert not result.complete and out == b"x" * 64 * result.segments


def test_partial_writes_to_a_raw_sink_are_completed() -> None:
    class Trickle(io.BytesIO):
        def write(self, b) -> int:  # type: ignore[no-untyped-def, override]
            return super().write(bytes(b)[:5])

    sink = Trickle()
    with EncryptedWriter(sink, RING, recording_id="r", segment_size=32) as w:
        w.write(payload(100))
    assert decrypt(sink.getvalue())[1] == payload(100)


@pytest.mark.parametrize(("kwargs", "code"), [
    ({"segment_size": 0}, C.INVALID_ARGUMENT),
    ({"segment_size": 16 * 1024 * 1024 + 1}, C.INVALID_ARGUMENT),
    ({"recording_id": ""}, C.INVALID_ARGUMENT),
    ({"recording_id": "x" * 256}, C.INVALID_ARGUMENT),
])
def test_writer_rejects_bad_arguments(kwargs: dict, code: C) -> None:
    args = {"recording_id": "r", **kwargs}
    with pytest.raises(RecordingError) as err:
        EncryptedWriter(io.BytesIO(), RING, **args)
    assert err.value.code is code


# Keys


def test_decrypts_only_with_the_right_kek() -> None:
    blob, _ = encrypt(b"session audio")
    impostor = parse_keks("k2:" + base64.b64encode(b"\x07" * 32).decode())
    with pytest.raises(RecordingError) as err:
        decrypt(blob, impostor)
    assert err.value.code is C.WRONG_KEK and "'k2'" in err.value.message
    with pytest.raises(RecordingError) as err:
        decrypt(blob, parse_keks(OLD_LINE))
    assert err.value.code is C.UNKNOWN_KEK and "'k2'" in str(err.value)
    for secret in (NEW_LINE, OLD_LINE, "Bwc"):
        assert secret.split(":")[-1] not in str(err.value)


def test_rotation_old_recordings_open_while_their_kek_is_in_the_ring() -> None:
    old_ring = parse_keks(OLD_LINE)
    blob, w = encrypt(b"before rotation", ring=old_ring)
    assert w.header.kek_id == "k1"
    assert decrypt(blob, RING) == (DecryptResult(True, 1, 15), b"before rotation")
    _, w2 = encrypt(b"after", ring=RING)
    assert w2.header.kek_id == "k2"


def test_key_blob_of_another_recording_is_refused() -> None:
    blob, _ = encrypt(b"a", detached=True, rid="rec-a")
    _, other = encrypt(b"b", detached=True, rid="rec-b")
    assert other.key_blob is not None
    with pytest.raises(RecordingError) as err:
        decrypt(blob, key_blob=other.key_blob)
    assert err.value.code is C.KEY_MISMATCH
    with pytest.raises(RecordingError) as err:
        decrypt(blob, key_blob=b"not a key")
    assert err.value.code is C.KEY_MISMATCH


def test_embedded_key_recording_refuses_a_key_file() -> None:
    blob, w = encrypt(b"a")
    assert w.key_blob is None
    with pytest.raises(RecordingError) as err:
        decrypt(blob, key_blob=b"x")
    assert err.value.code is C.INVALID_ARGUMENT


def test_detached_key_shredding(tmp_path: Path) -> None:
    data = payload(100)
    blob, w = encrypt(data, detached=True)
    assert w.key_blob is not None and w.header.wrapped_dek == b"" and w.header.detached
    rec = tmp_path / "sess-1.rec"
    rec.write_bytes(blob)
    path = write_key_file(rec, w.key_blob)
    assert path == key_path(rec) == tmp_path / "sess-1.rec.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        write_key_file(rec, w.key_blob)
    assert decrypt(blob, key_blob=read_key_file(rec))[1] == data
    assert shred_key_file(rec) and not shred_key_file(rec)
    assert read_key_file(rec) is None
    with pytest.raises(RecordingError) as err:
        decrypt(blob, key_blob=read_key_file(rec))
    assert err.value.code is C.KEY_DESTROYED and "destroyed" in err.value.message


# Tampering, truncation, appending


def three_segments() -> tuple[bytes, bytes, int]:
    """40 bytes in 16-byte segments: two full segments and a final one of 8 bytes."""
    data = payload(40)
    blob, _ = encrypt(data, segment_size=16)
    return blob, data, header_len(blob)


SEG = LEN + 16 + TAG  # on-disk size of a full segment


@pytest.mark.parametrize(("where", "segment", "decrypted"), [
    (lambda h: 15, 0, 0),  # the nonce prefix in the header: segment 0 no longer opens
    (lambda h: h + LEN + 3, 0, 0),  # first segment ciphertext
    (lambda h: h + SEG + LEN + 20, 1, 16),  # middle segment tag
    (lambda h: h + 2 * SEG + LEN + 1, 2, 32),  # last segment ciphertext
    (lambda h: h + 2 * SEG + LEN + 8 + TAG - 1, 2, 32),  # last byte of the file
], ids=["header", "first", "middle", "last", "last-byte"])
def test_flipped_byte_names_the_segment(where, segment: int, decrypted: int) -> None:
    blob, data, h = three_segments()
    bad = bytearray(blob)
    bad[where(h)] ^= 0x01
    result, out = decrypt(bytes(bad))
    assert (result.complete, result.code, result.segments) == (False, C.SEGMENT_AUTH_FAILED,
                                                               segment)
    assert f"segment {segment}" in (result.error or "")
    assert out == data[:decrypted]


@pytest.mark.parametrize(("offset", "mask", "code"), [
    (0, 0x80, C.NOT_A_RECORDING),  # magic
    (8, 0x01, C.UNSUPPORTED_VERSION),
    (9, 0x01, C.HEADER_MALFORMED),  # flags now claim a detached key, but the key is inline
    (9, 0x80, C.HEADER_MALFORMED),  # an unknown flag
    (10, 0x80, C.HEADER_MALFORMED),  # segment size beyond the 16 MiB limit
    (20, 0x01, C.WRONG_KEK),  # recording id "rec-1" -> "sec-1": the wrapped DEK is bound to it
    (20, 0x80, C.HEADER_MALFORMED),  # recording id no longer UTF-8
    (27, 0x01, C.UNKNOWN_KEK),  # KEK id "k2" -> "j2"
    (-10, 0x01, C.WRONG_KEK),  # inside the wrapped DEK (counted from the header end)
])
def test_flipped_header_fields_stop_the_file_opening(offset: int, mask: int, code: C) -> None:
    blob, _, h = three_segments()
    bad = bytearray(blob)
    bad[offset if offset >= 0 else h + offset] ^= mask
    with pytest.raises(RecordingError) as err:
        decrypt(bytes(bad))
    assert err.value.code is code


@pytest.mark.parametrize(("cut", "segments", "message"), [
    (lambda h: 0, 0, "inside the header"),
    (lambda h: 3, 0, "inside the header"),  # mid-magic
    (lambda h: h - 1, 0, "inside the header"),
    (lambda h: h, 0, "after the header without a final segment"),
    (lambda h: h + 2, 0, "inside the length of segment 0"),
    (lambda h: h + SEG + 9, 1, "inside segment 1"),
    (lambda h: h + 2 * SEG, 2, "after segment 1 without a final segment"),
    (lambda h: h + 2 * SEG + LEN + 5, 2, "inside segment 2"),
], ids=["empty", "mid-magic", "mid-header", "header-only", "mid-length", "mid-segment",
        "segment-boundary", "mid-final"])
def test_truncation_keeps_the_intact_prefix(cut, segments: int, message: str) -> None:
    blob, data, h = three_segments()
    result, out = decrypt(blob[:cut(h)])
    assert (result.complete, result.code, result.segments) == (False, C.TRUNCATED, segments)
    assert message in (result.error or "")
    assert out == data[:16 * segments] and result.plaintext_bytes == len(out)


def test_truncation_at_every_offset_is_incomplete() -> None:
    blob, data, _ = three_segments()
    for cut in range(len(blob)):
        result, out = decrypt(blob[:cut])
        assert not result.complete and result.code is C.TRUNCATED, cut
        assert out == data[:16 * result.segments], cut


def test_exact_multiple_needs_its_empty_final_segment() -> None:
    data = payload(32)
    blob, w = encrypt(data, segment_size=16)
    assert w.segments_written == 3  # two full + an empty final
    result, out = decrypt(blob[:-(LEN + TAG)])
    assert (result.complete, result.segments, out) == (False, 2, data)


@pytest.mark.parametrize("extra", [b"\x00", b"garbage" * 10, None], ids=["byte", "text", "copy"])
def test_appended_data_is_detected(extra: bytes | None) -> None:
    blob, data, h = three_segments()
    extra = extra if extra is not None else blob[h:h + SEG]  # a genuine segment, appended again
    result, out = decrypt(blob + extra)
    assert (result.complete, result.code, result.segments) == (False, C.TRAILING_DATA, 3)
    assert out == data


def test_reordered_or_dropped_segments_are_detected() -> None:
    blob, data, h = three_segments()
    s0, s1 = blob[h:h + SEG], blob[h + SEG:h + 2 * SEG]
    swapped = blob[:h] + s1 + s0 + blob[h + 2 * SEG:]
    dropped = blob[:h] + s0 + blob[h + 2 * SEG:]
    for bad, ok in ((swapped, 0), (dropped, 1)):
        result, out = decrypt(bad)
        assert (result.code, result.segments, out) == (C.SEGMENT_AUTH_FAILED, ok, data[:16 * ok])


def test_segments_from_another_recording_do_not_authenticate() -> None:
    a, _, h = three_segments()
    sink = io.BytesIO()
    with EncryptedWriter(sink, RING, recording_id="rec-1", segment_size=16) as w:
        w.write(payload(40))  # same id and key ring, but its own random DEK
    b = sink.getvalue()
    result, _ = decrypt(a[:h + SEG] + b[h + SEG:])
    assert (result.code, result.segments) == (C.SEGMENT_AUTH_FAILED, 1)


@pytest.mark.parametrize(("blob", "code"), [
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", C.NOT_A_RECORDING),
    (WEBM + b"\x00" * 40, C.NOT_A_RECORDING),
    (MAGIC + b"\x02" + b"\x00" * 30, C.UNSUPPORTED_VERSION),
    (MAGIC + b"\x01\x80" + b"\x00\x00\x00\x10" + b"\x00" * 4 + b"\x00\x01r\x00\x02k2\x00\x00",
     C.HEADER_MALFORMED),
])
def test_files_that_cannot_be_opened_raise(blob: bytes, code: C) -> None:
    with pytest.raises(RecordingError) as err:
        decrypt(blob)
    assert err.value.code is code


# KEK loading


def test_load_keks_from_value_and_file(tmp_path: Path) -> None:
    text = f"# recording KEKs\n\n{NEW_LINE}\n  {OLD_LINE}  \n"
    from_value = load_keks(text)
    (tmp_path / "keks").write_text(text)
    from_file = load_keks(str(tmp_path / "keks"))
    for ring in (from_value, from_file, load_keks(NEW_LINE)):
        assert ring.current_id == "k2"
    assert from_file.ids == ("k2", "k1") and "k1" in from_file
    urlsafe = "k3:" + base64.urlsafe_b64encode(b"\xfb" * 32).decode().rstrip("=")
    assert load_keks(urlsafe).current_id == "k3"
    assert new_kek_line("fresh").startswith("fresh:") and load_keks(new_kek_line("x")).ids == ("x",)
    assert base64.b64encode(K_NEW).decode() not in repr(from_value)


B64_16 = base64.b64encode(b"\x01" * 16).decode()
B64_32 = base64.b64encode(b"\x02" * 32).decode()


@pytest.mark.parametrize(("spec", "code", "message"), [
    (f"k1:{B64_32}\nno-colon-here\n", C.KEK_MALFORMED, "line 2"),
    (f"bad id!:{B64_32}", C.KEK_MALFORMED, "line 1"),
    ("k1:%%%notbase64", C.KEK_MALFORMED, "line 1"),
    ("k1:QUJD=x", C.KEK_MALFORMED, "line 1"),
    (f"k1:{B64_16}", C.KEK_BAD_LENGTH, "line 1: key 'k1' is 16 bytes"),
    (f"k1:{base64.b64encode(bytes(33)).decode()}", C.KEK_BAD_LENGTH, "33 bytes"),
    (f"k1:{B64_32}\n#\nk1:{B64_32}", C.KEK_DUPLICATE, "line 3: key id 'k1'"),
    ("   ", C.KEK_EMPTY, "no KEKs"),
    ("# only a comment\n\n", C.KEK_EMPTY, "KEK value holds no keys"),
    ("/nonexistent/keks", C.KEK_UNREADABLE, "/nonexistent/keks"),
])
def test_load_keks_errors(spec: str, code: C, message: str) -> None:
    with pytest.raises(RecordingError) as err:
        load_keks(spec)
    assert err.value.code is code and message in err.value.message
    assert B64_32 not in str(err.value) and B64_16 not in str(err.value)


def test_keyring_refuses_bad_keys_directly() -> None:
    with pytest.raises(RecordingError) as err:
        KeyRing([("a", bytes(32)), ("a", bytes(32))])
    assert err.value.code is C.KEK_DUPLICATE
    with pytest.raises(RecordingError) as err:
        KeyRing([])
    assert err.value.code is C.KEK_EMPTY


# Fuzzing: reading bytes from disk never raises anything but RecordingError


def _fuzz(blob: bytes, key_blob: bytes | None = None) -> None:
    try:
        result, out = decrypt(blob, key_blob=key_blob)
    except RecordingError:
        return
    assert len(out) == result.plaintext_bytes
    assert result.complete == (result.error is None)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_arbitrary_bytes(blob: bytes) -> None:
    _fuzz(blob)
    _fuzz(MAGIC + blob)
    _fuzz(MAGIC + b"\x01" + blob)


VALID, _ = encrypt(payload(40), segment_size=16)
DETACHED, DETACHED_W = encrypt(payload(40), segment_size=16, detached=True)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_recordings(data: st.DataObject) -> None:
    base = bytearray(data.draw(st.sampled_from([VALID, DETACHED])))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(base)))
        kind = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if kind == "flip" and pos < len(base):
            base[pos] ^= data.draw(st.integers(1, 255))
        elif kind == "insert":
            base[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del base[pos:pos + data.draw(st.integers(1, 8))]
    _fuzz(bytes(base), data.draw(st.sampled_from([None, DETACHED_W.key_blob, b"\x93MSKEY"])))


def test_fresh_randomness_per_recording() -> None:
    w1 = EncryptedWriter(io.BytesIO(), RING, recording_id="r")
    w2 = EncryptedWriter(io.BytesIO(), RING, recording_id="r")
    assert w1.header.wrapped_dek != w2.header.wrapped_dek
