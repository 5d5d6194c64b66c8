"""Sequence number / timestamp arithmetic and rewriting, across 16- and 32-bit wraparound."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mediaserver.sfu.seqnum import OutputRewriter, Unwrapper, seq_diff, seq_newer, ts_diff


@pytest.mark.parametrize(("a", "b", "diff"), [
    (1, 0, 1), (0, 1, -1), (0, 65535, 1), (65535, 0, -1), (32767, 0, 32767),
    (32768, 0, -32768), (100, 65500, 136),
])
def test_seq_diff(a, b, diff):
    assert seq_diff(a, b) == diff
    assert seq_newer(a, b) == (diff > 0)


@pytest.mark.parametrize(("a", "b", "diff"), [
    (0, 2**32 - 1, 1), (2**32 - 1, 0, -1), (3000, 2**32 - 3000, 6000), (90000, 0, 90000),
])
def test_ts_diff(a, b, diff):
    assert ts_diff(a, b) == diff


@pytest.mark.parametrize(("bits", "inputs", "expected_deltas"), [
    # 16-bit: in order across the wrap, then a reordered packet from before the wrap.
    (16, [65533, 65534, 65535, 0, 1, 65535, 2], [0, 1, 2, 3, 4, 2, 5]),
    # 16-bit: backwards by less than half the range is reordering, not a wrap.
    (16, [10, 5, 11], [0, -5, 1]),
    # 32-bit timestamps across 2^32.
    (32, [2**32 - 3000, 2**32 - 1, 2999, 5999], [0, 2999, 5999, 8999]),
])
def test_unwrap_tables(bits, inputs, expected_deltas):
    u = Unwrapper(bits)
    first = u.unwrap(inputs[0])
    assert first >= 0
    got = [first] + [u.unwrap(v) for v in inputs[1:]]
    assert [g - first for g in got] == expected_deltas


@given(st.lists(st.integers(1, 1000), min_size=1, max_size=200), st.integers(0, 65535))
def test_unwrap_follows_any_forward_walk(steps, start):
    u = Unwrapper(16)
    ext = u.unwrap(start)
    for step in steps:
        expected = ext + step
        ext = u.unwrap(expected & 0xFFFF)
        assert ext == expected


def test_rewriter_starts_at_initial_and_keeps_spacing():
    r = OutputRewriter(initial_seq=65534, initial_ts=2**32 - 1000)
    assert r.rewrite(1000, 500) == (65534, 2**32 - 1000)
    assert r.rewrite(1001, 3500) == (65535, 2000)  # both wrap
    assert r.rewrite(1002, 6500) == (0, 5000)


def test_rewriter_closes_gaps_of_skipped_packets_and_keeps_reordering_consistent():
    r = OutputRewriter(initial_seq=100, initial_ts=0)
    assert r.rewrite(10, 0)[0] == 100
    assert r.rewrite(12, 0)[0] == 102  # 11 missing (lost upstream): the hole stays
    r.skip(13)  # padding: not forwarded, no hole
    assert r.rewrite(14, 0)[0] == 103
    assert r.rewrite(11, 0)[0] == 101  # the late packet gets the number it would have had
    assert r.rewrite(13, 0) is None  # a skipped packet arriving again is not sent


def test_rewriter_switch_source_continues_output_without_gap_or_duplicate():
    r = OutputRewriter(initial_seq=65535, initial_ts=2**32 - 10)
    assert r.rewrite(500, 9000) == (65535, 2**32 - 10)
    assert r.rewrite(501, 12000) == (0, 2990)
    # A new source with unrelated numbering (publisher restart, another layer).
    r.switch_source(ts_gap=3000)
    assert r.rewrite(40000, 123456) == (1, 5990)
    assert r.rewrite(40001, 126456) == (2, 8990)
    # Packets of the new source older than its first one could collide: refused.
    assert r.rewrite(39999, 120456) is None


def test_rewriter_refuses_packets_beyond_the_reorder_window():
    r = OutputRewriter(initial_seq=0, initial_ts=0)
    r.rewrite(100, 0)
    r.rewrite(100 + OutputRewriter.REORDER_WINDOW + 10, 0)
    assert r.rewrite(101, 0) is None


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=300),
       st.integers(0, 65535))
def test_rewriter_output_is_unique_for_any_skip_and_reorder_pattern(ops, initial):
    """Whatever is skipped, every forwarded packet gets a distinct output number."""
    r = OutputRewriter(initial_seq=initial, initial_ts=0)
    outputs = set()
    held = []
    seq = 1000
    for skip, hold in ops:
        seq += 1
        if skip:
            r.skip(seq)
        elif hold:
            held.append(seq)  # delivered late, out of order
        else:
            out = r.rewrite(seq, 0)
            if out is not None:
                assert out[0] not in outputs
                outputs.add(out[0])
    for late in held:
        out = r.rewrite(late, 0)
        if out is not None:
            assert out[0] not in outputs
            outputs.add(out[0])
