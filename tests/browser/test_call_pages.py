"""Pages of the session page in real Chromium, calling each other through the server."""

from __future__ import annotations

from tests.browser.conftest import frames_grow, hears, open_session


async def test_two_pages_one_to_one_see_and_hear_each_other(server, browser):
    therapist = await open_session(browser, server, server.token("b-1on1", "t", role="host"),
                                   "therapist")
    client = await open_session(browser, server, server.token("b-1on1", "c"), "client")
    t_id, c_id = await therapist.participant_id(), await client.participant_id()
    assert t_id != c_id
    await frames_grow(therapist, c_id)
    await frames_grow(client, t_id)
    await hears(therapist, c_id)
    await hears(client, t_id)
    # Through the server: both publish to it, and the room forwards one to the other.
    room = server.rooms.rooms["b-1on1"]
    assert {p.id for p in room.participants.values()} == {t_id, c_id}
