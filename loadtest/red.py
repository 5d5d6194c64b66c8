"""Opus in RED (RFC 2198) for aiortc clients, which have no RED of their own.

``RedAudioPublisher`` publishes audio the way Chrome does with RED negotiated and preferred:
every packet carries the current 20 ms Opus frame as its primary block and the previous one
as a redundant block (so each frame goes out twice). It offers RED first and sends the
packets itself on the connection's SRTP session, as ``loadtest.simulcast`` does for video.

``receive_red`` teaches a subscriber connection to receive RED: each RED packet becomes, before
aiortc sees it, the plain Opus packet of its primary block, which aiortc decodes. The packets
as they arrived are kept in ``RedReceiver.packets`` for tests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription

from loadtest.client import SignalClient, _config
from loadtest.media import PacedLoop, encode_opus
from mediaserver.sfu import aiortc_adapter
from mediaserver.sfu.red import RedBlock, build_red, primary_offset, wrapped_formats
from mediaserver.sfu.rtp import EXT_AUDIO_LEVEL, EXT_MID, build_rtp, parse_rtp

FRAME = 960  # samples of 20 ms at 48 kHz
PTIME = 0.02


def red_payload_types(pc: RTCPeerConnection) -> dict[int, int]:
    """RED payload type -> the Opus payload type it wraps, as negotiated on ``pc``."""
    out: dict[int, int] = {}
    for t in pc.getTransceivers():
        codecs, _ = aiortc_adapter.negotiated(t)
        for c in codecs:
            formats = wrapped_formats(c.parameters) if c.mimeType.lower() == "audio/red" else None
            if formats:
                out[c.payloadType] = formats[0]
    return out


@dataclass
class RedReceiver:
    """What a RED-capable subscriber received: (payload type, payload) of each RED packet."""

    red_pts: dict[int, int] = field(default_factory=dict)
    packets: list[tuple[int, bytes]] = field(default_factory=list)
    plain: int = 0  # Opus packets that came without RED
    malformed: int = 0

    def on_rtp(self, data: bytes) -> bytes | None:
        pkt = parse_rtp(data)
        if pkt is None:
            return None
        if pkt.payload_type not in self.red_pts:
            if pkt.payload_type in self.red_pts.values():
                self.plain += 1
            return None
        payload = bytes(pkt.data[pkt.payload_offset:pkt.payload_end])
        self.packets.append((pkt.payload_type, payload))
        found = primary_offset(payload)
        if found is None:
            self.malformed += 1
            return None
        pt, offset = found
        return build_rtp(marker=pkt.marker, payload_type=pt,
                         sequence_number=pkt.sequence_number, timestamp=pkt.timestamp,
                         ssrc=pkt.ssrc, extensions=list(pkt.extensions.items()),
                         payload=payload[offset:])


def receive_red(pc: RTCPeerConnection) -> RedReceiver:
    """Unwrap RED on ``pc`` (after its remote description is set) for aiortc to decode."""
    receiver = RedReceiver(red_payload_types(pc))
    aiortc_adapter.tap_rtp(pc, receiver.on_rtp)
    return receiver


class RedAudioPublisher:
    """Publishes a tone as Opus wrapped in RED through ``client`` (audio only)."""

    def __init__(self, client: SignalClient, frequency: float = 440.0,
                 corrupt_every: int = 0) -> None:
        self.client = client
        self.corrupt_every = corrupt_every  # send every n-th payload as broken RED (tests)
        self.frames = encode_opus(frequency, 1.0, bitrate=32000)
        self.track_id: str | None = None
        self.red_pt: int | None = None
        self.opus_pt = 96
        self.packets_sent = 0
        self._ssrc = random.randrange(1, 1 << 32)
        self._seq = random.randrange(1 << 16)
        self._ts = random.randrange(1 << 32)
        self._exts: list[tuple[int, bytes]] = []
        self._sender: aiortc_adapter.PacketSender | None = None
        self._loop = PacedLoop(PTIME, self._send)

    async def start(self) -> dict[str, Any]:
        client = self.client
        pc = client.publisher = RTCPeerConnection(_config())
        t = pc.addTransceiver("audio", direction="sendonly")
        caps = RTCRtpSender.getCapabilities("audio").codecs
        t.setCodecPreferences([c for c in caps if c.mimeType.lower() == "audio/red"]
                              + [c for c in caps if c.mimeType.lower() == "audio/opus"])
        aiortc_adapter.apply_candidate_policy(pc, client.policy)
        await pc.setLocalDescription(await pc.createOffer())
        reply = await client.request({"type": "publish_offer", "sdp": pc.localDescription.sdp,
                                      "tracks": [{"mid": t.mid, "source": "microphone"}]})
        if reply["type"] != "publish_answer":
            return reply
        await pc.setRemoteDescription(RTCSessionDescription(reply["sdp"], "answer"))
        client.published += reply["tracks"]
        self.track_id = reply["tracks"][0]["track_id"]
        reds = red_payload_types(pc)
        if reds:
            self.red_pt, self.opus_pt = next(iter(reds.items()))
        _, extensions = aiortc_adapter.negotiated(t)
        ids = {e.uri: e.id for e in extensions}
        if EXT_MID in ids:
            self._exts.append((ids[EXT_MID], (t.mid or "").encode()))
        if EXT_AUDIO_LEVEL in ids:
            self._exts.append((ids[EXT_AUDIO_LEVEL], b"\x8a"))  # voice, -10 dBov
        self._ssrc = aiortc_adapter.sender_ssrcs(t)[0]
        self._sender = aiortc_adapter.packet_sender(pc)
        self._loop.start()
        return reply

    def _send(self, n: int) -> None:
        frame = self.frames[n % len(self.frames)]
        blocks = [RedBlock(self.opus_pt, 0, frame)]
        if n:
            blocks.insert(0, RedBlock(self.opus_pt, FRAME,
                                      self.frames[(n - 1) % len(self.frames)]))
        pt = self.red_pt if self.red_pt is not None else self.opus_pt
        payload = build_red(blocks) if self.red_pt is not None else frame
        if self.corrupt_every and n % self.corrupt_every == self.corrupt_every - 1:
            payload = bytes((0x80 | self.opus_pt, 0x0F, 0x00, 0xFF, self.opus_pt)) + b"short"
        self._seq = (self._seq + 1) & 0xFFFF
        data = build_rtp(marker=n == 0, payload_type=pt, sequence_number=self._seq,
                         timestamp=(self._ts + n * FRAME) & 0xFFFFFFFF, ssrc=self._ssrc,
                         extensions=self._exts, payload=payload)
        if self._sender is not None and self._sender.send_rtp(data):
            self.packets_sent += 1

    async def stop(self) -> None:
        await self._loop.stop()
