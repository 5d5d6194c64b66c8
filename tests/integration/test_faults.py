"""A peer that vanishes without a word: no leave, no WebSocket close, no DTLS close_notify.

Its socket is reset and its UDP sockets simply stop answering (a laptop lid shut, a phone
in a tunnel). The server keeps it for the resume grace, then removes it; the others are
told and their media never stops.
"""

from __future__ import annotations

from typing import Any

import aioice.ice

from loadtest.client import SignalClient
from loadtest.media import SineAudioTrack, SyntheticVideoTrack
from mediaserver import metrics
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


def _ice_connections(pc: Any) -> list[Any]:
    return [dtls.transport._connection for dtls in aiortc_adapter.dtls_transports(pc)]


async def test_consent_rests_on_the_peers_checks(monkeypatch):
    """Once connected the server sends no consent checks of its own (RFC 7675, as an
    ICE-lite agent keeps consent): a peer whose checks stop has its connections closed after
    CONSENT_TIMEOUT, even with its WebSocket still up; a peer whose checks go on keeps its
    connections, the one that receives no media any more included."""
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.4)  # the clients' own checks
    monkeypatch.setattr(aiortc_adapter, "CONSENT_TIMEOUT", 3.0)
    server_conns: set[int] = set()
    server_requests: list[int] = []
    build_request = aioice.ice.Connection.build_request

    def counting_build_request(self: Any, pair: Any, nominate: bool) -> Any:
        if id(self) in server_conns:
            server_requests.append(id(self))
        return build_request(self, pair, nominate)

    monkeypatch.setattr(aioice.ice.Connection, "build_request", counting_build_request)
    expired_before = metrics.CONSENT_EXPIRED._value.get()
    async with start_server() as server:
        a = SignalClient(server.ws_url, server.token("consent", "a", kind="group"))
        b = SignalClient(server.ws_url, server.token("consent", "b", kind="group"))
        try:
            for c in (a, b):
                await c.connect()
            await a.publish(SineAudioTrack(500))
            await b.publish(SineAudioTrack(700))
            assert a.participant_id and b.participant_id
            await wait_until(lambda: a.tracks_from(b.participant_id or "", "audio")
                             and b.tracks_from(a.participant_id or "", "audio"),
                             timeout=60, message="both hear each other")
            room = server.rooms.rooms["consent"]
            pa = room.participants[a.participant_id]
            pb = room.participants[b.participant_id]
            conns = {name: [c for pc in (p.publisher.pc, p.subscriber.pc)
                            for c in _ice_connections(pc)]
                     for name, p in (("a", pa), ("b", pb))
                     if p.publisher is not None and p.subscriber is not None}
            assert len(conns["a"]) == 2 and len(conns["b"]) == 2
            await wait_until(lambda: all(c._sfu_consent.watching
                                         for cs in conns.values() for c in cs),
                             message="ICE connected on all four")
            server_conns.update(id(c) for cs in conns.values() for c in cs)

            _go_silent(a)  # its UDP sockets closed; its WebSocket stays up
            await wait_until(lambda: all(c._closing for c in conns["a"]), timeout=20,
                             message="a's connections closed once its checks stopped")
            assert metrics.CONSENT_EXPIRED._value.get() - expired_before == 2
            assert a.participant_id in room.participants  # only the media lapsed

            # b's checks go on: its connections stay, the subscriber one that carries no
            # media any more (a was the only other publisher) included, for longer than
            # the timeout, and b's audio still arrives.
            producer = next(iter(pb.producers.values()))
            received = producer.stats.bytes_received
            await wait_until(lambda: producer.stats.bytes_received > received + 40_000,
                             timeout=30, message="b's audio keeps arriving")
            assert not any(c._closing for c in conns["b"])
            assert all(c._sfu_consent.heard() > 5 for c in conns["b"])
            # ... answered in C (each client's aioice checked its answers: they came back).
            assert all(sum(rx.checks for rx in c._sfu_consent._receivers) > 5
                       for c in conns["b"])
            assert server_requests == []  # no consent check of the server's own
        finally:
            for c in (a, b):
                await c.close()
