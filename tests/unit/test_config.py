"""Config: precedence of the sources, every validation message, dev mode, TURN REST, TOML."""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from mediaserver.config import (
    DEV_API_KEY,
    DEV_API_SECRET,
    ClusterConfig,
    Config,
    ConfigError,
    IceServer,
    MediaConfig,
    TurnRestConfig,
    add_serve_arguments,
    build_config,
    config_file_path,
    turn_rest_credentials,
)

KEYS_ENV = {"MEDIASERVER_API_KEYS": "app:appsecret1"}


def flags_of(*argv: str) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return vars(parser.parse_args(argv))


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "mediaserver.toml"
    path.write_text(text)
    return str(path)


def test_defaults() -> None:
    config = build_config({}, KEYS_ENV, None)
    assert config == Config(api_keys={"app": "appsecret1"})
    assert config.media == MediaConfig()
    assert (config.host, config.port, config.log_level) == ("0.0.0.0", 7880, "INFO")
    assert config.media.allow_loopback is False
    assert config.use_uvloop is True
    assert config.turn_rest is None


def test_unset_flags_are_ignored() -> None:
    """argparse hands over every dest with None for flags not given; None must not override."""
    config = build_config(flags_of(), {**KEYS_ENV, "MEDIASERVER_PORT": "9000"}, None)
    assert config.port == 9000


@pytest.mark.parametrize(
    ("flag", "env", "file", "expected"),
    [
        (None, None, None, 7880),
        (None, None, 7001, 7001),
        (None, "7002", 7001, 7002),
        ("7003", "7002", 7001, 7003),
        ("7003", None, 7001, 7003),
        ("7003", None, None, 7003),
        (None, "", 7001, 7001),  # an empty variable counts as unset
    ],
)
def test_precedence_flag_env_file_default(
    tmp_path: Path, flag: str | None, env: str | None, file: int | None, expected: int
) -> None:
    flags = {"port": flag}
    environ = dict(KEYS_ENV)
    if env is not None:
        environ["MEDIASERVER_PORT"] = env
    path = write_toml(tmp_path, f"port = {file}\n") if file is not None else None
    assert build_config(flags, environ, path).port == expected


def test_precedence_takes_whole_settings_not_merges(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[api_keys]\nfilekey = "filesecret"\n')
    assert dict(build_config({}, {}, path).api_keys) == {"filekey": "filesecret"}
    assert dict(build_config({}, KEYS_ENV, path).api_keys) == {"app": "appsecret1"}
    flags = flags_of("--api-key", "cli:clisecret")
    assert dict(build_config(flags, KEYS_ENV, path).api_keys) == {"cli": "clisecret"}


def test_every_source_for_every_simple_setting() -> None:
    env = {
        **KEYS_ENV,
        "MEDIASERVER_HOST": "127.0.0.1",
        "MEDIASERVER_BIND_HOST": "10.0.0.5",
        "MEDIASERVER_UDP_PORT_RANGE": "41000-41999",
        "MEDIASERVER_ANNOUNCED_IP": "203.0.113.10",
        "MEDIASERVER_ALLOW_LOOPBACK": "yes",
        "MEDIASERVER_LOG_LEVEL": "debug",
        "MEDIASERVER_MAX_MESSAGE_BYTES": "131072",
        "MEDIASERVER_GROUP_MAX_PARTICIPANTS": "8",
        "MEDIASERVER_REDIS_URL": "redis://localhost:6379/0",
        "MEDIASERVER_USE_UVLOOP": "false",
        "MEDIASERVER_TOKEN_AUDIENCE": "therapy",
        "MEDIASERVER_ICE_SERVERS": json.dumps(
            [{"urls": ["turn:t.example:3478"], "username": "u", "credential": "c"}]
        ),
    }
    config = build_config({}, env, None)
    assert config.host == "127.0.0.1"
    assert config.media == MediaConfig("10.0.0.5", 41000, 41999, "203.0.113.10", True)
    assert (config.log_level, config.max_message_bytes) == ("DEBUG", 131072)
    assert config.group_max_participants == 8
    assert config.redis_url == "redis://localhost:6379/0"
    assert (config.use_uvloop, config.token_audience) == (False, "therapy")
    assert config.ice_servers == (IceServer(("turn:t.example:3478",), "u", "c"),)

    flags = flags_of(
        "--host", "::1", "--bind-host", "10.0.0.6", "--udp-port-range", "42000-42010",
        "--announced-ip", "2001:db8::1", "--no-allow-loopback-candidates",
        "--ice-server", "stun:a.example", "--ice-server", "stun:b.example",
        "--log-level", "WARNING", "--max-message-bytes", "2048",
        "--group-max-participants", "4", "--redis-url", "rediss://r:6380", "--no-uvloop",
    )  # fmt: skip
    config = build_config(flags, env, None)
    assert config.host == "::1"
    assert config.media == MediaConfig("10.0.0.6", 42000, 42010, "2001:db8::1", False)
    assert config.ice_servers == (IceServer(("stun:a.example",)), IceServer(("stun:b.example",)))
    assert (config.log_level, config.max_message_bytes, config.group_max_participants) == (
        "WARNING",
        2048,
        4,
    )
    assert (config.redis_url, config.use_uvloop) == ("rediss://r:6380", False)


@pytest.mark.parametrize("word", ["1", "true", "YES", " True ", "yes"])
def test_boolean_true_words(word: str) -> None:
    assert build_config({}, {**KEYS_ENV, "MEDIASERVER_USE_UVLOOP": word}, None).use_uvloop


@pytest.mark.parametrize("word", ["0", "false", "No", "FALSE"])
def test_boolean_false_words(word: str) -> None:
    assert not build_config({}, {**KEYS_ENV, "MEDIASERVER_USE_UVLOOP": word}, None).use_uvloop


def test_web_page_is_served_unless_turned_off(tmp_path: Path) -> None:
    assert build_config({}, KEYS_ENV, None).web_enabled is True
    assert build_config(flags_of("--no-web"), KEYS_ENV, None).web_enabled is False
    env = {**KEYS_ENV, "MEDIASERVER_WEB_ENABLED": "false"}
    assert build_config({}, env, None).web_enabled is False
    path = write_toml(tmp_path, "web_enabled = false\n")
    assert build_config({}, KEYS_ENV, path).web_enabled is False
    # The flag only turns it off; the environment can turn a file's "off" back on.
    on_env = {**KEYS_ENV, "MEDIASERVER_WEB_ENABLED": "yes"}
    assert build_config({}, on_env, path).web_enabled is True
    with pytest.raises(ConfigError, match=r"web_enabled: 'maybe' must be"):
        build_config({}, {**KEYS_ENV, "MEDIASERVER_WEB_ENABLED": "maybe"}, None)


# Each row: environment variable, bad value, the exact ConfigError message.
_BAD_ENV = [
    ("MEDIASERVER_PORT", "abc", "port: 'abc' must be an integer in 1..65535"
     " (from MEDIASERVER_PORT)"),
    ("MEDIASERVER_PORT", "70000", "port: '70000' must be an integer in 1..65535"
     " (from MEDIASERVER_PORT)"),
    ("MEDIASERVER_HOST", "a b", "host: 'a b' must be a non-empty string without spaces"
     " (at most 255 characters) (from MEDIASERVER_HOST)"),
    ("MEDIASERVER_UDP_PORT_RANGE", "5000-4000", "media.port_range: '5000-4000' must be MIN-MAX"
     " with 1024 <= MIN <= MAX <= 65535 (from MEDIASERVER_UDP_PORT_RANGE)"),
    ("MEDIASERVER_UDP_PORT_RANGE", "80-90", "media.port_range: '80-90' must be MIN-MAX"
     " with 1024 <= MIN <= MAX <= 65535 (from MEDIASERVER_UDP_PORT_RANGE)"),
    ("MEDIASERVER_UDP_PORT_RANGE", "40000", "media.port_range: '40000' must be MIN-MAX"
     " with 1024 <= MIN <= MAX <= 65535 (from MEDIASERVER_UDP_PORT_RANGE)"),
    ("MEDIASERVER_BIND_HOST", "localhost", "media.bind_host: 'localhost' must be an IPv4 or IPv6"
     " address (from MEDIASERVER_BIND_HOST)"),
    ("MEDIASERVER_ANNOUNCED_IP", "1.2.3", "media.announced_ip: '1.2.3' must be an IPv4 or IPv6"
     " address (from MEDIASERVER_ANNOUNCED_IP)"),
    ("MEDIASERVER_ALLOW_LOOPBACK", "maybe", "media.allow_loopback: 'maybe' must be one of 1, 0,"
     " true, false, yes, no (from MEDIASERVER_ALLOW_LOOPBACK)"),
    ("MEDIASERVER_DEV", "on", "dev: 'on' must be one of 1, 0, true, false, yes, no"
     " (from MEDIASERVER_DEV)"),
    ("MEDIASERVER_LOG_LEVEL", "loud", "log_level: 'loud' must be one of DEBUG, INFO, WARNING,"
     " ERROR, CRITICAL (from MEDIASERVER_LOG_LEVEL)"),
    ("MEDIASERVER_MAX_MESSAGE_BYTES", "10", "max_message_bytes: '10' must be an integer in"
     " 1024..16777216 (from MEDIASERVER_MAX_MESSAGE_BYTES)"),
    ("MEDIASERVER_GROUP_MAX_PARTICIPANTS", "1", "group_max_participants: '1' must be an integer"
     " in 2..100 (from MEDIASERVER_GROUP_MAX_PARTICIPANTS)"),
    ("MEDIASERVER_REDIS_URL", "http://u:pw@x", "redis_url: must start with redis://, rediss://"
     " or unix:// (from MEDIASERVER_REDIS_URL)"),
    ("MEDIASERVER_TOKEN_AUDIENCE", "a b", "token_audience: 'a b' must be a non-empty string"
     " without spaces (at most 255 characters) (from MEDIASERVER_TOKEN_AUDIENCE)"),
    ("MEDIASERVER_API_KEYS", "app", "api_keys: entry #1 must be KEY:SECRET"
     " (from MEDIASERVER_API_KEYS)"),
    ("MEDIASERVER_API_KEYS", "app:short", "api_keys: secret for key 'app' must be at least 8"
     " characters (from MEDIASERVER_API_KEYS)"),
    ("MEDIASERVER_API_KEYS", "a b:longsecret", "api_keys: key 'a b' must be 1-64 characters of"
     " A-Z a-z 0-9 _ . - (from MEDIASERVER_API_KEYS)"),
    ("MEDIASERVER_API_KEYS", "k:longsecret,k:othersecret", "api_keys: key 'k' is given twice"
     " (from MEDIASERVER_API_KEYS)"),
    ("MEDIASERVER_ICE_SERVERS", "stun:x", "ice_servers: must be a JSON list of {urls, username,"
     " credential} (from MEDIASERVER_ICE_SERVERS)"),
    ("MEDIASERVER_ICE_SERVERS", '[{"urls": "http://x"}]', "ice_servers: entry #1: urls URL"
     " 'http://x' must start with stun:, stuns:, turn:, turns: (from MEDIASERVER_ICE_SERVERS)"),
    ("MEDIASERVER_ICE_SERVERS", '[{"urls": []}]', "ice_servers: entry #1: urls must be a"
     " non-empty list of URLs (from MEDIASERVER_ICE_SERVERS)"),
    ("MEDIASERVER_ICE_SERVERS", '[{"urls": "turn:x"}]', "ice_servers: entry #1: TURN URLs need"
     " a username and credential (from MEDIASERVER_ICE_SERVERS)"),
    ("MEDIASERVER_ICE_SERVERS", '[{"url": "stun:x"}]', "ice_servers: entry #1 must have only"
     " urls, username, credential (from MEDIASERVER_ICE_SERVERS)"),
    ("MEDIASERVER_TURN_REST_TTL", "5", "turn_rest: urls and shared_secret must both be set"),
]  # fmt: skip


@pytest.mark.parametrize(("var", "value", "message"), _BAD_ENV)
def test_validation_messages(var: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({}, {**KEYS_ENV, var: value}, None)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--udp-port-range", "5000-4000"], "media.port_range: '5000-4000' must be MIN-MAX with"
         " 1024 <= MIN <= MAX <= 65535 (from --udp-port-range)"),
        (["--ice-server", "turn:t.example"], "ice_servers: entry #1: TURN URLs need a username"
         " and credential (from --ice-server)"),
        (["--api-key", "nocolon"], "api_keys: entry #1 must be KEY:SECRET (from --api-key)"),
        (["--port", "-1"], "port: '-1' must be an integer in 1..65535 (from --port)"),
    ],
)  # fmt: skip
def test_flag_validation_messages(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(flags_of(*argv), KEYS_ENV, None)
    assert str(info.value) == message


def test_secrets_never_appear_in_messages() -> None:
    cases = [
        {"MEDIASERVER_API_KEYS": "app:sEcReT"},
        {"MEDIASERVER_API_KEYS": "app:sEcReT1,app:sEcReT2"},
        dict(KEYS_ENV, MEDIASERVER_TURN_REST_URLS="turn:x", MEDIASERVER_TURN_REST_SECRET="sEcReT"),
        {**KEYS_ENV, "MEDIASERVER_ICE_SERVERS": '[{"urls":"bad:x","credential":"sEcReT"}]'},
        {**KEYS_ENV, "MEDIASERVER_REDIS_URL": "http://u:sEcReT@h"},
    ]
    for env in cases:
        with pytest.raises(ConfigError) as info:
            build_config({}, env, None)
        assert "sEcReT" not in str(info.value)


def test_no_api_keys_without_dev() -> None:
    with pytest.raises(ConfigError) as info:
        build_config({}, {}, None)
    assert str(info.value) == (
        "no API keys configured: set MEDIASERVER_API_KEYS=key:secret or use --dev for development"
    )


@pytest.mark.parametrize(
    ("flags", "env", "keys", "loopback"),
    [
        ({"dev": True}, {}, {DEV_API_KEY: DEV_API_SECRET}, True),
        ({}, {"MEDIASERVER_DEV": "1"}, {DEV_API_KEY: DEV_API_SECRET}, True),
        ({"dev": True}, KEYS_ENV, {"app": "appsecret1", DEV_API_KEY: DEV_API_SECRET}, True),
        ({"dev": True}, {"MEDIASERVER_ALLOW_LOOPBACK": "0"}, {DEV_API_KEY: DEV_API_SECRET}, False),
        ({"dev": True, "allow_loopback": False}, {}, {DEV_API_KEY: DEV_API_SECRET}, False),
        ({}, {**KEYS_ENV, "MEDIASERVER_DEV": "no"}, {"app": "appsecret1"}, False),
    ],
)
def test_dev_mode(
    flags: dict[str, Any], env: dict[str, str], keys: dict[str, str], loopback: bool
) -> None:
    config = build_config(flags, env, None)
    assert dict(config.api_keys) == keys
    assert config.media.allow_loopback is loopback
    assert config.dev is bool(flags.get("dev") or env.get("MEDIASERVER_DEV") == "1")


def test_dev_constants() -> None:
    assert (DEV_API_KEY, DEV_API_SECRET) == ("devkey", "devsecret")
    assert len(DEV_API_SECRET) >= 8


def test_turn_rest_credentials_match_independent_hmac() -> None:
    cfg = TurnRestConfig(("turn:turn.example:3478",), shared_secret="s3cret-value", ttl_seconds=600)
    server = turn_rest_credentials(cfg, "user-42", now=1_700_000_000.9)

    assert server.username is not None
    expiry, tag = server.username.split(":")
    assert expiry == "1700000600"
    expected_tag = hmac.new(b"s3cret-value", b"identity:user-42", hashlib.sha256).hexdigest()[:16]
    assert tag == expected_tag
    mac = hmac.new(b"s3cret-value", f"1700000600:{expected_tag}".encode(), hashlib.sha1)
    assert server.credential == base64.b64encode(mac.digest()).decode()
    assert server.urls == ("turn:turn.example:3478",)
    assert "user-42" not in server.username


def test_turn_rest_from_env_and_ice_servers_for() -> None:
    env = {
        **KEYS_ENV,
        "MEDIASERVER_ICE_SERVERS": '[{"urls": "stun:s.example"}]',
        "MEDIASERVER_TURN_REST_URLS": "turn:t.example:3478, turns:t.example:5349",
        "MEDIASERVER_TURN_REST_SECRET": "shared-secret",
        "MEDIASERVER_TURN_REST_TTL": "3600",
    }
    config = build_config({}, env, None)
    assert config.turn_rest == TurnRestConfig(
        ("turn:t.example:3478", "turns:t.example:5349"), "shared-secret", 3600
    )
    static, turn = config.ice_servers_for("user-1", now=100.0)
    assert static == IceServer(("stun:s.example",))
    assert turn.username is not None and turn.username.startswith("3700:")
    assert build_config({}, KEYS_ENV, None).ice_servers_for("user-1", now=1.0) == ()


def test_turn_rest_rejects_stun_urls_and_short_secret() -> None:
    env = {**KEYS_ENV, "MEDIASERVER_TURN_REST_URLS": "stun:x"}
    env["MEDIASERVER_TURN_REST_SECRET"] = "12345678"
    with pytest.raises(ConfigError, match=r"^turn_rest\.urls: URL 'stun:x' must start with turn:"):
        build_config({}, env, None)
    env = {**env, "MEDIASERVER_TURN_REST_URLS": "turn:x", "MEDIASERVER_TURN_REST_SECRET": "1234567"}
    with pytest.raises(ConfigError) as info:
        build_config({}, env, None)
    assert str(info.value) == (
        "turn_rest.shared_secret: must be a string of at least 8 characters"
        " (from MEDIASERVER_TURN_REST_SECRET)"
    )


_FULL_TOML = """
host = "127.0.0.1"
port = 8443
log_level = "warning"
max_message_bytes = 4096
group_max_participants = 6
redis_url = "redis://:pw@redis:6379/1"
use_uvloop = false
token_audience = "therapy-sfu"
dev = "yes"

[api_keys]
app = "app-secret-1"
other = "other-secret"

[media]
bind_host = "192.0.2.1"
port_min = 50000
port_max = 50100
announced_ip = "198.51.100.7"
allow_loopback = false

[[ice_servers]]
urls = "stun:stun.example:3478"

[[ice_servers]]
urls = ["turn:turn.example:3478", "turns:turn.example:5349"]
username = "static"
credential = "static-pass"

[turn_rest]
urls = ["turn:rest.example:3478"]
shared_secret = "rest-shared-secret"
ttl_seconds = 7200
"""


def test_toml_file_parsing(tmp_path: Path) -> None:
    config = build_config({}, {}, write_toml(tmp_path, _FULL_TOML))
    assert config == Config(
        host="127.0.0.1",
        port=8443,
        api_keys={"app": "app-secret-1", "other": "other-secret", DEV_API_KEY: DEV_API_SECRET},
        dev=True,
        media=MediaConfig("192.0.2.1", 50000, 50100, "198.51.100.7", False),
        ice_servers=(
            IceServer(("stun:stun.example:3478",)),
            IceServer(
                ("turn:turn.example:3478", "turns:turn.example:5349"), "static", "static-pass"
            ),
        ),
        turn_rest=TurnRestConfig(("turn:rest.example:3478",), "rest-shared-secret", 7200),
        log_level="WARNING",
        max_message_bytes=4096,
        group_max_participants=6,
        redis_url="redis://:pw@redis:6379/1",
        use_uvloop=False,
        token_audience="therapy-sfu",
        cluster=ClusterConfig(node_url="http://127.0.0.1:8443"),
    )


def test_toml_port_range_halves_and_env_override(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[media]\nport_min = 45000\n")
    assert build_config({}, KEYS_ENV, path).media.port_max == 49999
    assert build_config({}, KEYS_ENV, path).media.port_min == 45000
    env = {**KEYS_ENV, "MEDIASERVER_UDP_PORT_RANGE": "46000-46001"}
    media = build_config({}, env, path).media
    assert (media.port_min, media.port_max) == (46000, 46001)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prot = 1\n", "unknown key prot"),
        ("[media]\nport_mni = 1\n", "unknown key media.port_mni"),
        ("media = 3\n", "media must be a table"),
        ("port = \n", "invalid TOML"),
        ("port = true\n", "port: True must be an integer in 1..65535 (from config file "),
        ("[media]\nport_min = 6000\nport_max = 5000\n", "media.port_range: '6000-5000' must be"),
        ('[api_keys]\napp = 12345678\n', "api_keys: secret for key 'app' must be at least 8"),
        ("api_keys = 5\n", "api_keys: must be KEY:SECRET entries or a table of key = secret"),
        ('api_keys = ["k1:long-secret", 7]\n', "api_keys: entry #2 must be KEY:SECRET"),
        ("ice_servers = [5]\n", "ice_servers: entry #1 must have only urls, username, credential"),
        ('ice_servers = "[1"\n', "ice_servers: must be a JSON list of"),
        ('[[ice_servers]]\nurls = "turn:x"\nusername = "u"\ncredential = 5\n',
         "ice_servers: entry #1: username and credential must be strings"),
        ('[turn_rest]\nurls = ["turn:x"]\n', "turn_rest: urls and shared_secret must both be set"),
        ('bind_host = "1.2.3.4"\n', "unknown key bind_host"),
    ],
)  # fmt: skip
def test_toml_errors(tmp_path: Path, text: str, message: str) -> None:
    env = {} if "api_keys" in text else KEYS_ENV
    with pytest.raises(ConfigError) as info:
        build_config({}, env, write_toml(tmp_path, text))
    assert message in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="cannot read it"):
        build_config({}, KEYS_ENV, missing)


def test_config_file_path_precedence() -> None:
    assert config_file_path({}, {}) is None
    assert config_file_path({}, {"MEDIASERVER_CONFIG": "/env.toml"}) == "/env.toml"
    assert config_file_path({"config": "/flag.toml"}, {"MEDIASERVER_CONFIG": "/e"}) == "/flag.toml"
    assert config_file_path(flags_of(), {}) is None


def test_redacted_hides_every_secret() -> None:
    config = Config(
        api_keys={"app": "app-secret-1"},
        ice_servers=(IceServer(("turn:x",), "user", "ice-secret"),),
        turn_rest=TurnRestConfig(("turn:y",), "turn-secret"),
        redis_url="redis://user:redis-secret@host:6379/0",
    )
    shown = config.redacted()
    text = json.dumps(shown)
    for secret in ("app-secret-1", "ice-secret", "turn-secret", "redis-secret"):
        assert secret not in text
    assert shown["api_keys"] == {"app": "***"}
    assert shown["ice_servers"] == [{"urls": ["turn:x"], "username": "user", "credential": "***"}]
    assert shown["turn_rest"]["shared_secret"] == "***"
    assert shown["redis_url"] == "redis://user:***@host:6379/0"
    assert shown["media"]["port_min"] == 40000


def test_config_is_immutable() -> None:
    config = Config(api_keys={"app": "app-secret-1"})
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.api_keys["x"] = "y"  # type: ignore[index]


def test_cluster_defaults_leave_a_single_node_alone() -> None:
    config = build_config({}, KEYS_ENV, None)
    assert config.redis_url is None
    assert config.cluster == ClusterConfig()  # no node URL needed without Redis


def test_cluster_settings_from_each_source(tmp_path: Path) -> None:
    env = {**KEYS_ENV, "MEDIASERVER_REDIS_URL": "redis://127.0.0.1:6379/0",
           "MEDIASERVER_CLUSTER_PREFIX": "prod-eu", "MEDIASERVER_NODE_ID": "node-a",
           "MEDIASERVER_NODE_URL": "https://a.example:7880/", "MEDIASERVER_NODE_CAPACITY": "40",
           "MEDIASERVER_LEASE_TTL": "6", "MEDIASERVER_DRAIN_TIMEOUT": "120"}
    assert build_config({}, env, None).cluster == ClusterConfig(
        prefix="prod-eu", node_id="node-a", node_url="https://a.example:7880", capacity=40,
        lease_ttl=6, drain_timeout=120)
    flags = flags_of("--cluster-prefix", "t1", "--node-id", "n1",
                     "--node-url", "http://127.0.0.1:9001", "--node-capacity", "3",
                     "--lease-ttl", "3", "--drain-timeout", "0")
    assert build_config(flags, env, None).cluster == ClusterConfig(
        prefix="t1", node_id="n1", node_url="http://127.0.0.1:9001", capacity=3, lease_ttl=3,
        drain_timeout=0)
    path = write_toml(tmp_path, 'redis_url = "redis://r:6379"\n[cluster]\nprefix = "f"\n'
                      'node_url = "http://10.0.0.5:7880"\nlease_ttl = 30\n')
    cluster = build_config({}, KEYS_ENV, path).cluster
    assert (cluster.prefix, cluster.node_url, cluster.lease_ttl) == (
        "f", "http://10.0.0.5:7880", 30)
    assert build_config({}, KEYS_ENV, path).redacted()["cluster"]["prefix"] == "f"


def test_cluster_node_url_derived_from_a_specific_host() -> None:
    env = {**KEYS_ENV, "MEDIASERVER_REDIS_URL": "redis://r", "MEDIASERVER_HOST": "10.0.0.7",
           "MEDIASERVER_PORT": "7990"}
    assert build_config({}, env, None).cluster.node_url == "http://10.0.0.7:7990"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MEDIASERVER_REDIS_URL": "redis://r"},
         "cluster.node_url: required with redis_url when host is a wildcard address"),
        ({"MEDIASERVER_CLUSTER_PREFIX": "a b"},
         "cluster.prefix: 'a b' must be 1-64 characters of A-Z a-z 0-9 _ . -"),
        ({"MEDIASERVER_NODE_ID": "n/1"}, "cluster.node_id: 'n/1' must be 1-64 characters"),
        ({"MEDIASERVER_NODE_URL": "ws://x:1"},
         "cluster.node_url: 'ws://x:1' must be an http:// or https:// URL with a host"),
        ({"MEDIASERVER_NODE_CAPACITY": "0"},
         "cluster.capacity: '0' must be an integer in 1..100000"),
        ({"MEDIASERVER_LEASE_TTL": "1"}, "cluster.lease_ttl: '1' must be an integer in 2..300"),
        ({"MEDIASERVER_DRAIN_TIMEOUT": "-1"}, "cluster.drain_timeout: '-1' must be an integer"),
        ({}, None),
    ],
)  # fmt: skip
def test_cluster_setting_errors(env: dict[str, str], message: str | None) -> None:
    if message is None:
        build_config({}, {**KEYS_ENV, **env}, None)
        return
    with pytest.raises(ConfigError) as info:
        build_config({}, {**KEYS_ENV, **env}, None)
    assert message in str(info.value)


def test_adaptation_is_on_by_default_and_can_be_turned_off_everywhere(tmp_path: Path) -> None:
    assert build_config({}, KEYS_ENV, None).media.adaptation is True
    assert build_config({"adaptation": False}, KEYS_ENV, None).media.adaptation is False
    env = {**KEYS_ENV, "MEDIASERVER_ADAPTATION": "0"}
    assert build_config({}, env, None).media.adaptation is False
    path = tmp_path / "m.toml"
    path.write_text("[media]\nadaptation = false\n")
    assert build_config({}, KEYS_ENV, str(path)).media.adaptation is False


# ---- limits, TLS and shutdown (issue 10) ----

_LIMIT_NAMES = ("messages_per_second", "message_burst", "connections_per_ip",
                "joins_per_second", "max_participants", "max_loop_lag_ms", "send_queue",
                "publish_video_kbps", "publish_audio_kbps")


def test_limits_defaults_and_every_source(tmp_path: Path) -> None:
    from mediaserver.config import LimitsConfig

    assert build_config({}, KEYS_ENV, None).limits == LimitsConfig()
    file_values = {name: 100 + i for i, name in enumerate(_LIMIT_NAMES)}
    path = write_toml(tmp_path, "[limits]\n" + "".join(f"{k} = {v}\n"
                                                       for k, v in file_values.items()))
    assert build_config({}, KEYS_ENV, path).limits == LimitsConfig(**file_values)
    env = {**KEYS_ENV, **{f"MEDIASERVER_{k.upper()}": str(v + 1000)
                          for k, v in file_values.items()}}
    expected_env = {k: v + 1000 for k, v in file_values.items()}
    assert build_config({}, env, path).limits == LimitsConfig(**expected_env)
    argv = [a for k, v in file_values.items() for a in ("--" + k.replace("_", "-"), str(v + 7))]
    expected_flags = {k: v + 7 for k, v in file_values.items()}
    assert build_config(flags_of(*argv), env, path).limits == LimitsConfig(**expected_flags)


@pytest.mark.parametrize(("var", "value", "message"), [
    ("MEDIASERVER_MESSAGES_PER_SECOND", "0", "limits.messages_per_second: '0' must be an"
     " integer in 1..10000 (from MEDIASERVER_MESSAGES_PER_SECOND)"),
    ("MEDIASERVER_SEND_QUEUE", "2", "limits.send_queue: '2' must be an integer in 8..100000"
     " (from MEDIASERVER_SEND_QUEUE)"),
    ("MEDIASERVER_MAX_LOOP_LAG_MS", "x", "limits.max_loop_lag_ms: 'x' must be an integer in"
     " 0..60000 (from MEDIASERVER_MAX_LOOP_LAG_MS)"),
    ("MEDIASERVER_SHUTDOWN_TIMEOUT", "0", "shutdown_timeout: '0' must be an integer in 1..600"
     " (from MEDIASERVER_SHUTDOWN_TIMEOUT)"),
    ("MEDIASERVER_TLS_CERT", "/nonexistent.pem", "tls: cert and key must both be set"
     " (PEM files)"),
])  # fmt: skip
def test_limits_tls_shutdown_validation(var: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({}, {**KEYS_ENV, var: value}, None)
    assert str(info.value) == message


def test_tls_and_shutdown_from_every_source(tmp_path: Path) -> None:
    from mediaserver.config import TlsConfig

    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("y")
    path = write_toml(tmp_path, f'shutdown_timeout = 20\n[tls]\ncert = "{cert}"\nkey = "{key}"\n')
    config = build_config({}, KEYS_ENV, path)
    assert config.tls == TlsConfig(str(cert), str(key)) and config.tls.enabled
    assert config.shutdown_timeout == 20
    env = {**KEYS_ENV, "MEDIASERVER_SHUTDOWN_TIMEOUT": "5", "MEDIASERVER_TLS_KEY": str(cert)}
    config = build_config({}, env, path)
    assert (config.shutdown_timeout, config.tls.key) == (5, str(cert))
    config = build_config(flags_of("--shutdown-timeout", "3", "--tls-cert", str(key)), env, path)
    assert (config.shutdown_timeout, config.tls.cert) == (3, str(key))
    assert build_config({}, KEYS_ENV, None).tls.enabled is False
    with pytest.raises(ConfigError, match=r"tls.key: cannot read '/nope/k.pem'"):
        build_config({}, {**KEYS_ENV, "MEDIASERVER_TLS_CERT": str(cert),
                          "MEDIASERVER_TLS_KEY": "/nope/k.pem"}, None)
    redacted = build_config({}, KEYS_ENV, path).redacted()
    assert redacted["tls"] == {"cert": str(cert), "key": str(key)}
    assert redacted["limits"]["send_queue"] == 256
