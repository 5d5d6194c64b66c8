"""The resumable state of a session, as kept in Redis, and rebuilding a room from it.

Only what a new node needs to accept a ``resume`` after the old node died, or to seat a
newcomer under the same rules: the room's settings (kind, size, options, lock, refused
tokens, creation time for the time limit) and, per participant, identity, role, admission
and a hash of the resume secret. No media state: after a move the clients publish and
subscribe again. Plain functions on plain dicts, no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

from mediaserver.rooms import Participant, Room, RoomError, RoomManager
from mediaserver.rooms.participant import WAITING
from mediaserver.tokens import Claims

VERSION = 1


def secret_hash(secret: str) -> str:
    """What Redis holds instead of the resume secret: enough to check one, not to forge one."""
    return hashlib.sha256(secret.encode()).hexdigest()


def participant_record(p: Participant) -> dict[str, Any]:
    return {"identity": p.identity, "role": p.role, "waiting": p.state == WAITING,
            "resume_hash": secret_hash(p.resume_secret), "joined_at": p.joined_at}


def snapshot(room: Room, node_id: str, absent: dict[str, dict[str, Any]] | None = None
             ) -> dict[str, Any]:
    """The room's resumable state; ``absent`` adds participants not (yet) back after a move."""
    people = dict(absent or {})
    people.update({p.id: participant_record(p) for p in room.participants.values()
                   if not p.closed})
    return {"v": VERSION, "node": node_id, "room": room.name, "kind": room.kind,
            "max_participants": room.max_participants, "options": room.options,
            "locked": room.locked, "persistent": room.persistent,
            "created_at": room.created_at, "max_duration": room.max_duration,
            "banned": sorted(room.banned_tokens),
            "participants": people}


def rebuild_room(rooms: RoomManager, saved: dict[str, Any]) -> Room:
    """Open the room here with its saved settings; its participants come back one by one."""
    room = rooms.create(saved["room"], saved["kind"], int(saved["max_participants"]),
                        dict(saved.get("options") or {}))
    if saved.get("persistent"):
        room.mark_persistent()
    room.locked = bool(saved.get("locked", False))
    room.banned_tokens.update(saved.get("banned") or [])
    # The session's time limit still counts from its real start, not from the move.
    room.created_at = float(saved.get("created_at", room.created_at))
    room.started = time.monotonic() - max(0.0, time.time() - room.created_at)
    return room


def readmit(room: Room, saved: dict[str, Any], claims: Claims, participant_id: str,
            secret: str, send: Any) -> Participant:
    """Seat a resuming participant in a moved room, if the saved record vouches for it."""
    record = (saved.get("participants") or {}).get(participant_id)
    if (record is None or record.get("identity") != claims.identity
            or not hmac.compare_digest(str(record.get("resume_hash", "")),
                                       secret_hash(secret))):
        raise RoomError("resume_failed", "nothing to resume: join again")
    return room.adopt(claims, participant_id, secret, bool(record.get("waiting")),
                      float(record.get("joined_at", time.time())), send)
