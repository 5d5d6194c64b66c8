"""Deleting recordings: crypto-shredding first, then the files (no clock reads).

Every track file of a recording made by the server has its wrapped data key in a separate
``.key`` file (``detached_keys``). Shredding deletes those key files first: from that moment
the ciphertext cannot be decrypted by anyone, whatever copies of it exist, as long as no copy
of the key files survives (keep them out of backups). Then the encrypted files go too.
"""

from __future__ import annotations

import os
from pathlib import Path

from mediaserver.recording.audit import fsync_dir


def shred_recording(recording: Path) -> int:
    """Destroy one recording directory; returns the number of key files shredded."""
    shredded = 0
    for key in sorted(recording.glob("*.key")):
        key.unlink()
        shredded += 1
    if shredded:
        fsync_dir(recording)  # the keys are gone for good before anything else
    for path in sorted(recording.iterdir()):
        if path.is_file():
            path.unlink()
    recording.rmdir()
    fsync_dir(recording.parent)
    return shredded


def expired(root: Path, now: float, retention_seconds: float) -> list[Path]:
    """Recording directories under ``root`` last written more than ``retention_seconds`` ago.

    ``now`` is Unix time. The directory's own modification time moves whenever a file is
    created in it, so a recording expires counting from its last new file (its close).
    """
    if retention_seconds <= 0 or not root.is_dir():
        return []
    out = []
    for path in sorted(root.iterdir()):
        if path.is_dir() and now - os.stat(path).st_mtime > retention_seconds:
            out.append(path)
    return out


def sweep(root: Path, now: float, retention_seconds: float) -> list[str]:
    """Shred every expired recording; returns their ids."""
    done = []
    for path in expired(root, now, retention_seconds):
        shred_recording(path)
        done.append(path.name)
    return done
