"""Tables for NACK tracking, keyframe request throttling and RTP statistics (time injected)."""

from __future__ import annotations

from mediaserver.quality.rtpstats import ReceiveStats, SendStats
from mediaserver.sfu.keyframe import KeyframeRequester
from mediaserver.sfu.nack import NackTracker


def test_nack_new_gap_is_requested_at_once_then_retried_after_an_rtt():
    n = NackTracker(max_retries=3)
    assert n.on_packet(100, now=0.0) == ()
    assert n.on_packet(103, now=0.01, rtt=0.05) == (101, 102)
    assert n.on_packet(104, now=0.02, rtt=0.05) == ()  # not due yet
    assert n.on_packet(105, now=0.08, rtt=0.05) == (101, 102)  # retry after ~1.2 rtt
    assert n.on_packet(101, now=0.09) == ()  # recovered
    assert n.recovered == 1
    assert n.missing == [102]


def test_nack_gives_up_after_max_retries():
    n = NackTracker(max_retries=2)
    n.on_packet(0, now=0.0)
    assert n.on_packet(2, now=0.0, rtt=0.02) == (1,)
    assert n.on_packet(3, now=0.1, rtt=0.02) == (1,)
    assert n.on_packet(4, now=0.2, rtt=0.02) == ()
    assert n.missing == []
    assert n.gave_up == 1


def test_nack_huge_gap_asks_for_a_keyframe_instead():
    n = NackTracker(max_missing=100)
    n.on_packet(0, now=0.0)
    assert n.on_packet(1000, now=0.1) == ()
    assert n.take_keyframe_request() is True
    assert n.take_keyframe_request() is False
    assert n.missing == []


def test_nack_across_16bit_wrap_uses_extended_numbers():
    n = NackTracker()
    n.on_packet(65534 + 65536, now=0.0)
    assert n.on_packet(65536 * 2 + 1, now=0.0) == (65535 + 65536, 65536 * 2)


def test_keyframe_requests_are_merged_within_the_interval():
    k = KeyframeRequester(interval=0.5)
    assert k.request(0.0) is True
    assert k.request(0.1) is False
    assert k.request(0.2) is False
    assert k.poll(0.4) is False
    assert k.poll(0.5) is True  # one merged request at the end of the interval
    assert k.poll(0.6) is False
    assert (k.requests_sent, k.requests_merged) == (2, 2)


def test_keyframe_arrival_cancels_a_merged_request():
    k = KeyframeRequester(interval=0.5)
    k.request(0.0)
    k.request(0.1)
    k.on_keyframe()
    assert k.poll(1.0) is False


def test_receive_stats_loss_fraction_and_jitter():
    s = ReceiveStats(ssrc=1, clock_rate=90000)
    # 10 packets expected (seq 0..9), 2 lost, evenly spaced: jitter stays ~0.
    for seq in [0, 1, 2, 4, 5, 6, 8, 9]:
        s.on_packet(seq, rtp_timestamp=seq * 3000, size=1000, now=seq / 30)
    block = s.report_block(now=1.0)
    assert block.packets_lost == 2
    assert block.fraction_lost == (2 << 8) // 10
    assert block.highest_seq == 9
    assert block.jitter < 5
    # Next interval: no new loss.
    s.on_packet(10, rtp_timestamp=30000, size=1000, now=10 / 30)
    assert s.report_block(now=1.5).fraction_lost == 0


def test_receive_stats_jitter_grows_with_irregular_arrival():
    s = ReceiveStats(ssrc=1, clock_rate=90000)
    for seq in range(50):
        late = 0.02 if seq % 2 else 0.0
        s.on_packet(seq, rtp_timestamp=seq * 3000, size=1000, now=seq / 30 + late)
    # |D| = 20 ms = 1800 ticks each step; the estimate converges towards it.
    assert 1200 < s.report_block(now=2.0).jitter <= 1800


def test_receive_stats_dlsr_counts_from_the_last_sender_report():
    s = ReceiveStats(ssrc=1, clock_rate=48000)
    s.on_packet(1, 0, 100, now=10.0)
    s.on_sender_report(0x12345678, now=10.0)
    block = s.report_block(now=10.5)
    assert block.lsr == 0x12345678
    assert block.dlsr == 32768  # 0.5 s in 1/65536 s units


def test_send_stats_rtt_from_lsr_and_dlsr():
    st = SendStats()
    # We sent an SR at NTP middle 0x00010000 (1 s); the receiver held it 0.25 s and its
    # report arrives at 1.5 s: RTT 0.25 s.
    assert st.on_receiver_report(lsr=0x00010000, dlsr=0x4000, fraction_lost=0,
                                 packets_lost=0, now_ntp_middle32=0x00018000) == 0.25
    assert st.rtt == 0.25
    # No sender report to refer to, or a delay that would put it in the future: no RTT.
    assert st.on_receiver_report(lsr=0, dlsr=0, fraction_lost=0, packets_lost=0,
                                 now_ntp_middle32=0x00018000) is None
    assert st.on_receiver_report(lsr=0x00020000, dlsr=0, fraction_lost=0, packets_lost=0,
                                 now_ntp_middle32=0x00018000) is None
    assert st.rtt == 0.25
