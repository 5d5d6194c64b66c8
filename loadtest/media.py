"""Synthetic media that carries its own truth.

Video frames are filled with one colour per sender (so a receiver can tell whose video it
decodes) and carry the frame number in a strip of black/white blocks along the top row
(16 bits, each block 8 px wide), readable after lossy VP8 coding. Audio is a sine tone of
a frequency per sender, so a receiver can tell whose audio it hears by its spectrum.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time

import numpy as np
from aiortc.mediastreams import MediaStreamTrack
from av import AudioFrame, VideoFrame

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
    """The frame number drawn by SyntheticVideoTrack (img is rgb24)."""
    n = 0
    for bit in range(BITS):
        block = img[1:STRIP - 1, bit * BLOCK + 2:(bit + 1) * BLOCK - 2]
        if block.mean() > 127:
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
