"""Server CPU per forwarded RTP packet: ours, Janus VideoRoom and a decoding aiortc relay,
side by side in one run (issue 8).

For each configuration (N participants, everyone publishing VP8 + Opus and subscribed to
everyone else) and each server, in that order so that the servers of one configuration
run minutes apart at most:

1. start the server as its own process (bench/servers.py) and wait until it answers;
2. run the load-test CLI against it (``python -m loadtest --target ... --mode cheap
   --phase-marks``): cheap-mode participants replay pre-encoded video and audio and count
   RTP at their sockets before SRTP, the same way for the three servers;
3. when the CLI marks the window's start and end on stderr, read the server's CPU time
   (utime + stime of the process, its threads and any child process, /proc) and, for ours,
   its Prometheus counters;
4. divide the window's CPU by the media packets the subscribers received in the window
   (RTX and padding are counted apart, and not in the divisor).

The relay's subscribers receive what its encoders make of the video, not the publishers'
packets, so its packet rate is reported too. From the repository root:

    .venv/bin/python -m bench.compare --configs 2,4,7 --window 30 --warmup 5 --json PATH

With ``--rounds R`` every configuration is measured R times, the servers' order reversed
from one round to the next (ours first, then Janus first, ...) so that a drift of the
machine's speed during the run does not favour either; the ratios of each round and their
median per configuration are printed. On a shared VM one round's ratio moves by +-15 %
(docs/benchmarks.md), the median of several by less.

With ``--together`` the servers of a configuration run at the same time instead, each
under its own load-test CLI, the CLIs started together so that their windows cover the
same seconds (the share they have in common is printed): a drift of the machine's speed
then falls on every server alike, as in ``bench.paired``. ``--server-cpu`` and
``--generator-cpus`` pin them (``taskset``); unpinned is the measure of the target, as a
deployed Janus runs unpinned and pinned its threads hand packets to each other on one CPU,
a third cheaper (docs/benchmarks.md, "The servers measured together").

Before and after the runs it measures the machine's wake-up for a lone datagram (a thread
blocked in ``recv``, 200 a second; ``--wake-seconds``): a cost ours and Janus both pay for
nearly every packet of a 1:1 call, so when it is high their ratio moves toward 1.

Exit code 1 if any point failed (a subscriber missed a track during the window, a server
died, the load test failed); the other points are still measured and printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import micro, servers
from bench.forwarding import machine, scrape
from loadtest.runner import machine_jiffies

PHASE_PREFIX = "loadtest-phase "
LOADTEST_SLACK_S = 120.0  # joining, encoding the replay, leaving
WAKE_RATE = 200  # datagrams a second of the wake-up gauge: about a 1:1 call's


async def _read_phases(stream: asyncio.StreamReader, server: servers.Server,
                       http: aiohttp.ClientSession, marks: dict[str, dict[str, Any]],
                       other: list[str]) -> None:
    """Read the CLI's stderr; at each phase mark, read the server's CPU at once."""
    async for raw in stream:
        line = raw.decode(errors="replace").rstrip()
        if not line.startswith(PHASE_PREFIX):
            other.append(line)
            continue
        name = line[len(PHASE_PREFIX):].split()[0]
        mark: dict[str, Any] = {"t": time.monotonic(), "cpu": servers.process_tree_cpu(
            server.pid), "machine": machine_jiffies(),
            "split": servers.process_tree_split(server.pid)}
        if server.target == "mediaserver" and server.http is not None:
            with contextlib.suppress(aiohttp.ClientError):
                mark["metrics"] = await scrape(http, server.http)
        marks[name] = mark


async def _drive(server: servers.Server, cmd: list[str], timeout: float,
                 marks: dict[str, dict[str, Any]], stderr: list[str]) -> tuple[int, str]:
    """Wait for the server, run the load-test CLI, read the server at its phase marks."""
    await servers.wait_ready(server)
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=servers.ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with aiohttp.ClientSession() as http:
            stdout, _ = await asyncio.wait_for(asyncio.gather(
                proc.stdout.read(), _read_phases(proc.stderr, server, http, marks, stderr)),
                timeout)
    except BaseException:
        # Only here: kill() polls first, and a poll that reaps the finished CLI before
        # asyncio's watcher does makes asyncio report exit code 255.
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    finally:
        await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(errors="replace")


def _loadtest_cmd(target: str, n: int, args: argparse.Namespace, url: str,
                  out_json: Path) -> list[str]:
    return [sys.executable, "-m", "loadtest", "--target", target, "--url", url,
            "--ice-address", args.ice_address, "--participants-per-room", str(n),
            "--kind", "one_to_one" if n == 2 else "group", "--video", args.video,
            "--video-bitrate", str(args.video_bitrate), "--mode", "cheap",
            "--ramp-up", "10", "--warmup", str(args.warmup), "--duration", str(args.window),
            "--phase-marks", "--quiet", "--json", str(out_json)]


async def _point(target: str, n: int, args: argparse.Namespace, server: servers.Server,
                 generator_cpus: str | None, out_json: Path) -> dict[str, Any]:
    """One load-test run against a started server (its JSON to ``out_json``): the phase
    marks, and what ``_figures`` wants to know of the run but the server's fate."""
    cmd = _loadtest_cmd(target, n, args, server.url, out_json)
    marks: dict[str, dict[str, Any]] = {}
    stderr: list[str] = []
    code, stdout = await _drive(server, servers.pinned(cmd, generator_cpus),
                                args.warmup + args.window + LOADTEST_SLACK_S, marks, stderr)
    return {"marks": marks, "loadtest_exit_code": code, "loadtest_stderr": stderr[-20:],
            "loadtest_summary": stdout.splitlines()[-4:],
            "command": " ".join(cmd[cmd.index("-m") + 1:])}


def _json_path() -> Path:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        return Path(f.name)


def _finish(target: str, n: int, server: servers.Server, run: dict[str, Any],
            out_json: Path) -> dict[str, Any]:
    """Stop the server, read the CLI's JSON; the point's figures."""
    alive = server.proc.poll() is None
    exit_code = server.stop()
    try:
        doc = json.loads(out_json.read_text())
    except (OSError, ValueError):
        doc = {}
    finally:
        out_json.unlink(missing_ok=True)
    marks = run.pop("marks")
    return _figures(target, n, doc, marks, {
        **run, "server_alive_at_end": alive, "server_exit_code": exit_code,
        "server_log": str(server.log_path), "server_log_tail": server.log_tail(15)})


def _log_path(log_dir: str, target: str, n: int) -> Path:
    return Path(log_dir) / f"compare-{target}-{n}.log"


def measure(targets: list[str], n: int, args: argparse.Namespace, server_cpu: str | None,
            generator_cpus: str | None) -> list[dict[str, Any]]:
    """One point per target: a fresh server each, all started at once, each under its own
    load-test CLI, the CLIs started together so that with several targets their windows
    coincide (whatever the machine does then it does to every server; each one's CPU is
    read at its own CLI's marks). ``server_cpu`` / ``generator_cpus`` pin them."""
    started: list[servers.Server] = []
    paths = [_json_path() for _ in targets]
    try:
        for target in targets:
            started.append(servers.start(target, _log_path(args.log_dir, target, n),
                                         args.ice_address, server_cpu))

        async def all_points() -> list[dict[str, Any]]:
            return list(await asyncio.gather(*(
                _point(t, n, args, s, generator_cpus, path)
                for t, s, path in zip(targets, started, paths, strict=True))))

        runs = asyncio.run(all_points())
    except BaseException:
        for server in started:
            server.stop()
        for path in paths:
            path.unlink(missing_ok=True)
        raise
    return [_finish(t, n, s, run, path)
            for t, s, run, path in zip(targets, started, runs, paths, strict=True)]


def measure_together(targets: list[str], n: int, args: argparse.Namespace
                     ) -> list[dict[str, Any]]:
    """Every target at once (``measure``, pinned as ``--server-cpu`` and
    ``--generator-cpus`` say), and how much their windows have in common."""
    results = measure(targets, n, args, args.server_cpu, args.generator_cpus)
    spans = [(r["window_start_t"], r["window_end_t"]) for r in results
             if "window_start_t" in r]
    overlap = window_overlap(spans) if len(spans) == len(results) else None
    for r in results:
        r["together"] = True
        r["window_overlap"] = overlap
    return results


def window_overlap(spans: list[tuple[float, float]]) -> float | None:
    """How much the windows of servers measured together share: their common span over
    the span they cover together (1.0: the same seconds; 0: none in common)."""
    if not spans:
        return None
    common = min(end for _, end in spans) - max(start for start, _ in spans)
    covered = max(end for _, end in spans) - min(start for start, _ in spans)
    return round(max(0.0, common) / covered, 3) if covered > 0 else None


def _prometheus(marks: dict[str, dict[str, Any]], seconds: float) -> dict[str, Any] | None:
    m0, m1 = marks["window_start"].get("metrics"), marks["window_end"].get("metrics")
    if m0 is None or m1 is None:
        return None

    def delta(direction: str) -> float:
        return sum(v - m0.get((name, labels), 0.0) for (name, labels), v in m1.items()
                   if name == "mediaserver_rtp_packets_total"
                   and ("direction", direction) in labels)

    return {"packets_in_per_s": round(delta("in") / seconds, 1),
            "packets_out_per_s": round(delta("out") / seconds, 1)}


def _figures(target: str, n: int, doc: dict[str, Any], marks: dict[str, dict[str, Any]],
             run: dict[str, Any]) -> dict[str, Any]:
    """The point's figures, or its error; never raises for a failed point."""
    result: dict[str, Any] = {"target": target, "participants": n, **run}
    w = doc.get("window")
    problems = []
    if run["loadtest_exit_code"] != 0:
        problems.append(f"load test exit code {run['loadtest_exit_code']}: "
                        + "; ".join(doc.get("failures", []) or run["loadtest_stderr"][-3:]))
    if not run["server_alive_at_end"]:
        problems.append("the server died during the run")
    if w is None or "window_start" not in marks or "window_end" not in marks:
        result["error"] = "; ".join(problems) or "the load test did not measure a window"
        return result
    if w["missing"]:
        problems.append(f"{len(w['missing'])} subscription(s) received nothing in the window: "
                        + ", ".join(w["missing"][:6]))
    seconds = marks["window_end"]["t"] - marks["window_start"]["t"]
    cpu = marks["window_end"]["cpu"] - marks["window_start"]["cpu"]
    j0, j1 = marks["window_start"]["machine"], marks["window_end"]["machine"]
    video = [r for r in w["tracks"] if r["kind"] == "video"]
    s0, s1 = marks["window_start"].get("split"), marks["window_end"].get("split")
    split: dict[str, float | None] = {"user_share": None, "wakeups_per_packet": None}
    if s0 and s1:
        user, system = s1["user_s"] - s0["user_s"], s1["system_s"] - s0["system_s"]
        split["user_share"] = round(user / (user + system), 3) if user + system > 0 else None
        split["wakeups_per_packet"] = (round(servers.wakeups_between(s0, s1)
                                             / w["media_packets"], 3)
                                       if w["media_packets"] else None)
    result.update({
        **split,
        "window_start_t": marks["window_start"]["t"], "window_end_t": marks["window_end"]["t"],
        "window_s": round(seconds, 2), "server_cpu_s": round(cpu, 3),
        "server_cpu_pct": round(100 * cpu / seconds, 1),
        "us_per_forwarded_packet": round(1e6 * cpu / w["media_packets"], 1)
        if w["media_packets"] else None,
        "packets_in_per_s": w["publisher_packets_per_s"],
        "forwarded_per_s": w["media_packets_per_s"],
        # what a forwarder would deliver: every packet in to the N - 1 others
        "delivered_share": round(w["media_packets_per_s"]
                                 / (w["publisher_packets_per_s"] * (n - 1)), 3)
        if w["publisher_packets_per_s"] else None,
        "rtx_packets": w["rtx_packets"], "padding_packets": w["padding_packets"],
        "unknown_packets": w["unknown_packets"], "loss": w["loss"],
        "video_kbps_per_subscription": round(
            sum(r["bytes"] for r in video) * 8 / w["seconds"] / 1000 / len(video), 1)
        if video else None,
        "replay_video_kbps": doc.get("replay_video_kbps"),
        "generator_cpu_pct": doc.get("generator", {}).get("cpu_pct"),
        "generator_saturated": doc.get("generator_saturated"),
        "machine_busy_pct": round(100 * (j1[0] - j0[0]) / (j1[1] - j0[1]), 1)
        if j0 and j1 and j1[1] > j0[1] else None,
        "prometheus": _prometheus(marks, seconds) if target == "mediaserver" else None,
        "client_errors": [e for p in doc.get("participants", []) for e in p["client_errors"]],
        "subscriptions": [{k: r[k] for k in ("subscriber", "publisher", "kind", "media", "rtx",
                                             "padding", "lost")} for r in w["tracks"]],
    })
    if problems:
        result["error"] = "; ".join(problems)
    return result


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def table(results: list[dict[str, Any]], configs: list[int]) -> list[dict[str, Any]]:
    """One row per configuration: us per forwarded packet of each server, and the ratios."""
    by = {(r["target"], r["participants"]): r for r in results}
    rows = []
    for n in configs:
        us = {t: by[(t, n)].get("us_per_forwarded_packet") if (t, n) in by else None
              for t in servers.TARGETS}
        rows.append({"participants": n, **{f"{t}_us": us[t] for t in servers.TARGETS},
                     "ours_over_janus": _ratio(us["mediaserver"], us["janus"]),
                     "relay_over_ours": _ratio(us["relay"], us["mediaserver"])})
    return rows


def _median(values: list[float | None], digits: int) -> float | None:
    have = [v for v in values if v is not None]
    return round(statistics.median(have), digits) if have else None


def rounds_summary(rows_by_round: list[list[dict[str, Any]]], configs: list[int]
                   ) -> list[dict[str, Any]]:
    """Per configuration: each round's ours/Janus and relay/ours, and their medians (rounds
    without a figure left out)."""
    out = []
    for i, n in enumerate(configs):
        ratios = [rows[i]["ours_over_janus"] for rows in rows_by_round]
        relay = [rows[i]["relay_over_ours"] for rows in rows_by_round]
        out.append({"participants": n, "ours_over_janus": ratios,
                    "ours_over_janus_median": _median(ratios, 2),
                    "relay_over_ours": relay, "relay_over_ours_median": _median(relay, 1)})
    return out


def print_rounds(summary: list[dict[str, Any]]) -> None:
    print()
    print(f"{'N':>2} {'ours/Janus by round':<32} {'median':>6} {'relay/ours median':>17}")
    for s in summary:
        each = " ".join(_f(r, ".2f") for r in s["ours_over_janus"])
        print(f"{s['participants']:>2} {each:<32} {_f(s['ours_over_janus_median'], '.2f'):>6} "
              f"{_f(s['relay_over_ours_median'], '.1f'):>17}")


def _pct(share: float | None) -> float | None:
    return None if share is None else 100 * share


def _f(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_report(results: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    """The points of one round and its ratios."""
    print(f"{'N':>2} {'server':<12} {'in pkt/s':>8} {'fwd pkt/s':>9} {'fwd/exp':>7} {'CPU %':>6} "
          f"{'us/fwd':>7} {'rtx':>4} {'pad':>4} {'loss':>6} {'video kbps':>10} "
          f"{'prom out/s':>10} {'machine %':>9} {'user %':>6} {'wakes/pkt':>9}")
    for r in results:
        prom = (r.get("prometheus") or {}).get("packets_out_per_s")
        print(f"{r['participants']:>2} {r['target']:<12} {_f(r.get('packets_in_per_s'), '.0f'):>8} "
              f"{_f(r.get('forwarded_per_s'), '.0f'):>9} {_f(r.get('delivered_share'), '.2f'):>7} "
              f"{_f(r.get('server_cpu_pct'), '.1f'):>6} "
              f"{_f(r.get('us_per_forwarded_packet'), '.1f'):>7} "
              f"{_f(r.get('rtx_packets'), 'd'):>4} {_f(r.get('padding_packets'), 'd'):>4} "
              f"{_f(r.get('loss'), '.2%'):>6} "
              f"{_f(r.get('video_kbps_per_subscription'), '.0f'):>10} "
              f"{_f(prom, '.0f'):>10} {_f(r.get('machine_busy_pct'), '.0f'):>9} "
              f"{_f(_pct(r.get('user_share')), '.0f'):>6} "
              f"{_f(r.get('wakeups_per_packet'), '.2f'):>9}")
    print()
    print(f"{'N':>2} {'ours us/pkt':>11} {'Janus us/pkt':>12} {'relay us/pkt':>12} "
          f"{'ours/Janus':>10} {'relay/ours':>10}")
    for row in rows:
        print(f"{row['participants']:>2} {_f(row['mediaserver_us'], '.1f'):>11} "
              f"{_f(row['janus_us'], '.1f'):>12} {_f(row['relay_us'], '.1f'):>12} "
              f"{_f(row['ours_over_janus'], '.2f'):>10} {_f(row['relay_over_ours'], '.1f'):>10}")
    overlaps = sorted({(r["participants"], r["window_overlap"]) for r in results
                       if r.get("together")}, key=lambda x: x[0])
    for n, share in overlaps:
        print(f"note: N={n}: the servers ran together; their windows share "
              f"{_f(share, '.1%')} of the time they span")
    for r in results:
        for e in r.get("client_errors", []):
            print(f"note: N={r['participants']} {r['target']}: client error: {e}")
        if r.get("generator_saturated"):
            print(f"note: N={r['participants']} {r['target']}: the load generator was saturated")
        if (r.get("delivered_share") or 1) < 0.9:
            print(f"note: N={r['participants']} {r['target']}: delivered only "
                  f"{r['delivered_share']:.0%} of (N - 1) x the packets in, at "
                  f"{r['server_cpu_pct']:.0f} % CPU: saturated, or re-encoding at a lower rate")
    failed = [r for r in results if r.get("error")]
    for r in failed:
        print(f"FAILED: N={r['participants']} {r['target']}: {r['error']}\n"
              f"  server log: {r['server_log']}\n  {r['server_log_tail']}", file=sys.stderr)


def order(targets: list[str], round_index: int) -> list[str]:
    """The servers' order in one round: as given, then reversed, and so on."""
    return list(targets) if round_index % 2 == 0 else list(reversed(targets))


def run(args: argparse.Namespace, round_index: int = 0) -> list[dict[str, Any]]:
    """Every configuration once, each server on its own or (``--together``) all at once:
    one round."""
    results = []
    for n in args.configs:
        targets = order(args.targets, round_index)
        for group in [targets] if args.together else [[t] for t in targets]:
            print(f"measuring {', '.join(group)}{' together' if args.together else ''} with "
                  f"{n} participants"
                  f"{f' (round {round_index + 1})' if args.rounds > 1 else ''}...",
                  file=sys.stderr, flush=True)
            try:
                got = (measure_together(group, n, args) if args.together
                       else measure(group, n, args, None, None))
            except (servers.ServerError, TimeoutError, OSError) as exc:
                got = [{"target": t, "participants": n, "error": str(exc),
                        "server_log": str(_log_path(args.log_dir, t, n)),
                        "server_log_tail": ""} for t in group]
            for r in got:
                r["round"] = round_index
                if r.get("error"):
                    print(f"FAILED: {r['target']} N={n}: {r['error']}", file=sys.stderr,
                          flush=True)
            results.extend(got)
    return results


def wake_gauge(seconds: float) -> float | None:
    """us of CPU a lone datagram's wake-up costs now (``micro.blocked_wakeup`` at
    WAKE_RATE); None when fewer than half the datagrams sent arrived (no figure to trust)."""
    us, received = micro.blocked_wakeup(WAKE_RATE, seconds)
    return round(us, 1) if received >= WAKE_RATE * seconds / 2 else None


def _list(kind: type, choices: tuple[str, ...] | None = None) -> Any:
    def parse(text: str) -> list[Any]:
        items = [kind(x) for x in text.split(",") if x]
        if choices is not None and not set(items) <= set(choices):
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}")
        return items

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--configs", type=_list(int), default=[2, 4, 7],
                        help="participants per room, comma-separated (2,4,7)")
    parser.add_argument("--targets", type=_list(str, servers.TARGETS),
                        default=list(servers.TARGETS), help="servers (mediaserver,janus,relay)")
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured (30)")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds after everyone joined, before the window (5)")
    parser.add_argument("--video", default="640x480@25", help="WxH@FPS (640x480@25)")
    parser.add_argument("--video-bitrate", type=int, default=500, help="kbps (500)")
    parser.add_argument("--ice-address", default=None,
                        help="media address of the servers and the participants (the host's "
                             "first non-loopback IPv4: Janus cannot use 127.0.0.1)")
    parser.add_argument("--log-dir", default=tempfile.gettempdir(),
                        help="where the servers' logs go (compare-TARGET-N.log)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every configuration this many times, the servers' "
                             "order reversed each round; medians printed (1)")
    parser.add_argument("--wake-seconds", type=float, default=4.0,
                        help="seconds of the wake-up gauge before and after the runs (4; "
                             "0: none)")
    parser.add_argument("--together", action="store_true",
                        help="run the targets of a configuration at the same time, so that "
                             "the machine's drift falls on all alike (default: one after "
                             "the other)")
    parser.add_argument("--server-cpu", default="",
                        help="with --together: a CPU list to pin every server to (default: "
                             "none; pinned, Janus's thread hand-offs get cheaper, see "
                             "docs/benchmarks.md)")
    parser.add_argument("--generator-cpus", default="",
                        help="with --together: a CPU list to pin the load generators to "
                             "(default: none)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.ice_address is None:
        args.ice_address = servers.primary_address() or "127.0.0.1"
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    # The VM's wake-up cost, before and after: the share of every lone packet's cost that
    # ours and Janus both pay, which pulls their ratio toward 1 when it is high
    # (docs/benchmarks.md, "The control plane's Python, cheaper per link").
    wake = [wake_gauge(args.wake_seconds)] if args.wake_seconds else []
    rounds = [run(args, r) for r in range(args.rounds)]
    if wake:
        wake.append(wake_gauge(args.wake_seconds))
    rows_by_round = [table(got, args.configs) for got in rounds]
    for r, (got, rows) in enumerate(zip(rounds, rows_by_round, strict=True)):
        if args.rounds > 1:
            print(f"\nround {r + 1} of {args.rounds} (servers in the order "
                  f"{', '.join(order(args.targets, r))})")
        print_report(got, rows)
    results = [x for got in rounds for x in got]
    summary = rounds_summary(rows_by_round, args.configs)
    if args.rounds > 1:
        print_rounds(summary)
    if wake:
        print(f"this machine's wake-up for a lone datagram (a thread blocked in recv, "
              f"{WAKE_RATE}/s), us of CPU: {_f(wake[0], '.1f')} before the runs, "
              f"{_f(wake[1], '.1f')} after")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "started_at": started, "argv": sys.argv, "machine": machine(),
            "window_s": args.window, "warmup_s": args.warmup, "video": args.video,
            "video_bitrate_kbps": args.video_bitrate, "ice_address": args.ice_address,
            "wakeup_us": wake, "rounds": args.rounds, "tables": rows_by_round,
            "medians": summary, "results": results}, indent=2) + "\n")
    return 1 if any(r.get("error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
