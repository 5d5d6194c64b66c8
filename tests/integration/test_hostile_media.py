"""Random datagrams at the media port during a call: dropped, and the call goes on."""

from __future__ import annotations

import random
import re
import socket

from loadtest.client import SignalClient
from loadtest.media import SineAudioTrack, SyntheticVideoTrack
from mediaserver import metrics
from tests.conftest import wait_until


def _server_ports(sdp: str) -> set[int]:
    return {int(p) for p in re.findall(r"a=candidate:\S+ \d+ udp \d+ 127\.0\.0\.1 (\d+) typ host",
                                       sdp)}


async def test_garbage_at_the_media_port_does_not_disturb_the_call(server):
    a = SignalClient(server.ws_url, server.token("hostile", "a"))
    b = SignalClient(server.ws_url, server.token("hostile", "b"))
    try:
        await a.connect()
        await b.connect()
        await a.publish(SyntheticVideoTrack((0, 90, 180), width=160, height=120, fps=15),
                        SineAudioTrack(500))

        def frames() -> int:
            return sum(r.frames for r in b.received.values() if r.kind == "video")

        await wait_until(lambda: frames() >= 10, timeout=60, message="call up")
        ports = _server_ports(a.publisher.remoteDescription.sdp)
        ports |= _server_ports(b.subscriber.remoteDescription.sdp)
        assert ports
        dropped_before = sum(metrics.DROP[r]._value.get()
                             for r in ("srtp_error", "malformed_rtp", "malformed_rtcp"))
        rng = random.Random(10)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sent = 0
        try:
            before = frames()
            # Bursts of random datagrams whose first bytes look like STUN, DTLS, RTP and
            # RTCP, interleaved with waiting for the media to keep flowing.
            for _ in range(10):
                for _ in range(300):
                    first = rng.choice([0, 1, 22, 23, 128, 129, 144, 200, rng.randrange(256)])
                    size = rng.randrange(1, 1400)
                    payload = bytes([first]) + rng.randbytes(size)
                    for port in ports:
                        sock.sendto(payload, ("127.0.0.1", port))
                        sent += 1
                target = frames() + 3
                await wait_until(lambda target=target: frames() >= target, timeout=10,
                                 message="media between bursts")
        finally:
            sock.close()
        assert sent >= 3000
        dropped = sum(metrics.DROP[r]._value.get()
                      for r in ("srtp_error", "malformed_rtp", "malformed_rtcp")) - dropped_before
        assert dropped > 0  # RTP-looking garbage fails SRTP and is counted, never raised
        await wait_until(lambda: frames() >= before + 30, timeout=30,
                         message="video keeps flowing after the garbage")
        room = server.rooms.rooms["hostile"]
        assert {p.identity for p in room.participants.values()} == {"a", "b"}
        assert a.publisher.connectionState == "connected"
        assert b.subscriber.connectionState == "connected"
    finally:
        await a.close()
        await b.close()
