"""Hostile packets past the parsers: into the Producer and the publisher transport.

The parsers have their own property tests (test_rtp, test_rtcp, test_vp8, test_h264, the
recording depacketizers); here the parsed packets go on into the state they feed: sequence
unwrapping, the NACK tracker, the packet cache, keyframe detection, speaker levels and the
publish budget, with absurd sequence and timestamp jumps, RTX lies and lying RTCP. Nothing
may raise, and nothing may grow without bound.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from mediaserver import metrics
from mediaserver.limits import bitrate_bucket
from mediaserver.sfu import rtcp
from mediaserver.sfu.aiortc_adapter import CandidatePolicy
from mediaserver.sfu.producer import CodecInfo, Producer
from mediaserver.sfu.rtp import build_rtp, parse_rtp
from mediaserver.sfu.transport import PublishedTrack, PublisherTransport

VP8 = CodecInfo("video/VP8", 90000, 96, rtx_payload_type=97)
OPUS = CodecInfo("audio/opus", 48000, 111, channels=2)
MEDIA_SSRC, RTX_SSRC = 0x1111, 0x2222


def _producer(kind: str = "video", budget_kbps: int = 0) -> Producer:
    p = Producer(track_id="TR_x", participant_id="PA_x", kind=kind,
                 codec=VP8 if kind == "video" else OPUS, ssrc=MEDIA_SSRC,
                 rtx_ssrc=RTX_SSRC if kind == "video" else None, mid="0", source="camera",
                 send_rtcp=lambda data: True, rtcp_ssrc=1, audio_level_id=1)
    p.budget = bitrate_bucket(budget_kbps)
    return p


packet_fields = st.tuples(
    st.integers(0, 0xFFFF),  # sequence number: any jump, any direction
    st.integers(0, 0xFFFFFFFF),  # timestamp: likewise
    st.booleans(),  # marker
    st.binary(max_size=40),  # payload: VP8 descriptor or not, RTX OSN or not
    st.sampled_from([0, 0, 1, 255]),  # padding
    st.booleans(),  # sent as RTX
    st.binary(max_size=3),  # audio level extension value
)


@settings(max_examples=200, deadline=None)
@given(st.lists(packet_fields, max_size=60), st.sampled_from(["video", "audio"]),
       st.sampled_from([0, 8]))
def test_producer_survives_any_packet_sequence(packets, kind, budget_kbps):
    producer = _producer(kind, budget_kbps)
    now = 0.0
    for seq, ts, marker, payload, padding, as_rtx, level in packets:
        now += 0.01
        data = build_rtp(marker=marker, payload_type=97 if as_rtx else producer.codec.payload_type,
                         sequence_number=seq, timestamp=ts,
                         ssrc=RTX_SSRC if as_rtx else MEDIA_SSRC,
                         extensions=[(1, level)] if level else [], payload=payload,
                         padding=padding)
        pkt = parse_rtp(data)
        assert pkt is not None
        if as_rtx and kind == "video":
            producer.on_rtx(pkt, now)
        else:
            producer.on_rtp(pkt, now)
        if producer.nacks is not None:
            assert len(producer.nacks.missing) <= 500  # the tracker gives up on huge gaps
    producer.request_keyframe(now + 10)


def test_absurd_sequence_jumps_ask_for_a_keyframe_not_for_thousands_of_nacks():
    producer = _producer("video")
    sent: list[bytes] = []
    producer.send_rtcp = lambda data: sent.append(data) or True  # type: ignore[method-assign]
    now = 0.0
    for seq in (100, 101, 30000, 30001, 5, 6, 40000):
        now += 0.02
        data = build_rtp(marker=True, payload_type=96, sequence_number=seq, timestamp=seq * 3000,
                         ssrc=MEDIA_SSRC, extensions=[], payload=b"\x90\x80\x00\x00\x00\x00")
        pkt = parse_rtp(data)
        assert pkt is not None
        producer.on_rtp(pkt, now)
    assert producer.nacks is not None and len(producer.nacks.missing) <= 500
    packets = [p for blob in sent for p in rtcp.parse_rtcp(blob)[0]]
    nacked = sum(len(p.lost) for p in packets if isinstance(p, rtcp.Nack))
    assert nacked <= 1000
    assert any(isinstance(p, rtcp.Pli) for p in packets)


def test_a_flood_past_the_budget_is_dropped_and_counted():
    producer = _producer("video", budget_kbps=800)  # 100 kB/s, 100 kB burst
    before = metrics.DROP["rate_limited"]._value.get()
    payload = b"\x10" + bytes(1000)
    forwarded = 0
    for i in range(2000):  # 2 MB within one second: twenty times the budget
        pkt = parse_rtp(build_rtp(marker=False, payload_type=96, sequence_number=i,
                                  timestamp=0, ssrc=MEDIA_SSRC, extensions=[],
                                  payload=payload))
        assert pkt is not None
        frames_before = producer.stats.packets_received
        producer.on_rtp(pkt, i / 2000)
        forwarded += producer.stats.packets_received - frames_before
    dropped = metrics.DROP["rate_limited"]._value.get() - before
    assert dropped + forwarded == 2000
    assert 90 <= forwarded <= 210  # the burst plus one second of the rate, in packets


def _transport() -> PublisherTransport:
    transport = PublisherTransport(CandidatePolicy(addresses=("127.0.0.1",)))
    track = PublishedTrack(mid="0", kind="video", codec=VP8, ssrc=MEDIA_SSRC, rtx_ssrc=RTX_SSRC,
                           rtcp_ssrc=1, audio_level_id=None)
    producer = Producer(track_id="TR_y", participant_id="PA_y", kind="video", codec=track.codec,
                        ssrc=track.ssrc, rtx_ssrc=track.rtx_ssrc, mid="0", source="camera",
                        send_rtcp=lambda data: True, rtcp_ssrc=1)
    transport.attach(producer)
    transport._mid_ext_id = 1
    return transport


def _lying_rtcp(draw_pt: int, claimed_words: int, body: bytes, count: int) -> bytes:
    """One RTCP packet whose header claims a length unrelated to what follows."""
    return struct.pack("!BBH", 0x80 | (count & 0x1F), draw_pt, claimed_words & 0xFFFF) + body


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.one_of(
    st.binary(max_size=80),
    st.builds(lambda b: b"\x80" + b, st.binary(max_size=80)),
    st.builds(lambda ssrc, rest: struct.pack("!BBHII", 0x80, 96, 1, 0, ssrc) + rest,
              st.sampled_from([MEDIA_SSRC, RTX_SSRC, 7]), st.binary(max_size=40)),
    st.builds(_lying_rtcp, st.sampled_from([200, 201, 202, 203, 205, 206, 207]),
              st.integers(0, 0xFFFF), st.binary(max_size=40), st.integers(0, 31)),
    st.builds(lambda a, b: a + b,
              st.just(rtcp.build_rr(5)), st.builds(_lying_rtcp, st.just(205),
                                                    st.integers(0, 0xFFFF),
                                                    st.binary(max_size=24), st.just(1))),
)), max_size=30))
def test_publisher_transport_survives_any_datagram(blobs):
    transport = _transport()
    for as_rtcp, data in blobs:
        if as_rtcp:
            transport.on_rtcp(data)
        else:
            transport.on_rtp(data, 0)
