"""docs/schemas/ against the real server: what it sends, what it accepts, what it refuses.

A session that uses every message type in both directions is recorded through the Python
SignalClient, and every message seen is validated against its JSON Schema; the client schemas
are also checked field by field against the server's validation table, and every required
field and length limit is probed on a live socket: a message the schema refuses must get
``invalid_message`` from the server, and a minimal valid one must not.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from loadtest.client import SignalClient
from loadtest.media import SineAudioTrack, SyntheticVideoTrack
from mediaserver.config import build_config
from mediaserver.recording.keys import new_kek_line
from mediaserver.rooms.participant import DISCONNECTED
from mediaserver.signaling import protocol as proto
from tests.conftest import start_server, wait_until

try:  # simulcast publishing for aiortc clients came with the adaptation work (issue 4)
    from loadtest.simulcast import SimulcastPublisher
except ImportError:
    SimulcastPublisher = None

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
# The adaptation messages (issue 4) are documented; a server from before them has neither
# these messages nor these fields. With them in the server, every check below is exact.
ADAPTIVE = "set_bandwidth" in proto.MESSAGE_TYPES
ADAPTATION_CLIENT = {"set_bandwidth"}
ADAPTATION_SERVER = {"stream_state", "publisher_layers"}
ADAPTATION_FIELDS = {"set_preferences": {"pinned"}}
# Only a node of a cluster sends these (docs/cluster.md): a one-node session never does.
CLUSTER_ONLY = {"redirect"}


def _load() -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], Registry]:
    registry = Registry()
    loaded: dict[str, dict[str, dict[str, Any]]] = {"client": {}, "server": {}}
    for path in SCHEMAS.rglob("*.json"):
        contents = json.loads(path.read_text())
        registry = registry.with_resource(path.as_uri(), Resource.from_contents(contents))
        if path.parent.name in loaded:
            loaded[path.parent.name][path.stem] = contents
    return loaded["client"], loaded["server"], registry


CLIENT, SERVER, REGISTRY = _load()


def validator(direction: str, mtype: str) -> Draft202012Validator:
    schemas = CLIENT if direction == "client" else SERVER
    assert mtype in schemas, f"no schema for {direction} message {mtype!r}"
    schema = {**schemas[mtype], "$id": (SCHEMAS / direction / f"{mtype}.json").as_uri()}
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, registry=REGISTRY)


class RecordingClient(SignalClient):
    """A SignalClient that keeps every message it sends (``events`` has what it received)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.sent: list[dict[str, Any]] = []

    async def send(self, msg: dict[str, Any]) -> None:
        self.sent.append(msg)
        await super().send(msg)

    def has(self, mtype: str, **fields: Any) -> bool:
        return any(e["type"] == mtype and all(e.get(k) == v for k, v in fields.items())
                   for e in self.events)


def test_client_schemas_match_the_servers_validation_table():
    pending = set() if ADAPTIVE else ADAPTATION_CLIENT
    assert set(CLIENT) - pending == set(proto.MESSAGE_TYPES)
    for mtype, fields in proto._FIELDS.items():
        schema = CLIENT[mtype]
        props = set(schema["properties"]) - {"type", "id"}
        if not ADAPTIVE:
            props -= ADAPTATION_FIELDS.get(mtype, set())
        assert props == set(fields), mtype
        required = {name for name, (_, req, _) in fields.items() if req}
        assert set(schema["required"]) - {"type"} == required, mtype
        for name, (_, _, max_len) in fields.items():
            prop = schema["properties"][name]
            if max_len and "enum" in prop:
                assert all(len(v) <= max_len for v in prop["enum"]), (mtype, name)
            elif max_len and "maxLength" in prop:
                assert prop["maxLength"] == max_len, (mtype, name)
            elif max_len:
                assert prop.get("maxItems") == max_len, (mtype, name)


def _example(prop: dict[str, Any]) -> Any:
    """A value that satisfies a property schema (the shapes used in docs/schemas/)."""
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[1]
        return {"Candidate": None, "RequestId": 1}[name]
    if "const" in prop:
        return prop["const"]
    if "enum" in prop:
        return prop["enum"][0]
    kind = prop["type"]
    return {"string": "x", "boolean": True, "integer": 1, "number": 1.5, "array": []}[kind]


def _bad(prop: dict[str, Any]) -> list[Any]:
    """Values the schema refuses for a property."""
    values: list[Any] = []
    if "maxLength" in prop:
        values.append("x" * (prop["maxLength"] + 1))
    if "maxItems" in prop:
        values.append([{}] * (prop["maxItems"] + 1))
    if prop.get("type") in ("string", "integer", "array", "number") or "enum" in prop:
        values.append(True)  # a boolean where something else is expected
    if prop.get("type") == "boolean":
        values.append("yes")
    return values


async def test_schemas_refuse_and_accept_what_the_server_does(server):
    """Probe every client schema's limits on a live socket, before joining."""
    probes: list[tuple[dict[str, Any], bool]] = []  # message, valid by its schema
    for mtype, schema in sorted(CLIENT.items()):
        if mtype not in proto.MESSAGE_TYPES:
            continue  # adaptation messages, before the server has them
        props = {k: v for k, v in schema["properties"].items()
                 if k not in ("type", "id") and k in proto._FIELDS[mtype]}
        minimal = {"type": mtype, **{k: _example(props[k]) for k in schema["required"]
                                     if k != "type"}}
        if mtype == "candidate":
            minimal["target"] = "publisher"
        probes.append((minimal, True))
        for field in schema["required"]:
            if field != "type":
                probes.append(({k: v for k, v in minimal.items() if k != field}, False))
        for field, prop in props.items():
            for value in _bad(prop):
                probes.append(({**minimal, field: value}, False))
    probes.append(({"type": "no_such_message"}, False))

    client: RecordingClient | None = None
    bad_on_socket = 0
    try:
        for i, (msg, valid) in enumerate(probes):
            if client is None or bad_on_socket >= 15:  # 20 invalid messages close a socket
                if client is not None:
                    await client.close()
                client = RecordingClient(server.ws_url, "unused")
                client.session = aiohttp.ClientSession()
                client.ws = await client.session.ws_connect(client.url)
                client._reader = asyncio.create_task(client._read())
                bad_on_socket = 0
            schema_ok = (msg["type"] in CLIENT
                         and not list(validator("client", msg["type"]).iter_errors(msg)))
            assert schema_ok == valid, (json.dumps(msg)[:200], "schema disagrees with the probe")
            shown = json.dumps(msg)[:200]
            if len(json.dumps(msg)) > server.config.max_message_bytes:
                # Too large to be read at all: refused before its id is known.
                before = _too_large(client)
                await client.send(msg)
                await wait_until(lambda c=client, n=before: _too_large(c) > n,
                                 timeout=10, message=f"message_too_large for {shown}")
                assert not valid, shown
                bad_on_socket += 1
                continue
            try:
                reply = await client.request({**msg, "id": f"p{i}"}, timeout=10)
            except TimeoutError:
                raise AssertionError(f"no reply to {shown}") from None
            refused = reply["type"] == "error" and reply["code"] in (
                proto.INVALID_MESSAGE, proto.UNKNOWN_TYPE)
            assert refused != valid, (shown, reply)
            bad_on_socket += not valid
    finally:
        if client is not None:
            await client.close()


def _too_large(c: SignalClient) -> int:
    return sum(e.get("code") == proto.MESSAGE_TOO_LARGE for e in c.events)


async def _create_room(server, name: str, **options: Any) -> None:
    auth = {"Authorization": f"Bearer {server.admin_token()}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.post(f"{server.url}/v1/rooms",
                             json={"room": name, "kind": "group", "options": options}) as r:
            assert r.status == 201, await r.text()


def _video() -> SyntheticVideoTrack:
    return SyntheticVideoTrack((90, 90, 200), width=160, height=120, fps=10)


@pytest.mark.timeout(120)
async def test_a_recorded_session_matches_the_schemas(tmp_path):
    config = build_config({"dev": True, "host": "127.0.0.1", "bind_host": "127.0.0.1",
                           "allow_loopback": True, "recording_dir": str(tmp_path / "rec")},
                          {"MEDIASERVER_RECORDING_KEYS": new_kek_line("k1")}, None)
    async with start_server(config=config) as server:
        await _create_room(server, "schemas", waiting_room=True)

        def make(identity: str, **kw: Any) -> RecordingClient:
            return RecordingClient(server.ws_url, server.token("schemas", identity,
                                                              kind="group", **kw))

        host, guest, late, leaver = (make("host", role="host", name="Dr A"),
                                     make("guest", name="Sam"), make("late"), make("leaver"))
        simulcaster = make("simulcaster") if ADAPTIVE else None
        clients = [host, guest, late, leaver] + ([simulcaster] if simulcaster else [])
        try:
            await _session(server, host, guest, late, leaver, simulcaster)
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    sent = [m for c in clients for m in c.sent]
    received = [m for c in clients for m in c.events]
    problems = {(direction, msg["type"], e.message)
                for direction, msgs in (("client", sent), ("server", received))
                for msg in msgs for e in validator(direction, msg["type"]).iter_errors(msg)}
    assert not problems, sorted(problems)
    client_types = set(CLIENT) - (set() if ADAPTIVE else ADAPTATION_CLIENT)
    server_types = set(SERVER) - CLUSTER_ONLY - (set() if ADAPTIVE else ADAPTATION_SERVER)
    assert {m["type"] for m in sent} == client_types, client_types - {m["type"] for m in sent}
    assert {m["type"] for m in received} == server_types, (
        server_types - {m["type"] for m in received})
    print(f"\n{len(sent)} client and {len(received)} server messages match docs/schemas/")


async def _session(server, host: RecordingClient, guest: RecordingClient,
                   late: RecordingClient, leaver: RecordingClient,
                   simulcaster: RecordingClient | None) -> None:
    async def ok(c: RecordingClient, msg: dict[str, Any], reply: str = "ack") -> dict[str, Any]:
        got = await c.request(msg)
        assert got["type"] == reply, (msg, got)
        return got

    assert (await host.connect())["state"] == "active"
    await host.publish(_video(), SineAudioTrack(300, amplitude=0.5))
    await ok(host, {"type": "ping", "timestamp": 1.5}, "pong")
    await ok(host, {"type": "candidate", "target": "publisher", "candidate": {
        "candidate": "candidate:1 1 UDP 2122252543 127.0.0.1 50000 typ host", "sdpMid": "0"}})
    await ok(host, {"type": "candidate", "target": "publisher", "candidate": None})

    # The waiting room: admit one, deny one, one leaves by itself.
    assert (await guest.connect())["state"] == "waiting"
    await wait_until(lambda: host.has("participant_waiting"), message="participant_waiting")
    await ok(host, {"type": "admit", "participant_id": guest.participant_id})
    await wait_until(lambda: guest.has("admitted"), message="admitted")
    await guest.publish(_video(), SineAudioTrack(500, amplitude=0.0))
    assert (await late.connect())["state"] == "waiting"
    await ok(host, {"type": "deny", "participant_id": late.participant_id, "reason": "later"})
    await wait_until(lambda: late.has("denied"), message="denied")
    assert (await leaver.connect())["state"] == "waiting"
    await ok(leaver, {"type": "leave"})
    await wait_until(lambda: host.has("waiting_left", reason="left"), message="waiting_left")

    # Receiving and preferences.
    await wait_until(lambda: len(guest.received) == 2, message="the guest receives the host")
    host_video = next(t["track_id"] for t in host.published if t["kind"] == "video")
    host_audio = next(t["track_id"] for t in host.published if t["kind"] == "audio")
    await ok(guest, {"type": "set_preferences", "track_id": host_video, "disabled": True,
                     "max_width": 320, "max_height": 240, "max_fps": 15})
    await ok(guest, {"type": "unsubscribe", "track_id": host_video})
    await ok(guest, {"type": "subscribe", "track_id": host_video})
    if ADAPTIVE:
        await ok(guest, {"type": "set_preferences", "track_id": host_video, "pinned": True})
        await ok(guest, {"type": "set_bandwidth", "audio_only": False, "max_bitrate": 2_000_000})
        # A simulcast publisher is told which layers to send (publisher_layers), and its
        # subscribers how their stream goes (stream_state).
        assert SimulcastPublisher is not None and simulcaster is not None
        assert (await simulcaster.connect())["state"] == "waiting"
        await ok(host, {"type": "admit", "participant_id": simulcaster.participant_id})
        sim = SimulcastPublisher(simulcaster)
        assert (await sim.start())["type"] == "publish_answer"
        try:
            await wait_until(lambda: simulcaster.has("publisher_layers")
                             and guest.has("stream_state"),
                             timeout=20, message="publisher_layers and stream_state")
        finally:
            await sim.stop()

    # Mute, host controls.
    guest_audio = next(t["track_id"] for t in guest.published if t["kind"] == "audio")
    await ok(host, {"type": "mute_participant", "participant_id": guest.participant_id,
                    "muted": True})
    await ok(host, {"type": "mute_participant", "participant_id": guest.participant_id,
                    "muted": False})
    await wait_until(lambda: guest.has("unmute_requested"), message="unmute_requested")
    await ok(guest, {"type": "mute", "track_id": guest_audio, "muted": False})
    await wait_until(lambda: host.has("track_unmuted"), message="track_unmuted")
    await ok(host, {"type": "lock_room", "locked": True})
    await ok(host, {"type": "lock_room", "locked": False})

    # Recording with consent.
    await ok(host, {"type": "record_start"}, "recording_state")
    await wait_until(lambda: guest.has("consent_request"), message="consent_request")
    await ok(guest, {"type": "consent", "granted": True}, "recording_state")
    await ok(guest, {"type": "consent_withdraw"}, "recording_state")
    await ok(host, {"type": "record_stop"}, "recording_state")

    # Quality and speakers need some media time.
    await wait_until(lambda: host.has("connection_quality") and host.has("speakers_changed"),
                     timeout=20, message="connection_quality and speakers_changed")
    await wait_until(lambda: _has_stats(host), timeout=10, message="stats")

    # Resume on a new socket, then new media connections.
    await guest.kill_socket()
    room = server.rooms.rooms["schemas"]
    await wait_until(lambda: room.participants[guest.participant_id].state == DISCONNECTED,
                     message="the guest's socket dropped")
    assert (await guest.resume())["type"] == "resumed"
    await guest.reconnect_media(_video(), SineAudioTrack(500, amplitude=0.0))

    # Errors: validation, and a refusal while handling a valid message.
    await guest.send_raw("{not json")
    await wait_until(lambda: guest.has("error", code="bad_json"), message="bad_json")
    err = await guest.request({"type": "unpublish", "track_id": "TR_nope"})
    assert err["code"] == "track_not_found"

    # Leaving tracks and people, and the end.
    await ok(host, {"type": "unpublish", "track_id": host_audio})
    await wait_until(lambda: guest.has("track_unpublished"), message="track_unpublished")
    await ok(host, {"type": "subscriber_restart"})
    await ok(host, {"type": "remove_participant", "participant_id": guest.participant_id})
    await wait_until(lambda: host.has("participant_left"), message="participant_left")
    await ok(host, {"type": "end_room"})
    await wait_until(lambda: host.has("removed", reason="room_ended"), message="room ended")


def _has_stats(c: RecordingClient) -> Any:
    async def ask() -> bool:
        reply = await c.request({"type": "get_stats"})
        return "tracks" in reply
    return ask()


def test_every_schema_is_linked_from_the_protocol_reference():
    doc = (SCHEMAS.parent / "protocol.md").read_text()
    for direction, schemas in (("client", CLIENT), ("server", SERVER)):
        for mtype in schemas:
            if mtype in CLUSTER_ONLY and f"### `{mtype}`" not in doc:
                continue  # its section comes with the cluster work (main), then it is linked
            assert f"(schemas/{direction}/{mtype}.json)" in doc, (direction, mtype)


def test_every_message_in_the_protocol_reference_has_a_schema():
    doc = (SCHEMAS.parent / "protocol.md").read_text()
    client_part = doc.split("## Client-to-server messages")[1].split("\n## ")[0]
    server_part = doc.split("## Server-to-client replies and events")[1].split("\n## ")[0]
    for direction, part, schemas in (("client", client_part, CLIENT),
                                     ("server", server_part, SERVER)):
        for heading in re.findall(r"^### (.+)$", part, flags=re.M):
            for mtype in re.findall(r"`([a-z_]+)`", heading):
                assert mtype in schemas, (direction, mtype)
