"""``mediaserver recordings list|verify|decrypt``: the operator's view of encrypted recordings.

``list`` reads only the plaintext headers (no keys needed). ``verify`` authenticates every
segment of every file and checks each against the manifest, writing plaintext nowhere (the
small manifest is decrypted in memory). ``decrypt`` is the one step that produces playable
files, into a directory the operator names, never into the recordings directory, with
owner-only permissions and without overwriting. Keys come from ``--keys FILE`` or
``MEDIASERVER_RECORDING_KEYS`` (``load_keks``).

Exit codes: 0 every file is complete and matches the manifest; 1 something is damaged,
missing or unreadable (what could be read was still verified or decrypted); 2 bad usage,
unusable keys or a missing directory.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO, cast

from mediaserver.recording.crypto import (
    KeyRing,
    decrypt_stream,
    load_keks,
    read_key_file,
    verify_stream,
)
from mediaserver.recording.errors import RecordingError, RecordingErrorCode
from mediaserver.recording.format import read_header
from mediaserver.recording.recorder import MANIFEST_FORMAT, MANIFEST_NAME, TRACK_SUFFIX

KEYS_ENV = "MEDIASERVER_RECORDING_KEYS"
EXIT_OK, EXIT_DAMAGED, EXIT_USAGE = 0, 1, 2
E = RecordingErrorCode
_CORRUPT = {E.SEGMENT_AUTH_FAILED, E.SEGMENT_MALFORMED, E.TRAILING_DATA, E.NOT_A_RECORDING,
            E.UNSUPPORTED_VERSION, E.HEADER_MALFORMED, E.KEY_MISMATCH, E.INVALID_ARGUMENT}


@dataclass
class FileReport:
    """One encrypted file: ``status`` is complete, truncated, corrupt or unreadable (no key)."""

    file: str
    status: str
    code: str | None
    message: str | None
    segments: int
    plaintext_bytes: int
    encrypted_bytes: int
    sha256: str
    manifest: str | None = None  # "ok", "differs", "not listed", or None without a manifest


class _HashingReader:
    """Hashes the ciphertext as the reader consumes it (a file is read once)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _process(path: Path, keyring: KeyRing, out: BinaryIO | None) -> FileReport:
    """Verify (``out`` None) or decrypt one file; damage is reported, never raised."""
    with path.open("rb") as f:
        src = _HashingReader(f)
        try:
            reader = cast(BinaryIO, src)
            key_blob = read_key_file(path)
            if out is None:
                result = verify_stream(reader, keyring, key_blob=key_blob)
            else:
                result = decrypt_stream(reader, keyring, out, key_blob=key_blob)
        except RecordingError as exc:
            src.drain()
            status = "corrupt" if exc.code in _CORRUPT else "unreadable"
            return FileReport(path.name, status, exc.code.value, exc.message, 0, 0, src.size,
                              src.sha256.hexdigest())
        src.drain()
    if result.complete:
        status = "complete"
    elif result.code is E.TRUNCATED:
        status = "truncated"
    else:
        status = "corrupt"
    return FileReport(path.name, status, result.code.value if result.code else None,
                      result.error, result.segments, result.plaintext_bytes, src.size,
                      src.sha256.hexdigest())


def _encrypted_files(recording: Path) -> list[Path]:
    return sorted(p for p in recording.iterdir() if p.is_file() and p.name.endswith(".enc"))


def _recordings(root: Path) -> list[Path]:
    """Recording directories under ``root`` (or ``root`` itself if it holds .enc files)."""
    if _encrypted_files(root):
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and _encrypted_files(p))


def _read_manifest(path: Path,
                   keyring: KeyRing) -> tuple[FileReport, dict[str, Any] | None, bytes]:
    """The manifest's report, its content when complete and well-formed, and its bytes."""
    plain = io.BytesIO()  # small, and kept in memory only
    report = _process(path, keyring, plain)
    if report.status != "complete":
        return report, None, b""
    try:
        manifest = json.loads(plain.getvalue())
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        report.status, report.code = "corrupt", "manifest_malformed"
        report.message = "the manifest decrypts but is not a recording manifest"
        return report, None, b""
    return report, manifest, plain.getvalue()


def _compare(reports: list[FileReport], manifest: dict[str, Any]) -> list[str]:
    """Mark each report against the manifest; returns the problems (files it lacks)."""
    listed = {str(t.get("file")): t for t in manifest.get("tracks", []) if isinstance(t, dict)}
    for report in reports:
        entry = listed.pop(report.file, None)
        if entry is None:
            report.manifest = "not listed"
        elif (entry.get("sha256"), entry.get("encrypted_bytes")) == (report.sha256,
                                                                     report.encrypted_bytes):
            report.manifest = "ok"
        else:
            report.manifest = "differs"
    return [f"{name}: listed in the manifest but missing" for name in sorted(listed)]


@dataclass
class RecordingReport:
    recording: str
    files: list[FileReport]
    manifest: FileReport | None
    problems: list[str]

    @property
    def ok(self) -> bool:
        return (not self.problems and self.manifest is not None
                and self.manifest.status == "complete"
                and all(f.status == "complete" and f.manifest == "ok" for f in self.files))


def _check(recording: Path, keyring: KeyRing, out_dir: Path | None) -> RecordingReport:
    """Verify (or, with ``out_dir``, decrypt) every file of one recording."""
    files: list[FileReport] = []
    manifest_report: FileReport | None = None
    manifest: dict[str, Any] | None = None
    problems: list[str] = []
    for path in _encrypted_files(recording):
        problems += _check_placement(recording, path)
        if path.name == MANIFEST_NAME:
            manifest_report, manifest, raw = _read_manifest(path, keyring)
            if out_dir is not None and manifest is not None:
                try:
                    _write_new(out_dir / "manifest.json", raw)
                except FileExistsError:
                    problems.append("manifest.json: already exists in the output directory; "
                                    "not overwritten")
            continue
        if out_dir is None:
            files.append(_process(path, keyring, None))
            continue
        target = out_dir / path.name.removesuffix(".enc")
        try:
            out = _create(target)
        except FileExistsError:
            problems.append(f"{target.name}: already exists in the output directory; "
                            "not overwritten")
            continue
        with out:
            report = _process(path, keyring, out)
        if report.status in ("corrupt", "unreadable") and report.plaintext_bytes == 0:
            target.unlink()  # nothing authenticated: leave no empty file behind
        files.append(report)
    if manifest_report is None:
        problems.append("no manifest: the recording was not closed (the server stopped while "
                        "recording, or it is still running)")
    elif manifest is not None:
        problems += _compare(files, manifest)
        if manifest.get("recording_id") != recording.name:
            problems.append(f"the manifest names recording {manifest.get('recording_id')!r}")
    return RecordingReport(recording.name, files, manifest_report, problems)


def _check_placement(recording: Path, path: Path) -> list[str]:
    """A file's header names the recording and track it was written for; do they match?"""
    stem = "manifest" if path.name == MANIFEST_NAME else path.name.removesuffix(TRACK_SUFFIX)
    expected = f"{recording.name}/{stem}"
    try:
        with path.open("rb") as f:
            found = read_header(f)[0].recording_id
    except RecordingError:
        return []  # reported with the file itself
    if found == expected:
        return []
    return [f"{path.name}: written as {found!r}, not {expected!r} (moved or renamed)"]


def _create(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return os.fdopen(fd, "wb")


def _write_new(path: Path, data: bytes) -> None:
    with _create(path) as f:
        f.write(data)


# -- commands -------------------------------------------------------------------------------


def _print_report(report: RecordingReport, out: TextIO) -> None:
    verdict = "OK" if report.ok else "PROBLEMS"
    print(f"recording {report.recording}: {verdict}", file=out)
    rows = [*report.files, *([report.manifest] if report.manifest else [])]
    width = max((len(r.file) for r in rows), default=0)
    for r in rows:
        segments = f"{r.segments} segment" + ("" if r.segments == 1 else "s")
        line = (f"  {r.file:<{width}}  {r.status:<10}  {segments}, "
                f"{r.plaintext_bytes} plaintext bytes")
        if r.manifest is not None:
            line += f", manifest: {r.manifest}"
        if r.message and r.status != "complete":
            line += f" ({r.code}: {r.message})"
        print(line, file=out)
    for problem in report.problems:
        print(f"  {problem}", file=out)


def _keyring(args: argparse.Namespace, env: Mapping[str, str]) -> KeyRing:
    if args.keys:
        return load_keks(str(Path(args.keys).absolute()))  # a path, whatever it contains
    spec = env.get(KEYS_ENV)
    if not spec:
        raise RecordingError(E.KEK_EMPTY,
                             f"no keys: pass --keys FILE or set {KEYS_ENV}")
    return load_keks(spec)


def _list(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    root = Path(args.directory)
    print("RECORDING\tFILES\tBYTES\tMANIFEST\tKEKS", file=out)
    for recording in _recordings(root):
        files = _encrypted_files(recording)
        keks: set[str] = set()
        for path in files:
            try:
                with path.open("rb") as f:
                    keks.add(read_header(f)[0].kek_id)
            except RecordingError:
                keks.add("?")
        manifest = "yes" if any(p.name == MANIFEST_NAME for p in files) else "no"
        size = sum(p.stat().st_size for p in files)
        print(f"{recording.name}\t{len(files)}\t{size}\t{manifest}\t{','.join(sorted(keks))}",
              file=out)
    return EXIT_OK


def _verify(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    keyring = _keyring(args, env)
    root = Path(args.directory)
    recordings = [root / args.recording_id] if args.recording_id else _recordings(root)
    for recording in recordings:
        if not recording.is_dir():
            raise RecordingError(E.INVALID_ARGUMENT, f"no recording directory {recording}")
    reports = [_check(r, keyring, None) for r in recordings]
    if args.json:
        print(json.dumps([{**asdict(r), "ok": r.ok} for r in reports], indent=2), file=out)
    else:
        for report in reports:
            _print_report(report, out)
    return EXIT_OK if all(r.ok for r in reports) else EXIT_DAMAGED


def _decrypt(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    recording = Path(args.recording_dir).resolve()
    target = Path(args.output_dir).resolve()
    if not recording.is_dir() or not _encrypted_files(recording):
        raise RecordingError(E.INVALID_ARGUMENT, f"{recording} is not a recording directory")
    if target == recording or recording in target.parents or target == recording.parent:
        raise RecordingError(E.INVALID_ARGUMENT,
                             "refusing to write plaintext into the recordings directory; "
                             "name an output directory outside it")
    if target.is_dir() and _encrypted_files(target):
        raise RecordingError(E.INVALID_ARGUMENT,
                             f"{target} holds encrypted recordings; refusing to write "
                             "plaintext next to them")
    keyring = _keyring(args, env)
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    report = _check(recording, keyring, target)
    _print_report(report, out)
    print(f"plaintext written to {target}", file=out)
    return EXIT_OK if report.ok else EXIT_DAMAGED


def _audit(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    from mediaserver.recording.audit import verify_log

    result = verify_log(args.log, anchor=args.anchor)
    if result.ok:
        print(f"{args.log}: {result.entries} entries, chain intact, head {result.head}",
              file=out)
        return 0
    print(f"{args.log}: TAMPERED at line {result.line}: {result.error}", file=out)
    return EXIT_DAMAGED


def _export(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    from mediaserver.recording.export import export_recording

    recording = Path(args.recording_dir)
    if not recording.is_dir() or not _encrypted_files(recording):
        raise RecordingError(E.INVALID_ARGUMENT, f"{recording} is not a recording directory")
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise RecordingError(E.INVALID_ARGUMENT,
                             f"--size {args.size!r}: expected WIDTHxHEIGHT") from None
    result = export_recording(recording, _keyring(args, env), Path(args.output),
                              size=(width, height), fps=args.fps)
    for problem in result.problems:
        print(f"  {problem}", file=out)
    print(f"exported {result.duration:.2f} s ({result.video_frames} frames, "
          f"{len(result.participants)} participant(s) on video) to {args.output}", file=out)
    return EXIT_DAMAGED if result.problems else EXIT_OK


def _shred(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    from mediaserver.recording.retention import shred_recording

    path = Path(args.recording_dir)
    if not path.is_dir() or not any(path.glob("*.enc")):
        print(f"error: {path} is not a recording directory", file=sys.stderr)
        return EXIT_USAGE
    if not args.yes:
        print("error: shredding cannot be undone; add --yes", file=sys.stderr)
        return EXIT_USAGE
    keys = shred_recording(path)
    print(f"{path.name}: {keys} key file(s) shredded, files deleted", file=out)
    return 0


def add_recordings_parser(subparsers: Any) -> None:
    """Add ``recordings`` to the CLI's subcommands (``handler`` takes (args, env))."""
    rec = subparsers.add_parser("recordings", help="list, verify and decrypt recordings",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    actions = rec.add_subparsers(dest="recordings_command", required=True, metavar="ACTION")

    def keys(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--keys", metavar="FILE",
                            help=f"KEK file (key_id:base64 lines); default: ${KEYS_ENV}")

    ls = actions.add_parser("list", help="recordings in DIR (reads headers only, no keys)")
    ls.add_argument("directory", metavar="DIR")
    verify = actions.add_parser(
        "verify", help="authenticate every file and check the manifest; writes no plaintext")
    verify.add_argument("directory", metavar="DIR",
                        help="the recordings directory, or one recording's directory")
    verify.add_argument("recording_id", metavar="RECORDING_ID", nargs="?")
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    keys(verify)
    decrypt = actions.add_parser(
        "decrypt", help="write playable WebM files and manifest.json into OUTPUT_DIR")
    decrypt.add_argument("recording_dir", metavar="RECORDING_DIR")
    decrypt.add_argument("output_dir", metavar="OUTPUT_DIR",
                         help="created if missing (mode 0700); existing files are kept")
    keys(decrypt)
    export = actions.add_parser(
        "export", help="one MP4 (H.264 + AAC): a grid of the video, the audio mixed")
    export.add_argument("recording_dir", metavar="RECORDING_DIR")
    export.add_argument("output", metavar="OUTPUT.mp4",
                        help="a new file (never overwritten), outside the recordings directory")
    export.add_argument("--size", default="640x480", metavar="WxH",
                        help="output size, even numbers (default 640x480)")
    export.add_argument("--fps", type=int, default=15, help="output frame rate (default 15)")
    keys(export)
    audit = actions.add_parser(
        "audit", help="verify the consent audit log's hash chain (any edit or deletion)")
    audit.add_argument("log", metavar="AUDIT_LOG")
    audit.add_argument("--anchor", metavar="HASH",
                       help="the head hash kept elsewhere: also catches cut-off last lines")
    shred = actions.add_parser(
        "shred", help="destroy a recording: delete its keys (crypto-shredding), then its files")
    shred.add_argument("recording_dir", metavar="RECORDING_DIR")
    shred.add_argument("--yes", action="store_true", help="really do it (no undo)")
    rec.set_defaults(handler=run_recordings)


def run_recordings(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    """Run a parsed ``recordings`` command; reads only ``env`` (default ``os.environ``)."""
    env = os.environ if env is None else env
    command = {"list": _list, "verify": _verify, "decrypt": _decrypt,
               "export": _export, "shred": _shred, "audit": _audit}[args.recordings_command]
    try:
        return command(args, env, sys.stdout)
    except RecordingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
