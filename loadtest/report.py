"""What the load test measured, per track and across the run; thresholds; the summary table.

Sans-IO like the SFU core: ``TrackStats`` takes decoded-frame facts with ``now`` and keeps
counts; the functions below turn counts into rows, a summary, failures and text. The
runner owns the clock and the clients.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loadtest import window
from loadtest.profiles import StreamCounter

FREEZE_INTERVALS = 3  # a video gap longer than this many frame intervals is a freeze
AUDIO_GAP_S = 0.1  # an audio gap is an interval without frames longer than this
PATTERN_TOLERANCE_HZ = 50.0  # one FFT bin of a 20 ms frame
LAG_P95_LIMIT_MS = 50.0  # generator event-loop lag beyond which its timings lie
CPU_LIMIT = 0.9  # of one core for the loop thread, of all cores for the process
BEHIND_LIMIT_S = 0.5  # publishers this far behind real time send less than nominal


class TrackStats:
    """What one subscriber decoded of one track: frames, latency, freezes or audio gaps."""

    def __init__(self, kind: str, fps: float) -> None:
        self.kind = kind
        self.gap_s = FREEZE_INTERVALS / fps if kind == "video" else AUDIO_GAP_S
        self.frames = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.latencies: list[int] = []
        self.unreadable = 0  # video frames whose stamp failed its check
        self.skipped = 0  # frame numbers never decoded
        self.stalls = 0  # video freezes or audio gaps
        self.stall_s = 0.0
        self.frequencies: list[float] = []  # audio: dominant frequency of sampled frames
        self._last_number: int | None = None

    def _arrive(self, now: float) -> None:
        if self.last_at is not None and now - self.last_at > self.gap_s:
            self.stalls += 1
            self.stall_s += now - self.last_at
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        self.frames += 1

    def on_video(self, now: float, number: int | None, latency_ms: int | None) -> None:
        """A decoded frame; ``number`` None when the frame is too small to carry one (a
        low simulcast layer): counted, without skip detection across it."""
        self._arrive(now)
        if latency_ms is None:
            self.unreadable += 1
        else:
            self.latencies.append(latency_ms)
        if number is None:
            self._last_number = None
            return
        if self._last_number is not None:
            step = (number - self._last_number) % 65536
            if 0 < step < 32768:
                self.skipped += step - 1
        self._last_number = number

    def on_audio(self, now: float, frequency: float | None = None) -> None:
        self._arrive(now)
        if frequency is not None:
            self.frequencies.append(frequency)

    def stalls_until(self, end: float) -> tuple[int, float]:
        """Stalls counting a trailing one still under way at ``end``."""
        if self.last_at is not None and end - self.last_at > self.gap_s:
            return self.stalls + 1, self.stall_s + end - self.last_at
        return self.stalls, self.stall_s

    def fps(self, end: float) -> float:
        if self.first_at is None or end <= self.first_at:
            return 0.0
        return self.frames / (end - self.first_at)


@dataclass
class PacketTotals:
    """One track's packets at a subscriber, from the tap's counters of its SSRCs."""

    media: list[StreamCounter] = field(default_factory=list)
    rtx: list[StreamCounter] = field(default_factory=list)

    @property
    def received(self) -> int:
        return sum(c.received for c in self.media)

    @property
    def expected(self) -> int:
        return sum(c.expected for c in self.media)

    @property
    def lost(self) -> int:
        return sum(c.lost for c in self.media)

    @property
    def first_at(self) -> float | None:
        return min((c.first_at for c in self.media if c.first_at is not None), default=None)

    def kbps(self, end: float) -> float:
        first = self.first_at
        if first is None or end <= first:
            return 0.0
        return sum(c.bytes for c in self.media + self.rtx) * 8 / (end - first) / 1000


def pct(values: Iterable[float], q: float) -> float | None:
    data = list(values)
    return float(np.percentile(data, q)) if data else None


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def track_row(*, room: str, subscriber: str, publisher: str, track_id: str, kind: str,
              stats: TrackStats | None, packets: PacketTotals, ready_at: float, end: float,
              expected_frequency: float | None) -> dict[str, Any]:
    """One subscriber's view of one track. ``ready_at``: when both ends were there (the
    later of the subscriber's join and the publisher's publish), for the join time."""
    first = stats.first_at if stats is not None else packets.first_at
    row: dict[str, Any] = {
        "room": room, "subscriber": subscriber, "publisher": publisher, "track_id": track_id,
        "kind": kind, "decoded": stats is not None, "received": first is not None,
        "packets": packets.received, "packets_lost": packets.lost,
        "loss": _r(packets.lost / packets.expected, 4) if packets.expected else None,
        "rtx_packets": sum(c.received for c in packets.rtx), "kbps": _r(packets.kbps(end)),
        "first_frame_ms": None if first is None else round((first - ready_at) * 1000),
    }
    if stats is None:
        return row
    stalls, stall_s = stats.stalls_until(end)
    row.update(frames=stats.frames, fps=_r(stats.fps(end), 2))
    if kind == "video":
        row.update(latency_ms={"p50": _r(pct(stats.latencies, 50)),
                               "p95": _r(pct(stats.latencies, 95)),
                               "max": max(stats.latencies, default=None)},
                   freezes=stalls, freeze_s=_r(stall_s, 2), frames_skipped=stats.skipped,
                   unreadable_stamps=stats.unreadable)
    else:
        ok = [abs(f - expected_frequency) <= PATTERN_TOLERANCE_HZ
              for f in stats.frequencies] if expected_frequency else []
        row.update(audio_gaps=stalls, audio_gap_s=_r(stall_s, 2),
                   audio_pattern_ok=_r(sum(ok) / len(ok), 3) if ok else None)
    return row


def summarise(rows: list[dict[str, Any]], latencies: list[int]) -> dict[str, Any]:
    """Percentiles across all tracks, and one line per subscriber."""
    video = [r for r in rows if r["kind"] == "video" and r["decoded"]]
    joins = [r["first_frame_ms"] for r in rows if r["first_frame_ms"] is not None]
    expected = sum(r["packets"] + r["packets_lost"] for r in rows)
    lost = sum(r["packets_lost"] for r in rows)
    fps = [r["fps"] for r in video]
    summary: dict[str, Any] = {
        "tracks_expected": len(rows), "tracks_received": sum(r["received"] for r in rows),
        "missing": [f"{r['subscriber']} <- {r['publisher']} {r['kind']}"
                    for r in rows if not r["received"] and not r.get("paused_by_server")],
        # Held back by the server (stream_state paused: bandwidth, audio only), with why.
        "paused_by_server": [f"{r['subscriber']} <- {r['publisher']} {r['kind']} "
                             f"({r['paused_by_server']})" for r in rows
                             if r.get("paused_by_server")],
        "video_fps": {"min": min(fps, default=None), "p5": _r(pct(fps, 5), 2),
                      "p50": _r(pct(fps, 50), 2)},
        "latency_ms": {"p50": _r(pct(latencies, 50)), "p95": _r(pct(latencies, 95)),
                       "p99": _r(pct(latencies, 99)), "max": max(latencies, default=None)},
        "join_ms": {"p50": _r(pct(joins, 50), 0), "p95": _r(pct(joins, 95), 0),
                    "max": max(joins, default=None)},
        "loss": round(lost / expected, 4) if expected else None,
        "loss_worst_track": max((r["loss"] for r in rows if r["loss"] is not None),
                                default=None),
        "packets": sum(r["packets"] for r in rows),
        "kbps_total": _r(sum(r["kbps"] or 0 for r in rows)),
        "freezes": sum(r.get("freezes", 0) for r in video),
        "freeze_s": _r(sum(r.get("freeze_s", 0) for r in video), 2),
        "audio_gaps": sum(r.get("audio_gaps", 0) for r in rows),
    }
    per_sub: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        per_sub.setdefault((r["room"], r["subscriber"]), []).append(r)
    summary["subscribers"] = [_subscriber_line(room, sub, mine)
                              for (room, sub), mine in per_sub.items()]
    return summary


def _subscriber_line(room: str, sub: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    video = [r for r in rows if r["kind"] == "video" and r["decoded"]]
    expected = sum(r["packets"] + r["packets_lost"] for r in rows)
    joins = [r["first_frame_ms"] for r in rows if r["first_frame_ms"] is not None]
    return {
        "room": room, "subscriber": sub, "tracks": len(rows),
        "received": sum(r["received"] for r in rows),
        "min_fps": min((r["fps"] for r in video), default=None),
        "worst_latency_p95_ms": max((r["latency_ms"]["p95"] for r in video
                                     if r["latency_ms"]["p95"] is not None), default=None),
        "freezes": sum(r.get("freezes", 0) for r in video),
        "loss": round(sum(r["packets_lost"] for r in rows) / expected, 4) if expected else None,
        "kbps": _r(sum(r["kbps"] or 0 for r in rows)),
        "slowest_first_frame_ms": max(joins, default=None),
    }


def generator_phase(wall: float, cpu_s: float, loop_cpu_s: float, lags_ms: list[float],
                    nproc: int, machine_busy_pct: float | None = None) -> dict[str, Any]:
    """The generator's own load over one phase, and whether it was saturated.

    The event loop runs on one thread: past ~90 % of a core, or with timers firing over
    50 ms late, frames are read late and the server gets blamed for it.
    """
    wall = max(1e-9, wall)
    cpu, loop_cpu, lag_p95 = cpu_s / wall, loop_cpu_s / wall, pct(lags_ms, 95)
    reasons = []
    if lag_p95 is not None and lag_p95 > LAG_P95_LIMIT_MS:
        reasons.append(f"event-loop lag p95 {lag_p95:.0f} ms > {LAG_P95_LIMIT_MS:.0f} ms")
    if loop_cpu > CPU_LIMIT:
        reasons.append(f"loop thread at {loop_cpu:.0%} of a core")
    if cpu > CPU_LIMIT * nproc:
        reasons.append(f"process at {cpu:.0%} of a core on {nproc} cores")
    if reasons and machine_busy_pct is not None and machine_busy_pct > 90:
        reasons.append(f"the machine was {machine_busy_pct:.0f} % busy (all cores, "
                       "other processes included)")
    return {"seconds": round(wall, 1), "cpu_pct": round(100 * cpu, 1),
            "machine_busy_pct": _r(machine_busy_pct),
            "loop_thread_cpu_pct": round(100 * loop_cpu, 1), "nproc": nproc,
            "lag_ms": {"p50": _r(pct(lags_ms, 50)), "p95": _r(lag_p95),
                       "max": _r(max(lags_ms, default=None))},
            "saturated": bool(reasons), "reasons": reasons}


def schedule_reasons(behind_s: dict[str, float | None]) -> list[str]:
    """Saturation reasons from how far the publishers' tracks fell behind real time."""
    return [f"{kind} publishers fell {b:.1f} s behind real time (sent below the nominal "
            "rate: the generator could not encode in time)"
            for kind, b in behind_s.items() if b is not None and b > BEHIND_LIMIT_S]


@dataclass(frozen=True)
class Thresholds:
    max_loss: float | None = None  # fraction, over all received streams
    max_latency_p95: float | None = None  # ms, over all decoded video frames
    min_fps: float | None = None  # every decoded video track
    max_join_time: float | None = None  # seconds, the slowest first frame

    def as_dict(self) -> dict[str, float | None]:
        return {"max_loss": self.max_loss, "max_latency_p95_ms": self.max_latency_p95,
                "min_fps": self.min_fps, "max_join_time_s": self.max_join_time}


def check(summary: dict[str, Any], t: Thresholds) -> list[str]:
    """The failed conditions, in words. A track that never arrived always fails."""
    failures = []
    if summary["missing"]:
        failures.append(f"{len(summary['missing'])} track(s) never arrived: "
                        + ", ".join(summary["missing"][:5]))

    def over(name: str, value: float | None, limit: float | None, fmt: str,
             below: bool = False) -> None:
        if limit is None:
            return
        if value is None or (value < limit if below else value > limit):
            shown = "not measured" if value is None else format(value, fmt)
            failures.append(f"{name}: {shown} {'<' if below else '>'} {limit:{fmt}}")

    over("loss", summary["loss"], t.max_loss, ".4f")
    over("latency p95 ms", summary["latency_ms"]["p95"], t.max_latency_p95, ".0f")
    over("min video fps", summary["video_fps"]["min"], t.min_fps, ".2f", below=True)
    join = summary["join_ms"]["max"]
    over("slowest join s", None if join is None else join / 1000, t.max_join_time, ".2f")
    return failures


def _f(value: Any, fmt: str = ".0f", unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return f"{value:{fmt}}{unit}"


TRACK_LINES_MAX = 60


def progress_line(elapsed: float, joined: int, total: int, packets: int, video_tracks: int,
                  frames: int, latency_p95: float | None, lag_max: float,
                  decoding: bool) -> str:
    """The one-second status line: counts are over the last second."""
    line = f"[{elapsed:6.1f} s] joined {joined}/{total}  rtp {packets} pkt/s  "
    if decoding:
        line += (f"video tracks {video_tracks}  fps/track {frames / max(1, video_tracks):5.1f}"
                 f"  lat p95 {_f(latency_p95)} ms  ")
    return line + f"lag max {lag_max:.0f} ms"


def format_summary(doc: dict[str, Any]) -> str:
    """The readable table printed at the end of a run."""
    s, g, sc = doc["summary"], doc["generator"], doc["scenario"]
    out = [f"load test {doc['run_id']}: {sc['rooms']} room(s) x {sc['participants_per_room']} "
           f"({sc['kind']}), {sc['publishers_per_room']} publisher(s)/room "
           f"({sc['audio_only_per_room']} audio-only), video {sc['video']}"
           + (f" (replayed at {doc['replay_video_kbps']} kbps)"
              if doc.get("replay_video_kbps") else "")
           + f", {sc['mode']} mode, {doc['measured_s']:.1f} s measured"]
    rows = doc["tracks"]
    if len(rows) <= TRACK_LINES_MAX:
        out += ["", f"{'room':<10} {'subscriber':<12} {'publisher':<12} {'kind':<5} "
                f"{'frames':>6} {'fps':>5} {'lat p50':>7} {'lat p95':>7} {'stalls':>9} "
                f"{'loss':>6} {'kbps':>6} {'first':>6}"]
        for r in rows:
            stalls = (f"{r['freezes']}/{r['freeze_s']:.1f}s" if "freezes" in r else
                      f"{r['audio_gaps']}/{r['audio_gap_s']:.1f}s" if "audio_gaps" in r else "-")
            lat = r.get("latency_ms", {})
            out.append(
                f"{r['room']:<10} {r['subscriber']:<12} {r['publisher']:<12} {r['kind']:<5} "
                f"{_f(r.get('frames', r['packets'])):>6} {_f(r.get('fps'), '.1f'):>5} "
                f"{_f(lat.get('p50'), '.0f', 'ms'):>7} {_f(lat.get('p95'), '.0f', 'ms'):>7} "
                f"{stalls:>9} {_f(r['loss'], '.1%'):>6} {_f(r['kbps']):>6} "
                f"{_f(r['first_frame_ms'], '.0f', 'ms'):>6}")
        if doc["scenario"]["mode"] == "cheap":
            out.append("(cheap mode: nothing decoded; frames column shows RTP packets, "
                       "first = first packet)")
    else:
        out.append(f"({len(rows)} track lines: see --json)")
    out += ["", f"{'room':<10} {'subscriber':<12} {'tracks':>7} {'min fps':>7} "
            f"{'lat p95':>7} {'freezes':>7} {'loss':>6} {'kbps':>6} {'slowest':>7}"]
    for u in s["subscribers"]:
        out.append(f"{u['room']:<10} {u['subscriber']:<12} "
                   f"{u['received']:>3}/{u['tracks']:<3} {_f(u['min_fps'], '.1f'):>7} "
                   f"{_f(u['worst_latency_p95_ms'], '.0f', 'ms'):>7} {u['freezes']:>7} "
                   f"{_f(u['loss'], '.1%'):>6} {_f(u['kbps']):>6} "
                   f"{_f(u['slowest_first_frame_ms'], '.0f', 'ms'):>7}")
    lat, fps, join = s["latency_ms"], s["video_fps"], s["join_ms"]
    if s.get("paused_by_server"):
        out += ["", f"paused by the server at the end: {len(s['paused_by_server'])} track(s): "
                + ", ".join(s["paused_by_server"][:5])]
    out += ["", f"across all: tracks {s['tracks_received']}/{s['tracks_expected']}, "
            f"video fps min {_f(fps['min'], '.1f')} p5 {_f(fps['p5'], '.1f')} "
            f"p50 {_f(fps['p50'], '.1f')}; latency ms p50 {_f(lat['p50'])} p95 {_f(lat['p95'])} "
            f"p99 {_f(lat['p99'])} max {_f(lat['max'])}",
            f"            first frame ms p50 {_f(join['p50'])} p95 {_f(join['p95'])} "
            f"max {_f(join['max'])}; loss {_f(s['loss'], '.2%')} (worst track "
            f"{_f(s['loss_worst_track'], '.2%')}); {s['packets']} packets, "
            f"{_f(s['kbps_total'])} kbps; freezes {s['freezes']} ({s['freeze_s']:.1f} s); "
            f"audio gaps {s['audio_gaps']}; undecodable frames {s.get('decode_errors', 0)}"]
    if doc.get("window"):
        out.append(window.format_line(doc["window"]))
    if doc.get("speakers"):
        sp = doc["speakers"]
        out.append(f"speakers: {sp['changes_per_subscriber']} speakers_changed events per "
                   f"subscriber, dominant speakers "
                   f"seen: {', '.join(sp['dominant_seen']) or '-'}")
    out.append(f"generator: CPU {g['cpu_pct']:.0f} % of a core ({g['nproc']} cores; loop "
               f"thread {g['loop_thread_cpu_pct']:.0f} %), event-loop lag p95 "
               f"{_f(g['lag_ms']['p95'], '.0f')} ms max {_f(g['lag_ms']['max'], '.0f')} ms; "
               f"machine {_f(g['machine_busy_pct'], '.0f')} % busy"
               + (" -- SATURATED: " + "; ".join(g["reasons"]) if g["saturated"] else ""))
    verdict = "PASS" if doc["passed"] else "FAIL: " + "; ".join(doc["failures"])
    if g["saturated"]:
        verdict += " (generator saturated: the figures are not trustworthy)"
    out.append(f"result: {verdict}")
    return "\n".join(out)
