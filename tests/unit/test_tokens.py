"""Access tokens: round trips, one row per error code, role grants, input checks, fuzzing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from typing import Any

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediaserver.tokens import (
    MAX_TOKEN_BYTES,
    Claims,
    Grants,
    Role,
    SessionKind,
    TokenError,
    TokenErrorCode,
    create_token,
    default_grants,
    verify_token,
)

# 64 bytes, so tokens minted with PyJWT directly (even HS512) raise no short-key warning.
KEY, SECRET = "app", "app-secret-" + "0123456789abcdef" * 3 + "01234"
KEYS = {KEY: SECRET, "other": "other-secret-1"}
NOW = 1_700_000_000.0


def mint(**overrides: Any) -> str:
    args: dict[str, Any] = {"identity": "user-1", "room": "room-1", "now": NOW, "token_id": "t1"}
    args.update(overrides)
    return create_token(args.pop("api_key", KEY), args.pop("secret", SECRET), **args)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: Any, secret: str = SECRET) -> str:
    """Build a JWT by hand, so tests can produce what PyJWT would refuse to."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    sig = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


def payload_of(token: str) -> dict[str, Any]:
    result: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return result


def test_round_trip() -> None:
    token = mint(name="Ann Example", role="host", kind="couples", ttl_seconds=600)
    claims = verify_token(token, KEYS, now=NOW + 10)
    assert claims == Claims(
        api_key=KEY,
        identity="user-1",
        name="Ann Example",
        room="room-1",
        role=Role.HOST,
        kind=SessionKind.COUPLES,
        grants=Grants(publish=True, subscribe=True, admin=False, record=True),
        expires_at=int(NOW) + 600,
        not_before=int(NOW),
        token_id="t1",
    )
    assert claims.role == "host" and claims.kind == "couples"


def test_jwt_layout() -> None:
    token = mint(role="observer")
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "kid": KEY, "typ": "JWT"}
    payload = payload_of(token)
    assert {k: payload[k] for k in ("iss", "sub", "aud", "iat", "nbf", "exp", "jti")} == {
        "iss": KEY,
        "sub": "user-1",
        "aud": "mediaserver",
        "iat": int(NOW),
        "nbf": int(NOW),
        "exp": int(NOW) + 3600,
        "jti": "t1",
    }
    assert payload["video"] == {
        "room": "room-1",
        "name": "",
        "role": "observer",
        "kind": None,
        "grants": {"publish": False, "subscribe": True, "admin": False, "record": False},
    }
    # A token minted by another implementation (PyJWT directly) verifies too.
    other = jwt.encode(payload, SECRET, algorithm="HS256", headers={"kid": KEY})
    assert verify_token(other, KEYS, now=NOW).role == Role.OBSERVER


def test_token_ids_are_random_by_default() -> None:
    first = payload_of(mint(token_id=None))["jti"]
    second = payload_of(mint(token_id=None))["jti"]
    assert first != second and len(first) >= 16


def _tampered() -> str:
    head, body, sig = mint().split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=="))
    payload["video"]["grants"]["admin"] = True
    return f"{head}.{b64(json.dumps(payload).encode())}.{sig}"


def _alg_none() -> str:
    payload = payload_of(mint())
    header = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": KEY}).encode())
    return f"{header}.{b64(json.dumps(payload).encode())}."


# Each row: a description, the token, the verify time, the expected code.
_REJECTIONS: list[tuple[str, Any, float, TokenErrorCode]] = [
    ("expired", mint(ttl_seconds=60), NOW + 60 + 5, TokenErrorCode.EXPIRED),
    ("expired long ago", mint(), NOW + 86400, TokenErrorCode.EXPIRED),
    ("issued in the future", mint(now=NOW + 100), NOW, TokenErrorCode.NOT_YET_VALID),
    ("signed with another key's secret", mint(secret="other-secret-1"), NOW,
     TokenErrorCode.BAD_SIGNATURE),
    ("unknown kid", mint(api_key="nobody", secret="whatever-secret"), NOW,
     TokenErrorCode.UNKNOWN_KEY),
    ("unknown iss without kid", jwt.encode({**payload_of(mint()), "iss": "nobody"}, SECRET),
     NOW, TokenErrorCode.UNKNOWN_KEY),
    ("tampered payload", _tampered(), NOW, TokenErrorCode.BAD_SIGNATURE),
    ("alg none", _alg_none(), NOW, TokenErrorCode.BAD_SIGNATURE),
    ("alg HS512", jwt.encode(payload_of(mint()), SECRET, "HS512", headers={"kid": KEY}), NOW,
     TokenErrorCode.BAD_SIGNATURE),
    ("wrong audience", mint(audience="someone-else"), NOW, TokenErrorCode.WRONG_AUDIENCE),
    ("empty", "", NOW, TokenErrorCode.MALFORMED),
    ("garbage", "not a token", NOW, TokenErrorCode.MALFORMED),
    ("three garbage parts", "a.b.c", NOW, TokenErrorCode.MALFORMED),
    ("non-ASCII", "é.é.é", NOW, TokenErrorCode.MALFORMED),
    ("not a string", b"a.b.c", NOW, TokenErrorCode.MALFORMED),
    ("oversized", mint(name="x" * 128) + "A" * MAX_TOKEN_BYTES, NOW, TokenErrorCode.MALFORMED),
    ("payload is a list", forge({"alg": "HS256", "kid": KEY}, [1, 2]), NOW,
     TokenErrorCode.MALFORMED),
    ("kid is not a string", forge({"alg": "HS256", "kid": 7}, payload_of(mint())), NOW,
     TokenErrorCode.MALFORMED),
    ("iss differs from kid", forge({"alg": "HS256", "kid": KEY},
                                   {**payload_of(mint()), "iss": "other"}), NOW,
     TokenErrorCode.MALFORMED),
    ("missing exp", forge({"alg": "HS256", "kid": KEY},
                          {k: v for k, v in payload_of(mint()).items() if k != "exp"}), NOW,
     TokenErrorCode.MALFORMED),
    ("exp is a string", forge({"alg": "HS256", "kid": KEY}, {**payload_of(mint()), "exp": "1"}),
     NOW, TokenErrorCode.MALFORMED),
    ("exp is a bool", forge({"alg": "HS256", "kid": KEY}, {**payload_of(mint()), "exp": True}),
     NOW, TokenErrorCode.MALFORMED),
    ("missing video", forge({"alg": "HS256", "kid": KEY},
                            {k: v for k, v in payload_of(mint()).items() if k != "video"}), NOW,
     TokenErrorCode.MALFORMED),
    ("bad role", forge({"alg": "HS256", "kid": KEY}, {**payload_of(mint()), "video": {
        "room": "r", "role": "therapist"}}), NOW, TokenErrorCode.MALFORMED),
    ("grant not a bool", forge({"alg": "HS256", "kid": KEY}, {**payload_of(mint()), "video": {
        "room": "r", "role": "host", "grants": {"publish": "yes"}}}), NOW,
     TokenErrorCode.MALFORMED),
    ("no room without admin", forge({"alg": "HS256", "kid": KEY}, {**payload_of(mint()), "video": {
        "role": "host"}}), NOW, TokenErrorCode.MALFORMED),
    ("bad identity", forge({"alg": "HS256", "kid": KEY}, {**payload_of(mint()), "sub": "a b"}),
     NOW, TokenErrorCode.MALFORMED),
    ("deeply nested JSON", forge({"alg": "HS256", "kid": KEY}, {"x": json.loads(
        "[" * 900 + "]" * 900)}), NOW, TokenErrorCode.MALFORMED),
]  # fmt: skip


@pytest.mark.parametrize(
    ("token", "now", "code"), [row[1:] for row in _REJECTIONS], ids=[row[0] for row in _REJECTIONS]
)
def test_rejections(token: Any, now: float, code: TokenErrorCode) -> None:
    with pytest.raises(TokenError) as info:
        verify_token(token, KEYS, now=now)
    assert info.value.code == code
    assert info.value.code == code.value  # plain-string comparison works for callers
    text = str(info.value)
    assert text.startswith(f"{code.value}: ")
    for secret in KEYS.values():
        assert secret not in text
    if isinstance(token, str) and token:
        assert token not in text


@pytest.mark.parametrize(
    ("offset", "accepted"),
    [(-6, False), (-5, True), (0, True), (3600 + 4.9, True), (3600 + 5, False)],
)
def test_time_bounds_with_leeway(offset: float, accepted: bool) -> None:
    token = mint()
    try:
        verify_token(token, KEYS, now=NOW + offset)
    except TokenError as e:
        assert not accepted and e.code in (TokenErrorCode.EXPIRED, TokenErrorCode.NOT_YET_VALID)
    else:
        assert accepted


def test_custom_audience_and_list_audience() -> None:
    claims = verify_token(mint(audience="sfu-a"), KEYS, now=NOW, audience="sfu-a")
    assert claims.identity == "user-1"
    listed = jwt.encode(
        {**payload_of(mint()), "aud": ["x", "mediaserver"]}, SECRET, headers={"kid": KEY}
    )
    assert verify_token(listed, KEYS, now=NOW).room == "room-1"


@pytest.mark.parametrize(
    ("role", "grants"),
    [
        ("host", Grants(publish=True, subscribe=True, admin=False, record=True)),
        ("participant", Grants(publish=True, subscribe=True, admin=False, record=False)),
        ("observer", Grants(publish=False, subscribe=True, admin=False, record=False)),
    ],
)
def test_role_default_grants(role: str, grants: Grants) -> None:
    assert default_grants(role) == grants
    assert verify_token(mint(role=role), KEYS, now=NOW).grants == grants


def test_explicit_grants_override_role_defaults() -> None:
    grants = Grants(publish=True, subscribe=False, admin=False, record=False)
    assert verify_token(mint(role="observer", grants=grants), KEYS, now=NOW).grants == grants


def test_partial_grants_from_another_backend_fall_back_to_role_defaults() -> None:
    video = {"room": "r", "role": "host", "grants": {"record": False}}
    payload = {**payload_of(mint()), "video": video}
    claims = verify_token(jwt.encode(payload, SECRET, headers={"kid": KEY}), KEYS, now=NOW)
    assert claims.grants == Grants(publish=True, subscribe=True, admin=False, record=False)
    assert (claims.name, claims.kind) == ("", None)


def test_admin_token_without_room() -> None:
    token = mint(room=None, grants=Grants(admin=True))
    claims = verify_token(token, KEYS, now=NOW)
    assert claims.room is None and claims.grants.admin


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"identity": ""}, "identity must be 1-128 characters"),
        ({"identity": "a" * 129}, "identity must be 1-128 characters"),
        ({"identity": "user 1"}, "identity must be 1-128 characters"),
        ({"room": ""}, "room must be 1-128 characters"),
        ({"room": "r/1"}, "room must be 1-128 characters"),
        ({"room": "r" * 129}, "room must be 1-128 characters"),
        ({"room": None}, "room is required unless the token grants admin"),
        ({"name": "n" * 129}, "name must be a string of at most 128 characters"),
        ({"role": "therapist"}, "role must be one of host, participant, observer"),
        ({"kind": "family"}, "kind must be one of one_to_one, couples, group"),
        ({"ttl_seconds": 0}, "ttl_seconds must be in 1..2592000 (30 days)"),
        ({"ttl_seconds": 30 * 86400 + 1}, "ttl_seconds must be in 1..2592000 (30 days)"),
        ({"ttl_seconds": 1.5}, "ttl_seconds must be an integer"),
        ({"secret": ""}, "api_key and secret must be non-empty"),
    ],
)
def test_create_token_input_validation(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        mint(**overrides)


def test_create_token_accepts_edge_inputs() -> None:
    token = mint(identity="a" * 128, room="r" * 128, name="ñ" * 128, ttl_seconds=30 * 86400)
    claims = verify_token(token, KEYS, now=NOW)
    assert (len(claims.identity), len(claims.name)) == (128, 128)
    assert verify_token(mint(identity="u@x.org:1-_"), KEYS, now=NOW).identity == "u@x.org:1-_"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=5000))
def test_arbitrary_text_raises_only_token_error(text: str) -> None:
    with pytest.raises(TokenError):
        verify_token(text, KEYS, now=NOW)


_segment = st.one_of(
    st.binary(max_size=200).map(b64),
    st.text(alphabet="ABCDEFabcdef0123456789-_=+/", max_size=80),
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_segment, _segment, _segment)
def test_jwt_shaped_garbage_raises_only_token_error(head: str, body: str, sig: str) -> None:
    with pytest.raises(TokenError):
        verify_token(f"{head}.{body}.{sig}", KEYS, now=NOW)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "video"]), _json
    ),
    st.dictionaries(st.sampled_from(["room", "name", "role", "kind", "grants"]), _json),
)
def test_correctly_signed_arbitrary_claims_never_crash(
    payload: dict[str, Any], video: dict[str, Any]
) -> None:
    """A trusted key signing junk (a buggy backend) still yields Claims or a TokenError."""
    if "video" in payload:
        payload["video"] = video
    token = forge({"alg": "HS256", "kid": KEY}, payload)
    try:
        claims = verify_token(token, KEYS, now=NOW)
    except TokenError:
        return
    assert isinstance(claims, Claims)
