"""Client-side network profiles, and the packet tap that counts what a subscriber receives.

A load-test client can only impair what it receives: it sits after the network, so it drops
and holds datagrams (``aiortc_adapter.drop_incoming`` / ``delay_incoming``) on the server ->
subscriber path. Profiles have loss, delay, jitter and a bandwidth cap: the cap is a token
bucket emulated at the client (each datagram leaves the virtual link when the link has
sent everything before it; what would wait longer than the queue allows is dropped, as tbf
does). The sender still sends at its own rate, so the cap acts through what the receiver's
estimator (REMB, receiver reports) makes of the delays and drops, as on a real bottleneck
whose queue sits at the far end. The figures are rough models of such links, not
measurements.

The tap sees every datagram before SRTP. SRTP encrypts only the payload, so the RTP header
(sequence number, SSRC) is readable: the tap counts packets, bytes and losses per SSRC
there, in both modes, and in cheap mode it drops the packet after counting, so nothing is
decrypted or decoded. STUN, DTLS and RTCP always pass.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from aiortc import RTCPeerConnection

from mediaserver.sfu.aiortc_adapter import delay_incoming, drop_incoming
from mediaserver.sfu.seqnum import Unwrapper


@dataclass(frozen=True)
class NetworkProfile:
    name: str
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    rate_kbps: float = 0.0  # bandwidth cap of the downlink; 0: none
    queue_ms: float = 200.0  # with a cap: the longest a datagram may queue before it is dropped
    description: str = ""

    @property
    def holds(self) -> bool:
        """True when datagrams have to go through a delay line."""
        return bool(self.delay_ms or self.jitter_ms or self.rate_kbps)


PROFILES: dict[str, NetworkProfile] = {p.name: p for p in (
    NetworkProfile("clean", description="no impairment"),
    NetworkProfile("lossy", loss=0.05, description="5 % random loss"),
    NetworkProfile("4g", delay_ms=50, jitter_ms=10, loss=0.005,
                   description="50 ms delay, 10 ms jitter, 0.5 % loss"),
    NetworkProfile("3g", delay_ms=150, jitter_ms=30, loss=0.02,
                   description="150 ms delay, 30 ms jitter, 2 % loss"),
    NetworkProfile("wifi-bad", delay_ms=20, jitter_ms=40, loss=0.03,
                   description="20 ms delay, 40 ms jitter, 3 % loss"),
    NetworkProfile("satellite", delay_ms=600, jitter_ms=20, loss=0.01,
                   description="600 ms delay, 20 ms jitter, 1 % loss"),
    NetworkProfile("3g-weak", delay_ms=150, jitter_ms=30, loss=0.01, rate_kbps=400,
                   description="400 kbit/s, 150 ms delay, 30 ms jitter, 1 % loss"),
    NetworkProfile("edge", delay_ms=300, jitter_ms=50, loss=0.01, rate_kbps=150,
                   description="150 kbit/s, 300 ms delay, 50 ms jitter, 1 % loss"),
)}
CUSTOM_KEYS = {"rate": "rate_kbps", "delay": "delay_ms", "jitter": "jitter_ms", "loss": "loss",
               "queue": "queue_ms"}
CLEAN = PROFILES["clean"]


@dataclass(frozen=True)
class ProfileAssignment:
    """``--profile NAME[:N]``: N participants per room (all when None) get the profile."""

    profile: NetworkProfile
    count: int | None = None


def parse_profile(text: str) -> ProfileAssignment:
    """``NAME[:N]``, or a custom link ``rate=KBPS,delay=MS,jitter=MS,loss=FRACTION,queue=MS``
    (any subset) in place of NAME."""
    name, _, count = text.partition(":")
    if "=" in name:
        profile = _custom(name)
    elif name in PROFILES:
        profile = PROFILES[name]
    else:
        raise ValueError(f"unknown profile {name!r} (known: {', '.join(PROFILES)}, or "
                         f"rate=KBPS,delay=MS,jitter=MS,loss=FRACTION,queue=MS)")
    if not count:
        return ProfileAssignment(profile)
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"profile participant count must be a positive integer: {text!r}")
    return ProfileAssignment(profile, int(count))


def _custom(text: str) -> NetworkProfile:
    values: dict[str, float] = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key not in CUSTOM_KEYS:
            raise ValueError(f"unknown link setting {key!r} in {text!r} "
                             f"(known: {', '.join(CUSTOM_KEYS)})")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{key} must be a number, not {value!r}") from None
        if number < 0 or (key == "loss" and number >= 1) or not math.isfinite(number):
            raise ValueError(f"{key}={value} is out of range")
        values[CUSTOM_KEYS[key]] = number
    return NetworkProfile(text, description="custom link", **values)


def assign_profiles(assignments: list[ProfileAssignment], per_room: int) -> list[NetworkProfile]:
    """The profile of each participant index in a room.

    Assignments fill from the last participant backwards (the pure subscribers come last),
    in the order given; whoever is left over is clean.
    """
    result = [CLEAN] * per_room
    slot = per_room - 1
    for a in assignments:
        for _ in range(per_room if a.count is None else a.count):
            if slot < 0:
                return result
            result[slot] = a.profile
            slot -= 1
    return result


def is_srtp(data: bytes) -> bool:
    """RTP or RTCP (RFC 7983: first byte 128-191); STUN and DTLS are not."""
    return len(data) > 1 and 128 <= data[0] <= 191


def is_rtp(data: bytes) -> bool:
    """RTP rather than RTCP (RTCP packet types 192-223 sit where RTP has marker + PT)."""
    return len(data) >= 12 and is_srtp(data) and not 192 <= data[1] <= 223


class StreamCounter:
    """Packets, bytes and losses of one SSRC, from sequence numbers."""

    __slots__ = ("_seq", "bytes", "first_at", "first_seq", "highest", "last_at", "padded",
                 "received")

    def __init__(self) -> None:
        self._seq = Unwrapper(16)
        self.first_seq: int | None = None
        self.highest = -1
        self.received = 0
        self.padded = 0  # of them, with the padding bit set (probes, or padded media)
        self.bytes = 0
        self.first_at: float | None = None
        self.last_at: float | None = None

    def add(self, seq: int, size: int, now: float, padded: bool = False) -> None:
        ext = self._seq.unwrap(seq)
        if self.first_seq is None or ext < self.first_seq:
            self.first_seq = ext
        if self.first_at is None:
            self.first_at = now
        self.highest = max(self.highest, ext)
        self.received += 1
        self.padded += padded
        self.bytes += size
        self.last_at = now

    @property
    def expected(self) -> int:
        return 0 if self.first_seq is None else self.highest - self.first_seq + 1

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.received)  # duplicates can exceed expected


class PacketTap:
    """Counts received RTP per SSRC, then applies the profile's loss and bandwidth cap, then
    (cheap mode) drops RTP. Sans-IO: a datagram and ``now`` in, drop or not out; ``delay``
    then says how long the delay line holds each datagram that passed."""

    def __init__(self, profile: NetworkProfile, rng: random.Random, drop_rtp: bool) -> None:
        self.profile = profile
        self.rng = rng
        self.drop_rtp = drop_rtp
        self.streams: dict[int, StreamCounter] = {}
        self.impaired = 0  # datagrams the profile dropped (random loss or a full queue)
        self.queue_drops = 0  # of them, dropped by the bandwidth cap's queue
        self._link_free_at = 0.0  # when the capped link has sent everything queued so far
        self._released: deque[float] = deque()  # when each passed SRTP datagram got through

    def on_datagram(self, data: bytes, now: float) -> bool:
        """True when the datagram is to be dropped."""
        rtp = is_rtp(data)
        if rtp:
            ssrc = int.from_bytes(data[8:12], "big")
            counter = self.streams.get(ssrc)
            if counter is None:
                counter = self.streams[ssrc] = StreamCounter()
            counter.add(int.from_bytes(data[2:4], "big"), len(data), now,
                        bool(data[0] & 0x20))
        srtp = is_srtp(data)
        if self.profile.loss and srtp and self.rng.random() < self.profile.loss:
            self.impaired += 1
            return True
        if self.profile.rate_kbps and srtp:
            start = max(now, self._link_free_at)
            if start - now > self.profile.queue_ms / 1000:
                self.impaired += 1
                self.queue_drops += 1
                return True
            # IPv4 + UDP headers go over the link too.
            self._link_free_at = start + (len(data) + 28) * 8 / (self.profile.rate_kbps * 1000)
            if not (rtp and self.drop_rtp):
                self._released.append(self._link_free_at)
        return rtp and self.drop_rtp

    def delay(self, data: bytes, now: float) -> float:
        """Seconds to hold a datagram that passed: the bandwidth cap's queueing and
        transmission time, plus the profile's delay with Gaussian jitter.

        The delay line keeps the order, so jitter delays packets behind a slow one
        rather than reordering them.
        """
        p = self.profile
        hold = max(0.0, self.rng.gauss(p.delay_ms, p.jitter_ms) / 1000) if p.jitter_ms \
            else p.delay_ms / 1000
        if p.rate_kbps and is_srtp(data) and self._released:
            hold += max(0.0, self._released.popleft() - now)
        return hold

    @property
    def packets(self) -> int:
        return sum(s.received for s in self.streams.values())


def install_tap(pc: RTCPeerConnection, tap: PacketTap, clock: Callable[[], float]) -> None:
    """Put ``tap`` on ``pc``'s incoming path (idempotent per connection): counting and loss
    first, at arrival, then the delay line, so that the tap sees arrival times."""
    drop_incoming(pc, lambda data: tap.on_datagram(data, clock()))
    if tap.profile.holds:
        delay_incoming(pc, lambda data: tap.delay(data, clock()))
