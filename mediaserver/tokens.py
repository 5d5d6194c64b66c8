"""Access tokens: HS256 JWTs that the therapy app's backend mints and this server checks.

The backend knows who may join which session in what role; the media server only checks the
token's signature, audience and lifetime, then trusts its claims. Keeping that decision in one
signed object means the server needs no user database and no call back to the app.

Everything here is pure: ``now`` is a parameter, so tests drive expiry as a table. Errors carry
a stable ``code`` for signalling replies; messages never echo the token or a secret, because
they end up in logs and in replies to whoever sent the token.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

import jwt
from jwt.algorithms import HMACAlgorithm

from mediaserver import safejson

ALGORITHM = "HS256"
DEFAULT_AUDIENCE = "mediaserver"
MAX_TOKEN_BYTES = 4096
MAX_TTL_SECONDS = 30 * 86400
_IDENTITY_RE = re.compile(r"[A-Za-z0-9_.@:-]{1,128}")
_ROOM_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_MAX_NAME = 128
_GRANT_NAMES = ("publish", "subscribe", "admin", "record")
_E = TypeVar("_E", bound=StrEnum)


class Role(StrEnum):
    """What a person does in a session; decides the default grants."""

    HOST = "host"  # the therapist: runs the session, may record
    PARTICIPANT = "participant"  # a client
    OBSERVER = "observer"  # e.g. a supervisor: watches and listens only


class SessionKind(StrEnum):
    ONE_TO_ONE = "one_to_one"
    COUPLES = "couples"
    GROUP = "group"


class TokenErrorCode(StrEnum):
    MALFORMED = "token_malformed"
    UNKNOWN_KEY = "token_unknown_key"
    BAD_SIGNATURE = "token_bad_signature"
    EXPIRED = "token_expired"
    NOT_YET_VALID = "token_not_yet_valid"
    WRONG_AUDIENCE = "token_wrong_audience"


class TokenError(Exception):
    """A token was rejected. ``code`` is stable (clients switch on it); ``message`` explains."""

    def __init__(self, code: TokenErrorCode | str, message: str) -> None:
        super().__init__(message)
        self.code = TokenErrorCode(code)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class Grants:
    """What the bearer may do. ``admin`` opens the room admin REST API."""

    publish: bool = True
    subscribe: bool = True
    admin: bool = False
    record: bool = False


_ROLE_GRANTS = {
    Role.HOST: Grants(publish=True, subscribe=True, record=True),
    Role.PARTICIPANT: Grants(publish=True, subscribe=True),
    Role.OBSERVER: Grants(publish=False, subscribe=True),
}


def default_grants(role: Role | str) -> Grants:
    """The grants a role gets when the token does not spell them out."""
    return _ROLE_GRANTS[Role(role)]


@dataclass(frozen=True)
class Claims:
    """A verified token's content. ``room`` is None only for admin tokens valid for all rooms."""

    api_key: str
    identity: str
    name: str
    room: str | None
    role: Role
    kind: SessionKind | None
    grants: Grants
    expires_at: int
    not_before: int
    token_id: str


class _HS256(HMACAlgorithm):
    """HMAC-SHA256 without PyJWT's per-call warning for keys under 32 bytes.

    Secret length is checked once, at config load (config.MIN_SECRET_LENGTH); a warning on
    every join would only bury the logs. Registering just this one algorithm also makes
    "alg": "none" or RS256 tokens fail inside PyJWT, not only in our own header check.
    """

    def __init__(self) -> None:
        super().__init__(HMACAlgorithm.SHA256)

    def check_key_length(self, key: bytes) -> str | None:
        return None


_JWS = jwt.PyJWS(algorithms=[])
_JWS.register_algorithm(ALGORITHM, _HS256())


def create_token(
    api_key: str,
    secret: str,
    *,
    identity: str,
    room: str | None = None,
    name: str = "",
    role: Role | str = Role.PARTICIPANT,
    kind: SessionKind | str | None = None,
    grants: Grants | None = None,
    ttl_seconds: int = 3600,
    now: float,
    audience: str = DEFAULT_AUDIENCE,
    token_id: str | None = None,
) -> str:
    """Mint a token; the app's backend does this in production, the CLI and tests here.

    ``grants`` None means the role's defaults. Raises ValueError on bad input, so a mistake is
    caught when minting instead of surfacing as a rejected join. ``token_id`` is random
    unless given (tests pass one for byte-stable tokens).
    """
    if not api_key or not secret:
        raise ValueError("api_key and secret must be non-empty")
    if not isinstance(identity, str) or not _IDENTITY_RE.fullmatch(identity):
        raise ValueError("identity must be 1-128 characters of A-Z a-z 0-9 _ . @ : -")
    if room is not None and (not isinstance(room, str) or not _ROOM_RE.fullmatch(room)):
        raise ValueError("room must be 1-128 characters of A-Z a-z 0-9 _ . -")
    if not isinstance(name, str) or len(name) > _MAX_NAME:
        raise ValueError(f"name must be a string of at most {_MAX_NAME} characters")
    role = _enum(Role, role, "role")
    kind = None if kind is None else _enum(SessionKind, kind, "kind")
    grants = default_grants(role) if grants is None else grants
    if room is None and not grants.admin:
        raise ValueError("room is required unless the token grants admin")
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int):
        raise ValueError("ttl_seconds must be an integer")
    if not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
        raise ValueError(f"ttl_seconds must be in 1..{MAX_TTL_SECONDS} (30 days)")
    issued = int(now)
    payload = {
        "iss": api_key,
        "sub": identity,
        "aud": audience,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_seconds,
        "jti": token_id if token_id is not None else secrets.token_urlsafe(12),
        "video": {
            "room": room,
            "name": name,
            "role": str(role),
            "kind": None if kind is None else str(kind),
            "grants": {
                "publish": grants.publish,
                "subscribe": grants.subscribe,
                "admin": grants.admin,
                "record": grants.record,
            },
        },
    }
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    return _JWS.encode(body, secret, algorithm=ALGORITHM, headers={"kid": api_key, "typ": "JWT"})


def _enum(enum: type[_E], value: Any, what: str) -> _E:
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(m.value for m in enum)
        raise ValueError(f"{what} must be one of {allowed}") from None


def verify_token(
    token: str,
    keys: Mapping[str, str],
    *,
    now: float,
    audience: str = DEFAULT_AUDIENCE,
    leeway: float = 5.0,
) -> Claims:
    """Check a token against the configured API keys at time ``now``; return its claims.

    Raises TokenError and nothing else, whatever the input: the caller turns it into an
    error reply. PyJWT checks only the signature; audience and times are checked here
    against ``now`` so that they are testable without patching the clock.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES or not token.isascii():
        raise _malformed(f"token must be ASCII text of at most {MAX_TOKEN_BYTES} bytes")
    try:
        unverified = _JWS.decode_complete(token, options={"verify_signature": False})
        header = unverified["header"]
        key_id = header.get("kid", _json_object(unverified).get("iss"))
    except _PARSE_ERRORS as e:
        raise _malformed("token is not a well-formed JWT") from e
    if not isinstance(key_id, str):
        raise TokenError(TokenErrorCode.MALFORMED, "token names no API key (kid or iss)")
    if key_id not in keys:
        raise TokenError(TokenErrorCode.UNKNOWN_KEY, f"unknown API key {key_id[:64]!r}")
    if header.get("alg") != ALGORITHM:
        raise TokenError(TokenErrorCode.BAD_SIGNATURE, f"token must be signed with {ALGORITHM}")
    try:
        payload = _json_object(_JWS.decode_complete(token, keys[key_id], algorithms=[ALGORITHM]))
    except jwt.InvalidSignatureError as e:
        raise TokenError(TokenErrorCode.BAD_SIGNATURE, "signature does not match") from e
    except _PARSE_ERRORS as e:
        raise _malformed("token is not a well-formed JWT") from e
    claims = _claims(payload, key_id)
    aud = payload.get("aud")
    if audience not in (aud if isinstance(aud, list) else [aud]):
        raise TokenError(TokenErrorCode.WRONG_AUDIENCE, f"token is not for audience {audience!r}")
    if now >= claims.expires_at + leeway:
        raise TokenError(TokenErrorCode.EXPIRED, "token has expired")
    if now + leeway < claims.not_before:
        raise TokenError(TokenErrorCode.NOT_YET_VALID, "token is not valid yet")
    return claims


_PARSE_ERRORS = (jwt.PyJWTError, ValueError)


def _json_object(decoded: Mapping[str, Any]) -> dict[str, Any]:
    value = safejson.loads(decoded["payload"])  # a 4 KiB payload could nest 2,000 deep
    if not isinstance(value, dict):
        raise ValueError("payload is not a JSON object")
    return value


def _malformed(message: str) -> TokenError:
    return TokenError(TokenErrorCode.MALFORMED, message)


def _time(payload: Mapping[str, Any], claim: str, default: int | None) -> int:
    value = payload.get(claim, default)
    if value is None:
        raise _malformed(f"missing claim {claim!r}")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _malformed(f"claim {claim!r} must be a number of seconds")
    # Round towards the stricter side: expire no later, become valid no earlier.
    return math.floor(value) if claim == "exp" else math.ceil(value)


def _claim_enum(enum: type[_E], value: Any, claim: str) -> _E:
    if isinstance(value, str) and value in enum._value2member_map_:
        return enum(value)
    raise _malformed(f"claim {claim!r} must be one of " + ", ".join(m.value for m in enum))


def _claims(payload: Mapping[str, Any], key_id: str) -> Claims:
    """Check the claims' shapes; anything unexpected is token_malformed, never a KeyError."""
    if payload.get("iss", key_id) != key_id:
        raise _malformed("claim 'iss' does not match the key id")
    identity, video = payload.get("sub"), payload.get("video")
    if not isinstance(identity, str) or not _IDENTITY_RE.fullmatch(identity):
        raise _malformed("claim 'sub' must be an identity of 1-128 characters")
    if not isinstance(video, dict):
        raise _malformed("missing claim 'video'")
    role = _claim_enum(Role, video.get("role"), "video.role")
    kind_value = video.get("kind")
    kind = None if kind_value is None else _claim_enum(SessionKind, kind_value, "video.kind")
    raw_grants = video.get("grants", {})
    if not isinstance(raw_grants, dict) or not all(
        isinstance(v, bool) for v in raw_grants.values()
    ):
        raise _malformed("claim 'video.grants' must map names to booleans")
    defaults = default_grants(role)
    grants = Grants(**{g: raw_grants.get(g, getattr(defaults, g)) for g in _GRANT_NAMES})
    room, name, jti = video.get("room"), video.get("name", ""), payload.get("jti", "")
    if room is None and not grants.admin:
        raise _malformed("claim 'video.room' is required unless the token grants admin")
    if room is not None and (not isinstance(room, str) or not _ROOM_RE.fullmatch(room)):
        raise _malformed("claim 'video.room' must be 1-128 characters of A-Z a-z 0-9 _ . -")
    if not isinstance(name, str) or len(name) > _MAX_NAME:
        raise _malformed(f"claim 'video.name' must be a string of <= {_MAX_NAME} characters")
    if not isinstance(jti, str):
        raise _malformed("claim 'jti' must be a string")
    return Claims(
        api_key=key_id,
        identity=identity,
        name=name,
        room=room,
        role=role,
        kind=kind,
        grants=grants,
        expires_at=_time(payload, "exp", None),
        not_before=_time(payload, "nbf", 0),
        token_id=jti,
    )
