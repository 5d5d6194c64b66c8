"""A real 1:1 therapy call: two aiortc peers over UDP on loopback through the server."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from loadtest.client import SignalClient
from loadtest.media import SineAudioTrack, SyntheticVideoTrack, dominant_frequency
from mediaserver import metrics
from mediaserver.sfu import fastsend
from mediaserver.sfu.aiortc_adapter import _InertReceiver, _InertSender
from tests.conftest import wait_until

THERAPIST = {"color": (220, 40, 40), "tone": 440.0}
CLIENT = {"color": (40, 40, 220), "tone": 1000.0}


def _close(a: tuple[int, int, int], b: tuple[int, int, int], tol: int = 40) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


async def _has(types_coro, wanted: str) -> bool:
    return wanted in await types_coro


@pytest.fixture(params=["c", "pure_python"])
def packet_path(request, monkeypatch) -> str:
    """The call runs on the C packet path and again without it (a server installed without
    a compiler): both must carry it."""
    if request.param == "pure_python":
        monkeypatch.setattr(fastsend, "AVAILABLE", False)
        monkeypatch.setattr(fastsend, "Output", None)
        monkeypatch.setattr(fastsend, "Input", None)
    else:
        assert fastsend.AVAILABLE, "the C extension was not built"
    return str(request.param)


async def test_one_to_one_call_each_side_sees_and_hears_the_other(packet_path, server):
    therapist = SignalClient(server.ws_url, server.token("room-1", "t1", role="host"))
    client = SignalClient(server.ws_url, server.token("room-1", "c1"))
    try:
        joined = await therapist.connect()
        assert joined["type"] == "joined", joined
        assert (await client.connect())["type"] == "joined"
        await therapist.publish(SyntheticVideoTrack(THERAPIST["color"]),
                                SineAudioTrack(THERAPIST["tone"]))
        await client.publish(SyntheticVideoTrack(CLIENT["color"]), SineAudioTrack(CLIENT["tone"]))

        def frames(c: SignalClient, other: SignalClient, kind: str) -> int:
            return sum(r.frames for r in c.tracks_from(other.participant_id, kind))

        await wait_until(lambda: frames(therapist, client, "video") >= 50
                         and frames(client, therapist, "video") >= 50,
                         timeout=60, message="50 decoded video frames each way")
        await wait_until(lambda: frames(therapist, client, "audio") >= 50
                         and frames(client, therapist, "audio") >= 50,
                         timeout=30, message="audio both ways")

        # Each side's pictures are the other's: colour and rising frame numbers.
        (tv,) = therapist.tracks_from(client.participant_id, "video")
        (cv,) = client.tracks_from(therapist.participant_id, "video")
        assert _close(tv.colors[-1], CLIENT["color"]), tv.colors[-1]
        assert _close(cv.colors[-1], THERAPIST["color"]), cv.colors[-1]
        assert tv.last_frame_numbers[-1] > tv.last_frame_numbers[0]
        # ... and each hears the other's tone.
        (ta,) = therapist.tracks_from(client.participant_id, "audio")
        (ca,) = client.tracks_from(therapist.participant_id, "audio")
        heard_by_therapist = dominant_frequency(np.concatenate(ta.audio[-25:]), ta.audio_rate)
        heard_by_client = dominant_frequency(np.concatenate(ca.audio[-25:]), ca.audio_rate)
        assert abs(heard_by_therapist - CLIENT["tone"]) < 30, heard_by_therapist
        assert abs(heard_by_client - THERAPIST["tone"]) < 30, heard_by_client

        # No decoder or encoder on the server's path: its receivers and senders are the
        # inert kind, and the only decoder threads are the two clients' (2 tracks each).
        room = server.rooms.rooms["room-1"]
        for p in room.participants.values():
            for transport in (p.publisher, p.subscriber):
                for t in transport.pc.getTransceivers():
                    assert type(t.receiver) is _InertReceiver
                    assert type(t.sender) is _InertSender
        decoders = [t for t in threading.enumerate() if t.name.endswith("-decoder")]
        assert len(decoders) == 4, [t.name for t in decoders]
        # ... and the packets went the path under test.
        for p in room.participants.values():
            output = p.subscriber.sender.output
            if packet_path == "c":
                assert output is not None and output.ready
            else:
                assert output is None

        # The extensions we forward are negotiated on the subscriber connection.
        sdp = client.subscriber.remoteDescription.sdp
        for uri in ("ssrc-audio-level", "abs-send-time"):
            assert uri in sdp, uri
        # ...but not transport-cc: without it subscribers send REMB, which the estimator reads.
        assert "transport-wide-cc" not in sdp

        # RTCP: subscribers get sender reports from the SFU (lip sync needs them), the
        # publisher gets receiver reports about its streams, and the subscriber's bandwidth
        # estimate (REMB) travels back to the publisher.
        async def stat_types(pc) -> set[str]:
            report = await pc.getStats()
            return {s.type for s in report.values()}

        await wait_until(lambda: stat_types(client.subscriber), timeout=5)
        await wait_until(
            lambda: _has(stat_types(client.subscriber), "remote-outbound-rtp"),
            timeout=15, message="sender reports from the SFU")
        await wait_until(
            lambda: _has(stat_types(therapist.publisher), "remote-inbound-rtp"),
            timeout=15, message="receiver reports to the publisher")
        # The publishers' sender reports are noted on their streams (in C on that path),
        # and our reports carry them back: the publisher measures its round trip from them.
        streams = [s for p in room.participants.values() for prod in p.producers.values()
                   for s in prod.streams]
        await wait_until(lambda: all(s.last_sr is not None and s.stats.last_sr_arrival
                                     for s in streams),
                         timeout=15, message="every stream's SR noted")

        async def publisher_rtt() -> bool:
            report = await therapist.publisher.getStats()
            return any(s.type == "remote-inbound-rtp" and (s.roundTripTime or 0.0) > 0
                       for s in report.values())

        await wait_until(publisher_rtt, timeout=15, message="the publisher's RTT from our RR")
        remb_out = metrics.RTCP.labels(direction="out", type="remb")
        await wait_until(lambda: remb_out._value.get() > 0, timeout=15,
                         message="REMB relayed to the publisher")
    finally:
        await therapist.close()
        await client.close()
