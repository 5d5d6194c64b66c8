"""The three servers the comparison runs, each as its own process on loopback.

- ``mediaserver``: ours, ``python -m mediaserver serve --dev --workers 1`` (one process);
- ``janus``: Janus VideoRoom (Debian's ``janus`` package) from a throw-away configuration
  folder: only the VideoRoom plugin and the WebSocket transport are loaded, the WebSocket
  listens on 127.0.0.1, ICE gathers on the loopback interface only, no STUN;
- ``relay``: ``bench/relay_server.py``, aiortc decoding once and encoding per subscriber.

Each start function returns a ``Server`` whose ``url`` the load-test CLI takes as ``--url``
(with the matching ``--target``) and whose ``pid`` is the process whose CPU is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp

from mediaserver.sfu.aiortc_adapter import host_addresses

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("mediaserver", "janus", "relay")
JANUS_LIB_GLOBS = ("/usr/lib/*/janus", "/usr/lib/janus", "/usr/local/lib/janus",
                   "/opt/janus/lib/janus")


class ServerError(RuntimeError):
    """A server could not be started or did not become ready."""


@dataclass
class Server:
    target: str
    proc: subprocess.Popen[bytes]
    url: str  # the signalling URL: --url of the load-test CLI
    http: str | None  # base URL of /metrics and /readyz (ours only)
    log_path: Path
    cleanup: list[Path] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for path in self.cleanup:
            shutil.rmtree(path, ignore_errors=True)
        return self.proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def free_port() -> int:
    """A free TCP port on loopback for a server process about to start.

    Taken below the kernel's ephemeral range: a port the kernel hands out (bind to 0) can
    be handed out again, to any outgoing connection, in the seconds before the server
    binds it (a cluster test's node lost its port so, to a Redis or HTTP client).
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port))
            return port
    raise RuntimeError("no free port below the ephemeral range")


def spawn(cmd: list[str], log_path: Path, **kw: object) -> subprocess.Popen[bytes]:
    log: IO[bytes]
    with open(log_path, "ab") as log:
        log.write(f"=== {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
        log.flush()
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, **kw)  # type: ignore[call-overload,no-any-return]


def pinned(cmd: list[str], cpus: str | None) -> list[str]:
    """``cmd`` under ``taskset -c cpus`` (which execs it: the pid stays the command's), or
    as it is when no CPUs are given or taskset is missing."""
    return ["taskset", "-c", cpus, *cmd] if cpus and shutil.which("taskset") else cmd


def mediaserver_cmd(port: int, bind_host: str, workers: int = 1) -> list[str]:
    """``mediaserver serve`` on ``port``, media on ``bind_host``; one worker by default, so
    that its CPU is one process's (the figure per core)."""
    cmd = [sys.executable, "-m", "mediaserver", "serve", "--dev", "--host", "127.0.0.1",
           "--port", str(port), "--bind-host", bind_host, "--workers", str(workers)]
    if not bind_host.startswith("127."):
        cmd.append("--no-allow-loopback-candidates")  # only the address the clients use
    return cmd


def start_mediaserver(log_path: Path, ice_address: str, cpus: str | None = None) -> Server:
    port = free_port()
    return Server("mediaserver", spawn(pinned(mediaserver_cmd(port, ice_address), cpus),
                                       log_path, cwd=ROOT),
                  f"ws://127.0.0.1:{port}/v1/signal", f"http://127.0.0.1:{port}", log_path)


def start_relay(log_path: Path, ice_address: str, cpus: str | None = None) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "bench.relay_server", "--port", str(port),
           "--ice-address", ice_address]
    return Server("relay", spawn(pinned(cmd, cpus), log_path, cwd=ROOT),
                  f"ws://127.0.0.1:{port}/v1/signal", f"http://127.0.0.1:{port}", log_path)


def janus_lib_dir() -> Path | None:
    """Where the janus package keeps its plugins and transports, if it is installed."""
    for pattern in JANUS_LIB_GLOBS:
        for found in sorted(glob.glob(pattern)):
            if Path(found, "plugins", "libjanus_videoroom.so").exists():
                return Path(found)
    return None


def janus_available() -> bool:
    return shutil.which("janus") is not None and janus_lib_dir() is not None


def primary_address() -> str | None:
    """The first IPv4 address that is not a loopback one: where Janus gathers candidates.

    Janus 1.x skips loopback interfaces when it gathers ICE candidates (src/ice.c), so it
    cannot use 127.0.0.1. Datagrams between two addresses of the same host still go through
    the kernel's loopback device, so the path is the same as 127.0.0.1's."""
    found = host_addresses("0.0.0.0", allow_loopback=False)
    return found[0] if found else None


def write_janus_config(folder: Path, ws_port: int, lib_dir: Path, ice_address: str) -> None:
    """janus.jcfg and the two module configurations, and folders of links holding only
    the VideoRoom plugin and the WebSocket transport (Janus loads every module it finds)."""
    modules = {"plugins": "libjanus_videoroom.so", "transports": "libjanus_websockets.so"}
    for sub in ("plugins", "transports", "events", "loggers"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for sub, name in modules.items():
        (folder / sub / name).symlink_to(lib_dir / sub / name)
    (folder / "janus.jcfg").write_text(f"""general: {{
    configs_folder = "{folder}"
    plugins_folder = "{folder}/plugins"
    transports_folder = "{folder}/transports"
    events_folder = "{folder}/events"
    loggers_folder = "{folder}/loggers"
    debug_level = 4
    server_name = "bench"
}}
certificates: {{
}}
media: {{
}}
nat: {{
    nice_debug = false
    ice_enforce_list = "{ice_address}"
    ignore_mdns = true
}}
plugins: {{
}}
transports: {{
}}
loggers: {{
}}
events: {{
}}
""")
    # Rooms are created by the clients (loadtest/janus.py: 16 publishers, VP8 + Opus, no
    # bitrate cap) under the load test's room names, hence string ids.
    (folder / "janus.plugin.videoroom.jcfg").write_text(
        "general: {\n    string_ids = true\n}\n")
    (folder / "janus.transport.websockets.jcfg").write_text(f"""general: {{
    json = "compact"
    ws = true
    ws_port = {ws_port}
    ws_ip = "127.0.0.1"
    wss = false
}}
admin: {{
    admin_ws = false
    admin_wss = false
}}
""")


def start_janus(log_path: Path, ice_address: str, cpus: str | None = None) -> Server:
    lib_dir = janus_lib_dir()
    if shutil.which("janus") is None or lib_dir is None:
        raise ServerError("janus is not installed (Debian: apt-get install -y janus)")
    if ice_address.startswith("127."):
        raise ServerError("Janus gathers no candidates on loopback interfaces: give it the "
                          "host's own address (servers.primary_address())")
    folder = Path(tempfile.mkdtemp(prefix="bench-janus-"))
    port = free_port()
    write_janus_config(folder, port, lib_dir, ice_address)
    cmd = ["janus", "-F", str(folder), "-C", str(folder / "janus.jcfg"), "--disable-colors"]
    return Server("janus", spawn(pinned(cmd, cpus), log_path), f"ws://127.0.0.1:{port}", None,
                  log_path, [folder])


def start(target: str, log_path: Path, ice_address: str, cpus: str | None = None) -> Server:
    """Start ``target`` with its media on ``ice_address`` (all three on the same one, so
    that the path is the same; Janus cannot use 127.0.0.1), pinned to ``cpus`` if given
    (every thread: Janus's too)."""
    starters = {"mediaserver": start_mediaserver, "janus": start_janus, "relay": start_relay}
    return starters[target](log_path, ice_address, cpus)


async def _answers(server: Server, http: aiohttp.ClientSession) -> bool:
    if server.http is not None:
        async with http.get(f"{server.http}/readyz") as r:
            return r.status == 200
    async with http.ws_connect(server.url, protocols=("janus-protocol",)) as ws:
        await ws.send_str(json.dumps({"janus": "info", "transaction": "ready"}))
        reply = json.loads((await ws.receive(timeout=5)).data)
        return reply.get("janus") == "server_info"


async def wait_ready(server: Server, timeout: float = 30.0) -> None:
    """Poll until the server answers (``/readyz``, or Janus's ``info``), or fail loudly."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            if server.proc.poll() is not None:
                raise ServerError(f"{server.target} exited with code {server.proc.returncode}:"
                                  f"\n{server.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, ValueError):
                if await _answers(server, http):
                    return
            if time.monotonic() > deadline:
                raise ServerError(f"{server.target} not ready after {timeout:.0f} s:"
                                  f"\n{server.log_tail()}")
            await asyncio.sleep(0.1)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (a front's workers, Janus's helpers), from /proc."""
    pids, seen = [pid], {pid}
    i = 0
    while i < len(pids):
        for task in glob.glob(f"/proc/{pids[i]}/task/*/children"):
            with contextlib.suppress(OSError), open(task) as f:
                for child in (int(c) for c in f.read().split()):
                    if child not in seen:
                        seen.add(child)
                        pids.append(child)
        i += 1
    return pids


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command's name (``fields[11]`` is utime),
    or None for a process gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_cpu_clock(pid: int) -> float | None:
    """CPU seconds of process ``pid`` to the nanosecond, every thread of it, exited ones
    too: its CPU-time clock (what clock_getcpuclockid(3) gives, made by hand: Python has no
    binding). None where the system has none for it (the process is gone)."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)  # MAKE_PROCESS_CPUCLOCK(pid, SCHED)
    except OSError:
        return None


def process_tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid``, all its threads, its live descendants and the children it
    has already reaped, from each process's CPU-time clock (ns). utime + stime in /proc
    count clock ticks (10 ms): a 1:1 call's server runs ~40 of them in a 30 s window, so a
    tick was 2.5 % of the figure. Reaped children (cutime + cstime) and any process
    without a clock still come in ticks."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for p in process_tree(pid):
        fields = _stat_fields(p)
        if fields is None:
            continue  # exited meanwhile
        clock = process_cpu_clock(p)
        total += clock if clock is not None else (int(fields[11]) + int(fields[12])) / ticks
        if p == pid:
            total += (int(fields[13]) + int(fields[14])) / ticks  # cutime, cstime
    return total


def process_tree_split(pid: int) -> dict[str, Any]:
    """Where ``pid``'s tree spends its CPU and how often its threads sleep: user and system
    seconds (clock ticks, /proc/<pid>/stat; coarse, for shares over a window) and the
    voluntary context switches of every live thread (each one a wait that ended in a
    wake-up: a thread blocked in epoll or on a queue and woken by a packet or a timer), by
    thread (``threads``, "pid/tid" -> count; ``wakeups_between`` takes two readings)."""
    ticks = os.sysconf("SC_CLK_TCK")
    threads: dict[str, int] = {}
    out: dict[str, Any] = {"user_s": 0.0, "system_s": 0.0, "threads": threads}
    for p in process_tree(pid):
        fields = _stat_fields(p)
        if fields is None:
            continue
        out["user_s"] += int(fields[11]) / ticks
        out["system_s"] += int(fields[12]) / ticks
        for status in glob.glob(f"/proc/{p}/task/*/status"):
            with contextlib.suppress(OSError), open(status) as f:
                count = next((int(ln.split()[1]) for ln in f
                              if ln.startswith("voluntary_ctxt_switches:")), None)
                if count is not None:
                    threads[f"{p}/{status.split('/')[-2]}"] = count
    return out


def wakeups_between(start: dict[str, Any], end: dict[str, Any]) -> int:
    """Wake-ups of a process tree between two ``process_tree_split`` readings: each
    thread's increase, a thread born in between counted from 0. A thread that exited in
    between takes its count with it (/proc keeps no per-thread total for the dead), so the
    figure can fall short by what such threads did, never below 0; the difference of the
    two totals would go negative when a thread with many switches behind it exits (Janus
    ends threads while it runs)."""
    t0 = start["threads"]
    return sum(max(0, n - t0.get(key, 0)) for key, n in end["threads"].items())


def process_tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its live descendants."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/status") as f:
            total += next((int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmRSS:")), 0)
    return total
