"""Connection-quality scoring: an E-model score per window and a level that tells the truth.

Sans-IO: statistics and ``now`` in, a score or a level out. ``audio_mos`` and ``video_score``
rate one measurement window on the MOS scale (1.0-4.5); ``QualityTracker`` turns a stream of
windows into EXCELLENT / GOOD / POOR / LOST without flicker and without hiding a real drop.
The model, every constant and where it came from: docs/quality.md.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal

# E-model (ITU-T G.107). R is the transmission rating (0-100); MOS is derived from it.
R0 = 93.2              # R with every G.107 parameter at its default (no codec, no delay)
OPUS_IE = 8.0          # equipment impairment of Opus voice (rtcscore, as LiveKit used it)
OPUS_BPL = 10.0        # packet-loss robustness of Opus with PLC only (rtcscore)
OPUS_BPL_FEC = 20.0    # ... with in-band FEC (LBRR) negotiated (rtcscore)
VIDEO_IE = OPUS_IE     # a clean video track reads like a clean audio track (docs)
VIDEO_BPL = 20.0       # NACK/RTX repairs isolated video losses the way FEC does for audio
BURST_R = 1.0          # G.107 burst ratio of random loss: one window cannot see bursts
CODEC_DELAY = 0.0265   # s, Opus 20 ms frame + 6.5 ms look-ahead (RFC 6716 default)
JITTER_BUFFER_MIN = 0.020  # s, a jitter buffer holds at least one 20 ms frame
ID_SLOPE, ID_KNEE, ID_KNEE_SLOPE = 0.024, 177.3, 0.11  # Cole & Rosenbluth 2001 fit of Id
# Video terms, in R points (calibrations, see docs).
FPS_TOLERANCE = 0.8    # at least 80 % of the expected frame rate costs nothing
FPS_WEIGHT = 30.0      # R per natural-log unit of frame-rate shortfall below the tolerance
LAYER_WEIGHT = 10.0    # R per spatial layer delivered below the one wanted
PAUSED_R = 50.0        # paused by the allocator: below the POOR line, above an outage
# Levels: G.107 Annex B user-satisfaction bands, with a hysteresis margin to climb back.
EXCELLENT_R, EXCELLENT_ENTER_R = 80.0, 82.0  # "users satisfied" starts at R 80
POOR_R, POOR_LEAVE_R = 60.0, 62.0            # below R 60 "nearly all users dissatisfied"
MIN_MOS, MAX_MOS = 1.0, 4.5
# Tracker dynamics (windows of about one second).
RECENT_WINDOWS = 4     # the windows that show a change (and the state: delay, layer, ...)
LONG_WINDOWS = 20      # loss is estimated over up to 20 windows of an unchanged link
Z_CHANGE = 4.0         # standard errors of recent loss that mean the link changed
DROP_PER_S = 0.6       # a drop closes 60 % of the gap per second
RISE_PER_S = 0.5       # a recovery climbs at most 0.5 MOS per second
LOST_AFTER = 2         # consecutive windows with nothing received -> LOST
FLAP_HALF_LIFE = 600.0  # s, memory of drops out of EXCELLENT (RFC 2439-style damping)
FLAP_REUSE = 1.5       # EXCELLENT again only while the decayed drop count is below this
MAX_DT = 10.0          # s, longest window duration the dynamics take at face value
HISTORY_SECONDS = 3600.0
CAUSE_MIN_R = 4.0      # an impairment smaller than this is not worth naming


@dataclass(frozen=True, slots=True)
class WindowStats:
    """One window of one track direction (publisher uplink or subscriber downlink).

    ``packets_expected`` comes from sequence numbers, so DTX silence (nothing sent, no
    sequence gap) is not loss. Times in seconds, ``bitrate`` in bit/s.
    """

    kind: Literal["audio", "video"]
    duration: float
    packets_expected: int
    packets_lost: int
    rtt: float | None = None
    jitter: float = 0.0
    bitrate: float = 0.0
    frame_rate: float | None = None
    expected_frame_rate: float | None = None
    layer_delivered: int | None = None
    layer_wanted: int | None = None
    paused: bool = False
    muted: bool = False
    fec: bool = False
    dtx: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("audio", "video"):
            raise ValueError(f"kind must be 'audio' or 'video', not {self.kind!r}")


def _is_silence(s: WindowStats) -> bool:
    return s.kind == "audio" and s.dtx and s.packets_expected <= 0 and not s.muted


def _is_dry(s: WindowStats) -> bool:
    """Nothing sent (no sequence numbers) although the track should be flowing."""
    return s.packets_expected <= 0 and not (s.muted or s.paused or _is_silence(s))


def _is_empty(s: WindowStats) -> bool:
    """Nothing received although something was expected."""
    if s.muted or s.paused:
        return False
    return _is_dry(s) or (s.packets_expected > 0 and s.packets_lost >= s.packets_expected)


def _loss_pct(s: WindowStats) -> float:
    if s.packets_expected > 0:
        return 100.0 * min(max(s.packets_lost, 0), s.packets_expected) / s.packets_expected
    return 100.0 if _is_dry(s) else 0.0


def _mos(r: float) -> float:
    """G.107 Annex B; the cubic dips under 1 for small R, hence the clamp."""
    if r <= 0.0:
        return MIN_MOS
    if r >= 100.0:
        return MAX_MOS
    mos = 1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6
    return min(MAX_MOS, max(MIN_MOS, mos))


def _delay_impairment(s: WindowStats, network: bool = True) -> float:
    """Id for mouth-to-ear delay: one-way network + jitter buffer + codec framing."""
    rtt = max(s.rtt or 0.0, 0.0) if network else 0.0
    jitter = max(s.jitter, 0.0) if network else 0.0
    d = 1000.0 * (rtt / 2.0 + max(2.0 * jitter, JITTER_BUFFER_MIN) + CODEC_DELAY)
    return ID_SLOPE * d + ID_KNEE_SLOPE * max(0.0, d - ID_KNEE)


def _loss_impairment(s: WindowStats) -> float:
    """G.107 effective equipment impairment Ie,eff for the window's loss."""
    if s.kind == "video":
        ie, bpl = VIDEO_IE, VIDEO_BPL
    else:
        ie, bpl = OPUS_IE, OPUS_BPL_FEC if s.fec else OPUS_BPL
    ppl = _loss_pct(s)
    return ie + (95.0 - ie) * ppl / (ppl / BURST_R + bpl)


def _video_impairment(s: WindowStats) -> float:
    """R points lost to a low frame rate and to a spatial layer below the one wanted."""
    total = 0.0
    if s.frame_rate is not None and s.expected_frame_rate and s.expected_frame_rate > 0:
        ratio = max(s.frame_rate, 0.0) / s.expected_frame_rate
        if ratio < FPS_TOLERANCE:
            total += FPS_WEIGHT * math.log(FPS_TOLERANCE / max(ratio, 1e-3))
    if s.layer_delivered is not None and s.layer_wanted is not None:
        total += LAYER_WEIGHT * max(0, s.layer_wanted - s.layer_delivered)
    return total


def _r_factor(s: WindowStats) -> float:
    if s.kind == "video" and s.paused:
        return PAUSED_R
    r = R0 - _delay_impairment(s) - _loss_impairment(s)
    return r - _video_impairment(s) if s.kind == "video" else r


def audio_mos(stats: WindowStats) -> float:
    """E-model MOS (1.0-4.5) of an Opus audio window; a muted track is not rated (4.5)."""
    if stats.muted:
        return MAX_MOS
    return _mos(_r_factor(replace(stats, kind="audio")))


def video_score(stats: WindowStats) -> float:
    """Video on the same scale: loss, frame rate, layer and pause as E-model impairments."""
    if stats.muted:
        return MAX_MOS
    return _mos(_r_factor(replace(stats, kind="video")))


def window_score(stats: WindowStats) -> float:
    return audio_mos(stats) if stats.kind == "audio" else video_score(stats)


class QualityLevel(StrEnum):
    EXCELLENT = "excellent"
    GOOD = "good"
    POOR = "poor"
    LOST = "lost"


_RANK = {QualityLevel.LOST: 0, QualityLevel.POOR: 1, QualityLevel.GOOD: 2,
         QualityLevel.EXCELLENT: 3}


def combine(levels: Iterable[QualityLevel | None]) -> QualityLevel:
    """Worst level wins; None (a muted or unrated track) is ignored; nothing -> EXCELLENT."""
    known = [lv for lv in levels if lv is not None]
    return min(known, key=_RANK.__getitem__) if known else QualityLevel.EXCELLENT


def _classify(score: float, excellent_r: float, poor_r: float) -> QualityLevel:
    if score >= _mos(excellent_r):
        return QualityLevel.EXCELLENT
    return QualityLevel.GOOD if score >= _mos(poor_r) else QualityLevel.POOR


def _next_level(score: float, current: QualityLevel | None) -> QualityLevel:
    """Drop at the band edge; climb only past the edge plus a margin (hysteresis)."""
    down = _classify(score, EXCELLENT_R, POOR_R)
    if current is None or _RANK[down] < _RANK[current]:
        return down
    up = _classify(score, EXCELLENT_ENTER_R, POOR_LEAVE_R)
    return up if _RANK[up] > _RANK[current] else current


def _merge(windows: list[WindowStats], worst: bool = False) -> WindowStats:
    """Pool windows into one: packet counts summed, delay and frame rate by median (or the
    worst value, for a recovery target). A dry window counts as all of its packets lost, at
    the others' packet rate. Layer, pause and codec flags are the latest window's.
    """
    live = [w for w in windows if w.packets_expected > 0]
    expected = sum(w.packets_expected for w in live)
    lost = sum(min(max(w.packets_lost, 0), w.packets_expected) for w in live)
    live_time = sum(max(w.duration, 0.0) for w in live)
    rate = expected / live_time if live_time > 0 else 0.0
    for w in windows:
        if _is_dry(w):
            n = max(1, round(rate * max(w.duration, 0.0)))
            expected, lost = expected + n, lost + n

    def pick(values: list[float | None], bad: Callable[[list[float]], float]) -> float | None:
        known = [v for v in values if v is not None]
        return (bad(known) if worst else statistics.median(known)) if known else None

    return replace(
        windows[-1], duration=sum(max(w.duration, 0.0) for w in windows),
        packets_expected=expected, packets_lost=lost,
        rtt=pick([w.rtt for w in windows], max),
        jitter=pick([w.jitter for w in windows], max) or 0.0,
        frame_rate=pick([w.frame_rate for w in windows], min))


def _without_worst(windows: list[WindowStats]) -> list[WindowStats]:
    if len(windows) < 2:
        return windows
    worst = min(range(len(windows)), key=lambda i: window_score(windows[i]))
    return windows[:worst] + windows[worst + 1:]


def _shift(recent: WindowStats, base: WindowStats) -> float:
    """Standard errors by which the recent loss lies above (+) or below (-) the base rate."""
    p = (base.packets_lost + 0.5) / (base.packets_expected + 1.0)
    n = recent.packets_expected
    return (recent.packets_lost - n * p) / math.sqrt(n * p * (1.0 - p) + 1.0)


class QualityTracker:
    """Level of one track direction (combine several with ``combine``).

    Loss is estimated over every window since the link last changed (up to LONG_WINDOWS),
    because a few seconds of audio hold too few packets to tell 1 % from 3 %. A change is
    declared when the recent windows' loss lies Z_CHANGE standard errors from that estimate:
    worse on the recent windows with the worst one set aside (one bad window is never enough),
    better on all of them. The score then drops fast and climbs slowly, toward evidence that is
    optimistic for drops (worst window set aside) and pessimistic for climbs (worst values).
    """

    def __init__(self, history_seconds: float = HISTORY_SECONDS) -> None:
        self._history_seconds = history_seconds
        self._pool: deque[WindowStats] = deque(maxlen=LONG_WINDOWS)
        self._empty_run = 0
        self._flaps = 0.0
        self._score: float | None = None
        self._level: QualityLevel | None = None
        self.history: deque[tuple[float, float, QualityLevel]] = deque(
            maxlen=int(history_seconds) + 1)

    @property
    def score(self) -> float | None:
        """Smoothed MOS, None until the first level."""
        return self._score

    @property
    def level(self) -> QualityLevel | None:
        return self._level

    def update(self, stats: WindowStats, now: float) -> QualityLevel | None:
        """Take one window; return the new level if it changed, else None."""
        if stats.muted:  # not applicable: excellent, and the old evidence is stale
            self._pool.clear()
            self._empty_run = 0
            self._score = MAX_MOS
            return self._set(QualityLevel.EXCELLENT, now)
        if _is_silence(stats):  # DTX silence says nothing about the link: hold
            return self._set(self._level, now)
        self._empty_run = self._empty_run + 1 if _is_empty(stats) else 0
        self._pool.append(stats)
        if self._empty_run >= LOST_AFTER:
            self._pool.clear()
            self._score = MIN_MOS
            return self._set(QualityLevel.LOST, now)
        pool = list(self._pool)
        if len(pool) >= 2 * RECENT_WINDOWS:  # each side cautious: optimistic vs pessimistic
            older, recent = pool[:-RECENT_WINDOWS], pool[-RECENT_WINDOWS:]
            if (_shift(_merge(_without_worst(recent)), _merge(older)) >= Z_CHANGE
                    or _shift(_merge(recent), _merge(_without_worst(older))) <= -Z_CHANGE):
                pool = pool[-2:]  # the link changed: the older windows describe another link
                self._pool = deque(pool, maxlen=LONG_WINDOWS)
        recent = pool[-RECENT_WINDOWS:]
        loss = _merge(_without_worst(pool))  # optimistic: the worst window set aside
        drop_to = window_score(replace(_merge(_without_worst(recent)), packets_lost=
                                       loss.packets_lost, packets_expected=loss.packets_expected))
        loss = _merge(pool)  # pessimistic: every window, the worst delay and frame rate
        rise_to = window_score(replace(_merge(recent, worst=True), packets_lost=
                                       loss.packets_lost, packets_expected=loss.packets_expected))
        dt = min(max(stats.duration, 0.0), MAX_DT)
        score = self._score
        if score is None or self._level is None:
            if len(pool) < 2:
                return None  # warm-up: one window is never evidence
            score = drop_to
        elif drop_to < score and len(pool) >= 2:
            score -= (1.0 - (1.0 - DROP_PER_S) ** dt) * (score - drop_to)
        elif rise_to > score:
            score = min(rise_to, score + RISE_PER_S * dt)
        self._score = min(MAX_MOS, max(MIN_MOS, score))
        self._flaps *= 0.5 ** (dt / FLAP_HALF_LIFE)
        level = _next_level(self._score, self._level)
        if self._level is QualityLevel.EXCELLENT and level is not QualityLevel.EXCELLENT:
            self._flaps += 1.0
        elif level is QualityLevel.EXCELLENT and self._level is not level:
            if self._flaps > FLAP_REUSE:  # it keeps slipping out: stay GOOD until it settles
                level = QualityLevel.GOOD
        return self._set(level, now)

    def _set(self, level: QualityLevel | None, now: float) -> QualityLevel | None:
        if level is None or self._score is None:
            return None
        self.history.append((now, self._score, level))
        while self.history and self.history[0][0] < now - self._history_seconds:
            self.history.popleft()
        changed = level != self._level
        self._level = level
        return level if changed else None


def probable_cause(uplink: WindowStats | None, downlink: WindowStats | None) -> str:
    """Name the biggest impairment of a remote track: the publisher's link or the viewer's.

    One of "uplink_loss", "downlink_loss", "uplink_delay", "downlink_delay", "bandwidth"
    (paused, a lower layer or a low frame rate) or "none" when nothing costs CAUSE_MIN_R.
    """
    candidates: list[tuple[float, str]] = []
    for leg, s in (("uplink", uplink), ("downlink", downlink)):
        if s is None or s.muted or _is_silence(s):
            continue
        ie = VIDEO_IE if s.kind == "video" else OPUS_IE
        candidates.append((_loss_impairment(s) - ie, f"{leg}_loss"))
        candidates.append((_delay_impairment(s) - _delay_impairment(s, network=False),
                           f"{leg}_delay"))
        if s.kind == "video":
            bandwidth = R0 - VIDEO_IE - PAUSED_R if s.paused else _video_impairment(s)
            candidates.append((bandwidth, "bandwidth"))
    best = max(candidates, key=lambda c: c[0], default=(0.0, "none"))
    return best[1] if best[0] >= CAUSE_MIN_R else "none"
