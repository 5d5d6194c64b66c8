"""The ``mediaserver`` command: serve, mint tokens for testing, show the effective config.

The CLI is the edge where the outside world is read (argv, os.environ, the clock) and passed
inward as plain values; config and tokens stay pure. Exit codes: 0 success, 2 bad usage or
configuration (argparse's own convention), so scripts can tell a typo from a crash.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from mediaserver.config import (
    SERVE_FLAGS,
    Config,
    ConfigError,
    add_serve_arguments,
    build_config,
    config_file_path,
)
from mediaserver.tokens import Grants, Role, SessionKind, create_token, default_grants

EXIT_OK = 0
EXIT_USAGE = 2
log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mediaserver", description="WebRTC selective-forwarding media server"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server until SIGINT/SIGTERM")
    add_serve_arguments(serve)
    serve.set_defaults(handler=_serve)

    config = commands.add_parser("config", help="inspect configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_commands.add_parser("show", help="print the effective config, secrets hidden")
    add_serve_arguments(show)
    show.set_defaults(handler=_config_show)

    token = commands.add_parser("token", help="access tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = token_commands.add_parser(
        "create",
        help="mint an access token (for development and tests)",
        description="Print a signed access token. The key is --api-key/--api-secret, else the"
        " configured key named by --api-key, else the first configured key.",
    )
    create.add_argument("--room", help="room name (optional with --admin)")
    create.add_argument("--identity", required=True, help="stable opaque user id")
    create.add_argument("--name", default="", help="display name")
    create.add_argument("--role", default=Role.PARTICIPANT.value, choices=[r.value for r in Role])
    create.add_argument("--kind", choices=[k.value for k in SessionKind])
    create.add_argument("--ttl", type=int, default=3600, metavar="SECONDS", help="default 3600")
    create.add_argument("--admin", action="store_true", help="grant the room admin API")
    create.add_argument("--no-publish", action="store_true", help="subscribe only")
    create.add_argument("--record", action="store_true", help="grant recording")
    create.add_argument("--api-key", metavar="KEY", help="API key to sign with")
    create.add_argument("--api-secret", metavar="SECRET", help="its secret (else from config)")
    create.add_argument("--config", metavar="PATH", help="TOML config file to take keys from")
    create.add_argument("--dev", action="store_true", default=None, help="use the dev key")
    create.set_defaults(handler=_token_create)

    from mediaserver.recording.tools import add_recordings_parser

    add_recordings_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and ``python -m mediaserver``; returns the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits on --help and on usage errors
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    handler = args.handler
    try:
        code: int = handler(args, os.environ)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return code


def _load(flags: Mapping[str, Any], env: Mapping[str, str]) -> Config:
    return build_config(flags, env, config_file_path(flags, env))


def _serve(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    flags = vars(args)
    config = _load(flags, env)
    setup_logging(config.log_level)
    from mediaserver.workers.spec import resolve_workers

    clustered = config.redis_url is not None
    workers = resolve_workers(config.workers, usable_cpus(), clustered)
    if clustered and config.workers == 0:
        log.info("cluster mode (redis_url): one process per node; run a node per core to use "
                 "more of them (docs/workers.md)")
    loop_name = "uvloop" if config.use_uvloop and install_uvloop() else "asyncio"
    from mediaserver.sfu import fastsend

    if not fastsend.AVAILABLE:
        log.warning("the C packet path (mediaserver/sfu/_fastpath.c) was not built: "
                    "forwarding in pure Python costs more CPU per packet; install with a C "
                    "compiler to build it")
    log.info(
        "starting on %s:%d (media UDP %s:%d-%d, %s event loop, %s packet path, %s%s)",
        config.host,
        config.port,
        config.media.bind_host,
        config.media.port_min,
        config.media.port_max,
        loop_name,
        "C" if fastsend.AVAILABLE else "pure-Python",
        f"{workers} workers" if workers > 1 else "one process",
        ", DEV MODE: do not expose" if config.dev else "",
    )
    if workers > 1:
        from mediaserver.signaling.front import run_front

        typed = {k: v for k, v in flags.items() if k in SERVE_FLAGS and v is not None}
        run_front(config, workers, typed, config_file_path(flags, env), env)
        return EXIT_OK
    # Imported here: signaling pulls in aiohttp and aiortc, which token/config commands skip.
    from mediaserver.signaling.app import run_server

    run_server(config)
    return EXIT_OK


def usable_cpus() -> int:
    """Cores this process may run on (its affinity mask), which a container may narrow."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def setup_logging(level: str, process: str = "") -> None:
    """Log to stderr; ``process`` (``worker-2``) tags each line of a worker process."""
    tag = f"{process} " if process else ""
    logging.basicConfig(format=f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s")
    logging.getLogger().setLevel(level)


def install_uvloop() -> bool:
    """Make new event loops uvloop ones; False (stock asyncio) when it is not installed."""
    try:
        import uvloop
    except ImportError:
        log.warning("uvloop is not installed; using the stock asyncio event loop")
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def _config_show(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    config = _load(vars(args), env)
    print(json.dumps(config.redacted(), indent=2))
    return EXIT_OK


def _token_create(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    if args.api_secret is not None and args.api_key is None:
        return _usage_error("token create: --api-secret needs --api-key")
    if args.room is None and not args.admin:
        return _usage_error("token create: --room is required unless --admin is given")
    flags: dict[str, Any] = {"config": args.config, "dev": args.dev}
    if args.api_secret is not None:
        # Through build_config too, so an explicit secret meets the same length rule.
        flags["api_key"] = [f"{args.api_key}:{args.api_secret}"]
    config = _load(flags, env)
    key = args.api_key if args.api_key is not None else next(iter(config.api_keys))
    if key not in config.api_keys:
        return _usage_error(f"token create: API key {key!r} is not configured")
    grants = None
    if args.admin or args.no_publish or args.record:
        base = default_grants(args.role)
        grants = Grants(
            publish=base.publish and not args.no_publish,
            subscribe=base.subscribe,
            admin=base.admin or args.admin,
            record=base.record or args.record,
        )
    try:
        token = create_token(
            key,
            config.api_keys[key],
            identity=args.identity,
            room=args.room,
            name=args.name,
            role=args.role,
            kind=args.kind,
            grants=grants,
            ttl_seconds=args.ttl,
            now=time.time(),
            audience=config.token_audience,
        )
    except ValueError as e:
        return _usage_error(f"token create: {e}")
    print(token)
    return EXIT_OK


def _usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE
