"""Bandwidth adaptation on a real constrained link: a network namespace shaped with tc tbf.

The scenario runner (loadtest/adaptation.py, also a CLI) puts one subscriber behind the
shaped link while a simulcast publisher and another subscriber stay on loopback.
"""

from __future__ import annotations

import json

import pytest

from loadtest import shaped
from loadtest.adaptation import SCENARIOS, run
from tests.conftest import start_server

REASON = shaped.available()


@pytest.mark.skipif(REASON is not None, reason=f"shaped links unavailable: {REASON}")
async def test_subscriber_capped_at_250_kbps_keeps_audio_and_the_low_layer():
    print(f"\nshaped-link test runs: {REASON or 'namespaces available'}")
    with shaped.ShapedLink() as link:
        async with start_server(host="0.0.0.0", bind_host=link.host_ip) as server:
            tokens = {k: server.token("shaped", k, kind="group")
                      for k in ("publisher", "viewer", "constrained")}
            url = server.ws_url
            summary = await run(url, tokens, SCENARIOS["cap250"], link.host_ip, link)
    print(json.dumps(summary))
    (phase,) = summary["phases"]
    # Audio first: it stays clean on the capped link.
    assert summary["audio_loss_pct"] < 2.0, summary
    # The capped subscriber never gets a layer its link cannot carry once settled...
    assert set(phase["widths"]) <= {160}, summary
    # ...and the others in the room are unaffected: top layer at full frame rate.
    viewer = summary["unconstrained_viewer"]
    assert viewer["widths_last_10s"] == [640] and viewer["fps_last_10s"] >= 12, summary
