"""A subscriber's copy of one published track: rewrite, send, answer NACKs.

Each Consumer has its own SSRC, payload type and header extension ids (those the
subscriber's connection negotiated) and its own output sequence/timestamp space
(seqnum.OutputRewriter), so that a source change upstream (publisher restart, a later
layer switch or resume) is invisible to the subscriber's decoder. Video starts on a
keyframe: until one arrives, packets are dropped (a decoder fed a delta frame first shows
garbage or nothing).

Drops are guard clauses, each counted under its reason.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mediaserver import metrics
from mediaserver.quality.rtpstats import SendStats
from mediaserver.sfu import fastsend
from mediaserver.sfu.fastsend import count_failure
from mediaserver.sfu.red import RedOutput
from mediaserver.sfu.rtp import (
    RtpPacket,
    abs_send_time_24,
    build_rtp,
    header_abs_send_time,
    header_level_abs_send_time,
    pack_transport_seq,
)
from mediaserver.sfu.seqnum import SEQ_MASK, OutputRewriter
from mediaserver.sfu.temporal import Vp8TemporalFilter

if TYPE_CHECKING:
    from mediaserver.sfu.producer import Producer, RecvStream

HISTORY_SIZE = 1024  # power of two
PADDING_BYTES = 224  # per probe packet (RTP padding is at most 255 bytes)

# The abs-send-time value depends only on ``now``, which is the same for every consumer a
# packet fans out to: compute it once per packet, not once per subscriber.
_last_abs: list[Any] = [None, 0]


def abs_send_time_at(now: float) -> int:
    if _last_abs[0] != now:
        _last_abs[0], _last_abs[1] = now, abs_send_time_24(now)
    return _last_abs[1]  # type: ignore[no-any-return]


HISTORY_MASK = HISTORY_SIZE - 1
NEVER = float("-inf")  # a history slot's packet has not been asked for again


class PyHistory:
    """A consumer's sent packets by slot (output seq16 modulo the size): (output seq16,
    stream ext seq, output ts32, layer index) for NACK answers, and when each was last
    resent (NEVER: not asked for since it was sent).

    The extension's ``History`` keeps the same in C records that the fan-out writes in
    place; this is it for a build without the extension, with the same methods."""

    __slots__ = ("_entries", "_resent")

    def __init__(self, size: int) -> None:
        self._entries: list[tuple[int, int, int, int] | None] = [None] * size
        self._resent = [NEVER] * size

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, slot: int) -> tuple[int, int, int, int] | None:
        return self._entries[slot]

    def put(self, slot: int, out_seq: int, ext_seq: int, out_ts: int, spatial: int) -> None:
        self._entries[slot] = (out_seq, ext_seq, out_ts, spatial)
        self._resent[slot] = NEVER

    def resent_at(self, slot: int) -> float:
        return self._resent[slot]

    def set_resent(self, slot: int, when: float) -> None:
        self._resent[slot] = when

    def clear(self) -> None:
        """Every entry forgotten (when each was resent is left: an empty slot is never
        asked)."""
        self._entries = [None] * len(self._entries)

    def entries(self) -> list[tuple[int, int, int, int] | None]:
        return list(self._entries)

    def resents(self) -> list[float]:
        return list(self._resent)


History: Any = fastsend.History if fastsend.AVAILABLE else PyHistory

# Resends of one packet at most. A receiver re-asks every round trip while the packet is
# missing (libwebrtc up to 10 times); on a link that lost it to congestion every resend
# adds to the load that lost it. Two give a lost retransmission one more chance.
MAX_RESENDS = 2


class DownstreamContext:
    """What all consumers on one subscriber connection share."""

    __slots__ = ("joined_at", "output", "send_rtp", "twcc_seq")

    def __init__(self, send_rtp: Callable[[bytes], bool], joined_at: float | None = None,
                 output: Any = None) -> None:
        self.send_rtp = send_rtp
        # The connection's C sender (aiortc_adapter.PacketSender.output), or None: the
        # common header is then written, protected and sent in one call.
        self.output = output
        self.twcc_seq = random.randrange(1 << 16)
        # When the subscriber joined (monotonic), until its first packet is forwarded.
        self.joined_at = joined_at


class Consumer:
    """One producer as delivered to one subscriber."""

    # Slots: the C fan-out (fastsend.fanout) reads and writes these fields at fixed
    # offsets, as the interpreter's own attribute access on slots does.
    __slots__ = (
        "_ast_id", "_c_header", "_fast_header", "_history", "_level_id", "_resends",
        "_rtx_seq", "_src_audio_level_id", "_tally", "_transport_cc_id",
        "bandwidth_paused", "clock_rate", "closed", "context", "disabled",
        "keyframe_requests", "kind", "last_sent_at", "layer_switches", "mid",
        "nacks_received", "packets_at_report", "paused", "payload_type", "producer", "red",
        "red_payload_type", "remb_bitrate", "retransmitted", "rewriter", "rtx_payload_type",
        "rtx_ssrc", "ssrc", "stats", "stream", "subscriber_id", "target", "target_bitrate",
        "temporal", "waiting_keyframe",
    )

    def __init__(
        self,
        *,
        producer: Producer,
        subscriber_id: str,
        context: DownstreamContext,
        ssrc: int,
        rtx_ssrc: int | None,
        payload_type: int,
        rtx_payload_type: int | None,
        audio_level_id: int | None,
        abs_send_time_id: int | None,
        transport_cc_id: int | None,
        mid: str,
        red_payload_type: int | None = None,
    ) -> None:
        self.producer = producer
        self.subscriber_id = subscriber_id
        self.context = context
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self.payload_type = payload_type
        self.rtx_payload_type = rtx_payload_type
        self.red_payload_type = red_payload_type  # RED negotiated by the subscriber
        self.red = RedOutput.between(producer.codec.payload_type,
                                     producer.codec.red_payload_type, payload_type,
                                     red_payload_type)
        self.mid = mid
        self.kind = producer.kind
        self.clock_rate = producer.codec.clock_rate
        self._src_audio_level_id = producer.audio_level_id
        self._transport_cc_id = transport_cc_id
        self._ast_id = abs_send_time_id or 0  # 0: not negotiated
        self._level_id = audio_level_id or 0
        # The common header (abs-send-time, and an audio level for audio, nothing else) is
        # packed in one struct call instead of build_rtp's general extension writer.
        # What the C sender writes itself: one-byte ids for the level and abs-send-time.
        self._c_header = (self._ast_id < 15 and not transport_cc_id
                          and (not (self._level_id and self._src_audio_level_id)
                               or self._level_id < 15))
        self._fast_header = self._c_header and self._ast_id > 0
        self.rewriter = OutputRewriter(random.randrange(1 << 16), random.randrange(1 << 32))
        self.paused = False
        self.disabled = False  # the subscriber asked not to receive this track for now
        self.bandwidth_paused = False  # the allocator found no room for it
        self.target_bitrate: int | None = None  # share of the estimate, for REMB upstream
        self.packets_at_report = 0  # packets sent when the subscriber's last report came
        self.closed = False
        self.waiting_keyframe = producer.kind == "video"
        # The layer forwarded now and the one wanted; differ until the target's keyframe.
        self.stream: RecvStream | None = None if producer.simulcast else producer.streams[0]
        self.target: RecvStream = producer.streams[0]
        self.layer_switches = 0
        # VP8 PictureID/TL0PICIDX continuity across layer switches and temporal thinning.
        self.temporal: Vp8TemporalFilter | None = (
            Vp8TemporalFilter() if producer.codec.name == "VP8" and producer.simulcast else None)
        self.stats = SendStats()
        self.remb_bitrate: int | None = None
        self.last_sent_at: float | None = None
        # Feedback from the subscriber, for per-track statistics.
        self.nacks_received = 0
        self.keyframe_requests = 0
        self.retransmitted = 0
        # Slot -> (output seq16, stream ext seq, output ts32, layer) for NACK answers, and
        # when that packet was last resent. Entries hold the layer's index, not the stream
        # (no object for the garbage collector to follow).
        self._history = History(HISTORY_SIZE)
        # Resends of the packet in each slot; reset at its first NACK, not on the packet path.
        self._resends = bytearray(HISTORY_SIZE)
        self._rtx_seq = random.randrange(1 << 16)
        self._tally = metrics.rtp_tally("out", producer.kind)

    # -- packet path -------------------------------------------------------------------

    def forward(self, stream: RecvStream, pkt: RtpPacket, ext_seq: int, ext_ts: int,
                keyframe: bool, now: float) -> None:
        if stream is not self.stream:
            # Another simulcast layer: switch to it only at a keyframe of the target layer,
            # so the subscriber's decoder never sees a frame that references one it lacks.
            if stream is not self.target or not keyframe or self.paused:
                return
            self._switch_to(stream, now)
        if self.paused:
            metrics.DROP["paused"].inc()
            self.rewriter.skip(ext_seq)
            return
        if self.waiting_keyframe:
            if not keyframe:
                metrics.DROP["waiting_keyframe"].inc()
                return
            self.waiting_keyframe = False
        if pkt.payload_end == pkt.payload_offset:
            # Padding-only: a probe for the publisher's own estimator, not media.
            metrics.DROP["padding"].inc()
            self.rewriter.skip(ext_seq)
            return
        payload = None
        temporal = self.temporal
        if temporal is not None:
            desc = stream.vp8
            if desc is not None and stream.vp8_payload is not None:
                payload = temporal.process(stream.vp8_payload, desc, ext_seq, pkt.marker)
                if payload is None:
                    metrics.DROP["temporal_layer"].inc()
                    self.rewriter.skip(ext_seq)
                    return
        pt = self.payload_type
        if self.red is not None:
            sent = self._red(pkt, stream.red_primary)
            if sent is None:
                metrics.DROP["malformed_red"].inc()
                self.rewriter.skip(ext_seq)
                return
            pt, pkt, payload = sent
        out = self.rewriter.rewrite(ext_seq, ext_ts)
        if out is None:
            metrics.DROP["too_old"].inc()
            return
        out_seq, out_ts = out
        slot = out_seq & HISTORY_MASK
        self._history.put(slot, out_seq, ext_seq, out_ts, stream.spatial)
        self._account(self._send(pkt, out_seq, out_ts, pt, now, payload), pkt, now)

    def _account(self, size: int, pkt: RtpPacket, now: float) -> None:
        """After a copy went to ``_send``: its outcome counted (the C fan-out does the same
        inline for a copy sent whole; see fastsend.fanout)."""
        if size < 0:
            return  # lost at the socket: the subscriber will ask for it again
        if not size:
            metrics.DROP["not_connected"].inc()
            if self.kind == "video" and not self.waiting_keyframe:
                # Sent into a connection that is not up yet (or no longer): if that was the
                # keyframe this subscriber waited for, everything after it would be
                # undecodable until the next one, which an aiortc publisher sends only
                # when asked. Wait, and ask, again.
                self.waiting_keyframe = True
                self.producer.request_keyframe(now, self.spatial)
            return
        ctx = self.context
        if ctx.joined_at is not None:
            metrics.observe_join_to_first_packet(now - ctx.joined_at)
            ctx.joined_at = None
        self.last_sent_at = now
        stats = self.stats
        stats.packets_sent += 1
        stats.octets_sent += pkt.payload_end - pkt.payload_offset
        if pkt.marker:
            stats.frames_sent += 1
        tally = self._tally
        tally.packets += 1
        tally.bytes += size

    def _switch_to(self, stream: RecvStream, now: float) -> None:
        previous = self.stream
        self.stream = stream
        if previous is not None and self.rewriter.started:
            # The history keeps its entries (each names its own stream): packets sent
            # before the switch can still be retransmitted.
            self.rewriter.switch_source(self._ts_gap(now))
        if self.temporal is not None:
            self.temporal.reset_source()
        self.waiting_keyframe = True  # satisfied by the keyframe that triggered the switch
        self.layer_switches += 1

    def set_layer(self, spatial: int, temporal: int, now: float) -> None:
        """Aim at a layer; the switch itself happens at the target layer's next keyframe."""
        streams = self.producer.streams
        target = streams[max(0, min(spatial, len(streams) - 1))]
        if self.temporal is not None:
            self.temporal.aim(temporal, self.spatial, target.spatial)
        if target is self.target:
            if target is not self.stream:
                target.request_keyframe(now)  # throttled per layer
            return
        self.target = target
        if target is not self.stream:
            target.request_keyframe(now)

    @property
    def spatial(self) -> int | None:
        """The layer being forwarded now (None before the first)."""
        return None if self.stream is None else self.stream.spatial

    def send_padding(self, size: int, now: float) -> int:
        """Send about ``size`` bytes of padding-only RTX packets: a bandwidth probe.

        Padding rides on the RTX stream, so it never touches the media sequence numbers;
        the subscriber's estimator counts it, its decoder never sees it. It may come before
        the track's first media packet (a track held back from the start is probed for
        first; the SDP already named the RTX SSRC). Returns the bytes actually sent (0
        without RTX or before the transport is up).
        """
        if self.rtx_ssrc is None or self.rtx_payload_type is None:
            return 0
        sent = 0
        ts = self.rewriter.last_out_ts & 0xFFFFFFFF
        while sent < size:
            self._rtx_seq = (self._rtx_seq + 1) & SEQ_MASK
            exts: list[tuple[int, bytes]] = []
            self._timing_extensions(exts, now)
            data = build_rtp(marker=False, payload_type=self.rtx_payload_type,
                             sequence_number=self._rtx_seq, timestamp=ts, ssrc=self.rtx_ssrc,
                             extensions=exts, payload=b"", padding=PADDING_BYTES)
            if not self.context.send_rtp(data):
                break
            sent += len(data)
        if sent:
            metrics.PADDING_BYTES.inc(sent)
        return sent

    def _timing_extensions(self, exts: list[tuple[int, bytes]], now: float) -> None:
        """abs-send-time and transport-wide sequence number, for the subscriber's estimator."""
        if self._ast_id:
            exts.append((self._ast_id, abs_send_time_at(now).to_bytes(3, "big")))
        if self._transport_cc_id:
            ctx = self.context
            ctx.twcc_seq = (ctx.twcc_seq + 1) & SEQ_MASK
            exts.append((self._transport_cc_id, pack_transport_seq(ctx.twcc_seq)))

    def _send(self, pkt: RtpPacket, seq: int, ts: int, pt: int, now: float,
              payload: bytes | memoryview | None) -> int:
        """Send one media packet: its length; 0 if the connection could not take it (not
        up yet, or gone); -1 if it was lost at the socket (counted)."""
        output = self.context.output
        if output is not None and self._c_header:
            level_id = level = 0
            if self._level_id and self._src_audio_level_id:
                raw = pkt.extensions.get(self._src_audio_level_id)
                if raw is not None and len(raw) == 1:
                    level_id, level = self._level_id, raw[0]
                elif raw is not None:
                    output = None  # an odd level value: build_rtp copies it as it is
            if output is not None:
                buffer, start, end = ((pkt.data, pkt.payload_offset, pkt.payload_end)
                                      if payload is None else (payload, 0, len(payload)))
                result = output.send_rtp(pkt.marker, pt, seq, ts, self.ssrc, level_id, level,
                                         self._ast_id, abs_send_time_at(now), buffer, start,
                                         end)
                if result > 0:
                    return result
                if result < 0:
                    count_failure(result)
                    return -1
                # 0: not set up yet; the sender's own path below sets it up.
        data = self._build(pkt, seq, ts, pt, self.ssrc, now, payload)
        return len(data) if self.context.send_rtp(data) else 0

    def _build(self, pkt: RtpPacket, seq: int, ts: int, pt: int, ssrc: int, now: float,
               payload: bytes | memoryview | None = None) -> bytes:
        if payload is None:
            payload = memoryview(pkt.data)[pkt.payload_offset:pkt.payload_end]
        level = None
        if self._level_id and self._src_audio_level_id:
            level = pkt.extensions.get(self._src_audio_level_id)
        if self._fast_header:
            if level is None:
                return header_abs_send_time(pkt.marker, pt, seq, ts, ssrc, self._ast_id,
                                            abs_send_time_at(now)) + payload
            if len(level) == 1:
                return header_level_abs_send_time(pkt.marker, pt, seq, ts, ssrc,
                                                  self._level_id, level[0], self._ast_id,
                                                  abs_send_time_at(now)) + payload
        exts: list[tuple[int, bytes]] = []
        if level is not None:
            exts.append((self._level_id, level))
        self._timing_extensions(exts, now)
        return build_rtp(marker=pkt.marker, payload_type=pt, sequence_number=seq,
                         timestamp=ts, ssrc=ssrc, extensions=exts, payload=payload)

    # -- feedback from the subscriber ----------------------------------------------------

    def on_nack(self, seqs: tuple[int, ...], now: float) -> int:
        """Retransmit what the subscriber lost, from the producer's cache.

        Returns how many of ``seqs`` this consumer sent and hears of for the first time:
        packets lost on the subscriber's own link. A receiver repeats its whole missing
        list with every new NACK, and asks for packets the SFU never had (lost upstream),
        so neither counts.
        """
        self.nacks_received += 1
        lost = 0
        for seq in seqs:
            slot = seq & HISTORY_MASK
            entry = self._history.get(slot)
            if entry is None or entry[0] != seq:
                metrics.RETRANSMIT_MISSING.inc()
                continue
            resent_at = self._history.resent_at(slot)
            if resent_at == NEVER:
                lost += 1
                self._resends[slot] = 0
            _, ext_seq, out_ts, spatial = entry
            stream = self.stream
            if stream is None or spatial != stream.spatial or self.paused:
                # A layer the subscriber was switched away from, or a track paused: what
                # comes next starts with a keyframe, so these packets would only cost a
                # congested link.
                metrics.RETRANSMIT_OBSOLETE.inc()
                self._history.set_resent(slot, now)  # counted once, never resent
                continue
            if now - resent_at < max(0.05, self.stats.rtt or 0.1):
                continue  # resent less than a round trip ago: this NACK crossed it
            if self._resends[slot] >= MAX_RESENDS:
                metrics.RETRANSMIT_GIVEN_UP.inc()
                continue
            self._resends[slot] += 1
            self._history.set_resent(slot, now)
            pkt = stream.cached(ext_seq)
            if pkt is None:
                metrics.RETRANSMIT_MISSING.inc()
                continue
            if self.rtx_payload_type is not None and self.rtx_ssrc is not None:
                original = memoryview(pkt.data)[pkt.payload_offset:pkt.payload_end]
                payload = seq.to_bytes(2, "big") + bytes(original)
                self._rtx_seq = (self._rtx_seq + 1) & SEQ_MASK
                data = self._build(pkt, self._rtx_seq, out_ts, self.rtx_payload_type,
                                   self.rtx_ssrc, now, payload)
            else:
                sent = self._red(pkt)
                if sent is None:
                    continue
                pt, pkt, plain = sent
                data = self._build(pkt, seq, out_ts, pt, self.ssrc, now, plain)
            if self.context.send_rtp(data):
                self.retransmitted += 1
                metrics.RETRANSMITTED.inc()
        return lost

    def _red(self, pkt: RtpPacket, primary: RtpPacket | None = None
             ) -> tuple[int, RtpPacket, bytes | None] | None:
        """(payload type, packet, payload or None for the packet's) as this subscriber gets
        ``pkt``: a publisher's RED as RED or as its primary Opus block; None if malformed."""
        red = self.red
        if red is None or pkt.payload_type != red.red_in:
            return self.payload_type, pkt, None
        return red.convert(pkt, primary)

    def on_keyframe_request(self, now: float) -> None:
        self.keyframe_requests += 1
        self.producer.request_keyframe(now, self.spatial)

    def sender_report_timestamp(self, now: float) -> int:
        """The output RTP timestamp for ``now``, for this stream's sender report.

        Taken from the publisher's own sender report when there is one, so that audio and
        video of one publisher keep their relation (lip sync) through the SFU.
        """
        stream = self.stream
        src = stream.rtp_timestamp_at(now) if stream is not None else None
        if src is not None:
            return (src + self.rewriter.ts_offset) & 0xFFFFFFFF
        ts = self.rewriter.last_out_ts
        if self.last_sent_at is not None:
            ts += int((now - self.last_sent_at) * self.clock_rate)
        return ts & 0xFFFFFFFF

    def refresh_paused(self, now: float) -> None:
        self.set_paused(self.producer.muted or self.disabled or self.bandwidth_paused, now)

    def _ts_gap(self, now: float) -> int:
        if self.last_sent_at is None:
            return 1
        return int((now - self.last_sent_at) * self.clock_rate)

    def source_changed(self, now: float) -> None:
        """The producer's upstream stream restarted: continue the output seamlessly."""
        codec = self.producer.codec  # a new connection may have renegotiated RED
        self.red = RedOutput.between(codec.payload_type, codec.red_payload_type,
                                     self.payload_type, self.red_payload_type)
        self.rewriter.switch_source(self._ts_gap(now))
        self._history.clear()
        if self.kind == "video":
            self.waiting_keyframe = True

    def set_paused(self, paused: bool, now: float) -> None:
        if paused == self.paused:
            return
        self.paused = paused
        if not paused:
            self.source_changed(now)
            self.producer.request_keyframe(now, self.target.spatial)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.producer.remove_consumer(self)

