"""The one error type of the room layer."""

from __future__ import annotations


class RoomError(Exception):
    """A request the room refuses; ``code`` is stable and part of the protocol."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
