"""VP8 temporal layer filter: hand-built descriptors, layer switches, wraparound, properties."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediaserver.sfu.temporal import TemporalRates, Vp8TemporalFilter
from mediaserver.sfu.vp8 import Vp8Descriptor, parse_vp8

PROPERTY = settings(max_examples=300, deadline=None)
PATTERN = (0, 2, 1, 2)  # L1T3: TID of frame i is PATTERN[i % 4]


def vp8(
    pid: int | None, tl0: int | None = None, tid: int | None = None, *, y: bool = False,
    bits: int = 7, s: bool = True, key: bool = False,
) -> bytes:  # fmt: skip
    """Descriptor with X/I/M/L/T bits as needed, then one VP8 payload header byte."""
    x = (0x80 if pid is not None else 0) | (0x40 if tl0 is not None else 0)
    x |= 0x20 if tid is not None else 0
    out = bytearray([(0x80 if x else 0) | (0x10 if s else 0)])
    if x:
        out.append(x)
    if pid is not None:
        out += bytes([pid]) if bits == 7 else bytes([0x80 | (pid >> 8), pid & 0xFF])
    if tl0 is not None:
        out.append(tl0)
    if tid is not None:
        out.append((tid << 6) | (0x20 if y else 0))
    out.append(0x00 if key else 0x01)
    return bytes(out)


class Run:
    """Feeds packets with increasing sequence numbers; records what comes out."""

    def __init__(self, filt: Vp8TemporalFilter) -> None:
        self.filt = filt
        self.seq = 1000
        self.out: list[Vp8Descriptor] = []

    def send(self, payload: bytes, marker: bool = True) -> Vp8Descriptor | None:
        desc = parse_vp8(payload)
        assert desc is not None
        self.seq += 1
        res = self.filt.process(payload, desc, self.seq, marker)
        if res is None:
            return None
        got = parse_vp8(res)
        assert got is not None and res[-1] == payload[-1]
        self.out.append(got)
        return got

    def frame(self, i: int, *, pid0: int = 0, bits: int = 7, tl00: int = 0) -> bool:
        """Frame i of the 3-layer pattern; True when forwarded."""
        tid = PATTERN[i % 4]
        pid = (pid0 + i) % (1 << bits)
        payload = vp8(pid, (tl00 + i // 4) & 0xFF, tid, y=i % 4 in (1, 2), bits=bits, key=i == 0)
        return self.send(payload) is not None


def _pids(descs: list[Vp8Descriptor]) -> list[int | None]:
    return [d.picture_id for d in descs]


def test_target_2_forwards_everything_unchanged() -> None:
    run = Run(Vp8TemporalFilter(2))
    assert all(run.frame(i, pid0=10) for i in range(12))
    assert _pids(run.out) == list(range(10, 22))
    assert [d.tl0picidx for d in run.out] == [i // 4 for i in range(12)]
    assert (run.filt.frames_forwarded, run.filt.frames_dropped) == (12, 0)


def test_target_0_forwards_base_layer_consecutively() -> None:
    run = Run(Vp8TemporalFilter(0))
    sent = [i for i in range(16) if run.frame(i, pid0=50, tl00=7)]
    assert sent == [0, 4, 8, 12]
    assert _pids(run.out) == [50, 51, 52, 53]
    assert [d.tl0picidx for d in run.out] == [7, 8, 9, 10]
    assert {d.tid for d in run.out} == {0}
    assert (run.filt.frames_forwarded, run.filt.frames_dropped) == (4, 12)


def test_target_1_drops_only_layer_2() -> None:
    run = Run(Vp8TemporalFilter(1))
    assert [i for i in range(8) if run.frame(i)] == [0, 2, 4, 6]
    assert _pids(run.out) == [0, 1, 2, 3]


def test_switch_up_waits_for_layer_sync() -> None:
    filt = Vp8TemporalFilter(0)
    run = Run(filt)
    assert [run.frame(i) for i in range(4)] == [True, False, False, False]
    filt.set_target(2)
    # frame 4 is TL0; frames 5 (TID 2) and 6 (TID 1) carry Y, so both layers come up there
    run.frame(4)
    assert run.frame(5) and filt.current == 2
    assert all(run.frame(i) for i in range(6, 12))
    assert _pids(run.out) == list(range(9))


def test_switch_up_without_sync_bit_waits() -> None:
    filt = Vp8TemporalFilter(0)
    run = Run(filt)
    run.send(vp8(0, 0, 0, key=True))
    filt.set_target(1)
    assert run.send(vp8(1, 0, 1)) is None  # no Y: depends on a dropped TID 1 frame
    assert run.send(vp8(2, 1, 0)) is not None
    assert filt.current == 0
    assert run.send(vp8(3, 1, 1, y=True)) is not None
    assert filt.current == 1
    assert _pids(run.out) == [0, 1, 2]


def test_switch_up_at_keyframe() -> None:
    filt = Vp8TemporalFilter(0)
    run = Run(filt)
    run.send(vp8(0, 0, 0, key=True))
    filt.set_target(2)
    assert run.send(vp8(1, 1, 0, key=True)) is not None
    assert filt.current == 2
    assert run.send(vp8(2, 1, 2)) is not None


def test_switch_down_at_next_frame() -> None:
    filt = Vp8TemporalFilter(2)
    run = Run(filt)
    assert all(run.frame(i) for i in range(2))
    filt.set_target(0)
    assert not run.frame(2) and not run.frame(3)
    assert run.frame(4)
    assert _pids(run.out) == [0, 1, 2]


def test_multi_packet_frames_whole() -> None:
    filt = Vp8TemporalFilter(2)
    run = Run(filt)
    run.send(vp8(0, 0, 0, key=True), marker=False)
    run.send(vp8(0, 0, 0, s=False), marker=True)
    assert run.send(vp8(1, 0, 2, y=True), marker=False) is not None
    filt.set_target(0)  # mid-frame: the rest of frame 1 still goes out
    assert run.send(vp8(1, 0, 2, y=True, s=False), marker=True) is not None
    assert run.send(vp8(2, 0, 1, y=True), marker=False) is None
    filt.set_target(2)  # mid-frame: the rest of frame 2 stays dropped
    assert run.send(vp8(2, 0, 1, y=True, s=False), marker=True) is None
    assert run.send(vp8(3, 0, 2, y=True), marker=True) is not None
    assert _pids(run.out) == [0, 0, 1, 1, 2]
    assert (filt.frames_forwarded, filt.frames_dropped) == (3, 1)


def test_late_packet_of_dropped_and_forwarded_frames() -> None:
    filt = Vp8TemporalFilter(0)
    run = Run(filt)
    run.send(vp8(0, 0, 0, key=True))
    assert run.send(vp8(1, 0, 2)) is None
    assert run.send(vp8(2, 1, 0), marker=False) is not None
    assert run.send(vp8(1, 0, 2, s=False)) is None  # late piece of dropped frame 1
    got = run.send(vp8(0, 0, 0, s=False))  # late piece of frame 0 keeps its PictureID
    assert got is not None and got.picture_id == 0
    assert filt.frames_dropped == 1


def test_7_bit_wraparound() -> None:
    run = Run(Vp8TemporalFilter(2))
    for i in range(8):
        run.frame(i, pid0=124)
    assert _pids(run.out) == [124, 125, 126, 127, 0, 1, 2, 3]
    run = Run(Vp8TemporalFilter(0))
    for i in range(1200):
        run.frame(i, pid0=100, tl00=250)
    assert _pids(run.out) == [(100 + k) % 128 for k in range(300)]
    assert [d.tl0picidx for d in run.out] == [(250 + k) % 256 for k in range(300)]


def test_15_bit_wraparound() -> None:
    run = Run(Vp8TemporalFilter(2))
    for i in range(6):
        run.frame(i, pid0=32765, bits=15)
    assert _pids(run.out) == [32765, 32766, 32767, 0, 1, 2]
    assert {d.picture_id_bits for d in run.out} == {15}
    run = Run(Vp8TemporalFilter(0))
    for i in range(16):
        run.frame(i, pid0=32759, bits=15)  # in 32759, 32763, 32767, 3 -> out +1 each
    assert _pids(run.out) == [32759, 32760, 32761, 32762]


def test_reset_source_continues_numbering() -> None:
    filt = Vp8TemporalFilter(2)
    run = Run(filt)
    for i in range(6):
        run.frame(i, pid0=40, tl00=9)  # out pids 40..45, tl0 9, 10
    filt.reset_source()
    assert run.send(vp8(7000, 200, 1, y=True, bits=15)) is None  # waits for a keyframe
    got = run.send(vp8(7001, 201, 0, bits=15, key=True))
    assert got is not None and (got.picture_id, got.tl0picidx) == (46, 11)
    got = run.send(vp8(7002, 201, 2, y=True, bits=15))
    assert got is not None and (got.picture_id, got.tl0picidx) == (47, 11)


def test_no_temporal_layers_pass_through() -> None:
    filt = Vp8TemporalFilter(0)
    run = Run(filt)
    assert all(run.send(vp8(p)) is not None for p in (5, 6, 7))
    assert _pids(run.out) == [5, 6, 7]
    filt.reset_source()
    assert run.send(vp8(90, key=True)) is not None
    assert run.send(vp8(91)) is not None
    assert _pids(run.out)[-2:] == [8, 9]


def test_no_picture_id_uses_frame_boundaries() -> None:
    filt = Vp8TemporalFilter(0)
    run = Run(filt)
    assert run.send(vp8(None, 0, 0, key=True), marker=True) is not None
    assert run.send(vp8(None, 0, 1), marker=False) is None
    assert run.send(vp8(None, 0, 1, s=False), marker=True) is None
    assert run.send(vp8(None, 1, 0), marker=True) is not None
    assert (filt.frames_forwarded, filt.frames_dropped) == (2, 1)


packets = st.tuples(
    st.integers(0, 0x7FFF), st.sampled_from([7, 15]), st.none() | st.integers(0, 255),
    st.none() | st.integers(0, 3), st.booleans(), st.booleans(), st.booleans(), st.booleans(),
    st.none() | st.integers(0, 3),
)  # fmt: skip


@PROPERTY
@given(st.lists(packets, max_size=60))
def test_arbitrary_descriptors_never_raise(pkts: list[tuple]) -> None:
    filt = Vp8TemporalFilter(1)
    for n, (pid, bits, tl0, tid, y, s, key, marker, target) in enumerate(pkts):
        if target is not None:
            filt.set_target(target)
        if n % 17 == 16:
            filt.reset_source()
        pid = pid & (0x7F if bits == 7 else 0x7FFF) if n % 5 else None
        payload = vp8(pid, tl0, tid, y=y, bits=bits, s=s, key=key)
        desc = parse_vp8(payload)
        assert desc is not None
        out = filt.process(payload, desc, n, marker)
        if out is not None:
            assert len(out) == len(payload)


frames = st.lists(
    st.tuples(
        st.integers(0, 3), st.booleans(), st.booleans(), st.integers(1, 3),
        st.none() | st.integers(0, 3),
    ),
    min_size=1, max_size=80,
)  # fmt: skip


@PROPERTY
@given(frames, st.integers(0, 0x7FFF), st.sampled_from([7, 15]))
def test_forwarded_picture_ids_are_consecutive(frames: list[tuple], pid0: int, bits: int) -> None:
    mod = 1 << bits
    filt = Vp8TemporalFilter(3)
    run = Run(filt)
    firsts: list[int] = []
    for i, (tid, y, key, npkts, target) in enumerate(frames):
        if target is not None:
            filt.set_target(target)
        pid = (pid0 + i) % mod
        sent = []
        for k in range(npkts):
            payload = vp8(pid, i // 4 & 0xFF, tid, y=y, bits=bits, s=k == 0, key=key)
            sent.append(run.send(payload, marker=k == npkts - 1))
        assert len({got is None for got in sent}) == 1  # a frame goes whole or not at all
        if sent[0] is not None:
            assert sent[0].tid is not None and filt.current is not None
            assert sent[0].tid <= filt.current <= filt.target or key
            assert len({got.picture_id for got in sent if got}) == 1
            firsts.append(sent[0].picture_id or 0)
    assert all((b - a) % mod == 1 for a, b in pairwise(firsts))
    assert filt.frames_forwarded == len(firsts)
    assert filt.frames_forwarded + filt.frames_dropped == len(frames)


@pytest.mark.parametrize(
    ("target", "current", "aim", "now", "after_switch"),
    [
        (2, 1, (1, 1, 1), 1, 1),  # the same simulcast layer: at once
        (2, 2, (0, 2, 1), 0, 0),  # going down a simulcast layer: TL0 until the switch...
        (2, 2, (2, 2, 1), 0, 2),  # ...whatever the new layer's target
        (1, 1, (2, 1, 2), 1, 2),  # going up: the current target until the switch
        (2, None, (0, None, 2), 0, 0),  # nothing forwarded yet: at once
    ],
)
def test_aim_across_a_simulcast_switch(target: int, current: int | None,
                                       aim: tuple[int, int | None, int], now: int,
                                       after_switch: int) -> None:
    filt = Vp8TemporalFilter(target)
    filt.aim(*aim)
    assert filt.target == now
    filt.reset_source()
    assert filt.target == after_switch


def test_aim_back_at_the_current_layer_cancels_a_pending_switch() -> None:
    filt = Vp8TemporalFilter(2)
    filt.aim(2, 2, 1)
    filt.aim(1, 2, 2)
    filt.reset_source()
    assert filt.target == 1


# One window per row: (TID, wire bytes, marker) packets over ``elapsed`` seconds, then the
# cumulative rates and frame rates (peaks over the last three windows) it leaves.
RATE_WINDOWS = [
    ("L1T3", [[(0, 1000, True), (2, 250, True), (1, 500, True), (2, 250, True)]], 1.0,
     (8000, 12000, 16000), (1.0, 2.0, 4.0)),
    ("L1T2 over half a second", [[(0, 1000, True), (1, 1000, False), (1, 500, True)]], 0.5,
     (16000, 40000), (2.0, 4.0)),
    ("the peak of the last three windows",
     [[(0, 3000, True), (1, 500, True)], [(0, 1000, True), (1, 2000, True)]], 1.0,
     (24000, 28000), (1.0, 2.0)),
    ("a window without the upper layer (just turned on) costs its whole rate",
     [[(0, 1000, True)], [(0, 1000, True), (1, 1000, True)]], 1.0,
     (8000, 16000), (1.0, 2.0)),
    ("older windows are forgotten",
     [[(0, 9000, True)], [(0, 100, True)], [(0, 100, True)], [(0, 100, True)]], 1.0,
     (800,), (1.0,)),
    ("no temporal layers: nothing", [[]], 1.0, (), ()),
]


@pytest.mark.parametrize(("windows", "elapsed", "rates", "fps"),
                         [c[1:] for c in RATE_WINDOWS], ids=[c[0] for c in RATE_WINDOWS])
def test_temporal_rates(windows: list[list[tuple[int, int, bool]]], elapsed: float,
                        rates: tuple[int, ...], fps: tuple[float, ...]) -> None:
    measured = TemporalRates()
    for window in windows:
        for tid, size, marker in window:
            measured.add(tid, size, marker)
        measured.close(elapsed)
    assert measured.rates == rates
    assert measured.fps == fps
    measured.clear()
    assert measured.rates == () and measured.fps == ()
