"""Who may do what in a session (pure logic, no I/O).

Publishing, subscribing and recording come from the token's grants, which the app's
backend sets; the host controls (admitting from the waiting room, muting others,
removing someone, locking and ending the session) belong to the host role. The server
checks these on every request, whatever a client's UI shows.
"""

from __future__ import annotations

from enum import StrEnum

from mediaserver.tokens import Claims, Role


class Permission(StrEnum):
    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"
    RECORD = "record"
    ADMIT = "admit"
    MUTE = "mute"
    REMOVE = "remove"
    LOCK = "lock"
    END = "end"


HOST_PERMISSIONS = frozenset({Permission.ADMIT, Permission.MUTE, Permission.REMOVE,
                              Permission.LOCK, Permission.END})


def allowed(claims: Claims, permission: Permission) -> bool:
    if permission is Permission.PUBLISH:
        return claims.grants.publish and claims.role is not Role.OBSERVER
    if permission is Permission.SUBSCRIBE:
        return claims.grants.subscribe
    if permission is Permission.RECORD:
        return claims.grants.record
    return claims.role is Role.HOST and permission in HOST_PERMISSIONS


def permissions(claims: Claims) -> list[str]:
    """The permissions a participant has, for the joined reply (so UIs can adapt)."""
    return [p.value for p in Permission if allowed(claims, p)]


def bypasses_waiting_room(claims: Claims) -> bool:
    """Hosts run the session; everybody else waits to be admitted when the room says so."""
    return claims.role is Role.HOST


def visible_to(viewer: Claims, subject: Claims, observers_visible: bool) -> bool:
    """Whether ``viewer`` is told about ``subject`` (observers are hidden from clients)."""
    if subject.role is not Role.OBSERVER or observers_visible:
        return True
    return viewer.role is not Role.PARTICIPANT
