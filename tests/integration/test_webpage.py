"""The session page and SDK are served from the package, with headers that keep tokens private."""

from __future__ import annotations

import aiohttp

from tests.conftest import start_server


async def test_page_and_sdk_are_served_with_a_strict_policy():
    async with start_server() as server, aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/web/") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/html")
            assert "session.js" in await r.text()
            assert r.headers["Referrer-Policy"] == "no-referrer"
            assert "connect-src 'self'" in r.headers["Content-Security-Policy"]
        async with http.get(f"{server.url}/web/sdk.js") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/javascript")
            assert "export class Session" in await r.text()
        async with http.get(f"{server.url}/web", allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (302, "/web/")
        for path in ("/web/missing.js", "/web/..%2Fwebpage.py", "/web/%2e%2e/app.py"):
            async with http.get(f"{server.url}{path}") as r:
                assert r.status == 404, path


async def test_page_can_be_turned_off():
    async with start_server(web_enabled=False) as server, aiohttp.ClientSession() as http:
        for path in ("/web/", "/web/sdk.js"):
            async with http.get(f"{server.url}{path}") as r:
                assert r.status == 404, path
        async with http.get(f"{server.url}/healthz") as r:
            assert r.status == 200
