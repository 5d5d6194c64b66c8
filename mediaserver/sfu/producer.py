"""A published track as the SFU receives it: one upstream RTP stream fanned out to consumers.

The Producer unwraps sequence numbers and timestamps once, keeps receive statistics and a
short cache of recent packets (for answering subscribers' NACKs without asking the
publisher), detects keyframes, tracks upstream loss for NACKs, and merges keyframe
requests. It does no I/O itself: upstream RTCP goes through the ``send_rtcp`` callable
its transport gives it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mediaserver import metrics
from mediaserver.limits import TokenBucket
from mediaserver.quality.rtpstats import ReceiveStats, SendStats
from mediaserver.sfu import fastsend, rtcp
from mediaserver.sfu.consumer import HISTORY_MASK, NEVER, Consumer, DownstreamContext
from mediaserver.sfu.h264 import is_h264_keyframe
from mediaserver.sfu.keyframe import KeyframeRequester
from mediaserver.sfu.nack import NackTracker
from mediaserver.sfu.native import int_fields
from mediaserver.sfu.red import primary_view
from mediaserver.sfu.rtp import RtpPacket, build_rtp, parse_rtp, unwrap_rtx
from mediaserver.sfu.seqnum import OutputRewriter, Unwrapper
from mediaserver.sfu.speakers import ACTIVE_DBOV, SpeakerDetector
from mediaserver.sfu.speakers import _Stream as SpeakerStream
from mediaserver.sfu.temporal import TemporalRates
from mediaserver.sfu.vp8 import Vp8Descriptor, parse_vp8

if TYPE_CHECKING:
    from mediaserver.sfu.transport import PublishedTrack

CACHE_SIZE = 1024  # a power of two; ~2 s of 500 kbps video, far more of audio
CACHE_MASK = CACHE_SIZE - 1


@dataclass(frozen=True, slots=True)  # slots: the C packet path reads them at their offsets
class CodecInfo:
    """The negotiated codec of a stream, as the SFU needs it."""

    mime_type: str  # "audio/opus", "video/VP8", "video/H264"
    clock_rate: int
    payload_type: int
    rtx_payload_type: int | None = None
    channels: int | None = None
    parameters: tuple[tuple[str, str], ...] = ()
    rtcp_feedback: tuple[str, ...] = ()
    red_payload_type: int | None = None  # RED (RFC 2198) wrapping this codec, if negotiated

    @property
    def name(self) -> str:
        return self.mime_type.split("/", 1)[1].upper()


@dataclass(frozen=True)
class LayerSpec:
    """One simulcast encoding as the publisher's offer announced it (lowest first)."""

    rid: str | None
    ssrc: int | None = None
    rtx_ssrc: int | None = None


RATE_WINDOW = 1.0  # seconds over which a layer's bitrate and frame rate are measured
WIRE_OVERHEAD = 38  # SRTP tag + UDP + IPv4 headers per packet
PEAK_WINDOWS = 3


_StreamInts: Any
_StreamInts, _STREAM_SLOTS = int_fields(
    "StreamInts", "_window_bytes", "_window_frames", "_window_packets", "frames")


class RecvStream(_StreamInts):
    """One RTP stream of a track: the only one, or one simulcast layer.

    Owns what is per SSRC: sequence/timestamp unwrapping, the packet cache that answers
    subscribers' NACKs, loss tracking and NACKs upstream, keyframe requests, receive
    statistics and the measured bitrate, frame rate and resolution of the layer.
    """

    # Slots: the C receive path (fastsend.receive) reads and writes these fields at fixed
    # offsets, as the interpreter's own attribute access on slots does.
    __slots__ = (
        *_STREAM_SLOTS,  # C integers where the extension is built (sfu/native.py)
        "_cache", "_cache_seq", "_recent", "_seq", "_tally", "_ts", "_window_start",
        "bitrate", "expected_until",
        "fps", "height", "keyframes", "last_keyframe_at", "last_packet_at",
        "last_sr", "last_wire_bitrate", "nacks", "nacks_sent", "paused_upstream",
        "plis_sent", "producer", "red_primary", "rid", "rtx_ssrc", "spatial", "ssrc",
        "stats", "temporal", "unwanted_since", "vp8", "vp8_payload", "width",
        "wire_bitrate",
    )

    def __init__(self, producer: Producer, spatial: int, rid: str | None, ssrc: int | None,
                 rtx_ssrc: int | None) -> None:
        self.producer = producer
        self.spatial = spatial
        self.rid = rid
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self._seq = Unwrapper(16)
        self._ts = Unwrapper(32)
        # The packets' bytes only: a parsed RtpPacket is an object the garbage collector
        # tracks, and some 80 000 of them churning through the caches of a busy node made
        # every full collection a pause of tens of milliseconds for all packets. Bytes are
        # not tracked; a NACK (rare) parses its packet again.
        self._cache: list[bytes | None] = [None] * CACHE_SIZE
        self._cache_seq: list[int] = [-1] * CACHE_SIZE
        self.stats = ReceiveStats(ssrc or 0, producer.codec.clock_rate)
        self.nacks = NackTracker() if producer.is_video else None
        self.keyframes = KeyframeRequester()
        self._tally = producer.tally
        self.last_keyframe_at: float | None = None
        self.last_packet_at: float | None = None
        self.frames = 0  # frames seen (marker bits), for frame rates
        self.nacks_sent = 0
        self.plis_sent = 0
        self.width: int | None = None
        self.height: int | None = None
        # Descriptor and payload of the packet being fanned out (VP8 simulcast), parsed once
        # for every consumer's temporal filter.
        self.vp8: Vp8Descriptor | None = None
        self.vp8_payload: memoryview | None = None
        # The primary block of the RED packet being fanned out, parsed once likewise.
        self.red_primary: RtpPacket | None = None
        # Last sender report (publisher's NTP, its RTP timestamp, our arrival time).
        self.last_sr: tuple[int, int, float] | None = None
        # Measured over RATE_WINDOW: what the allocator knows of this layer.
        self.bitrate = 0
        self.wire_bitrate = 0  # with SRTP/UDP/IP overhead, as a link carries it
        self.last_wire_bitrate = 0  # the last measurement while the layer was arriving
        self.fps = 0.0
        self.temporal = TemporalRates()  # per VP8 temporal layer, when the stream has them
        self.paused_upstream = False  # the publisher was asked to stop sending this layer
        self.unwanted_since: float | None = None  # no subscriber's target since then
        self.expected_until = 0.0  # ...or asked to resume it, and it is on its way
        self._window_start: float | None = None
        self._window_bytes = 0
        self._window_packets = 0
        self._window_frames = 0
        self._recent: list[int] = []

    # -- packet path -------------------------------------------------------------------

    def on_rtp(self, pkt: RtpPacket, now: float) -> None:
        """A media packet from the publisher: account for it and fan it out."""
        budget = self.producer.budget
        if budget is not None and not budget.take(now, len(pkt.data)):
            self._budget_drop(pkt, now)
            return
        ext_seq = self._seq.unwrap(pkt.sequence_number)
        ext_ts = self._ts.unwrap(pkt.timestamp)
        size = len(pkt.data)
        tally = self._tally
        tally.packets += 1
        tally.bytes += size
        producer = self.producer
        self.stats.on_packet(ext_seq, pkt.timestamp, size, now)
        self.last_packet_at = now
        self._window_bytes += size
        self._window_packets += 1
        if self._window_start is None:
            self._window_start = now  # closed by measure(), on the control task's step
        speakers = producer.speakers
        if speakers is not None and not producer.muted and producer.audio_level_id:
            level = pkt.extensions.get(producer.audio_level_id)
            if level:
                speakers.observe(producer.participant_id, level[0] & 0x7F)
        self._deliver(pkt, ext_seq, ext_ts, now)
        nacks = self.nacks
        if nacks is not None:
            lost = nacks.on_packet(ext_seq, now, producer.rtt)
            if lost:
                self._nack_upstream(lost)
            if nacks.take_keyframe_request():
                self.request_keyframe(now)

    def _budget_drop(self, pkt: RtpPacket, now: float) -> None:
        """A packet over the publisher's byte budget: dropped here, and made invisible.

        Subscribers must not see the hole as loss on their own link (their estimate would
        fall for the publisher's fault), and the publisher must not be asked to resend it.
        """
        metrics.DROP["rate_limited"].inc()
        ext_seq = self._seq.unwrap(pkt.sequence_number)
        self._hide(ext_seq)
        if self.nacks is not None:
            self.nacks.on_packet(ext_seq, now, self.producer.rtt)

    def _hide(self, ext_seq: int) -> None:
        """A packet not forwarded for the publisher's fault leaves no hole downstream."""
        for consumer in self.producer.consumers:
            if consumer.stream is self:
                consumer.rewriter.skip(ext_seq)

    def _close_window(self, now: float, elapsed: float) -> None:
        """The window of ``elapsed`` (> 0) seconds ending ``now``: its rates, and the next."""
        self.bitrate = int(self._window_bytes * 8 / elapsed)
        # Peak of the last few windows: a keyframe landing in one window must not make
        # the layer look cheaper in the next and tempt the allocator up and down.
        wire = int((self._window_bytes + self._window_packets * WIRE_OVERHEAD) * 8 / elapsed)
        recent = self._recent
        recent.append(wire)
        del recent[:-PEAK_WINDOWS]
        self.wire_bitrate = max(recent)
        self.last_wire_bitrate = self.wire_bitrate
        self.fps = self._window_frames / elapsed
        self.temporal.close(elapsed)
        self._window_start = now
        self._window_bytes = 0
        self._window_packets = 0
        self._window_frames = 0

    def measure(self, now: float) -> None:
        """Close the rate window once RATE_WINDOW has passed, and age the measurements of a
        layer that stopped arriving. Called by the room's control task before each
        adaptation step (every 0.5 s), for every stream of the room one after the other:
        closed from the packet path, each window was a Python call of its own between two
        packets, run cold (a 1:1 call closed four a second, at ~67 us each)."""
        last = self.last_packet_at
        start = self._window_start
        if start is not None and now - start >= RATE_WINDOW:
            self._close_window(now, now - start)
        if last is None or now - last > 2 * RATE_WINDOW:
            self.bitrate = self.wire_bitrate = 0
            self._recent.clear()
            self.fps = 0.0
            self.temporal.clear()
            self._window_start = None
            self._window_bytes = 0
            self._window_packets = 0
            self._window_frames = 0

    @property
    def active(self) -> bool:
        return self.bitrate > 0

    def on_rtx(self, rtx_pkt: RtpPacket, now: float) -> None:
        """A retransmission from the publisher (RFC 4588): unwrap, then treat as media."""
        budget = self.producer.budget
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
            payload_type=self.producer.codec.payload_type,
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
            self.nacks.on_packet(ext_seq, now, self.producer.rtt)
        self.stats.packets_received += 1
        self._deliver(pkt, ext_seq, ext_ts, now)

    def _deliver(self, pkt: RtpPacket, ext_seq: int, ext_ts: int, now: float) -> None:
        plain = pkt
        if pkt.payload_type == self.producer.codec.red_payload_type:
            plain = self.red_primary = primary_view(pkt)  # type: ignore[assignment]
            if plain is None or plain.payload_type != self.producer.codec.payload_type:
                metrics.DROP["malformed_red"].inc()
                self._hide(ext_seq)
                return
        slot = ext_seq & CACHE_MASK
        self._cache[slot] = pkt.data
        self._cache_seq[slot] = ext_seq
        keyframe = False
        if pkt.marker:
            self.frames += 1
            self._window_frames += 1
        producer = self.producer
        if producer.parse_vp8 and pkt.payload_end > pkt.payload_offset:
            # Parsed once here and shared by every consumer's temporal filter.
            payload = self.vp8_payload = memoryview(pkt.data)[pkt.payload_offset:pkt.payload_end]
            desc = self.vp8 = parse_vp8(payload)
            if desc is not None and desc.tid is not None:
                self.temporal.add(desc.tid, len(pkt.data) + WIRE_OVERHEAD, pkt.marker)
            keyframe = desc is not None and desc.is_keyframe
            if keyframe and desc is not None and desc.width:
                self.width, self.height = desc.width, desc.height
            if keyframe:
                self._keyframe_arrived(now)
            elif self.keyframes.pending:
                self._keyframe_due(now)
        elif producer.is_video and pkt.payload_end > pkt.payload_offset:
            keyframe = producer.keyframe_check(self, pkt)
            if keyframe:
                self._keyframe_arrived(now)
            elif self.keyframes.pending:
                self._keyframe_due(now)
        consumers = producer.consumers
        if consumers:
            if fastsend.AVAILABLE:
                fastsend.fanout(consumers, self, pkt, ext_seq, ext_ts, keyframe, now)
            else:
                for consumer in consumers:
                    consumer.forward(self, pkt, ext_seq, ext_ts, keyframe, now)
        if producer.taps and self.spatial == producer.record_layer:
            for tap in producer.taps:
                tap.on_packet(plain, ext_seq, ext_ts, keyframe, now)  # RED: its Opus frame
                if tap.needs_keyframe:
                    self.request_keyframe(now)

    def _keyframe_arrived(self, now: float) -> None:
        self.last_keyframe_at = now
        self.keyframes.on_keyframe()

    def _keyframe_due(self, now: float) -> None:
        """A keyframe request was merged into the last one: send it once its time came."""
        if self.keyframes.poll(now):
            self._pli_upstream()

    def cached(self, ext_seq: int) -> RtpPacket | None:
        slot = ext_seq & CACHE_MASK
        if self._cache_seq[slot] == ext_seq:
            data = self._cache[slot]
            return None if data is None else parse_rtp(data)
        return None

    # -- feedback towards the publisher --------------------------------------------------

    def request_keyframe(self, now: float) -> None:
        if self.producer.is_video and self.keyframes.request(now):
            self._pli_upstream()

    def _pli_upstream(self) -> None:
        if self.ssrc is not None:
            metrics.RTCP_OUT["pli"].inc()
            self.plis_sent += 1
            self.producer.send_rtcp(rtcp.build_pli(self.producer.rtcp_ssrc, self.ssrc))

    def _nack_upstream(self, ext_seqs: tuple[int, ...]) -> None:
        if self.ssrc is not None:
            metrics.RTCP_OUT["nack"].inc()
            self.nacks_sent += 1
            self.producer.send_rtcp(rtcp.build_nack(
                self.producer.rtcp_ssrc, self.ssrc, [s & 0xFFFF for s in ext_seqs]))

    def on_sender_report(self, ntp: int, rtp_ts: int, now: float) -> None:
        self.last_sr = (ntp, rtp_ts, now)
        if self.spatial == self.producer.record_layer:
            for tap in self.producer.taps:
                tap.on_sender_report(ntp, rtp_ts, now)
        self.stats.on_sender_report(rtcp.ntp_middle32(ntp), now)

    def rtp_timestamp_at(self, now: float) -> int | None:
        """The publisher's RTP timestamp that corresponds to ``now`` (our clock), by its SR."""
        if self.last_sr is None:
            return None
        _, rtp_ts, arrived = self.last_sr
        return self._ts.peek(rtp_ts) + int((now - arrived) * self.producer.codec.clock_rate)

    def restart(self, ssrc: int | None, rtx_ssrc: int | None) -> None:
        """The stream arrives afresh (new connection): forget its sequence space."""
        self.ssrc, self.rtx_ssrc = ssrc, rtx_ssrc
        self._seq, self._ts = Unwrapper(16), Unwrapper(32)
        self._cache_seq = [-1] * CACHE_SIZE
        self._cache = [None] * CACHE_SIZE
        self.stats = ReceiveStats(ssrc or 0, self.producer.codec.clock_rate)
        self.nacks = NackTracker() if self.producer.is_video else None
        self.last_sr = None
        self.last_packet_at = None
        self.measure(float("inf"))


class Producer:
    """One published track (audio or video) received from one publisher.

    A simulcast track has one RecvStream per layer (``streams[0]`` the lowest); any other
    track has exactly one. Consumers see every stream's packets and keep the layer they
    are switched to.
    """

    __slots__ = (
        "audio_level_id", "budget", "closed", "codec", "consumers", "is_video",
        "keyframe_check", "kind", "mid", "muted", "parse_vp8", "participant_id",
        "record_layer", "remb_bitrate", "rtcp_ssrc", "rtt", "send_rtcp", "simulcast",
        "source", "speakers", "streams", "tally", "taps", "track_id",
    )

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
        layers: Sequence[LayerSpec] | None = None,
    ) -> None:
        self.track_id = track_id
        self.participant_id = participant_id
        self.kind = kind
        self.codec = codec
        self.mid = mid
        self.source = source
        self.muted = False
        self.closed = False
        self.consumers: list[Consumer] = []
        # Taps (recorders) see the packets of one layer after the consumers; see
        # recording/recorder.py.
        self.taps: list[Any] = []
        self.audio_level_id = audio_level_id
        self.speakers: SpeakerDetector | None = None
        self.send_rtcp = send_rtcp
        self.rtcp_ssrc = rtcp_ssrc
        self.is_video = kind == "video"
        self.keyframe_check = _keyframe_checker(codec.name)
        self.rtt = 0.1
        self.remb_bitrate: int | None = None
        self.tally = metrics.rtp_tally("in", kind)
        specs = list(layers) if layers else [LayerSpec(None, ssrc, rtx_ssrc)]
        self.simulcast = len(specs) > 1 or specs[0].rid is not None
        self.streams = [RecvStream(self, i, s.rid, s.ssrc, s.rtx_ssrc)
                        for i, s in enumerate(specs)]
        self.record_layer = len(self.streams) - 1
        self.parse_vp8 = self.simulcast and codec.name == "VP8"
        # Byte budget (limits.bitrate_bucket), shared by all layers: a publisher flooding
        # past it loses the excess here, before it costs every subscriber's link and the
        # node's CPU.
        self.budget: TokenBucket | None = None

    # -- the single-stream view (also the lowest layer of a simulcast track) -------------

    @property
    def ssrc(self) -> int | None:
        return self.streams[0].ssrc

    @property
    def rtx_ssrc(self) -> int | None:
        return self.streams[0].rtx_ssrc

    @property
    def stats(self) -> ReceiveStats:
        return self.streams[0].stats

    @property
    def frames(self) -> int:
        return self.streams[0].frames

    @property
    def nacks(self) -> NackTracker | None:
        return self.streams[0].nacks

    @property
    def nacks_sent(self) -> int:
        return sum(s.nacks_sent for s in self.streams)

    @property
    def plis_sent(self) -> int:
        return sum(s.plis_sent for s in self.streams)

    def _top_known(self) -> RecvStream:
        known = [s for s in self.streams if s.width]
        return known[-1] if known else self.streams[-1]

    @property
    def width(self) -> int | None:
        return self._top_known().width

    @property
    def height(self) -> int | None:
        return self._top_known().height

    def on_rtp(self, pkt: RtpPacket, now: float) -> None:
        self.streams[0].on_rtp(pkt, now)

    def on_rtx(self, pkt: RtpPacket, now: float) -> None:
        self.streams[0].on_rtx(pkt, now)

    def cached(self, ext_seq: int) -> RtpPacket | None:
        return self.streams[0].cached(ext_seq)

    def stream_by_rid(self, rid: str) -> RecvStream | None:
        return next((s for s in self.streams if s.rid == rid), None)

    # -- feedback towards the publisher --------------------------------------------------

    def request_keyframe(self, now: float, spatial: int | None = None) -> None:
        """Ask for a keyframe on one layer, or on every layer that is arriving."""
        if spatial is not None:
            self.streams[min(spatial, len(self.streams) - 1)].request_keyframe(now)
            return
        for s in self.streams:
            if s.active or not self.simulcast:
                s.request_keyframe(now)

    def on_sender_report(self, ntp: int, rtp_ts: int, now: float) -> None:
        self.streams[0].on_sender_report(ntp, rtp_ts, now)

    def rtp_timestamp_at(self, now: float) -> int | None:
        return self.streams[0].rtp_timestamp_at(now)

    def update_remb(self) -> int | None:
        """The lowest bandwidth estimate among this track's subscribers (for REMB upstream)."""
        estimates = [x for x in (c.target_bitrate or c.remb_bitrate for c in self.consumers)
                     if x]
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
        self.codec, self.mid = track.codec, track.mid
        self.audio_level_id = track.audio_level_id
        self.send_rtcp, self.rtcp_ssrc = send_rtcp, track.rtcp_ssrc
        specs = track.layers or [LayerSpec(None, track.ssrc, track.rtx_ssrc)]
        if len(specs) != len(self.streams):
            specs = [LayerSpec(None, track.ssrc, track.rtx_ssrc)] * len(self.streams)
        for stream, spec in zip(self.streams, specs, strict=True):
            stream.rid = spec.rid
            stream.restart(spec.ssrc, spec.rtx_ssrc)
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


def _vp8_keyframe(stream: RecvStream, pkt: RtpPacket) -> bool:
    data = pkt.data
    # Cheap pre-check: only the first packet of partition 0 can start a keyframe.
    first = data[pkt.payload_offset]
    if not first & 0x10 or first & 0x07:
        return False
    desc = parse_vp8(memoryview(data)[pkt.payload_offset:pkt.payload_end])
    if desc is None or not desc.is_keyframe:
        return False
    if desc.width:
        stream.width, stream.height = desc.width, desc.height
    return True


def _h264_keyframe(stream: RecvStream, pkt: RtpPacket) -> bool:
    return is_h264_keyframe(pkt.data[pkt.payload_offset:pkt.payload_end])


def _no_keyframes(stream: RecvStream, pkt: RtpPacket) -> bool:
    return False


def _keyframe_checker(codec_name: str) -> Callable[[RecvStream, RtpPacket], bool]:
    if codec_name == "VP8":
        return _vp8_keyframe
    if codec_name == "H264":
        return _h264_keyframe
    return _no_keyframes


# The classes (by name) and rules the C packet path (fastsend.receive and fanout) works
# with: here, where both ends are known.
FAST_CLASSES: dict[str, type] = {cls.__name__: cls for cls in (
    Consumer, DownstreamContext, OutputRewriter, SendStats, metrics.RtpTally, RecvStream,
    Producer, Unwrapper, ReceiveStats, NackTracker, KeyframeRequester, TokenBucket, CodecInfo,
    SpeakerDetector, SpeakerStream)}
FAST_RULES = (NEVER, OutputRewriter.REORDER_WINDOW, HISTORY_MASK, fastsend.count_failure,
              CACHE_MASK, _vp8_keyframe, ACTIVE_DBOV)
if fastsend.AVAILABLE:
    fastsend.configure(FAST_CLASSES, *FAST_RULES)
