"""Simulcast through the real server: layers told apart, switched per subscriber, capped by
preferences and by the subscriber's own choices, and unwanted layers turned off upstream."""

from __future__ import annotations

import asyncio
import re
import time

from loadtest.client import SignalClient
from loadtest.media import SineAudioTrack
from loadtest.simulcast import SimulcastPublisher, scaled_layers
from tests.conftest import wait_until


async def _call(server, room: str, *viewers: str):
    pub = SignalClient(server.ws_url, server.token(room, "pub", kind="group"))
    assert (await pub.connect())["type"] == "joined"
    sim = await asyncio.to_thread(SimulcastPublisher, pub)  # encoding would lag the loop
    reply = await sim.start()
    assert reply["type"] == "publish_answer", reply
    subs = [SignalClient(server.ws_url, server.token(room, v, kind="group")) for v in viewers]
    for s in subs:
        assert (await s.connect())["type"] == "joined"
    return pub, sim, subs


def _video(sub: SignalClient, pub: SignalClient):
    tracks = sub.tracks_from(pub.participant_id, "video")
    return tracks[0] if tracks else None


def _recent_widths(sub: SignalClient, pub: SignalClient, seconds: float = 1.5) -> set[int]:
    rec = _video(sub, pub)
    return set(rec.widths_since(time.monotonic() - seconds)) if rec else set()


async def test_server_tells_layers_apart_and_measures_them(server):
    pub, sim, subs = await _call(server, "sim-layers", "viewer")
    try:
        assert sim.answered_simulcast  # the answer carried a=simulcast:recv and the rid ext
        room = server.rooms.rooms["sim-layers"]
        producer = next(p for p in room.by_identity("pub").producers.values() if p.is_video)
        assert [s.rid for s in producer.streams] == ["q", "h", "f"]

        def measured() -> bool:
            return all(s.bitrate > 0 and s.fps > 10 and s.width for s in producer.streams)

        await wait_until(measured, timeout=30, message="three layers measured")
        assert [s.width for s in producer.streams] == [160, 320, 640]
        assert producer.streams[0].bitrate < producer.streams[1].bitrate \
            < producer.streams[2].bitrate
        assert len({s.ssrc for s in producer.streams}) == 3
    finally:
        await sim.stop()
        await asyncio.gather(pub.close(), *(s.close() for s in subs))


async def test_unconstrained_subscriber_climbs_to_the_top_layer_seamlessly(server):
    pub, sim, (viewer,) = await _call(server, "sim-climb", "viewer")
    try:
        await wait_until(lambda: 640 in _recent_widths(viewer, pub), timeout=40,
                         message="the top layer reaches an unconstrained subscriber")
        rec = _video(viewer, pub)
        assert rec is not None
        widths = [w for _, w in rec.arrivals]
        # It started low and went up, never showing a corrupted frame (every frame decoded
        # at a layer's size), with the frame numbers continuing through each switch.
        assert widths[0] in (160, 320) and set(widths) <= {160, 320, 640}
        states = [e for e in viewer.events if e["type"] == "stream_state"]
        assert states and states[-1]["state"] == "active" and states[-1]["width"] == 640
        start = time.monotonic()
        await wait_until(lambda: len(rec.widths_since(start)) >= 4 * 10, timeout=10,
                         message="40 more frames")
        # At least 10 fps (15 are sent), nearly all at the top layer (a loaded CI machine's
        # scheduling jitter can look like overuse to the receiver's delay detector).
        assert time.monotonic() - start <= 4.05
        tail = rec.widths_since(start)
        sub = server.rooms.rooms["sim-climb"].by_identity("viewer").subscriber
        history = list(sub.adaptation.estimator.history)
        assert tail.count(640) >= 0.75 * len(tail), (tail, history)
    finally:
        await sim.stop()
        await asyncio.gather(pub.close(), viewer.close())


async def test_preferences_cap_the_layer_and_unused_layers_stop_upstream(server):
    pub, sim, (small, big) = await _call(server, "sim-prefs", "small", "big")
    try:
        track_id = sim.track_id
        reply = await small.request({"type": "set_preferences", "track_id": track_id,
                                     "max_width": 160, "max_height": 120})
        assert reply["type"] == "ack", reply
        await wait_until(lambda: 640 in _recent_widths(big, pub), timeout=40,
                         message="the unconstrained viewer at the top layer")
        await wait_until(lambda: _recent_widths(small, pub) == {160}, timeout=20,
                         message="the small viewer held to the 160-wide layer")
        # Nobody wants the middle layer for long: the publisher is told to stop it.
        await wait_until(lambda: any(e["type"] == "publisher_layers" and
                                     e["active"] == ["q", "f"] for e in pub.events),
                         timeout=30, message="publisher_layers without the middle layer")
        await wait_until(lambda: not sim.layers[1].active, timeout=5)
        # The big viewer leaves; only the small one remains: the top layer stops too.
        await big.close()
        await wait_until(lambda: any(e["type"] == "publisher_layers" and e["active"] == ["q"]
                                     for e in pub.events), timeout=30,
                         message="publisher_layers with only the low layer")
        assert _recent_widths(small, pub) == {160}
    finally:
        await sim.stop()
        await asyncio.gather(pub.close(), small.close())


async def test_audio_only_by_choice_pauses_video_and_keeps_audio(server):
    pub, sim, (viewer,) = await _call(server, "sim-audio", "viewer")
    try:
        await wait_until(lambda: _video(viewer, pub) is not None and _video(viewer, pub).frames
                         > 5, timeout=30, message="video before audio-only")
        reply = await viewer.request({"type": "set_bandwidth", "audio_only": True})
        assert reply["type"] == "ack", reply
        await viewer.wait_event(lambda e: e["type"] == "stream_state" and
                                e["state"] == "paused" and e["track_id"] == sim.track_id,
                                timeout=10)
        start = time.monotonic()
        paused_at = start + 1.0  # frames already on their way may still land in this second
        (audio,) = viewer.tracks_from(pub.participant_id, "audio")
        audio_before = audio.frames
        # Measured on the audio's own clock: 4 s of Opus (50 frames/s) while video is paused.
        await wait_until(lambda: audio.frames - audio_before >= 4 * 50, timeout=10,
                         message="four seconds of audio while video is paused")
        assert time.monotonic() - start <= 5.0  # audio kept flowing (>= 40 frames/s)
        assert _video(viewer, pub).widths_since(paused_at) == []
        await viewer.request({"type": "set_bandwidth", "audio_only": False})
        await wait_until(lambda: _recent_widths(viewer, pub), timeout=20,
                         message="video back after audio-only is turned off")
    finally:
        await sim.stop()
        await asyncio.gather(pub.close(), viewer.close())


async def test_a_subscriber_that_says_its_link_is_thin_starts_with_audio_then_probes(server):
    # start_bitrate below audio + the lowest video layer: video waits for a probe (padding
    # sent before the track's first media packet) instead of flooding the link at once.
    # This link is loopback, so the probe gets through and video starts.
    pub, sim, (viewer,) = await _call(server, "sim-hint", "viewer")
    try:
        bad = await viewer.request({"type": "set_bandwidth", "start_bitrate": -1})
        assert bad["type"] == "error" and bad["code"] == "invalid_field", bad
        reply = await viewer.request({"type": "set_bandwidth", "start_bitrate": 80_000})
        assert reply["type"] == "ack", reply
        first = await viewer.wait_event(lambda e: e["type"] == "stream_state"
                                        and e["track_id"] == sim.track_id, timeout=15)
        assert (first["state"], first["reason"]) == ("paused", "audio_only"), first
        await wait_until(lambda: _video(viewer, pub) is not None
                         and _video(viewer, pub).frames > 5, timeout=40,
                         message="video after a probe showed room for it")
        (audio,) = viewer.tracks_from(pub.participant_id, "audio")
        assert audio.frames > 50
        est = server.rooms.rooms["sim-hint"].by_identity("viewer").subscriber \
            .adaptation.estimator
        history = list(est.history)
        causes = [c for _, c, _ in history]
        assert causes[0] == "start hint" and "probe ok" in causes, history
        probe_ok_at = next(t for t, c, _ in history if c == "probe ok")
        first_frame_at = _video(viewer, pub).arrivals[0][0]
        assert first_frame_at > probe_ok_at, (first_frame_at, history)
        assert est.start_hint is None
        # Measured past the word: a later subscriber connection starts as any other.
        participant = server.rooms.rooms["sim-hint"].by_identity("viewer")
        await wait_until(lambda: participant.start_bitrate is None, timeout=5,
                         message="the start hint forgotten once measured")
    finally:
        await sim.stop()
        await asyncio.gather(pub.close(), viewer.close())


async def test_a_viewer_of_two_simulcast_cameras_sees_both_from_the_start(server):
    # The load test's layers (80x60 at 36k, 160x120 at 120k, 320x240 at 300k): at the
    # start-up estimate both lowest layers fit, but not a middle one beside a lowest one.
    # The first camera once settled on its middle layer and paused the second for seconds.
    pubs, sims = [], []
    viewer = SignalClient(server.ws_url, server.token("sim-two", "viewer", kind="group"))
    try:
        for name in ("cam1", "cam2"):
            pub = SignalClient(server.ws_url, server.token("sim-two", name, kind="group"))
            pubs.append(pub)
            assert (await pub.connect())["type"] == "joined"
            sim = await asyncio.to_thread(SimulcastPublisher, pub,
                                          scaled_layers(320, 240, 300))
            sims.append(sim)
            reply = await sim.start()
            assert reply["type"] == "publish_answer", reply
        assert (await viewer.connect())["type"] == "joined"
        await wait_until(lambda: all(_video(viewer, p) and _video(viewer, p).frames > 5
                                     for p in pubs), timeout=30, message="both cameras")
        start = time.monotonic()
        await asyncio.sleep(4.0)
        frames = [len(_video(viewer, p).widths_since(start)) for p in pubs]
        paused = [e for e in viewer.events
                  if e["type"] == "stream_state" and e["state"] == "paused"]
        assert not paused, paused
        assert min(frames) >= 4 * 10, frames  # 15 fps sent; at least 10 fps each
    finally:
        for sim in sims:
            await sim.stop()
        await asyncio.gather(viewer.close(), *(p.close() for p in pubs))


async def test_opus_fec_and_dtx_are_negotiated_both_ways(server):
    pub = SignalClient(server.ws_url, server.token("opus-fec", "pub"))
    sub = SignalClient(server.ws_url, server.token("opus-fec", "sub"))
    try:
        assert (await pub.connect())["type"] == "joined"
        reply = await pub.publish(SineAudioTrack(440))
        wanted = {"useinbandfec=1", "usedtx=1"}

        def opus_params(sdp: str) -> set[str]:
            pts = re.findall(r"a=rtpmap:(\d+) opus/48000", sdp)
            lines = [x for x in sdp.splitlines() if pts and x.startswith(f"a=fmtp:{pts[0]} ")]
            return set(lines[0].split(" ", 1)[1].split(";")) if lines else set()

        assert wanted <= opus_params(reply["sdp"])  # the publisher is asked for FEC and DTX
        assert (await sub.connect())["type"] == "joined"
        offer = await sub.wait_event(lambda e: e["type"] == "subscriber_offer"
                                     and e.get("tracks"), timeout=20)
        assert wanted <= opus_params(offer["sdp"])  # and the subscriber is told it is there
        await wait_until(lambda: sum(r.frames for r in sub.received.values()) > 20,
                         timeout=20, message="audio through")
    finally:
        await asyncio.gather(pub.close(), sub.close())
