"""Consent-gated, encrypted recording of a real session through the server."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import av
import pytest

from loadtest.client import SignalClient
from loadtest.media import SineAudioTrack, SyntheticVideoTrack
from mediaserver.cli import main as cli_main
from mediaserver.config import ConfigError, build_config
from mediaserver.recording.audit import verify_log
from mediaserver.recording.keys import new_kek_line
from tests.conftest import start_server, wait_until


def _state(c: SignalClient) -> str | None:
    states = [e for e in c.events if e["type"] == "recording_state"]
    return states[-1]["state"] if states else None


def _video(color):
    return SyntheticVideoTrack(color, width=160, height=120, fps=10)


async def test_recording_follows_consent_and_is_encrypted(tmp_path):
    keys = new_kek_line("k1")
    rec_dir = tmp_path / "recordings"
    flags = {"dev": True, "host": "127.0.0.1", "bind_host": "127.0.0.1", "allow_loopback": True,
             "recording_dir": str(rec_dir)}
    with pytest.raises(ConfigError, match=r"recording\.keys: required"):
        build_config(flags, {}, None)
    config = build_config(flags, {"MEDIASERVER_RECORDING_KEYS": keys}, None)
    async with start_server(config=config) as server:
        host = SignalClient(server.ws_url, server.token("rec", "therapist", role="host",
                                                        kind="couples"))
        a = SignalClient(server.ws_url, server.token("rec", "partner-a", kind="couples"))
        b = SignalClient(server.ws_url, server.token("rec", "partner-b", kind="couples"))
        clients = [host, a, b]
        try:
            for i, c in enumerate(clients):
                await c.connect()
                await c.publish(_video((60 * i, 120, 200)), SineAudioTrack(300 + 200 * i))
            # A participant may not start a recording.
            assert (await a.request({"type": "record_start"}))["code"] == "permission_denied"
            state = await host.request({"type": "record_start"})
            assert state["state"] == "waiting_consent"
            assert set(state["pending"]) == {a.participant_id, b.participant_id}
            for c in (a, b):
                await c.wait_event(lambda e: e["type"] == "consent_request")
            room = server.rooms.rooms["rec"]
            assert room.recording.session is None  # nothing recorded before consent

            await a.request({"type": "consent", "granted": True})
            assert room.recording.session is None  # b has not said yes
            await b.request({"type": "consent", "granted": True})
            await wait_until(lambda: _state(host) == "recording", message="recording")
            session = room.recording.session
            assert session is not None and not session.paused

            # Withdrawal pauses at once; a new yes resumes.
            await b.request({"type": "consent_withdraw"})
            assert session.paused
            await wait_until(lambda: _state(a) == "paused", message="everyone told: paused")
            await b.request({"type": "consent", "granted": True})
            assert not session.paused
            await wait_until(lambda: all(r.frames >= 5 for r in session.tracks.values()),
                             timeout=30, message="every track written while recording")

            stopped = await host.request({"type": "record_stop"})
            assert stopped["state"] == "stopped"
            assert room.recording.session is None
        finally:
            for c in clients:
                await c.close()

    recordings = [p for p in rec_dir.iterdir() if p.is_dir()]
    assert len(recordings) == 1
    files = sorted(recordings[0].glob("*.enc"))
    assert len(files) == 7  # 6 tracks + the manifest
    for f in files:
        data = f.read_bytes()
        assert b"\x1a\x45\xdf\xa3" not in data and b"OpusHead" not in data
    # The operator's tools: verify, then decrypt to a directory of their choosing.
    keyfile = tmp_path / "keys.txt"
    keyfile.write_text(keys + "\n")
    assert cli_main(["recordings", "verify", str(rec_dir), "--keys", str(keyfile)]) == 0
    out = tmp_path / "plain"
    assert cli_main(["recordings", "decrypt", str(recordings[0]), str(out),
                     "--keys", str(keyfile)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert {t["participant"] for t in manifest["tracks"]} == {"therapist", "partner-a",
                                                              "partner-b"}
    videos = [t for t in manifest["tracks"] if t["kind"] == "video"]
    with av.open(str(out / f"{videos[0]['track_id']}.webm")) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames >= 5
    assert frames == videos[0]["frames"]  # every frame the recorder wrote is decodable
    # The audit log tells the whole story and is tamper-evident.
    log = rec_dir / "audit.log"
    result = verify_log(log)
    assert result.ok, result
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    for name in ("consent_requested", "consent_granted", "recording_started",
                 "consent_withdrawn", "recording_paused", "recording_resumed",
                 "recording_stopped"):
        assert name in events, (name, events)
    participants = {json.loads(line)["participant"] for line in log.read_text().splitlines()}
    assert participants <= {"therapist", "partner-a", "partner-b", None}  # identities
    assert cli_main(["recordings", "audit", str(log)]) == 0
    lines = log.read_text().splitlines()
    edited = json.loads(lines[2])
    edited["participant"] = "someone-else"
    lines[2] = json.dumps(edited, separators=(",", ":"), sort_keys=True)
    log.write_text("\n".join(lines) + "\n")
    tampered = verify_log(log)
    assert not tampered.ok and tampered.line == 3
    assert cli_main(["recordings", "audit", str(log)]) == 1



async def test_a_newcomer_pauses_the_recording_until_they_consent(tmp_path):
    keys = new_kek_line("k1")
    config = build_config({"dev": True, "host": "127.0.0.1", "bind_host": "127.0.0.1",
                           "allow_loopback": True, "recording_dir": str(tmp_path / "rec")},
                          {"MEDIASERVER_RECORDING_KEYS": keys}, None)
    async with start_server(config=config) as server:
        def client(identity: str, **kw) -> SignalClient:
            return SignalClient(server.ws_url, server.token("grp", identity, kind="group", **kw))

        host, member = client("therapist", role="host"), client("member")
        observer = client("supervisor", role="observer")
        late = client("latecomer")
        clients = [host, member, observer, late]
        try:
            await host.connect()
            await member.connect()
            await host.publish(SineAudioTrack(440))
            await host.request({"type": "record_start"})
            await member.request({"type": "consent", "granted": True})
            room = server.rooms.rooms["grp"]
            assert room.recording.phase.value == "recording"

            # A hidden observer is asked too, and pauses the recording until they say yes;
            # the member is told the state but not who (observers stay hidden).
            await observer.connect()
            await observer.wait_event(lambda e: e["type"] == "consent_request")
            assert room.recording.phase.value == "paused"
            paused = await member.wait_event(
                lambda e: e["type"] == "recording_state" and e["state"] == "paused")
            assert observer.participant_id not in paused["pending"]
            await observer.request({"type": "consent", "granted": True})
            assert room.recording.phase.value == "recording"

            # A newcomer pauses it at once; their yes resumes it.
            joined = await late.connect()
            assert joined["recording"]["state"] == "recording"  # what is running as they join
            await late.wait_event(lambda e: e["type"] == "consent_request")
            await late.wait_event(lambda e: e["type"] == "recording_state"
                                  and e["state"] == "paused")
            assert room.recording.session.paused
            await late.request({"type": "consent", "granted": True})
            assert room.recording.phase.value == "recording"
            assert not room.recording.session.paused
            # A no from anyone pauses again.
            await late.request({"type": "consent", "granted": False})
            assert room.recording.session.paused
        finally:
            for c in clients:
                await c.close()


async def test_admin_api_starts_and_stops_a_recording_for_a_host(tmp_path):
    config = build_config({"dev": True, "host": "127.0.0.1", "bind_host": "127.0.0.1",
                           "allow_loopback": True, "recording_dir": str(tmp_path / "rec")},
                          {"MEDIASERVER_RECORDING_KEYS": new_kek_line("k1")}, None)
    async with start_server(config=config) as server:
        host = SignalClient(server.ws_url, server.token("adm-rec", "therapist", role="host"))
        client = SignalClient(server.ws_url, server.token("adm-rec", "client"))
        url = f"{server.url}/v1/rooms/adm-rec/recording"
        auth = {"Authorization": f"Bearer {server.admin_token()}"}
        try:
            for c in (host, client):
                await c.connect()
            await client.publish(SineAudioTrack(500))
            async with aiohttp.ClientSession(headers=auth) as http:
                async def post(body: object) -> tuple[int, dict]:
                    async with http.post(url, json=body) as r:
                        return r.status, await r.json()

                # Only a host's identity may start it; a bad body or a stranger is refused.
                assert (await post({"action": "start", "identity": "client"}))[0] == 403
                assert (await post({"action": "start", "identity": "nobody"}))[0] == 404
                assert (await post({"action": "go"}))[1]["code"] == "invalid_request"
                async with http.post(url, data="{") as r:
                    assert (await r.json())["code"] == "bad_json"
                status, state = await post({"action": "start", "identity": "therapist"})
                assert status == 200 and state["state"] == "waiting_consent", state
                await client.wait_event(lambda e: e["type"] == "consent_request")
                room = server.rooms.rooms["adm-rec"]
                assert room.recording.session is None  # consent first, as always
                await client.request({"type": "consent", "granted": True})
                await wait_until(lambda: _state(host) == "recording", message="recording")
                status, state = await post({"action": "stop", "identity": "therapist"})
                assert status == 200 and state["state"] == "stopped"
                assert room.recording.session is None
        finally:
            await asyncio.gather(host.close(), client.close())
