"""CPU cost of recording one track: depacketize + mux (PyAV WebM) + encrypt + write.

Media is encoded once beforehand (aiortc's VP8 and Opus encoders, not measured), turned
into RTP packets, then fed through a real RecordingSession writing encrypted files to a
temporary directory. The figure is process CPU seconds per second of media, i.e. the share
of one core a recorded track costs. From the repository root:

    .venv/bin/python -m bench.recording --seconds 20
"""

from __future__ import annotations

import argparse
import fractions
import tempfile
import time

import numpy as np
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder
from av import AudioFrame, VideoFrame

from mediaserver.recording.keys import new_kek_line, parse_keks
from mediaserver.recording.recorder import RecordingSession
from mediaserver.sfu.rtp import build_rtp, parse_rtp


def video_packets(seconds: int, width: int, height: int, fps: int) -> list[bytes]:
    enc = Vp8Encoder()
    rng = np.random.default_rng(1)
    out, seq = [], 0
    for n in range(seconds * fps):
        img = np.full((height, width, 3), 120, np.uint8)
        img += rng.integers(0, 24, img.shape, dtype=np.uint8)  # ~500 kbps of detail
        frame = VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = n * 90000 // fps, fractions.Fraction(1, 90000)
        payloads, ts = enc.encode(frame, force_keyframe=(n == 0))
        for i, p in enumerate(payloads):
            out.append(build_rtp(marker=i == len(payloads) - 1, payload_type=96,
                                 sequence_number=seq & 0xFFFF, timestamp=ts, ssrc=1,
                                 extensions=(), payload=p))
            seq += 1
    return out


def audio_packets(seconds: int) -> list[bytes]:
    enc = OpusEncoder()
    out = []
    t = np.arange(960) / 48000
    for n in range(seconds * 50):
        wave = (np.sin(2 * np.pi * 440 * (t + n * 0.02)) * 8000).astype(np.int16)
        frame = AudioFrame.from_ndarray(wave.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48000, n * 960
        frame.time_base = fractions.Fraction(1, 48000)
        payloads, ts = enc.encode(frame)
        for p in payloads:
            out.append(build_rtp(marker=False, payload_type=111, sequence_number=n & 0xFFFF,
                                 timestamp=ts, ssrc=2, extensions=(), payload=p))
    return out


def measure(kind: str, packets: list[bytes], seconds: int, clock_rate: int) -> dict[str, float]:
    keyring = parse_keks(new_kek_line("bench"))
    parsed = [parse_rtp(p) for p in packets]
    with tempfile.TemporaryDirectory() as tmp:
        session = RecordingSession(tmp, keyring, "bench", now=0.0, wall_time=time.time())
        rec = session.add_track("t", kind=kind, codec_name="VP8" if kind == "video" else "opus",
                                clock_rate=clock_rate, participant="p", now=0.0)
        cpu0 = time.process_time()
        for i, pkt in enumerate(parsed):
            assert pkt is not None
            now = i * seconds / len(parsed)
            rec.on_packet(pkt, 65536 + i, 1 << 32 | pkt.timestamp, False, now)
        session.close(float(seconds))
        cpu = time.process_time() - cpu0
    bytes_in = sum(len(p) for p in packets)
    return {"kind": kind, "media_seconds": seconds, "packets": len(packets),
            "kbps": bytes_in * 8 / seconds / 1000, "frames": rec.frames,
            "cpu_seconds": cpu, "core_percent": 100 * cpu / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--video", default="640x480@30")
    args = ap.parse_args()
    size, fps = args.video.split("@")
    w, h = (int(x) for x in size.split("x"))
    rows = [measure("video", video_packets(args.seconds, w, h, int(fps)), args.seconds, 90000),
            measure("audio", audio_packets(args.seconds), args.seconds, 48000)]
    print("kind   media s  packets   kbps  frames  CPU s  % of a core")
    for r in rows:
        print(f"{r['kind']:6} {r['media_seconds']:7} {r['packets']:8} {r['kbps']:6.0f} "
              f"{r['frames']:7} {r['cpu_seconds']:6.2f} {r['core_percent']:8.2f}")


if __name__ == "__main__":
    main()
