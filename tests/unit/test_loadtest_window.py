"""The load test's window accounting as tables: deltas between two snapshots of the taps,
split into media, RTX and padding; and the padding bit counted at the tap."""

from __future__ import annotations

import random

import pytest

from loadtest.__main__ import main
from loadtest.profiles import CLEAN, PacketTap
from loadtest.window import Count, TrackWindow, snapshot, subscriber_window

SSRCS = {1: ("A:0", False), 2: ("A:0", True), 3: ("A:1", False)}  # video, its RTX, audio


@pytest.mark.parametrize(("before", "after", "tracks", "unknown"), [
    ({}, {1: Count(10, 10), 3: Count(5, 5)},
     {"A:0": TrackWindow(media=10, expected=10), "A:1": TrackWindow(media=5, expected=5)}, 0),
    # the window counts only what came after the first snapshot; 2 of 12 lost
    ({1: Count(100, 100)}, {1: Count(110, 112)},
     {"A:0": TrackWindow(media=10, expected=12, lost=2)}, 0),
    # padding-only probes on the RTX SSRC, and two retransmissions
    ({2: Count(0, 0)}, {2: Count(7, 7, padded=5)}, {"A:0": TrackWindow(rtx=2, padding=5)}, 0),
    # an SSRC no offer announced
    ({}, {9: Count(4, 4)}, {}, 4),
])
def test_window_splits_media_rtx_padding(before: dict[int, Count], after: dict[int, Count],
                                         tracks: dict[str, TrackWindow], unknown: int) -> None:
    got, stray = subscriber_window(before, after, SSRCS)
    assert {k: (v.media, v.rtx, v.padding, v.lost, v.expected) for k, v in got.items()} == {
        k: (v.media, v.rtx, v.padding, v.lost, v.expected) for k, v in tracks.items()}
    assert stray == unknown


def test_tap_counts_the_padding_bit() -> None:
    tap = PacketTap(CLEAN, random.Random(1), drop_rtp=True)
    for seq, first in [(1, 0x80), (2, 0xA0), (3, 0x80)]:  # 0xA0: version 2 + padding
        tap.on_datagram(bytes([first, 96]) + seq.to_bytes(2, "big") + bytes(4)
                        + (7).to_bytes(4, "big") + b"x", now=0.0)
    assert snapshot(tap.streams) == {7: Count(received=3, expected=3, padded=1, bytes=13 * 3)}


def test_warmup_must_not_be_negative() -> None:
    assert main(["--warmup", "-1"]) == 2
