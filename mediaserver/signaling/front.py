"""The front of a multi-worker node: the one public port in front of one worker per core.

Clients and operators see a single server. The front serves the session page and SDK,
``/healthz`` and ``/readyz`` itself; it proxies each signalling WebSocket to the worker that
owns the room named in its first ``join``/``resume`` (``front_relay``), and sends admin calls
to the room's worker or to all of them, merging lists and ``/metrics`` (``front_admin``).
Media never passes through it: each worker's ICE candidates are its own UDP sockets.

The front learns where rooms are from its own placements and from polling each worker's
``/v1/node`` every second (``mediaserver.workers.placement``); the worker processes themselves
are ``mediaserver.workers.supervisor``'s. docs/workers.md describes the whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from mediaserver import limits
from mediaserver.config import Config
from mediaserver.signaling.tls import ssl_context
from mediaserver.tokens import Grants, create_token
from mediaserver.workers.placement import WorkerPlacement
from mediaserver.workers.spec import WorkerSpec
from mediaserver.workers.supervisor import Supervisor, WorkerProcess

log = logging.getLogger(__name__)

WORKER_URL = "http://worker"  # the host is ignored: each worker has its own Unix connector
POLL_INTERVAL = 1.0  # seconds between reports asked of a ready worker
STARTING_POLL_INTERVAL = 0.1  # ... of one that has not answered since it started
POLL_TIMEOUT = aiohttp.ClientTimeout(total=2.0)
UNANSWERED_POLLS = 3  # a worker that misses this many reports in a row takes no new room
TOKEN_TTL = 300  # seconds; the front's own admin token for its polls, renewed well before


class Front:
    """The front's state: workers, placement, open client sockets, drain and stop."""

    def __init__(self, config: Config, specs: list[WorkerSpec], env: Mapping[str, str]) -> None:
        self.config = config
        self.placement = WorkerPlacement(len(specs))
        self.supervisor = Supervisor(specs, env, self._started, self._exited)
        self.http: list[aiohttp.ClientSession] = []
        self.clients: set[web.WebSocketResponse] = set()
        self.connections = limits.ConnectionCounter(config.limits.connections_per_ip)
        self.errors: Counter[str] = Counter()  # error replies the front sent itself, by code
        self.draining = self.stopping = False
        self.stop: Callable[[], None] | None = None  # set by run_front
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.registry.register(_FrontCollector(self))
        self._token: tuple[float, str] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def workers(self) -> list[WorkerProcess]:
        return self.supervisor.workers

    def state_of(self, index: int) -> str:
        if self.workers[index].pid is None:
            return "down"
        return "ready" if self.placement.loads[index].ready else "starting"

    def ready_workers(self) -> list[int]:
        return [w.index for w in self.workers if self.state_of(w.index) == "ready"]

    def _started(self, w: WorkerProcess) -> None:
        self.placement.set_ready(w.index, False)  # until it answers a poll

    def _exited(self, w: WorkerProcess) -> None:
        lost = self.placement.worker_lost(w.index)
        if self.stopping or self.draining:
            log.info("worker %d ended", w.index)
        else:
            log.warning("worker %d ended; its %d room(s) ended with it", w.index, lost)

    def admin_token(self) -> str:
        """A short-lived admin token of the node's first key, for the front's own polls."""
        now = time.time()
        if self._token is None or now - self._token[0] > TOKEN_TTL / 5:
            key, secret = next(iter(self.config.api_keys.items()))
            token = create_token(key, secret, identity="mediaserver-front", now=now,
                                 grants=Grants(publish=False, subscribe=False, admin=True),
                                 ttl_seconds=TOKEN_TTL, audience=self.config.token_audience)
            self._token = (now, token)
        return self._token[1]

    def drain(self) -> None:
        """No new rooms anywhere; the node exits when every worker has drained and ended."""
        if self.draining:
            return
        log.info("drain: no new sessions; exit when every worker's last participant left or "
                 "after %ds", self.config.cluster.drain_timeout)
        self.draining = True
        self.supervisor.drain()
        self._tasks.append(asyncio.create_task(self._stop_when_drained()))

    async def _stop_when_drained(self) -> None:
        await self.supervisor.finished()
        log.info("drain: every worker has ended; stopping")
        if self.stop is not None:
            self.stop()

    async def _poll(self, index: int) -> None:
        """Ask the worker for its rooms, forever: placement follows, readiness too."""
        w, missed = self.workers[index], 0
        while True:
            await w.running.wait()
            pid, asked_at = w.pid, time.monotonic()
            body = await self._report(index)
            if pid is None or pid != w.pid:  # the process ended meanwhile: its report is void
                await asyncio.sleep(STARTING_POLL_INTERVAL)
                continue
            if body is not None:
                was_ready = self.placement.loads[index].ready
                _, conflicts = self.placement.observe(index, body["rooms"],
                                                      body["participants"], asked_at)
                if not was_ready:
                    log.info("worker %d ready (pid %d)", index, pid)
                if conflicts:
                    log.error("worker %d lists %d room(s) placed on another worker", index,
                              conflicts)
                missed = 0
            else:
                missed += 1
                if missed == UNANSWERED_POLLS and self.placement.loads[index].ready:
                    log.warning("worker %d does not answer; no new rooms there", index)
                    self.placement.set_ready(index, False)
            ready = self.placement.loads[index].ready
            await asyncio.sleep(POLL_INTERVAL if ready else STARTING_POLL_INTERVAL)

    async def _report(self, index: int) -> dict[str, Any] | None:
        headers = {"Authorization": f"Bearer {self.admin_token()}"}
        try:
            async with self.http[index].get(WORKER_URL + "/v1/node", headers=headers,
                                            timeout=POLL_TIMEOUT) as r:
                if r.status != 200:
                    return None
                body = await r.json()
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return None
        if not isinstance(body, dict) or not isinstance(body.get("rooms"), list):
            return None
        return {"rooms": [str(x) for x in body["rooms"]],
                "participants": int(body.get("participants", 0))}

    async def start(self) -> None:
        self.http = [aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=w.spec.socket),
                                           timeout=aiohttp.ClientTimeout(total=None,
                                                                         sock_connect=5.0))
                     for w in self.workers]
        self.supervisor.start()
        self._tasks += [asyncio.create_task(self._poll(w.index)) for w in self.workers]

    async def close(self) -> None:
        await self.supervisor.stop(self.config.shutdown_timeout)
        for task in self._tasks:
            task.cancel()
        for http in self.http:
            await http.close()


FRONT_KEY = web.AppKey("front", Front)


class _FrontCollector:
    """The front's own metrics, read from its state at each scrape."""

    def __init__(self, front: Front) -> None:
        self.front = front

    def collect(self) -> Iterator[Metric]:
        front = self.front
        states = GaugeMetricFamily("mediaserver_workers", "Worker processes by state",
                                   labels=["state"])
        for state in ("ready", "starting", "down"):
            states.add_metric([state], sum(front.state_of(w.index) == state
                                           for w in front.workers))
        yield states
        yield CounterMetricFamily("mediaserver_worker_restarts",
                                  "Worker processes started again after theirs ended",
                                  value=sum(w.restarts for w in front.workers))
        yield GaugeMetricFamily("mediaserver_front_signal_sockets",
                                "Signalling WebSockets open at the front",
                                value=len(front.clients))
        errors = CounterMetricFamily("mediaserver_signal_errors",
                                     "Signalling error replies by code", labels=["code"])
        for code, count in sorted(front.errors.items()):
            errors.add_metric([code], count)
        yield errors


def create_front_app(front: Front) -> web.Application:
    from mediaserver.signaling import front_admin, front_relay

    app = web.Application(client_max_size=1024 * 1024)
    app[FRONT_KEY] = front
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/v1/signal", front_relay.signal_handler)
    front_admin.add_routes(app)
    if front.config.web_enabled:
        from mediaserver.signaling import webpage

        webpage.add_routes(app)
    app.on_shutdown.append(_close_clients)
    return app


async def healthz(request: web.Request) -> web.Response:
    if request.app[FRONT_KEY].ready_workers():
        return web.json_response({"status": "ok"})
    return web.json_response({"status": "no worker ready"}, status=503)


async def readyz(request: web.Request) -> web.Response:
    front = request.app[FRONT_KEY]
    ready = len(front.ready_workers())
    ok = ready > 0 and not (front.draining or front.stopping)
    return web.json_response({"status": "ready" if ok else "not ready",
                              "workers": len(front.workers), "workers_ready": ready},
                             status=200 if ok else 503)


async def _close_clients(app: web.Application) -> None:
    """Sockets still open once the workers are gone (their workers closed the rest)."""
    clients = list(app[FRONT_KEY].clients)
    await asyncio.gather(*(ws.close(code=1001, message=b"server shutting down")
                           for ws in clients), return_exceptions=True)


def run_front(config: Config, workers: int, flags: Mapping[str, Any], config_path: str | None,
              env: Mapping[str, str]) -> None:
    """Run the front and ``workers`` worker processes until SIGINT/SIGTERM or a finished drain.

    On the signal the workers get SIGTERM and end their rooms as a single node does (their
    clients are told through the still-open proxied sockets); after ``shutdown_timeout`` the
    ones left are killed. SIGUSR1 drains every worker. A second signal stops waiting.
    """

    async def main() -> None:
        runtime = tempfile.mkdtemp(prefix="mediaserver-workers-")  # mode 0700: ours alone
        try:
            specs = [WorkerSpec(i, os.path.join(runtime, f"worker-{i}.sock"), flags,
                                config_path) for i in range(workers)]
            front = Front(config, specs, env)
            await _serve(front)
        finally:
            shutil.rmtree(runtime, ignore_errors=True)
        log.info("stopped")

    asyncio.run(main())


async def _serve(front: Front) -> None:
    config = front.config
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, front.drain)
    front.stop = stop.set
    app = create_front_app(front)
    runner = web.AppRunner(app, access_log_format='%a "%r" %s %b %Tf', shutdown_timeout=2.0)
    await runner.setup()
    try:
        tls = ssl_context(config)
        site = web.TCPSite(runner, config.host, config.port, ssl_context=tls)
        await site.start()  # a port in use fails here, before any worker is started
        await front.start()
        log.info("mediaserver listening on %s://%s:%d, %d workers", "https" if tls else "http",
                 config.host, config.port, len(front.workers))
        await stop.wait()
        log.info("shutting down (at most %ss)", config.shutdown_timeout)
        front.stopping = True
        stop.clear()
        # The workers stop first, while the relays are open, so that their clients hear
        # ``removed``; runner.cleanup() then closes whatever is left (hence no cleanup_ctx).
        closing = asyncio.create_task(front.close())
        waiter = asyncio.create_task(stop.wait())  # a second signal: the workers stop waiting
        done, _ = await asyncio.wait({closing, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if closing not in done:
            front.supervisor.signal(signal.SIGTERM)
            await asyncio.wait({closing}, timeout=config.shutdown_timeout)
        waiter.cancel()
    finally:
        with contextlib.suppress(Exception):
            await front.close()  # again, if something above failed: never leave workers
        await runner.cleanup()
