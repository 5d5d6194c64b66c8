"""H.264 is forwarded as-is when both ends negotiate it."""

from __future__ import annotations

from aiortc import RTCRtpSender

from loadtest.client import SignalClient
from loadtest.media import SyntheticVideoTrack
from tests.conftest import wait_until


async def test_h264_publisher_is_forwarded_to_an_h264_subscriber(server):
    publisher = SignalClient(server.ws_url, server.token("h264", "pub", role="host"))
    viewer = SignalClient(server.ws_url, server.token("h264", "viewer"))
    try:
        await publisher.connect()
        await viewer.connect()
        h264 = [c for c in RTCRtpSender.getCapabilities("video").codecs
                if c.mimeType in ("video/H264", "video/rtx")]
        reply = await publisher.publish(SyntheticVideoTrack((250, 120, 0)),
                                        codec_preferences={"video": h264})
        assert reply["tracks"][0]["codec"] == "video/H264"
        await wait_until(lambda: sum(r.frames for r in viewer.received.values()) >= 20,
                         timeout=60, message="H.264 frames decoded by the viewer")
        (track,) = viewer.received.values()
        r, g, b = track.colors[-1]
        assert abs(r - 250) < 40 and abs(g - 120) < 40 and b < 40
        assert "H264" in viewer.subscriber.remoteDescription.sdp
        assert "VP8" not in viewer.subscriber.remoteDescription.sdp
    finally:
        await publisher.close()
        await viewer.close()
