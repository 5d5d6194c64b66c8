"""Connection-quality scoring: tables of synthetic windows and the level they must read.

Windows are one second long; audio is Opus at 50 packets a second (20 ms frames), video
100 packets a second at an expected 30 fps. Time is passed in, so a table is a clock.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediaserver.quality.score import (
    QualityLevel,
    QualityTracker,
    WindowStats,
    audio_mos,
    combine,
    probable_cause,
    video_score,
    window_score,
)

EX, GOOD, POOR, LOST = (QualityLevel.EXCELLENT, QualityLevel.GOOD, QualityLevel.POOR,
                        QualityLevel.LOST)


def audio(lost: int = 0, n: int = 50, rtt: float | None = 0.04, jitter: float = 0.005,
          **kw: Any) -> WindowStats:
    return WindowStats("audio", 1.0, n, lost, rtt, jitter, 32_000.0, **kw)


def video(lost: int = 0, n: int = 100, rtt: float | None = 0.04, jitter: float = 0.005,
          **kw: Any) -> WindowStats:
    fields: dict[str, Any] = {"frame_rate": 30.0, "expected_frame_rate": 30.0,
                              "layer_delivered": 2, "layer_wanted": 2, **kw}
    return WindowStats("video", 1.0, n, lost, rtt, jitter, 1_500_000.0, **fields)


SILENCE = audio(lost=0, n=0, dtx=True)  # DTX: nothing sent, no sequence numbers used
CLEAN = audio()


def run(windows: list[WindowStats], tracker: QualityTracker | None = None,
        start: float = 0.0) -> tuple[QualityTracker, list[tuple[int, QualityLevel]]]:
    """Feed one window a second; return the tracker and the (index, level) changes."""
    tracker = tracker or QualityTracker()
    changes = []
    for i, window in enumerate(windows):
        new = tracker.update(window, start + i)
        if new is not None:
            changes.append((i, new))
    return tracker, changes


def repeat(pattern: list[WindowStats], n: int) -> list[WindowStats]:
    return list(itertools.islice(itertools.cycle(pattern), n))


# (case, the repeating pattern of windows, the level after 20 windows, why)
STEADY = [
    ("clean link: 0 % loss, 40 ms RTT, 5 ms jitter", [CLEAN], EX,
     "R 83.6 (Opus Ie 8, delay 66 ms): G.107 'users satisfied'"),
    ("2 % loss, concealment only", [audio(1)], GOOD, "R 69: every sentence or so a glitch"),
    ("2 % loss with FEC", [audio(1, fec=True)], GOOD, "R 76: FEC repairs most, not all"),
    ("5 % loss, concealment only", [audio(2), audio(3)], POOR,
     "R 55, 'nearly all users dissatisfied': PLC alone smears a syllable in most sentences"),
    ("5 % loss with FEC", [audio(2, fec=True), audio(3, fec=True)], GOOD,
     "R 66: in-band FEC rebuilds most single losses"),
    ("10 % loss", [audio(5)], POOR, "R 40"),
    ("10 % loss with FEC", [audio(5, fec=True)], POOR, "R 55: too much even for FEC"),
    ("20 % loss", [audio(10)], POOR, "R 26"),
    ("300 ms RTT", [audio(rtt=0.3)], GOOD,
     "mouth-to-ear 197 ms, past G.107's 177 ms knee: R 78.4, turn-taking starts to suffer"),
    ("600 ms RTT", [audio(rtt=0.6)], POOR, "mouth-to-ear 347 ms: R 58, people talk over"),
    ("unknown RTT counts as no network delay", [audio(rtt=None)], EX, "R 84"),
    ("muted audio on a dead link", [audio(50, muted=True)], EX, "not applicable, never poor"),
    ("video, clean", [video()], EX, "same baseline as audio"),
    ("video at half the expected frame rate", [video(frame_rate=15.0)], GOOD,
     "15 of 30 fps: expressions still read, motion visibly less smooth (R 69.5)"),
    ("video at a third of the frame rate", [video(frame_rate=10.0)], POOR,
     "10 of 30 fps: jerky, brief expressions are lost (R 57)"),
    ("video one layer below the one wanted", [video(layer_delivered=1)], GOOD,
     "less detail because of bandwidth: a small drop (R 73.6)"),
    ("video paused by the allocator for bandwidth", [video(n=0, paused=True)], POOR,
     "a frozen face: R 50"),
    ("video 10 % loss", [video(10)], POOR, "retransmission cannot keep up: R 55"),
    ("video 2 % loss", [video(2)], GOOD, "R 76"),
    ("muted video", [video(n=0, muted=True)], EX, "not applicable"),
]


@pytest.mark.parametrize(("case", "pattern", "expected", "why"), STEADY,
                         ids=[row[0] for row in STEADY])
def test_steady_conditions(case: str, pattern: list[WindowStats], expected: QualityLevel,
                           why: str) -> None:
    tracker, changes = run(repeat(pattern, 20))
    assert tracker.level is expected, why
    assert len(changes) <= 2, changes  # reaches its level without wandering
    assert tracker.score is not None and 1.0 <= tracker.score <= 4.5


def test_first_level_needs_two_windows() -> None:
    tracker, changes = run([CLEAN, CLEAN])
    assert changes == [(1, EX)]
    assert tracker.history[0] == (1.0, tracker.score, EX)  # nothing for the first window


# (case, impairment window, at most this many windows until POOR)
DROPS = [
    ("10 % loss", audio(5), 5),
    ("10 % loss with FEC", audio(5, fec=True), 5),
    ("20 % loss", audio(10), 5),
    ("600 ms RTT", audio(rtt=0.6), 5),
    ("video paused", video(n=0, paused=True), 5),
]


@pytest.mark.parametrize(("case", "bad", "within"), DROPS, ids=[row[0] for row in DROPS])
def test_sustained_impairment_reads_poor_quickly(case: str, bad: WindowStats,
                                                 within: int) -> None:
    good = CLEAN if bad.kind == "audio" else video()
    tracker, _ = run([good] * 10)
    _, changes = run([bad] * 10, tracker, start=10)
    first_poor = next(i for i, level in changes if level is POOR)
    assert first_poor + 1 <= within


# (case, impairment, windows of it, windows after it ends until EXCELLENT at most)
RECOVERIES = [
    ("10 % loss", audio(5), 10, 10),
    ("20 % loss", audio(10), 10, 10),
    ("an outage", audio(50), 5, 10),
    ("600 ms RTT", audio(rtt=0.6), 10, 10),
    ("bursty loss", audio(15), 1, 0),  # one window: never left EXCELLENT
]


@pytest.mark.parametrize(("case", "bad", "length", "within"), RECOVERIES,
                         ids=[row[0] for row in RECOVERIES])
def test_recovery_after_impairment_ends(case: str, bad: WindowStats, length: int,
                                        within: int) -> None:
    tracker, _ = run([CLEAN] * 10 + [bad] * length)
    _, changes = run([CLEAN] * 15, tracker, start=10 + length)
    if within == 0:
        assert tracker.level is EX and changes == []
    else:
        back = next(i for i, level in changes if level is EX)
        assert back + 1 <= within
        assert tracker.level is EX


@pytest.mark.parametrize("spike", [audio(8), audio(50), audio(n=0), audio(rtt=1.0),
                                   audio(jitter=0.3)],
                         ids=["15 % loss", "all lost", "nothing sent", "1 s RTT", "300 ms jitter"])
def test_single_bad_window_on_a_clean_link_changes_nothing(spike: WindowStats) -> None:
    tracker, _ = run([CLEAN] * 10)
    _, changes = run([spike] + [CLEAN] * 70, tracker, start=10)
    assert changes == []
    assert tracker.level is EX


def test_isolated_spikes_are_forgiven_up_to_one_in_ten_windows() -> None:
    tracker, _ = run([CLEAN] * 60)
    _, changes = run(repeat([audio(15)] + [CLEAN] * 11, 120), tracker, start=60)  # 30 % a second
    assert changes == [] and tracker.level is EX
    _, changes = run(repeat([audio(15)] + [CLEAN] * 4, 60), tracker, start=180)  # 1 s in 5
    assert tracker.level is not EX


def test_bursty_loss_reads_poor_without_flickering() -> None:
    tracker, _ = run([CLEAN] * 10)
    _, changes = run(repeat([audio(0), audio(15)], 40), tracker, start=10)  # 0 % / 30 %
    assert tracker.level is POOR
    assert [level for _, level in changes] == [POOR]  # one change, then steady


def test_one_bad_second_in_four_is_not_hidden() -> None:
    tracker, _ = run([CLEAN] * 10)
    run(repeat([audio(15), CLEAN, CLEAN, CLEAN], 40), tracker, start=10)  # 7.5 % on average
    assert tracker.level is POOR


@pytest.mark.parametrize("before", [[CLEAN] * 10, [audio(1)] * 10, [audio(5)] * 10],
                         ids=["excellent", "good", "poor"])
def test_dtx_silence_holds_the_level(before: list[WindowStats]) -> None:
    tracker, _ = run(before)
    level, score = tracker.level, tracker.score
    _, changes = run([SILENCE] * 30, tracker, start=10)
    assert changes == []
    assert (tracker.level, tracker.score) == (level, score)
    assert len(tracker.history) == 39  # one entry a window, silence too (not the first)


# (case, window with nothing received, how many windows until LOST at most)
OUTAGES = [
    ("audio, no sequence numbers, no DTX", audio(n=0), 2),
    ("audio, everything sent was lost", audio(50), 2),
    ("audio with DTX, everything sent was lost", audio(50, dtx=True), 2),
    ("video, nothing sent", video(n=0), 2),
]


@pytest.mark.parametrize(("case", "empty", "within"), OUTAGES, ids=[row[0] for row in OUTAGES])
def test_nothing_received_reads_lost(case: str, empty: WindowStats, within: int) -> None:
    good = CLEAN if empty.kind == "audio" else video()
    tracker, _ = run([good] * 10)
    _, changes = run([empty] * 5, tracker, start=10)
    assert changes[0] == (within - 1, LOST)
    _, fresh = run([empty] * 5)  # also on a tracker that has seen nothing yet
    assert fresh[0] == (within - 1, LOST)


def test_lost_then_packets_again_reads_poor_at_once() -> None:
    tracker, _ = run([CLEAN] * 10 + [audio(n=0)] * 3)
    assert tracker.level is LOST
    assert tracker.update(CLEAN, 13.0) is POOR


def test_muted_track_reads_excellent_immediately_and_not_poor_after() -> None:
    tracker, _ = run([audio(10)] * 10)
    assert tracker.level is POOR
    assert tracker.update(audio(50, muted=True), 10.0) is EX
    _, changes = run([CLEAN] * 5, tracker, start=11)
    assert changes == [] and tracker.level is EX


# (loss, FEC, levels that are the truth, at most this many changes in ten minutes)
RANDOM_LOSS = [
    (0.002, True, {EX}, 0),          # R 82.8
    (0.002, False, {EX, GOOD}, 4),   # R 81.9: inside the hysteresis band, either is true
    (0.005, False, {GOOD}, 4),       # R 79.5: just below the EXCELLENT line
    (0.02, True, {GOOD}, 1),         # R 76
    (0.02, False, {GOOD}, 1),        # R 69
    (0.05, True, {GOOD}, 1),         # R 66
    (0.08, False, {POOR}, 1),        # R 46
]


@pytest.mark.parametrize(("loss", "fec", "truth", "max_changes"), RANDOM_LOSS)
def test_random_loss_reads_its_true_level_steadily(loss: float, fec: bool,
                                                   truth: set[QualityLevel],
                                                   max_changes: int) -> None:
    rng = random.Random(7)  # ten minutes of Bernoulli loss on 50 packets a second
    windows = [audio(sum(rng.random() < loss for _ in range(50)), fec=fec) for _ in range(600)]
    tracker, changes = run(windows)
    assert len(changes) - 1 <= max_changes  # the first "change" is the first level
    settled = [level for t, _, level in tracker.history if t >= 30]  # after half a minute
    assert sum(level in truth for level in settled) >= 0.95 * len(settled)


def test_history_keeps_one_entry_a_window_for_the_last_hour() -> None:
    assert QualityTracker().history.maxlen == 3601
    tracker, _ = run([CLEAN] * 200, QualityTracker(history_seconds=60.0))
    assert len(tracker.history) == 61
    assert tracker.history[0][0] == 199 - 60
    assert tracker.history[-1] == (199.0, tracker.score, EX)


# audio_mos and video_score: the E-model points behind the levels.
@pytest.mark.parametrize(("window", "low", "high"), [
    (audio(), 4.10, 4.20),                  # R 83.6
    (audio(1), 3.50, 3.60),                 # 2 %: Ie,eff = 8 + 87 * 2 / 12
    (audio(1, fec=True), 3.80, 3.90),       # 2 % with FEC: Bpl 20
    (audio(5), 2.00, 2.10),                 # 10 %
    (audio(rtt=0.3), 3.90, 4.02),           # R 78.4, just below the R 80 line (MOS 4.02)
    (audio(rtt=0.6), 2.95, 3.10),           # R 58.3, just below the R 60 line (MOS 3.10)
    (audio(50), 1.0, 1.0),                  # everything lost
    (audio(n=0), 1.0, 1.0),                 # nothing sent without DTX: an outage
    (audio(n=0, dtx=True), 4.10, 4.20),     # DTX silence: no loss at all
    (audio(50, muted=True), 4.5, 4.5),      # not rated
    (audio(rtt=100.0, jitter=10.0), 1.0, 1.0),
])
def test_audio_mos_points(window: WindowStats, low: float, high: float) -> None:
    assert low <= audio_mos(window) <= high


@pytest.mark.parametrize(("window", "low", "high"), [
    (video(), 4.10, 4.20),
    (video(frame_rate=25.0), 4.10, 4.20),   # within 80 % of 30 fps: no cost
    (video(frame_rate=15.0), 3.50, 3.65),
    (video(frame_rate=0.0), 1.0, 1.2),      # frozen although packets arrive
    (video(layer_delivered=0), 3.20, 3.40),  # two layers below
    (video(n=0, paused=True), 2.50, 2.65),
    (video(frame_rate=None, layer_delivered=None), 4.10, 4.20),  # unknown: no cost
])
def test_video_score_points(window: WindowStats, low: float, high: float) -> None:
    assert low <= video_score(window) <= high


def test_more_loss_or_delay_never_scores_better() -> None:
    for fec in (False, True):
        mos = [audio_mos(audio(lost, fec=fec)) for lost in range(51)]
        assert mos == sorted(mos, reverse=True)
    mos = [audio_mos(audio(rtt=rtt / 100)) for rtt in range(0, 200)]
    assert mos == sorted(mos, reverse=True)


@pytest.mark.parametrize(("levels", "expected"), [
    ([EX, GOOD], GOOD),
    ([GOOD, POOR, EX], POOR),
    ([LOST, POOR], LOST),
    ([None, GOOD], GOOD),
    ([None], EX),
    ([], EX),
])
def test_combine_worst_wins(levels: list[QualityLevel | None], expected: QualityLevel) -> None:
    assert combine(levels) is expected


def test_level_values_are_stable_strings() -> None:
    assert [level.value for level in QualityLevel] == ["excellent", "good", "poor", "lost"]


# (uplink = the publisher's link to us, downlink = ours to the viewer, expected cause)
CAUSES = [
    (video(10), video(), "uplink_loss"),
    (video(), video(10), "downlink_loss"),
    (video(3), video(10), "downlink_loss"),
    (video(rtt=0.6), video(), "uplink_delay"),
    (video(), video(rtt=0.6, jitter=0.05), "downlink_delay"),
    (video(), video(n=0, paused=True), "bandwidth"),
    (video(frame_rate=8.0), video(), "bandwidth"),
    (video(), video(layer_delivered=1), "bandwidth"),
    (video(), video(), "none"),
    (video(1), video(), "uplink_loss"),  # 1 % is already enough to leave EXCELLENT
    (video(1, n=200), video(rtt=0.1), "none"),  # 0.5 % loss, 100 ms RTT: nothing to name
    (audio(5), None, "uplink_loss"),
    (None, audio(5, fec=True), "downlink_loss"),
    (audio(n=0, dtx=True), audio(), "none"),
    (audio(50, muted=True), audio(), "none"),
    (None, None, "none"),
]


@pytest.mark.parametrize(("uplink", "downlink", "expected"), CAUSES)
def test_probable_cause(uplink: WindowStats | None, downlink: WindowStats | None,
                        expected: str) -> None:
    assert probable_cause(uplink, downlink) == expected


def test_invalid_windows_are_our_mistake() -> None:
    with pytest.raises(ValueError, match="kind must be 'audio' or 'video', not 'data'"):
        WindowStats("data", 1.0, 0, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="packets_expected must not be negative: -1"):
        WindowStats("audio", 1.0, -1, 0)


def test_negative_or_excess_loss_is_clamped() -> None:
    # a receiver report's loss can go negative (duplicates) or overshoot (reordering)
    tracker, _ = run([audio(-3)] * 5 + [audio(80)] * 5)
    assert tracker.level is LOST
    assert audio_mos(audio(-3)) == audio_mos(CLEAN)


windows_st = st.builds(
    WindowStats,
    kind=st.sampled_from(["audio", "video"]),
    duration=st.floats(0.0, 30.0),
    packets_expected=st.integers(0, 20_000),
    packets_lost=st.integers(0, 40_000),  # reordering at a window's edge can overshoot
    rtt=st.none() | st.floats(0.0, 30.0),
    jitter=st.floats(0.0, 30.0),
    bitrate=st.floats(0.0, 1e9),
    frame_rate=st.none() | st.floats(0.0, 240.0),
    expected_frame_rate=st.none() | st.floats(0.0, 240.0),
    layer_delivered=st.none() | st.integers(0, 3),
    layer_wanted=st.none() | st.integers(0, 3),
    paused=st.booleans(), muted=st.booleans(), fec=st.booleans(), dtx=st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(windows_st, min_size=1, max_size=30))
def test_any_valid_windows_keep_the_score_in_range(windows: list[WindowStats]) -> None:
    tracker = QualityTracker()
    for i, window in enumerate(windows):
        assert 1.0 <= audio_mos(window) <= 4.5
        assert 1.0 <= video_score(window) <= 4.5
        tracker.update(window, float(i))
        assert tracker.score is None or 1.0 <= tracker.score <= 4.5
        assert probable_cause(window, windows[i - 1]) in {
            "uplink_loss", "downlink_loss", "uplink_delay", "downlink_delay", "bandwidth",
            "none"}
    assert all(1.0 <= score <= 4.5 for _, score, _ in tracker.history)


@settings(max_examples=60, deadline=None)
@given(st.lists(windows_st, min_size=1, max_size=30))
def test_a_score_handed_in_changes_nothing(windows: list[WindowStats]) -> None:
    # The monitor rates each window once and hands the score in. A window the tracker
    # rewrites (nothing sent, loss out of range) is rated again, so a stale score handed
    # in for it (here a wrong one) must not count.
    plain, handed, wrong = QualityTracker(), QualityTracker(), QualityTracker()
    for i, window in enumerate(windows):
        score = window_score(window)
        outcomes = [plain.update(window, float(i)), handed.update(window, float(i), score)]
        silence = (window.kind == "audio" and window.dtx and window.packets_expected <= 0
                   and not window.muted)
        dry = window.packets_expected <= 0 and not (window.muted or window.paused or silence)
        rewritten = dry or not 0 <= window.packets_lost <= window.packets_expected
        if rewritten:
            outcomes.append(wrong.update(window, float(i), 1.0 if score > 2.0 else 4.5))
        else:
            outcomes.append(wrong.update(window, float(i), score))
        assert outcomes[0] == outcomes[1] == outcomes[2]
        assert plain.score == handed.score == wrong.score
        # Every pooled window is rated as it stands (a wrong rating seldom shows outside).
        assert all(pooled == window_score(w) for w, pooled in wrong._pool)
    assert list(plain.history) == list(handed.history) == list(wrong.history)


@pytest.mark.parametrize("duration", [2.2250738585e-313, 1e-9, 0.0])
def test_a_window_of_almost_no_time_does_not_make_the_rate_infinite(duration: float) -> None:
    # Found by the property above: one packet over a subnormal duration made the learnt
    # packet rate infinite, and the next empty window's charge could not be counted.
    tracker = QualityTracker()
    tracker.update(WindowStats(kind="audio", duration=duration, packets_expected=1,
                               packets_lost=0), 0.0)
    for i, d in enumerate((0.0, 1.0), start=1):
        tracker.update(WindowStats(kind="audio", duration=d, packets_expected=0,
                                   packets_lost=0), float(i))
    assert tracker.score is not None and 1.0 <= tracker.score <= 4.5


def _changed_by_definition(pool: list[tuple[WindowStats, float]]) -> int:
    """score._changed as its docstring defines it, written plainly: sums and worst windows
    recomputed for every scale (the module's version finds them in one pass each)."""
    from mediaserver.quality import score as sc
    n = len(pool)
    scales = [m for m in sc.CHANGE_SCALES if n >= m + sc.RECENT_WINDOWS]
    for m in scales:
        cut = n - m
        older_part, recent_part = pool[:cut], pool[cut:]

        def counts(part: list[tuple[WindowStats, float]]) -> tuple[int, int]:
            return (sum(w.packets_expected for w, _ in part),
                    sum(w.packets_lost for w, _ in part))

        recent, older = counts(recent_part), counts(older_part)
        r = min(range(cut, n), key=lambda i: pool[i][1])
        o = min(range(cut), key=lambda i: pool[i][1])
        wr, wo = pool[r][0], pool[o][0]
        if (sc._shift((recent[0] - wr.packets_expected, recent[1] - wr.packets_lost), older)
                >= sc.Z_CHANGE
                or sc._shift(recent, (older[0] - wo.packets_expected,
                                      older[1] - wo.packets_lost)) <= -sc.Z_CHANGE):
            return m // 2
    return n


# Few distinct scores, so that ties (the earliest worst window counts) are common.
pool_entries = st.tuples(st.integers(0, 120), st.integers(0, 120),
                         st.sampled_from([1.0, 2.5, 3.9, 4.2, 4.5]))


@settings(max_examples=300, deadline=None)
@given(st.lists(pool_entries, min_size=0, max_size=60))
def test_change_detection_matches_its_definition(entries) -> None:
    from mediaserver.quality.score import _changed
    pool = [(audio(lost=min(lost, n), n=n), s) for n, lost, s in entries]
    assert _changed([w.packets_expected for w, _ in pool], [w.packets_lost for w, _ in pool],
                    [s for _, s in pool]) == _changed_by_definition(pool)


# Loss-free pools take a shortcut (no worst windows needed unless the packet counts jump):
# counts from empty to large, so that both the shortcut and the full test run.
@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 1, 2, 5, 50, 120, 2000]),
                          st.sampled_from([1.0, 2.5, 4.2, 4.5])), min_size=0, max_size=60))
def test_change_detection_without_loss_matches_its_definition(entries) -> None:
    from mediaserver.quality.score import _changed
    pool = [(audio(lost=0, n=n), s) for n, s in entries]
    assert _changed([w.packets_expected for w, _ in pool], [0] * len(pool),
                    [s for _, s in pool]) == _changed_by_definition(pool)


def test_a_clean_link_whose_packet_rate_jumps_is_a_change() -> None:
    # The shortcut must not hide the one change a loss-free pool can show: the recent side
    # carrying far more packets than the older one (a track resumed at full rate).
    from mediaserver.quality.score import _changed
    expected = [1] * 20 + [200] * 4
    assert _changed(expected, [0] * 24, [4.5] * 24) == 2
    assert _changed([50] * 24, [0] * 24, [4.5] * 24) == 24


# Audio windows whose loss jumps now and then: long enough to fill the pool (60) and evict,
# with changes that make the tracker drop its older windows, and LOST and muted resets.
audio_runs_st = st.lists(
    st.tuples(st.sampled_from([50] * 8 + [0, 20, 60]),
              st.sampled_from([0] * 30 + [1, 5, 30, 50]),
              st.sampled_from([False] * 60 + [True])),
    min_size=70, max_size=160)


@settings(max_examples=40, deadline=None)
@given(audio_runs_st)
def test_the_trackers_columns_follow_its_pool(runs) -> None:
    """The tracker keeps its pool's packet counts and scores as columns beside it for the
    change detection; whatever happens to the pool (eviction, trimming, reset), they stay
    the pool's."""
    tracker = QualityTracker()
    for i, (n, lost, muted) in enumerate(runs):
        tracker.update(audio(lost=min(lost, n), n=n, muted=muted), float(i))
        pool = list(tracker._pool)
        assert tracker._expected == [w.packets_expected for w, _ in pool]
        assert tracker._lost == [w.packets_lost for w, _ in pool]
        assert tracker._rates == [w.packets_lost / (w.packets_expected or 1) for w, _ in pool]
        assert tracker._scores == [s for _, s in pool]


def _spike_free_by_definition(windows: list[WindowStats], k: int
                              ) -> tuple[tuple[int, int], tuple[int, int]]:
    """score._spike_free as its docstring defines it: the windows sorted by loss rate, each
    of the k highest tested against all the others below the k."""
    from mediaserver.quality import score as sc

    def counts(ws: list[WindowStats]) -> tuple[int, int]:
        return sum(w.packets_expected for w in ws), sum(w.packets_lost for w in ws)

    total = counts(windows)
    if not 0 < k < len(windows) or not total[1]:
        return total, total
    order = sorted(windows, key=lambda w: w.packets_lost / (w.packets_expected or 1))
    rest, drop, rise = counts(order[:-k]), total, total
    for i, w in enumerate(order[-k:]):
        if sc._shift((w.packets_expected, w.packets_lost), rest) >= sc.Z_CHANGE:
            drop = (drop[0] - w.packets_expected, drop[1] - w.packets_lost)
            if i > 0:
                rise = (rise[0] - w.packets_expected, rise[1] - w.packets_lost)
    return drop, rise


# Few distinct counts, so that equal loss rates (the later of equals ranks higher) are common.
spike_entries = st.tuples(st.sampled_from([0, 1, 10, 50, 100]), st.integers(0, 100))


@settings(max_examples=300, deadline=None)
@given(st.lists(spike_entries, min_size=0, max_size=60), st.integers(0, 8))
def test_spike_removal_matches_its_definition(entries, k) -> None:
    from mediaserver.quality.score import _spike_free
    windows = [audio(lost=min(lost, n), n=n) for n, lost in entries]
    expected = [w.packets_expected for w in windows]
    lost = [w.packets_lost for w in windows]
    rates = [w.packets_lost / (w.packets_expected or 1) for w in windows]
    assert (_spike_free(expected, lost, rates, k, (sum(expected), sum(lost)))
            == _spike_free_by_definition(windows, k))


window_fields = st.tuples(st.sampled_from([None, 0.0, 0.02, 0.3]),
                          st.sampled_from([0.0, 0.004, 0.05]),
                          st.sampled_from([None, 0.0, 12.0, 30.0]))


@settings(max_examples=200, deadline=None)
@given(st.lists(window_fields, min_size=1, max_size=4), st.booleans())
def test_merged_evidence_takes_the_median_or_the_worst(fields, worst) -> None:
    from statistics import median

    from mediaserver.quality.score import _merged
    windows = [video(rtt=rtt, jitter=jitter, frame_rate=fr) for rtt, jitter, fr in fields]
    merged = WindowStats(*_merged(windows, (400, 3), worst))
    rtts = [r for r, _, _ in fields if r is not None]
    rates = [f for _, _, f in fields if f is not None]
    jitters = [j for _, j, _ in fields]
    pick_rtt, pick_jitter, pick_rate = (max, max, min) if worst else (median, median, median)
    assert merged.rtt == (pick_rtt(rtts) if rtts else None)
    assert merged.jitter == pick_jitter(jitters)
    assert merged.frame_rate == (pick_rate(rates) if rates else None)
    assert (merged.packets_expected, merged.packets_lost) == (400, 3)
    assert merged.layer_delivered == windows[-1].layer_delivered
