"""A published track as the SFU receives it: one upstream RTP stream fanned out to consumers.

The Producer unwraps sequence numbers and timestamps once, keeps receive statistics and a
short cache of recent packets (for answering subscribers' NACKs without asking the
publisher), detects keyframes, tracks upstream loss for NACKs, and merges keyframe
requests. It does no I/O itself: upstream RTCP goes through the ``send_rtcp`` callable
its transport gives it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mediaserver import metrics
from mediaserver.limits import TokenBucket
from mediaserver.quality.rtpstats import ReceiveStats
from mediaserver.sfu import rtcp
from mediaserver.sfu.h264 import is_h264_keyframe
from mediaserver.sfu.keyframe import KeyframeRequester
from mediaserver.sfu.nack import NackTracker
from mediaserver.sfu.rtp import RtpPacket, build_rtp, parse_rtp, unwrap_rtx
from mediaserver.sfu.seqnum import Unwrapper
from mediaserver.sfu.vp8 import parse_vp8

if TYPE_CHECKING:
    from mediaserver.sfu.consumer import Consumer
    from mediaserver.sfu.speakers import SpeakerDetector
    from mediaserver.sfu.transport import PublishedTrack

CACHE_SIZE = 1024  # a power of two; ~2 s of 500 kbps video, far more of audio
CACHE_MASK = CACHE_SIZE - 1


@dataclass(frozen=True)
class CodecInfo:
    """The negotiated codec of a stream, as the SFU needs it."""

    mime_type: str  # "audio/opus", "video/VP8", "video/H264"
    clock_rate: int
    payload_type: int
    rtx_payload_type: int | None = None
    channels: int | None = None
    parameters: tuple[tuple[str, str], ...] = ()
    rtcp_feedback: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.mime_type.split("/", 1)[1].upper()


class Producer:
    """One published track (audio or video) received from one publisher."""

    def __init__(
        self,
        *,
        track_id: str,
        participant_id: str,
        kind: str,
        codec: CodecInfo,
        ssrc: int | None,
        rtx_ssrc: int | None,
        mid: str,
        source: str,
        send_rtcp: Callable[[bytes], bool],
        rtcp_ssrc: int,
        audio_level_id: int | None = None,
    ) -> None:
        self.track_id = track_id
        self.participant_id = participant_id
        self.kind = kind
        self.codec = codec
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self.mid = mid
        self.source = source
        self.muted = False
        self.closed = False
        self.consumers: list[Consumer] = []
        # Taps (recorders) see every packet after the consumers; see recording/recorder.py.
        self.taps: list[Any] = []
        self.audio_level_id = audio_level_id
        self.speakers: SpeakerDetector | None = None
        self._send_rtcp = send_rtcp
        self._rtcp_ssrc = rtcp_ssrc
        self._seq = Unwrapper(16)
        self._ts = Unwrapper(32)
        self._cache: list[RtpPacket | None] = [None] * CACHE_SIZE
        self._cache_seq: list[int] = [-1] * CACHE_SIZE
        self.stats = ReceiveStats(ssrc or 0, codec.clock_rate)
        self.nacks = NackTracker() if kind == "video" else None
        self.keyframes = KeyframeRequester()
        self.is_video = kind == "video"
        self._keyframe_check = _keyframe_checker(codec.name)
        self.last_keyframe_at: float | None = None
        self.frames = 0  # video frames seen (marker bits), for frame rates
        self.nacks_sent = 0  # feedback sent upstream, for per-track statistics
        self.plis_sent = 0
        self.width: int | None = None
        self.height: int | None = None
        self.rtt = 0.1
        # Last sender report (publisher's NTP, its RTP timestamp, our arrival time).
        self.last_sr: tuple[int, int, float] | None = None
        self.remb_bitrate: int | None = None
        # Byte budget (limits.bitrate_bucket): a publisher flooding past it loses the excess
        # here, before it costs every subscriber's link and the node's CPU.
        self.budget: TokenBucket | None = None
        self._packets_counter = metrics.PACKETS.labels(direction="in", kind=kind)
        self._bytes_counter = metrics.BYTES.labels(direction="in", kind=kind)

    # -- packet path -------------------------------------------------------------------

    def on_rtp(self, pkt: RtpPacket, now: float) -> None:
        """A media packet from the publisher: account for it and fan it out."""
        budget = self.budget
        if budget is not None and not budget.take(now, len(pkt.data)):
            metrics.DROP["rate_limited"].inc()
            return
        ext_seq = self._seq.unwrap(pkt.sequence_number)
        ext_ts = self._ts.unwrap(pkt.timestamp)
        size = len(pkt.data)
        self._packets_counter.inc()
        self._bytes_counter.inc(size)
        self.stats.on_packet(ext_seq, pkt.timestamp, size, now)
        speakers = self.speakers
        if speakers is not None and not self.muted and self.audio_level_id:
            level = pkt.extensions.get(self.audio_level_id)
            if level:
                speakers.observe(self.participant_id, level[0] & 0x7F)
        self._deliver(pkt, ext_seq, ext_ts, now)
        nacks = self.nacks
        if nacks is not None:
            lost = nacks.on_packet(ext_seq, now, self.rtt)
            if lost:
                self._nack_upstream(lost)
            if nacks.take_keyframe_request():
                self.request_keyframe(now)

    def on_rtx(self, rtx_pkt: RtpPacket, now: float) -> None:
        """A retransmission from the publisher (RFC 4588): unwrap, then treat as media."""
        budget = self.budget
        if budget is not None and not budget.take(now, len(rtx_pkt.data)):
            metrics.DROP["rate_limited"].inc()
            return
        unwrapped = unwrap_rtx(rtx_pkt)
        if unwrapped is None:
            # Padding-only RTX packets are the publisher's bandwidth probes.
            metrics.DROP["padding"].inc()
            return
        osn, payload = unwrapped
        data = build_rtp(
            marker=rtx_pkt.marker,
            payload_type=self.codec.payload_type,
            sequence_number=osn,
            timestamp=rtx_pkt.timestamp,
            ssrc=self.ssrc or 0,
            extensions=list(rtx_pkt.extensions.items()),
            payload=payload,
        )
        pkt = parse_rtp(data)
        if pkt is None:  # pragma: no cover - we just built it
            return
        ext_seq = self._seq.peek(osn)
        if self._cache_seq[ext_seq & CACHE_MASK] == ext_seq:
            return  # already have it (a late original, or a duplicate retransmission)
        ext_ts = self._ts.peek(pkt.timestamp)
        if self.nacks is not None:
            self.nacks.on_packet(ext_seq, now, self.rtt)
        self.stats.packets_received += 1
        self._deliver(pkt, ext_seq, ext_ts, now)

    def _deliver(self, pkt: RtpPacket, ext_seq: int, ext_ts: int, now: float) -> None:
        slot = ext_seq & CACHE_MASK
        self._cache[slot] = pkt
        self._cache_seq[slot] = ext_seq
        keyframe = False
        if pkt.marker:
            self.frames += 1
        if self.is_video and pkt.payload_end > pkt.payload_offset:
            keyframe = self._keyframe_check(self, pkt)
            if keyframe:
                self.last_keyframe_at = now
                self.keyframes.on_keyframe()
            elif self.keyframes.pending and self.keyframes.poll(now):
                self._pli_upstream()
        for consumer in self.consumers:
            consumer.forward(pkt, ext_seq, ext_ts, keyframe, now)
        if self.taps:
            for tap in self.taps:
                tap.on_packet(pkt, ext_seq, ext_ts, keyframe, now)
                if tap.needs_keyframe:
                    self.request_keyframe(now)

    def cached(self, ext_seq: int) -> RtpPacket | None:
        slot = ext_seq & CACHE_MASK
        if self._cache_seq[slot] == ext_seq:
            return self._cache[slot]
        return None

    # -- feedback towards the publisher --------------------------------------------------

    def request_keyframe(self, now: float) -> None:
        if self.is_video and self.keyframes.request(now):
            self._pli_upstream()

    def _pli_upstream(self) -> None:
        if self.ssrc is not None:
            metrics.RTCP.labels(direction="out", type="pli").inc()
            self.plis_sent += 1
            self._send_rtcp(rtcp.build_pli(self._rtcp_ssrc, self.ssrc))

    def _nack_upstream(self, ext_seqs: tuple[int, ...]) -> None:
        if self.ssrc is not None:
            metrics.RTCP.labels(direction="out", type="nack").inc()
            self.nacks_sent += 1
            self._send_rtcp(rtcp.build_nack(self._rtcp_ssrc, self.ssrc,
                                            [s & 0xFFFF for s in ext_seqs]))

    def on_sender_report(self, ntp: int, rtp_ts: int, now: float) -> None:
        self.last_sr = (ntp, rtp_ts, now)
        for tap in self.taps:
            tap.on_sender_report(ntp, rtp_ts, now)
        self.stats.on_sender_report(rtcp.ntp_middle32(ntp), now)

    def rtp_timestamp_at(self, now: float) -> int | None:
        """The publisher's RTP timestamp that corresponds to ``now`` (our clock), by its SR."""
        if self.last_sr is None:
            return None
        _, rtp_ts, arrived = self.last_sr
        return self._ts.peek(rtp_ts) + int((now - arrived) * self.codec.clock_rate)

    def update_remb(self) -> int | None:
        """The lowest bandwidth estimate among this track's subscribers (for REMB upstream)."""
        estimates = [c.remb_bitrate for c in self.consumers if c.remb_bitrate]
        self.remb_bitrate = min(estimates) if estimates else None
        return self.remb_bitrate

    def set_muted(self, muted: bool, now: float) -> None:
        """Stop (or resume) forwarding to every subscriber at once."""
        self.muted = muted
        for consumer in self.consumers:
            consumer.refresh_paused(now)

    def rebind(self, track: PublishedTrack, send_rtcp: Callable[[bytes], bool],
               now: float) -> None:
        """The same track arrives on a new publisher connection (after a resume).

        Sequence numbers and timestamps start afresh upstream; each consumer switches
        source so its subscriber sees one continuous stream, and video waits for a keyframe.
        """
        self.codec, self.ssrc, self.rtx_ssrc, self.mid = (
            track.codec, track.ssrc, track.rtx_ssrc, track.mid)
        self.audio_level_id = track.audio_level_id
        self._send_rtcp, self._rtcp_ssrc = send_rtcp, track.rtcp_ssrc
        self._seq, self._ts = Unwrapper(16), Unwrapper(32)
        self._cache_seq = [-1] * CACHE_SIZE
        self._cache = [None] * CACHE_SIZE
        self.stats = ReceiveStats(track.ssrc or 0, track.codec.clock_rate)
        self.nacks = NackTracker() if self.is_video else None
        self.last_sr = None
        for consumer in self.consumers:
            consumer.source_changed(now)
        for tap in self.taps:
            tap.source_changed()
        self.request_keyframe(now)

    def add_consumer(self, consumer: Consumer, now: float) -> None:
        self.consumers.append(consumer)
        self.request_keyframe(now)

    def remove_consumer(self, consumer: Consumer) -> None:
        if consumer in self.consumers:
            self.consumers.remove(consumer)

    def close(self) -> None:
        self.closed = True
        for consumer in list(self.consumers):
            consumer.close()
        self.consumers.clear()


def _vp8_keyframe(producer: Producer, pkt: RtpPacket) -> bool:
    data = pkt.data
    # Cheap pre-check: only the first packet of partition 0 can start a keyframe.
    first = data[pkt.payload_offset]
    if not first & 0x10 or first & 0x07:
        return False
    desc = parse_vp8(memoryview(data)[pkt.payload_offset:pkt.payload_end])
    if desc is None or not desc.is_keyframe:
        return False
    if desc.width:
        producer.width, producer.height = desc.width, desc.height
    return True


def _h264_keyframe(producer: Producer, pkt: RtpPacket) -> bool:
    return is_h264_keyframe(pkt.data[pkt.payload_offset:pkt.payload_end])


def _no_keyframes(producer: Producer, pkt: RtpPacket) -> bool:
    return False


def _keyframe_checker(codec_name: str) -> Callable[[Producer, RtpPacket], bool]:
    if codec_name == "VP8":
        return _vp8_keyframe
    if codec_name == "H264":
        return _h264_keyframe
    return _no_keyframes
