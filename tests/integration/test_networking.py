"""Media networking settings reach the ICE candidates the server offers."""

from __future__ import annotations

import re
import time

from loadtest.client import SignalClient
from loadtest.media import SyntheticVideoTrack
from mediaserver.sfu import aiortc_adapter
from mediaserver.sfu.transport import SubscriberTransport
from tests.conftest import wait_until


def _candidates(sdp: str) -> list[tuple[str, int]]:
    return [(m[0], int(m[1])) for m in
            re.findall(r"a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ host", sdp)]


async def test_candidates_use_the_port_range_and_the_announced_ip():
    aiortc_adapter.install()
    policy = aiortc_adapter.CandidatePolicy(addresses=("127.0.0.1",), port_min=45000,
                                            port_max=45009, announced_ip="203.0.113.7")
    transport = SubscriberTransport(policy, "PA_test")
    try:
        transport.pc.addTransceiver("audio", direction="sendonly")
        transport._prepare()
        await transport.pc.setLocalDescription(await transport.pc.createOffer())
        candidates = _candidates(transport.pc.localDescription.sdp)
        assert candidates, transport.pc.localDescription.sdp
        for host, port in candidates:
            assert host == "203.0.113.7"
            assert 45000 <= port <= 45009
    finally:
        await transport.close()


async def test_loopback_candidates_only_when_allowed():
    assert "127.0.0.1" not in aiortc_adapter.host_addresses("0.0.0.0", allow_loopback=False)
    assert "127.0.0.1" in aiortc_adapter.host_addresses("0.0.0.0", allow_loopback=True)
    assert aiortc_adapter.host_addresses("127.0.0.1", allow_loopback=True) == ("127.0.0.1",)


async def test_late_joiner_gets_a_keyframe_quickly(server):
    """A subscriber arriving mid-call must not wait for the encoder's next natural keyframe."""
    publisher = SignalClient(server.ws_url, server.token("late", "pub", role="host"))
    early = SignalClient(server.ws_url, server.token("late", "early", kind="one_to_one"))
    late = None
    try:
        await publisher.connect()
        await early.connect()
        await publisher.publish(SyntheticVideoTrack((90, 90, 90)))

        def frames(c: SignalClient) -> int:
            return sum(r.frames for r in c.received.values())

        await wait_until(lambda: frames(early) >= 30, timeout=60, message="early viewer frames")
        await early.close()
        late = SignalClient(server.ws_url, server.token("late", "late"))
        joined_at = time.monotonic()
        await late.connect()
        await wait_until(lambda: frames(late) >= 1, timeout=10, message="late viewer frame")
        (track,) = late.received.values()
        assert track.first_frame_at is not None
        # aiortc's encoder makes a keyframe only every 3000 frames (200 s here) unless asked:
        # a first frame within seconds proves the PLI on subscribe. Measured ~1-2 s idle.
        assert track.first_frame_at - joined_at < 8.0
    finally:
        await publisher.close()
        await early.close()
        if late is not None:
            await late.close()
