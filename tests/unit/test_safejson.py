"""Client JSON refused before parsing when it nests deeper than MAX_DEPTH: brackets inside
strings do not count, str and bytes alike, and what passes parses as json.loads does."""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mediaserver import safejson


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


@pytest.mark.parametrize(("text", "limit", "ok"), [
    (nested(3), 3, True),
    (nested(4), 3, False),
    ('{"a": {"b": {"c": 1}}}', 3, True),
    ('{"a": {"b": {"c": {}}}}', 3, False),
    ('["[[[[[[", "{{{{{{"]', 1, True),  # brackets inside strings are text
    ('["\\"[[[[[[\\""]', 1, True),  # an escaped quote does not end the string
    ('["\\\\", [[[1]]]]', 3, False),  # an escaped backslash does end it
    ("[]" * 100, 1, True),  # many openers, never deep
    ('"unterminated [[[[', 2, False),  # not JSON: an upper bound, refused either way
    ("", 0, True),
])
def test_nesting_is_measured_outside_strings(text: str, limit: int, ok: bool) -> None:
    assert safejson.nesting_ok(text, limit) is ok
    assert safejson.nesting_ok(text.encode(), limit) is ok


def test_thirty_thousand_deep_is_refused_without_recursing() -> None:
    deep = '{"type": "ping", "x": ' + nested(30000, "") + "}"
    assert len(deep) < 64 * 1024 and 30000 > sys.getrecursionlimit()
    for text in (deep, deep.encode()):
        with pytest.raises(ValueError, match="nested deeper than 32"):
            safejson.loads(text)


def test_the_limit_itself_parses() -> None:
    assert safejson.loads(nested(safejson.MAX_DEPTH)) == json.loads(
        nested(safejson.MAX_DEPTH))
    with pytest.raises(ValueError):
        safejson.loads(nested(safejson.MAX_DEPTH + 1))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab', max_size=6),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(alphabet='[]{}"\\ab', max_size=4), children, max_size=3),
    max_leaves=12)


def depth_of(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


@given(json_values, st.integers(0, 6))
def test_agrees_with_the_parsed_depth(value: object, limit: int) -> None:
    text = json.dumps(value)
    assert safejson.nesting_ok(text, limit) is (depth_of(value) <= limit)
    if depth_of(value) <= limit:
        assert safejson.loads(text, limit) == value
