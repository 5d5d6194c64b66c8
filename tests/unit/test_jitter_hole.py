"""skip_stuck_hole on aiortc's own video jitter buffer: a hole nobody re-asks for is dropped
after a while; a young hole, or a buffer merely waiting for the next frame, is left alone."""

from __future__ import annotations

from typing import Any

import pytest
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from mediaserver.sfu.aiortc_adapter import skip_stuck_hole

TS = 6000  # one frame at 15 fps on the 90 kHz clock


def _feed(buffer: JitterBuffer, packets: list[tuple[int, int]]) -> list[int]:
    """(sequence number, frame index) pairs in; the frame indices that came out."""
    out = []
    for seq, frame in packets:
        packet = RtpPacket(payload_type=96, sequence_number=seq & 0xFFFF,
                           timestamp=frame * TS, payload=b"x")
        packet._data = b"x"  # type: ignore[attr-defined]  # the receiver's depacketized payload
        _, got = buffer.add(packet)
        if got is not None:
            out.append(got.timestamp // TS)
    return out


@pytest.mark.parametrize("bounded", [False, True])  # with the newest sequence number known
@pytest.mark.parametrize("first", [100, 65530])  # and across the sequence-number wrap
def test_a_hole_inside_a_frame_is_dropped_with_that_frame(first, bounded):
    buffer = JitterBuffer(capacity=512, is_video=True)
    state: dict[str, Any] = {}
    # Frame 0 comes out when frame 1 starts; first+3 (frame 1's second packet) is lost.
    assert _feed(buffer, [(first, 0), (first + 1, 0), (first + 2, 1)]) == [0]
    assert _feed(buffer, [(first + 4, 1), (first + 5, 2), (first + 6, 2), (first + 7, 3)]) == []
    newest = (first + 7) & 0xFFFF if bounded else None
    assert not skip_stuck_hole(buffer, state, 10.0, 1.0, newest)  # first sight
    assert not skip_stuck_hole(buffer, state, 10.9, 1.0, newest)  # still young
    assert skip_stuck_hole(buffer, state, 11.1, 1.0, newest)
    # Frame 1 (its start, the hole, its end) is gone: frame 2 heads the buffer and frames
    # flow again from the next packet on.
    assert buffer._origin == (first + 5) & 0xFFFF
    assert _feed(buffer, [(first + 8, 4)]) == [2]
    assert "_sfu_stuck_head" not in state


def test_a_hole_at_a_frame_boundary_keeps_the_frame_behind_it():
    buffer = JitterBuffer(capacity=512, is_video=True)
    state: dict[str, Any] = {}
    _feed(buffer, [(1, 0), (2, 1)])  # frame 0 out; frame 1 at the head
    _feed(buffer, [(4, 3), (5, 3), (6, 4)])  # 3 (frame 2, one packet) lost
    assert not skip_stuck_hole(buffer, state, now=0.0, give_up_after=1.0)
    assert skip_stuck_hole(buffer, state, now=2.0, give_up_after=1.0)
    assert buffer._origin == 4  # frame 1 waited on the hole and went; frame 3 stays
    assert _feed(buffer, [(7, 5)]) == [3]


def test_a_filled_hole_restarts_the_clock():
    buffer = JitterBuffer(capacity=512, is_video=True)
    state: dict[str, Any] = {}
    _feed(buffer, [(1, 0), (2, 1), (4, 2), (5, 3)])  # 3 lost: frame 1 waits
    assert not skip_stuck_hole(buffer, state, now=0.0, give_up_after=1.0)
    assert _feed(buffer, [(3, 1)]) == [1]  # the retransmission: frame 1 out, head moves on
    assert not skip_stuck_hole(buffer, state, now=5.0, give_up_after=1.0)
    assert buffer._origin == 4


def test_a_buffer_waiting_for_the_next_frame_is_left_alone():
    buffer = JitterBuffer(capacity=512, is_video=True)
    state: dict[str, Any] = {}
    assert not skip_stuck_hole(buffer, state, now=0.0, give_up_after=1.0)  # nothing yet
    _feed(buffer, [(10, 0), (11, 1), (12, 1)])  # frame 1 waits for frame 2 to start
    assert not skip_stuck_hole(buffer, state, now=0.0, give_up_after=1.0)
    assert not skip_stuck_hole(buffer, state, now=30.0, give_up_after=1.0)  # a pause
    assert not skip_stuck_hole(buffer, state, 30.0, 1.0, newest=12)
    assert buffer._origin == 11


def test_a_keyframe_behind_a_hole_ends_the_wait_at_once():
    """A new simulcast layer starts with a keyframe right after the old layer's lost
    packets: nothing before the keyframe is worth waiting for."""
    from mediaserver.sfu.aiortc_adapter import vp8_keyframe_start

    key = b"\x10\x00\x9d\x01\x2a"  # VP8 descriptor S=1 PID=0; payload header P=0
    delta = b"\x10\x01\x00\x00\x00"  # P=1
    buffer = JitterBuffer(capacity=512, is_video=True)
    state: dict[str, Any] = {}

    def add(seq: int, frame: int, payload: bytes) -> int | None:
        packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=frame * TS,
                           payload=payload)
        packet._data = payload  # type: ignore[attr-defined]
        _, got = buffer.add(packet)
        return None if got is None else got.timestamp // TS

    add(1, 0, delta)
    add(2, 1, delta)  # frame 0 out; frame 1 heads the buffer
    add(4, 1, delta)  # 3 (frame 1's middle) lost on the old layer
    add(5, 2, delta)
    add(6, 3, key)  # the new layer's keyframe...
    add(7, 3, delta)  # ...in two packets
    assert not vp8_keyframe_start(RtpPacket(payload=delta))
    # Without the keyframe test the hole is young: nothing happens.
    assert not skip_stuck_hole(buffer, state, 0.0, 1.0, 7)
    assert skip_stuck_hole(buffer, state, 0.1, 1.0, 7, vp8_keyframe_start)
    assert buffer._origin == 6
    assert add(8, 4, delta) == 3  # the keyframe comes out whole
