"""The single-node router: every room lives in this process; no Redis, no peers."""

from __future__ import annotations

from typing import Any

from mediaserver.rooms import Room, RoomManager
from mediaserver.routing.interface import NodeInfo, Placement, RoutingError


class LocalRouter:
    node_id = "local"
    clustered = False

    def __init__(self, rooms: RoomManager) -> None:
        self.rooms = rooms
        self._draining = False

    @property
    def available(self) -> bool:
        return True

    @property
    def draining(self) -> bool:
        return self._draining

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def drain(self) -> None:
        self._draining = True

    async def place(self, room: str) -> Placement:
        if self._draining and room not in self.rooms.rooms:
            raise RoutingError("node_draining", "this server is shutting down: no new sessions")
        return Placement()

    async def owner(self, room: str) -> NodeInfo | None:
        return None

    async def nodes(self) -> list[NodeInfo]:
        return []

    async def saved_room(self, room: str) -> dict[str, Any] | None:
        return None

    def adopted(self, room: Room, saved: dict[str, Any]) -> None:
        return None

    def room_changed(self, room: Room) -> None:
        return None

    def room_closed(self, room: Room, reason: str) -> None:
        return None
