"""Active speaker detection from RFC 6464 audio levels (sans-IO, time passed in).

The packet path only counts: ``observe(key, level)`` per audio packet. Once per
``interval`` the room's control task calls ``tick(now)``, which turns the counts into a
smoothed activity per stream and decides who is speaking and who is dominant:

- activity = the share of packets in the interval louder than ``ACTIVE_DBOV``, weighted by
  how loud they were: a cough (one loud packet) barely moves it, speech does;
- smoothing is asymmetric (fast attack, slow release), so a speaker shows up within about
  two intervals and does not blink off between words;
- speaking has hysteresis (on above ``ON``, off below ``OFF``);
- the dominant speaker changes only when another speaker has been louder for
  ``SWITCH_INTERVALS`` consecutive intervals, or when the current one stops: the layout
  that follows it does not jump back and forth during crosstalk.

Constants were chosen for 20 ms Opus packets and a 300 ms interval; the tests in
tests/unit/test_speakers.py pin their behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mediaserver.sfu.native import int_fields

ACTIVE_DBOV = 50  # RFC 6464 levels are -dBov: 0 loudest, 127 silence; voice is above -50 dBov
ATTACK = 0.6
RELEASE = 0.2
ON = 0.25
OFF = 0.1
SWITCH_INTERVALS = 2


@dataclass(frozen=True)
class SpeakerUpdate:
    """The speakers, loudest first, each with its smoothed activity 0..1, and the dominant."""

    speakers: tuple[tuple[str, float], ...]
    dominant: str | None


_StreamInts: Any
_StreamInts, _STREAM_SLOTS = int_fields("SpeakerInts", "count")


class _Stream(_StreamInts):
    __slots__ = ("active", "level", "loud_sum", "speaking", *_STREAM_SLOTS)

    def __init__(self) -> None:
        self.count = 0
        self.loud_sum = 0.0
        self.level = 0.0
        self.speaking = False
        self.active = False


class SpeakerDetector:
    # Slots: the C receive path counts a stream's levels on these objects (_fastpath.c).
    __slots__ = ("_challenge_count", "_challenger", "_dominant", "_last", "_streams")

    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}
        self._dominant: str | None = None
        self._challenger: str | None = None
        self._challenge_count = 0
        self._last: SpeakerUpdate = SpeakerUpdate((), None)

    def observe(self, key: str, level: int) -> None:
        """One audio packet's level (0..127, -dBov). Called on the packet path."""
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream()
        stream.count += 1
        if level < ACTIVE_DBOV:
            stream.loud_sum += (ACTIVE_DBOV - level) / ACTIVE_DBOV

    def remove(self, key: str) -> None:
        self._streams.pop(key, None)
        if self._dominant == key:
            self._dominant = None

    def tick(self, now: float) -> SpeakerUpdate | None:
        """Close an interval; return the new state if it changed, else None."""
        for stream in self._streams.values():
            activity = min(1.0, 2.0 * stream.loud_sum / stream.count) if stream.count else 0.0
            alpha = ATTACK if activity > stream.level else RELEASE
            stream.level += alpha * (activity - stream.level)
            stream.speaking = stream.level >= (OFF if stream.speaking else ON)
            stream.count = 0
            stream.loud_sum = 0.0
        speaking = sorted(((k, s.level) for k, s in self._streams.items() if s.speaking),
                          key=lambda kv: -kv[1])
        self._choose_dominant(speaking)
        update = SpeakerUpdate(tuple((k, round(v, 2)) for k, v in speaking), self._dominant)
        if ([k for k, _ in update.speakers] == [k for k, _ in self._last.speakers]
                and update.dominant == self._last.dominant):
            return None
        self._last = update
        return update

    def _choose_dominant(self, speaking: list[tuple[str, float]]) -> None:
        if not speaking:
            self._challenger, self._challenge_count = None, 0
            return  # keep the last dominant speaker for layout while everyone is quiet
        loudest = speaking[0][0]
        current = self._dominant
        if current is None or current not in dict(speaking):
            self._dominant = loudest
            self._challenger, self._challenge_count = None, 0
            return
        if loudest == current:
            self._challenger, self._challenge_count = None, 0
            return
        if loudest == self._challenger:
            self._challenge_count += 1
        else:
            self._challenger, self._challenge_count = loudest, 1
        if self._challenge_count >= SWITCH_INTERVALS:
            self._dominant = loudest
            self._challenger, self._challenge_count = None, 0

    @property
    def dominant(self) -> str | None:
        return self._dominant
