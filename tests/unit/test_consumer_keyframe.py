"""A keyframe sent into a subscriber connection that is not up yet is not the end of it."""

from __future__ import annotations

from mediaserver.sfu import rtcp
from mediaserver.sfu.consumer import Consumer, DownstreamContext
from mediaserver.sfu.producer import CodecInfo, Producer
from mediaserver.sfu.rtp import build_rtp, parse_rtp

VP8 = CodecInfo("video/VP8", 90000, 96, rtx_payload_type=97)
KEY = b"\x10\x00\x9d\x01\x2a"  # S=1 PID=0; payload header P=0 (keyframe)
DELTA = b"\x10\x01\x00\x00\x00"  # P=1 (interframe)


def test_a_keyframe_lost_to_a_connection_not_up_yet_is_waited_for_and_asked_for_again():
    upstream: list[bytes] = []
    producer = Producer(track_id="TR_v", participant_id="PA_p", kind="video", codec=VP8,
                        ssrc=5, rtx_ssrc=None, mid="0", source="camera",
                        send_rtcp=lambda data: upstream.append(data) or True, rtcp_ssrc=1)
    connected = [False]
    sent: list[bytes] = []

    def send(data: bytes) -> bool:
        if connected[0]:
            sent.append(data)
        return connected[0]

    consumer = Consumer(producer=producer, subscriber_id="PA_s", context=DownstreamContext(send),
                        ssrc=9, rtx_ssrc=None, payload_type=96, rtx_payload_type=None,
                        audio_level_id=None, abs_send_time_id=None, transport_cc_id=None,
                        mid="0")
    producer.add_consumer(consumer, now=0.0)
    plis_before = producer.plis_sent
    now = 10.0  # past the keyframe request throttle

    def feed(seq: int, payload: bytes) -> None:
        pkt = parse_rtp(build_rtp(marker=True, payload_type=96, sequence_number=seq,
                                  timestamp=seq * 6000, ssrc=5, extensions=[],
                                  payload=payload))
        assert pkt is not None
        producer.on_rtp(pkt, now + seq)

    feed(1, KEY)  # the keyframe goes nowhere: the subscriber's DTLS is not up
    assert consumer.waiting_keyframe and producer.plis_sent == plis_before + 1
    assert any(isinstance(p, rtcp.Pli) for b in upstream for p in rtcp.parse_rtcp(b)[0])
    connected[0] = True
    feed(2, DELTA)  # undecodable without the keyframe: held back
    assert sent == []
    feed(3, KEY)
    feed(4, DELTA)
    assert len(sent) == 2 and not consumer.waiting_keyframe


def test_a_nack_counts_only_packets_this_link_lost_for_the_first_time():
    """What the estimator hears of a NACK: packets sent and asked for again for the first
    time. Repeats of the missing list and numbers never sent (a gap upstream) are not news."""
    producer = Producer(track_id="TR_v", participant_id="PA_p", kind="video", codec=VP8,
                        ssrc=5, rtx_ssrc=None, mid="0", source="camera",
                        send_rtcp=lambda data: True, rtcp_ssrc=1)
    sent: list[bytes] = []
    consumer = Consumer(producer=producer, subscriber_id="PA_s",
                        context=DownstreamContext(lambda d: sent.append(d) or True),
                        ssrc=9, rtx_ssrc=None, payload_type=96, rtx_payload_type=None,
                        audio_level_id=None, abs_send_time_id=None, transport_cc_id=None,
                        mid="0")
    producer.add_consumer(consumer, now=0.0)
    for seq in range(1, 6):
        pkt = parse_rtp(build_rtp(marker=True, payload_type=96, sequence_number=seq,
                                  timestamp=seq * 6000, ssrc=5, extensions=[],
                                  payload=KEY if seq == 1 else DELTA))
        assert pkt is not None
        producer.on_rtp(pkt, 10.0 + seq * 0.07)
    out = [parse_rtp(d) for d in sent]
    seqs = [p.sequence_number for p in out if p is not None]
    assert len(seqs) == 5
    never_sent = (seqs[-1] + 3) & 0xFFFF
    assert consumer.on_nack((seqs[1], seqs[2]), 11.0) == 2
    resent = len(sent)
    assert resent == 7  # both resent
    assert consumer.on_nack((seqs[1], seqs[2], seqs[3]), 11.02) == 1  # a repeat, and one new
    assert consumer.on_nack((never_sent,), 11.5) == 0
    assert consumer.on_nack((seqs[1],), 12.0) == 0  # asked for again later: resent, not news
    assert len(sent) == resent + 2  # seqs[3] at once, seqs[1] after a round trip
    consumer.on_nack((seqs[1],), 13.0)  # a third time: given up (two resends already)
    assert len(sent) == resent + 2
    consumer.set_paused(True, 13.0)
    assert consumer.on_nack((seqs[4],), 13.5) == 1  # lost, counted, but a paused track's
    assert len(sent) == resent + 2  # packets are not resent
