"""A node of two worker processes behind one port: `mediaserver serve --dev --workers 2`.

Real processes, real aiortc peers on loopback: rooms land on different workers, media flows
straight to a room's worker while signalling goes through the front, the admin API and
/metrics answer for the whole node, a killed worker comes back while the other worker's room
carries on, and SIGTERM, SIGUSR1 and a dead front reach every worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadtest.client import SignalClient
from loadtest.media import SineAudioTrack, SyntheticVideoTrack
from tests.cluster import conftest as cluster
from tests.cluster.conftest import ADMIN, free_port, media_flows
from tests.conftest import admin_token, start_server, token, wait_until

SHUTDOWN_TIMEOUT = 5
DISPLAY_NAME = "Ann Example-Person"  # must never reach the log


class Node(cluster.Node):
    """A whole node (the front's port) of ``mediaserver serve --workers 2``."""

    async def call(self, method: str, path: str, headers: dict[str, str] | None = None,
                   **kw: Any) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http, http.request(
                method, self.url + path, headers=ADMIN if headers is None else headers,
                **kw) as r:
            return r.status, await r.json(content_type=None)

    async def node(self) -> dict[str, Any]:
        status, body = await self.call("GET", "/v1/node")
        assert status == 200, body
        return dict(body)

    async def worker_of(self, *rooms: str) -> dict[str, int]:
        """Each room's worker, once the front's polls have seen all of them."""
        async def placed() -> dict[str, int] | None:
            where = {r: w["worker"] for w in (await self.node())["workers"] for r in w["rooms"]}
            return where if set(rooms) <= set(where) else None

        where = await wait_until(placed, timeout=10, message=f"{rooms} reported by workers")
        return {room: where[room] for room in rooms}

    async def worker_pids(self) -> list[int]:
        return [w["pid"] for w in (await self.node())["workers"]]

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start(tmp_path: Path, *extra: str) -> Node:
    port, udp = free_port(), random.randrange(50000, 59000)
    log = tmp_path / f"node-{port}.log"
    cmd = [sys.executable, "-m", "mediaserver", "serve", "--dev", "--workers", "2",
           "--host", "127.0.0.1", "--port", str(port), "--bind-host", "127.0.0.1",
           "--udp-port-range", f"{udp}-{udp + 300}", "--shutdown-timeout",
           str(SHUTDOWN_TIMEOUT), *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                cwd=Path(__file__).parents[2])
    return Node("node", port, proc, log)


async def ready(node: Node) -> None:
    async def both_workers_ready() -> bool:
        if node.proc.poll() is not None:
            raise AssertionError(f"the node exited:\n{node.output()[-3000:]}")
        with contextlib.suppress(aiohttp.ClientError, OSError):
            status, body = await node.call("GET", "/readyz", headers={})
            return status == 200 and body["workers_ready"] == 2
        return False

    await wait_until(both_workers_ready, timeout=30, interval=0.1, message="2 workers ready")


def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting for a parent that will never reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


async def exited(node: Node, timeout: float) -> int | None:
    """The node's exit status, waiting without blocking the clients in this process."""
    await wait_until(lambda: node.proc.poll() is not None, timeout=timeout,
                     message="the node exited")
    return node.proc.returncode


def stop(node: Node) -> None:
    if node.proc.poll() is None:
        node.proc.kill()
        node.proc.wait(10)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One node for the tests that leave it running; the last of them kills its front."""
    node = start(tmp_path_factory.mktemp("workers"))
    try:
        yield node
    finally:
        stop(node)


@pytest.fixture
async def node(shared: Node) -> AsyncIterator[Node]:
    await ready(shared)
    yield shared


@pytest.fixture
async def own_node(tmp_path: Path) -> AsyncIterator[Node]:
    node = start(tmp_path)
    try:
        await ready(node)
        yield node
    finally:
        stop(node)


def _frames(c: SignalClient, other: SignalClient, kind: str) -> int:
    assert other.participant_id is not None
    return sum(t.frames for t in c.tracks_from(other.participant_id, kind))


async def _joined(*clients: SignalClient) -> None:
    for c in clients:
        reply = await c.connect()
        assert reply["type"] == "joined", reply


BAD_FIRST_MESSAGES: list[tuple[str, str | bytes]] = [
    ("garbage", "this is not json"),
    ("binary garbage", b"\xff\xfe"),
    ("a list", "[1, 2]"),
    ("no type", '{"id": 1}'),
    ("unknown type", '{"type": "hello", "id": 2}'),
    ("before join", '{"type": "publish_offer", "sdp": "v=0", "id": 3}'),
    ("join without token", '{"type": "join", "id": 4}'),
    ("token garbage", '{"type": "join", "token": "garbage", "id": 5}'),
    ("admin token: no room", json.dumps({"type": "join", "token": admin_token(), "id": 6})),
    ("room differs", json.dumps({"type": "join", "token": token("r1", "u1"), "room": "r2",
                                 "id": 7})),
    ("protocol 2", json.dumps({"type": "resume", "token": token("r1", "u1"), "protocol": 2,
                               "participant_id": "p", "resume_token": "t", "id": 8})),
    ("oversized", json.dumps({"type": "join", "token": "x" * 70000})),
    ("ping", '{"type": "ping", "id": 9, "timestamp": 5}'),
]


async def _replies(url: str) -> list[dict[str, Any]]:
    """What a server answers to BAD_FIRST_MESSAGES on one socket, then to a valid join."""
    out = []
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        for _, raw in BAD_FIRST_MESSAGES:
            await (ws.send_str(raw) if isinstance(raw, str) else ws.send_bytes(raw))
            out.append(await ws.receive_json(timeout=10))
        await ws.send_json({"type": "join", "token": token(f"r-{random.random()}", "u"),
                            "id": 10})
        out.append(await ws.receive_json(timeout=10))
    return out


async def test_bad_first_messages_get_the_answers_a_single_node_gives(node: Node) -> None:
    async with start_server() as single:
        expected = await _replies(single.ws_url)
    got = await _replies(node.ws_url)
    assert [r["type"] for r in got[-1:]] == ["joined"]  # the socket survived every error
    for (name, _), want, have in zip(BAD_FIRST_MESSAGES, expected, got, strict=False):
        assert (have.get("code"), have.get("message"), have.get("id")) == (
            want.get("code"), want.get("message"), want.get("id")), name
    # Twenty invalid messages close the socket (1008); an oversized frame too (1009).
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(node.ws_url) as ws:
            for _ in range(20):
                await ws.send_str("{")
            while (await ws.receive(timeout=10)).type == aiohttp.WSMsgType.TEXT:
                pass  # the 20 errors
            assert ws.close_code == 1008
        async with http.ws_connect(node.ws_url) as ws:
            await ws.send_str("x" * (4 * 65536 + 1))
            assert (await ws.receive(timeout=10)).type in (aiohttp.WSMsgType.CLOSE,
                                                          aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == 1009
    assert node.proc.poll() is None


async def test_rooms_spread_over_workers_and_the_node_answers_as_one(node: Node) -> None:
    therapist = SignalClient(node.ws_url, token("room-a", "t1", role="host", name=DISPLAY_NAME))
    client = SignalClient(node.ws_url, token("room-a", "c1"))
    other = SignalClient(node.ws_url, token("room-b", "o1"))
    clients = [therapist, client, other]
    try:
        await _joined(*clients)
        where = await node.worker_of("room-a", "room-b")
        assert where["room-a"] != where["room-b"], where  # a new room goes to the idle worker

        # Media straight to room-a's worker, signalling through the one port.
        await therapist.publish(SyntheticVideoTrack((200, 40, 40), width=160, height=120,
                                                    fps=10), SineAudioTrack(440))
        await client.publish(SineAudioTrack(880))
        await media_flows(therapist, client, more=25, kind="audio")
        await wait_until(lambda: _frames(client, therapist, "video") >= 10, timeout=30,
                         message="video from the therapist")

        # The admin API for the whole node, each call where its room is.
        status, listed = await node.call("GET", "/v1/rooms")
        assert status == 200
        assert {r["room"]: r["worker"] for r in listed["rooms"] if r["room"] in where} == where
        status, room = await node.call("GET", "/v1/rooms/room-a")
        assert (status, len(room["participants"])) == (200, 2)
        status, created = await node.call("POST", "/v1/rooms",
                                          json={"room": "room-c", "kind": "group"})
        assert (status, created["room"]) == (201, "room-c")
        status, again = await node.call("POST", "/v1/rooms", json={"room": "room-c"})
        assert (status, again["code"]) == (409, "room_exists")
        assert (await node.call("DELETE", "/v1/rooms/room-c"))[0] == 200
        status, body = await node.call("DELETE", "/v1/rooms/room-b/participants/o1")
        assert (status, body) == (200, {"removed": True})
        removed = await other.wait_event(lambda e: e["type"] == "removed")
        assert removed["reason"] == "removed_by_admin"
        assert (await node.call("GET", "/v1/rooms/nope"))[1]["code"] == "room_not_found"
        assert (await node.call("GET", "/v1/rooms", headers={}))[0] == 401
        one_room = {"Authorization": f"Bearer {token('room-a', 'b', grants=None)}"}
        assert (await node.call("GET", "/v1/node", headers=one_room))[0] == 403
        assert (await node.call("POST", "/v1/node/drain", headers={}))[0] == 401
        assert (await node.call("GET", "/readyz", headers={}))[0] == 200  # nothing drained
        status, report = await node.call("GET", "/v1/rooms/room-b/report")
        assert status == 200 and report["room"] == "room-b"

        # /metrics: every worker's and the front's, one family each, labelled by worker.
        async with aiohttp.ClientSession() as http, http.get(node.url + "/metrics") as r:
            assert r.status == 200
            text = await r.text()
        types = [line for line in text.splitlines() if line.startswith("# TYPE")]
        assert len(types) == len(set(types))
        families = {f.name: f for f in text_string_to_metric_families(text)}
        labels = {s.labels.get("worker") for f in families.values() for s in f.samples}
        assert labels == {"0", "1", "front"}
        sent = {s.labels["worker"]: s.value for s in families["mediaserver_rtp_packets"].samples
                if s.name == "mediaserver_rtp_packets_total" and s.labels["direction"] == "out"}
        assert sent[str(where["room-a"])] > 0
        ready = [s.value for s in families["mediaserver_workers"].samples
                 if s.labels["state"] == "ready"]
        assert ready == [2]
    finally:
        for c in clients:
            await c.close()
    log = node.output()
    assert DISPLAY_NAME not in log and therapist.token not in log and "eyJ" not in log


async def test_a_killed_worker_comes_back_and_the_other_room_carries_on(own_node: Node
                                                                         ) -> None:
    node = own_node
    calm = [SignalClient(node.ws_url, token("calm", f"c{i}")) for i in range(2)]
    doomed = [SignalClient(node.ws_url, token("doomed", f"d{i}")) for i in range(2)]
    clients = [*calm, *doomed]
    try:
        await _joined(*clients)
        for i, c in enumerate(clients):
            await c.publish(SineAudioTrack(300 + 100 * i))
        await media_flows(*calm)
        await media_flows(*doomed)
        where = await node.worker_of("calm", "doomed")
        assert where["calm"] != where["doomed"]
        pids = await node.worker_pids()
        victim = where["doomed"]
        os.kill(pids[victim], signal.SIGKILL)

        # Its clients' sockets are closed (1012: service restart), not left hanging.
        await wait_until(lambda: all(c.ws is not None and c.ws.closed for c in doomed),
                         timeout=10, message="the dead worker's sockets closed")
        assert [c.ws.close_code for c in doomed if c.ws is not None] == [1012, 1012]

        async def restarted() -> bool:
            w = (await node.node())["workers"][victim]
            return bool(w["restarts"] == 1 and w["state"] == "ready"
                        and w["pid"] not in (None, pids[victim]))

        started = time.monotonic()
        await wait_until(restarted, timeout=20, interval=0.1, message="the worker restarted")
        print(f"worker back {time.monotonic() - started:.1f}s after the kill")
        assert (await node.worker_pids())[where["calm"]] == pids[where["calm"]]

        # The other room never noticed: its media and its signalling go on.
        await media_flows(*calm, more=50)
        assert (await calm[0].request({"type": "ping"}))["type"] == "pong"
        assert not any(c.ws is None or c.ws.closed for c in calm)

        # The dead room's people come back: their room died with its worker, so a resume
        # says to join again, and the join works.
        reply = await doomed[0].resume()
        assert (reply["type"], reply.get("code")) == ("error", "resume_failed"), reply
        back = SignalClient(node.ws_url, token("doomed", "d0"))
        clients.append(back)
        await _joined(back)

        # SIGTERM reaches every worker: clients are told, the node exits 0, nothing remains.
        pids = await node.worker_pids()
        node.proc.send_signal(signal.SIGTERM)
        for c in (*calm, back):
            removed = await c.wait_event(lambda e: e["type"] == "removed", timeout=10)
            assert removed["reason"] == "server_shutdown"
        assert await exited(node, SHUTDOWN_TIMEOUT + 3) == 0
        assert not any(alive(pid) for pid in pids)
    finally:
        for c in clients:
            await c.close()
    assert f"worker {victim} killed by SIGKILL; starting it again" in node.output()


async def test_drain_reaches_every_worker_and_the_node_exits_when_empty(own_node: Node
                                                                        ) -> None:
    node = own_node
    host = SignalClient(node.ws_url, token("stays", "h1", role="host"))
    guest = SignalClient(node.ws_url, token("stays", "g1"))
    newcomer = SignalClient(node.ws_url, token("fresh", "n1"))
    try:
        await _joined(host)
        pids = await node.worker_pids()
        node.proc.send_signal(signal.SIGUSR1)

        async def not_ready() -> bool:
            return (await node.call("GET", "/readyz", headers={}))[0] == 503

        await wait_until(not_ready, timeout=5, message="readyz 503 while draining")
        reply = await newcomer.connect()
        assert (reply["type"], reply["code"]) == ("error", "node_draining"), reply
        await _joined(guest)  # the running session still takes its people
        assert (await node.node())["draining"] is True
        for c in (host, guest):
            await c.request({"type": "leave"})
        assert await exited(node, 15) == 0  # every worker empty, drained and gone
        assert not any(alive(pid) for pid in pids)
    finally:
        for c in (host, guest, newcomer):
            await c.close()


async def test_workers_of_a_killed_front_stop_by_themselves(node: Node) -> None:
    """Runs last on the shared node: kill -9 of the front leaves no worker behind."""
    pids = await node.worker_pids()
    node.proc.kill()
    await exited(node, 10)
    await wait_until(lambda: not any(alive(pid) for pid in pids), timeout=15,
                     message="the workers exited after their front")
    runtime = re.search(r"listening on (\S+)/worker-0\.sock", node.output())
    assert runtime is not None
    await wait_until(lambda: not os.path.exists(runtime.group(1)), timeout=5,
                     message="the front's private directory removed by its last worker")
