"""Four session pages in real Chromium and one aiortc peer in a group session."""

from __future__ import annotations

import asyncio

from loadtest.client import SignalClient
from loadtest.media import SineAudioTrack, SyntheticVideoTrack
from tests.browser.conftest import ARTIFACTS, frames_grow, hears, open_session
from tests.conftest import wait_until

PHONE = {"width": 390, "height": 844}


async def test_four_pages_and_an_aiortc_peer_in_a_group(server, browser):
    room = "b-group"
    names = ["Dr Rivera", "Alex", "Sam", "Jo"]
    pages = []
    for i, name in enumerate(names):
        token = server.token(room, f"user{i}", kind="group", name=name,
                             role="host" if i == 0 else "participant")
        pages.append(await open_session(browser, server, token, name,
                                        viewport=PHONE if i == 3 else None))
    ids = [await p.participant_id() for p in pages]

    # Every page decodes every other page.
    await asyncio.gather(*(frames_grow(v, ids[j]) for i, v in enumerate(pages)
                           for j in range(4) if i != j))

    # The session page with four participants, as a desktop host and on a phone.
    ARTIFACTS.mkdir(exist_ok=True)
    host = pages[0]
    await host.page.get_by_role("button", name="Host controls").click()
    await wait_until(lambda: host.js("document.querySelectorAll('#grid video').length === 4 && "
                                     "[...document.querySelectorAll('#grid figure')]"
                                     ".every(f => !f.classList.contains('novideo'))"),
                     message="four tiles with video on the host's page")
    # The badges show a level once the media has settled (the first seconds read "measuring").
    for p in (host, pages[3]):
        await wait_until(lambda p=p: p.js("document.querySelector('#quality').dataset.level"
                                          " !== 'unknown'"),
                         timeout=30, interval=0.5, message=f"{p.name}'s connection level")
    desktop, phone = ARTIFACTS / "session-4-desktop.png", ARTIFACTS / "session-4-phone.png"
    await host.page.screenshot(path=str(desktop))
    await pages[3].page.screenshot(path=str(phone))
    print(f"\nscreenshots: {desktop} {phone}")
    # The phone's page fits its width: nothing to scroll sideways.
    assert await pages[3].js("document.documentElement.scrollWidth <= innerWidth")
    captions = await host.js("[...document.querySelectorAll('#grid figcaption')]"
                             ".map(c => c.textContent)")
    for name in names[1:]:
        assert any(c.startswith(name) for c in captions), (name, captions)

    # A fifth participant, an aiortc peer: it receives the four pages and they receive it.
    peer = SignalClient(server.ws_url, server.token(room, "aiortc", kind="group", name="Bot"))
    try:
        assert (await peer.connect())["type"] == "joined"
        await peer.publish(SyntheticVideoTrack((30, 200, 30), width=160, height=120, fps=10),
                           SineAudioTrack(600))
        await wait_until(lambda: all(
            sum(r.frames for r in peer.tracks_from(pid, "video")) >= 10
            and sum(r.frames for r in peer.tracks_from(pid, "audio")) >= 10 for pid in ids),
            timeout=60, message="the aiortc peer decodes the four pages")
        await asyncio.gather(*(frames_grow(p, peer.participant_id, at_least=5) for p in pages))
        await asyncio.gather(*(hears(v, ids[j]) for i, v in enumerate(pages)
                               for j in range(4) if i != j))
        await asyncio.gather(*(hears(p, peer.participant_id) for p in pages))
        tiles = await host.js("document.querySelectorAll('#grid figure').length")
        assert tiles == 5  # four pages (the host's own tile included) and the peer
    finally:
        await peer.close()
