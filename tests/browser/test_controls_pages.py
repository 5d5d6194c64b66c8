"""Waiting room, host controls, consent and resume, clicked through on the session page."""

from __future__ import annotations

import json

import aiohttp
from playwright.async_api import WebSocketRoute

from mediaserver.config import build_config
from mediaserver.recording.keys import new_kek_line
from mediaserver.rooms.participant import DISCONNECTED
from mediaserver.sfu import aiortc_adapter, fastsend
from tests.browser.conftest import ARTIFACTS, SignalRecorder, frames_grow, open_session
from tests.conftest import start_server, wait_until


async def _create_room(server, name: str, **options) -> None:
    auth = {"Authorization": f"Bearer {server.admin_token()}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.post(f"{server.url}/v1/rooms",
                             json={"room": name, "kind": "one_to_one", "options": options}) as r:
            assert r.status == 201, await r.text()


def visible(sp, selector: str):
    return lambda: sp.page.locator(selector).is_visible()


async def test_waiting_room_admit_then_host_mutes_the_client(server, browser):
    await _create_room(server, "b-wait", waiting_room=True)
    host = await open_session(browser, server, server.token("b-wait", "t", role="host",
                                                            name="Dr Rivera"), "host")
    client = await open_session(browser, server, server.token("b-wait", "c", name="Sam"),
                                "client")
    await wait_until(visible(client, "#waiting"), message="the client's waiting screen")
    assert await client.js("window.sessionPage.session.state") == "waiting"
    assert not await client.page.locator("#call").is_visible()

    # The host sees Sam waiting and admits with the keyboard.
    await host.page.get_by_role("button", name="Host controls").click()
    admit = host.page.get_by_role("button", name="Admit Sam")
    await admit.focus()
    await host.page.keyboard.press("Enter")
    await wait_until(visible(client, "#call"), message="the client's call screen")
    c_id, t_id = await client.participant_id(), await host.participant_id()
    await frames_grow(host, c_id)
    await frames_grow(client, t_id)

    # The host mutes Sam: Sam's page stops sending and says so; the host's page shows it.
    await host.page.get_by_role("button", name="Mute Sam").click()
    await wait_until(lambda: client.js("(() => { const t = window.sessionPage.session"
                                       ".localTrackOf('audio'); return t.muted && "
                                       "!t.mediaStreamTrack.enabled; })()"),
                     message="the client's microphone muted by the host")
    mic = client.page.locator("#mic")
    await wait_until(lambda: mic.get_attribute("aria-pressed"), message="mic button state")
    assert await mic.get_attribute("aria-pressed") == "true"
    assert await mic.text_content() == "Unmute microphone"
    await wait_until(lambda: host.js(f"[...document.querySelectorAll("
                                     f"'[data-participant=\"{c_id}\"] .chip')]"
                                     ".some(c => c.textContent === 'muted')"),
                     message="the host's tile of Sam shows muted")
    room = server.rooms.rooms["b-wait"]
    (audio,) = [pr for pr in room.participants[c_id].producers.values() if pr.kind == "audio"]
    assert audio.muted

    # Sam unmutes: the server forwards again and the host's page shows it.
    await mic.click()
    await wait_until(lambda: not audio.muted, message="unmuted on the server")
    await wait_until(lambda: host.js(f"![...document.querySelectorAll("
                                     f"'[data-participant=\"{c_id}\"] .chip')]"
                                     ".some(c => c.textContent === 'muted')"),
                     message="the host's tile of Sam unmuted")


async def test_consent_dialog_gates_the_recording(tmp_path, browser):
    config = build_config({"dev": True, "host": "127.0.0.1", "bind_host": "127.0.0.1",
                           "allow_loopback": True, "recording_dir": str(tmp_path / "rec")},
                          {"MEDIASERVER_RECORDING_KEYS": new_kek_line("k1")}, None)
    async with start_server(config=config) as server:
        host = await open_session(browser, server, server.token("b-rec", "t", role="host",
                                                                name="Dr Rivera"), "host")
        client = await open_session(browser, server, server.token("b-rec", "c", name="Sam"),
                                    "client")
        room = server.rooms.rooms["b-rec"]
        await host.page.get_by_role("button", name="Host controls").click()
        await host.page.get_by_role("button", name="Ask to record").click()

        dialog = client.page.get_by_role("dialog", name="May this session be recorded?")
        await wait_until(dialog.is_visible, message="the consent dialog")
        assert "Dr Rivera asks to record" in await dialog.text_content()
        assert await host.page.locator("#rec").text_content() == "Asking to record"
        assert room.recording.session is None  # nothing written before the yes
        # The dialog has the focus on its first answer: Enter agrees.
        assert await client.js("document.activeElement.id") == "consent-yes"
        await client.page.keyboard.press("Enter")
        await wait_until(lambda: room.recording.session is not None, message="recording")
        for sp in (host, client):
            await wait_until(lambda sp=sp: sp.page.locator("#rec").text_content(),
                             message="indicator")
            await wait_until(lambda sp=sp: _text_is(sp, "#rec", "● Recording"),
                             message=f"{sp.name} shows the recording")
        assert not await dialog.is_visible()

        # Sam withdraws: the recording pauses at once, for both pages.
        await client.page.get_by_role("button", name="Withdraw my consent").click()
        await wait_until(lambda: _text_is(host, "#rec", "Recording paused"), message="paused")
        assert room.recording.state()["state"] == "paused"
        assert room.recording.session is not None and room.recording.session.paused

        await host.page.get_by_role("button", name="Stop recording").click()
        await wait_until(lambda: host.page.locator("#rec").is_hidden(), message="stopped")


async def _text_is(sp, selector: str, text: str) -> bool:
    return (await sp.page.locator(selector).text_content()) == text


class SignalCut:
    """Routes a page's WebSockets through Playwright so that a test can cut them."""

    def __init__(self) -> None:
        self.blocked = False
        self.live: list[tuple[WebSocketRoute, WebSocketRoute]] = []

    async def route(self, ws: WebSocketRoute) -> None:
        if self.blocked:  # the network is still down: the socket dies at once
            await ws.close(code=4000, reason="network down")
            return
        self.live.append((ws, ws.connect_to_server()))

    async def cut(self) -> None:
        self.blocked = True
        for page_side, server_side in self.live:
            await page_side.close(code=4000, reason="network down")
            await server_side.close()
        self.live.clear()


async def test_page_resumes_after_its_connection_is_cut(server, browser):
    host = await open_session(browser, server, server.token("b-resume", "t", role="host"),
                              "host")
    cut = SignalCut()
    client = await open_session(browser, server, server.token("b-resume", "c"), "client",
                                before=lambda page: page.route_web_socket("**/v1/signal",
                                                                          cut.route))
    c_id, t_id = await client.participant_id(), await host.participant_id()
    await frames_grow(host, c_id)
    await client.js("(() => { window.__events = []; for (const t of ['reconnecting', "
                    "'reconnected', 'rejoined']) window.sessionPage.session.on(t, "
                    "() => window.__events.push(t)); })()")

    # Cut the page's signalling: its WebSocket drops, and new ones fail for a while.
    await cut.cut()
    await wait_until(lambda: client.js("window.sessionPage.session.state === 'reconnecting'"),
                     message="the page notices the cut")
    assert await client.page.locator("#status").text_content() == "Reconnecting…"
    room = server.rooms.rooms["b-resume"]
    await wait_until(lambda: room.participants[c_id].state == DISCONNECTED,
                     message="the server notices the dropped socket")
    # Media keeps flowing meanwhile (only signalling is down), and nobody is told.
    await frames_grow(host, c_id)
    cut.blocked = False

    await wait_until(lambda: client.js("window.sessionPage.session.state === 'active'"),
                     timeout=30, message="the page resumed")
    assert room.participants[c_id].state == "active"
    assert await client.js("window.__events") == ["reconnecting", "reconnected"]
    assert await client.participant_id() == c_id  # the same participant, not a new join
    assert await client.page.locator("#status").text_content() == ""
    assert await host.js("window.sessionPage.tiles.size") == 2
    await frames_grow(host, c_id)
    await frames_grow(client, t_id)
    # Signalling works on the new socket: a mute reaches the host.
    await client.page.get_by_role("button", name="Mute microphone").click()
    await wait_until(lambda: host.js(f"[...window.sessionPage.session.participants.get("
                                     f"'{c_id}').tracks.values()].some(t => t.kind === "
                                     f"'audio' && t.muted)"),
                     message="the host sees the resumed client's mute")


def _blackhole(pc) -> None:
    """The server stops reaching this connection's peer: every STUN answer it sends is lost,
    so the browser's consent checks fail (media, sent by the C Output on its own duplicate
    of the socket, may still arrive; consent is what a browser watches)."""
    for dtls in aiortc_adapter.dtls_transports(pc):
        for protocol in dtls.transport._connection._protocols:
            protocol.transport.sendto = lambda *args, **kw: None
            # The C receiver answers the peer's consent checks on the socket itself: hand
            # them back to aioice, whose answers go through the transport above.
            receiver = getattr(protocol.datagram_received, "__self__", None)
            if isinstance(receiver, fastsend.Receiver):
                receiver.answer_checks(None)


async def test_page_replaces_a_dead_media_connection(server, browser):
    host = await open_session(browser, server, server.token("b-path", "t", role="host"), "host")
    client = await open_session(browser, server, server.token("b-path", "c"), "client")
    c_id, t_id = await client.participant_id(), await host.participant_id()
    await frames_grow(client, t_id)
    await client.js("(() => { const s = window.sessionPage.session; window.__media = []; "
                    "window.__oldSub = s.subscriber; s.on('media_state', "
                    "e => window.__media.push(e.target + ':' + e.state)); })()")

    # The path from the server to the client's subscriber connection dies (signalling lives).
    _blackhole(server.rooms.rooms["b-path"].participants[c_id].subscriber.pc)
    await wait_until(lambda: client.js("__media.includes('subscriber:disconnected')"),
                     timeout=20, message="the browser notices the dead path")
    # The SDK gives the connection 5 s to come back, then asks for a new one.
    await wait_until(lambda: client.js("window.sessionPage.session.subscriber !== null && "
                                       "window.sessionPage.session.subscriber !== __oldSub"),
                     timeout=30, message="a new subscriber connection")
    await frames_grow(client, t_id)
    assert await client.participant_id() == c_id
    assert await host.js("window.sessionPage.tiles.size") == 2  # nobody left


async def test_host_locks_removes_and_ends_from_the_panel(server, browser):
    # The host is on a phone: the panel is a sheet over the lower part of the call.
    host = await open_session(browser, server, server.token("b-host", "t", role="host",
                                                            name="Dr Rivera"), "host",
                              viewport={"width": 390, "height": 844})
    client = await open_session(browser, server, server.token("b-host", "c", name="Sam"),
                                "client")
    room = server.rooms.rooms["b-host"]
    await host.page.get_by_role("button", name="Host controls").click()
    assert await host.js("document.activeElement.id") == "host-title"  # focus moved into it
    ARTIFACTS.mkdir(exist_ok=True)
    await host.page.screenshot(path=str(ARTIFACTS / "host-panel-phone.png"))

    lock = host.page.get_by_role("button", name="Lock the room")
    await lock.click()
    await wait_until(lambda: room.locked, message="the room locked")
    await wait_until(lambda: _attr_is(host, "#lock", "aria-pressed", "true"),
                     message="the lock button pressed")

    # Removing asks first; Cancel keeps Sam, confirming removes Sam.
    await host.page.get_by_role("button", name="Remove Sam from the session").click()
    dialog = host.page.get_by_role("dialog", name="Remove Sam?")
    await wait_until(dialog.is_visible, message="the confirmation")
    await dialog.get_by_role("button", name="Cancel").click()
    assert len(room.participants) == 2
    await host.page.get_by_role("button", name="Remove Sam from the session").click()
    await dialog.get_by_role("button", name="Remove").click()
    await wait_until(lambda: client.page.locator("#ended").is_visible(),
                     message="Sam's page says the session ended")
    assert await client.page.locator("#ended-reason").text_content() == (
        "The host removed you from the session.")
    await wait_until(lambda: len(room.participants) == 1, message="Sam gone")

    await host.page.get_by_role("button", name="End the session").click()
    await host.page.get_by_role("dialog", name="End the session?").get_by_role(
        "button", name="End for everyone").click()
    await wait_until(lambda: host.page.locator("#ended").is_visible(), message="ended")
    assert await host.page.locator("#ended-reason").text_content() == (
        "The host ended the session.")
    assert "b-host" not in server.rooms.rooms


async def _attr_is(sp, selector: str, name: str, value: str) -> bool:
    return await sp.page.locator(selector).get_attribute(name) == value


async def test_waiting_guest_turned_away_sees_why(server, browser):
    await _create_room(server, "b-deny", waiting_room=True)
    host = await open_session(browser, server, server.token("b-deny", "t", role="host"), "host")
    guest = await open_session(browser, server, server.token("b-deny", "g", name="Sam"), "guest")
    await wait_until(visible(guest, "#waiting"), message="the guest's waiting screen")
    await host.page.get_by_role("button", name="Host controls").click()
    await host.page.get_by_role("button", name="Turn away Sam").click()
    await wait_until(visible(guest, "#ended"), message="the guest's page ends")
    assert await guest.page.locator("#ended-reason").text_content() == (
        "The host did not admit you.")
    assert await guest.js("window.sessionPage.session.state") == "closed"
    await wait_until(lambda: not server.rooms.rooms["b-deny"].waiting_list(),
                     message="the waiting room empty")
    assert await host.js("window.sessionPage.session.waiting.size") == 0


async def test_page_follows_a_redirect_and_resumes_after_room_moved(server, browser):
    """Cluster behaviour, played by the test: the first node redirects, later the room moves."""
    seen: list[str] = []
    other_node = f"{server.ws_url}?node=b"  # the same server, under another URL

    def route(ws: WebSocketRoute) -> None:
        seen.append(ws.url)
        if ws.url == other_node:
            recorder._route(ws)  # the room's node: the real server, recorded
            return

        def answer(message: str | bytes) -> None:
            msg = json.loads(message)
            if msg["type"] == "ping":
                ws.send(json.dumps({"type": "pong", "id": msg.get("id")}))
            elif msg["type"] in ("join", "resume"):
                ws.send(json.dumps({"type": "redirect", "id": msg["id"], "url": other_node,
                                    "node_id": "b"}))
        ws.on_message(answer)

    recorder = SignalRecorder()
    host = await open_session(browser, server, server.token("b-moved", "t", role="host"), "host")
    client = await open_session(browser, server, server.token("b-moved", "c"), "client",
                                before=lambda page: page.route_web_socket("**/v1/signal*",
                                                                          route))
    # The join went to the first node, was redirected, and the session runs on the second.
    assert other_node in seen
    assert await client.js("window.sessionPage.session.url") == other_node
    assert [m["type"] for m in recorder.sent][:1] == ["join"]
    c_id = await client.participant_id()
    await frames_grow(host, c_id)

    # The room moves (cluster): removed with reason room_moved, the socket closes; the page
    # resumes instead of ending, and is the same participant.
    await client.js("(() => { window.__events = []; for (const t of ['reconnecting', "
                    "'reconnected', 'disconnected']) window.sessionPage.session.on(t, "
                    "() => window.__events.push(t)); })()")
    recorder.inject({"type": "removed", "reason": "room_moved"})
    # The server lets go of the socket first (as a node that lost the room does), then the
    # page sees it close.
    await recorder.server_sides[-1].close()
    room = server.rooms.rooms["b-moved"]
    # Generous: on a loaded 2-core CI machine the close crosses the browser's routing layer.
    await wait_until(lambda: room.participants[c_id].state == DISCONNECTED, timeout=60,
                     message="the server let go of the socket")
    await recorder.page_sides[-1].close(code=1000, reason="room moved")
    await wait_until(lambda: client.js("window.__events.includes('reconnected')"), timeout=30,
                     message="the page resumed after room_moved")
    assert await client.js("window.__events") == ["reconnecting", "reconnected"]
    assert await client.participant_id() == c_id
    assert not await client.page.locator("#ended").is_visible()
    assert [m["type"] for m in recorder.sent].count("resume") == 1
    await frames_grow(host, c_id)
