"""No secrets or identities in logs or metrics, across a whole session.

Everything the server (and aiortc, aioice, aiohttp under it) logs at DEBUG during a session
with joins, publishing, a recording with consent, stats, host controls, bad tokens, the
admin API and leaving is captured, together with /metrics, and scanned for the tokens, the
secrets, the resume tokens, the display names and the identities used.
"""

from __future__ import annotations

import logging
import time

import aiohttp

from loadtest.client import SignalClient
from loadtest.media import SineAudioTrack, SyntheticVideoTrack
from mediaserver.config import DEV_API_KEY, DEV_API_SECRET, build_config
from mediaserver.recording.keys import new_kek_line
from mediaserver.tokens import Grants, create_token
from tests.conftest import start_server, wait_until

THERAPIST = ("id-therapist-5521", "Dr Quentin Leakcheck")
CLIENT = ("id-client-8832", "Zelda Confidential")


async def test_a_whole_session_logs_and_exports_no_secret_and_no_identity(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    kek = new_kek_line("k1")
    config = build_config({"dev": True, "host": "127.0.0.1", "bind_host": "127.0.0.1",
                           "allow_loopback": True, "recording_dir": str(tmp_path / "rec"),
                           "log_level": "DEBUG"},
                          {"MEDIASERVER_RECORDING_KEYS": kek}, None)
    async with start_server(config=config) as server, aiohttp.ClientSession() as http:
        t_token = server.token("leak-room", THERAPIST[0], name=THERAPIST[1], role="host")
        c_token = server.token("leak-room", CLIENT[0], name=CLIENT[1])
        bad_token = create_token(DEV_API_KEY, "wrong-secret-xyz", room="leak-room",
                                 identity=CLIENT[0], name=CLIENT[1], now=time.time())
        admin = create_token(DEV_API_KEY, DEV_API_SECRET, identity="backend-admin-77",
                             now=time.time(), grants=Grants(publish=False, subscribe=False,
                                                            admin=True))
        therapist = SignalClient(server.ws_url, t_token)
        client = SignalClient(server.ws_url, c_token)
        intruder = SignalClient(server.ws_url, bad_token)
        try:
            await therapist.connect()
            await client.connect()
            assert (await intruder.connect())["code"] == "token_bad_signature"
            await therapist.publish(SyntheticVideoTrack((9, 9, 9), width=320, height=240,
                                                        fps=15), SineAudioTrack(400))
            await client.publish(SineAudioTrack(600))
            await wait_until(lambda: client.received and therapist.received, timeout=30,
                             message="media flowing")
            await therapist.request({"type": "record_start"})
            await client.wait_event(lambda e: e["type"] == "consent_request")
            await client.request({"type": "consent", "granted": True})
            await wait_until(lambda: any(e.get("state") == "recording" for e in therapist.events),
                             message="recording")
            await therapist.request({"type": "get_stats"})
            assert client.participant_id is not None
            await therapist.request({"type": "mute_participant",
                                     "participant_id": client.participant_id, "muted": True})
            await client.request({"type": "publish_offer", "sdp": "v=0"})  # refused
            headers = {"Authorization": f"Bearer {admin}"}
            async with http.get(f"{server.url}/v1/rooms/leak-room", headers=headers) as r:
                assert r.status == 200
            async with http.get(f"{server.url}/v1/rooms/leak-room/report",
                                headers=headers) as r:
                assert r.status == 200
            async with http.get(f"{server.url}/v1/rooms", headers={
                    "Authorization": f"Bearer {c_token}"}) as r:
                assert r.status == 403
            await therapist.request({"type": "record_stop"})
            async with http.get(f"{server.url}/metrics") as r:
                metrics_text = await r.text()
            resume_tokens = [c.joined["resume_token"] for c in (therapist, client) if c.joined]
        finally:
            for c in (therapist, client, intruder):
                await c.close()
        await wait_until(lambda: "leak-room" not in server.rooms.rooms
                         or not server.rooms.rooms["leak-room"].participants,
                         message="everyone left")

    logs = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert len(caplog.records) > 50, "the capture should hold the whole session's logs"
    secrets = {
        "therapist token": t_token, "client token": c_token, "bad token": bad_token,
        "admin token": admin, "API secret": DEV_API_SECRET, "recording key": kek.split(":")[1],
        **{f"signature of token {i}": tok.rsplit(".", 1)[1]
           for i, tok in enumerate((t_token, c_token, bad_token, admin))},
        **{f"resume token {i}": rt for i, rt in enumerate(resume_tokens)},
        "therapist identity": THERAPIST[0], "therapist name": THERAPIST[1],
        "client identity": CLIENT[0], "client name": CLIENT[1],
        "admin identity": "backend-admin-77",
    }
    for what, value in secrets.items():
        assert value not in logs, f"{what} appears in the logs"
        assert value not in metrics_text, f"{what} appears in /metrics"
    # Names split into words, in case something logs them piecemeal.
    for word in (*THERAPIST[1].split()[1:], *CLIENT[1].split()):
        assert word not in logs and word not in metrics_text, word
