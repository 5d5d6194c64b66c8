"""Admin REST API: authentication, rooms and participants, against a running server."""

from __future__ import annotations

import aiohttp

from loadtest.client import SignalClient
from tests.conftest import wait_until


async def test_admin_api_requires_an_admin_token(server):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/v1/rooms") as r:
            assert r.status == 401
            assert (await r.json())["code"] == "unauthorized"
        async with http.get(f"{server.url}/v1/rooms",
                            headers={"Authorization": "Bearer nonsense"}) as r:
            assert r.status == 401
            assert (await r.json())["code"] == "token_malformed"
        # A participant's token is not an admin credential.
        user = server.token("r", "someone")
        async with http.get(f"{server.url}/v1/rooms",
                            headers={"Authorization": f"Bearer {user}"}) as r:
            assert r.status == 403
            assert (await r.json())["code"] == "permission_denied"


async def test_admin_room_lifecycle_and_participant_removal(server):
    auth = {"Authorization": f"Bearer {server.admin_token()}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.post(f"{server.url}/v1/rooms",
                             json={"room": "session-42", "kind": "one_to_one"}) as r:
            assert r.status == 201, await r.text()
            assert (await r.json())["max_participants"] == 2
        async with http.post(f"{server.url}/v1/rooms",
                             json={"room": "session-42", "kind": "one_to_one"}) as r:
            assert r.status == 409
        async with http.post(f"{server.url}/v1/rooms", json={"room": "x y", "kind": "?"}) as r:
            assert r.status == 400
            assert (await r.json())["code"] == "invalid_request"
        async with http.post(f"{server.url}/v1/rooms", data=b"{oops") as r:
            assert r.status == 400
            assert (await r.json())["code"] == "bad_json"

        client = SignalClient(server.ws_url, server.token("session-42", "client-7"))
        try:
            assert (await client.connect())["type"] == "joined"
            async with http.get(f"{server.url}/v1/rooms") as r:
                rooms = (await r.json())["rooms"]
                assert [(x["room"], x["participants"]) for x in rooms] == [("session-42", 1)]
            async with http.get(f"{server.url}/v1/rooms/session-42") as r:
                body = await r.json()
                assert [p["identity"] for p in body["participants"]] == ["client-7"]
            async with http.delete(f"{server.url}/v1/rooms/session-42/participants/nobody") as r:
                assert r.status == 404
            async with http.delete(
                    f"{server.url}/v1/rooms/session-42/participants/client-7") as r:
                assert r.status == 200
            removed = await client.wait_event(lambda e: e.get("type") == "removed")
            assert removed["reason"] == "removed_by_admin"
            # An admin-created room outlives its participants until it is ended.
            async with http.get(f"{server.url}/v1/rooms/session-42") as r:
                assert r.status == 200
                assert (await r.json())["participants"] == []
            async with http.delete(f"{server.url}/v1/rooms/session-42") as r:
                assert r.status == 200
            async with http.get(f"{server.url}/v1/rooms/session-42") as r:
                assert r.status == 404
                assert (await r.json())["code"] == "room_not_found"
        finally:
            await client.close()


async def test_ending_a_room_tells_its_participants(server):
    auth = {"Authorization": f"Bearer {server.admin_token()}"}
    a = SignalClient(server.ws_url, server.token("ending", "a"))
    try:
        await a.connect()
        async with aiohttp.ClientSession(headers=auth) as http:
            async with http.delete(f"{server.url}/v1/rooms/ending") as r:
                assert r.status == 200
        event = await a.wait_event(lambda e: e.get("type") == "removed")
        assert event["reason"] == "room_ended"
        await wait_until(lambda: "ending" not in server.rooms.rooms, message="room gone")
    finally:
        await a.close()


async def test_health_ready_and_metrics(server):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/healthz") as r:
            assert r.status == 200
        async with http.get(f"{server.url}/readyz") as r:
            assert r.status == 200
        async with http.get(f"{server.url}/metrics") as r:
            text = await r.text()
            assert "mediaserver_rooms" in text
            assert "mediaserver_dropped_packets_total" in text
