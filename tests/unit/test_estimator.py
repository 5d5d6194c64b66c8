"""The per-subscriber bandwidth estimator, driven as a table of events with time passed in."""

from __future__ import annotations

from mediaserver.sfu.estimator import BandwidthEstimator


def calm(est: BandwidthEstimator, now: float) -> BandwidthEstimator:
    """Two receiver reports without loss: the current rate is confirmed."""
    est.on_loss(0.0, now)
    est.on_loss(0.0, now)
    return est


def test_remb_counts_only_when_it_falls() -> None:
    est = BandwidthEstimator(initial=1_000_000)
    est.on_sent(400_000)
    est.on_remb(300_000, 0.0)  # the receiver's slow-growing estimate is not a ceiling
    assert est.value == 1_000_000
    est.on_remb(320_000, 1.0)
    assert est.value == 1_000_000
    est.on_remb(200_000, 2.0)  # far below what is sent: a real capacity drop
    assert est.value == 200_000
    assert est.history[-1][1] == "remb"


def test_a_small_remb_fall_keeps_what_flows_but_blocks_probes() -> None:
    est = BandwidthEstimator(initial=600_000, quiet=1.5)
    est.on_sent(400_000)
    est.on_remb(500_000, 0.0)
    est.on_remb(340_000, 1.0)  # 85 % of what arrived: a keyframe burst queued for a moment
    assert est.value == 400_000  # the headroom is gone, the layers that flow stay
    assert est.history[-1][1] == "remb (soft)"
    calm(est, 1.5)
    assert not est.want_probe(800_000, 2.0)
    assert est.want_probe(800_000, 2.6)


def test_an_upgrade_that_congests_soon_after_its_probe_counts_as_a_failed_probe() -> None:
    est = calm(BandwidthEstimator(initial=100_000, probe_settle=1.0, backoff_min=2.0), 0.0)
    est.on_sent(90_000)
    assert est.want_probe(150_000, 5.0)
    est.tick(7.0)
    assert est.value == 150_000 and est.probes_ok == 1
    est.on_sent(150_000)
    est.on_loss(0.5, 9.0)  # the layer the probe let in overfills the link's queue
    assert est.value == int(150_000 * 0.75) and est.probes_failed == 1
    assert est.history[-1][1] == "upgrade failed"
    calm(est, 9.5)
    assert not est.want_probe(400_000, 10.9)  # backoff applies
    assert est.want_probe(400_000, 11.1)


def test_heavy_loss_drops_to_what_got_through_light_loss_does_not() -> None:
    est = BandwidthEstimator(initial=1_000_000)
    est.on_sent(800_000)
    est.on_loss(0.05, 1.0)
    assert est.value == 1_000_000
    est.on_loss(0.40, 2.0)
    assert est.value == int(800_000 * 0.8)


def test_floor_cap_and_ceiling() -> None:
    est = BandwidthEstimator(initial=500_000, floor=40_000, ceiling=2_000_000)
    est.cap = 300_000
    assert est.value == 300_000
    est.on_sent(60_000)
    est.on_loss(0.99, 1.0)  # 60 kbps * (1 - 0.495) is below the floor
    assert est.value == 40_000


def test_probe_success_lifts_the_estimate() -> None:
    est = BandwidthEstimator(initial=200_000, quiet=1.5, probe_duration=0.6, probe_settle=1.0)
    assert not est.want_probe(500_000, 10.0)  # nothing confirmed yet: no probe
    calm(est, 10.0)
    assert est.want_probe(500_000, 10.0)
    assert not est.want_probe(600_000, 10.1)  # one at a time
    # One probe goes at most half again above the estimate: 300 kbps, not 500.
    assert est.padding_rate(150_000, 10.2) == 150_000
    assert est.padding_rate(150_000, 10.7) == 0  # padding ends, feedback window stays open
    est.tick(11.0)
    assert est.probe is not None and est.value == 200_000
    est.tick(11.6)
    assert est.probe is None and est.value == 300_000 and est.probes_ok == 1
    assert est.want_probe(900_000, 11.6)  # after a success the next step may double
    assert est.padding_rate(300_000, 11.7) == 300_000


def test_congested_probe_is_stopped_and_keeps_the_old_estimate_then_backs_off() -> None:
    est = BandwidthEstimator(initial=200_000, backoff_min=2.0, backoff_max=8.0)
    est.on_sent(400_000)
    est.on_remb(400_000, 0.0)
    calm(est, 4.0)
    assert est.want_probe(500_000, 5.0)
    est.on_remb(120_000, 5.3)  # the probe overfilled the link
    assert est.probe is None and est.value == 200_000 and est.probes_failed == 1
    est.on_loss(0.5, 5.8)  # the queue the probe built drains: not news
    assert est.value == 200_000
    assert not est.want_probe(500_000, 7.0)  # backoff 2 s after the failure
    calm(est, 7.3)
    assert est.want_probe(500_000, 7.4)
    est.on_loss(0.05, 7.6)  # moderate loss during a probe also fails it
    assert est.probe is None and est.probes_failed == 2
    calm(est, 10.0)
    assert not est.want_probe(500_000, 11.0)  # backoff doubled to 4 s
    assert est.want_probe(500_000, 11.7)
    est.on_loss(0.05, 11.8)
    calm(est, 12.0)
    assert not est.want_probe(500_000, 11.8 + 7.9)  # ...and to 8 s, the maximum
    assert est.want_probe(500_000, 11.8 + 8.1)


def test_no_probe_soon_after_congestion_or_when_already_enough() -> None:
    est = BandwidthEstimator(initial=1_000_000, quiet=1.5)
    est.on_sent(900_000)
    est.on_loss(0.5, 10.0)
    calm(est, 10.5)
    assert not est.want_probe(2_000_000, 11.0)
    assert est.want_probe(2_000_000, 11.6)
    est2 = calm(BandwidthEstimator(initial=1_000_000), 0.0)
    assert not est2.want_probe(900_000, 5.0)
    est2.cap = 1_000_000
    assert not est2.want_probe(2_000_000, 5.0)


def test_one_noisy_report_is_not_heavy_loss_two_are() -> None:
    est = BandwidthEstimator(initial=1_000_000)
    est.on_sent(800_000)
    est.on_loss(0.25, 1.0)  # 5 of 20 packets: a 10 % radio's bad second
    assert not est.lossy_within(10, 1.0) and est.value == 1_000_000
    est.on_loss(0.3, 2.0)  # again: a full link
    assert est.lossy_within(10, 2.0) and est.value < 1_000_000


def test_moderate_loss_cuts_only_with_a_sign_of_a_queue() -> None:
    est = BandwidthEstimator(initial=1_000_000)
    est.on_sent(800_000)
    est.on_loss(0.15, 1.0)  # a lossy radio: no REMB fall, so no cut
    assert est.value == 1_000_000 and not est.lossy_within(10, 1.0)
    est.on_remb(900_000, 2.0)
    est.on_remb(700_000, 2.5)  # the receiver saw a queue grow (soft: near what is sent)
    est.on_loss(0.15, 3.5)  # now the same loss means a full link: the estimate falls...
    assert est.value == int(800_000 * (1 - 0.075))
    assert not est.lossy_within(10, 3.5)  # ...but only heavy loss may pause video
    est.on_loss(0.3, 6.0)
    assert est.lossy_within(10, 6.0)
