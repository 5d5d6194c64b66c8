"""Bad tokens and bad messages get their documented errors; the call in progress goes on."""

from __future__ import annotations

import json
import time

import aiohttp
import pytest

from loadtest.client import SignalClient
from loadtest.media import SineAudioTrack, SyntheticVideoTrack
from mediaserver.config import DEV_API_KEY, DEV_API_SECRET
from mediaserver.tokens import create_token
from tests.conftest import wait_until


async def _ws(server):
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(server.ws_url)
    return session, ws


async def _exchange(ws, payload: str) -> dict:
    await ws.send_str(payload)
    msg = await ws.receive(timeout=10)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


@pytest.fixture
async def live_call(server):
    a = SignalClient(server.ws_url, server.token("call", "a", role="host"))
    b = SignalClient(server.ws_url, server.token("call", "b"))
    await a.connect()
    await b.connect()
    await a.publish(SyntheticVideoTrack((200, 200, 40)), SineAudioTrack(500))
    await b.publish(SyntheticVideoTrack((40, 200, 200)), SineAudioTrack(700))

    def frames() -> int:
        return sum(r.frames for r in b.received.values() if r.kind == "video")

    await wait_until(lambda: frames() >= 10, timeout=60, message="call media flowing")
    yield a, b, frames
    await a.close()
    await b.close()


def _token(**kw):
    kw.setdefault("room", "call")
    kw.setdefault("identity", "intruder")
    kw.setdefault("kind", "one_to_one")
    kw.setdefault("now", time.time())
    key = kw.pop("key", DEV_API_KEY)
    secret = kw.pop("secret", DEV_API_SECRET)
    return create_token(key, secret, **kw)


CASES = [
    # (what is sent, expected error code)
    (lambda: json.dumps({"type": "join", "id": 1, "token": _token(now=time.time() - 7200,
                                                                   ttl_seconds=60)}),
     "token_expired"),
    (lambda: json.dumps({"type": "join", "id": 1, "token": _token(secret="not-the-secret")}),
     "token_bad_signature"),
    (lambda: json.dumps({"type": "join", "id": 1, "token": _token(key="otherkey")}),
     "token_unknown_key"),
    (lambda: json.dumps({"type": "join", "id": 1, "token": "garbage.garbage.garbage"}),
     "token_malformed"),
    (lambda: json.dumps({"type": "join", "id": 1, "token": _token(), "room": "another-room"}),
     "token_wrong_room"),
    (lambda: json.dumps({"type": "join", "id": 1, "token": _token(kind="group")}),
     "room_kind_mismatch"),
    (lambda: json.dumps({"type": "join", "id": 1, "token": _token()}), "room_full"),
    (lambda: "{not json", "bad_json"),
    (lambda: json.dumps([1, 2, 3]), "invalid_message"),
    (lambda: json.dumps({"type": "join", "id": 1}), "invalid_message"),
    (lambda: json.dumps({"type": "teleport", "id": 1}), "unknown_type"),
    (lambda: json.dumps({"type": "publish_offer", "id": 1, "sdp": "v=0"}), "not_joined"),
    (lambda: json.dumps({"type": "ping", "id": 1, "pad": "x" * 70000}), "message_too_large"),
    # Nested 30,000 deep within the size limit: once a RecursionError that killed the socket.
    (lambda: '{"type": "ping", "x": ' + "[" * 30000 + "]" * 30000 + "}", "bad_json"),
    (lambda: json.dumps({"type": "ping", "id": True}), "invalid_message"),
    (lambda: json.dumps({"type": "candidate", "id": 1, "target": "x", "candidate": None}),
     "invalid_message"),
    (lambda: json.dumps({"type": "mute", "id": 1, "track_id": "t" * 65, "muted": True}),
     "invalid_message"),
    (lambda: json.dumps({"type": "lock_room", "id": 1, "locked": "yes"}), "invalid_message"),
]


async def test_bad_requests_get_documented_errors_while_the_call_goes_on(server, live_call):
    _, _, frames = live_call
    for make, code in CASES:
        session, ws = await _ws(server)
        try:
            reply = await _exchange(ws, make())
            assert reply["type"] == "error", (code, reply)
            assert reply["code"] == code, (code, reply)
            assert reply["message"]
            # The connection survives an error and still answers.
            pong = await _exchange(ws, json.dumps({"type": "ping", "id": "p"}))
            assert pong == {"type": "pong", "id": "p"}
        finally:
            await ws.close()
            await session.close()
    room = server.rooms.rooms["call"]
    assert {p.identity for p in room.participants.values()} == {"a", "b"}
    before = frames()
    await wait_until(lambda: frames() >= before + 15, timeout=30, message="call continues")


async def test_a_connection_that_keeps_sending_garbage_is_closed(server):
    session, ws = await _ws(server)
    try:
        for _ in range(20):
            await ws.send_str("garbage")
        errors = 0
        while True:
            msg = await ws.receive(timeout=10)
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            assert json.loads(msg.data)["code"] == "bad_json"
            errors += 1
        assert errors == 20
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1008
    finally:
        await session.close()


async def test_join_must_come_first_and_within_the_deadline(server, monkeypatch):
    from mediaserver.signaling import app as app_module

    monkeypatch.setattr(app_module, "JOIN_TIMEOUT", 0.3)
    session, ws = await _ws(server)
    try:
        msg = await ws.receive(timeout=10)
        assert json.loads(msg.data)["code"] == "join_timeout"
    finally:
        await ws.close()
        await session.close()
