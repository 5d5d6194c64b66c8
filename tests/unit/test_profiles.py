"""Load-test network profiles: parsing, and the packet tap's loss and bandwidth cap."""

from __future__ import annotations

import random

import pytest

from loadtest.profiles import PROFILES, NetworkProfile, PacketTap, parse_profile


def _rtp(seq: int, size: int = 1000) -> bytes:
    return bytes([0x80, 96]) + seq.to_bytes(2, "big") + bytes(8) + bytes(size - 12)


@pytest.mark.parametrize("text,rate,delay,loss,count", [
    ("3g-weak", 400, 150, 0.01, None),
    ("edge:2", 150, 300, 0.01, 2),
    ("rate=250", 250, 0, 0.0, None),
    ("rate=300,delay=100,jitter=20,loss=0.01,queue=150:1", 300, 100, 0.01, 1),
])
def test_parse(text: str, rate: float, delay: float, loss: float, count: int | None) -> None:
    a = parse_profile(text)
    assert (a.profile.rate_kbps, a.profile.delay_ms, a.profile.loss, a.count) == (
        rate, delay, loss, count)


@pytest.mark.parametrize("text", [
    "nope", "rate=abc", "speed=10", "loss=1.5", "rate=-3", "rate=nan", "rate=250:0", "3g:x",
])
def test_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_profile(text)


def test_cap_spaces_datagrams_at_the_link_rate() -> None:
    # 1000-byte datagrams (+28 of IP/UDP) at 822.4 kbit/s: one every 10 ms.
    tap = PacketTap(NetworkProfile("c", rate_kbps=822.4), random.Random(1), drop_rtp=False)
    holds = []
    for i in range(5):  # all arrive at once: a burst
        assert tap.on_datagram(_rtp(i), 0.0) is False
    for i in range(5):
        holds.append(tap.delay(_rtp(i), 0.0))
    assert holds == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05])
    assert tap.queue_drops == 0


def test_cap_drops_what_would_queue_too_long() -> None:
    tap = PacketTap(NetworkProfile("c", rate_kbps=822.4, queue_ms=25), random.Random(1),
                    drop_rtp=False)
    dropped = [tap.on_datagram(_rtp(i), 0.0) for i in range(6)]
    # 0, 10, 20 ms of queueing are kept; 30 ms and more is over the 25 ms queue.
    assert dropped == [False, False, False, True, True, True]
    assert tap.queue_drops == 3 and tap.impaired == 3
    # A packet arriving once the link has drained is kept and not held by the queue.
    assert tap.on_datagram(_rtp(7), 1.0) is False
    for _ in range(3):
        tap.delay(_rtp(0), 0.0)
    assert tap.delay(_rtp(7), 1.0) == pytest.approx(0.01)


def test_stun_and_dtls_are_neither_capped_nor_held() -> None:
    tap = PacketTap(NetworkProfile("c", rate_kbps=10, queue_ms=1), random.Random(1),
                    drop_rtp=False)
    stun, dtls = bytes([0, 1]) + bytes(30), bytes([22, 254]) + bytes(30)
    assert not any(tap.on_datagram(d, 0.0) for d in (stun, dtls) * 10)
    assert tap.delay(dtls, 0.0) == 0.0


def test_cheap_mode_counts_then_drops_rtp_but_the_link_still_carried_it() -> None:
    tap = PacketTap(NetworkProfile("c", rate_kbps=822.4), random.Random(1), drop_rtp=True)
    assert tap.on_datagram(_rtp(1), 0.0) is True
    rtcp = bytes([0x80, 200]) + bytes(26)
    assert tap.on_datagram(rtcp, 0.0) is False  # RTCP passes, queued behind the RTP packet
    assert tap.delay(rtcp, 0.0) > 0.01
    assert tap.packets == 1


def test_named_profiles_with_a_cap_hold_datagrams() -> None:
    assert PROFILES["edge"].holds and PROFILES["3g-weak"].holds and not PROFILES["clean"].holds
