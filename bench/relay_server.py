"""A naive aiortc relay that decodes and re-encodes: the baseline of bench/compare.py.

What a first WebRTC server written with aiortc's own examples looks like: every published
track is decoded once, and every subscriber's outgoing track is
``MediaRelay().subscribe(publisher_track)``, so each subscriber's sender runs its own VP8 or
Opus encoder. It speaks the part of our signalling protocol (docs/protocol.md) that
``loadtest/client.py`` uses: ``join`` (an access token signed with the dev key, or
``--api-key``/``--api-secret``), ``publish_offer``, the server's ``subscriber_offer`` and
the client's ``subscriber_answer``, ``leave``; so the load-test CLI drives it as
``--target relay`` with the same participants as our server. Nothing else: no waiting
room, no roles, no NACK cache; a publisher who leaves is not renegotiated away.

    python -m bench.relay_server --port 7890 [--ice-address 127.0.0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcconfiguration import RTCBundlePolicy

from mediaserver.sfu.aiortc_adapter import CandidatePolicy, apply_candidate_policy
from mediaserver.tokens import TokenError, verify_token

log = logging.getLogger("relay")
ANSWER_TIMEOUT_S = 20.0


@dataclass
class Published:
    track_id: str
    kind: str
    mid: str
    track: MediaStreamTrack


@dataclass
class Peer:
    id: str
    ws: web.WebSocketResponse
    publisher: RTCPeerConnection | None = None
    subscriber: RTCPeerConnection | None = None
    published: list[Published] = field(default_factory=list)
    offered: set[str] = field(default_factory=set)  # track ids on the subscriber connection
    answer: asyncio.Future[str] | None = None
    dirty: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    async def send(self, msg: dict[str, Any]) -> None:
        if not self.ws.closed:
            await self.ws.send_str(json.dumps(msg))

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        for pc in (self.publisher, self.subscriber):
            if pc is not None:
                await pc.close()


@dataclass
class Room:
    relay: MediaRelay = field(default_factory=MediaRelay)
    peers: dict[str, Peer] = field(default_factory=dict)


def _config() -> RTCConfiguration:
    return RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


class RelayServer:
    def __init__(self, keys: dict[str, str], policy: CandidatePolicy) -> None:
        self.keys, self.policy = keys, policy
        self.rooms: dict[str, Room] = {}
        self._ids = itertools.count(1)

    async def signal(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=15)
        await ws.prepare(request)
        peer: Peer | None = None
        room: Room | None = None
        try:
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                msg = json.loads(frame.data)
                kind, rid = msg.get("type"), msg.get("id")
                if kind == "join" and peer is None:
                    try:
                        claims = verify_token(msg.get("token", ""), self.keys, now=time.time())
                    except TokenError as exc:
                        await ws.send_str(json.dumps({"type": "error", "id": rid,
                                                      "code": exc.code, "message": str(exc)}))
                        continue
                    room = self.rooms.setdefault(claims.room or "", Room())
                    peer = Peer(f"r{next(self._ids)}", ws)
                    room.peers[peer.id] = peer
                    await peer.send({"type": "joined", "id": rid, "participant_id": peer.id,
                                     "resume_token": "", "room": claims.room,
                                     "participants": []})
                    peer.task = asyncio.create_task(self._negotiate(room, peer))
                    peer.dirty.set()
                elif peer is None or room is None:
                    await ws.send_str(json.dumps({"type": "error", "id": rid,
                                                  "code": "not_joined", "message": "join first"}))
                elif kind == "publish_offer":
                    await peer.send({"type": "publish_answer", "id": rid,
                                     **await self._publish(room, peer, msg["sdp"])})
                elif kind == "subscriber_answer":
                    if peer.answer is not None and not peer.answer.done():
                        peer.answer.set_result(msg["sdp"])
                    await peer.send({"type": "ack", "id": rid})
                elif kind == "leave":
                    break
                else:
                    await peer.send({"type": "error", "id": rid, "code": "unknown_type",
                                     "message": f"the relay does not handle {kind!r}"})
        finally:
            if peer is not None and room is not None:
                room.peers.pop(peer.id, None)
                await peer.close()
        return ws

    async def _publish(self, room: Room, peer: Peer, sdp: str) -> dict[str, Any]:
        pc = peer.publisher = RTCPeerConnection(_config())
        await pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
        apply_candidate_policy(pc, self.policy)
        await pc.setLocalDescription(await pc.createAnswer())
        for t in pc.getTransceivers():
            assert t.mid is not None
            peer.published.append(Published(f"{peer.id}-{t.mid}", t.kind, t.mid,
                                             t.receiver.track))
        for other in room.peers.values():
            if other is not peer:
                other.dirty.set()
        return {"sdp": pc.localDescription.sdp, "tracks": [
            {"track_id": p.track_id, "kind": p.kind, "mid": p.mid} for p in peer.published]}

    async def _negotiate(self, room: Room, peer: Peer) -> None:
        """Offer this peer every track the others publish: a new m-line for each new one,
        fed by the room's MediaRelay (decoded once, encoded by this connection's sender)."""
        while True:
            await peer.dirty.wait()
            peer.dirty.clear()
            new = [(other, p) for other in list(room.peers.values()) if other is not peer
                   for p in other.published if p.track_id not in peer.offered]
            if not new:
                continue
            pc = peer.subscriber
            if pc is None:
                pc = peer.subscriber = RTCPeerConnection(_config())
            senders = [(other, p, pc.addTrack(room.relay.subscribe(p.track, buffered=False)))
                       for other, p in new]
            apply_candidate_policy(pc, self.policy)
            await pc.setLocalDescription(await pc.createOffer())
            mids = {t.sender: t.mid for t in pc.getTransceivers()}
            peer.answer = asyncio.get_running_loop().create_future()
            await peer.send({"type": "subscriber_offer", "sdp": pc.localDescription.sdp,
                             "tracks": [{"mid": mids[s], "track_id": p.track_id,
                                         "participant_id": other.id, "kind": p.kind}
                                        for other, p, s in senders]})
            answer = await asyncio.wait_for(peer.answer, ANSWER_TIMEOUT_S)
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            peer.offered.update(p.track_id for _, p in new)


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_app(keys: dict[str, str], policy: CandidatePolicy) -> web.Application:
    server = RelayServer(keys, policy)
    app = web.Application()
    app.router.add_get("/v1/signal", server.signal)
    app.router.add_get("/healthz", _ok)
    app.router.add_get("/readyz", _ok)

    async def close_peers(app: web.Application) -> None:
        for room in server.rooms.values():
            for peer in list(room.peers.values()):
                await peer.close()

    app.on_shutdown.append(close_peers)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7890)
    parser.add_argument("--ice-address", default="127.0.0.1",
                        help="address to gather ICE candidates on (127.0.0.1)")
    parser.add_argument("--api-key", default="devkey")
    parser.add_argument("--api-secret", default="devsecret")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    with contextlib.suppress(ImportError):
        import uvloop  # the same event loop as our server

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = build_app({args.api_key: args.api_secret},
                    CandidatePolicy(addresses=(args.ice_address,)))
    web.run_app(app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
