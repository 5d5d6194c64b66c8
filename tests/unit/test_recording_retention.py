"""Retention and shredding of recordings on disk."""

from __future__ import annotations

import io
import os
import time

import pytest

from mediaserver.recording.crypto import EncryptedWriter, verify_stream
from mediaserver.recording.errors import RecordingError
from mediaserver.recording.keys import new_kek_line, parse_keks, read_key_file, write_key_file
from mediaserver.recording.retention import expired, shred_recording, sweep
from mediaserver.recording.tools import add_recordings_parser, run_recordings

KEYS = parse_keks(new_kek_line("k1"))


def _recording(root, name: str, age_seconds: float):
    path = root / name
    path.mkdir()
    track = path / "TR_1.webm.enc"
    with open(track, "wb") as f:
        writer = EncryptedWriter(f, KEYS, recording_id=f"{name}/TR_1", detached_key=True)
        writer.write(b"media" * 1000)
        writer.close()
    write_key_file(track, writer.key_blob)
    past = time.time() - age_seconds
    os.utime(path, (past, past))
    return path, track


def test_expired_recordings_are_those_past_the_retention(tmp_path):
    old, _ = _recording(tmp_path, "rec-old", 10 * 86400)
    young, _ = _recording(tmp_path, "rec-young", 3600)
    assert expired(tmp_path, time.time(), 7 * 86400) == [old]
    assert expired(tmp_path, time.time(), 0) == []  # 0: keep forever
    assert sweep(tmp_path, time.time(), 7 * 86400) == ["rec-old"]
    assert not old.exists() and young.exists()


def test_shredding_destroys_the_key_before_the_files(tmp_path):
    rec, track = _recording(tmp_path, "rec-x", 0)
    ciphertext = track.read_bytes()
    key = read_key_file(track)
    assert verify_stream(io.BytesIO(ciphertext), KEYS, key_blob=key).complete
    assert shred_recording(rec) == 1
    assert not rec.exists()
    # A copy of the ciphertext alone (a backup, say) cannot be decrypted any more.
    with pytest.raises(RecordingError) as info:
        verify_stream(io.BytesIO(ciphertext), KEYS, key_blob=None)
    assert info.value.code == "key_destroyed"


def test_shred_command_needs_yes(tmp_path, capsys):
    import argparse

    rec, _ = _recording(tmp_path, "rec-y", 0)
    parser = argparse.ArgumentParser()
    add_recordings_parser(parser.add_subparsers(dest="command"))
    assert run_recordings(parser.parse_args(["recordings", "shred", str(rec)]), {}) == 2
    assert rec.exists()
    assert run_recordings(parser.parse_args(["recordings", "shred", str(rec), "--yes"]), {}) == 0
    assert not rec.exists()
    assert "1 key file(s) shredded" in capsys.readouterr().out
