"""``mediaserver recordings export``: one watchable MP4 (a video grid and the mixed audio).

Every track and the manifest are decrypted into memory only; the one plaintext file is the
MP4 the operator names. The manifest lines the tracks up: a track's pts 0 is at session time
``first_frame.offset`` (when its first frame arrived), so a frame of pts ``p`` is shown at
``offset + p``. Video: one tile per participant (grid of ceil(sqrt(n)) columns), showing at
each output time the latest frame at or before it, black before the track starts and after
it ends. Audio: every track at 48 kHz mono, placed at its session time, summed and clipped.
The output lasts as long as the recording's media (the end of the last track).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import av
import cv2
import numpy as np

from mediaserver.recording.crypto import KeyRing
from mediaserver.recording.errors import RecordingError, RecordingErrorCode

AUDIO_RATE = 48000
AAC_FRAME = 1024
_EPS = 1e-6  # seconds: float rounding of pts times is not "after"
_REANCHOR = AUDIO_RATE // 50  # a timestamp this far from the running position starts anew


@dataclass
class ExportTrack:
    """One decrypted track (plaintext WebM, in memory) and where it sits in the session."""

    track_id: str
    kind: str
    participant: str
    start: float  # session seconds of pts 0
    end: float  # session seconds just after its last media
    data: bytes


@dataclass
class ExportResult:
    duration: float
    video_frames: int
    audio_samples: int
    participants: list[str]
    problems: list[str]


def load_tracks(recording: Path, keyring: KeyRing) -> tuple[list[ExportTrack], list[str]]:
    """Decrypt the manifest and every listed track into memory; (tracks, problems)."""
    from mediaserver.recording.recorder import MANIFEST_NAME
    from mediaserver.recording.tools import _process, _read_manifest

    path = recording / MANIFEST_NAME
    if not path.is_file():
        raise RecordingError(RecordingErrorCode.INVALID_ARGUMENT,
                             f"{recording} has no manifest (the recording was not closed); "
                             "without it the tracks cannot be lined up")
    report, manifest, _ = _read_manifest(path, keyring)
    if manifest is None:
        raise RecordingError(RecordingErrorCode.INVALID_ARGUMENT,
                             f"manifest: {report.status} ({report.message})")
    tracks: list[ExportTrack] = []
    problems: list[str] = []
    for entry in manifest.get("tracks", []):
        if not isinstance(entry, dict) or entry.get("kind") not in ("video", "audio"):
            continue
        name = str(entry.get("file", ""))
        first = entry.get("first_frame")
        if not entry.get("frames") or not isinstance(first, dict):
            continue  # nothing was recorded on this track
        file = recording / name
        if Path(name).name != name or not file.is_file():
            problems.append(f"{name}: listed in the manifest but missing")
            continue
        plain = io.BytesIO()  # plaintext stays in memory
        rep = _process(file, keyring, plain)
        if rep.status != "complete":
            problems.append(f"{name}: {rep.status} ({rep.message}); using what decrypts")
        if not plain.getbuffer().nbytes:
            continue
        start = float(first["offset"])
        tracks.append(ExportTrack(
            track_id=str(entry.get("track_id")), kind=str(entry["kind"]),
            participant=str(entry.get("participant")), start=start,
            end=start + float(entry.get("duration") or 0.0), data=plain.getvalue()))
    return tracks, problems


# -- video ------------------------------------------------------------------------------------


def _decode(track: ExportTrack, kind: str) -> Iterator[Any]:
    """Decoded frames; a damaged tail ends the track instead of the export."""
    try:
        with av.open(io.BytesIO(track.data), "r") as container:
            stream = (container.streams.video if kind == "video" else container.streams.audio)
            if not stream:
                return
            yield from container.decode(stream[0])
    except av.FFmpegError:
        return


class _VideoCursor:
    """Walks one video track forward in session time, keeping the latest frame."""

    def __init__(self, track: ExportTrack) -> None:
        self.track = track
        self._frames = self._times()
        self.current: tuple[float, np.ndarray] | None = None
        self._next = next(self._frames, None)

    def _times(self) -> Iterator[tuple[float, np.ndarray]]:
        for frame in _decode(self.track, "video"):
            if frame.pts is not None:
                t = self.track.start + float(frame.pts * frame.time_base)
                yield t, frame.to_ndarray(format="rgb24")

    def at(self, t: float) -> tuple[float, np.ndarray] | None:
        """The latest frame at or before ``t``; None before the start or after the end."""
        while self._next is not None and self._next[0] <= t + _EPS:
            self.current, self._next = self._next, next(self._frames, None)
        if self.current is None or t >= self.track.end - _EPS:
            return None
        return self.current


def _fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` scaled into width x height keeping its aspect ratio, centred on black."""
    tile = np.zeros((height, width, 3), np.uint8)
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    x, y = (width - sw) // 2, (height - sh) // 2
    tile[y:y + sh, x:x + sw] = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA)
    return tile


class _Grid:
    def __init__(self, cursors: dict[str, list[_VideoCursor]], width: int,
                 height: int) -> None:
        self.cursors = cursors
        self.width, self.height = width, height
        n = max(1, len(cursors))
        self.cols = math.ceil(math.sqrt(n))
        self.rows = math.ceil(n / self.cols)
        self.tile_w, self.tile_h = width // self.cols, height // self.rows

    def frame(self, t: float) -> np.ndarray:
        canvas = np.zeros((self.height, self.width, 3), np.uint8)
        for i, cursors in enumerate(self.cursors.values()):
            shown = [f for f in (c.at(t) for c in cursors) if f is not None]
            if not shown:
                continue  # black: not present (yet, or any more)
            image = max(shown, key=lambda f: f[0])[1]
            row, col = divmod(i, self.cols)
            x, y = col * self.tile_w, row * self.tile_h
            canvas[y:y + self.tile_h, x:x + self.tile_w] = _fit(image, self.tile_w, self.tile_h)
        return canvas


# -- audio ------------------------------------------------------------------------------------


def _mix(tracks: list[ExportTrack], total: int) -> np.ndarray:
    """Every audio track at 48 kHz mono float, at its session time, summed and clipped."""
    mix = np.zeros(total, np.float32)
    for track in tracks:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
        cursor: int | None = None

        def place(samples: np.ndarray, at: int | None) -> None:
            nonlocal cursor
            if at is not None and (cursor is None or abs(at - cursor) > _REANCHOR):
                cursor = at
            if cursor is None:
                return
            lo, hi = max(cursor, 0), min(cursor + len(samples), total)
            if hi > lo:
                mix[lo:hi] += samples[lo - cursor:hi - cursor]
            cursor += len(samples)

        for frame in _decode(track, "audio"):
            at = None
            if frame.pts is not None:
                at = round((track.start + float(frame.pts * frame.time_base)) * AUDIO_RATE)
            for i, out in enumerate(resampler.resample(frame)):
                place(out.to_ndarray().reshape(-1), at if i == 0 else None)
        for out in resampler.resample(None):
            place(out.to_ndarray().reshape(-1), None)
    np.clip(mix, -1.0, 1.0, out=mix)
    return mix


# -- output -----------------------------------------------------------------------------------


def _create(path: Path) -> io.BufferedRandom:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    return cast(io.BufferedRandom, os.fdopen(fd, "w+b"))


def export(tracks: list[ExportTrack], output: Path, *, size: tuple[int, int] = (640, 480),
           fps: int = 15) -> ExportResult:
    """Write the grid and the mix to a new MP4 (H.264 + AAC) at ``output``; never overwrites."""
    width, height = size
    if width <= 0 or height <= 0 or width % 2 or height % 2 or not 1 <= fps <= 120:
        raise RecordingError(RecordingErrorCode.INVALID_ARGUMENT,
                             "size must be positive and even, fps 1-120")
    duration = max((t.end for t in tracks), default=0.0)
    if duration <= 0:
        raise RecordingError(RecordingErrorCode.INVALID_ARGUMENT, "the recording has no media")
    video = sorted((t for t in tracks if t.kind == "video"), key=lambda t: (t.start, t.track_id))
    cursors: dict[str, list[_VideoCursor]] = {}
    for track in video:
        cursors.setdefault(track.participant, []).append(_VideoCursor(track))
    grid = _Grid(cursors, width, height)
    audio = [t for t in tracks if t.kind == "audio"]
    total = round(duration * AUDIO_RATE)
    mix = _mix(audio, total) if audio else None
    n_frames = max(1, math.ceil(duration * fps - _EPS))

    f = _create(output)
    try:
        with f, av.open(f, "w", format="mp4") as container:
            vstream = container.add_stream("libx264", rate=fps)
            vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
            vstream.time_base = Fraction(1, fps)
            astream = None
            if mix is not None:
                astream = container.add_stream("aac", rate=AUDIO_RATE)
                astream.layout = "mono"
                astream.time_base = Fraction(1, AUDIO_RATE)
            sent = 0
            for k in range(n_frames):
                frame = av.VideoFrame.from_ndarray(grid.frame(k / fps), format="rgb24")
                frame = frame.reformat(format="yuv420p")
                frame.pts, frame.time_base = k, Fraction(1, fps)
                container.mux(vstream.encode(frame))
                if astream is not None and mix is not None:
                    until = total if k == n_frames - 1 else min(total, (k + 1) * total
                                                                // n_frames)
                    while sent < until:
                        chunk = mix[sent:sent + AAC_FRAME]
                        af = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="fltp",
                                                        layout="mono")
                        af.sample_rate, af.pts = AUDIO_RATE, sent
                        af.time_base = Fraction(1, AUDIO_RATE)
                        container.mux(astream.encode(af))
                        sent += len(chunk)
            container.mux(vstream.encode(None))
            if astream is not None:
                container.mux(astream.encode(None))
    except BaseException:
        output.unlink(missing_ok=True)
        raise
    return ExportResult(duration=duration, video_frames=n_frames,
                        audio_samples=total if mix is not None else 0,
                        participants=list(cursors), problems=[])


def export_recording(recording: Path, keyring: KeyRing, output: Path, *,
                     size: tuple[int, int] = (640, 480), fps: int = 15) -> ExportResult:
    """Decrypt ``recording`` in memory and export it to ``output`` (a new MP4)."""
    recording, output = recording.resolve(), output.resolve()
    if recording in output.parents or output.parent == recording.parent:
        raise RecordingError(RecordingErrorCode.INVALID_ARGUMENT,
                             "refusing to write plaintext into the recordings directory; "
                             "name an output file outside it")
    if output.exists():
        raise RecordingError(RecordingErrorCode.INVALID_ARGUMENT,
                             f"{output} already exists; not overwritten")
    tracks, problems = load_tracks(recording, keyring)
    result = export(tracks, output, size=size, fps=fps)
    result.problems = problems
    return result
