"""Per-participant connection quality: windows of link statistics -> scores -> levels.

The room's control task calls ``ParticipantQuality.update`` about once a second with
cumulative counters read from the SFU objects (``LinkCounters``); this module turns
consecutive readings into one ``WindowStats`` per track direction, feeds the scorer and
keeps the timeline a session report is built from. No I/O, no clock reads.

Uplink (what the participant publishes, as the SFU receives it) and downlink (what the
SFU sends the participant, as its receiver reports say) are scored separately, so a
report can tell whose link was weak. A participant's level is the worse of the two.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Literal, NamedTuple

from mediaserver import metrics
from mediaserver.quality.score import (
    QualityLevel,
    QualityTracker,
    WindowStats,
    combine,
    probable_cause,
    window_score,
)

TIMELINE_STEP = 5.0  # seconds between timeline points in reports
TIMELINE_MAX = 12 * 60 * 4  # four hours of points


class LinkCounters(NamedTuple):
    """Cumulative counters of one track direction at one moment. (A named tuple: the room
    makes one per link a second, and a frozen dataclass sets each field in its __init__
    through object.__setattr__, about twice the time.)"""

    key: str  # track id + direction, stable over the session
    direction: str  # "uplink" | "downlink"
    kind: Literal["audio", "video"]
    packets_expected: int  # uplink: from sequence numbers; downlink: packets sent
    packets_lost: int | None  # uplink: cumulative; downlink: None (use fraction_lost)
    fraction_lost: float | None  # downlink: the receiver's last report, 0..1
    bytes: int
    frames: int
    jitter: float  # seconds
    rtt: float | None
    muted: bool = False
    paused: bool = False
    expected_frame_rate: float | None = None
    dtx: bool = False  # the codec may stop sending in silence (Opus usedtx=1)


class ParticipantQuality:
    def __init__(self, participant_id: str) -> None:
        self.participant_id = participant_id
        # One tracker per track direction: pooling loss across tracks would mix audio and
        # video windows. The participant's level is the worst of them.
        self.trackers: dict[str, QualityTracker] = {}
        self.level: QualityLevel | None = None
        self.score: float | None = None
        self._prev: dict[str, tuple[float, LinkCounters]] = {}
        self.latest: dict[str, WindowStats] = {}
        self.timeline: deque[tuple[float, float, str]] = deque(maxlen=TIMELINE_MAX)
        self.time_in_level: dict[str, float] = {}
        self._last_point = float("-inf")
        self._last_update: float | None = None
        self.causes: dict[str, int] = {}

    def _window(self, c: LinkCounters, now: float) -> WindowStats | None:
        prev = self._prev.get(c.key)
        self._prev[c.key] = (now, c)
        if prev is None:
            return None
        then, p = prev
        duration = max(now - then, 1e-3)
        expected = max(0, c.packets_expected - p.packets_expected)
        if c.packets_lost is not None and p.packets_lost is not None:
            lost = max(0, min(expected, c.packets_lost - p.packets_lost))
        else:
            lost = round(expected * (c.fraction_lost or 0.0))
        frames = max(0, c.frames - p.frames)
        return WindowStats(
            kind=c.kind, duration=duration, packets_expected=expected, packets_lost=lost,
            rtt=c.rtt, jitter=c.jitter, bitrate=max(0, c.bytes - p.bytes) * 8 / duration,
            frame_rate=frames / duration if c.kind == "video" else None,
            expected_frame_rate=c.expected_frame_rate, layer_delivered=None,
            layer_wanted=None, paused=c.paused, muted=c.muted, fec=c.kind == "audio",
            dtx=c.dtx)

    def update(self, counters: list[LinkCounters], now: float) -> QualityLevel | None:
        """Take a reading; return the participant's new level when it changed."""
        ups: list[tuple[WindowStats, float]] = []
        downs: list[tuple[WindowStats, float]] = []
        fresh: dict[str, float] = {}  # each new window's score, rated once for every use
        for c in counters:
            w = self._window(c, now)
            if w is None:
                continue
            self.latest[c.key] = w
            score = fresh[c.key] = window_score(w)  # audio_mos or video_score by its kind
            (ups if c.direction == "uplink" else downs).append((w, score))
            if w.packets_expected and not w.muted:
                direction: Literal["uplink", "downlink"] = (
                    "uplink" if c.direction == "uplink" else "downlink")
                metrics.observe_link(direction, w.kind, w.rtt, w.jitter, _loss(w))
                if w.kind == "audio":
                    metrics.observe_mos(direction, score)
        live = {c.key for c in counters}
        for key in [k for k in self._prev if k not in live]:
            del self._prev[key]
            self.latest.pop(key, None)
            self.trackers.pop(key, None)
        levels = []
        scores = []
        for key, w in self.latest.items():
            tracker = self.trackers.get(key)
            if tracker is None:
                tracker = self.trackers[key] = QualityTracker()
            tracker.update(w, now, fresh.get(key))
            if tracker.level is not None:
                levels.append(tracker.level)
            if tracker.score is not None and not w.muted:
                scores.append(tracker.score)
        if not levels:
            return None
        if self._last_update is not None and self.level is not None:
            spent = now - self._last_update
            self.time_in_level[self.level] = self.time_in_level.get(self.level, 0.0) + spent
        self._last_update = now
        self.score = min(scores) if scores else None
        cause = probable_cause(_worst(ups), _worst(downs))
        if cause != "none":
            self.causes[cause] = self.causes.get(cause, 0) + 1
        level = combine(levels)
        if now - self._last_point >= TIMELINE_STEP and self.score is not None:
            self._last_point = now
            self.timeline.append((round(now, 1), round(self.score, 2), level.value))
        if level != self.level:
            self.level = level
            return level
        return None

    def details(self) -> dict[str, Any]:
        """The detailed statistics a client may ask for."""
        levels = {k: t.level.value for k, t in self.trackers.items() if t.level is not None}
        return {key: {"kind": w.kind, "score": round(window_score(w), 2),
                      "level": levels.get(key),
                      "packets_expected": w.packets_expected,
                      "packets_lost": w.packets_lost, "loss": _loss(w),
                      "rtt": w.rtt, "jitter": round(w.jitter, 4), "bitrate": int(w.bitrate),
                      "frame_rate": None if w.frame_rate is None else round(w.frame_rate, 1)}
                for key, w in self.latest.items()}

    def report(self, started: float) -> dict[str, Any]:
        """The session report for this participant (times relative to the session start)."""
        points = list(self.timeline)
        worst_minute = None
        if points:
            best_start, best_avg = points[0][0], float("inf")
            for i, (t0, _, _) in enumerate(points):
                minute = [s for t, s, _ in points[i:] if t < t0 + 60]
                avg = sum(minute) / len(minute)
                if avg < best_avg:
                    best_start, best_avg = t0, avg
            worst_minute = {"start": round(best_start - started, 1), "score": round(best_avg, 2)}
        cause = max(self.causes, key=lambda k: self.causes[k]) if self.causes else "none"
        return {"participant_id": self.participant_id,
                "timeline": [{"t": round(t - started, 1), "score": s, "level": lv}
                             for t, s, lv in points],
                "seconds_in_level": {k: round(v, 1) for k, v in self.time_in_level.items()},
                "worst_minute": worst_minute, "probable_cause": cause}


def _loss(w: WindowStats) -> float:
    return w.packets_lost / w.packets_expected if w.packets_expected else 0.0


def _worst(windows: list[tuple[WindowStats, float]]) -> WindowStats | None:
    """The window that scores lowest (muted tracks only if nothing else is there), of
    (window, its score) pairs: the score is audio_mos for audio, video_score for video."""
    if not windows:
        return None
    candidates = [ws for ws in windows if not ws[0].muted] or windows
    return min(candidates, key=lambda ws: ws[1])[0]
