"""A subscriber on a lossy incoming path recovers packets by NACK/RTX and keeps decoding."""

from __future__ import annotations

import random
import re

from loadtest.client import SignalClient
from loadtest.media import SineAudioTrack, SyntheticVideoTrack
from mediaserver import metrics
from mediaserver.sfu import aiortc_adapter
from tests.conftest import wait_until


def _is_rtp(data: bytes) -> bool:
    return len(data) > 1 and 128 <= data[0] < 192 and not 192 <= data[1] <= 223


async def test_subscriber_losing_5_percent_recovers_by_nack_and_keeps_decoding(server):
    rng = random.Random(5)
    dropped = {"rtp": 0, "seen": 0}
    video_pts: set[int] = set()

    def lose_5_percent(data: bytes) -> bool:
        # Video only: audio is not NACKed (Opus conceals loss instead), so counting its
        # drops would say nothing about retransmission. RTP headers are not encrypted.
        if not _is_rtp(data) or data[1] & 0x7F not in video_pts:
            return False
        dropped["seen"] += 1
        if rng.random() < 0.05:
            dropped["rtp"] += 1
            return True
        return False

    publisher = SignalClient(server.ws_url, server.token("loss", "pub", role="host"))
    viewer = SignalClient(server.ws_url, server.token("loss", "viewer"))

    def on_subscriber_pc(pc) -> None:
        sdp = pc.remoteDescription.sdp
        video_pts.update(int(pt) for pt in re.findall(r"a=rtpmap:(\d+) VP8/", sdp))
        aiortc_adapter.drop_incoming(pc, lose_5_percent)

    viewer.on_subscriber_pc = on_subscriber_pc
    sent_before = metrics.RETRANSMITTED._value.get()
    try:
        await publisher.connect()
        await viewer.connect()
        await publisher.publish(SyntheticVideoTrack((30, 200, 30)), SineAudioTrack(600))

        def video_frames() -> int:
            return sum(r.frames for r in viewer.tracks_from(publisher.participant_id, "video"))

        await wait_until(lambda: video_frames() >= 20, timeout=60, message="first frames")
        start_frames = video_frames()
        start_dropped = dropped["rtp"]
        await wait_until(lambda: video_frames() >= start_frames + 60 and
                         dropped["rtp"] >= start_dropped + 10,
                         timeout=90, message="60 more frames decoded while losing packets")
        (track,) = viewer.tracks_from(publisher.participant_id, "video")
        numbers = track.last_frame_numbers
        # Frames keep coming in order: retransmission filled the holes rather than the
        # decoder skipping ahead on keyframes only.
        assert numbers == sorted(numbers)
        assert dropped["rtp"] / dropped["seen"] > 0.02
        retransmitted = metrics.RETRANSMITTED._value.get() - sent_before
        assert retransmitted >= dropped["rtp"] * 0.5, (retransmitted, dropped)
    finally:
        await publisher.close()
        await viewer.close()


async def test_retransmissions_reach_a_subscriber_of_several_videos(server):
    """aiortc clients route RTX by payload type unless told the RTX SSRCs (see adapter)."""
    rng = random.Random(11)
    video_pts: set[int] = set()
    dropped = {"rtp": 0}

    def lose(data: bytes) -> bool:
        if not _is_rtp(data) or data[1] & 0x7F not in video_pts or rng.random() >= 0.05:
            return False
        dropped["rtp"] += 1
        return True

    def on_subscriber_pc(pc) -> None:
        video_pts.update(int(pt) for pt in
                         re.findall(r"a=rtpmap:(\d+) VP8/", pc.remoteDescription.sdp))
        aiortc_adapter.drop_incoming(pc, lose)

    pubs = [SignalClient(server.ws_url, server.token("loss2", f"pub{i}", kind="group"))
            for i in range(2)]
    viewer = SignalClient(server.ws_url, server.token("loss2", "viewer", kind="group"))
    viewer.on_subscriber_pc = on_subscriber_pc
    try:
        for i, pub in enumerate(pubs):
            await pub.connect()
            await pub.publish(SyntheticVideoTrack((200 * i, 100, 50), width=160, height=120,
                                                  fps=15))
        await viewer.connect()

        def frames(pub: SignalClient) -> int:
            return sum(r.frames for r in viewer.tracks_from(pub.participant_id, "video"))

        await wait_until(lambda: all(frames(p) >= 10 for p in pubs), timeout=60,
                         message="both videos decoding")
        start = {p.participant_id: frames(p) for p in pubs}
        retransmitted = metrics.RETRANSMITTED._value.get()
        await wait_until(lambda: all(frames(p) >= start[p.participant_id] + 60 for p in pubs),
                         timeout=60, message="both videos keep decoding under 5 % loss")
        for pub in pubs:
            (track,) = viewer.tracks_from(pub.participant_id, "video")
            assert track.last_frame_numbers == sorted(track.last_frame_numbers)
        assert dropped["rtp"] >= 5
        assert metrics.RETRANSMITTED._value.get() - retransmitted >= dropped["rtp"] * 0.5
    finally:
        for c in (*pubs, viewer):
            await c.close()
