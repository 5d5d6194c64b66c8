"""Recording taps: forwarded RTP -> whole frames -> streamed WebM -> encrypted file.

``TrackRecorder`` sits on one published track like a consumer (``on_packet`` has the
signature of ``Consumer.forward``). It rebuilds frames (``depacketize``), muxes them with
PyAV into WebM without re-encoding, and hands the muxer's output straight to its sink, an
``EncryptedWriter``: no plaintext byte ever reaches a file. Because that sink cannot seek,
the Matroska muxer runs in live mode (unknown-size segment and clusters, no cues, no
duration to patch at the end); every cluster is complete when written, so a file cut off
by a crash still plays up to the cut.

``RecordingSession`` owns one encrypted file per track under ``<directory>/<recording_id>/``,
pauses and resumes them together (consent), and at ``close`` writes an encrypted manifest
that says which file holds which participant's track and how to line the tracks up.

Nothing here reads the clock: ``now`` is the caller's monotonic time, and the session is
told once which wall-clock time its start corresponds to.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

import av

from mediaserver.recording.audit import fsync_dir
from mediaserver.recording.crypto import (
    DEFAULT_SEGMENT_SIZE,
    EncryptedWriter,
    KeyRing,
    write_key_file,
)
from mediaserver.recording.depacketize import DEPACKETIZERS, Frame
from mediaserver.recording.errors import RecordingError, RecordingErrorCode
from mediaserver.recording.format import write_all
from mediaserver.sfu.rtcp import seconds_from_ntp
from mediaserver.sfu.rtp import RtpPacket

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json.enc"
MANIFEST_FORMAT = "mediaserver-recording-manifest"
MANIFEST_VERSION = 1
TRACK_SUFFIX = ".webm.enc"
NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")  # safe as a file name
# The sink cannot seek (PyAV sees no seek/tell), so FFmpeg's Matroska muxer writes an
# unknown-size Segment without SeekHead, Cues or Duration ("live" states that intent). It
# holds each Cluster in memory until it closes: after 1 s, 32 KiB, or at a video keyframe
# past 4 KiB. The time limit is set explicitly because it bounds what a crash loses.
MUX_OPTIONS = {"live": "1", "cluster_time_limit": "1000", "cluster_size_limit": "32768"}
# A timestamp step this much larger than the wall-clock step (or negative by this much) is a
# new stream behind the same track (the publisher reconnected): continue on the wall clock.
MAX_CLOCK_SKEW = 2.0
# Encryption segment sizes: a crash loses at most the segment still filling, so audio
# (4-12 KB/s) gets small ones: 8 KiB is about 2 s at 32 kbit/s, for 0.25 % overhead.
SEGMENT_SIZES = {"video": DEFAULT_SEGMENT_SIZE, "audio": 8 * 1024}
_VP8_START_CODE = b"\x9d\x01\x2a"


class Sink(Protocol):
    def write(self, data: bytes) -> int | None: ...


def vp8_dimensions(frame: bytes) -> tuple[int, int] | None:
    """(width, height) of a VP8 keyframe (RFC 6386 9.1), None for anything else."""
    if len(frame) < 10 or frame[0] & 0x01 or frame[3:6] != _VP8_START_CODE:
        return None
    width = (frame[6] | frame[7] << 8) & 0x3FFF
    height = (frame[8] | frame[9] << 8) & 0x3FFF
    return (width, height) if width and height else None


def check_codec(kind: str, codec_name: str, clock_rate: int, channels: int) -> str:
    """The codec's name as recorded ("VP8", "OPUS"); raises if it cannot be recorded."""
    codec = codec_name.upper()
    if (kind, codec) not in (("video", "VP8"), ("audio", "OPUS")):
        raise RecordingError(RecordingErrorCode.INVALID_ARGUMENT,
                             f"cannot record {kind} in {codec_name}; "
                             "supported: video VP8, audio Opus")
    if clock_rate <= 0 or not 1 <= channels <= 2:
        raise RecordingError(RecordingErrorCode.INVALID_ARGUMENT,
                             f"bad clock rate {clock_rate} or channel count {channels}")
    return codec


class _WriteOnly:
    """What the muxer sees of the sink: ``write`` only, so PyAV never tries to seek it."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self.bytes = 0

    def write(self, data: bytes) -> int:
        write_all(cast(BinaryIO, self._sink), bytes(data))
        self.bytes += len(data)
        return len(data)


@dataclass(frozen=True)
class TrackInfo:
    """What one track's file holds, and how its timeline maps to RTP and to the clock.

    ``first_rtp_ts`` (extended) is pts 0; ``first_time`` is the caller's ``now`` when that
    frame was complete. ``sender_report`` maps the publisher's NTP clock (Unix seconds) to
    a pts, which lines up the audio and video of one publisher better than arrival times.
    """

    kind: str
    codec: str
    clock_rate: int
    channels: int | None
    width: int | None
    height: int | None
    frames: int
    keyframes: int  # video keyframes (every audio frame stands alone; counted as 0)
    media_bytes: int  # encoded frame bytes muxed
    container_bytes: int  # WebM bytes written to the sink
    first_rtp_ts: int | None
    first_time: float | None
    duration: float  # seconds from the first frame to the end of the last
    dropped_frames: int
    drops: dict[str, int]
    lost_packets: int
    paused_packets: int
    discontinuities: int
    sender_report: dict[str, float] | None
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class TrackRecorder:
    """One track into one WebM stream (VP8 video or Opus audio), written to ``sink``.

    Video starts at a keyframe and, after a loss or a resume, drops frames until the next
    one; ``needs_keyframe`` tells the caller to ask the publisher (PLI). A failing sink or
    muxer stops this track only (``error``), never the packet path.
    """

    def __init__(self, kind: str, codec_name: str, clock_rate: int, sink: Sink, *,
                 channels: int = 2) -> None:
        codec = check_codec(kind, codec_name, clock_rate, channels)
        self.kind = kind
        self.codec = codec
        self.clock_rate = clock_rate
        self.channels = channels if kind == "audio" else None
        self.paused = False
        self.closed = False
        self.error: str | None = None
        self.width: int | None = None
        self.height: int | None = None
        self.frames = 0
        self.keyframes = 0
        self.media_bytes = 0
        self.paused_packets = 0
        self.discontinuities = 0
        self.first_rtp_ts: int | None = None
        self.first_time: float | None = None
        self._depacketizer = DEPACKETIZERS[codec]()
        self._out = _WriteOnly(sink)
        self._time_base = Fraction(1, clock_rate)
        self._container: Any = None  # av OutputContainer, opened at the first frame
        self._stream: Any = None
        self._offset = 0  # added to (ext_ts - first_rtp_ts) after a discontinuity
        self._last_ts = 0  # extended RTP timestamp of the last frame written
        self._last_pts = 0
        self._last_time = 0.0
        self._min_step: int | None = None
        self._drops: dict[str, int] = {}
        self._sender_report: dict[str, float] | None = None
        self._info: TrackInfo | None = None

    @property
    def needs_keyframe(self) -> bool:
        return (not self.paused and not self.closed and self.error is None
                and self._depacketizer.needs_keyframe)

    # -- packet path ---------------------------------------------------------------------

    def on_packet(self, pkt: RtpPacket, ext_seq: int, ext_ts: int, keyframe: bool,
                  now: float) -> None:
        """A packet as the producer fans it out (``keyframe`` is recomputed per frame)."""
        if self.closed or self.error is not None:
            return
        if self.paused:
            self.paused_packets += 1
            return
        for frame in self._depacketizer.push(pkt, ext_seq, ext_ts, now):
            self._write(frame, now)

    def on_sender_report(self, ntp: int, rtp_ts: int, now: float) -> None:
        """The publisher's RTCP sender report: remember its NTP time for one of our pts."""
        if self.first_rtp_ts is None:
            return
        last = self._last_ts
        delta = (rtp_ts - last) & 0xFFFFFFFF
        ext = last + (delta - (1 << 32) if delta >= 1 << 31 else delta)
        pts = ext - self.first_rtp_ts + self._offset
        self._sender_report = {"ntp_time": seconds_from_ntp(ntp), "pts": pts / self.clock_rate}

    def pause(self) -> None:
        """Stop writing; frames already complete are kept, anything partial is dropped."""
        if self.paused or self.closed:
            return
        for frame in self._depacketizer.flush():
            self._write(frame, self._last_time)
        self._depacketizer.reset()
        self.paused = True

    def resume(self) -> None:
        """Write again from the next keyframe (video) or the next packet (audio)."""
        if not self.paused or self.closed:
            return
        self.paused = False

    def source_changed(self) -> None:
        """A new stream behind the track (``Producer.rebind``): start over at a keyframe.

        Its sequence numbers and timestamps restart at random; timestamps continue on the
        wall clock (a discontinuity), and nothing buffered from the old stream is mixed in.
        """
        if self.closed or self.paused:
            return
        for frame in self._depacketizer.flush():
            self._write(frame, self._last_time)
        self._depacketizer.reset()

    def close(self) -> TrackInfo:
        """Write what is complete, end the WebM stream; the sink itself is left open."""
        if self._info is not None:
            return self._info
        if self.error is None and not self.paused:
            for frame in self._depacketizer.flush():
                self._write(frame, self._last_time)
        if self._container is not None:
            try:
                self._container.close()
            except Exception as exc:  # the sink failed at the very end
                self._fail(exc)
        self.closed = True
        stats = self._depacketizer.stats
        drops = self._drops_so_far()
        duration = 0.0
        if self.frames:
            duration = round((self._last_pts + (self._min_step or 0)) / self.clock_rate, 6)
        self._info = TrackInfo(
            kind=self.kind, codec=self.codec, clock_rate=self.clock_rate,
            channels=self.channels, width=self.width, height=self.height,
            frames=self.frames, keyframes=self.keyframes, media_bytes=self.media_bytes,
            container_bytes=self._out.bytes, first_rtp_ts=self.first_rtp_ts,
            first_time=self.first_time, duration=duration,
            dropped_frames=sum(drops.values()), drops=drops,
            lost_packets=stats.lost_packets, paused_packets=self.paused_packets,
            discontinuities=self.discontinuities, sender_report=self._sender_report,
            error=self.error)
        return self._info

    # -- muxing ----------------------------------------------------------------------------

    def _drops_so_far(self) -> dict[str, int]:
        drops = dict(self._depacketizer.stats.dropped)
        for reason, n in self._drops.items():
            drops[reason] = drops.get(reason, 0) + n
        return drops

    def _drop(self, reason: str) -> None:
        self._drops[reason] = self._drops.get(reason, 0) + 1

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            log.warning("recording of a %s track stopped: %s", self.kind, exc)
            self.error = f"{type(exc).__name__}: {exc}"

    def _open(self, frame: Frame) -> bool:
        if self.kind == "video":
            size = vp8_dimensions(frame.data)
            if size is None:
                return False
            self.width, self.height = size
        container = av.open(self._out, "w", format="webm", options=MUX_OPTIONS)
        if self.kind == "video":
            # No codec context: nothing to open. (PyAV probes FFmpeg's extract_extradata
            # filter for it, which FFmpeg logs as an error if av logging is on: harmless.)
            stream = container.add_mux_stream("vp8", width=self.width, height=self.height)
        else:
            # A codec context (not add_mux_stream) because WebM needs the OpusHead as codec
            # private data, and only an opened libopus context produces one; the encoder is
            # never fed. It also sets CodecDelay/pre-skip to libopus's 312 samples, the
            # algorithmic delay of the publisher's (libopus) encoder.
            stream = container.add_stream("libopus", rate=self.clock_rate)
            stream.codec_context.layout = "stereo" if self.channels == 2 else "mono"
        stream.time_base = self._time_base
        self._container, self._stream = container, stream
        return True

    def _pts(self, frame: Frame, now: float) -> int | None:
        """The frame's pts in 1/clock_rate, or None to drop it (out of order)."""
        assert self.first_rtp_ts is not None
        pts = frame.timestamp - self.first_rtp_ts + self._offset
        step = pts - self._last_pts
        elapsed = max(0.0, now - self._last_time) * self.clock_rate
        skew = MAX_CLOCK_SKEW * self.clock_rate
        if 0 < step <= elapsed + skew:
            return pts
        if -skew < step <= 0:
            return None
        # The timestamps jumped (a new stream behind the track): carry on by the wall clock.
        new_pts = self._last_pts + max(1, round(elapsed))
        self._offset += new_pts - pts
        self.discontinuities += 1
        return new_pts

    def _write(self, frame: Frame, now: float) -> None:
        if self.error is not None:
            return
        if self._container is None:
            if not self._open(frame):
                self._drop("no_dimensions")
                return
            self.first_rtp_ts, self.first_time = frame.timestamp, now
            pts: int | None = 0
        else:
            pts = self._pts(frame, now)
            if pts is None:
                self._drop("out_of_order")
                return
            step = pts - self._last_pts
            if self._min_step is None or step < self._min_step:
                self._min_step = step
        assert pts is not None
        packet = av.Packet(frame.data)
        packet.pts = packet.dts = pts
        packet.time_base = self._time_base
        packet.stream = self._stream
        packet.is_keyframe = frame.keyframe
        try:
            self._container.mux_one(packet)
        except Exception as exc:  # PyAV raises the sink's own exception, or an FFmpegError
            self._fail(exc)
            return
        self._last_ts, self._last_pts, self._last_time = frame.timestamp, pts, now
        self.frames += 1
        self.keyframes += frame.keyframe and self.kind == "video"
        self.media_bytes += len(frame.data)


# -- session ------------------------------------------------------------------------------


class _HashingFile:
    """The file under an ``EncryptedWriter``: counts and hashes the ciphertext on the way."""

    def __init__(self, f: BinaryIO) -> None:
        self.file = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        n = self.file.write(data)
        self.sha256.update(memoryview(data)[:n])
        self.size += n
        return n

    def flush(self) -> None:
        self.file.flush()


@dataclass
class _Track:
    track_id: str
    participant: str
    source: str | None
    file_name: str
    file: _HashingFile
    writer: EncryptedWriter
    recorder: TrackRecorder
    added: float
    closed_cleanly: bool = False


def _check_name(what: str, name: str) -> None:
    if not NAME_RE.fullmatch(name):
        raise RecordingError(RecordingErrorCode.INVALID_ARGUMENT,
                             f"{what} {name!r} must be 1-64 of A-Z a-z 0-9 . _ - "
                             "and not start with a dot")


def _create(path: Path) -> BinaryIO:
    """A new owner-only file; never overwrites (a recording is never written twice)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return os.fdopen(fd, "wb")


class RecordingSession:
    """The encrypted files of one recording: one per track, plus a manifest at close.

    ``now`` is the caller's monotonic clock (the one it passes to ``on_packet``) and
    ``wall_time`` the Unix time at that same moment; the manifest gives every time in both.
    Each track file's header names ``<recording_id>/<track_id>`` (and its data key is bound
    to that name), so a file found in another place is recognised as moved. ``segment_size``
    None picks per kind (``SEGMENT_SIZES``); a number applies to every file.
    """

    def __init__(self, directory: str | os.PathLike[str], keyring: KeyRing, recording_id: str,
                 *, now: float, wall_time: float, segment_size: int | None = None,
                 detached_keys: bool = False) -> None:
        _check_name("recording id", recording_id)
        self.recording_id = recording_id
        self.path = Path(directory) / recording_id
        self.keyring = keyring
        self.segment_size = segment_size
        self.detached_keys = detached_keys
        self.started = now
        self.wall_offset = wall_time - now
        self.closed = False
        self.manifest: dict[str, Any] | None = None
        self._tracks: dict[str, _Track] = {}
        self._pauses: list[list[float | None]] = []
        Path(directory).mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self.path.mkdir(mode=0o700)
        except FileExistsError:
            raise RecordingError(RecordingErrorCode.INVALID_ARGUMENT,
                                 f"recording {recording_id!r} already exists in "
                                 f"{directory}") from None

    @property
    def paused(self) -> bool:
        return bool(self._pauses) and self._pauses[-1][1] is None

    @property
    def tracks(self) -> dict[str, TrackRecorder]:
        return {tid: t.recorder for tid, t in self._tracks.items()}

    def add_track(self, track_id: str, *, kind: str, codec_name: str, clock_rate: int,
                  participant: str, now: float, channels: int = 2,
                  source: str | None = None) -> TrackRecorder:
        """Open ``<track_id>.webm.enc``; the returned recorder is the track's packet tap."""
        if self.closed:
            raise RecordingError(RecordingErrorCode.WRITER_CLOSED, "the recording is closed")
        _check_name("track id", track_id)
        if track_id in self._tracks:
            raise RecordingError(RecordingErrorCode.INVALID_ARGUMENT,
                                 f"track {track_id!r} is already being recorded")
        check_codec(kind, codec_name, clock_rate, channels)
        path = self.path / f"{track_id}{TRACK_SUFFIX}"
        f = _create(path)
        try:
            hashing = _HashingFile(f)
            writer = EncryptedWriter(cast(BinaryIO, hashing), self.keyring,
                                     recording_id=f"{self.recording_id}/{track_id}",
                                     segment_size=self.segment_size or SEGMENT_SIZES[kind],
                                     detached_key=self.detached_keys)
            if writer.key_blob is not None:
                write_key_file(path, writer.key_blob)  # now, so a crash keeps it readable
            recorder = TrackRecorder(kind, codec_name, clock_rate, writer, channels=channels)
        except BaseException:
            f.close()
            path.unlink(missing_ok=True)
            raise
        if self.paused:
            recorder.pause()
        self._tracks[track_id] = _Track(track_id, participant, source, path.name, hashing,
                                        writer, recorder, now)
        return recorder

    def pause(self, now: float) -> None:
        """Stop writing media on every track until ``resume`` (consent is missing)."""
        if self.closed or self.paused:
            return
        self._pauses.append([now, None])
        for track in self._tracks.values():
            track.recorder.pause()

    def resume(self, now: float) -> None:
        if self.closed or not self.paused:
            return
        self._pauses[-1][1] = now
        for track in self._tracks.values():
            track.recorder.resume()

    def flush(self) -> None:
        """Push full segments to disk (fsync); call at a steady interval to bound crash loss.

        Blocks for the duration of the fsyncs. Afterwards, per track, only the muxer's open
        cluster (under 1 s) and the encryption segment still filling are not on disk.
        """
        for track in self._tracks.values():
            if not track.writer.closed:
                track.writer.flush()
                os.fsync(track.file.file.fileno())

    def close(self, now: float) -> dict[str, Any]:
        """End every track, write the encrypted manifest; returns the manifest. Idempotent."""
        if self.manifest is not None:
            return self.manifest
        if self.paused:
            self._pauses[-1][1] = now
        self.closed = True
        tracks: list[dict[str, Any]] = []
        for track in self._tracks.values():
            info = track.recorder.close()
            if not track.file.file.closed:  # (an earlier close() may have got this far)
                try:
                    track.writer.close()
                    track.file.file.flush()
                    os.fsync(track.file.file.fileno())
                    track.closed_cleanly = True
                except (OSError, RecordingError) as exc:
                    log.warning("closing recording file %s failed: %s", track.file_name, exc)
                finally:
                    track.file.file.close()
            tracks.append(self._track_entry(track, info))
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "recording_id": self.recording_id,
            "started": self._time(self.started),
            "ended": self._time(now),
            "pauses": [{"start": self._time(s), "end": self._time(e)} for s, e in self._pauses],
            "tracks": tracks,
        }
        body = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False).encode()
        path = self.path / MANIFEST_NAME
        with _create(path) as f:
            writer = EncryptedWriter(f, self.keyring,
                                     recording_id=f"{self.recording_id}/manifest",
                                     segment_size=self.segment_size or DEFAULT_SEGMENT_SIZE,
                                     detached_key=self.detached_keys)
            if writer.key_blob is not None:
                write_key_file(path, writer.key_blob)
            writer.write(body)
            writer.close()
            os.fsync(f.fileno())
        fsync_dir(self.path)
        self.manifest = manifest
        return manifest

    def _time(self, t: float | None) -> dict[str, float] | None:
        if t is None:
            return None
        return {"time": t, "wall": t + self.wall_offset, "offset": round(t - self.started, 6)}

    def _track_entry(self, track: _Track, info: TrackInfo) -> dict[str, Any]:
        entry = info.to_json()
        first = entry.pop("first_time")
        entry.update({
            "track_id": track.track_id,
            "participant": track.participant,
            "source": track.source,
            "file": track.file_name,
            "added": self._time(track.added),
            "first_frame": self._time(first),
            "plaintext_bytes": track.writer.bytes_in,
            "encrypted_bytes": track.file.size,
            "sha256": track.file.sha256.hexdigest(),
            "complete": track.closed_cleanly and info.error is None,
        })
        return entry
