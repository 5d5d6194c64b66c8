"""Pages of the session page in real Chromium, calling each other through the server."""

from __future__ import annotations

from tests.browser.conftest import SignalRecorder, frames_grow, hears, open_session
from tests.conftest import wait_until
from tests.integration.test_protocol_schemas import validator


async def test_two_pages_one_to_one_see_and_hear_each_other(server, browser):
    recorders = [SignalRecorder(), SignalRecorder()]
    tokens = [server.token("b-1on1", "t", role="host"), server.token("b-1on1", "c")]
    therapist = await open_session(browser, server, tokens[0], "therapist",
                                   before=recorders[0].install)
    client = await open_session(browser, server, tokens[1], "client",
                                before=recorders[1].install)
    t_id, c_id = await therapist.participant_id(), await client.participant_id()
    assert t_id != c_id
    await frames_grow(therapist, c_id)
    await frames_grow(client, t_id)
    await hears(therapist, c_id)
    await hears(client, t_id)
    # Through the server: both publish to it, and the room forwards one to the other.
    room = server.rooms.rooms["b-1on1"]
    assert {p.id for p in room.participants.values()} == {t_id, c_id}

    # The SDK speaks the protocol as documented: every message both ways fits its schema.
    sent = [m for r in recorders for m in r.sent]
    received = [m for r in recorders for m in r.received]
    assert {"join", "publish_offer", "subscriber_answer", "ping"} <= {m["type"] for m in sent}
    assert {"joined", "publish_answer", "subscriber_offer"} <= {m["type"] for m in received}
    problems = {(direction, m["type"], e.message)
                for direction, msgs in (("client", sent), ("server", received))
                for m in msgs for e in validator(direction, m["type"]).iter_errors(m)}
    assert not problems, sorted(problems)
    assert not [m for m in received if m["type"] == "error"]

    # Adaptation events reach the page: a video paused for bandwidth says so on its tile.
    video = await client.js("[...window.sessionPage.session.remoteTracks.values()]"
                            ".find(r => r.kind === 'video').track_id")
    state = {"type": "stream_state", "track_id": video, "participant_id": t_id,
             "state": "paused", "reason": "bandwidth", "spatial": None, "temporal": None,
             "width": None, "height": None}
    assert not list(validator("server", "stream_state").iter_errors(state))
    chips = f"[...document.querySelectorAll('[data-participant=\"{t_id}\"] .chip')]"
    recorders[1].inject(state)
    await wait_until(lambda: client.js(f"{chips}.some(c => c.textContent === 'video paused' "
                                       "&& c.title.includes('bandwidth'))"),
                     message="the tile shows the pause and why")
    recorders[1].inject({**state, "state": "active", "reason": None, "spatial": 0,
                         "temporal": 2, "width": 320, "height": 240})
    await wait_until(lambda: client.js(f"!{chips}.some(c => c.textContent === 'video paused')"),
                     message="the tile shows the video again")
    assert await client.js(f"window.sessionPage.session.remoteTracks.get('{video}')"
                           ".streamState.width") == 320

    # The token travelled in the fragment and in the join message only: no request URL has
    # it (so no access log can), and the page took it out of the address bar.
    for page, token in ((therapist, tokens[0]), (client, tokens[1])):
        assert page.requests and not [u for u in page.requests if token in u]
        assert await page.js("location.hash") == ""
        assert any(m.get("token") == token for m in recorders[tokens.index(token)].sent)


async def test_call_controls_work_from_the_keyboard(server, browser):
    page = await open_session(browser, server, server.token("b-keys", "t", role="host"), "host")
    # Tab through the page from the top: every control is reached, in reading order.
    await page.page.locator(".skip").focus()
    names = []
    for _ in range(6):
        await page.page.keyboard.press("Tab")
        names.append(await page.js("(() => { const e = document.activeElement; return "
                                   "e.getAttribute('aria-label') || e.textContent.trim(); })()"))
    order = ["Connection", "Mute microphone", "Turn camera off", "Host controls", "Leave"]
    positions = [next(i for i, n in enumerate(names) if n.startswith(label)) for label in order]
    assert positions == sorted(positions), names
    # Space on the focused mute button mutes; the button says so to a screen reader.
    mic = page.page.locator("#mic")
    await mic.focus()
    await page.page.keyboard.press("Space")
    await wait_until(lambda: page.js("document.querySelector('#mic')"
                                     ".getAttribute('aria-pressed') === 'true'"),
                     message="the microphone muted by the keyboard")
    assert await mic.text_content() == "Unmute microphone"
    # The quality badge opens an explanation: the level, what it means, what to do.
    await page.page.locator("#quality").focus()
    await page.page.keyboard.press("Enter")
    details = page.page.locator("#quality-details")
    await wait_until(lambda: details.is_visible(), message="the quality explanation")
    await wait_until(lambda: _contains(details, "What to do:"), message="the explanation")
    assert "Your connection:" in await details.text_content()
    assert await page.page.locator("#quality").get_attribute("aria-expanded") == "true"
    # Every button has a name, and every dialog a title.
    unnamed = await page.js("[...document.querySelectorAll('button')].filter(b => "
                            "!(b.getAttribute('aria-label') || b.textContent.trim())).length")
    assert unnamed == 0
    assert await page.js("[...document.querySelectorAll('dialog')].every(d => "
                         "document.getElementById(d.getAttribute('aria-labelledby')))")


async def _contains(locator, text: str) -> bool:
    return text in (await locator.text_content() or "")


async def test_preferences_follow_the_tile_and_subscriptions_renegotiate(server, browser):
    host = await open_session(browser, server, server.token("b-prefs", "t", role="host"), "host")
    client = await open_session(browser, server, server.token("b-prefs", "c"), "client")
    t_id, c_id = await host.participant_id(), await client.participant_id()
    await frames_grow(client, t_id)
    video = await client.js("[...window.sessionPage.session.remoteTracks.values()]"
                            ".find(r => r.kind === 'video').track_id")
    room = server.rooms.rooms["b-prefs"]
    viewer = room.participants[c_id]
    tile = client.page.locator(f'[data-participant="{t_id}"] video')

    async def prefs_match_tile() -> bool:
        box = await tile.evaluate("v => [v.clientWidth, v.clientHeight, devicePixelRatio]")
        want = {"disabled": False, "max_width": round(box[0] * box[2]),
                "max_height": round(box[1] * box[2])}
        return viewer.preferences.get(video) == want

    # The server knows the tile's size in device pixels, and follows it when it changes.
    await wait_until(prefs_match_tile, message="preferences with the tile's size")
    before = dict(viewer.preferences[video])
    await client.page.set_viewport_size({"width": 420, "height": 700})
    await wait_until(prefs_match_tile, message="preferences after a resize")
    assert viewer.preferences[video] != before

    # A tile out of sight is paused on the server (disabled), and resumes when shown.
    await tile.evaluate("v => v.closest('figure').style.display = 'none'")
    await wait_until(lambda: video in viewer.disabled_tracks, message="disabled when hidden")
    await tile.evaluate("v => v.closest('figure').style.display = ''")
    await wait_until(lambda: video not in viewer.disabled_tracks, message="enabled when shown")
    await frames_grow(client, t_id)

    # unsubscribe takes the track away (renegotiation), subscribe brings it back.
    await client.js(f"window.sessionPage.session.unsubscribe('{video}')")
    await wait_until(lambda: client.js(f"!window.sessionPage.session.remoteTracks.has('{video}')"),
                     message="the track unsubscribed")
    await client.js(f"window.sessionPage.session.subscribe('{video}')")
    await wait_until(lambda: client.js(f"window.sessionPage.session.remoteTracks.has('{video}')"),
                     message="the track subscribed again")
    await frames_grow(client, t_id)
