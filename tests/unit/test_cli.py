"""The command line: token minting, config errors, config show, serve wiring."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest

from mediaserver import cli
from mediaserver.config import DEV_API_KEY, DEV_API_SECRET, Config
from mediaserver.tokens import Grants, Role, SessionKind, verify_token

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() reads os.environ; a developer's MEDIASERVER_* must not leak into the tests."""
    for name in list(os.environ):
        if name.startswith("MEDIASERVER_"):
            monkeypatch.delenv(name)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_token_create_with_dev_key_verifies(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "token", "create", "--dev", "--room", "room-1", "--identity", "user-1",
        "--name", "Ann", "--role", "host", "--kind", "one_to_one", "--ttl", "120",
    )  # fmt: skip
    assert (code, err) == (0, "")
    claims = verify_token(out.strip(), {DEV_API_KEY: DEV_API_SECRET}, now=time.time())
    assert (claims.api_key, claims.identity, claims.name, claims.room) == (
        DEV_API_KEY,
        "user-1",
        "Ann",
        "room-1",
    )
    assert (claims.role, claims.kind) == (Role.HOST, SessionKind.ONE_TO_ONE)
    assert claims.grants == Grants(publish=True, subscribe=True, record=True)
    assert 110 <= claims.expires_at - time.time() <= 120


def test_token_create_with_explicit_key(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "token", "create", "--room", "r", "--identity", "u",
        "--api-key", "k1", "--api-secret", "k1-secret-value", "--no-publish", "--record",
    )  # fmt: skip
    assert code == 0
    claims = verify_token(out.strip(), {"k1": "k1-secret-value"}, now=time.time())
    assert claims.grants == Grants(publish=False, subscribe=True, admin=False, record=True)


def test_token_create_picks_key_from_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDIASERVER_API_KEYS", "first:first-secret,second:second-secret")
    monkeypatch.setenv("MEDIASERVER_TOKEN_AUDIENCE", "sfu-eu")
    code, out, _ = run(capsys, "token", "create", "--room", "r", "--identity", "u")
    assert code == 0
    keys = {"first": "first-secret"}
    assert verify_token(out.strip(), keys, now=time.time(), audience="sfu-eu").api_key == "first"
    code, out, _ = run(
        capsys, "token", "create", "--room", "r", "--identity", "u", "--api-key", "second"
    )
    assert code == 0
    keys = {"second": "second-secret"}
    assert verify_token(out.strip(), keys, now=time.time(), audience="sfu-eu").api_key == "second"


def test_token_create_admin_without_room(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "token", "create", "--dev", "--admin", "--identity", "ops")
    assert code == 0
    claims = verify_token(out.strip(), {DEV_API_KEY: DEV_API_SECRET}, now=time.time())
    assert claims.room is None and claims.grants.admin


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["token", "create", "--room", "r", "--identity", "u"],
         "config error: no API keys configured: set MEDIASERVER_API_KEYS=key:secret or use --dev"
         " for development\n"),
        (["token", "create", "--dev", "--identity", "u"],
         "error: token create: --room is required unless --admin is given\n"),
        (["token", "create", "--dev", "--room", "r", "--identity", "a b"],
         "error: token create: identity must be 1-128 characters of A-Z a-z 0-9 _ . @ : -\n"),
        (["token", "create", "--dev", "--room", "r", "--identity", "u", "--ttl", "0"],
         "error: token create: ttl_seconds must be in 1..2592000 (30 days)\n"),
        (["token", "create", "--room", "r", "--identity", "u", "--api-secret", "s3cret-value"],
         "error: token create: --api-secret needs --api-key\n"),
        (["token", "create", "--dev", "--room", "r", "--identity", "u", "--api-key", "nokey"],
         "error: token create: API key 'nokey' is not configured\n"),
        (["token", "create", "--room", "r", "--identity", "u", "--api-key", "k",
          "--api-secret", "short"],
         "config error: api_keys: secret for key 'k' must be at least 8 characters"
         " (from --api-key)\n"),
        (["serve", "--dev", "--udp-port-range", "5000-4000"],
         "config error: media.port_range: '5000-4000' must be MIN-MAX with"
         " 1024 <= MIN <= MAX <= 65535 (from --udp-port-range)\n"),
        (["serve"], "config error: no API keys configured: set MEDIASERVER_API_KEYS=key:secret"
         " or use --dev for development\n"),
        (["config", "show", "--dev", "--port", "http"],
         "config error: port: 'http' must be an integer in 1..65535 (from --port)\n"),
    ],
)  # fmt: skip
def test_errors_exit_2_with_message_on_stderr(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert (code, out, err) == (2, "", message)


def test_config_error_from_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDIASERVER_DEV", "1")
    monkeypatch.setenv("MEDIASERVER_LOG_LEVEL", "chatty")
    code, _, err = run(capsys, "config", "show")
    assert code == 2
    assert err == (
        "config error: log_level: 'chatty' must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
        " (from MEDIASERVER_LOG_LEVEL)\n"
    )


@pytest.mark.parametrize(
    "argv",
    [[], ["token"], ["serve", "--bogus"], ["token", "create", "--room", "r"], ["nope"]],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert "usage:" in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "serve", "--help")
    assert code == 0
    assert "--udp-port-range" in out


def test_config_show_redacts_secrets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config_file = tmp_path / "server.toml"
    config_file.write_text(
        '[turn_rest]\nurls = ["turn:t.example"]\nshared_secret = "turn-shared-secret"\n'
    )
    monkeypatch.setenv("MEDIASERVER_API_KEYS", "app:app-api-secret")
    monkeypatch.setenv("MEDIASERVER_CONFIG", str(config_file))
    monkeypatch.setenv(
        "MEDIASERVER_ICE_SERVERS",
        json.dumps([{"urls": "turn:x.example", "username": "u", "credential": "ice-credential"}]),
    )
    code, out, err = run(
        capsys, "config", "show", "--port", "9000", "--redis-url", "redis://:redis-pw@r:6379",
        "--node-url", "http://10.0.0.5:9000",  # a cluster needs it with the wildcard host
    )
    assert (code, err) == (0, "")
    for secret in ("app-api-secret", "turn-shared-secret", "ice-credential", "redis-pw"):
        assert secret not in out
    shown = json.loads(out)
    assert shown["port"] == 9000
    assert shown["api_keys"] == {"app": "***"}
    assert shown["turn_rest"]["shared_secret"] == "***"
    assert shown["ice_servers"][0]["credential"] == "***"
    assert shown["media"]["allow_loopback"] is False
    assert shown["cluster"]["node_url"] == "http://10.0.0.5:9000"


def test_serve_builds_config_and_runs_server(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Config] = []
    fake_app = types.ModuleType("mediaserver.signaling.app")
    fake_app.run_server = seen.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mediaserver.signaling.app", fake_app)
    loop_installs: list[bool] = []

    def fake_install() -> bool:  # never swap the real event loop policy inside pytest
        loop_installs.append(True)
        return True

    monkeypatch.setattr(cli, "install_uvloop", fake_install)
    levels: list[str] = []
    monkeypatch.setattr(cli, "setup_logging", levels.append)
    monkeypatch.setattr(cli, "usable_cpus", lambda: 1)  # auto: one process, no front
    monkeypatch.setenv("MEDIASERVER_API_KEYS", "app:app-api-secret")

    code, _, _ = run(capsys, "serve", "--port", "9001", "--log-level", "debug")
    assert code == 0
    assert [c.port for c in seen] == [9001]
    assert (levels, loop_installs) == (["DEBUG"], [True])

    code, _, _ = run(capsys, "serve", "--no-uvloop")
    assert code == 0
    assert seen[-1].use_uvloop is False
    assert loop_installs == [True]  # not installed the second time


@pytest.mark.parametrize(("argv", "cpus", "env", "front"), [
    (["--workers", "1"], 8, {}, None),  # exactly the single process of old
    ([], 1, {}, None),
    ([], 4, {}, 4),  # auto: one worker per core, behind a front
    (["--workers", "3"], 1, {}, 3),
    ([], 4, {"MEDIASERVER_REDIS_URL": "redis://127.0.0.1:6379/0"}, None),  # cluster: one
])  # fmt: skip
def test_serve_starts_a_front_for_several_workers(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str],
    cpus: int, env: dict[str, str], front: int | None,
) -> None:
    singles: list[Config] = []
    fronts: list[tuple[int, dict[str, object], str | None]] = []
    fake_app = types.ModuleType("mediaserver.signaling.app")
    fake_app.run_server = singles.append  # type: ignore[attr-defined]
    fake_front = types.ModuleType("mediaserver.signaling.front")
    fake_front.run_front = (  # type: ignore[attr-defined]
        lambda config, workers, flags, path, env: fronts.append((workers, flags, path)))
    monkeypatch.setitem(sys.modules, "mediaserver.signaling.app", fake_app)
    monkeypatch.setitem(sys.modules, "mediaserver.signaling.front", fake_front)
    monkeypatch.setattr(cli, "install_uvloop", lambda: True)
    monkeypatch.setattr(cli, "setup_logging", lambda level: None)
    monkeypatch.setattr(cli, "usable_cpus", lambda: cpus)
    for name, value in {"MEDIASERVER_API_KEYS": "app:app-api-secret",
                        "MEDIASERVER_NODE_URL": "http://10.0.0.5:7880", **env}.items():
        monkeypatch.setenv(name, value)

    assert run(capsys, "serve", "--port", "9002", *argv)[0] == 0
    if front is None:
        assert (len(singles), fronts) == (1, [])
    else:
        assert singles == [] and [f[0] for f in fronts] == [front]
        flags = fronts[0][1]  # the workers rebuild the config from the flags as typed
        assert flags["port"] == "9002" and all(v is not None for v in flags.values())
        assert "handler" not in flags and "command" not in flags


def test_python_dash_m_token_create() -> None:
    env: dict[str, Any] = {k: v for k, v in os.environ.items() if not k.startswith("MEDIASERVER_")}
    env["MEDIASERVER_API_KEYS"] = "sub:subprocess-secret"
    result = subprocess.run(
        [sys.executable, "-m", "mediaserver", "token", "create", "--room", "room-9",
         "--identity", "user-9", "--role", "observer"],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    claims = verify_token(result.stdout.strip(), {"sub": "subprocess-secret"}, now=time.time())
    assert (claims.room, claims.identity, claims.role) == ("room-9", "user-9", Role.OBSERVER)
    assert claims.grants == Grants(publish=False, subscribe=True)


def test_python_dash_m_config_error_exit_code() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIASERVER_")}
    result = subprocess.run(
        [sys.executable, "-m", "mediaserver", "config", "show"],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("config error: no API keys configured")
