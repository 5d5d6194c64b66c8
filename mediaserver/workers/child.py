"""A worker process: ``python -m mediaserver.workers.child``, started by the front only.

It reads its ``WorkerSpec`` line from stdin, builds the node's Config the way the front did
(same flags, same environment, same file), and runs the ordinary server on its Unix socket.
It stops on SIGTERM like any node, and also when stdin reaches end-of-file: the front is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys

from mediaserver.cli import EXIT_USAGE, install_uvloop, setup_logging
from mediaserver.config import ConfigError, build_config
from mediaserver.workers.spec import WorkerSpec, worker_config

_orphaned: list[bool] = []  # set by front_gone: no front will start this worker again


async def front_gone() -> None:
    """Return when the front's end of our stdin closes (it exited, however it died)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0,
                                                                closefd=False))
    try:
        while await reader.read(4096):
            pass
        _orphaned.append(True)
    finally:
        transport.close()


def main() -> int:
    line = sys.stdin.buffer.readline()
    if not line:
        print("mediaserver.workers.child is started by `mediaserver serve --workers N`",
              file=sys.stderr)
        return EXIT_USAGE
    spec = WorkerSpec.from_line(line)
    try:
        config = build_config(spec.flags, os.environ, spec.config_path)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return EXIT_USAGE
    config = worker_config(config, spec.index)
    setup_logging(config.log_level, f"worker-{spec.index}")
    if config.use_uvloop:
        install_uvloop()
    from mediaserver.signaling.app import run_server

    run_server(config, unix_path=spec.socket, until=front_gone)
    if _orphaned:  # a front killed outright left its private directory: the last one out
        with contextlib.suppress(OSError):
            os.unlink(spec.socket)
            os.rmdir(os.path.dirname(spec.socket))
    return 0


if __name__ == "__main__":
    sys.exit(main())
