"""Group and couples sessions with real aiortc peers through the server."""

from __future__ import annotations

import asyncio
import statistics
import time

from loadtest.client import SignalClient
from loadtest.media import SineAudioTrack, SyntheticVideoTrack
from tests.conftest import wait_until

COLORS = [(230, 30, 30), (30, 230, 30), (30, 30, 230), (230, 230, 30), (30, 230, 230),
          (230, 30, 230)]


def _frames_from(viewer: SignalClient, publisher: SignalClient, kind: str) -> int:
    return sum(r.frames for r in viewer.tracks_from(publisher.participant_id, kind))


async def test_six_person_group_everyone_decodes_everyone(server):
    clients = [SignalClient(server.ws_url, server.token("group-6", f"p{i}", kind="group",
                                                        role="host" if i == 0 else "participant"))
               for i in range(6)]
    joined_at: dict[str, float] = {}
    try:
        for i, c in enumerate(clients):
            joined_at[f"p{i}"] = time.monotonic()
            reply = await c.connect()
            assert reply["type"] == "joined", reply
            assert len(reply["participants"]) == i  # everyone already there is listed
            await c.publish(SyntheticVideoTrack(COLORS[i], width=160, height=120, fps=10),
                            SineAudioTrack(300 + 100 * i))

        def complete() -> bool:
            return all(_frames_from(v, p, "video") >= 10 and _frames_from(v, p, "audio") >= 10
                       for v in clients for p in clients if v is not p)

        await wait_until(complete, timeout=120, message="all 30 video and audio streams")

        # Every viewer sees each publisher's own colour, and a join-to-first-frame time.
        delays = []
        for i, pub in enumerate(clients):
            for viewer in clients:
                if viewer is pub:
                    continue
                (track,) = viewer.tracks_from(pub.participant_id, "video")
                r, g, b = track.colors[-1]
                assert all(abs(x - y) < 50 for x, y in zip((r, g, b), COLORS[i], strict=True))
                assert track.first_frame_at is not None
                delays.append(track.first_frame_at - joined_at[f"p{i}"])
        print(f"\njoin -> first decoded frame at each other peer (6 people, 30 pairs): "
              f"median {statistics.median(delays):.2f} s, worst {max(delays):.2f} s")
        assert max(delays) < 30
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_couples_session_holds_three_and_refuses_a_fourth(server):
    clients = [SignalClient(server.ws_url, server.token("couple", name, kind="couples"))
               for name in ("therapist", "partner-a", "partner-b", "extra")]
    try:
        for c in clients[:3]:
            assert (await c.connect())["type"] == "joined"
            await c.publish(SyntheticVideoTrack((100, 100, 100), width=160, height=120, fps=10))
        refused = await clients[3].connect()
        assert refused["type"] == "error"
        assert refused["code"] == "room_full"
        assert "couples rooms hold at most 3" in refused["message"]
        await wait_until(lambda: all(_frames_from(v, p, "video") >= 5 for v in clients[:3]
                                     for p in clients[:3] if v is not p),
                         timeout=60, message="couples media")
    finally:
        await asyncio.gather(*(c.close() for c in clients))
