"""Synthetic media that carries its own truth.

Video frames are filled with one colour per sender (so a receiver can tell whose video it
decodes) and carry the frame number in a strip of black/white blocks along the top row
(16 bits, each block 8 px wide), readable after lossy VP8 coding. Audio is a sine tone of
a frequency per sender, so a receiver can tell whose audio it hears by its spectrum.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import math
import time
from collections.abc import Callable, Sequence

import av
import numpy as np
from aiortc.mediastreams import MediaStreamTrack
from av import AudioFrame, VideoFrame
from av.packet import Packet

VIDEO_CLOCK = 90000
AUDIO_RATE = 48000
AUDIO_PTIME = 0.02
BITS = 16
BLOCK = 8
STRIP = 8  # strip height in pixels


class SyntheticVideoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, color: tuple[int, int, int], width: int = 320, height: int = 240,
                 fps: int = 15) -> None:
        super().__init__()
        self.color = color
        self.width = width
        self.height = height
        self.fps = fps
        self.frame_number = 0
        self._start: float | None = None
        base = np.zeros((height, width, 3), dtype=np.uint8)
        base[:, :] = color
        self._base = base

    async def recv(self) -> VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        n = self.frame_number
        target = self._start + n / self.fps
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        img = self._base.copy()
        for bit in range(BITS):
            value = 255 if (n >> bit) & 1 else 0
            img[:STRIP, bit * BLOCK:(bit + 1) * BLOCK] = value
        frame = VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = int(n * VIDEO_CLOCK / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.frame_number += 1
        return frame


def read_frame_number(img: np.ndarray) -> int:
    """The frame number drawn by SyntheticVideoTrack (img is rgb24).

    A frame narrower than the strip's 128 pixels (an 80-wide simulcast layer) carries only
    the low bits that fit: the others read as 0, as they were drawn nowhere.
    """
    n = 0
    for bit in range(BITS):
        block = img[1:STRIP - 1, bit * BLOCK + 2:(bit + 1) * BLOCK - 2]
        if block.size and block.mean() > 127:
            n |= 1 << bit
    return n


def body_color(img: np.ndarray) -> tuple[int, int, int]:
    """Mean colour of the frame below the number strip."""
    mean = img[STRIP * 2:].reshape(-1, 3).mean(axis=0)
    return int(mean[0]), int(mean[1]), int(mean[2])


class SineAudioTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, frequency: float, amplitude: float = 0.3) -> None:
        super().__init__()
        self.frequency = frequency
        self.amplitude = amplitude
        self._samples = int(AUDIO_RATE * AUDIO_PTIME)
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        target = self._start + self._pts / AUDIO_RATE
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t = (np.arange(self._samples) + self._pts) / AUDIO_RATE
        wave = (np.sin(2 * math.pi * self.frequency * t) * self.amplitude * 32767).astype(np.int16)
        frame = AudioFrame.from_ndarray(wave.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self._pts += self._samples
        return frame


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    """The strongest frequency in a block of mono samples."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    spectrum[0] = 0
    return float(np.argmax(spectrum) * rate / len(samples))


# -- load-test media: a send time in every frame, turn-taking speakers, pre-encoded video ----

STAMP_MODULO = 1 << BITS
STAMP_ROWS = 3  # strips drawn by TimestampedVideoTrack: frame number, stamp, ~stamp


def _draw_row(img: np.ndarray, row: int, value: int) -> None:
    top = row * STRIP
    for bit in range(BITS):
        img[top:top + STRIP, bit * BLOCK:(bit + 1) * BLOCK] = 255 if (value >> bit) & 1 else 0


def stamp_of(now: float) -> int:
    """A clock reading (seconds) as the 16-bit millisecond stamp drawn into frames.

    Milliseconds modulo 65536: the receiver recovers the latency from its own reading of
    the same clock as long as latency stays under 65 s, and 16 bits fit a 128 px strip.
    """
    return int(now * 1000) % STAMP_MODULO


def latency_ms(stamp: int, now: float) -> int:
    """End-to-end latency of a frame stamped ``stamp``, received at clock reading ``now``."""
    return (stamp_of(now) - stamp) % STAMP_MODULO


def synthetic_image(base: np.ndarray, number: int, stamp: int | None = None) -> np.ndarray:
    """``base`` with the frame number strip and, if given, the stamp and its complement."""
    img = base.copy()
    _draw_row(img, 0, number % STAMP_MODULO)
    if stamp is not None:
        _draw_row(img, 1, stamp)
        _draw_row(img, 2, stamp ^ (STAMP_MODULO - 1))
    return img


def luma_strips(frame: VideoFrame) -> np.ndarray:
    """The top STAMP_ROWS strips of a decoded frame's luma plane, without a colour conversion.

    Black and white blocks stay below/above 127 in limited-range luma too, so the readers
    above work on it unchanged.
    """
    rows = min(STAMP_ROWS * STRIP, frame.height)
    if frame.format.name not in ("yuv420p", "yuvj420p", "gray"):
        return frame.to_ndarray(format="gray")[:rows]
    plane = frame.planes[0]
    data = np.frombuffer(memoryview(plane), dtype=np.uint8)  # type: ignore[arg-type]
    return data[:rows * plane.line_size].reshape(rows, plane.line_size)[:, :frame.width]


_BIT_VALUES = 1 << np.arange(BITS)


def read_strip(img: np.ndarray, row: int = 0) -> int:
    """The value in strip ``row`` (0: the frame number), like read_frame_number but with
    one numpy reduction per strip: a load test reads three strips of every frame."""
    if img.ndim == 3:
        return read_frame_number(img[row * STRIP:])
    top = row * STRIP
    blocks = img[top + 1:top + STRIP - 1, :BITS * BLOCK].reshape(STRIP - 2, BITS, BLOCK)
    means = blocks[:, :, 2:BLOCK - 2].mean(axis=(0, 2))
    return int(_BIT_VALUES[means > 127].sum())


def carries_stamps(width: int, height: int) -> bool:
    """Whether a frame of this size has room for the frame-number and stamp strips."""
    return width >= BITS * BLOCK and height >= STAMP_ROWS * STRIP


def read_stamp(img: np.ndarray) -> int | None:
    """The stamp drawn by TimestampedVideoTrack, or None when its complement disagrees
    (a block misread after lossy coding would otherwise give a wrong latency)."""
    stamp, check = read_strip(img, 1), read_strip(img, 2)
    return stamp if stamp ^ check == STAMP_MODULO - 1 else None


class TimestampedVideoTrack(SyntheticVideoTrack):
    """SyntheticVideoTrack that also draws its send time (``stamp_of(clock())``) below the
    frame number, and the stamp's complement below that as a check. Needs at least
    128x24 pixels. ``clock`` must be the receiver's clock too (same machine)."""

    def __init__(self, color: tuple[int, int, int], width: int = 320, height: int = 240,
                 fps: int = 15, clock: Callable[[], float] = time.monotonic) -> None:
        if width < BITS * BLOCK or height < STAMP_ROWS * STRIP:
            raise ValueError(f"frames must be at least {BITS * BLOCK}x{STAMP_ROWS * STRIP}")
        super().__init__(color, width, height, fps)
        self.clock = clock

    async def recv(self) -> VideoFrame:
        if self._start is None:
            self._start = self.clock()
        n = self.frame_number
        delay = self._start + n / self.fps - self.clock()
        if delay > 0:
            await asyncio.sleep(delay)
        img = synthetic_image(self._base, n, stamp_of(self.clock()))
        frame = VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = int(n * VIDEO_CLOCK / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.frame_number += 1
        return frame


class TurnTakingAudioTrack(SineAudioTrack):
    """A sine tone that is loud during its own turn and silent otherwise.

    Turns of ``turn_seconds`` rotate over ``turns`` speakers from ``origin`` (a reading of
    ``clock`` shared by the speakers of one room), so the server's audio levels, and with
    them its active speakers, move as in a conversation.
    """

    def __init__(self, frequency: float, turn: int, turns: int, origin: float,
                 turn_seconds: float = 2.0, loud: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(frequency, amplitude=0.0)
        self.turn, self.turns, self.origin = turn, max(1, turns), origin
        self.turn_seconds, self.loud, self.clock = turn_seconds, loud, clock

    def speaking(self, now: float) -> bool:
        return int((now - self.origin) // self.turn_seconds) % self.turns == self.turn

    async def recv(self) -> AudioFrame:
        self.amplitude = self.loud if self.speaking(self.clock()) else 0.0
        return await super().recv()


# libvpx's temporal layering presets (FFmpeg's ts_layering_mode): the TID of each frame in
# a period that restarts at every forced keyframe. Upper layers reference only lower ones.
TEMPORAL_PATTERNS = {2: (0, 1), 3: (0, 2, 1, 2)}


def temporal_ids(count: int, keyframe_interval: int | None, layers: int) -> list[int]:
    """The TID of each of ``count`` frames encoded with ``layers`` temporal layers."""
    if layers < 2:
        return [0] * count
    pattern = TEMPORAL_PATTERNS[layers]
    gop = keyframe_interval or count
    return [pattern[(i % gop) % len(pattern)] for i in range(count)]


def _temporal_options(bitrate: int, layers: int) -> dict[str, str]:
    """L1T2/L1T3 as Chrome sends them: TL0 40 % (3 layers) or 60 % (2) of the rate.

    Error resilience keeps the upper layers from updating the entropy context, so that a
    receiver of fewer layers decodes exactly what the encoder meant.
    """
    kbps = bitrate // 1000
    if layers == 3:
        ts = (f"ts_number_layers=3:ts_target_bitrate={kbps * 4 // 10},{kbps * 6 // 10},{kbps}:"
              "ts_rate_decimator=4,2,1:ts_periodicity=4:ts_layer_id=0,2,1,2:ts_layering_mode=3")
    else:
        ts = (f"ts_number_layers=2:ts_target_bitrate={kbps * 6 // 10},{kbps}:"
              "ts_rate_decimator=2,1:ts_periodicity=2:ts_layer_id=0,1:ts_layering_mode=2")
    return {"error-resilient": "default", "ts-parameters": ts}


def encode_vp8(images: Sequence[np.ndarray], fps: int, bitrate: int = 500_000,
               keyframe_interval: int | None = None, warmup: int = 0,
               temporal_layers: int = 1) -> list[bytes]:
    """Encode rgb24 images to VP8 frames once (the first is a key frame, and then every
    ``keyframe_interval``-th), with settings like aiortc's Vp8Encoder, for
    PreEncodedVideoTrack to replay. With ``temporal_layers`` 2 or 3 the frames follow
    ``temporal_ids``.

    The first ``warmup`` images are encoded and thrown away: libvpx's rate control starts
    low (a few hundred bytes a frame for the first quarter second) and only then settles
    at ``bitrate``; the returned frames start with a key frame forced after the warm-up.
    """
    height, width = images[0].shape[:2]
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = width, height  # type: ignore[attr-defined]
    codec.bit_rate, codec.pix_fmt = bitrate, "yuv420p"  # type: ignore[attr-defined]
    codec.time_base = fractions.Fraction(1, fps)
    codec.options = {"deadline": "realtime", "cpu-used": "-6", "lag-in-frames": "0",
                     "minrate": str(bitrate), "maxrate": str(bitrate), "bufsize": str(bitrate),
                     **(_temporal_options(bitrate, temporal_layers)
                        if temporal_layers > 1 else {})}
    frames: list[bytes] = []
    for i, img in enumerate(images):
        frame = VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        kept = i - warmup
        if kept == 0 or (kept > 0 and keyframe_interval and kept % keyframe_interval == 0):
            frame.pict_type = av.video.frame.PictureType.I
        data = b"".join(bytes(p) for p in codec.encode(frame))  # type: ignore[attr-defined]
        if data and kept >= 0:
            frames.append(data)
    return frames


def replay_frames(width: int, height: int, fps: int, seconds: float = 2.0,
                  bitrate: int | None = None, keyframe_interval: int | None = None,
                  warmup: float = 0.0, temporal_layers: int = 1) -> list[bytes]:
    """``seconds`` of synthetic video encoded once, to replay in a loop (it starts over
    with its key frame every ``seconds``).

    A flat picture codes to almost nothing, so +-16 levels of noise go below the strips,
    and the encoder fills ``bitrate``: by default 0.1 bit per pixel (115 kbps at
    320x240@15), at most aiortc's 500 kbps. Without ``warmup`` (seconds encoded first and
    thrown away, see encode_vp8) the loop starts below the rate: 460 kbps instead of 500
    at 640x480@25; with 1 s of warm-up it holds it (519 kbps).
    """
    rate = bitrate or min(500_000, int(width * height * fps * 0.1))
    base = np.zeros((height, width, 3), dtype=np.int16)
    base[:, :] = (90, 140, 200)
    rng = np.random.default_rng(1)
    images = []
    warm = int(warmup * fps)
    for n in range(warm + max(1, int(seconds * fps))):
        img = base.copy()
        img[STAMP_ROWS * STRIP:] += rng.integers(-16, 17, img[STAMP_ROWS * STRIP:].shape,
                                                 dtype=np.int16)
        images.append(synthetic_image(np.clip(img, 0, 255).astype(np.uint8), n - warm))
    return encode_vp8(images, fps, rate, keyframe_interval, warmup=warm,
                      temporal_layers=temporal_layers)


def frames_kbps(frames: Sequence[bytes], fps: float) -> float:
    """The bitrate of replaying ``frames`` at ``fps`` (VP8 payload, before RTP)."""
    return sum(len(f) for f in frames) * 8 * fps / max(1, len(frames)) / 1000


def encode_opus(frequency: float, seconds: float = 1.0, amplitude: float = 0.3,
                bitrate: int = 96000) -> list[bytes]:
    """A sine tone encoded to Opus packets of 20 ms once, as aiortc's OpusEncoder would
    (stereo, 96 kbps, voip). An integer ``frequency`` over whole seconds loops without a
    phase jump."""
    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate, codec.format = bitrate, "s16"  # type: ignore[attr-defined]
    codec.layout, codec.sample_rate = "stereo", AUDIO_RATE  # type: ignore[attr-defined]
    codec.time_base = fractions.Fraction(1, AUDIO_RATE)
    codec.options = {"application": "voip"}
    samples = int(AUDIO_RATE * AUDIO_PTIME)
    packets: list[bytes] = []
    for n in range(max(1, int(seconds / AUDIO_PTIME))):
        t = (np.arange(samples) + n * samples) / AUDIO_RATE
        wave = (np.sin(2 * math.pi * frequency * t) * amplitude * 32767).astype(np.int16)
        frame = AudioFrame.from_ndarray(np.repeat(wave, 2).reshape(1, -1), format="s16",
                                        layout="stereo")
        frame.sample_rate, frame.pts = AUDIO_RATE, n * samples
        packets += [bytes(p) for p in codec.encode(frame)]  # type: ignore[attr-defined]
    return packets


class PacedLoop:
    """Calls ``tick(n)`` for n = 0, 1, 2... at ``interval`` seconds on the real-time schedule
    (a late tick runs at once, so the count keeps up), from its own task until ``stop``.
    For the test publishers that send their RTP themselves."""

    def __init__(self, interval: float, tick: Callable[[int], None]) -> None:
        self.interval, self.tick = interval, tick
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        start = time.monotonic()
        n = 0
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                delay = start + n * self.interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                self.tick(n)
                n += 1

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class ReplayTrack(MediaStreamTrack):
    """Replays pre-encoded frames in a loop, one every ``interval`` seconds: aiortc's
    sender packetizes an av.Packet (``Encoder.pack``) synchronously instead of encoding in
    its thread pool, so the generator spends no CPU and no event-loop round trip on it.

    It cannot honour a key-frame request (video: the loop's own key frame has to do) and
    carries no audio level (aiortc writes that header extension only when it encodes).
    """

    def __init__(self, kind: str, frames: Sequence[bytes], interval: float, clock_rate: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        if not frames:
            raise ValueError("no frames to replay")
        self.kind = kind
        self.frames, self.interval, self.clock_rate = frames, interval, clock_rate
        self.clock = clock
        self.frame_number = 0
        self._start: float | None = None

    async def recv(self) -> Packet:  # type: ignore[override]
        if self._start is None:
            self._start = self.clock()
        n = self.frame_number
        delay = self._start + n * self.interval - self.clock()
        if delay > 0:
            await asyncio.sleep(delay)
        packet = Packet(self.frames[n % len(self.frames)])
        packet.pts = round(n * self.interval * self.clock_rate)
        packet.time_base = fractions.Fraction(1, self.clock_rate)
        self.frame_number += 1
        return packet


class PreEncodedVideoTrack(ReplayTrack):
    def __init__(self, frames: Sequence[bytes], fps: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__("video", frames, 1 / fps, VIDEO_CLOCK, clock)


class PreEncodedAudioTrack(ReplayTrack):
    def __init__(self, frames: Sequence[bytes],
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__("audio", frames, AUDIO_PTIME, AUDIO_RATE, clock)


def behind_schedule(track: MediaStreamTrack, now: float) -> float | None:
    """Seconds a synthetic track has fallen behind real time at clock reading ``now``.

    These tracks never drop a frame: when their sender asks late, they produce at once to
    catch up, so a generator too busy to encode in time shows up here as a growing debt
    (and the server then receives less than the nominal rate), not as late stamps.
    """
    if isinstance(track, SineAudioTrack):
        start, produced = track._start, track._pts / AUDIO_RATE
    elif isinstance(track, SyntheticVideoTrack):
        start, produced = track._start, track.frame_number / track.fps
    elif isinstance(track, ReplayTrack):
        start, produced = track._start, track.frame_number * track.interval
    else:
        return None
    return None if start is None else max(0.0, now - start - produced)
