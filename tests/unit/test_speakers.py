"""Active speaker detection: tables of audio-level intervals in, speaker state out."""

from __future__ import annotations

from mediaserver.sfu.speakers import SpeakerDetector

LOUD, QUIET, SILENT = 20, 60, 127  # -dBov


def _interval(d: SpeakerDetector, levels: dict[str, int], now: float, packets: int = 15):
    for _ in range(packets):
        for key, level in levels.items():
            d.observe(key, level)
    return d.tick(now)


def test_a_speaker_is_detected_within_two_intervals_and_released_slowly():
    d = SpeakerDetector()
    first = _interval(d, {"a": LOUD, "b": SILENT}, 0.3)
    assert first is not None and first.dominant == "a"
    assert [k for k, _ in first.speakers] == ["a"]
    # Short pause between words: still speaking.
    assert _interval(d, {"a": SILENT, "b": SILENT}, 0.6) is None
    # Long silence: released.
    update = None
    for i in range(10):
        update = _interval(d, {"a": SILENT, "b": SILENT}, 0.9 + i * 0.3) or update
    assert update is not None and update.speakers == ()
    assert update.dominant == "a"  # kept for layout while nobody talks


def test_background_noise_and_a_single_cough_are_not_speech():
    d = SpeakerDetector()
    assert _interval(d, {"a": QUIET}, 0.3) is None
    d.observe("a", LOUD)  # one loud packet among quiet ones
    for _ in range(14):
        d.observe("a", QUIET)
    assert d.tick(0.6) is None


def test_dominant_speaker_does_not_flicker_during_crosstalk():
    d = SpeakerDetector()
    for i in range(3):
        _interval(d, {"a": LOUD, "b": SILENT}, 0.3 * i)
    assert d.dominant == "a"
    # b is louder for a single interval (crosstalk): a stays dominant.
    _interval(d, {"a": 35, "b": 10}, 1.0)
    _interval(d, {"a": LOUD, "b": 45}, 1.3)
    assert d.dominant == "a"
    # b louder for two consecutive intervals: b takes over.
    _interval(d, {"a": 45, "b": 5}, 1.6)
    _interval(d, {"a": 45, "b": 5}, 1.9)
    _interval(d, {"a": 45, "b": 5}, 2.2)
    assert d.dominant == "b"


def test_dominant_moves_at_once_when_the_current_speaker_stops():
    d = SpeakerDetector()
    for i in range(3):
        _interval(d, {"a": LOUD, "b": SILENT}, 0.3 * i)
    for i in range(10):
        _interval(d, {"a": SILENT, "b": LOUD}, 1.0 + 0.3 * i)
    assert d.dominant == "b"


def test_removed_stream_is_forgotten():
    d = SpeakerDetector()
    _interval(d, {"a": LOUD}, 0.3)
    d.remove("a")
    assert d.dominant is None
    assert d.tick(0.6) is not None  # speakers went from [a] to []
