"""Every server setting, parsed and validated in one place.

Settings come from four layers, highest first: command-line flags, ``MEDIASERVER_*``
environment variables, an optional TOML file, built-in defaults. Each setting is taken whole
from the highest layer that sets it (API keys given in the environment replace those in the
file rather than merging), so what the operator typed last is exactly what runs. Everything is
checked before the server binds a socket: a typo should stop the start with a message naming
the setting, not surface as a failed call in the middle of a therapy session.

docs/configuration.md is the operator-facing table of the same settings; keep both in step.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import ipaddress
import json
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from types import MappingProxyType
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

DEV_API_KEY = "devkey"
DEV_API_SECRET = "devsecret"
MIN_SECRET_LENGTH = 8
CONFIG_ENV = "MEDIASERVER_CONFIG"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ICE_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")
_KEY_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_T = TypeVar("_T")


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names it and says what is expected."""


class _Bad(Exception):
    """A parser's complaint, before the setting name and the source are attached."""

    def __init__(self, reason: str, show_value: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.show_value = show_value


@dataclass(frozen=True)
class MediaConfig:
    """Where media flows: the UDP sockets ICE gathers on and the address it announces."""

    bind_host: str = "0.0.0.0"
    port_min: int = 40000
    port_max: int = 49999
    announced_ip: str | None = None
    allow_loopback: bool = False
    # Per-subscriber bandwidth estimation and stream allocation; off means plain
    # forwarding of every track's top layer (for comparison runs only).
    adaptation: bool = True


@dataclass(frozen=True)
class IceServer:
    """A STUN/TURN server for clients, in the shape of WebRTC's RTCIceServer."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    def to_json(self, redact: bool = False) -> dict[str, Any]:
        """RTCIceServer dict; ``redact`` hides the credential for printing."""
        out: dict[str, Any] = {"urls": list(self.urls)}
        if self.username is not None:
            out["username"] = self.username
        if self.credential is not None:
            out["credential"] = "***" if redact else self.credential
        return out


@dataclass(frozen=True)
class TurnRestConfig:
    """A TURN server using shared-secret auth ("use-auth-secret" in coturn).

    Clients get short-lived credentials derived from the secret instead of a fixed password,
    so a credential copied out of a browser stops working after ``ttl_seconds``.
    """

    urls: tuple[str, ...]
    shared_secret: str
    ttl_seconds: int = 86400


@dataclass(frozen=True)
class RoomConfig:
    """Limits that protect a session (seconds); a room's own options may lower them."""

    empty_timeout: int = 60  # a room closes this long after the last person left
    max_duration: int = 4 * 3600  # a session ends for everyone after this long
    resume_grace: int = 30  # a dropped participant may resume within this time
    report_retention: int = 86400  # session quality reports are kept this long


@dataclass(frozen=True)
class RecordingConfig:
    """Where encrypted recordings go and the key-encryption keys (KEKs) that protect them.

    ``keys`` is the KEK ring as text or a path (mediaserver.recording.keys.load_keks);
    recording is off unless both are set.
    """

    directory: str | None = None
    keys: str | None = None
    retention_days: int = 0  # 0 keeps recordings until an operator shreds them

    @property
    def enabled(self) -> bool:
        return bool(self.directory and self.keys)


@dataclass(frozen=True)
class ClusterConfig:
    """How this node takes part in a cluster; used only when ``redis_url`` is set.

    ``node_url`` is where clients and the other nodes reach this node (its signalling URL is
    derived from it); ``lease_ttl`` bounds how long a dead node's rooms stay unreachable.
    docs/cluster.md describes the Redis keys these settings shape.
    """

    prefix: str = "mediaserver"  # every Redis key starts with "<prefix>:"
    node_id: str | None = None  # None: "<hostname>-<random>" chosen at start
    node_url: str | None = None  # None: http://<host>:<port>, when host is not a wildcard
    capacity: int = 100  # rooms this node hosts at most
    lease_ttl: int = 10  # seconds a heartbeat (and a room lease) stays valid
    drain_timeout: int = 900  # seconds a draining node waits for its sessions to finish


@dataclass(frozen=True)
class LimitsConfig:
    """What one client, and the node as a whole, may ask of the server (mediaserver/limits.py).

    0 turns a limit off where that makes sense; the defaults are far above what a
    well-behaved client does and low enough that a runaway one cannot starve the rest.
    """

    messages_per_second: int = 50  # signalling messages per connection, sustained
    message_burst: int = 100  # ... and in a burst
    connections_per_ip: int = 32  # open signalling connections per client address (0: any)
    joins_per_second: int = 50  # node-wide join/resume rate (0: any)
    max_participants: int = 500  # on this node (0: any)
    max_loop_lag_ms: int = 500  # refuse joins while the smoothed loop lag is higher (0: off)
    send_queue: int = 256  # messages queued to one slow socket before it is disconnected
    publish_video_kbps: int = 8000  # per published video track, excess dropped (0: any)
    publish_audio_kbps: int = 600  # per published audio track (Opus peaks at 510)


@dataclass(frozen=True)
class TlsConfig:
    """A certificate chain and private key (PEM files) to serve HTTPS/WSS directly."""

    cert: str | None = None
    key: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.cert and self.key)


@dataclass(frozen=True)
class Config:
    """The whole server configuration, immutable once loaded."""

    host: str = "0.0.0.0"
    port: int = 7880
    api_keys: Mapping[str, str] = field(default_factory=dict)
    dev: bool = False
    media: MediaConfig = field(default_factory=MediaConfig)
    ice_servers: tuple[IceServer, ...] = ()
    turn_rest: TurnRestConfig | None = None
    log_level: str = "INFO"
    max_message_bytes: int = 65536
    group_max_participants: int = 16
    redis_url: str | None = None
    use_uvloop: bool = True
    token_audience: str = "mediaserver"
    web_enabled: bool = True  # serve the session page and the JavaScript SDK under /web/
    rooms: RoomConfig = field(default_factory=RoomConfig)
    signal_idle_timeout: int = 60  # close a signalling socket silent this long
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    shutdown_timeout: int = 10  # seconds from SIGTERM to exit, clients told and files sealed
    # Processes that serve rooms behind one port (docs/workers.md); 0: one per usable core,
    # resolved by the CLI, which reads the machine. 1: a single process, no front.
    workers: int = 0

    def __post_init__(self) -> None:
        # frozen=True stops rebinding the field, not mutating the dict behind it.
        object.__setattr__(self, "api_keys", MappingProxyType(dict(self.api_keys)))

    def ice_servers_for(self, user_id: str, now: float) -> tuple[IceServer, ...]:
        """Static servers plus, if configured, fresh TURN REST credentials for ``user_id``."""
        if self.turn_rest is None:
            return self.ice_servers
        return (*self.ice_servers, turn_rest_credentials(self.turn_rest, user_id, now))

    def redacted(self) -> dict[str, Any]:
        """JSON-able view with every secret replaced by "***", safe to print or log."""
        turn = self.turn_rest
        return {
            "host": self.host,
            "port": self.port,
            "api_keys": dict.fromkeys(self.api_keys, "***"),
            "dev": self.dev,
            "media": asdict(self.media),
            "ice_servers": [s.to_json(redact=True) for s in self.ice_servers],
            "turn_rest": None
            if turn is None
            else {"urls": list(turn.urls), "shared_secret": "***", "ttl_seconds": turn.ttl_seconds},
            "log_level": self.log_level,
            "max_message_bytes": self.max_message_bytes,
            "group_max_participants": self.group_max_participants,
            "redis_url": _redact_url(self.redis_url),
            "use_uvloop": self.use_uvloop,
            "token_audience": self.token_audience,
            "web_enabled": self.web_enabled,
            "rooms": asdict(self.rooms),
            "signal_idle_timeout": self.signal_idle_timeout,
            "recording": {"directory": self.recording.directory,
                          "keys": "***" if self.recording.keys else None,
                          "retention_days": self.recording.retention_days},
            "cluster": asdict(self.cluster),
            "limits": asdict(self.limits),
            "tls": asdict(self.tls),  # paths, not the key itself
            "shutdown_timeout": self.shutdown_timeout,
            "workers": self.workers,
        }


def turn_rest_credentials(cfg: TurnRestConfig, user_id: str, now: float) -> IceServer:
    """Time-limited TURN credentials (draft-uberti-behave-turn-rest) for one user.

    The username's second half is a keyed hash of ``user_id``, not the id itself: TURN
    servers log usernames, and those logs should not say who was in therapy when. Operators
    holding the secret can still recompute the hash to correlate a user's relay sessions.
    """
    secret = cfg.shared_secret.encode()
    tag = hmac.new(secret, b"identity:" + user_id.encode(), hashlib.sha256).hexdigest()[:16]
    username = f"{int(now) + cfg.ttl_seconds}:{tag}"
    digest = hmac.new(secret, username.encode(), hashlib.sha1).digest()
    return IceServer(cfg.urls, username, base64.b64encode(digest).decode("ascii"))


def _redact_url(url: str | None) -> str | None:
    parts = urlsplit(url or "")
    if url is None or parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc))


# ---- parsers: raw value (str from flags/env, native from TOML) -> typed value, or _Bad ----


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        if isinstance(raw, str) and raw.strip().isdecimal():
            raw = int(raw)
        if isinstance(raw, bool) or not isinstance(raw, int) or not lo <= raw <= hi:
            raise _Bad(f"must be an integer in {lo}..{hi}")
        return raw

    return parse


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    word = raw.strip().lower() if isinstance(raw, str) else None
    if word in ("1", "true", "yes"):
        return True
    if word in ("0", "false", "no"):
        return False
    raise _Bad("must be one of 1, 0, true, false, yes, no")


def _word(raw: Any) -> str:
    if not isinstance(raw, str) or not raw or len(raw) > 255 or any(c.isspace() for c in raw):
        raise _Bad("must be a non-empty string without spaces (at most 255 characters)")
    return raw


def _ip(raw: Any) -> str:
    try:
        return str(ipaddress.ip_address(raw.strip()))
    except (ValueError, AttributeError):
        raise _Bad("must be an IPv4 or IPv6 address") from None


def _log_level(raw: Any) -> str:
    if isinstance(raw, str) and raw.strip().upper() in LOG_LEVELS:
        return raw.strip().upper()
    raise _Bad("must be one of " + ", ".join(LOG_LEVELS))


MAX_WORKERS = 1024


def _workers(raw: Any) -> int:
    """``auto`` or 0 (one per core), else a process count."""
    if isinstance(raw, str) and raw.strip().lower() == "auto":
        return 0
    try:
        return _int(0, MAX_WORKERS)(raw)
    except _Bad:
        raise _Bad(f"must be auto or an integer in 0..{MAX_WORKERS}") from None


def _redis_url(raw: Any) -> str:
    if isinstance(raw, str) and raw.startswith(("redis://", "rediss://", "unix://")):
        return raw
    raise _Bad("must start with redis://, rediss:// or unix://", show_value=False)


def _port_range(raw: Any) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*", raw) if isinstance(raw, str) else None
    lo, hi = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    if not 1024 <= lo <= hi <= 65535:
        raise _Bad("must be MIN-MAX with 1024 <= MIN <= MAX <= 65535")
    return lo, hi


def _ice_urls(raw: Any, schemes: tuple[str, ...] = ICE_SCHEMES) -> tuple[str, ...]:
    """A list of URLs, or one comma-separated string (the environment's form)."""
    urls = [s.strip() for s in raw.split(",")] if isinstance(raw, str) else raw
    if not isinstance(urls, list | tuple) or not urls or not all(isinstance(u, str) for u in urls):
        raise _Bad("must be a non-empty list of URLs", show_value=False)
    for url in urls:
        if not url.lower().startswith(schemes):
            raise _Bad(f"URL {url!r} must start with " + ", ".join(schemes), show_value=False)
    return tuple(urls)


def _secret(raw: Any) -> str:
    if not isinstance(raw, str) or len(raw) < MIN_SECRET_LENGTH:
        raise _Bad(f"must be a string of at least {MIN_SECRET_LENGTH} characters", False)
    return raw


def _api_keys(raw: Any) -> dict[str, str]:
    """KEY:SECRET strings (flag list, or comma-separated env) or a TOML table of key = secret."""
    pairs: list[tuple[Any, Any]]
    if isinstance(raw, Mapping):
        pairs = list(raw.items())
    elif not isinstance(raw, str | list | tuple):
        raise _Bad("must be KEY:SECRET entries or a table of key = secret", show_value=False)
    else:
        entries = [s.strip() for s in raw.split(",")] if isinstance(raw, str) else raw
        pairs = []
        for i, entry in enumerate(entries, 1):
            if not isinstance(entry, str) or ":" not in entry:
                raise _Bad(f"entry #{i} must be KEY:SECRET", show_value=False)
            key, secret = entry.split(":", 1)
            pairs.append((key, secret))
    keys: dict[str, str] = {}
    for key, secret in pairs:
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise _Bad(f"key {key!r} must be 1-64 characters of A-Z a-z 0-9 _ . -", False)
        if key in keys:
            raise _Bad(f"key {key!r} is given twice", show_value=False)
        if not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH:
            reason = f"secret for key {key!r} must be at least {MIN_SECRET_LENGTH} characters"
            raise _Bad(reason, show_value=False)
        keys[key] = secret
    return keys


def _ice_servers(raw: Any) -> tuple[IceServer, ...]:
    """URL strings (flag), a JSON list (env) or a TOML array of tables, all RTCIceServer-like."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):
            raise _Bad("must be a JSON list of {urls, username, credential}", False) from None
    if not isinstance(raw, list | tuple):
        raise _Bad("must be a list of {urls, username, credential}", show_value=False)
    servers = []
    for i, item in enumerate(raw, 1):
        entry = {"urls": [item]} if isinstance(item, str) else item
        if not isinstance(entry, Mapping) or set(entry) - {"urls", "username", "credential"}:
            raise _Bad(f"entry #{i} must have only urls, username, credential", False)
        raw_urls = entry.get("urls")
        try:
            urls = _ice_urls([raw_urls] if isinstance(raw_urls, str) else raw_urls)
        except _Bad as bad:
            raise _Bad(f"entry #{i}: urls {bad.reason}", show_value=False) from None
        user, cred = entry.get("username"), entry.get("credential")
        if not isinstance(user, str | None) or not isinstance(cred, str | None):
            raise _Bad(f"entry #{i}: username and credential must be strings", False)
        if any(u.lower().startswith("turn") for u in urls) and (user is None or cred is None):
            raise _Bad(f"entry #{i}: TURN URLs need a username and credential", False)
        servers.append(IceServer(urls, user, cred))
    return tuple(servers)


# ---- the sources ----

Layer = dict[str, tuple[Any, str]]  # setting name -> (raw value, where it came from)

# One row per setting: name (also its config-file key), flag, env var suffix, argparse options.
_SETTINGS: tuple[tuple[str, str | None, str, dict[str, Any]], ...] = (
    ("host", "--host", "HOST", {"help": "HTTP/WebSocket listen address (default 0.0.0.0)"}),
    ("port", "--port", "PORT", {"help": "HTTP/WebSocket listen port (default 7880)"}),
    ("dev", "--dev", "DEV", {"action": "store_true", "help": "development mode: adds API key "
                             f"{DEV_API_KEY}:{DEV_API_SECRET} and loopback candidates"}),
    ("api_keys", "--api-key", "API_KEYS", {"action": "append", "metavar": "KEY:SECRET",
                                           "help": "repeatable; shows in ps, prefer env/file"}),
    ("media.bind_host", "--bind-host", "BIND_HOST", {"metavar": "IP",
                                                     "help": "UDP media socket address"}),
    ("media.port_range", "--udp-port-range", "UDP_PORT_RANGE", {"metavar": "MIN-MAX",
                                                                "help": "UDP media ports"}),
    ("media.announced_ip", "--announced-ip", "ANNOUNCED_IP", {"metavar": "IP",
                                                              "help": "IP for ICE candidates"}),
    ("media.allow_loopback", "--allow-loopback-candidates", "ALLOW_LOOPBACK", {
        "dest": "allow_loopback", "action": argparse.BooleanOptionalAction,
        "help": "offer 127.0.0.1 candidates"}),
    ("media.adaptation", "--adaptation", "ADAPTATION", {
        "dest": "adaptation", "action": argparse.BooleanOptionalAction,
        "help": "per-subscriber bandwidth adaptation (--no-adaptation: plain forwarding)"}),
    ("ice_servers", "--ice-server", "ICE_SERVERS", {"action": "append", "metavar": "URL", "help":
                                                    "STUN URL for clients, repeatable"}),
    ("turn_rest.urls", None, "TURN_REST_URLS", {}),
    ("turn_rest.shared_secret", None, "TURN_REST_SECRET", {}),
    ("turn_rest.ttl_seconds", None, "TURN_REST_TTL", {}),
    ("log_level", "--log-level", "LOG_LEVEL", {"metavar": "LEVEL", "help": "/".join(LOG_LEVELS)}),
    ("max_message_bytes", "--max-message-bytes", "MAX_MESSAGE_BYTES", {"metavar": "BYTES"}),
    ("group_max_participants", "--group-max-participants", "GROUP_MAX_PARTICIPANTS",
     {"metavar": "N"}),
    ("redis_url", "--redis-url", "REDIS_URL", {"metavar": "URL",
                                               "help": "Redis for a multi-node cluster"}),
    ("use_uvloop", "--no-uvloop", "USE_UVLOOP", {"dest": "use_uvloop", "action": "store_false",
                                                 "help": "use the stock asyncio event loop"}),
    ("token_audience", None, "TOKEN_AUDIENCE", {}),
    ("web_enabled", "--no-web", "WEB_ENABLED", {"dest": "web_enabled", "action": "store_false",
                                                "help": "do not serve the session page and SDK"}),
    ("rooms.empty_timeout", "--room-empty-timeout", "ROOM_EMPTY_TIMEOUT", {"metavar": "SECONDS"}),
    ("rooms.max_duration", "--room-max-duration", "ROOM_MAX_DURATION", {"metavar": "SECONDS"}),
    ("rooms.resume_grace", "--resume-grace", "RESUME_GRACE", {"metavar": "SECONDS"}),
    ("rooms.report_retention", "--report-retention", "REPORT_RETENTION",
     {"metavar": "SECONDS"}),
    ("signal_idle_timeout", "--signal-idle-timeout", "SIGNAL_IDLE_TIMEOUT",
     {"metavar": "SECONDS"}),
    ("recording.directory", "--recording-dir", "RECORDING_DIR", {"metavar": "DIR"}),
    ("recording.keys", None, "RECORDING_KEYS", {}),
    ("recording.retention_days", "--recording-retention-days", "RECORDING_RETENTION_DAYS",
     {"metavar": "DAYS"}),
    ("cluster.prefix", "--cluster-prefix", "CLUSTER_PREFIX", {"metavar": "PREFIX"}),
    ("cluster.node_id", "--node-id", "NODE_ID", {"metavar": "ID"}),
    ("cluster.node_url", "--node-url", "NODE_URL", {"metavar": "URL",
                                                    "help": "this node's public http(s) URL"}),
    ("cluster.capacity", "--node-capacity", "NODE_CAPACITY", {"metavar": "ROOMS"}),
    ("cluster.lease_ttl", "--lease-ttl", "LEASE_TTL", {"metavar": "SECONDS"}),
    ("cluster.drain_timeout", "--drain-timeout", "DRAIN_TIMEOUT", {"metavar": "SECONDS"}),
    *((f"limits.{name}", "--" + name.replace("_", "-"), name.upper(), {"metavar": "N"})
      for name in ("messages_per_second", "message_burst", "connections_per_ip",
                   "joins_per_second", "max_participants", "max_loop_lag_ms", "send_queue",
                   "publish_video_kbps", "publish_audio_kbps")),
    ("tls.cert", "--tls-cert", "TLS_CERT", {"metavar": "PEM", "help": "serve HTTPS/WSS"}),
    ("tls.key", "--tls-key", "TLS_KEY", {"metavar": "PEM"}),
    ("shutdown_timeout", "--shutdown-timeout", "SHUTDOWN_TIMEOUT", {"metavar": "SECONDS"}),
    ("workers", "--workers", "WORKERS", {"metavar": "N", "help": "processes serving rooms "
                                         "behind this port: auto (one per core, the default)"
                                         " or N; 1: a single process"}),
)  # fmt: skip
ENV_VARS = {"MEDIASERVER_" + env: name for name, _, env, _ in _SETTINGS}  # variable -> setting
_FLAGS: dict[str, tuple[str, str]] = {  # argparse dest -> (setting, flag as typed)
    kw.get("dest", flag[2:].replace("-", "_")): (name, flag)
    for name, flag, _, kw in _SETTINGS
    if flag is not None
}
SERVE_FLAGS = frozenset(_FLAGS) | {"config"}  # the argparse dests of add_serve_arguments
_FILE_KEYS = {  # TOML table -> keys allowed in it ("" is the top level)
    "": {name for name, *_ in _SETTINGS if "." not in name}
    | {"media", "turn_rest", "rooms", "recording", "cluster", "limits", "tls"},
    "rooms": {"empty_timeout", "max_duration", "resume_grace", "report_retention"},
    "recording": {"directory", "keys", "retention_days"},
    "limits": {f.name for f in fields(LimitsConfig)},
    "tls": {"cert", "key"},
    "media": {"bind_host", "port_min", "port_max", "announced_ip", "allow_loopback",
              "adaptation"},
    "turn_rest": {"urls", "shared_secret", "ttl_seconds"},
    "cluster": {"prefix", "node_id", "node_url", "capacity", "lease_ttl", "drain_timeout"},
}


def config_file_path(flags: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
    """The TOML file to read: --config, else MEDIASERVER_CONFIG, else none."""
    return flags.get("config") or env.get(CONFIG_ENV) or None


def _flag_layer(flags: Mapping[str, Any]) -> Layer:
    given = {k: v for k, v in flags.items() if k in _FLAGS and v is not None}
    return {_FLAGS[k][0]: (v, _FLAGS[k][1]) for k, v in given.items()}


def _env_layer(env: Mapping[str, str]) -> Layer:
    # An empty variable counts as unset: compose files often leave "FOO=" for later.
    return {s: (env[var], var) for var, s in ENV_VARS.items() if env.get(var, "").strip()}


def _file_layer(path: str) -> Layer:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"config file {path!r}: cannot read it: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path!r}: invalid TOML: {e}") from None
    origin = f"config file {path}"
    layer: Layer = {}
    for table, allowed in _FILE_KEYS.items():
        values = data.get(table, {}) if table else data
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path!r}: {table} must be a table")
        prefix = f"{table}." if table else ""
        for key in sorted(values.keys() - allowed):
            raise ConfigError(f"config file {path!r}: unknown key {prefix}{key}")
        for key, value in values.items():
            if table or key not in _FILE_KEYS:
                layer[prefix + key] = (value, origin)
    # The file spells the range as two integers; the other layers as one "MIN-MAX" string.
    lo, hi = layer.pop("media.port_min", None), layer.pop("media.port_max", None)
    if lo or hi:
        dm = MediaConfig()
        span = f"{lo[0] if lo else dm.port_min}-{hi[0] if hi else dm.port_max}"
        layer["media.port_range"] = (span, origin)
    return layer


def _path(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise _Bad("must be a directory path")
    return raw


def _keys_spec(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise _Bad("must be key lines (id:base64) or a file path", show_value=False)
    return raw


_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _name(raw: Any) -> str:
    if not isinstance(raw, str) or not _NAME_RE.fullmatch(raw):
        raise _Bad("must be 1-64 characters of A-Z a-z 0-9 _ . -")
    return raw


def _http_url(raw: Any) -> str:
    parts = urlsplit(raw) if isinstance(raw, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Bad("must be an http:// or https:// URL with a host")
    return raw.rstrip("/")


def _cluster(host: str, port: int, prefix: str, node_id: str | None, node_url: str | None,
             capacity: int, lease_ttl: int, drain_timeout: int, clustered: bool
             ) -> ClusterConfig:
    if clustered and node_url is None:
        if host in ("0.0.0.0", "::", ""):
            raise ConfigError("cluster.node_url: required with redis_url when host is a "
                              "wildcard address (MEDIASERVER_NODE_URL=http://10.0.0.5:7880): "
                              "the other nodes send clients there")
        node_url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    return ClusterConfig(prefix=prefix, node_id=node_id, node_url=node_url, capacity=capacity,
                         lease_ttl=lease_ttl, drain_timeout=drain_timeout)


def _recording(directory: str | None, keys: str | None, retention_days: int) -> RecordingConfig:
    if directory and not keys:
        raise ConfigError("recording.keys: required when recording.directory is set "
                          "(MEDIASERVER_RECORDING_KEYS: key lines id:base64 or a file path)")
    if keys:
        from mediaserver.recording.errors import RecordingError
        from mediaserver.recording.keys import load_keks

        try:
            load_keks(keys)
        except RecordingError as exc:
            raise ConfigError(f"recording.keys: {exc.message}") from None
    return RecordingConfig(directory=directory, keys=keys, retention_days=retention_days)


def build_config(flags: Mapping[str, Any], env: Mapping[str, str], file_path: str | None) -> Config:
    """Merge flags (only those given), environment and file into a validated Config.

    Raises ConfigError naming the first bad setting, its value (unless secret) and its source.
    """
    layers = [_flag_layer(flags), _env_layer(env), _file_layer(file_path) if file_path else {}]

    def given(name: str) -> bool:
        return any(name in layer for layer in layers)

    def get(name: str, parse: Callable[[Any], _T], default: _T) -> _T:
        for layer in layers:
            if name in layer:
                raw, origin = layer[name]
                try:
                    return parse(raw)
                except _Bad as bad:
                    shown = f" {raw!r}" if bad.show_value else ""
                    raise ConfigError(f"{name}:{shown} {bad.reason} (from {origin})") from None
        return default

    d, dm, dr, dc = Config(), MediaConfig(), RoomConfig(), ClusterConfig()
    dev = get("dev", _bool, False)
    lo, hi = get("media.port_range", _port_range, (dm.port_min, dm.port_max))
    media = MediaConfig(
        bind_host=get("media.bind_host", _ip, dm.bind_host),
        port_min=lo,
        port_max=hi,
        announced_ip=get("media.announced_ip", _ip, None),
        allow_loopback=get("media.allow_loopback", _bool, dev),
        adaptation=get("media.adaptation", _bool, dm.adaptation),
    )
    api_keys: dict[str, str] = get("api_keys", _api_keys, {})
    if dev:
        api_keys.setdefault(DEV_API_KEY, DEV_API_SECRET)
    if not api_keys:
        raise ConfigError(
            "no API keys configured: set MEDIASERVER_API_KEYS=key:secret"
            " or use --dev for development"
        )
    turn_rest = None
    if any(given(f"turn_rest.{k}") for k in ("urls", "shared_secret", "ttl_seconds")):
        if not (given("turn_rest.urls") and given("turn_rest.shared_secret")):
            raise ConfigError("turn_rest: urls and shared_secret must both be set")
        turn_rest = TurnRestConfig(
            urls=get("turn_rest.urls", lambda r: _ice_urls(r, ("turn:", "turns:")), ()),
            shared_secret=get("turn_rest.shared_secret", _secret, ""),
            ttl_seconds=get("turn_rest.ttl_seconds", _int(60, 7 * 86400), 86400),
        )
    host, port = get("host", _word, d.host), get("port", _int(1, 65535), d.port)
    redis_url = get("redis_url", _redis_url, None)
    workers = get("workers", _workers, d.workers)
    if redis_url is not None and workers > 1:
        raise ConfigError(f"workers: {workers} cannot be combined with redis_url: a cluster "
                          "node is one process; run one node per core instead "
                          "(docs/workers.md#cluster-mode)")
    cluster = _cluster(
        host, port,
        prefix=get("cluster.prefix", _name, dc.prefix),
        node_id=get("cluster.node_id", _name, None),
        node_url=get("cluster.node_url", _http_url, None),
        capacity=get("cluster.capacity", _int(1, 100000), dc.capacity),
        lease_ttl=get("cluster.lease_ttl", _int(2, 300), dc.lease_ttl),
        drain_timeout=get("cluster.drain_timeout", _int(0, 86400), dc.drain_timeout),
        clustered=redis_url is not None)
    return Config(
        host=host,
        port=port,
        api_keys=api_keys,
        dev=dev,
        media=media,
        ice_servers=get("ice_servers", _ice_servers, d.ice_servers),
        turn_rest=turn_rest,
        log_level=get("log_level", _log_level, d.log_level),
        max_message_bytes=get("max_message_bytes", _int(1024, 16 << 20), d.max_message_bytes),
        group_max_participants=get("group_max_participants", _int(2, 100), 16),
        redis_url=redis_url,
        use_uvloop=get("use_uvloop", _bool, d.use_uvloop),
        token_audience=get("token_audience", _word, d.token_audience),
        web_enabled=get("web_enabled", _bool, d.web_enabled),
        rooms=RoomConfig(
            empty_timeout=get("rooms.empty_timeout", _int(0, 86400), dr.empty_timeout),
            max_duration=get("rooms.max_duration", _int(60, 7 * 86400), dr.max_duration),
            resume_grace=get("rooms.resume_grace", _int(0, 3600), dr.resume_grace),
            report_retention=get("rooms.report_retention", _int(0, 90 * 86400),
                                 dr.report_retention),
        ),
        signal_idle_timeout=get("signal_idle_timeout", _int(1, 3600), d.signal_idle_timeout),
        recording=_recording(get("recording.directory", _path, None),
                             get("recording.keys", _keys_spec, None),
                             get("recording.retention_days", _int(0, 36500), 0)),
        cluster=cluster,
        limits=_limits(get),
        tls=_tls(get("tls.cert", _path, None), get("tls.key", _path, None)),
        shutdown_timeout=get("shutdown_timeout", _int(1, 600), d.shutdown_timeout),
        workers=workers,
    )


_LIMIT_RANGES = {  # LimitsConfig field -> (lowest, highest) accepted
    "messages_per_second": (1, 10000), "message_burst": (1, 100000),
    "connections_per_ip": (0, 100000), "joins_per_second": (0, 10000),
    "max_participants": (0, 100000), "max_loop_lag_ms": (0, 60000), "send_queue": (8, 100000),
    "publish_video_kbps": (0, 1000000), "publish_audio_kbps": (0, 1000000),
}


def _limits(get: Callable[[str, Callable[[Any], int], int], int]) -> LimitsConfig:
    d = LimitsConfig()
    return LimitsConfig(**{name: get(f"limits.{name}", _int(lo, hi), getattr(d, name))
                           for name, (lo, hi) in _LIMIT_RANGES.items()})


def _tls(cert: str | None, key: str | None) -> TlsConfig:
    if bool(cert) != bool(key):
        raise ConfigError("tls: cert and key must both be set (PEM files)")
    for name, path in (("tls.cert", cert), ("tls.key", key)):
        if path is not None:
            try:
                with open(path, "rb"):
                    pass
            except OSError as e:
                raise ConfigError(f"{name}: cannot read {path!r}: {e.strerror}") from None
    return TlsConfig(cert=cert, key=key)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The serve flags; every default is None so build_config can tell "not given" apart.

    Values stay strings: build_config parses them like environment values, so a bad flag gets
    the same message naming the setting as a bad variable.
    """
    parser.add_argument("--config", metavar="PATH", help=f"TOML config file (env {CONFIG_ENV})")
    for _, flag, _, kwargs in _SETTINGS:
        if flag is not None:
            parser.add_argument(flag, default=None, **kwargs)
