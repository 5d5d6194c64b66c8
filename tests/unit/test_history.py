"""A consumer's sent-packet history: the extension's C records and the Python fallback
answer every call alike, and the C one refuses what it cannot hold."""

from __future__ import annotations

import math
import random

import pytest

from mediaserver.sfu import fastsend
from mediaserver.sfu.consumer import NEVER, PyHistory

if not fastsend.AVAILABLE:  # pragma: no cover - .ci/run installs a compiler
    pytest.fail("the _fastpath extension was not built (no C compiler at install?)",
                pytrace=False)


def test_a_new_history_is_empty_and_never_resent() -> None:
    for h in (fastsend.History(8), PyHistory(8)):
        assert len(h) == 8
        assert h.entries() == [None] * 8
        assert h.resents() == [NEVER] * 8
        assert h.get(3) is None and h.resent_at(3) == NEVER


@pytest.mark.parametrize("seed", range(5))
def test_c_and_python_histories_agree_call_by_call(seed: int) -> None:
    rng = random.Random(seed)
    c, py = fastsend.History(64), PyHistory(64)
    for _ in range(3000):
        slot = rng.randrange(64)
        op = rng.choice(["put", "put", "resend", "get", "clear"] if rng.random() < 0.02
                        else ["put", "put", "resend", "get"])
        if op == "put":
            args = (rng.randrange(1 << 16), rng.randrange(1 << 40), rng.randrange(1 << 32),
                    rng.randrange(3))
            c.put(slot, *args)
            py.put(slot, *args)
        elif op == "resend":
            when = rng.uniform(0, 1000)
            c.set_resent(slot, when)
            py.set_resent(slot, when)
        elif op == "clear":
            c.clear()
            py.clear()
        assert c.get(slot) == py.get(slot)
        assert c.resent_at(slot) == py.resent_at(slot)
    assert c.entries() == py.entries()
    assert c.resents() == py.resents()
    assert any(e is not None for e in c.entries())


def test_a_put_resets_when_the_slot_was_resent() -> None:
    h = fastsend.History(4)
    h.put(1, 5, 70000, 90000, 0)
    h.set_resent(1, 12.5)
    assert h.resent_at(1) == 12.5
    h.put(1, 9, 70004, 93000, 2)
    assert h.get(1) == (9, 70004, 93000, 2) and math.isinf(h.resent_at(1))


@pytest.mark.parametrize(("call", "error"), [
    (lambda h: h.get(4), IndexError),
    (lambda h: h.get(-1), IndexError),
    (lambda h: h.put(0, 1 << 16, 0, 0, 0), ValueError),
    (lambda h: h.put(0, 0, 0, 1 << 32, 0), ValueError),
    (lambda h: h.put(0, 0, 0, -1, 0), ValueError),
    (lambda h: h.put(0, 0, 0, 0), TypeError),
    (lambda h: h.set_resent(0, "soon"), TypeError),
    (lambda h: h.get("0"), TypeError),
])
def test_the_c_history_refuses_what_it_cannot_hold(call, error) -> None:
    h = fastsend.History(4)
    with pytest.raises(error):
        call(h)
    assert h.entries() == [None] * 4  # nothing half-written


@pytest.mark.parametrize("size", [0, -1, (1 << 20) + 1])
def test_a_history_has_a_sane_size(size: int) -> None:
    with pytest.raises(ValueError):
        fastsend.History(size)
