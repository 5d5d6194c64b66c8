"""A token for room A never reaches room B: not its media, roster, quality data, recordings
or controls, whatever message is sent and whatever ids of B the sender has learnt.

The attacker is the strongest participant of room A (a host with the record grant, so every
control is allowed in its own room) who somehow knows room B's participant and track ids.
Every client message type is tried with B's ids; each must fail or act on A only, B must not
notice anything, and nothing sent back may carry B's identities, names or tracks.
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import pytest

from loadtest.client import SignalClient
from loadtest.media import SineAudioTrack
from mediaserver.config import DEV_API_KEY, DEV_API_SECRET, build_config
from mediaserver.recording.keys import new_kek_line
from mediaserver.signaling import protocol as proto
from mediaserver.tokens import Grants, create_token
from tests.conftest import start_server, wait_until

B_PEOPLE = {"b-therapist-7781": "Dr Bea Confidential", "b-client-3390": "Bob Private"}


def _admin(room: str | None) -> str:
    return create_token(DEV_API_KEY, DEV_API_SECRET, identity="backend", room=room,
                        now=time.time(), grants=Grants(publish=False, subscribe=False,
                                                       admin=True))


async def test_a_token_for_room_a_reaches_nothing_of_room_b(tmp_path):
    config = build_config({"dev": True, "host": "127.0.0.1", "bind_host": "127.0.0.1",
                           "allow_loopback": True, "recording_dir": str(tmp_path / "rec")},
                          {"MEDIASERVER_RECORDING_KEYS": new_kek_line("k1")}, None)
    async with start_server(config=config) as server:
        (b_host_id, b_host_name), (b_client_id, b_client_name) = B_PEOPLE.items()
        b_host = SignalClient(server.ws_url, server.token("room-b", b_host_id, name=b_host_name,
                                                          role="host"))
        b_client = SignalClient(server.ws_url, server.token("room-b", b_client_id,
                                                            name=b_client_name))
        attacker = SignalClient(server.ws_url, server.token("room-a", "a-host", role="host"))
        a_peer = SignalClient(server.ws_url, server.token("room-a", "a-peer"))
        clients = [b_host, b_client, attacker, a_peer]
        try:
            for c in clients:
                assert (await c.connect())["type"] == "joined"
            for i, c in enumerate(clients):
                await c.publish(SineAudioTrack(300 + 100 * i))
            await wait_until(lambda: b_client.received and attacker.received and a_peer.received,
                             timeout=30, message="both calls up")
            room_b = server.rooms.rooms["room-b"]
            b_pids = [b_host.participant_id, b_client.participant_id]
            b_tracks = [t["track_id"] for c in (b_host, b_client) for t in c.published]
            b_seen_before = (len(b_host.events), len(b_client.events))
            b_track, b_pid = b_tracks[0], b_pids[1]

            tries: list[tuple[dict[str, Any], set[str]]] = [
                # (request, acceptable reply types or error codes)
                ({"type": "join", "token": b_host.token}, {proto.ALREADY_JOINED}),
                ({"type": "resume", "token": attacker.token, "participant_id": b_pid,
                  "resume_token": "x" * 32}, {proto.ALREADY_JOINED}),
                ({"type": "subscribe", "track_id": b_track}, {"track_not_found"}),
                ({"type": "unsubscribe", "track_id": b_track}, {"track_not_found"}),
                ({"type": "set_preferences", "track_id": b_track, "disabled": True},
                 {"track_not_found"}),
                ({"type": "set_bandwidth", "audio_only": True}, {"ack"}),  # own link only
                ({"type": "mute", "track_id": b_track, "muted": True}, {"track_not_found"}),
                ({"type": "unpublish", "track_id": b_track}, {"track_not_found"}),
                ({"type": "admit", "participant_id": b_pid}, {"participant_not_found"}),
                ({"type": "deny", "participant_id": b_pid}, {"participant_not_found"}),
                ({"type": "mute_participant", "participant_id": b_pid, "muted": True},
                 {"participant_not_found"}),
                ({"type": "mute_participant", "participant_id": b_pid, "track_id": b_track,
                  "muted": True}, {"participant_not_found"}),
                ({"type": "remove_participant", "participant_id": b_pid},
                 {"participant_not_found"}),
                ({"type": "candidate", "target": "subscriber", "candidate": None}, {"ack"}),
                ({"type": "subscriber_answer", "sdp": "v=0"}, {"no_pending_offer"}),
                ({"type": "publish_offer", "sdp": "v=0", "tracks": [{"track_id": b_track}]},
                 {"negotiation_failed"}),
                ({"type": "get_stats"}, {"stats"}),
                ({"type": "lock_room", "locked": True}, {"ack"}),
                ({"type": "record_start"}, {"recording_state"}),
                ({"type": "consent", "granted": True}, {"recording_state", "not_pending"}),
                ({"type": "consent_withdraw"}, {"recording_state"}),
                ({"type": "record_stop"}, {"recording_state"}),
                ({"type": "subscriber_restart"}, {"ack"}),
                ({"type": "ping"}, {"pong"}),
                ({"type": "end_room"}, {"ack"}),
            ]
            tried = {msg["type"] for msg, _ in tries} | {"leave"}
            assert tried == proto.MESSAGE_TYPES, proto.MESSAGE_TYPES - tried
            replies = []
            for msg, allowed in tries:
                reply = await attacker.request(msg)
                replies.append(reply)
                outcome = reply["code"] if reply["type"] == "error" else reply["type"]
                assert outcome in allowed, (msg, reply)
                if msg["type"] == "record_start":  # A's other member agrees: A records
                    await a_peer.wait_event(lambda e: e["type"] == "consent_request")
                    state = await a_peer.request({"type": "consent", "granted": True})
                    assert state["state"] == "recording", state
            # end_room ended room A (the attacker's own) and nothing else.
            await wait_until(lambda: "room-a" not in server.rooms.rooms, message="A ended")
            # leave, on a fresh participant of A, affects only A as well.
            leaver = SignalClient(server.ws_url, server.token("room-a2", "a-leaver"))
            await leaver.connect()
            assert (await leaver.request({"type": "leave"}))["type"] == "ack"
            await leaver.close()

            # Room B noticed nothing and lost nothing.
            assert server.rooms.rooms.get("room-b") is room_b and not room_b.closed
            assert {p.identity for p in room_b.participants.values()} == set(B_PEOPLE)
            assert not room_b.locked
            assert all(not pr.muted for p in room_b.participants.values()
                       for pr in p.producers.values())
            assert room_b.recording is not None and room_b.recording.phase.value == "idle"
            # B's own life goes on (quality and speaker updates, its own negotiation), but
            # nothing B was told came from A or names anyone of A.
            b_new = b_host.events[b_seen_before[0]:] + b_client.events[b_seen_before[1]:]
            assert {e["type"] for e in b_new} <= {"connection_quality", "speakers_changed",
                                                  "subscriber_offer", "ack"}, b_new
            a_ids = {attacker.participant_id, a_peer.participant_id, "a-host", "a-peer"}
            assert not any(str(i) in json.dumps(b_new) for i in a_ids), b_new
            # B's media never went to A: every track the attacker was offered is A's.
            a_tracks = {t["track_id"] for t in a_peer.published}
            assert {r.track_id for r in attacker.received.values()} <= a_tracks
            # Nothing sent to the attacker names B's people or B's tracks.
            seen = json.dumps(attacker.events)
            for secret in (*B_PEOPLE, *B_PEOPLE.values(), *b_tracks, "room-b"):
                assert secret not in seen, secret
            # Recordings: the one A made (and sealed) holds A's tracks only.
            recorded = [d for d in (tmp_path / "rec").iterdir() if d.is_dir()]
            assert len(recorded) == 1 and (recorded[0] / "manifest.json.enc").exists()
            files = {f.name.split(".")[0] for f in recorded[0].glob("*.webm.enc")}
            a_all = a_tracks | {t["track_id"] for t in attacker.published}
            assert files and files <= a_all, (files, a_all)
        finally:
            for c in clients:
                await c.close()


async def test_admin_api_needs_its_own_credential_and_a_room_bound_one_stays_in_its_room():
    async with start_server() as server, aiohttp.ClientSession() as http:
        b = SignalClient(server.ws_url, server.token("room-b", "b-client-3390"))
        try:
            await b.connect()
            client_token = server.token("room-b", "b-client-3390")  # no admin grant
            cases = [
                (None, "GET", "/v1/rooms", 401),
                ("Bearer " + client_token, "GET", "/v1/rooms/room-b", 403),
                ("Bearer " + client_token, "DELETE", "/v1/rooms/room-b", 403),
                ("Bearer " + _admin("room-a"), "GET", "/v1/rooms", 403),
                ("Bearer " + _admin("room-a"), "GET", "/v1/rooms/room-b", 403),
                ("Bearer " + _admin("room-a"), "GET", "/v1/rooms/room-b/report", 403),
                ("Bearer " + _admin("room-a"), "DELETE",
                 "/v1/rooms/room-b/participants/b-client-3390", 403),
                ("Bearer " + _admin("room-a"), "DELETE", "/v1/rooms/room-b", 403),
                ("Bearer garbage", "GET", "/v1/rooms/room-b", 401),
            ]
            for auth, method, path, status in cases:
                headers = {"Authorization": auth} if auth else {}
                async with http.request(method, server.url + path, headers=headers) as r:
                    assert r.status == status, (auth and auth[:20], method, path, r.status)
                    body = await r.text()
                    assert "b-client-3390" not in body
            assert "room-b" in server.rooms.rooms
            assert len(server.rooms.rooms["room-b"].participants) == 1
            # A body nested deeper than Python's recursion limit is bad JSON, not a crash.
            deep = '{"room": ' + "[" * 30000 + "]" * 30000 + "}"
            async with http.post(server.url + "/v1/rooms", data=deep, headers={
                    "Authorization": "Bearer " + _admin(None)}) as r:
                assert (r.status, (await r.json())["code"]) == (400, "bad_json")
            async with http.get(server.url + "/v1/rooms/room-b",
                                headers={"Authorization": "Bearer " + _admin("room-b")}) as r:
                assert r.status == 200
        finally:
            await b.close()


@pytest.mark.parametrize("field", ["token"])
async def test_an_admin_token_without_a_room_cannot_join_a_session(server, field):
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.ws_url)
        await ws.send_str(json.dumps({"type": "join", "id": 1, field: _admin(None)}))
        reply = json.loads((await ws.receive(timeout=10)).data)
        assert reply["code"] == "token_no_room"
        await ws.close()
