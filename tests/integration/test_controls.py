"""Waiting room, host controls, observers, speakers and resume, through the real server."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from loadtest.client import SignalClient
from loadtest.media import SineAudioTrack, SyntheticVideoTrack
from mediaserver import metrics
from tests.conftest import wait_until


def _video(color=(120, 120, 120)):
    return SyntheticVideoTrack(color, width=160, height=120, fps=10)


def _frames(viewer: SignalClient, publisher: SignalClient, kind: str = "video") -> int:
    return sum(r.frames for r in viewer.tracks_from(publisher.participant_id, kind))


async def _create_room(server, name: str, kind: str = "group", **options) -> None:
    auth = {"Authorization": f"Bearer {server.admin_token()}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.post(f"{server.url}/v1/rooms",
                             json={"room": name, "kind": kind, "options": options}) as r:
            assert r.status == 201, await r.text()


@pytest.fixture
async def clients():
    made: list[SignalClient] = []

    def make(server, room: str, identity: str, **kw) -> SignalClient:
        kw.setdefault("kind", "group")
        c = SignalClient(server.ws_url, server.token(room, identity, **kw))
        made.append(c)
        return c

    yield make
    await asyncio.gather(*(c.close() for c in made))


async def test_waiting_room_admit_and_deny(server, clients):
    await _create_room(server, "waiting", waiting_room=True)
    host = clients(server, "waiting", "host", role="host")
    guest = clients(server, "waiting", "guest")
    other = clients(server, "waiting", "other")
    assert (await host.connect())["state"] == "active"
    await host.publish(_video((200, 50, 50)))

    joined = await guest.connect()
    assert joined["state"] == "waiting"
    assert joined["participants"] == []  # no roster while waiting
    waiting = await host.wait_event(lambda e: e["type"] == "participant_waiting")
    assert waiting["participant"]["identity"] == "guest"
    # A waiting participant may not publish, and receives no media.
    refused = await guest.request({"type": "publish_offer", "sdp": "v=0"})
    assert refused["code"] == "not_admitted"
    room = server.rooms.rooms["waiting"]
    waiting_guest = room.participants[guest.participant_id]
    assert waiting_guest.subscriber is None and waiting_guest.negotiate_task is None
    assert not any(e["type"] == "subscriber_offer" for e in guest.events)
    assert not any(e["type"] == "participant_joined" for e in host.events)

    # A participant cannot admit; the host can.
    assert (await other.connect())["state"] == "waiting"
    pid = waiting["participant"]["participant_id"]
    assert (await host.request({"type": "admit", "participant_id": pid}))["type"] == "ack"
    admitted = await guest.wait_event(lambda e: e["type"] == "admitted")
    assert [p["identity"] for p in admitted["participants"]] == ["host"]
    await wait_until(lambda: _frames(guest, host) >= 5, timeout=60, message="guest gets media")
    refused = await guest.request({"type": "admit", "participant_id": other.participant_id})
    assert refused["code"] == "permission_denied"

    # Deny: the other waiting person gets a clear reason and is gone.
    await host.request({"type": "deny", "participant_id": other.participant_id,
                        "reason": "this session is full today"})
    denied = await other.wait_event(lambda e: e["type"] == "denied")
    assert denied["reason"] == "this session is full today"
    assert {p.identity for p in room.participants.values()} == {"host", "guest"}


async def test_host_mutes_removes_locks_and_ends_participants_cannot(server, clients):
    host = clients(server, "controls", "host", role="host")
    alice = clients(server, "controls", "alice")
    bob = clients(server, "controls", "bob")
    for c in (host, alice, bob):
        await c.connect()
    alice_audio = SineAudioTrack(700)
    await alice.publish(_video((50, 200, 50)), alice_audio)
    await wait_until(lambda: _frames(bob, alice, "audio") >= 20, timeout=60,
                     message="bob hears alice")
    track_id = next(t for t in server.rooms.rooms["controls"].participants[
        alice.participant_id].producers.values() if t.kind == "audio").track_id

    # A participant may not mute, remove, lock or end.
    for msg in ({"type": "mute_participant", "participant_id": alice.participant_id,
                 "muted": True},
                {"type": "remove_participant", "participant_id": alice.participant_id},
                {"type": "lock_room", "locked": True},
                {"type": "end_room"}):
        reply = await bob.request(msg)
        assert reply["code"] == "permission_denied", (msg, reply)

    # The host mutes alice's microphone: forwarding stops at once and everyone is told.
    await host.request({"type": "mute_participant", "participant_id": alice.participant_id,
                        "muted": True})
    event = await bob.wait_event(lambda e: e["type"] == "track_muted")
    assert (event["track_id"], event["by"]) == (track_id, host.participant_id)
    await alice.wait_event(lambda e: e["type"] == "track_muted")
    bob_side = server.rooms.rooms["controls"].participants[bob.participant_id]
    (consumer,) = [c for c in bob_side.subscriber.consumers.values()
                   if c.producer.track_id == track_id]
    sent = consumer.stats.packets_sent
    paused = metrics.DROP["paused"]._value.get()
    await wait_until(lambda: metrics.DROP["paused"]._value.get() >= paused + 25,
                     message="alice's audio packets held back while muted")
    assert consumer.stats.packets_sent == sent
    # Unmuting someone else is only a request.
    await host.request({"type": "mute_participant", "participant_id": alice.participant_id,
                        "muted": False})
    await alice.wait_event(lambda e: e["type"] == "unmute_requested")
    assert server.rooms.rooms["controls"].participants[alice.participant_id].producers[
        track_id].muted
    await alice.request({"type": "mute", "track_id": track_id, "muted": False})
    before = _frames(bob, alice, "audio")
    await wait_until(lambda: _frames(bob, alice, "audio") >= before + 25, timeout=20,
                     message="audio flows again after alice unmutes")

    # Lock: nobody new gets in.
    await host.request({"type": "lock_room", "locked": True})
    late = clients(server, "controls", "late")
    assert (await late.connect())["code"] == "room_locked"

    # Remove bob: he is told, the others see him leave, his token no longer works.
    await host.request({"type": "remove_participant", "participant_id": bob.participant_id})
    assert (await bob.wait_event(lambda e: e["type"] == "removed"))["reason"] == "removed_by_host"
    left = await alice.wait_event(lambda e: e["type"] == "participant_left")
    assert left["participant_id"] == bob.participant_id
    await host.request({"type": "lock_room", "locked": False})
    again = SignalClient(server.ws_url, bob.token)
    try:
        assert (await again.connect())["code"] == "participant_removed"
    finally:
        await again.close()

    # End: everyone is told and the room is gone.
    await host.request({"type": "end_room"})
    assert (await alice.wait_event(lambda e: e["type"] == "removed"))["reason"] == "room_ended"
    await wait_until(lambda: "controls" not in server.rooms.rooms, message="room ended")


async def test_observer_receives_but_does_not_publish_and_is_hidden(server, clients):
    host = clients(server, "supervised", "therapist", role="host", kind="one_to_one")
    client = clients(server, "supervised", "client", kind="one_to_one")
    observer = clients(server, "supervised", "supervisor", role="observer", kind="one_to_one")
    await host.connect()
    await client.connect()
    joined = await observer.connect()  # a 1:1 session still admits its supervisor
    assert joined["type"] == "joined", joined
    assert {p["identity"] for p in joined["participants"]} == {"therapist", "client"}
    await host.publish(_video((10, 10, 200)))
    await client.publish(_video((200, 10, 10)))
    await wait_until(lambda: _frames(observer, host) >= 5 and _frames(observer, client) >= 5,
                     timeout=60, message="observer receives both")
    refused = await observer.request({"type": "publish_offer", "sdp": "v=0"})
    assert refused["code"] == "permission_denied"
    # The client never hears of the observer; the therapist does.
    assert not any(e.get("participant", {}).get("identity") == "supervisor"
                   for e in client.events)
    assert any(e.get("type") == "participant_joined"
               and e["participant"]["identity"] == "supervisor" for e in host.events)


async def test_speakers_changed_follows_who_is_talking(server, clients):
    a = clients(server, "talk", "a")
    b = clients(server, "talk", "b")
    listener = clients(server, "talk", "listener")
    for c in (a, b, listener):
        await c.connect()
    a_voice, b_voice = SineAudioTrack(300, amplitude=0.5), SineAudioTrack(500, amplitude=0.0)
    await a.publish(a_voice)
    await b.publish(b_voice)

    def dominant() -> str | None:
        changes = [e for e in listener.events if e["type"] == "speakers_changed"]
        return changes[-1]["dominant"] if changes else None

    await wait_until(lambda: dominant() == a.participant_id, timeout=20,
                     message="a is the dominant speaker")
    a_voice.amplitude, b_voice.amplitude = 0.0, 0.5
    await wait_until(lambda: dominant() == b.participant_id, timeout=20,
                     message="b takes over")

    def speaking() -> list[str]:
        last = [e for e in listener.events if e["type"] == "speakers_changed"][-1]
        return [s["participant_id"] for s in last["speakers"]]

    await wait_until(lambda: speaking() == [b.participant_id], timeout=20,
                     message="a, now silent, is released")
    changes = [e for e in listener.events if e["type"] == "speakers_changed"]
    assert len(changes) < 10, changes  # no flicker: a handful of changes, not a stream


async def test_resume_after_the_socket_is_killed(server, clients):
    a = clients(server, "resume", "a", kind="one_to_one")
    b = clients(server, "resume", "b", kind="one_to_one")
    await a.connect()
    await b.connect()
    await a.publish(_video((0, 150, 0)))
    await b.publish(_video((150, 0, 0)))
    await wait_until(lambda: _frames(a, b) >= 5 and _frames(b, a) >= 5, timeout=60,
                     message="call up")
    identity = a.participant_id
    await a.kill_socket()
    room = server.rooms.rooms["resume"]
    await wait_until(lambda: room.participants[identity].state == "disconnected",
                     message="server notices the drop")
    resumed = await a.resume()
    assert resumed["type"] == "resumed", resumed
    assert resumed["participant_id"] == identity
    assert [p["identity"] for p in resumed["participants"]] == ["b"]
    before_a, before_b = _frames(a, b), _frames(b, a)
    await wait_until(lambda: _frames(a, b) >= before_a + 10 and _frames(b, a) >= before_b + 10,
                     timeout=30, message="media flows after resume")
    assert not any(e["type"] in ("participant_left", "participant_joined") for e in b.events)


async def test_resume_with_new_media_connections_keeps_tracks_and_subscriptions(server, clients):
    a = clients(server, "move", "a", kind="one_to_one")
    b = clients(server, "move", "b", kind="one_to_one")
    await a.connect()
    await b.connect()
    await a.publish(_video((0, 0, 250)), SineAudioTrack(400))
    await b.publish(_video((250, 250, 0)))
    await wait_until(lambda: _frames(a, b) >= 5 and _frames(b, a) >= 5, timeout=60,
                     message="call up")
    published = {t["track_id"] for t in a.published}
    seen_before = len(b.events)
    # Wi-Fi to mobile data: the socket and the media paths die together.
    await a.kill_socket()
    assert (await a.resume())["type"] == "resumed"
    await a.reconnect_media(_video((0, 0, 250)), SineAudioTrack(400))
    assert {t["track_id"] for t in a.published} == published
    before = _frames(b, a)
    await wait_until(lambda: _frames(b, a) >= before + 10 and _frames(a, b) >= 10, timeout=60,
                     message="media both ways on the new connections")
    (track,) = b.tracks_from(a.participant_id, "video")
    assert track.colors[-1][2] > 200  # still a's picture, on the same track id
    seen = [e["type"] for e in b.events[seen_before:]]
    for unwanted in ("participant_left", "participant_joined", "track_unpublished",
                     "track_published"):
        assert unwanted not in seen, seen


async def test_a_participant_who_does_not_come_back_leaves_after_the_grace_period(clients):
    from tests.conftest import start_server

    async with start_server(resume_grace="1") as server:
        a = clients(server, "grace", "a", kind="one_to_one")
        b = clients(server, "grace", "b", kind="one_to_one")
        await a.connect()
        await b.connect()
        await a.kill_socket()
        left = await b.wait_event(lambda e: e["type"] == "participant_left", timeout=10)
        assert (left["participant_id"], left["reason"]) == (a.participant_id, "disconnected")
        assert (await a.resume())["code"] == "resume_failed"


async def test_idle_signalling_connections_are_closed(clients):
    from tests.conftest import start_server

    async with start_server(signal_idle_timeout="1") as server:
        a = clients(server, "idle", "a")
        await a.connect()
        await wait_until(lambda: a.ws.closed, timeout=10, message="idle socket closed")
        assert a.ws.close_code == 1000


async def test_selective_subscription_and_preferences(server, clients):
    pub = clients(server, "select", "pub")
    viewer = clients(server, "select", "viewer")
    await pub.connect()
    await viewer.connect()
    await pub.publish(_video((200, 200, 200)), SineAudioTrack(440))
    await wait_until(lambda: _frames(viewer, pub) >= 5, timeout=60, message="viewer video")
    video_id = next(t["track_id"] for t in pub.published if t["kind"] == "video")
    room = server.rooms.rooms["select"]
    sub = room.participants[viewer.participant_id].subscriber

    def consumer():
        return next((c for c in sub.consumers.values()
                     if c.producer.track_id == video_id and not c.closed), None)

    # Disabled: the consumer stays but nothing is forwarded.
    await viewer.request({"type": "set_preferences", "track_id": video_id, "disabled": True})
    assert consumer().paused
    await viewer.request({"type": "set_preferences", "track_id": video_id, "disabled": False})
    assert not consumer().paused
    # Unsubscribed: the consumer goes away; subscribing brings it back.
    await viewer.request({"type": "unsubscribe", "track_id": video_id})
    await wait_until(lambda: consumer() is None, message="consumer removed")
    await viewer.request({"type": "subscribe", "track_id": video_id})
    await wait_until(lambda: consumer() is not None, message="consumer back")
    bad = await viewer.request({"type": "subscribe", "track_id": "TR_nope"})
    assert bad["code"] == "track_not_found"


async def test_session_time_limit_ends_the_session(server, clients):
    await _create_room(server, "short", max_duration=1)
    a = clients(server, "short", "a")
    await a.connect()
    removed = await a.wait_event(lambda e: e["type"] == "removed", timeout=10)
    assert removed["reason"] == "session_time_limit"


async def test_a_waiting_participant_cannot_let_itself_in_by_resuming(server, clients):
    await _create_room(server, "lobby", waiting_room=True)
    host = clients(server, "lobby", "host", role="host")
    guest = clients(server, "lobby", "guest")
    await host.connect()
    await host.publish(_video())
    assert (await guest.connect())["state"] == "waiting"
    # The guest opens a second socket and "resumes" its own waiting session.
    second = SignalClient(server.ws_url, guest.token)
    try:
        second.joined, second.participant_id = guest.joined, guest.participant_id
        second.session = aiohttp.ClientSession()
        reply = await second.resume()
        assert reply["type"] == "resumed"
        assert reply["state"] == "waiting"
        assert reply["participants"] == []
        room = server.rooms.rooms["lobby"]
        assert room.participants[guest.participant_id].state == "waiting"
        assert room.participants[guest.participant_id].subscriber is None
    finally:
        await second.close()


async def test_resume_while_the_old_socket_is_still_open_takes_it_over(server, clients):
    a = clients(server, "takeover", "a", kind="one_to_one")
    b = clients(server, "takeover", "b", kind="one_to_one")
    await a.connect()
    await b.connect()
    await b.publish(_video((10, 250, 10)))
    await wait_until(lambda: _frames(a, b) >= 5, timeout=60, message="a receives b")
    old_ws = a.ws
    # A second socket resumes while the first is still open (the phone did not notice
    # the old network was gone): the old one is closed, the participant stays.
    reply = await a.resume()
    assert reply["type"] == "resumed"
    await wait_until(lambda: old_ws.closed, timeout=10, message="old socket closed")
    room = server.rooms.rooms["takeover"]
    p = room.participants[a.participant_id]
    assert p.state == "active"
    assert (await a.request({"type": "ping"}))["type"] == "pong"  # the new socket works
    assert not any(e["type"] == "participant_left" for e in b.events)
