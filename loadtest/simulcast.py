"""An aiortc participant taught to publish simulcast, as browsers do.

aiortc sends one encoding per track. This publisher offers one video m-section with three
RID-based encodings (``a=rid`` + ``a=simulcast``, RFC 8853) and sends the layers itself on
the connection's SRTP session: pre-encoded VP8 loops of three sizes, each layer on its own
SSRC with the mid and rid header extensions, as Chrome would. It answers PLIs per layer
with that layer's next keyframe, and honours the server's ``publisher_layers`` event by
stopping the layers nobody receives. With ``temporal_layers`` 2 or 3 each layer is encoded
as L1T2/L1T3 (libvpx's temporal layering, as Chrome sends simulcast) and its payload
descriptors carry TL0PICIDX, TID and the layer-sync bit.

Audio goes through aiortc's own sender (a pre-encoded Opus loop).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCRtpSender, RTCSessionDescription
from aiortc.sdp import SessionDescription

from loadtest.client import SignalClient, _config
from loadtest.media import PacedLoop, PreEncodedAudioTrack, encode_opus, replay_frames, temporal_ids
from mediaserver.sfu import aiortc_adapter, rtcp
from mediaserver.sfu.rtp import build_rtp

VIDEO_CLOCK = 90000
MAX_CHUNK = 1100


@dataclass
class LayerConfig:
    rid: str
    width: int
    height: int
    bitrate: int


# Lowest first, as the offer lists them.
DEFAULT_LAYERS = (
    LayerConfig("q", 160, 120, 60_000),
    LayerConfig("h", 320, 240, 250_000),
    LayerConfig("f", 640, 480, 600_000),
)


@dataclass
class _Layer:
    config: LayerConfig
    frames: list[bytes]
    keyframes: list[int]
    tids: list[int] | None = None  # per frame, when encoded with temporal layers
    ssrc: int = field(default_factory=lambda: random.randrange(1, 1 << 32))
    seq: int = field(default_factory=lambda: random.randrange(1 << 16))
    ts_base: int = field(default_factory=lambda: random.randrange(1 << 32))
    picture_id: int = field(default_factory=lambda: random.randrange(1 << 15))
    tl0picidx: int = field(default_factory=lambda: random.randrange(256))
    synced: set[int] = field(default_factory=set)  # TIDs sent since the last TL0 frame
    index: int = 0
    active: bool = True
    packets_sent: int = 0
    keyframe_requests: int = 0


def vp8_packets(frame: bytes, picture_id: int,
                temporal: tuple[int, int, bool] | None = None) -> list[bytes]:
    """RFC 7741 payloads of one frame, with a 15-bit PictureID, and with ``temporal``
    (TL0PICIDX, TID, layer sync) the L and T fields."""
    ext = 0x80  # I
    fields = bytes((0x80 | (picture_id >> 8), picture_id & 0xFF))
    if temporal is not None:
        tl0, tid, sync = temporal
        ext |= 0x60  # L, T
        fields += bytes((tl0 & 0xFF, (tid << 6) | (0x20 if sync else 0)))
    out = []
    for start in range(0, len(frame), MAX_CHUNK):
        first = 0x90 if start == 0 else 0x80  # X, and S on the first packet
        out.append(bytes((first, ext)) + fields + frame[start:start + MAX_CHUNK])
    return out


def munge_offer(sdp: str, rids: Sequence[str]) -> str:
    """Add RID-based simulcast (send) to the video m-section of an aiortc offer."""
    out = []
    in_video = False
    for line in sdp.splitlines():
        if line.startswith("m="):
            if in_video:
                out += _simulcast_lines(rids)
            in_video = line.startswith("m=video")
        out.append(line)
    if in_video:
        out += _simulcast_lines(rids)
    return "\r\n".join(out) + "\r\n"


def _simulcast_lines(rids: Sequence[str]) -> list[str]:
    return [f"a=rid:{r} send" for r in rids] + ["a=simulcast:send " + ";".join(rids)]


@functools.lru_cache(maxsize=32)
def layer_frames(width: int, height: int, fps: int, seconds: float, bitrate: int, gop: int,
                 temporal_layers: int) -> list[bytes]:
    """One layer's replay loop, encoded once per process: every publisher of a load test
    with the same settings sends the same frames (they are only read)."""
    return replay_frames(width, height, fps, seconds=seconds, bitrate=bitrate,
                         keyframe_interval=gop, temporal_layers=temporal_layers)


def scaled_layers(width: int, height: int, top_kbps: int) -> tuple[LayerConfig, ...]:
    """Three layers as a browser makes them from a WxH camera: quarter, half and full
    size, at about 12 %, 40 % and 100 % of the top layer's bitrate."""
    def even(v: float) -> int:
        return max(16, int(v) // 2 * 2)

    top = top_kbps * 1000
    return (LayerConfig("q", even(width / 4), even(height / 4), top * 12 // 100),
            LayerConfig("h", even(width / 2), even(height / 2), top * 40 // 100),
            LayerConfig("f", even(width), even(height), top))


class SimulcastPublisher:
    """Publishes audio plus one simulcast video track through ``client``."""

    def __init__(self, client: SignalClient, layers: Sequence[LayerConfig] = DEFAULT_LAYERS,
                 fps: int = 15, gop_seconds: float = 1.0, audio: bool = True,
                 temporal_layers: int = 1, audio_frames: Sequence[bytes] | None = None
                 ) -> None:
        """``audio_frames``: pre-encoded Opus to send instead of a 440 Hz speech-rate tone."""
        self.client = client
        self.fps = fps
        self.audio = audio
        self.audio_frames = audio_frames
        gop = max(1, int(fps * gop_seconds))
        self.layers = []
        for cfg in layers:
            frames = layer_frames(cfg.width, cfg.height, fps, 2 * gop_seconds, cfg.bitrate, gop,
                                  temporal_layers)
            keyframes = [i for i, f in enumerate(frames) if f and not f[0] & 0x01]
            tids = (temporal_ids(len(frames), gop, temporal_layers)
                    if temporal_layers > 1 else None)
            self.layers.append(_Layer(cfg, frames, keyframes or [0], tids))
        self.track_id: str | None = None
        self._loop = PacedLoop(1 / fps, self._tick)
        self._sender: aiortc_adapter.PacketSender | None = None
        self._pt = 96
        self._mid = b"1"
        self._mid_id: int | None = None
        self._rid_id: int | None = None
        self._seen_events = 0

    async def start(self) -> dict[str, Any]:
        client = self.client
        from aiortc import RTCPeerConnection

        # The rid and repaired-rid header extensions must be in the offer, or the server
        # cannot tell the layers apart and takes the track as a single encoding. aiortc
        # offers only mid and abs-send-time; the server's table adds them (idempotent, and
        # a publisher in a process of its own, such as the load-test CLI, needs it too).
        aiortc_adapter.install()
        pc = client.publisher = RTCPeerConnection(_config())
        if self.audio:
            # Speech-like Opus (32 kbps): what a phone on a weak link would send.
            frames = self.audio_frames or encode_opus(440.0, 1.0, bitrate=32000)
            pc.addTransceiver(PreEncodedAudioTrack(frames), direction="sendonly")
        video = pc.addTransceiver("video", direction="sendonly")
        caps = RTCRtpSender.getCapabilities("video").codecs
        video.setCodecPreferences([c for c in caps if c.mimeType.lower() in
                                   ("video/vp8", "video/rtx")])
        aiortc_adapter.apply_candidate_policy(pc, client.policy)
        await pc.setLocalDescription(await pc.createOffer())
        offer = munge_offer(pc.localDescription.sdp, [la.config.rid for la in self.layers])
        meta = [{"mid": t.mid, "source": "camera" if t.kind == "video" else "microphone"}
                for t in pc.getTransceivers()]
        reply = await client.request({"type": "publish_offer", "sdp": offer, "tracks": meta})
        if reply["type"] != "publish_answer":
            return reply
        await pc.setRemoteDescription(RTCSessionDescription(reply["sdp"], "answer"))
        client.published += reply["tracks"]
        self.track_id = next(t["track_id"] for t in reply["tracks"] if t["kind"] == "video")
        self._negotiated(reply["sdp"], video.mid or "")
        aiortc_adapter.tap_rtcp(pc, self._on_rtcp)
        self._sender = aiortc_adapter.packet_sender(pc)
        self._loop.start()
        return reply

    def _negotiated(self, answer: str, mid: str) -> None:
        for media in SessionDescription.parse(answer).media:
            if media.rtp.muxId != mid:
                continue
            self._mid = mid.encode()
            vp8 = next(c for c in media.rtp.codecs if c.mimeType.lower() == "video/vp8")
            self._pt = vp8.payloadType or self._pt
            for ext in media.rtp.headerExtensions:
                if ext.uri == aiortc_adapter.EXT_MID:
                    self._mid_id = ext.id
                elif ext.uri == aiortc_adapter.EXT_RID:
                    self._rid_id = ext.id

    @property
    def answered_simulcast(self) -> bool:
        return self._rid_id is not None

    def _on_rtcp(self, data: bytes) -> None:
        packets, _ = rtcp.parse_rtcp(data)
        for p in packets:
            ssrcs: list[int] = []
            if isinstance(p, rtcp.Pli):
                ssrcs = [p.media_ssrc]
            elif isinstance(p, rtcp.Fir):
                ssrcs = [s for s, _ in p.entries]
            for layer in self.layers:
                if layer.ssrc in ssrcs:
                    layer.keyframe_requests += 1
                    self._jump_to_keyframe(layer)

    def _jump_to_keyframe(self, layer: _Layer) -> None:
        n = len(layer.frames)
        position = layer.index % n
        later = [k for k in layer.keyframes if k >= position]
        target = later[0] if later else layer.keyframes[0] + n
        layer.index += target - position

    def set_active(self, rids: Sequence[str]) -> None:
        for layer in self.layers:
            was = layer.active
            layer.active = layer.config.rid in rids
            if layer.active and not was:
                self._jump_to_keyframe(layer)

    def _apply_events(self) -> None:
        events = self.client.events
        while self._seen_events < len(events):
            e = events[self._seen_events]
            self._seen_events += 1
            if e.get("type") == "publisher_layers" and e.get("track_id") == self.track_id:
                self.set_active(e.get("active", []))

    def _tick(self, n: int) -> None:
        self._apply_events()
        for layer in self.layers:
            if layer.active:
                self._send_frame(layer, n)

    def _send_frame(self, layer: _Layer, n: int) -> None:
        sender = self._sender
        if sender is None:
            return
        position = layer.index % len(layer.frames)
        frame = layer.frames[position]
        layer.index += 1
        temporal = None
        if layer.tids is not None:
            tid = layer.tids[position]
            if tid == 0:
                layer.tl0picidx = (layer.tl0picidx + 1) & 0xFF
                layer.synced.clear()
            # Layer sync: the first frame of its layer since TL0 references TL0 alone.
            temporal = (layer.tl0picidx, tid, tid > 0 and tid not in layer.synced)
            layer.synced.add(tid)
        ts = (layer.ts_base + n * VIDEO_CLOCK // self.fps) & 0xFFFFFFFF
        exts = []
        if self._mid_id:
            exts.append((self._mid_id, self._mid))
        if self._rid_id:
            exts.append((self._rid_id, layer.config.rid.encode()))
        payloads = vp8_packets(frame, layer.picture_id, temporal)
        layer.picture_id = (layer.picture_id + 1) & 0x7FFF
        for i, payload in enumerate(payloads):
            layer.seq = (layer.seq + 1) & 0xFFFF
            data = build_rtp(marker=i == len(payloads) - 1, payload_type=self._pt,
                             sequence_number=layer.seq, timestamp=ts, ssrc=layer.ssrc,
                             extensions=exts, payload=payload)
            if sender.send_rtp(data):
                layer.packets_sent += 1

    async def stop(self) -> None:
        await self._loop.stop()
