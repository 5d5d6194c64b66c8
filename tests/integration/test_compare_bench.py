"""bench/compare.py for a 1:1 call against a real Janus process and the decoding relay:
each runs as its own process, the load-test CLI drives real aiortc participants against it,
and every subscriber must receive every track of the other during the window; and ours and
Janus measured together (``--together``).

Janus comes from Debian's ``janus`` package (``.ci/run`` installs it when missing); without
it the Janus half is skipped here, not in CI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import compare, servers

WINDOW = "3"


def _run(tmp_path: Path, target: str) -> dict:
    out = tmp_path / f"{target}.json"
    code = compare.main(["--configs", "2", "--targets", target, "--window", WINDOW,
                         "--warmup", "1", "--log-dir", str(tmp_path), "--json", str(out),
                         "--wake-seconds", "1"])
    doc = json.loads(out.read_text())
    # The machine's wake-up gauge, before and after the run: a lone datagram's CPU.
    assert len(doc["wakeup_us"]) == 2, doc["wakeup_us"]  # None: the datagrams did not arrive
    assert all(us is not None and 0 < us < 10_000 for us in doc["wakeup_us"]), doc["wakeup_us"]
    (result,) = doc["results"]
    assert code == 0 and "error" not in result, result.get("error")
    return result


def _every_track_arrived(result: dict) -> None:
    subs = result["subscriptions"]
    assert sorted((s["subscriber"], s["publisher"], s["kind"]) for s in subs) == [
        ("p0", "p1", "audio"), ("p0", "p1", "video"),
        ("p1", "p0", "audio"), ("p1", "p0", "video")]
    for s in subs:  # ~50 audio and ~60 video packets a second, for 3 s
        assert s["media"] > 100, s
    assert result["us_per_forwarded_packet"] > 0 and result["server_cpu_s"] > 0


@pytest.mark.skipif(not servers.janus_available(),
                    reason="janus is not installed (apt-get install -y janus; .ci/run does)")
def test_janus_one_to_one_every_track_arrives(tmp_path: Path) -> None:
    result = _run(tmp_path, "janus")
    _every_track_arrived(result)
    assert result["loss"] is not None and result["loss"] < 0.01
    # Janus forwards what it receives: as many packets out as in, 1:1
    assert result["forwarded_per_s"] == pytest.approx(result["packets_in_per_s"], rel=0.1)


def test_relay_one_to_one_every_track_arrives(tmp_path: Path) -> None:
    result = _run(tmp_path, "relay")
    _every_track_arrived(result)
    assert result["video_kbps_per_subscription"] > 100  # re-encoded video, not a trickle


def test_servers_measured_together_share_their_window(tmp_path: Path) -> None:
    """--together: both servers at once, each under its own load-test CLI; each point has
    its own figures, and the two windows cover mostly the same seconds."""
    targets = ["mediaserver", "janus"] if servers.janus_available() else ["mediaserver"]
    if len(targets) == 1:
        print("janus is not installed: ours alone through the --together path")
    out = tmp_path / "together.json"
    code = compare.main(["--configs", "2", "--targets", ",".join(targets), "--together",
                         "--window", WINDOW, "--warmup", "1", "--log-dir", str(tmp_path),
                         "--json", str(out), "--wake-seconds", "0"])
    doc = json.loads(out.read_text())
    results = doc["results"]
    assert code == 0 and [r["target"] for r in results] == targets
    for r in results:
        assert "error" not in r, r.get("error")
        _every_track_arrived(r)
        assert r["together"] is True
        # the CLIs start together: their windows overlap (a join a second slower than the
        # other's shifts one window by that second)
        assert r["window_overlap"] is not None and r["window_overlap"] > 0.3, r["window_overlap"]
        assert r["wakeups_per_packet"] > 0, r  # context switches: counted exactly
        # user/system come in 10 ms ticks: a few in a 3 s window at ~2 % CPU, maybe none
        assert r["user_share"] is None or 0 <= r["user_share"] <= 1, r["user_share"]
