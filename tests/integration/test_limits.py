"""Limits against a real server: message rate, connections per IP, node capacity, join rate,
a lagging event loop, a client that never reads, a publisher that floods.

Each misbehaviour is contained: the culprit gets a stable error code (or is cut off, or
loses its excess packets) and everyone else carries on.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time

import aiohttp
import pytest
from aiortc.rtp import RtpPacket

from loadtest.client import SignalClient
from loadtest.media import SineAudioTrack, SyntheticVideoTrack, TimestampedVideoTrack
from loadtest.report import TrackStats
from loadtest.runner import MeasuringClient
from mediaserver import metrics
from mediaserver.signaling.app import STATE_KEY
from tests.conftest import start_server, wait_until


async def _pings(ws: aiohttp.ClientWebSocketResponse, n: int) -> list[dict]:
    for i in range(n):
        await ws.send_str(json.dumps({"type": "ping", "id": i}))
    return [json.loads((await ws.receive(timeout=10)).data) for _ in range(n)]


async def test_message_rate_is_limited_per_connection_and_the_connection_survives():
    async with start_server(messages_per_second="5", message_burst="5") as server, \
            aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.ws_url)
        other = await http.ws_connect(server.ws_url)
        replies = await _pings(ws, 8)
        assert [r["type"] for r in replies[:5]] == ["pong"] * 5
        assert [r.get("code") for r in replies[5:]] == ["rate_limited"] * 3
        assert replies[5]["message"] == "too many messages: at most 5 a second"
        # Another connection has its own budget; this one gets tokens back with time.
        assert [r["type"] for r in await _pings(other, 5)] == ["pong"] * 5

        async def pong_again() -> bool:
            return (await _pings(ws, 1))[0]["type"] == "pong"

        await wait_until(pong_again, timeout=10, interval=0.3, message="tokens back")
        # Keeping on past the limit counts as garbage: the connection is closed (1008).
        for _ in range(40):
            if ws.closed:
                break
            await ws.send_str('{"type": "ping"}')
        while (await ws.receive(timeout=10)).type == aiohttp.WSMsgType.TEXT:
            pass
        assert ws.close_code == 1008
        await other.close()


async def test_connections_per_ip_are_limited():
    async with start_server(connections_per_ip="2") as server, aiohttp.ClientSession() as http:
        first = await http.ws_connect(server.ws_url)
        second = await http.ws_connect(server.ws_url)
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(server.ws_url)
        assert info.value.status == 429
        async with http.get(server.ws_url.replace("ws://", "http://")) as r:
            assert r.status == 429
            assert (await r.json())["code"] == "too_many_connections"
        await first.close()
        state = server.app[STATE_KEY]
        await wait_until(lambda: sum(state["connections"].open.values()) == 1,
                         message="the closed connection released")
        third = await http.ws_connect(server.ws_url)
        assert (await _pings(third, 1))[0]["type"] == "pong"
        await second.close()
        await third.close()


async def _join(server, http, room: str, identity: str) -> dict:
    ws = await http.ws_connect(server.ws_url)
    await ws.send_str(json.dumps({"type": "join", "id": 1,
                                  "token": server.token(room, identity, kind="group")}))
    return json.loads((await ws.receive(timeout=10)).data)


async def test_a_full_node_refuses_joins_with_node_full():
    async with start_server(max_participants="2") as server, aiohttp.ClientSession() as http:
        assert (await _join(server, http, "r1", "a"))["type"] == "joined"
        assert (await _join(server, http, "r2", "b"))["type"] == "joined"
        refused = await _join(server, http, "r3", "c")
        assert (refused["type"], refused["code"]) == ("error", "node_full")
        assert refused["message"] == "this server is full; try again later"
        assert "r3" not in server.rooms.rooms


async def test_joins_per_second_are_limited_node_wide():
    async with start_server(joins_per_second="1") as server, aiohttp.ClientSession() as http:
        assert (await _join(server, http, "j1", "a"))["type"] == "joined"
        refused = await _join(server, http, "j2", "b")
        assert refused["code"] == "join_rate_limited"

        async def joined_again() -> bool:  # a token comes back within a second
            return (await _join(server, http, "j2", "b"))["type"] == "joined"

        await wait_until(joined_again, timeout=10, interval=0.2, message="join accepted")


async def test_a_lagging_event_loop_refuses_joins_then_recovers():
    async with start_server(max_loop_lag_ms="200") as server, aiohttp.ClientSession() as http:
        admission = server.app[STATE_KEY]["admission"]

        async def stall() -> None:
            # Block the loop the way an overloaded node would (CPU-bound work), again and
            # again, yielding only briefly: every lag probe in between wakes late.
            for _ in range(4):
                time.sleep(1.0)  # noqa: ASYNC251 - the point is to block the loop
                await asyncio.sleep(0.01)

        await stall()
        await wait_until(lambda: admission.lag > 0.2, timeout=10, message="lag measured")
        families = await (await http.get(server.url + "/metrics")).text()
        assert "mediaserver_event_loop_lag_seconds" in families
        refused = await _join(server, http, "busy", "a")
        assert refused["code"] == "node_overloaded"
        await wait_until(lambda: admission.lag < 0.2, timeout=20, message="lag recovered")
        assert (await _join(server, http, "busy", "a"))["type"] == "joined"


# -- a client that never reads ------------------------------------------------------------

def _frame(text: str) -> bytes:
    data, mask = text.encode(), os.urandom(4)
    n = len(data)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                            bytes([0x80 | 126]) + struct.pack("!H", n))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


async def _raw_ws(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket by hand, with a tiny receive buffer, so that we can simply stop reading."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET /v1/signal HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
    assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
    return reader, writer


async def test_a_client_that_never_reads_is_cut_off_and_the_room_goes_on():
    async with start_server(messages_per_second="10000", message_burst="10000",
                            send_queue="64") as server:
        host = SignalClient(server.ws_url, server.token("slow", "host", role="host",
                                                        kind="group"))
        listener = SignalClient(server.ws_url, server.token("slow", "listener", kind="group"))
        _, writer = await _raw_ws(server.port)
        try:
            await host.connect()
            await listener.connect()
            await host.publish(SineAudioTrack(440))
            writer.write(_frame(json.dumps({"type": "join", "token": server.token(
                "slow", "stuck", kind="group")})))
            room = server.rooms.rooms["slow"]
            await wait_until(lambda: room.by_identity("stuck") is not None, message="joined")
            stuck = room.by_identity("stuck")
            assert stuck is not None
            # Simulate a constrained link on the server's side of the socket too.
            for session in server.app[STATE_KEY]["sessions"]:
                if session.participant is stuck:
                    sock = session.ws._req.transport.get_extra_info("socket")  # type: ignore[union-attr]
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            cut_before = metrics.LIMIT["slow_consumer"]._value.get()
            sent, worst = 0, 0.0
            while stuck.state != "disconnected":
                assert sent < 40000, "the client that never reads was never cut off"
                for _ in range(10):  # every lock change is an event to everyone
                    await host.send({"type": "lock_room", "locked": sent % 2 == 0})
                    sent += 1
                started = time.monotonic()
                pong = await host.request({"type": "ping"}, timeout=10)
                worst = max(worst, time.monotonic() - started)
                assert pong["type"] == "pong"
            assert metrics.LIMIT["slow_consumer"]._value.get() > cut_before
            assert worst < 2.0, f"the host waited {worst:.2f}s for a reply"
            # The others still talk and hear each other.
            frames = sum(t.frames for t in listener.received.values())
            await wait_until(lambda: sum(t.frames for t in listener.received.values())
                             > frames + 50, timeout=20, message="audio keeps flowing")
        finally:
            writer.close()
            await host.close()
            await listener.close()


# -- a publisher that floods --------------------------------------------------------------

def _flood(client: SignalClient, factor: int) -> dict[str, int]:
    """Make ``client`` send each video packet ``factor`` times (fresh sequence numbers)."""
    # aiortc's sender awaits this for every packet it sends; replacing it on the instance
    # is how a misbehaving client (or a broken encoder) is simulated.
    assert client.publisher is not None
    sender = next(t.sender for t in client.publisher.getTransceivers() if t.kind == "video")
    dtls = sender.transport
    original = dtls._send_rtp
    state = {"seq": -1, "sent": 0, "bytes": 0}

    async def send_rtp(data: bytes) -> None:
        if len(data) > 1 and 192 <= data[1] <= 223:  # RTCP
            await original(data)
            return
        pkt = RtpPacket.parse(data)
        if pkt.ssrc != sender._ssrc:
            await original(data)
            return
        if state["seq"] < 0:
            state["seq"] = pkt.sequence_number + 1  # SRTP wants the index to move on
        pkt.padding_size = 255  # and fatter: the synthetic video is only ~11 kbps
        for _ in range(factor):
            pkt.sequence_number = state["seq"] & 0xFFFF
            state["seq"] += 1
            state["sent"] += 1
            raw = pkt.serialize()
            state["bytes"] += len(raw)
            await original(raw)

    dtls._send_rtp = send_rtp
    return state


def _p95(values: list[int]) -> float:
    ordered = sorted(values)
    return float(ordered[int(0.95 * (len(ordered) - 1))])


async def test_a_publisher_flooding_at_ten_times_its_bitrate_is_throttled():
    # The synthetic 320x240 video needs ~11 kbps; a 40 kbps budget and a ~420 kbps flood.
    async with start_server(publish_video_kbps="40") as server:
        flooder = SignalClient(server.ws_url, server.token("flood", "flooder", kind="couples"))
        honest = SignalClient(server.ws_url, server.token("flood", "honest", kind="couples"))
        # The viewer reads each frame's send-time stamp: latency, not only frame counts.
        viewer = MeasuringClient(server.ws_url, server.token("flood", "viewer", kind="couples"),
                                 decode=True, fps=15, clock=time.monotonic)
        try:
            for c in (flooder, honest, viewer):
                await c.connect()
            await flooder.publish(SyntheticVideoTrack((250, 0, 0), width=320, height=240,
                                                      fps=15))
            await honest.publish(TimestampedVideoTrack((0, 0, 250), width=320, height=240,
                                                       fps=15), SineAudioTrack(600))

            def honest_video() -> TrackStats | None:
                assert honest.participant_id is not None
                tracks = viewer.tracks_from(honest.participant_id, "video")
                return viewer.stats.get(tracks[0].track_id) if tracks else None

            await wait_until(lambda: (st := honest_video()) is not None and st.frames >= 45,
                             timeout=60, message="three seconds of the honest video")
            stats = honest_video()
            assert stats is not None
            normal = list(stats.latencies)
            dropped_before = metrics.DROP["rate_limited"]._value.get()
            state = _flood(flooder, 10)
            start_frames, start_latencies = stats.frames, len(stats.latencies)
            started = time.monotonic()
            await wait_until(lambda: state["sent"] > 2000, timeout=60, message="flood sent")
            elapsed = time.monotonic() - started
            kbps = state["bytes"] * 8 / elapsed / 1000
            assert kbps > 10 * 40, f"the flood was only {kbps:.0f} kbps"
            dropped = metrics.DROP["rate_limited"]._value.get() - dropped_before
            assert dropped > state["sent"] * 0.5, (dropped, state["sent"])
            fps = (stats.frames - start_frames) / elapsed
            assert fps > 8, f"the honest publisher's video fell to {fps:.1f} fps"
            during = stats.latencies[start_latencies:]
            assert len(normal) >= 20 and len(during) >= 40
            # Loopback latency is tens of ms; the same process also runs the flooder, so
            # allow generous slack, but a queue building up behind the flood would show.
            assert _p95(during) <= max(2 * _p95(normal), _p95(normal) + 150), (
                _p95(normal), _p95(during))
            assert len(server.rooms.rooms["flood"].participants) == 3
        finally:
            for c in (flooder, honest, viewer):
                await c.close()
