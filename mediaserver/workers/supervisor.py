"""The worker processes of a node: started, watched, restarted when one dies, stopped together.

Each worker is ``python -m mediaserver.workers.child`` in a session of its own (a Ctrl-C in
the terminal reaches the front only, which then stops the workers in order). Its
instructions (``WorkerSpec``) arrive as one line on its stdin, and the pipe stays open: when
the front dies, even by SIGKILL, the worker reads end-of-file and shuts down by itself, so no
worker outlives its front holding ports.

Signals: ``stop`` sends SIGTERM (each worker ends its rooms as on a single node) and SIGKILL
after the timeout; ``drain`` sends SIGUSR1 and restarts nothing from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from mediaserver.workers.spec import RestartBackoff, WorkerSpec

log = logging.getLogger(__name__)

CHILD_MODULE = "mediaserver.workers.child"
KILL_GRACE = 2.0  # seconds between SIGKILL and giving up on a worker's exit


@dataclass
class WorkerProcess:
    """One worker slot: its socket stays, its process changes with each restart."""

    spec: WorkerSpec
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0  # monotonic time of the current process's start
    restarts: int = 0
    running: asyncio.Event = field(default_factory=asyncio.Event)  # set while a process runs

    @property
    def index(self) -> int:
        return self.spec.index

    @property
    def pid(self) -> int | None:
        proc = self.proc
        return proc.pid if proc is not None and proc.returncode is None else None


def describe_exit(code: int | None) -> str:
    if code is None:
        return "did not start"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


class Supervisor:
    """Keeps one process running per spec until ``stop`` (or, after ``drain``, until it ends).

    ``on_start`` and ``on_exit`` are called with the slot as its process starts and ends.
    """

    def __init__(self, specs: Sequence[WorkerSpec], env: Mapping[str, str],
                 on_start: Callable[[WorkerProcess], None],
                 on_exit: Callable[[WorkerProcess], None]) -> None:
        self.workers = [WorkerProcess(spec) for spec in specs]
        self.env = dict(env)
        self.on_start, self.on_exit = on_start, on_exit
        self.stopping = self.draining = False
        self._halt = asyncio.Event()  # set by stop and drain: cut a restart wait short
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._keep(w), name=f"worker-{w.index}")
                       for w in self.workers]

    async def _keep(self, w: WorkerProcess) -> None:
        backoff = RestartBackoff()
        while True:
            code = await self._run_once(w)
            if self.stopping or self.draining:
                return
            delay = backoff.delay(w.started_at, time.monotonic())
            log.warning("worker %d %s; starting it again in %.1f s", w.index,
                        describe_exit(code), delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._halt.wait(), delay)
            if self.stopping or self.draining:
                return
            w.restarts += 1

    async def _run_once(self, w: WorkerProcess) -> int | None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(w.spec.socket)  # a dead worker's socket file
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", CHILD_MODULE, stdin=asyncio.subprocess.PIPE,
                env=self.env, start_new_session=True)
        except OSError as exc:
            log.error("worker %d could not be started: %s", w.index, exc)
            return None
        w.proc, w.started_at = proc, time.monotonic()
        assert proc.stdin is not None
        with contextlib.suppress(ConnectionError):
            proc.stdin.write(w.spec.to_line())
            await proc.stdin.drain()
        log.info("worker %d started (pid %d)", w.index, proc.pid)
        w.running.set()
        self.on_start(w)
        try:
            code = await proc.wait()
        finally:
            w.running.clear()
            proc.stdin.close()
        self.on_exit(w)
        return code

    def signal(self, sig: int) -> None:
        """Send ``sig`` to every running worker."""
        for w in self.workers:
            if w.pid is not None and w.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(sig)

    def drain(self) -> None:
        """Every worker drains (SIGUSR1) and exits when empty; none is started again."""
        self.draining = True
        self._halt.set()
        self.signal(signal.SIGUSR1)

    async def finished(self) -> None:
        """Return when every worker has ended for good (after ``drain`` or ``stop``)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def stop(self, timeout: float) -> None:
        """SIGTERM to all; SIGKILL to those still running after ``timeout`` seconds."""
        self.stopping = True
        self._halt.set()
        self.signal(signal.SIGTERM)
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=timeout)
        if pending:
            log.warning("%d worker(s) still running after %ss: killing them", len(pending),
                        timeout)
            self.signal(signal.SIGKILL)
            _, pending = await asyncio.wait(pending, timeout=KILL_GRACE)
            for task in pending:
                task.cancel()
