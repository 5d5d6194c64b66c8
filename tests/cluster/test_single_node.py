"""Without Redis: the embedded router changes nothing, and a drain still works."""

from __future__ import annotations

import aiohttp

from loadtest.client import SignalClient
from tests.conftest import start_server


async def test_single_node_has_no_router_to_speak_of_and_drains(server):
    auth = {"Authorization": f"Bearer {server.admin_token()}"}
    host = SignalClient(server.ws_url, server.token("here", "t1", role="host"))
    guest = SignalClient(server.ws_url, server.token("here", "c1"))
    newcomer = SignalClient(server.ws_url, server.token("elsewhere", "n1"))
    try:
        assert (await host.connect())["type"] == "joined"
        assert host.redirects == []
        async with aiohttp.ClientSession(headers=auth) as http:
            async with http.get(f"{server.url}/v1/node") as r:
                body = await r.json()
                assert (body["clustered"], body["available"], body["draining"]) == (
                    False, True, False)
                assert body["rooms"] == ["here"] and "nodes" not in body
            async with http.post(f"{server.url}/v1/node/drain") as r:
                assert r.status == 202
            async with http.get(f"{server.url}/readyz") as r:
                assert r.status == 503
        # The running session still takes its people; a new one is refused.
        assert (await guest.connect())["type"] == "joined"
        reply = await newcomer.connect()
        assert (reply["type"], reply["code"]) == ("error", "node_draining"), reply
    finally:
        for c in (host, guest, newcomer):
            await c.close()


async def test_node_endpoints_need_an_admin_token_for_all_rooms():
    async with start_server() as server, aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/v1/node/drain") as r:
            assert r.status == 401
        one_room = server.token("r", "backend", grants=None)
        async with http.get(f"{server.url}/v1/node",
                            headers={"Authorization": f"Bearer {one_room}"}) as r:
            assert r.status == 403
            assert (await r.json())["code"] == "permission_denied"
        async with http.get(f"{server.url}/readyz") as r:
            assert r.status == 200  # nothing drained it
