"""Bandwidth adaptation on a real constrained link: a network namespace shaped with tc tbf.

The scenario runner (loadtest/adaptation.py, also a CLI) puts one subscriber behind the
shaped link while a simulcast publisher (3 layers: 160x120, 320x240, 640x480 at 15 fps)
and another subscriber stay on loopback. Each test prints the runner's summary; the
figures in docs/benchmarks.md come from the CLI.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from loadtest import shaped
from loadtest.adaptation import SCENARIOS, run
from tests.conftest import start_server

REASON = shaped.available()
pytestmark = pytest.mark.skipif(REASON is not None,
                                reason=f"shaped links unavailable: {REASON}")


async def _run(name: str) -> dict[str, Any]:
    with shaped.ShapedLink() as link:
        async with start_server(host="0.0.0.0", bind_host=link.host_ip) as server:
            tokens = {k: server.token(f"shaped-{name}", k, kind="group")
                      for k in ("publisher", "viewer", "constrained")}
            room = f"shaped-{name}"
            histories: dict[str, list[Any]] = {"viewer": [], "constrained": []}

            def trace() -> None:
                # Both subscribers' estimator decisions, to tell why if a figure was off.
                r = server.rooms.rooms.get(room)
                for identity, history in histories.items():
                    p = r.by_identity(identity) if r else None
                    if p is not None and p.subscriber is not None:
                        history[:] = [(round(t, 1), c, b) for t, c, b in
                                      p.subscriber.adaptation.estimator.history]

            summary = await run(server.ws_url, tokens, SCENARIOS[name], link.host_ip, link,
                                trace=trace)
    print(f"\n{name}: {json.dumps(summary)}")
    for identity, history in histories.items():
        print(f"{identity}'s estimator: {history}")
    return summary


def _others_unaffected(summary: dict[str, Any]) -> None:
    viewer = summary["unconstrained_viewer"]
    # The top layer at full frame rate (a CPU-starved receiver on this shared machine may
    # dip for a moment; the constrained link itself never reaches the others).
    assert viewer["top_share_last_10s"] >= 0.8 and viewer["fps_last_10s"] >= 12, summary


async def test_capped_at_250_kbps_audio_stays_clean_and_the_low_layer_flows():
    summary = await _run("cap250")
    (phase,) = summary["phases"]
    # The figures: no gap over 200 ms, loss under 1 %. Probes ramp up to their goal
    # and stop at the first REMB burst or NACK, so they never fill the 200 ms tbf queue;
    # the longest gaps measured are ~50-60 ms (docs/benchmarks.md). One lost audio packet
    # alone shows as a ~320 ms gap here: aiortc's audio jitter buffer waits for 16 packets.
    # Gaps are measured while the subscriber's process ran: a CI run once saw 277 ms between
    # two audio frames with nothing lost (not reproduced here, 47-59 ms in three runs); a
    # process starved on two shared cores shows so, and says nothing of the link or server.
    # The summary lists where the subscriber's and the server's processes did not run; the
    # gap checked leaves out those times, and of the server's only those in which the
    # process used less than half the time in CPU: the machine did not run it (a CI run
    # saw the server's process stop 226 ms as the subscriber joined, a 249 ms gap with
    # nothing lost). A server whose own code holds its loop up still fails here.
    assert summary["audio_loss_pct"] < 1.0, summary
    assert phase["audio_max_gap_running_ms"] < 200, summary
    assert set(phase["widths"]) == {160}, summary  # the low layer, and only it
    assert phase["video_fps_median"] >= 12, summary  # at a steady frame rate (15 sent)
    _others_unaffected(summary)


async def test_cap_drops_mid_call_then_lifts():
    summary = await _run("drop")
    before, capped, lifted = summary["phases"]
    assert before["widths"].get(640), summary  # the top layer before the drop
    # The 3 s; measured 1.1-1.5 s by the CLI and this test (docs/benchmarks.md).
    assert capped["adapted_after_s"] is not None and capped["adapted_after_s"] <= 3.0, summary
    assert set(capped["widths"]) == {160} and capped["video_fps_median"] >= 12, summary
    assert lifted["adapted_after_s"] is not None and lifted["adapted_after_s"] <= 15, summary
    assert summary["audio_loss_pct"] < 1.0, summary
    _others_unaffected(summary)


async def test_capped_at_100_kbps_goes_audio_only_and_video_returns():
    summary = await _run("cap100")
    capped, lifted = summary["phases"]
    states = [list(s) for s in summary["stream_states"]]
    assert ["paused", "audio_only", None] in states, summary
    # Audio only within about 8 s: heavy loss is judged on two receiver reports, so at most
    # some 3 s of video reach the subscriber after the 5 s the phase figures skip.
    # (60 frames: 4 s at 15 fps; a CI machine running other suites measured 47.)
    assert sum(capped["widths"].values()) <= 60, summary
    # Audio kept flowing: 50 frames/s over the phase, less the subscriber's own join (~1-2 s)
    # and the onset's losses.
    assert capped["audio_frames"] >= 0.6 * 50 * 20, summary
    # Video is back once the cap is lifted (what the issue asks). The climb on to the top
    # layer from audio only takes 14-17 s of the 20 (docs/benchmarks.md), too close to the
    # phase's end to assert on a shared CI machine; the drop scenario checks the climb
    # back to the top layer within 15 s.
    assert sum(lifted["widths"].values()) >= 100, summary  # 5 fps or more on average
    _others_unaffected(summary)


async def test_a_client_that_says_its_link_is_thin_keeps_audio_continuous_at_100_kbps():
    # The "audio continuous" at 100 kbit/s from the first packet on. Without a word
    # from the client the first receiver reports come too late (above: ~1 % of audio lost
    # in the first seconds). Here the client says its link carries 100 kbit/s, as a phone's
    # browser can (navigator.connection): video waits for a probe, and probes from audio
    # only ramp slowly enough to stop at the first REMB, before the 200 ms queue fills.
    summary = await _run("cap100-hint")
    capped, lifted = summary["phases"]
    assert tuple(summary["stream_states"][0]) == ("paused", "audio_only", None), summary
    assert summary["audio_loss_pct"] < 1.0, summary
    # (One lost audio packet alone shows as a ~320 ms gap on aiortc's receiver.)
    assert capped["audio_max_gap_running_ms"] < 200, summary
    assert lifted["audio_max_gap_running_ms"] < 200, summary
    assert capped["audio_frames"] >= 0.85 * 50 * 20, summary  # less the join (~1 s)
    assert sum(lifted["widths"].values()) >= 100, summary  # video once the cap is lifted
    _others_unaffected(summary)


async def test_stable_link_does_not_flap():
    summary = await _run("stable")
    (phase,) = summary["phases"]
    # Climbing 160 -> 320 -> 640 turns around nowhere; a stable minute adds nothing on a
    # quiet machine. A CPU-starved receiver's REMB can dip once: one excursion down and back,
    # two turns whatever its depth (a dip to 329 kbit/s after an 82 ms stall of the server
    # took 640 -> 160 -> 320 -> 640, five switches). Flapping turns again and again.
    print(f"layer switches in {SCENARIOS['stable'].duration:.0f} s: "
          f"{summary['width_switches']}, turns: {summary['width_reversals']}")
    assert summary["width_reversals"] <= 2, summary
    assert phase["widths"].get(640, 0) >= 0.8 * sum(phase["widths"].values()), summary
