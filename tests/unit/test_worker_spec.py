"""How many workers, what each is told, and how fast a dead one comes back (tables)."""

from __future__ import annotations

import pytest

from mediaserver.config import ConfigError, build_config
from mediaserver.workers.spec import RestartBackoff, WorkerSpec, resolve_workers, worker_config

KEYS = {"MEDIASERVER_API_KEYS": "app:app-api-secret"}


@pytest.mark.parametrize(("requested", "cpus", "clustered", "expected"), [
    (0, 8, False, 8),  # auto: one per core
    (0, 1, False, 1),
    (0, 0, False, 1),  # a machine that cannot say: one
    (3, 8, False, 3),  # an explicit count wins, above or below the cores
    (16, 2, False, 16),
    (1, 8, False, 1),
    (0, 8, True, 1),  # a cluster node is one process
    (1, 8, True, 1),
])  # fmt: skip
def test_resolve_workers(requested: int, cpus: int, clustered: bool, expected: int) -> None:
    assert resolve_workers(requested, cpus, clustered) == expected


@pytest.mark.parametrize(("flags", "env", "expected"), [
    ({}, {}, 0),
    ({"workers": "auto"}, {}, 0),
    ({"workers": "AUTO"}, {}, 0),
    ({}, {"MEDIASERVER_WORKERS": "4"}, 4),
    ({"workers": "2"}, {"MEDIASERVER_WORKERS": "4"}, 2),  # the flag wins
    ({"workers": "1"}, {"MEDIASERVER_REDIS_URL": "redis://r:6379/0"}, 1),
    ({}, {"MEDIASERVER_REDIS_URL": "redis://r:6379/0"}, 0),  # auto: resolved to 1 later
])  # fmt: skip
def test_workers_setting(flags: dict[str, str], env: dict[str, str], expected: int) -> None:
    flags = {"host": "10.0.0.5", **flags}
    assert build_config(flags, {**KEYS, **env}, None).workers == expected


@pytest.mark.parametrize(("flags", "env", "message"), [
    ({"workers": "-1"}, {}, "workers: '-1' must be auto or an integer in 0..1024 (from --workers)"),
    ({}, {"MEDIASERVER_WORKERS": "many"},
     "workers: 'many' must be auto or an integer in 0..1024 (from MEDIASERVER_WORKERS)"),
    ({"workers": "2"}, {"MEDIASERVER_REDIS_URL": "redis://r:6379/0"},
     "workers: 2 cannot be combined with redis_url"),
])  # fmt: skip
def test_bad_workers_setting(flags: dict[str, str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config({"host": "10.0.0.5", **flags}, {**KEYS, **env}, None)
    assert str(err.value).startswith(message)


def test_spec_travels_as_one_line() -> None:
    spec = WorkerSpec(1, "/run/w1.sock", {"dev": True, "api_key": ["k:secret-value"]}, "/x.toml")
    line = spec.to_line()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert WorkerSpec.from_line(line) == spec


@pytest.mark.parametrize(("index", "retention"), [(0, 30), (1, 0), (5, 0)])
def test_worker_config(index: int, retention: int) -> None:
    config = build_config({"dev": True, "workers": "3", "recording_retention_days": "30",
                           "connections_per_ip": "5"}, {}, None)
    worker = worker_config(config, index)
    assert (worker.workers, worker.limits.connections_per_ip) == (1, 0)
    assert worker.recording.retention_days == retention
    assert worker.limits.max_participants == config.limits.max_participants  # per worker


@pytest.mark.parametrize(("runs", "delays"), [
    # runs: (started_at, ended_at) of consecutive processes of one worker
    ([(0, 1), (1.5, 2), (3, 3.1), (4, 4.1), (5, 5.1), (6, 6.1), (7, 7.1)],
     [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]),  # crash loop: doubling up to the limit
    ([(0, 1), (1.5, 2), (3, 100), (101, 101.2)], [0.5, 1.0, 0.5, 1.0]),  # a long run resets
    ([(0, 30)], [0.5]),
])  # fmt: skip
def test_restart_backoff(runs: list[tuple[float, float]], delays: list[float]) -> None:
    backoff = RestartBackoff(first=0.5, limit=10.0, stable_after=30.0)
    assert [backoff.delay(start, end) for start, end in runs] == delays


def test_the_front_process_never_loads_aiortc_or_the_rooms() -> None:
    """The front relays signalling for every worker; it stays a small process."""
    import subprocess
    import sys

    code = ("import sys; import mediaserver.cli, mediaserver.signaling.front, "
            "mediaserver.signaling.front_admin, mediaserver.signaling.front_relay, "
            "mediaserver.signaling.webpage; "
            "print(sorted(m for m in ('aiortc', 'av', 'mediaserver.rooms', 'mediaserver.sfu') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
