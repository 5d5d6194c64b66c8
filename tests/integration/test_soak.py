"""The short soak CI runs: join/leave cycles through the load-test CLI, then the node's
memory, open descriptors and asyncio tasks must be back at their baseline.

The long run (30 minutes, flat RSS slope of at most 100 kB per cycle) is in
docs/benchmarks.md; here 20 cycles with a looser slope catch a leaked peer connection or
task per session (those show up exactly in fds and tasks) in well under a minute.
"""

from __future__ import annotations

import json

from tests.conftest import start_server
from tests.integration.test_loadtest import run_cli


async def test_twenty_join_leave_cycles_leave_the_node_as_they_found_it(tmp_path):
    report = tmp_path / "soak.json"
    async with start_server(room_empty_timeout="0") as server:
        code, out, err = await run_cli(
            "--url", server.ws_url, "--soak-cycles", "20", "--participants-per-room", "2",
            "--soak-hold", "0.5", "--soak-warmup", "10", "--soak-max-rss-slope", "400",
            "--json", str(report), timeout=90)
        assert server.rooms.rooms == {}
    doc = json.loads(report.read_text())
    assert code == 0, out + err
    assert doc["passed"] and doc["error"] is None, doc["failures"]
    summary = doc["summary"]
    assert summary["cycles"] == 20
    assert summary["end"]["tasks"] <= summary["baseline"]["tasks"] + 2
    assert summary["end"]["fds"] <= summary["baseline"]["fds"] + 4
    assert "result: PASS" in out
