"""``mediaserver recordings list|verify|decrypt`` on recordings made by a RecordingSession."""

from __future__ import annotations

import argparse
import base64
import json
import shutil
from pathlib import Path
from typing import Any

import av
import pytest

from mediaserver.recording.crypto import shred_key_file
from mediaserver.recording.recorder import MANIFEST_NAME
from mediaserver.recording.tools import KEYS_ENV, add_recordings_parser, run_recordings
from tests.unit.test_recording_recorder import WEBM_MAGIC, record

KEY_LINE = "k1:" + "A" * 43 + "="  # the RING the recorder tests use
OTHER_LINE = "k1:" + base64.b64encode(bytes(range(32))).decode()  # same id, another key


def cli(capsys: pytest.CaptureFixture[str], *argv: str,
        env: dict[str, str] | None = None) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="mediaserver")
    add_recordings_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["recordings", *argv])
    assert args.handler is run_recordings  # what cli.main will call, with (args, env)
    code = args.handler(args, {KEYS_ENV: KEY_LINE} if env is None else env)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("made")
    record(root / "recordings")
    return root / "recordings"


@pytest.fixture
def root(made: Path, tmp_path: Path) -> Path:
    """A fresh copy of one closed recording, ``rec-1``, for each test to damage."""
    shutil.copytree(made, tmp_path / "recordings")
    return tmp_path / "recordings"


def open_webm(path: Path, kind: str) -> list[Any]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0] if kind == "video" else container.streams.audio[0]
        return list(container.decode(stream))


def test_list_reads_headers_without_keys(root: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "list", str(root), env={})
    assert code == 0
    header, row = out.splitlines()
    assert header.split("\t") == ["RECORDING", "FILES", "BYTES", "MANIFEST", "KEKS"]
    name, files, size, manifest, keks = row.split("\t")
    assert (name, files, manifest, keks) == ("rec-1", "3", "yes", "k1")
    assert int(size) == sum(p.stat().st_size for p in (root / "rec-1").iterdir())


def test_verify_complete_recording(root: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    code, out, _ = cli(capsys, "verify", str(root))
    assert code == 0, out
    assert out.splitlines()[0] == "recording rec-1: OK"
    assert "TR_video.webm.enc" in out and "manifest: ok" in out
    # Nothing was written anywhere: no new files, nothing changed.
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before

    key_file = tmp_path / "keks.txt"
    key_file.write_text(f"# current\n{KEY_LINE}\n")
    code, out, _ = cli(capsys, "verify", str(root), "rec-1", "--keys", str(key_file),
                       "--json", env={})
    assert code == 0
    [report] = json.loads(out)
    assert report["ok"] and report["manifest"]["status"] == "complete"
    assert {f["file"]: (f["status"], f["manifest"]) for f in report["files"]} == {
        "TR_audio.webm.enc": ("complete", "ok"), "TR_video.webm.enc": ("complete", "ok")}


def test_decrypt_writes_playable_webm(root: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "plain"
    code, out, _ = cli(capsys, "decrypt", str(root / "rec-1"), str(out_dir))
    assert code == 0, out
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "TR_audio.webm", "TR_video.webm", "manifest.json"]
    assert out_dir.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in out_dir.iterdir())
    manifest = json.loads((out_dir / "manifest.json").read_text())
    video = next(t for t in manifest["tracks"] if t["kind"] == "video")

    frames = open_webm(out_dir / "TR_video.webm", "video")
    assert (out_dir / "TR_video.webm").read_bytes().startswith(WEBM_MAGIC)
    assert len(frames) == video["frames"] == 60
    assert {(f.width, f.height) for f in frames} == {(160, 120)}
    end = float(frames[-1].pts * frames[-1].time_base) + 1 / 30
    assert end == pytest.approx(video["duration"], abs=1 / 30)
    samples = sum(f.samples for f in open_webm(out_dir / "TR_audio.webm", "audio"))
    assert abs(samples - 2 * 48000) <= 960

    # A second run never overwrites plaintext already there.
    code, out, _ = cli(capsys, "decrypt", str(root / "rec-1"), str(out_dir))
    assert code == 1 and "not overwritten" in out


@pytest.mark.parametrize("where", ["recording", "inside", "root"])
def test_decrypt_refuses_the_recordings_directory(root: Path, where: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rec = root / "rec-1"
    target = {"recording": rec, "inside": rec / "plain", "root": root}[where]
    before = sorted(root.rglob("*"))
    code, _, err = cli(capsys, "decrypt", str(rec), str(target))
    assert code == 2 and "refusing" in err
    assert sorted(root.rglob("*")) == before


def test_truncated_file_is_reported_and_its_prefix_plays(
        root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = root / "rec-1" / "TR_video.webm.enc"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    code, out, _ = cli(capsys, "verify", str(root), "--json")
    assert code == 1
    [report] = json.loads(out)
    files = {f["file"]: f for f in report["files"]}
    assert files["TR_video.webm.enc"]["status"] == "truncated"
    assert files["TR_video.webm.enc"]["code"] == "truncated"
    assert files["TR_video.webm.enc"]["manifest"] == "differs"
    assert files["TR_audio.webm.enc"]["status"] == "complete"

    code, out, _ = cli(capsys, "verify", str(root))
    assert "recording rec-1: PROBLEMS" in out and "truncated" in out

    out_dir = tmp_path / "plain"
    code, out, _ = cli(capsys, "decrypt", str(root / "rec-1"), str(out_dir))
    assert code == 1 and "truncated" in out
    frames = open_webm(out_dir / "TR_video.webm", "video")
    assert 0 < len(frames) < 60


def test_crashed_recording_has_no_manifest(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    session, _ = record(tmp_path / "recordings", video_frames=30, close=False)
    session.flush()
    code, out, _ = cli(capsys, "verify", str(tmp_path / "recordings"))
    assert code == 1
    assert "no manifest" in out and "truncated" in out
    code, out, _ = cli(capsys, "decrypt", str(tmp_path / "recordings" / "rec-1"),
                       str(tmp_path / "plain"))
    assert code == 1
    assert open_webm(tmp_path / "plain" / "TR_video.webm", "video")


def test_altered_and_unreadable_files(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = root / "rec-1" / "TR_audio.webm.enc"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    code, out, _ = cli(capsys, "verify", str(root), "--json")
    [report] = json.loads(out)
    files = {f["file"]: f for f in report["files"]}
    assert code == 1 and files["TR_audio.webm.enc"]["status"] == "corrupt"
    assert files["TR_audio.webm.enc"]["code"] == "segment_auth_failed"

    # Another key under the same id: every file is unreadable, nothing raises.
    code, out, _ = cli(capsys, "verify", str(root), "--json", env={KEYS_ENV: OTHER_LINE})
    [report] = json.loads(out)
    assert code == 1
    assert {f["status"] for f in report["files"]} == {"unreadable"}
    assert report["manifest"]["code"] == "wrong_kek"


def test_moved_file_is_reported(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = root / "rec-1"
    (rec / "TR_video.webm.enc").rename(rec / "TR_other.webm.enc")
    code, out, _ = cli(capsys, "verify", str(root))
    assert code == 1
    assert "written as 'rec-1/TR_video'" in out
    assert "TR_video.webm.enc: listed in the manifest but missing" in out
    assert "not listed" in out


def test_detached_keys_can_be_shredded(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from mediaserver.recording.recorder import RecordingSession
    from tests.unit.test_recording_recorder import RING

    session = RecordingSession(tmp_path / "r", RING, "rec-2", now=0.0, wall_time=0.0,
                               detached_keys=True)
    session.add_track("a1", kind="audio", codec_name="opus", clock_rate=48000,
                      participant="p", now=0.0)
    session.close(1.0)
    rec = tmp_path / "r" / "rec-2"
    assert (rec / "a1.webm.enc.key").exists() and (rec / f"{MANIFEST_NAME}.key").exists()
    code, _, _ = cli(capsys, "verify", str(rec))
    assert code == 0
    assert shred_key_file(rec / "a1.webm.enc")
    code, out, _ = cli(capsys, "verify", str(rec), "--json")
    [report] = json.loads(out)
    assert code == 1 and report["files"][0]["code"] == "key_destroyed"


def test_usage_errors(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "verify", str(root), env={})
    assert code == 2 and KEYS_ENV in err
    code, _, err = cli(capsys, "verify", str(root), "--keys", str(tmp_path / "missing"))
    assert code == 2 and "kek_unreadable" in err
    code, _, err = cli(capsys, "verify", str(root), "nope")
    assert code == 2 and "no recording directory" in err
    code, _, err = cli(capsys, "decrypt", str(tmp_path), str(tmp_path / "out"))
    assert code == 2 and "not a recording directory" in err
    code, _, err = cli(capsys, "list", str(tmp_path / "missing"))
    assert code == 2
