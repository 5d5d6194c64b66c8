"""The peer's consent checks answered by the C receiver (``Receiver.answer_checks``): the
same bytes aioice would send, and only for a request aioice would answer that way without
changing its state; anything else is left to aioice (``stun_reply`` gives None)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from aioice import stun

from mediaserver.sfu import fastsend

if not fastsend.AVAILABLE:  # pragma: no cover - .ci/run installs a compiler
    pytest.fail("the _fastpath extension was not built (no C compiler at install?)",
                pytrace=False)

USER = "srv1:cli1"
KEY = b"the-servers-ice-password"
PEER = ("127.0.0.1", 40000)


def receiver(controlling: bool = False, peer: tuple[str, int] = PEER) -> Any:
    def nothing(*args: Any) -> None:
        return None

    rx = fastsend.Receiver(nothing, nothing, nothing, nothing, -1, nothing, 16, nothing,
                           nothing, None)
    rx.answer_checks(USER.encode(), KEY, peer[0], peer[1], controlling)
    return rx


def request(*, user: str = USER, key: bytes | None = KEY, use_candidate: bool = False,
            role: str = "ICE-CONTROLLING", extra: dict[str, Any] | None = None,
            method: stun.Method = stun.Method.BINDING,
            cls: stun.Class = stun.Class.REQUEST, fingerprint: bool = True) -> bytes:
    msg = stun.Message(message_method=method, message_class=cls)
    msg.attributes["USERNAME"] = user
    msg.attributes["PRIORITY"] = 1853824767
    msg.attributes[role] = 0x1234567890ABCDEF
    if use_candidate:
        msg.attributes["USE-CANDIDATE"] = None
    msg.attributes.update(extra or {})
    if key is not None:
        msg.add_message_integrity(key)
        if not fingerprint:
            del msg.attributes["FINGERPRINT"]
    elif fingerprint:
        msg.add_fingerprint()
    return bytes(msg)


def aioice_answer(data: bytes, addr: tuple[str, int]) -> bytes:
    """What aioice's Connection.request_received sends for an authenticated request."""
    req = stun.parse_message(data)
    resp = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.RESPONSE,
                        transaction_id=req.transaction_id)
    resp.attributes["XOR-MAPPED-ADDRESS"] = addr
    resp.add_message_integrity(KEY)
    return bytes(resp)


ANSWERED = [
    ("a consent check", {}),
    ("with USE-CANDIDATE (the nominated pair, again)", {"use_candidate": True}),
    ("without FINGERPRINT", {"fingerprint": False}),
    ("an optional attribute it does not know", {"extra": {"SOFTWARE": "x"}}),
]


@pytest.mark.parametrize("kwargs", [c[1] for c in ANSWERED], ids=[c[0] for c in ANSWERED])
def test_answered_as_aioice_would(kwargs: dict[str, Any]) -> None:
    data = request(**kwargs)
    reply = receiver().stun_reply(data, *PEER)
    assert reply == aioice_answer(data, PEER)
    parsed = stun.parse_message(reply)  # checks FINGERPRINT
    assert parsed.message_class == stun.Class.RESPONSE
    assert parsed.attributes["XOR-MAPPED-ADDRESS"] == PEER
    assert parsed.check_message_integrity(KEY)


def test_ipv6_and_a_controlling_server() -> None:
    peer = ("::1", 5004)
    data = request(role="ICE-CONTROLLED")
    reply = receiver(controlling=True, peer=peer).stun_reply(data, *peer)
    assert reply == aioice_answer(data, peer)
    assert stun.parse_message(reply).attributes["XOR-MAPPED-ADDRESS"] == peer


def _flip_fingerprint(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


LEFT_TO_AIOICE: list[tuple[str, bytes, tuple[str, int], bool]] = [
    ("from another port", request(), ("127.0.0.1", 40001), False),
    ("from another host", request(), ("127.0.0.2", 40000), False),
    ("signed with another password", request(key=b"not-it"), PEER, False),
    ("no MESSAGE-INTEGRITY", request(key=None), PEER, False),
    ("another remote ufrag", request(user="srv1:other"), PEER, False),
    ("another local ufrag", request(user="srv2:cli1"), PEER, False),
    ("a role conflict (both controlled)", request(role="ICE-CONTROLLED"), PEER, False),
    ("a role conflict (both controlling)", request(), PEER, True),
    ("a bad FINGERPRINT", _flip_fingerprint(request()), PEER, False),
    ("a comprehension-required attribute it does not know",
     request(extra={"CHANGE-REQUEST": 0}), PEER, False),
    ("a Binding indication", request(cls=stun.Class.INDICATION), PEER, False),
    ("a Binding response", request(cls=stun.Class.RESPONSE), PEER, False),
    ("another method", request(method=stun.Method.ALLOCATE), PEER, False),
    ("cut short", request()[:-8], PEER, False),
    ("the header alone", request()[:20], PEER, False),
    ("not STUN", b"\x80" + bytes(40), PEER, False),
]


@pytest.mark.parametrize(("data", "addr", "controlling"), [c[1:] for c in LEFT_TO_AIOICE],
                         ids=[c[0] for c in LEFT_TO_AIOICE])
def test_left_to_aioice(data: bytes, addr: tuple[str, int], controlling: bool) -> None:
    assert receiver(controlling=controlling).stun_reply(data, *addr) is None


def test_stopped() -> None:
    rx = receiver()
    rx.answer_checks(None)
    assert rx.stun_reply(request(), *PEER) is None


def test_bad_arguments() -> None:
    rx = receiver()
    with pytest.raises(ValueError):
        rx.answer_checks(USER.encode(), KEY, "not an address", 1, False)
    with pytest.raises(TypeError):
        rx.answer_checks("a str", KEY, "127.0.0.1", 1, False)
    assert rx.stun_reply(request(), *PEER) is not None  # the earlier settings stand


def test_mutations_never_answered_unless_aioice_would() -> None:
    """Random damage to a good request: never an exception; an answer only for a request
    that aioice parses, authenticates and answers the same way."""
    rng = random.Random(7)
    rx = receiver()
    good = request(use_candidate=True)
    answered = 0
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.choice([1, 1, 2, 4])):
            op = rng.random()
            if op < 0.6 and data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            elif op < 0.8:
                del data[rng.randrange(len(data) + 1):]
            else:
                data += bytes(rng.randrange(256) for _ in range(rng.choice([1, 4, 8])))
        reply = rx.stun_reply(bytes(data), *PEER)
        if reply is None:
            continue
        answered += 1
        msg = stun.parse_message(bytes(data))
        assert msg.attributes["USERNAME"] == USER and msg.check_message_integrity(KEY)
        assert reply == aioice_answer(bytes(data), PEER)
    assert answered < 300  # damage that keeps a request valid is rare (padding, flags)
