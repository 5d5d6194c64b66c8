"""A publisher's unannounced SSRCs, learnt from the mid extension: one per stream at a time."""

from __future__ import annotations

from mediaserver import metrics
from mediaserver.sfu import aiortc_adapter
from mediaserver.sfu.producer import CodecInfo, Producer
from mediaserver.sfu.rtp import build_rtp
from mediaserver.sfu.transport import SSRC_TAKEOVER_SILENCE, PublisherTransport


def _packet(ssrc: int, seq: int) -> bytes:
    return build_rtp(marker=True, payload_type=96, sequence_number=seq, timestamp=seq * 3000,
                     ssrc=ssrc, extensions=[(1, b"0")], payload=b"\x10\x00" + bytes(50))


def _unknown() -> float:
    return metrics.REGISTRY.get_sample_value("mediaserver_dropped_packets_total",
                                             {"reason": "unknown_ssrc"}) or 0.0


async def test_a_second_live_ssrc_on_one_stream_is_dropped_not_interleaved() -> None:
    # Simulcast offered without the rid extension: three encodings on one mid, no way to
    # tell them apart. The first SSRC keeps the stream; the others are counted drops.
    transport = PublisherTransport(aiortc_adapter.CandidatePolicy(addresses=("127.0.0.1",)))
    try:
        transport._mid_ext_id = 1
        producer = Producer(track_id="t", participant_id="p", kind="video",
                            codec=CodecInfo("video/VP8", 90000, 96, 97), ssrc=None,
                            rtx_ssrc=None, mid="0", source="camera",
                            send_rtcp=lambda b: True, rtcp_ssrc=1)
        transport.attach(producer)
        stream = producer.streams[0]
        before = _unknown()
        for seq in range(10):
            for ssrc in (111, 222, 333):
                transport.on_rtp(_packet(ssrc, seq + ssrc), 0)
        assert stream.ssrc == 111 and stream.stats.packets_received == 10
        assert _unknown() - before == 20
        # Once the first SSRC has been silent long enough, another may take the stream over
        # (a publisher that restarted its encoder).
        assert stream.last_packet_at is not None
        stream.last_packet_at -= SSRC_TAKEOVER_SILENCE + 0.1
        transport.on_rtp(_packet(222, 5000), 0)
        assert stream.ssrc == 222
    finally:
        await transport.close()
