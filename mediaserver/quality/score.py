"""Connection quality: an E-model score per window, and a level that tells the truth.

Sans-IO: window statistics and ``now`` in, a score or a level out. ``audio_mos`` and
``video_score`` rate one window on the MOS scale (1.0-4.5); ``QualityTracker`` turns windows
into EXCELLENT / GOOD / POOR / LOST without flicker and without hiding a real drop.
The model, each constant and where it comes from: docs/quality.md.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal

# E-model (ITU-T G.107): R is the transmission rating (0-100), MOS is derived from it.
R0 = 93.2              # R with every G.107 parameter at its default value
OPUS_IE = 8.0          # equipment impairment of Opus voice (rtcscore)
OPUS_BPL = 10.0        # packet-loss robustness of Opus, concealment only (rtcscore)
OPUS_BPL_FEC = 20.0    # ... with in-band FEC negotiated (rtcscore)
VIDEO_IE = OPUS_IE     # a clean video track reads like a clean audio track
VIDEO_BPL = 20.0       # NACK/RTX repairs isolated video losses as FEC does for audio
BURST_R = 1.0          # G.107 BurstR of random loss: window counts cannot see bursts
CODEC_DELAY = 0.0265   # s: one 20 ms Opus frame plus 6.5 ms look-ahead (RFC 6716)
JITTER_BUFFER_MIN = 0.020  # s: a jitter buffer holds at least one 20 ms frame
ID_SLOPE, ID_KNEE, ID_KNEE_SLOPE = 0.024, 177.3, 0.11  # Id fit (Cole & Rosenbluth 2001)
# Video impairments in R points (calibrated: docs/quality.md).
FPS_TOLERANCE = 0.8    # 80 % of the expected frame rate costs nothing
FPS_WEIGHT = 30.0      # R per natural-log unit of frame rate below that
LAYER_WEIGHT = 10.0    # R per spatial layer below the one wanted
PAUSED_R = 50.0        # R of a video paused by the allocator
# Levels: G.107 Annex B satisfaction bands; climbing back needs a margin (hysteresis).
EXCELLENT_R, EXCELLENT_ENTER_R = 80.0, 82.0  # R >= 80: "users satisfied"
POOR_R, POOR_LEAVE_R = 60.0, 64.0            # R < 60: "nearly all users dissatisfied"
MIN_MOS, MAX_MOS = 1.0, 4.5
# Tracker dynamics, for windows of about one second.
RECENT_WINDOWS = 4     # windows that reveal a change, and give delay, frame rate, layer
LONG_WINDOWS = 60      # loss is pooled over up to a minute of an unchanged link
FORGIVE_ONE_IN = 10    # up to one loss spike in ten windows is set aside
CHANGE_SCALES = (4, 8, 16, 32)  # recent windows compared with the older ones
Z_CHANGE = 4.0         # standard errors between recent and older loss that mean a change
DROP_PER_S = 0.6       # a drop closes 60 % of the gap per second
RISE_PER_S = 0.5       # a recovery climbs at most 0.5 MOS per second
LOST_AFTER = 2         # consecutive windows with nothing received
# The usual packet rate a track's dry windows are charged with is learnt only from windows
# at least this long, and capped (packets a second).
MIN_RATE_WINDOW = 0.01
MAX_PACKET_RATE = 10_000.0
MAX_DT = 10.0          # s: longest window the dynamics take at face value
HISTORY_SECONDS = 3600.0
CAUSE_MIN_R = 4.0      # an impairment smaller than this is not worth naming


@dataclass(frozen=True, slots=True)
class WindowStats:
    """One window of one track direction (publisher uplink or subscriber downlink).

    ``packets_expected`` comes from sequence numbers, never from a packet rate, so DTX
    silence (nothing sent, no sequence gap) is not loss. Seconds and bit/s.
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
        if self.packets_expected < 0:
            raise ValueError(f"packets_expected must not be negative: {self.packets_expected}")


def _is_silence(s: WindowStats) -> bool:
    return _silent(s.kind, s.packets_expected, s.muted, s.dtx)


def _silent(kind: str, expected: int, muted: bool, dtx: bool) -> bool:
    return kind == "audio" and dtx and expected <= 0 and not muted


def _is_dry(s: WindowStats) -> bool:
    """Nothing was sent (no sequence numbers) although the track should be flowing."""
    return _dry(s.kind, s.packets_expected, s.paused, s.muted, s.dtx)


def _dry(kind: str, expected: int, paused: bool, muted: bool, dtx: bool) -> bool:
    return expected <= 0 and not (muted or paused or _silent(kind, expected, muted, dtx))


def _loss_pct_of(kind: str, expected: int, lost: int, paused: bool, muted: bool,
                 dtx: bool) -> float:
    if expected > 0:  # (conditional expressions: the builtins' calls cost more here)
        lost = 0 if 0 > lost else lost
        return 100.0 * (expected if expected < lost else lost) / expected
    return 100.0 if _dry(kind, expected, paused, muted, dtx) else 0.0


def _mos(r: float) -> float:
    """G.107 Annex B. The cubic dips below 1 for small R, hence the clamp."""
    if r <= 0.0:
        return MIN_MOS
    mos = 1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6 if r < 100.0 else MAX_MOS
    mos = mos if mos > MIN_MOS else MIN_MOS  # min(MAX_MOS, max(MIN_MOS, mos))
    return mos if mos < MAX_MOS else MAX_MOS


def _delay_impairment(s: WindowStats, network: bool = True) -> float:
    """Id of the mouth-to-ear delay: half the RTT, the jitter buffer, the codec's framing."""
    return _delay_id(s.rtt, s.jitter) if network else _delay_id(0.0, 0.0)


def _delay_id(rtt: float | None, jitter: float) -> float:
    # max(rtt or 0, 0), max(2 * max(jitter, 0), JITTER_BUFFER_MIN), max(0, d - ID_KNEE) as
    # conditional expressions (each the same value as the builtin's, NaN included).
    rtt = rtt or 0.0
    rtt = 0.0 if 0.0 > rtt else rtt
    jitter = 0.0 if 0.0 > jitter else jitter
    buffered = 2.0 * jitter
    buffered = JITTER_BUFFER_MIN if JITTER_BUFFER_MIN > buffered else buffered
    d = 1000.0 * (rtt / 2.0 + buffered + CODEC_DELAY)
    knee = d - ID_KNEE
    return ID_SLOPE * d + ID_KNEE_SLOPE * (knee if knee > 0.0 else 0.0)


def _loss_impairment(s: WindowStats) -> float:
    """G.107 effective equipment impairment Ie,eff at the window's loss."""
    return _loss_ie(s.kind, s.fec, _loss_pct_of(s.kind, s.packets_expected, s.packets_lost,
                                                s.paused, s.muted, s.dtx))


def _loss_ie(kind: str, fec: bool, ppl: float) -> float:
    if kind == "video":
        ie, bpl = VIDEO_IE, VIDEO_BPL
    else:
        ie, bpl = OPUS_IE, OPUS_BPL_FEC if fec else OPUS_BPL
    return ie + (95.0 - ie) * ppl / (ppl / BURST_R + bpl)


def _video_impairment(s: WindowStats) -> float:
    """R lost to a frame rate below the expected one and to a layer below the wanted one."""
    return _video_i(s.frame_rate, s.expected_frame_rate, s.layer_delivered, s.layer_wanted)


def _video_i(frame_rate: float | None, expected_frame_rate: float | None,
             layer_delivered: int | None, layer_wanted: int | None) -> float:
    total = 0.0
    if frame_rate is not None and expected_frame_rate and expected_frame_rate > 0:
        ratio = max(frame_rate, 0.0) / expected_frame_rate
        if ratio < FPS_TOLERANCE:
            total += FPS_WEIGHT * math.log(FPS_TOLERANCE / max(ratio, 1e-3))
    if layer_delivered is not None and layer_wanted is not None:
        total += LAYER_WEIGHT * max(0, layer_wanted - layer_delivered)
    return total


def window_score(stats: WindowStats) -> float:
    """MOS of one window by its kind; a muted track is not rated (4.5)."""
    s = stats
    return _score(s.kind, s.duration, s.packets_expected, s.packets_lost, s.rtt, s.jitter,
                  s.bitrate, s.frame_rate, s.expected_frame_rate, s.layer_delivered,
                  s.layer_wanted, s.paused, s.muted, s.fec, s.dtx)


def _score(kind: str, duration: float, expected: int, lost: int, rtt: float | None,
           jitter: float, bitrate: float, frame_rate: float | None,
           expected_frame_rate: float | None, layer_delivered: int | None,
           layer_wanted: int | None, paused: bool, muted: bool, fec: bool, dtx: bool
           ) -> float:
    """``window_score`` of a window given as its fields, in WindowStats's order: the merged
    evidence is rated so, without building a window for it."""
    if muted:
        return MAX_MOS
    if kind == "video" and paused:
        return _mos(PAUSED_R)
    r = (R0 - _delay_id(rtt, jitter)
         - _loss_ie(kind, fec, _loss_pct_of(kind, expected, lost, paused, muted, dtx)))
    if kind == "video":
        r -= _video_i(frame_rate, expected_frame_rate, layer_delivered, layer_wanted)
    return _mos(r)


def audio_mos(stats: WindowStats) -> float:
    """E-model MOS (1.0-4.5) of an Opus window: R = R0 - Id(delay) - Ie,eff(loss)."""
    return window_score(stats if stats.kind == "audio" else replace(stats, kind="audio"))


def video_score(stats: WindowStats) -> float:
    """Video on the same scale: loss, delay, frame rate, layer and pause as impairments."""
    return window_score(stats if stats.kind == "video" else replace(stats, kind="video"))


class QualityLevel(StrEnum):
    EXCELLENT = "excellent"
    GOOD = "good"
    POOR = "poor"
    LOST = "lost"


_RANK = {QualityLevel.LOST: 0, QualityLevel.POOR: 1, QualityLevel.GOOD: 2,
         QualityLevel.EXCELLENT: 3}


def combine(levels: Iterable[QualityLevel | None]) -> QualityLevel:
    """Worst level wins; None (a muted or unrated track) is ignored; none at all: EXCELLENT."""
    known = [lv for lv in levels if lv is not None]
    return min(known, key=_RANK.__getitem__) if known else QualityLevel.EXCELLENT


# The bands' edges on the MOS scale (they are constants: computed once).
_DOWN_EDGES = (_mos(EXCELLENT_R), _mos(POOR_R))
_UP_EDGES = (_mos(EXCELLENT_ENTER_R), _mos(POOR_LEAVE_R))


def _next_level(score: float, current: QualityLevel | None) -> QualityLevel:
    """Drop at a band's edge; climb only past the edge plus its margin (hysteresis)."""
    def band(edges: tuple[float, float]) -> QualityLevel:
        if score >= edges[0]:
            return QualityLevel.EXCELLENT
        return QualityLevel.GOOD if score >= edges[1] else QualityLevel.POOR

    down, up = band(_DOWN_EDGES), band(_UP_EDGES)
    if current is None or _RANK[down] < _RANK[current]:
        return down
    return up if _RANK[up] > _RANK[current] else current


Counts = tuple[int, int]  # (packets expected, packets lost)


def _shift(recent: Counts, base: Counts) -> float:
    """Standard errors by which the recent loss lies above (+) or below (-) the base rate: the
    signed root of the Poisson deviance, sound even for a handful of lost packets."""
    lam, k = recent[0] * (base[1] + 0.5) / (base[0] + 1.0), recent[1]
    deviance = 2.0 * ((k * math.log(k / lam) if k > 0 else 0.0) - (k - lam))
    return math.copysign(math.sqrt(max(deviance, 0.0)), k - lam)


def _median(values: list[float]) -> float:
    """statistics.median, for the few values of a merge (its checks cost more than this)."""
    data = sorted(values)
    n = len(data)
    if n % 2:
        return data[n // 2]
    return (data[n // 2 - 1] + data[n // 2]) / 2


_Fields = tuple[Literal["audio", "video"], float, int, int, float | None, float, float,
                float | None, float | None, int | None, int | None, bool, bool, bool, bool]


def _merged(windows: list[WindowStats], counts: Counts, worst: bool) -> _Fields:
    """The latest window (layer, pause, codec flags) with the given packet counts and the
    windows' median delay and frame rate, or their worst for a recovery target; as its
    fields (WindowStats's order): the tracker only rates it (``_score``), and building a
    frozen window cost as much as rating it."""
    rtts = [w.rtt for w in windows if w.rtt is not None]
    jitters = [w.jitter for w in windows if w.jitter is not None]
    rates = [w.frame_rate for w in windows if w.frame_rate is not None]
    if worst:
        rtt = max(rtts) if rtts else None
        jitter = max(jitters) if jitters else 0.0
        frame_rate = min(rates) if rates else None
    else:
        rtt = _median(rtts) if rtts else None
        jitter = _median(jitters) if jitters else 0.0
        frame_rate = _median(rates) if rates else None
    last = windows[-1]
    return (last.kind, last.duration, counts[0], counts[1], rtt, jitter or 0.0, last.bitrate,
            frame_rate, last.expected_frame_rate, last.layer_delivered, last.layer_wanted,
            last.paused, last.muted, last.fec, last.dtx)


def _loss_rate(w: WindowStats) -> float:
    return w.packets_lost / (w.packets_expected or 1)


def _spike_free(expected: list[int], lost: list[int], rates: list[float], k: int,
                total: Counts) -> tuple[Counts, Counts]:
    """Counts without the spikes among the k windows of highest loss, and among the k - 1
    highest. A spike lies Z_CHANGE standard errors above the rest; steady random loss has
    none, so the estimate stays unbiased. The windows come as the pool's columns (``rates``:
    each window's loss rate, ``total``: the columns' sums)."""
    n = len(rates)
    if not 0 < k < n or not total[1]:  # without loss there is no spike
        return total, total
    # The k windows of highest loss, in ascending order, the later of equals last (as a
    # stable sort of the windows puts them); the rest is the total without them.
    top = sorted(range(n), key=rates.__getitem__)[-k:]
    rest = (total[0] - sum(expected[i] for i in top), total[1] - sum(lost[i] for i in top))
    drop, rise = total, total
    for j, i in enumerate(top):
        if _shift((expected[i], lost[i]), rest) >= Z_CHANGE:
            drop = (drop[0] - expected[i], drop[1] - lost[i])
            if j > 0:
                rise = (rise[0] - expected[i], rise[1] - lost[i])
    return drop, rise


def _changed(expected: list[int], lost: list[int], scores: list[float]) -> int:
    """How many of the latest windows to keep: all if the link is unchanged, else the newer
    half of the last m windows whose loss left the older ones behind (worse: judged with the
    recent worst window set aside, so one bad window is never enough; better: on all). The
    windows come as the pool's columns (the tracker keeps them beside its pool)."""
    n = len(scores)
    scales = [m for m in CHANGE_SCALES if n >= m + RECENT_WINDOWS]
    if not scales:
        return n
    # Each scale's recent side is a sum over the tail (in C); the older side is the rest.
    total_e, total_l = sum(expected), sum(lost)
    if not total_l and _no_fall(expected, scales, total_e):
        return n
    # Each side's worst window for every cut, the earliest of equals (as min() picks them):
    # the ranges of successive cuts nest, so each is the better of the previous one's and
    # of the few windows it adds (a slice's min() and index() run in C).
    cuts = [n - m for m in scales]  # descending
    worst_from: dict[int, int] = {}  # cut -> worst of windows cut..n-1
    best, end = -1, n
    for cut in cuts:
        seg = scores.index(min(scores[cut:end]), cut, end)
        if best < 0 or scores[seg] <= scores[best]:  # the earlier window wins a tie
            best = seg
        worst_from[cut], end = best, cut
    worst_before: dict[int, int] = {}  # cut -> worst of windows 0..cut-1
    best, start = -1, 0
    for cut in reversed(cuts):
        seg = scores.index(min(scores[start:cut]), start, cut)
        if best < 0 or scores[seg] < scores[best]:  # the earlier window wins a tie
            best = seg
        worst_before[cut], start = best, cut
    for m in scales:
        cut = n - m
        recent = (sum(expected[cut:]), sum(lost[cut:]))
        older = (total_e - recent[0], total_l - recent[1])
        r = worst_from[cut]
        o = worst_before[cut]
        if (_shift((recent[0] - expected[r], recent[1] - lost[r]), older) >= Z_CHANGE
                or _shift(recent, (older[0] - expected[o], older[1] - lost[o])) <= -Z_CHANGE):
            return m // 2
    return n


_NO_FALL_MEAN = 0.5 * Z_CHANGE * Z_CHANGE - 0.1  # the Poisson mean _no_fall keeps under


def _no_fall(expected: list[int], scales: list[int], total_e: int) -> bool:
    """Whether, with no loss in the pool, no scale can show a change (a clean link's
    usual case, decided without the worst windows). Nothing lost: the recent loss cannot
    lie above the older one, and lies below it by Z_CHANGE only if the Poisson mean of the
    recent side's losses at the older side's rate reaches Z_CHANGE ** 2 / 2 (``_shift``
    with none lost). That mean is largest with the biggest window taken out as the
    older side's worst; kept under it by a margin, the float rounding cannot matter."""
    biggest = max(expected)
    for m in scales:
        recent = sum(expected[-m:])
        base = total_e - recent - biggest + 1.0
        if base <= 0 or recent * 0.5 >= _NO_FALL_MEAN * base:
            return False
    return True


def _evidence(recent: list[tuple[WindowStats, float]], expected: list[int], lost: list[int],
              rates: list[float], total: Counts) -> tuple[float, float]:
    """(drop_to, rise_to): the optimistic evidence a drop heads for (worst recent window and
    loss spikes set aside) and the pessimistic one a recovery climbs to (worst recent delay
    and frame rate, one spike fewer set aside). ``recent``: the pool's newest
    RECENT_WINDOWS entries; the rest as for _spike_free."""
    worst = min(range(len(recent)), key=lambda i: recent[i][1]) if len(recent) > 1 else -1
    drop, rise = _spike_free(expected, lost, rates, max(1, len(rates) // FORGIVE_ONE_IN), total)
    return (_score(*_merged([w for i, (w, _) in enumerate(recent) if i != worst], drop, False)),
            _score(*_merged([w for w, _ in recent], rise, True)))


class QualityTracker:
    """The level of one track direction; ``combine`` several for a participant.

    Loss is pooled over the windows since the link last changed (a few seconds of audio hold
    too few packets to tell 1 % from 3 %); delay, frame rate and layer come from the last few.
    The score drops fast toward optimistic evidence and climbs slowly toward pessimistic
    evidence; docs/quality.md walks through it.
    """

    def __init__(self, history_seconds: float = HISTORY_SECONDS) -> None:
        self._history_seconds = history_seconds
        self._pool: deque[tuple[WindowStats, float]] = deque(maxlen=LONG_WINDOWS)
        # The pool's columns, kept beside it: change detection reads them every second.
        self._expected: list[int] = []
        self._lost: list[int] = []
        self._rates: list[float] = []  # each window's loss rate (_loss_rate)
        self._scores: list[float] = []
        self._empty_run = 0
        self._rate = 1.0  # packets a second in the last window that had any
        self._score: float | None = None
        self._level: QualityLevel | None = None
        self.history: deque[tuple[float, float, QualityLevel]] = deque(
            maxlen=int(history_seconds) + 1)

    @property
    def score(self) -> float | None:
        """Smoothed MOS; None until the first level."""
        return self._score

    @property
    def level(self) -> QualityLevel | None:
        return self._level

    def update(self, stats: WindowStats, now: float, score: float | None = None
               ) -> QualityLevel | None:
        """Take one window; return the new level if it changed, else None. ``score``: the
        window's ``window_score``, if the caller has it already."""
        given = stats
        if stats.muted:  # not applicable: excellent, and the evidence so far is stale
            self._keep(0)
            self._empty_run, self._score = 0, MAX_MOS
            return self._set(QualityLevel.EXCELLENT, now)
        if _is_silence(stats):  # DTX silence says nothing about the link
            return self._set(self._level, now)
        empty = _is_dry(stats) or 0 < stats.packets_expected <= stats.packets_lost
        self._empty_run = self._empty_run + 1 if empty and not stats.paused else 0
        if _is_dry(stats):  # nothing sent: this track's usual packets, all lost
            n = max(1, round(self._rate * max(stats.duration, 0.0)))
            stats = replace(stats, packets_expected=n, packets_lost=n)
        elif stats.packets_expected > 0 and stats.duration >= MIN_RATE_WINDOW:
            # (A window of a few microseconds, or a flood, would make the rate infinite.)
            self._rate = min(stats.packets_expected / stats.duration, MAX_PACKET_RATE)
        if not 0 <= stats.packets_lost <= stats.packets_expected:  # duplicates, reordering
            stats = replace(stats, packets_lost=min(max(stats.packets_lost, 0),
                                                    stats.packets_expected))
        self._push(stats, score if score is not None and stats is given else window_score(stats))
        if self._empty_run >= LOST_AFTER:
            self._keep(0)
            self._score = MIN_MOS
            return self._set(QualityLevel.LOST, now)
        keep = _changed(self._expected, self._lost, self._scores)
        if keep < len(self._pool):  # the older windows describe another link
            self._keep(keep)
        pool = self._pool
        recent = [pool[i] for i in range(max(0, len(pool) - RECENT_WINDOWS), len(pool))]
        drop_to, rise_to = _evidence(recent, self._expected, self._lost, self._rates,
                                     (sum(self._expected), sum(self._lost)))
        dt = min(max(stats.duration, 0.0), MAX_DT)
        score = self._score
        if score is None or self._level is None:
            if len(self._pool) < 2:
                return None  # one window is never evidence, not even for the first level
            score = drop_to
        elif drop_to < score and len(self._pool) >= 2:
            score -= (1.0 - (1.0 - DROP_PER_S) ** dt) * (score - drop_to)
        elif rise_to > score:
            score = min(rise_to, score + RISE_PER_S * dt)
        self._score = min(MAX_MOS, max(MIN_MOS, score))
        return self._set(_next_level(self._score, self._level), now)

    def _push(self, stats: WindowStats, score: float) -> None:
        if len(self._pool) == LONG_WINDOWS:  # the deque drops its oldest: so do the columns
            del self._expected[0], self._lost[0], self._rates[0], self._scores[0]
        self._pool.append((stats, score))
        self._expected.append(stats.packets_expected)
        self._lost.append(stats.packets_lost)
        self._rates.append(_loss_rate(stats))
        self._scores.append(score)

    def _keep(self, keep: int) -> None:
        """Only the newest ``keep`` windows stay in the pool."""
        if keep <= 0:
            self._pool.clear()
            self._expected.clear()
            self._lost.clear()
            self._rates.clear()
            self._scores.clear()
            return
        self._pool = deque(list(self._pool)[-keep:], maxlen=LONG_WINDOWS)
        del self._expected[:-keep], self._lost[:-keep], self._rates[:-keep], self._scores[:-keep]

    def _set(self, level: QualityLevel | None, now: float) -> QualityLevel | None:
        if level is None or self._score is None:
            return None
        self.history.append((now, self._score, level))
        while self.history and self.history[0][0] < now - self._history_seconds:
            self.history.popleft()
        changed, self._level = level != self._level, level
        return level if changed else None


def probable_cause(uplink: WindowStats | None, downlink: WindowStats | None) -> str:
    """The largest impairment of a remote track: the publisher's link or the viewer's own.
    "uplink_loss", "downlink_loss", "uplink_delay", "downlink_delay", "bandwidth" (paused,
    a lower layer or a low frame rate), or "none" when nothing costs CAUSE_MIN_R."""
    candidates: list[tuple[float, str]] = []
    for leg, s in (("uplink", uplink), ("downlink", downlink)):
        if s is None or s.muted or _is_silence(s):
            continue
        ie = VIDEO_IE if s.kind == "video" else OPUS_IE
        candidates.append((_loss_impairment(s) - ie, f"{leg}_loss"))
        network_delay = _delay_impairment(s) - _delay_impairment(s, network=False)
        candidates.append((network_delay, f"{leg}_delay"))
        if s.kind == "video":
            bandwidth = R0 - VIDEO_IE - PAUSED_R if s.paused else _video_impairment(s)
            candidates.append((bandwidth, "bandwidth"))
    best = max(candidates, key=lambda c: c[0], default=(0.0, "none"))
    return best[1] if best[0] >= CAUSE_MIN_R else "none"
