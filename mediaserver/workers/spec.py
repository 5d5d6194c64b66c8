"""What a worker process is told, how many there are, and how quickly one is restarted (pure)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from mediaserver.config import Config


def resolve_workers(requested: int, cpus: int, clustered: bool) -> int:
    """The number of worker processes: ``requested``, or one per usable core for 0 (auto).

    A cluster node (``redis_url``) is one process: config refuses an explicit count above 1
    there, and auto means 1.
    """
    if requested > 0:
        return requested
    return 1 if clustered else max(1, cpus)


@dataclass(frozen=True)
class WorkerSpec:
    """A worker's start-up instructions, written as one JSON line to its stdin.

    ``flags`` are the front's own ``serve`` flags (the values as typed), so the worker builds
    the very same Config from them, the inherited environment and ``config_path``; secrets
    given as flags thereby stay off the worker's command line.
    """

    index: int
    socket: str  # the Unix socket it serves HTTP on
    flags: Mapping[str, Any]
    config_path: str | None = None

    def to_line(self) -> bytes:
        return json.dumps({"index": self.index, "socket": self.socket, "flags": dict(self.flags),
                           "config_path": self.config_path}).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes | str) -> WorkerSpec:
        data = json.loads(line)
        return cls(index=int(data["index"]), socket=str(data["socket"]),
                   flags=dict(data["flags"]), config_path=data.get("config_path"))


def worker_config(config: Config, index: int) -> Config:
    """The node's Config as one worker applies it.

    Connections per address are counted by the front, which sees the clients' addresses (a
    worker sees only the front). Only worker 0 sweeps expired recordings, so that two
    workers never shred the same directory at once.
    """
    recording = config.recording
    if index != 0:
        recording = replace(recording, retention_days=0)
    return replace(config, workers=1, recording=recording,
                   limits=replace(config.limits, connections_per_ip=0))


class RestartBackoff:
    """How long to wait before starting a worker again after its process ended.

    The first restart comes after ``first`` seconds and each quick death doubles the wait, up
    to ``limit``; a worker that ran for ``stable_after`` seconds starts the count over. A
    worker that crashes at once therefore costs a restart every ``limit`` seconds, not a
    busy loop.
    """

    def __init__(self, first: float = 0.5, limit: float = 10.0,
                 stable_after: float = 30.0) -> None:
        self.first, self.limit, self.stable_after = first, limit, stable_after
        self._next = first

    def delay(self, started_at: float, ended_at: float) -> float:
        """The wait before the next start, for a process that ran from ``started_at``."""
        if ended_at - started_at >= self.stable_after:
            self._next = self.first
        wait = self._next
        self._next = min(self.limit, self._next * 2)
        return wait
