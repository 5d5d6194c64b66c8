"""JSON from clients, refused before parsing when it nests deeper than anything we accept.

``json.loads`` recurses once per nesting level: 64 KiB of ``[`` reach Python's recursion
limit. Catching the RecursionError is not enough: while the parser sits a thousand frames
deep, anything else that runs on that stack (a garbage collection running finalizers, a
warning) fails too, in code that has nothing to do with the message, and reports itself as
an unraisable error. So the nesting is measured first, with string contents skipped, and a
message deeper than ``MAX_DEPTH`` is a ``ValueError`` like any other malformed JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 32  # the deepest message of the protocol or the admin API nests 4 levels

# A whole string (so brackets inside it do not count) or one bracket (group 1).
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|([\[\]{}])', re.DOTALL)


def nesting_ok(text: str | bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether ``text`` nests arrays and objects at most ``limit`` deep (strings skipped;
    for text that is not JSON the answer is only an upper bound, and parsing decides)."""
    if isinstance(text, bytes):
        if text.count(b"[") + text.count(b"{") <= limit:
            return True
        text = text.decode("latin-1")  # byte for byte: the brackets and quotes stay put
    if text.count("[") + text.count("{") <= limit:
        return True  # cannot nest deeper than it has openers: the usual message
    depth = 0
    for m in _TOKENS.finditer(text):
        bracket = m[1]  # None for a string: its contents are never copied out
        if bracket == "[" or bracket == "{":
            depth += 1
            if depth > limit:
                return False
        elif bracket is not None:
            depth -= 1
    return True


def loads(text: str | bytes, limit: int = MAX_DEPTH) -> Any:
    """``json.loads``, refusing (ValueError) anything nested deeper than ``limit``."""
    if not nesting_ok(text, limit):
        raise ValueError(f"JSON nested deeper than {limit} levels")
    return json.loads(text)
