"""A peer that vanishes without a word: no leave, no WebSocket close, no DTLS close_notify.

Its socket is reset and its UDP sockets simply stop answering (a laptop lid shut, a phone
in a tunnel). The server keeps it for the resume grace, then removes it; the others are
told and their media never stops.
"""

from __future__ import annotations

from typing import Any

from loadtest.client import SignalClient
from loadtest.media import SineAudioTrack, SyntheticVideoTrack
from mediaserver.sfu import aiortc_adapter
from tests.conftest import start_server, wait_until


def _go_silent(client: SignalClient) -> None:
    """Close the client's UDP sockets under aiortc, so nothing is sent or answered."""
    for pc in (client.publisher, client.subscriber):
        if pc is None:
            continue
        for dtls in aiortc_adapter.dtls_transports(pc):
            protocol: Any
            for protocol in dtls.transport._connection._protocols:
                if protocol.transport is not None:
                    protocol.transport.abort()


async def test_a_vanished_peer_is_removed_after_the_grace_and_the_others_go_on():
    async with start_server(resume_grace="1") as server:
        a = SignalClient(server.ws_url, server.token("vanish", "a", kind="group"))
        b = SignalClient(server.ws_url, server.token("vanish", "b", kind="group"))
        gone = SignalClient(server.ws_url, server.token("vanish", "gone", kind="group"))
        try:
            for c in (a, b, gone):
                await c.connect()
            await a.publish(SyntheticVideoTrack((0, 200, 0), width=320, height=240, fps=15),
                            SineAudioTrack(500))
            await b.publish(SineAudioTrack(700))
            await gone.publish(SineAudioTrack(900))
            assert a.participant_id and b.participant_id and gone.participant_id

            def b_sees_a() -> int:
                assert a.participant_id is not None
                return sum(t.frames for t in b.tracks_from(a.participant_id, "video"))

            def a_hears_b() -> int:
                assert b.participant_id is not None
                return sum(t.frames for t in a.tracks_from(b.participant_id, "audio"))

            await wait_until(lambda: b_sees_a() >= 10 and a_hears_b() >= 50
                             and gone.tracks_from(a.participant_id or "", "audio"),
                             timeout=60, message="everyone connected")
            room = server.rooms.rooms["vanish"]
            vanished = room.participants[gone.participant_id]
            _go_silent(gone)
            await gone.kill_socket()  # a TCP reset, not a close handshake
            await wait_until(lambda: vanished.state == "disconnected", message="noticed")
            await wait_until(lambda: gone.participant_id not in room.participants,
                             timeout=15, message="removed after the grace")
            assert vanished.closed
            assert vanished.publisher is None or vanished.publisher.pc.connectionState == "closed"
            for c in (a, b):
                await c.wait_event(lambda e: e.get("type") == "participant_left"
                                   and e.get("participant_id") == gone.participant_id)
            video, audio = b_sees_a(), a_hears_b()
            await wait_until(lambda: b_sees_a() > video + 30 and a_hears_b() > audio + 100,
                             timeout=30, message="the others' media keeps flowing")
        finally:
            for c in (a, b, gone):
                await c.close()
