"""Connection quality from measured facts: clean, impaired and recovered links, and reports."""

from __future__ import annotations

import asyncio
import random
import time

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from loadtest.client import SignalClient
from loadtest.media import SineAudioTrack, SyntheticVideoTrack
from loadtest.shaped import net_gap, watch_stalls
from mediaserver.sfu import aiortc_adapter
from tests.conftest import wait_until


def _level(client: SignalClient, participant_id: str) -> str | None:
    level = None
    for e in client.events:
        if e["type"] == "connection_quality":
            for u in e["updates"]:
                if u["participant_id"] == participant_id:
                    level = u["level"]
    return level


class Impairment:
    """Loss on the viewer's incoming path (a lossy relay in front of its socket)."""

    def __init__(self) -> None:
        self.loss = 0.0
        self.delay = 0.0
        self.rng = random.Random(7)

    def __call__(self, data: bytes) -> bool:
        is_rtp = len(data) > 1 and 128 <= data[0] < 192 and not 192 <= data[1] <= 223
        return is_rtp and self.rng.random() < self.loss


async def test_quality_is_excellent_when_clean_poor_under_loss_and_recovers(server):
    impairment = Impairment()
    pub = SignalClient(server.ws_url, server.token("quality", "pub", role="host"))
    viewer = SignalClient(server.ws_url, server.token("quality", "viewer"))

    def impair(pc) -> None:
        aiortc_adapter.drop_incoming(pc, impairment)
        aiortc_adapter.delay_incoming(pc, lambda _data: impairment.delay)

    viewer.on_subscriber_pc = impair
    stalls: list[tuple[float, float]] = []
    watcher = asyncio.ensure_future(watch_stalls(stalls))
    try:
        await pub.connect()
        await viewer.connect()
        await pub.publish(SyntheticVideoTrack((80, 160, 240), width=160, height=120, fps=15),
                          SineAudioTrack(440))
        await viewer.publish(SineAudioTrack(660))
        await wait_until(lambda: _level(viewer, viewer.participant_id) == "excellent"
                         and _level(pub, pub.participant_id) == "excellent",
                         timeout=30, message="a clean loopback call scores excellent")
        # The viewer also hears about the publisher's quality (it sees the publisher).
        assert _level(viewer, pub.participant_id) == "excellent"
        # Operators see the same through Prometheus.
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/metrics") as r:
                families = {f.name: f for f in text_string_to_metric_families(await r.text())}
        levels = {s.labels["level"]: s.value for s in
                  families["mediaserver_quality_level_participants"].samples}
        assert levels["excellent"] >= 2
        joins = [s for s in families["mediaserver_join_to_first_packet_seconds"].samples
                 if s.name.endswith("_count")]
        assert joins and joins[0].value >= 1

        impairment.loss = 0.10
        started, started_wall = time.monotonic(), time.time()
        await wait_until(lambda: _level(viewer, viewer.participant_id) == "poor", timeout=30,
                         message="10 % loss on the viewer's downlink reads poor")
        lag = time.monotonic() - started
        # Less the time this process (server and both clients) did not run at all.
        running = net_gap(started_wall, time.time(), stalls)
        room = server.rooms.rooms.get("quality")
        q = room.quality.get(viewer.participant_id or "") if room else None
        windows = max((sum(1 for t, _, _ in tr.history if t >= started)
                       for tr in q.trackers.values()), default=0) if q else 0
        print(f"\n10 % loss read as poor after {lag:.1f} s ({running:.1f} s running, "
              f"{windows} quality windows; stalls {stalls})")
        # Windows are 1 s and receiver reports come every 0.5-1.5 s.
        # Measured 5.9-6.9 s on an idle machine (1 s windows plus the RR cadence); the bound
        # is loose because CI shares two cores with everything else (a CI run once took
        # 15.0 s: the stall watcher now tells whether the process was starved meanwhile).
        assert running < 15.0, (lag, running, windows, stalls)
        assert _level(pub, pub.participant_id) == "excellent"  # the publisher is fine
        stats = await viewer.request({"type": "get_stats"})
        downlinks = [t for k, t in stats["tracks"].items() if k.endswith(":downlink")
                     and t["packets_expected"] > 20]
        assert downlinks
        for t in downlinks:
            assert 0.03 <= t["loss"] <= 0.2, stats  # 10 % applied, within the window's noise

        impairment.loss = 0.0
        started = time.monotonic()
        await wait_until(lambda: _level(viewer, viewer.participant_id) in ("excellent", "good"),
                         timeout=30, message="quality recovers once the loss stops")
        print(f"recovered after {time.monotonic() - started:.1f} s")

        # 200 ms more one-way delay on the viewer's incoming path: the RTT the SFU measures
        # from its sender reports grows by about that much.
        async def rtt() -> float | None:
            stats = await viewer.request({"type": "get_stats"})
            values = [t["rtt"] for k, t in stats["tracks"].items()
                      if k.endswith(":downlink") and t["rtt"] is not None]
            return max(values) if values else None

        base = await wait_until(rtt, timeout=10, message="an RTT measurement")
        impairment.delay = 0.2

        async def grown() -> bool:
            value = await rtt()
            return value is not None and value > base + 0.15

        await wait_until(grown, timeout=30, message="RTT reflects the added delay")
        measured = await rtt()
        # 200 ms added; event-loop delays on a busy machine only add to it.
        assert measured is not None and 0.15 <= measured - base <= 0.45, (base, measured)
        impairment.delay = 0.0

        auth = {"Authorization": f"Bearer {server.admin_token()}"}
        async with aiohttp.ClientSession(headers=auth) as http:
            async with http.get(f"{server.url}/v1/rooms/quality/report") as r:
                assert r.status == 200
                report = await r.json()
        by_identity = {p["identity"]: p for p in report["participants"]}
        v = by_identity["viewer"]
        assert v["seconds_in_level"].get("poor", 0) > 0
        assert v["probable_cause"] == "downlink_loss"
        assert v["timeline"] and {"t", "score", "level"} <= set(v["timeline"][0])
        assert "pub" in by_identity
    finally:
        watcher.cancel()
        await pub.close()
        await viewer.close()
