"""Signalling protocol v1: message shapes, validation and error codes (no I/O).

Every client message is a JSON object with a ``type`` and usually an ``id`` (the client's
request id, echoed in the reply so the client can match them). Validation is strict:
unknown types, missing or mistyped fields and oversized values get an ``error`` reply
with a stable ``code``; the connection survives. docs/protocol.md describes every message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mediaserver import safejson
from mediaserver.tokens import Claims, verify_token

PROTOCOL_VERSION = 1
JOIN_DEADLINE = 10.0  # seconds from the socket's opening to a successful join or resume

# Stable error codes (documented in docs/protocol.md).
BAD_JSON = "bad_json"
MESSAGE_TOO_LARGE = "message_too_large"
INVALID_MESSAGE = "invalid_message"
UNKNOWN_TYPE = "unknown_type"
NOT_JOINED = "not_joined"
ALREADY_JOINED = "already_joined"
UNSUPPORTED_VERSION = "unsupported_version"
PERMISSION_DENIED = "permission_denied"
JOIN_TIMEOUT = "join_timeout"
TOKEN_NO_ROOM = "token_no_room"
TOKEN_WRONG_ROOM = "token_wrong_room"
INTERNAL_ERROR = "internal_error"

# Set by a multi-worker front on the WebSocket it opens to a worker: the room it routed the
# connection for. The worker refuses a join or resume for any other room on that connection,
# so a room can never start on a worker the front did not place it on.
ROUTED_ROOM_HEADER = "X-Mediaserver-Routed-Room"

MAX_SDP = 64 * 1024
MAX_ID = 64
MAX_INVALID_MESSAGES = 20  # validation errors on one socket before it is closed (1008)


class ProtocolError(Exception):
    def __init__(self, code: str, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


# type -> {field: (python type(s), required, max length for str/list)}
_FIELDS: dict[str, dict[str, tuple[tuple[type, ...], bool, int]]] = {
    "join": {"token": ((str,), True, 4096), "protocol": ((int,), False, 0),
             "room": ((str,), False, 128), "auto_subscribe": ((bool,), False, 0)},
    "resume": {"token": ((str,), True, 4096), "participant_id": ((str,), True, 64),
               "resume_token": ((str,), True, 128), "protocol": ((int,), False, 0)},
    "publish_offer": {"sdp": ((str,), True, MAX_SDP), "tracks": ((list,), False, 32),
                      "restart": ((bool,), False, 0)},
    "subscriber_restart": {},
    "subscribe": {"track_id": ((str,), True, 64)},
    "unsubscribe": {"track_id": ((str,), True, 64)},
    "set_preferences": {"track_id": ((str,), True, 64), "disabled": ((bool,), False, 0),
                        "max_width": ((int,), False, 0), "max_height": ((int,), False, 0),
                        "max_fps": ((int, float), False, 0), "pinned": ((bool,), False, 0)},
    "set_bandwidth": {"audio_only": ((bool,), False, 0), "max_bitrate": ((int,), False, 0),
                      "start_bitrate": ((int,), False, 0)},
    "admit": {"participant_id": ((str,), True, 64)},
    "deny": {"participant_id": ((str,), True, 64), "reason": ((str,), False, 200)},
    "mute_participant": {"participant_id": ((str,), True, 64), "track_id": ((str,), False, 64),
                         "muted": ((bool,), True, 0)},
    "remove_participant": {"participant_id": ((str,), True, 64)},
    "lock_room": {"locked": ((bool,), True, 0)},
    "end_room": {},
    "get_stats": {},
    "record_start": {},
    "record_stop": {},
    "consent": {"granted": ((bool,), True, 0)},
    "consent_withdraw": {},
    "subscriber_answer": {"sdp": ((str,), True, MAX_SDP)},
    "candidate": {"target": ((str,), True, 16), "candidate": ((dict, type(None)), True, 0)},
    "unpublish": {"track_id": ((str,), True, 64)},
    "mute": {"track_id": ((str,), True, 64), "muted": ((bool,), True, 0)},
    "leave": {},
    "ping": {"timestamp": ((int, float), False, 0)},
}
MESSAGE_TYPES = frozenset(_FIELDS)


def decode(raw: str | bytes, max_bytes: int) -> dict[str, Any]:
    """Parse and validate one client message; raise ProtocolError on any problem."""
    size = len(raw)
    if isinstance(raw, str) and size * 4 > max_bytes:
        size = len(raw.encode("utf-8", "surrogatepass"))  # the limit is in bytes
    if size > max_bytes:
        raise ProtocolError(MESSAGE_TOO_LARGE, f"message exceeds {max_bytes} bytes")
    try:
        msg = safejson.loads(raw)  # refuses deep nesting before parsing (see safejson)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError(BAD_JSON, "message is not valid JSON") from None
    if not isinstance(msg, dict):
        raise ProtocolError(INVALID_MESSAGE, "message must be a JSON object")
    request_id = msg.get("id")
    if request_id is not None and not (
        isinstance(request_id, int | str) and not isinstance(request_id, bool)
        and len(str(request_id)) <= MAX_ID
    ):
        raise ProtocolError(INVALID_MESSAGE, "id must be a string or integer of at most "
                            f"{MAX_ID} characters")
    mtype = msg.get("type")
    if not isinstance(mtype, str):
        raise ProtocolError(INVALID_MESSAGE, "type is missing", request_id)
    fields = _FIELDS.get(mtype)
    if fields is None:
        raise ProtocolError(UNKNOWN_TYPE, f"unknown message type {mtype[:32]!r}", request_id)
    for name, (types, required, max_len) in fields.items():
        if name not in msg:
            if required:
                raise ProtocolError(INVALID_MESSAGE, f"{mtype}: {name} is required", request_id)
            continue
        value = msg[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ProtocolError(INVALID_MESSAGE, f"{mtype}: {name} has the wrong type",
                                request_id)
        if max_len and isinstance(value, str | list) and len(value) > max_len:
            raise ProtocolError(INVALID_MESSAGE, f"{mtype}: {name} is too long", request_id)
    if mtype == "candidate" and msg["target"] not in ("publisher", "subscriber"):
        raise ProtocolError(INVALID_MESSAGE, "candidate: target must be publisher or subscriber",
                            request_id)
    return msg


def entry_claims(msg: dict[str, Any], api_keys: Mapping[str, str], audience: str,
                 now: float) -> Claims:
    """The verified claims of a decoded ``join`` or ``resume``, which must name a room.

    Raises ProtocolError (version, room) or TokenError. Both the node and a multi-worker
    front call it, so a client gets the same error from either.
    """
    request_id = msg.get("id")
    version = msg.get("protocol", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(UNSUPPORTED_VERSION, f"protocol {version} not supported; this "
                            f"server speaks {PROTOCOL_VERSION}", request_id)
    claims = verify_token(msg["token"], api_keys, now=now, audience=audience)
    if not claims.room:
        raise ProtocolError(TOKEN_NO_ROOM, "the token does not name a room", request_id)
    if msg.get("room") is not None and msg["room"] != claims.room:
        raise ProtocolError(TOKEN_WRONG_ROOM, "the token is for another room", request_id)
    return claims


def error(code: str, message: str, request_id: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if request_id is not None:
        out["id"] = request_id
    return out


def reply(msg_type: str, request_id: Any, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": msg_type, **fields}
    if request_id is not None:
        out["id"] = request_id
    return out
