"""What the packet path keeps for seconds must not be objects the garbage collector scans.

A busy node holds about a thousand packets per stream (the producer's cache) and a thousand
history entries per consumer; tracked, they made every full collection a pause of tens of
milliseconds for every packet (bench/capacity.py showed p99 forwarding latency of 25-80 ms).
"""

from __future__ import annotations

import gc

from mediaserver.sfu.consumer import Consumer, DownstreamContext, PyHistory
from mediaserver.sfu.producer import CodecInfo, Producer
from mediaserver.sfu.rtp import build_rtp, parse_rtp


def test_cache_and_history_entries_are_untracked_after_a_collection() -> None:
    sent: list[bytes] = []
    producer = Producer(track_id="t", participant_id="p", kind="video",
                        codec=CodecInfo("video/VP8", 90000, 96, 97), ssrc=1234, rtx_ssrc=None,
                        mid="0", source="camera", send_rtcp=lambda b: True, rtcp_ssrc=1)
    consumer = Consumer(producer=producer, subscriber_id="s", context=DownstreamContext(
        lambda data: sent.append(data) is None), ssrc=99, rtx_ssrc=98, payload_type=96,
        rtx_payload_type=97, audio_level_id=None, abs_send_time_id=3, transport_cc_id=None,
        mid="0")
    consumer.waiting_keyframe = False
    producer.consumers.append(consumer)
    payload = bytes([0x90, 0x80, 0x12, 0x34]) + bytes(200)
    for seq in range(50):
        data = build_rtp(marker=True, payload_type=96, sequence_number=seq, timestamp=seq * 3000,
                         ssrc=1234, extensions=[(3, b"abc")], payload=payload)
        pkt = parse_rtp(data)
        assert pkt is not None
        producer.on_rtp(pkt, seq * 0.04)
    assert len(sent) == 50
    gc.collect()
    stream = producer.streams[0]
    cached = [e for e in stream._cache if e is not None]
    history = [e for e in consumer._history.entries() if e is not None]
    assert len(cached) == 50 and len(history) == 50
    assert not any(gc.is_tracked(e) for e in cached)
    kept = consumer._history
    if isinstance(kept, PyHistory):
        assert not any(gc.is_tracked(e) for e in kept._entries if e is not None)
    else:
        assert not gc.is_tracked(kept)  # the extension's records: nothing to scan
    # ... and a NACK still finds its packet: the cache parses it again.
    again = stream.cached(stream._cache_seq[10 & (len(stream._cache) - 1)])
    assert again is not None and again.sequence_number == 10
