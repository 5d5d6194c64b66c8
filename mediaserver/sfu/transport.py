"""The SFU's two kinds of WebRTC connection per participant.

- ``PublisherTransport``: the participant offers, we answer; its m-lines carry the tracks
  it publishes. Each receiving transceiver becomes a Producer. Incoming RTP is routed by
  SSRC (from SDP, or learnt from the mid header extension) straight to the Producer.
- ``SubscriberTransport``: we offer, the participant answers; each sending transceiver is a
  Consumer of some other participant's Producer. Renegotiated whenever the set of
  consumed tracks changes.

Both send their RTCP reports (sender/receiver reports, REMB) when the room's control task
asks (``rtcp_tick``), and dispatch incoming RTCP to their producers/consumers. All aiortc
internals go through ``aiortc_adapter``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.sdp import SessionDescription

from mediaserver import metrics
from mediaserver.sfu import aiortc_adapter as adapter
from mediaserver.sfu import fastsend, rtcp
from mediaserver.sfu.adaptation import SubscriberAdaptation
from mediaserver.sfu.consumer import Consumer, DownstreamContext
from mediaserver.sfu.producer import CodecInfo, LayerSpec, Producer, RecvStream
from mediaserver.sfu.red import red_for
from mediaserver.sfu.rtp import EXT_TRANSPORT_CC, parse_rtp, unpack_str
from mediaserver.sfu.sdpcheck import check_offer
from mediaserver.sfu.simulcast import SimulcastOffer, accept_simulcast, simulcast_offer

log = logging.getLogger(__name__)

# Seconds between two reports of a connection: each goes out at the room's report step
# (once a second, after the quality step), every connection of the room together. RFC 3550
# randomises the interval so that a multicast group's members do not fall into step; each
# connection here is a point-to-point session of its own, and reports sent one after the
# other run with warm caches where each, on a tick of its own, ran cold.
RTCP_INTERVAL = 1.0
REMB_INTERVAL = 1.0
# Fewer packets than this between two receiver reports say too little about loss (one lost
# packet of five is not a 20 % lossy link).
MIN_LOSS_SAMPLE = 20
# A stream's SSRC may change (a publisher restarting its encoder) only after its packets
# have stopped for this long.
SSRC_TAKEOVER_SILENCE = 1.0


class NegotiationError(Exception):
    """The peer's SDP could not be applied (bad SDP, no common codec)."""


def _codec_info(codecs: list[Any]) -> CodecInfo | None:
    main = next((c for c in codecs if c.mimeType.lower()[-4:] not in ("/rtx", "/red")), None)
    if main is None:
        return None
    rtx = next((c for c in codecs if c.mimeType.lower().endswith("/rtx")
                and c.parameters.get("apt") == main.payloadType), None)
    red = red_for(codecs, main.payloadType)
    return CodecInfo(
        mime_type=main.mimeType,
        clock_rate=main.clockRate,
        payload_type=main.payloadType,
        rtx_payload_type=rtx.payloadType if rtx else None,
        channels=main.channels,
        parameters=tuple((k, str(v)) for k, v in main.parameters.items()),
        rtcp_feedback=tuple(f"{f.type} {f.parameter or ''}".strip() for f in main.rtcpFeedback),
        red_payload_type=red.payloadType if red else None,
    )


def _ext_id(extensions: list[Any], uri: str) -> int | None:
    return next((e.id for e in extensions if e.uri == uri), None)


def _preferred_codec(codec: Any) -> bool:
    return codec.mimeType.lower() in ("audio/opus", "video/vp8")


class PeerTransport:
    """An RTCPeerConnection used by the SFU for packets only (no decoding, no encoding)."""

    def __init__(self, policy: adapter.CandidatePolicy) -> None:
        self.pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        self.policy = policy
        self.sender: adapter.PacketSender | None = None
        self.closed = False
        self._next_rtcp: float | None = None  # monotonic time the next report is due
        self._consents: list[adapter.PeerConsent] = []
        self._lock = asyncio.Lock()

    @property
    def connection_state(self) -> str:
        return str(self.pc.connectionState)

    def _prepare(self) -> None:
        adapter.make_inert(self.pc)
        adapter.apply_candidate_policy(self.pc, self.policy)
        self._consents = adapter.peer_consent(self.pc)

    def _media_streams(self) -> dict[int, RecvStream] | None:
        """ssrc -> stream of what this connection receives, for the C receiver to route
        media packets itself (None: every packet goes to ``on_rtp``)."""
        return None

    def _after_local_description(self) -> None:
        adapter.hook_packets(self.pc, self.on_rtp, self.on_rtcp, self._media_streams())
        if self.sender is None:
            self.sender = adapter.packet_sender(self.pc)
            self._sender_ready(self.sender)
        if self._next_rtcp is None:  # at the first report step half an interval on
            self._next_rtcp = time.monotonic() + RTCP_INTERVAL / 2

    def send_rtp(self, data: bytes) -> bool:
        sender = self.sender
        return sender is not None and sender.send_rtp(data)

    def send_rtcp(self, data: bytes) -> bool:
        sender = self.sender
        return sender is not None and sender.send_rtcp(data)

    def _sender_ready(self, sender: adapter.PacketSender) -> None:
        """The connection's sender exists (from now on for good)."""

    async def add_ice_candidate(self, candidate: Any) -> None:
        await self.pc.addIceCandidate(candidate)

    def on_rtp(self, data: bytes, arrival_time_ms: int) -> None:
        metrics.DROP["unknown_ssrc"].inc()

    def on_rtcp(self, data: bytes) -> None:
        with metrics.control_step("rtcp"):
            packets, bad = rtcp.parse_rtcp(data)
            if bad:
                metrics.DROP["malformed_rtcp"].inc(bad)
            if packets:
                self.handle_rtcp(packets, time.monotonic())

    def handle_rtcp(self, packets: list[Any], now: float) -> None:
        pass

    def rtcp_report(self, now: float) -> bytes | None:
        return None

    def rtcp_tick(self, now: float) -> None:
        """Send this connection's report if it is due. The room's control task calls it at
        its report step (every RTCP_INTERVAL) for every connection of the room: one wake-up
        of the loop for all of them, where a task per connection woke it (and ran its
        Python cold) each time. A report sent makes the next due half an interval on, so
        that it goes out at the next step. At each step it also looks whether the peer's
        consent checks still arrive (adapter.PeerConsent): aioice's own consent task, which
        woke the loop twice a check, is not run."""
        for consent in self._consents:
            if consent.lapsed(now):
                consent.expire()
        due = self._next_rtcp
        if due is None or now < due or self.closed:
            return
        self._next_rtcp = now + RTCP_INTERVAL / 2
        with metrics.control_step("rtcp"):
            packet = self.rtcp_report(now)
            if packet:
                self.send_rtcp(packet)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.sender is not None:
            self.sender.close()
        await self.pc.close()


@dataclass
class PublishedTrack:
    """A track found in a publisher's offer, before the room gives it an id."""

    mid: str
    kind: str
    codec: CodecInfo
    ssrc: int | None
    rtx_ssrc: int | None
    rtcp_ssrc: int
    audio_level_id: int | None
    layers: list[LayerSpec] | None = None  # simulcast encodings, lowest first


class PublisherTransport(PeerTransport):
    """The connection a participant publishes on (client offers, SFU answers)."""

    def __init__(self, policy: adapter.CandidatePolicy) -> None:
        super().__init__(policy)
        self.by_ssrc: dict[int, RecvStream] = {}  # one dict for the connection's life
        self.by_rtx_ssrc: dict[int, RecvStream] = {}
        self.by_mid: dict[str, Producer] = {}
        self._mid_ext_id: int | None = None
        self._rid_ext_id: int | None = None
        self._rrid_ext_id: int | None = None
        self._rtcp_ssrc = 0
        self._last_remb = 0.0

    async def handle_offer(self, sdp: str) -> tuple[str, list[PublishedTrack], list[str]]:
        """Apply an offer; return (answer sdp, tracks newly sent, mids no longer sent)."""
        async with self._lock:
            previous = [t.mid for t in self.pc.getTransceivers()]
            problem = check_offer(sdp, previous)
            if problem is not None:
                raise NegotiationError(problem)
            try:
                await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            except Exception as exc:  # aiortc raises ValueError, OperationError, ...
                raise NegotiationError(f"cannot apply offer: {exc}") from exc
            if not self.pc.getTransceivers():
                raise NegotiationError("the offer has no audio or video section")
            remote = SessionDescription.parse(sdp)
            offered = {m.rtp.muxId: m.rtp.codecs for m in remote.media}
            for t in self.pc.getTransceivers():
                adapter.restrict_codecs(t, _preferred_codec, offered.get(t.mid or "", []))
            self._prepare()
            answer = await self.pc.createAnswer()
            await self.pc.setLocalDescription(answer)
            self._after_local_description()
            simulcast = simulcast_offer(sdp)
            added, removed = self._diff_tracks(remote, simulcast)
            return (accept_simulcast(self.pc.localDescription.sdp, simulcast), added, removed)

    def _diff_tracks(self, remote: SessionDescription, simulcast: dict[str, SimulcastOffer]
                     ) -> tuple[list[PublishedTrack], list[str]]:
        added: list[PublishedTrack] = []
        removed: list[str] = []
        media_by_mid = {m.rtp.muxId: m for m in remote.media}
        for t in self.pc.getTransceivers():
            media = media_by_mid.get(t.mid) if t.mid else None
            if media is None or t.mid is None:
                continue
            sending = media.direction in ("sendrecv", "sendonly") and media.port != 0
            if not sending:
                if t.mid in self.by_mid:
                    removed.append(t.mid)
                continue
            if t.mid in self.by_mid:
                continue
            codecs, extensions = adapter.negotiated(t)
            codec = _codec_info(codecs)
            if codec is None:
                continue
            self._mid_ext_id = _ext_id(extensions, adapter.EXT_MID) or self._mid_ext_id
            self._rid_ext_id = _ext_id(extensions, adapter.EXT_RID) or self._rid_ext_id
            self._rrid_ext_id = (_ext_id(extensions, adapter.EXT_REPAIRED_RID)
                                 or self._rrid_ext_id)
            ssrc = rtx_ssrc = None
            fid: dict[int, int] = {}
            for group in media.ssrc_group:
                if group.semantic == "FID" and len(group.items) == 2:
                    fid[int(group.items[0])] = int(group.items[1])
            if media.ssrc:
                ssrc = media.ssrc[0].ssrc
                if fid:
                    ssrc, rtx_ssrc = next(iter(fid.items()))
            layers = None
            offer = simulcast.get(t.mid)
            if t.kind == "video" and offer is not None and offer.rids and self._rid_ext_id:
                layers = [LayerSpec(rid) for rid in offer.rids]
                ssrc = rtx_ssrc = None
            elif t.kind == "video" and offer is not None and len(offer.ssrcs) > 1:
                layers = [LayerSpec(None, x, fid.get(x)) for x in offer.ssrcs]
                ssrc, rtx_ssrc = layers[0].ssrc, layers[0].rtx_ssrc
            self._rtcp_ssrc = adapter.sender_ssrcs(t)[0]
            added.append(PublishedTrack(
                mid=t.mid, kind=t.kind, codec=codec, ssrc=ssrc, rtx_ssrc=rtx_ssrc,
                rtcp_ssrc=self._rtcp_ssrc,
                audio_level_id=_ext_id(extensions, adapter.EXT_AUDIO_LEVEL), layers=layers))
        return added, removed

    def attach(self, producer: Producer) -> None:
        self.by_mid[producer.mid] = producer
        for stream in producer.streams:
            if stream.ssrc is not None:
                self.by_ssrc[stream.ssrc] = stream
            if stream.rtx_ssrc is not None:
                self.by_rtx_ssrc[stream.rtx_ssrc] = stream

    def detach(self, producer: Producer) -> None:
        for ssrc_table in (self.by_ssrc, self.by_rtx_ssrc):
            for ssrc in [k for k, v in ssrc_table.items() if v.producer is producer]:
                del ssrc_table[ssrc]
        self.by_mid.pop(producer.mid, None)

    def _media_streams(self) -> dict[int, RecvStream]:
        # The C receiver looks packets up in this very dict (and hands a stream's own
        # payload type to fastsend.receive); everything else still comes to on_rtp.
        return self.by_ssrc

    def on_rtp(self, data: bytes, arrival_time_ms: int) -> None:
        pkt = parse_rtp(data)
        if pkt is None:
            metrics.DROP["malformed_rtp"].inc()
            return
        now = time.monotonic()
        stream = self.by_ssrc.get(pkt.ssrc)
        if stream is not None:
            codec = stream.producer.codec
            if pkt.payload_type == codec.payload_type or pkt.payload_type == codec.red_payload_type:
                if fastsend.AVAILABLE:
                    fastsend.receive(stream, pkt, now)  # stream.on_rtp, in C when it can
                else:
                    stream.on_rtp(pkt, now)
            elif pkt.payload_type == codec.rtx_payload_type:
                # Some senders put RTX on the media SSRC's group only via PT.
                stream.on_rtx(pkt, now)
            else:
                metrics.DROP["unknown_ssrc"].inc()
            return
        stream = self.by_rtx_ssrc.get(pkt.ssrc)
        if stream is not None:
            stream.on_rtx(pkt, now)
            return
        self._learn_ssrc(pkt, now)

    def _learn_ssrc(self, pkt: Any, now: float) -> None:
        """An SSRC the SDP did not announce: map it by its mid and rid header extensions."""
        mid_id = self._mid_ext_id
        raw = pkt.extensions.get(mid_id) if mid_id else None
        mid = unpack_str(raw) if raw else None
        producer = self.by_mid.get(mid) if mid else None
        if producer is None:
            metrics.DROP["unknown_ssrc"].inc()
            return
        stream: RecvStream | None = producer.streams[0]
        rtx = pkt.payload_type == producer.codec.rtx_payload_type
        if producer.simulcast and producer.streams[0].rid is not None:
            ext_id = self._rrid_ext_id if rtx else self._rid_ext_id
            raw_rid = pkt.extensions.get(ext_id) if ext_id else None
            if raw_rid is None and rtx and self._rid_ext_id:
                raw_rid = pkt.extensions.get(self._rid_ext_id)
            rid = unpack_str(raw_rid) if raw_rid else None
            stream = producer.stream_by_rid(rid) if rid else None
        if stream is None:
            metrics.DROP["unknown_ssrc"].inc()
            return
        if rtx:
            stream.rtx_ssrc = pkt.ssrc
            self.by_rtx_ssrc[pkt.ssrc] = stream
            stream.on_rtx(pkt, now)
        elif pkt.payload_type in (producer.codec.payload_type, producer.codec.red_payload_type):
            if (stream.ssrc is not None and stream.last_packet_at is not None
                    and now - stream.last_packet_at < SSRC_TAKEOVER_SILENCE):
                # A second SSRC on a stream whose SSRC is alive: several encodings that
                # could not be told apart (simulcast offered without the rid extension).
                # Taking each in turn would interleave their sequence numbers into one
                # output; keep the first.
                metrics.DROP["unknown_ssrc"].inc()
                return
            if stream.ssrc is not None:
                self.by_ssrc.pop(stream.ssrc, None)
            stream.ssrc = pkt.ssrc
            stream.stats.ssrc = pkt.ssrc
            self.by_ssrc[pkt.ssrc] = stream
            stream.on_rtp(pkt, now)
        else:
            metrics.DROP["unknown_ssrc"].inc()

    def handle_rtcp(self, packets: list[Any], now: float) -> None:
        for p in packets:
            if isinstance(p, rtcp.SenderReport):
                stream = self.by_ssrc.get(p.ssrc)
                if stream is not None:
                    stream.on_sender_report(p.ntp_timestamp, p.rtp_timestamp, now)

    def rtcp_report(self, now: float) -> bytes | None:
        streams = [s for s in self.by_ssrc.values() if s.ssrc is not None]
        if not streams:
            return None
        blocks = []
        for st in streams:
            v = st.stats.report_block(now)
            blocks.append(rtcp.ReportBlock(ssrc=v.ssrc, fraction_lost=v.fraction_lost,
                                           packets_lost=v.packets_lost,
                                           highest_seq=v.highest_seq, jitter=v.jitter,
                                           lsr=v.lsr, dlsr=v.dlsr))
        out = rtcp.build_rr(self._rtcp_ssrc, blocks[:31])
        out += rtcp.build_sdes(self._rtcp_ssrc, "mediaserver")
        remb = self.remb_packet()
        if remb:
            out += remb
        return out

    def remb_packet(self) -> bytes | None:
        """REMB towards the publisher: the tightest of its subscribers' estimates."""
        estimates: list[int] = []
        ssrcs: list[int] = []
        for p in self.by_mid.values():
            # A simulcast publisher's encoder shares its own estimate among the layers;
            # capping it at the weakest subscriber would starve everyone else's layer.
            if p.is_video and p.ssrc is not None and not p.simulcast:
                bitrate = p.update_remb()
                if bitrate:
                    estimates.append(bitrate)
                    ssrcs.extend(s.ssrc for s in p.streams if s.ssrc is not None)
        if not estimates:
            return None
        metrics.RTCP_OUT["remb"].inc()
        return rtcp.build_remb(self._rtcp_ssrc, min(estimates), ssrcs)

    def relay_remb_now(self, now: float) -> None:
        """Pass a subscriber's falling estimate on at once rather than at the next report."""
        if now - self._last_remb < 0.2:
            return
        self._last_remb = now
        packet = self.remb_packet()
        if packet:
            self.send_rtcp(packet)


class SubscriberTransport(PeerTransport):
    """The connection a participant receives on (SFU offers, client answers)."""

    def __init__(self, policy: adapter.CandidatePolicy, subscriber_id: str,
                 joined_at: float | None = None) -> None:
        super().__init__(policy)
        self.subscriber_id = subscriber_id
        self.context = DownstreamContext(self.send_rtp, joined_at)
        self.consumers: dict[str, Consumer] = {}  # by mid
        self.by_ssrc: dict[int, Consumer] = {}
        self.pending: dict[str, Producer] = {}  # mid -> producer awaiting the answer
        self._rtcp_ssrc: int | None = None
        self._on_remb: Callable[[Producer, float], None] | None = None
        self.adaptation = SubscriberAdaptation(self)

    def _sender_ready(self, sender: adapter.PacketSender) -> None:
        # Consumers send straight through the sender: one call less per forwarded packet;
        # with the C extension, through its output for their common header.
        self.context.send_rtp = sender.send_rtp
        self.context.output = sender.output

    def set_remb_listener(self, listener: Callable[[Producer, float], None]) -> None:
        self._on_remb = listener

    async def create_offer(self, add: list[Producer], remove: list[str]) -> str:
        """Offer with transceivers added for ``add`` and those of ``remove`` (mids) stopped."""
        for mid in remove:
            consumer = self.consumers.pop(mid, None)
            if consumer is not None:
                self.by_ssrc.pop(consumer.ssrc, None)
                consumer.close()
            for t in self.pc.getTransceivers():
                if t.mid == mid:
                    t.direction = "inactive"
        new_transceivers = []
        for producer in add:
            t = self.pc.addTransceiver(producer.kind, direction="sendonly")
            caps = RTCRtpSender.getCapabilities(producer.kind).codecs
            prefs = [c for c in caps if _same_codec(c, producer.codec)]
            if producer.kind == "video":
                prefs += [c for c in caps if c.mimeType.lower() == "video/rtx"]
            elif producer.codec.red_payload_type is not None:
                prefs += [c for c in caps if c.mimeType.lower() == "audio/red"]
            t.setCodecPreferences(prefs)
            new_transceivers.append((t, producer))
        self._prepare()
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        self._after_local_description()
        for t, producer in new_transceivers:
            if t.mid is not None:
                self.pending[t.mid] = producer
        if self._rtcp_ssrc is None and self.pc.getTransceivers():
            self._rtcp_ssrc = adapter.sender_ssrcs(self.pc.getTransceivers()[0])[0]
        return self.pc.localDescription.sdp

    async def handle_answer(self, sdp: str, now: float) -> list[Consumer]:
        """Apply the answer; return the consumers that now exist (not yet attached)."""
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except Exception as exc:
            raise NegotiationError(f"cannot apply answer: {exc}") from exc
        created = []
        for t in self.pc.getTransceivers():
            producer = self.pending.pop(t.mid, None) if t.mid else None
            if producer is None or producer.closed or t.mid is None:
                continue
            codecs, extensions = adapter.negotiated(t)
            info = _codec_info(codecs)
            if info is None:
                continue
            ssrc, rtx_ssrc = adapter.sender_ssrcs(t)
            consumer = Consumer(
                producer=producer, subscriber_id=self.subscriber_id, context=self.context,
                ssrc=ssrc, rtx_ssrc=rtx_ssrc if info.rtx_payload_type is not None else None,
                payload_type=info.payload_type, rtx_payload_type=info.rtx_payload_type,
                red_payload_type=info.red_payload_type,
                audio_level_id=_ext_id(extensions, adapter.EXT_AUDIO_LEVEL),
                abs_send_time_id=_ext_id(extensions, adapter.EXT_ABS_SEND_TIME),
                transport_cc_id=_ext_id(extensions, EXT_TRANSPORT_CC),
                mid=t.mid)
            self.consumers[t.mid] = consumer
            self.by_ssrc[ssrc] = consumer  # feedback names the media SSRC, never the RTX one
            created.append(consumer)
        self.pending.clear()
        return created

    def handle_rtcp(self, packets: list[Any], now: float) -> None:
        for p in packets:
            if isinstance(p, rtcp.Nack):
                metrics.RTCP_IN["nack"].inc()
                consumer = self.by_ssrc.get(p.media_ssrc)
                if consumer is not None:
                    self.adaptation.on_nack(now, consumer.on_nack(p.lost, now))
            elif isinstance(p, rtcp.Pli):
                metrics.RTCP_IN["pli"].inc()
                consumer = self.by_ssrc.get(p.media_ssrc)
                if consumer is not None:
                    consumer.on_keyframe_request(now)
            elif isinstance(p, rtcp.Fir):
                metrics.RTCP_IN["fir"].inc()
                for ssrc, _ in p.entries:
                    consumer = self.by_ssrc.get(ssrc)
                    if consumer is not None:
                        consumer.on_keyframe_request(now)
            elif isinstance(p, rtcp.Remb):
                metrics.RTCP_IN["remb"].inc()
                self._on_remb_packet(p, now)
            elif isinstance(p, rtcp.TransportFeedback):
                metrics.RTCP_IN["twcc"].inc()
            elif isinstance(p, (rtcp.ReceiverReport, rtcp.SenderReport)):
                ntp_now = rtcp.ntp_middle32(rtcp.ntp_from_seconds(time.time()))
                lost = sent = 0.0
                rtt: float | None = None
                for block in p.reports:
                    consumer = self.by_ssrc.get(block.ssrc)  # RTX-stream blocks find none
                    if consumer is not None:
                        block_rtt = consumer.stats.on_receiver_report(
                            block.lsr, block.dlsr, block.fraction_lost, block.packets_lost,
                            ntp_now, block.jitter)
                        if block_rtt is not None:
                            rtt = max(rtt or 0.0, block_rtt)
                        # Weigh each stream's loss by what was sent on it since its last
                        # report: the link's loss, not the noisiest small stream's.
                        count = consumer.stats.packets_sent - consumer.packets_at_report
                        consumer.packets_at_report = consumer.stats.packets_sent
                        lost += block.fraction_lost / 256 * count
                        sent += count
                if sent >= MIN_LOSS_SAMPLE:
                    self.adaptation.on_loss(lost / sent, now, rtt)
                elif sent == 0:
                    self.adaptation.on_loss(0.0, now, rtt)  # nothing sent, so nothing lost

    def _on_remb_packet(self, p: rtcp.Remb, now: float) -> None:
        self.adaptation.on_remb(p.bitrate, now, p.sender_ssrc)
        touched = set()
        for ssrc in p.ssrcs:
            consumer = self.by_ssrc.get(ssrc)
            if consumer is not None:
                before = consumer.remb_bitrate
                consumer.remb_bitrate = p.bitrate
                if before is None or p.bitrate < before * 0.9:
                    touched.add(consumer.producer)
        if self._on_remb:
            for producer in touched:
                self._on_remb(producer, now)

    def rtcp_report(self, now: float) -> bytes | None:
        if not self.consumers or self._rtcp_ssrc is None:
            return None
        wall = time.time()
        ntp = rtcp.ntp_from_seconds(wall)
        out = b""
        for consumer in self.consumers.values():
            if consumer.stats.packets_sent == 0:
                continue
            out += rtcp.build_sr(consumer.ssrc, ntp, consumer.sender_report_timestamp(now),
                                 consumer.stats.packets_sent & 0xFFFFFFFF,
                                 consumer.stats.octets_sent & 0xFFFFFFFF)
        if not out:
            return None
        return out + rtcp.build_sdes(self._rtcp_ssrc, "mediaserver")

    async def close(self) -> None:
        self.adaptation.close()
        for consumer in self.consumers.values():
            consumer.close()
        self.consumers.clear()
        await super().close()


def _same_codec(capability: Any, codec: CodecInfo) -> bool:
    if capability.mimeType.lower() != codec.mime_type.lower():
        return False
    if codec.name != "H264":
        return True
    params = dict(codec.parameters)
    return (str(capability.parameters.get("packetization-mode")) == params.get("packetization-mode")
            and str(capability.parameters.get("profile-level-id", ""))[:2]
            == params.get("profile-level-id", "")[:2])
