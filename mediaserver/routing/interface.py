"""The interface signalling uses to find a room's node, and the values it returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from mediaserver.rooms import Room


class RoutingError(Exception):
    """A room cannot be placed or reached now; ``code`` goes to the client as is.

    ``cluster_unavailable``: Redis is unreachable, so no new room can be placed safely.
    ``room_unavailable``: the room's node stopped answering and its lease has not expired yet.
    ``node_draining`` / ``cluster_full``: no node may take a new room.
    """

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class NodeInfo:
    """A node as its last heartbeat described it."""

    node_id: str
    url: str  # http(s) base URL, for clients and for the other nodes' admin calls
    capacity: int = 0
    draining: bool = False
    cpu: float = 0.0  # share of one core used by the process, 0..1+ (sampled per heartbeat)
    rooms: int = 0
    participants: int = 0
    bitrate: int = 0  # forwarded RTP, bits per second
    started_at: float = 0.0

    @property
    def signal_url(self) -> str:
        base = self.url
        if base.startswith("https://"):
            base = "wss://" + base[len("https://"):]
        elif base.startswith("http://"):
            base = "ws://" + base[len("http://"):]
        return base + "/v1/signal"

    def to_json(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "url": self.url, "capacity": self.capacity,
                "draining": self.draining, "cpu": round(self.cpu, 3), "rooms": self.rooms,
                "participants": self.participants, "bitrate": self.bitrate,
                "started_at": self.started_at}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodeInfo:
        return cls(node_id=str(data["node_id"]), url=str(data["url"]),
                   capacity=int(data.get("capacity", 0)),
                   draining=bool(data.get("draining", False)),
                   cpu=float(data.get("cpu", 0.0)), rooms=int(data.get("rooms", 0)),
                   participants=int(data.get("participants", 0)),
                   bitrate=int(data.get("bitrate", 0)),
                   started_at=float(data.get("started_at", 0.0)))


@dataclass(frozen=True)
class Placement:
    """Where a room lives: here (``node`` is None) or on ``node``."""

    node: NodeInfo | None = None

    @property
    def local(self) -> bool:
        return self.node is None


class Router(Protocol):
    """Where rooms live. Signalling calls ``place`` before creating a room that is not here.

    Implementations keep their own background work (heartbeat) between ``start`` and
    ``stop``; ``room_closed`` is called by the RoomManager as a room closes.
    """

    node_id: str
    clustered: bool  # False: single node, nothing to route

    @property
    def available(self) -> bool:
        """The coordination store answers (always True for a single node)."""

    @property
    def draining(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def drain(self) -> None:
        """Take no new rooms from now on (this node only)."""

    async def place(self, room: str) -> Placement:
        """The room's node, choosing one for a new room; raises RoutingError."""

    async def owner(self, room: str) -> NodeInfo | None:
        """The live node that hosts ``room``, if another one does."""

    async def nodes(self) -> list[NodeInfo]:
        """Every live node, this one included."""

    async def saved_room(self, room: str) -> dict[str, Any] | None:
        """The resumable state of a room that is not here (see session.py), if kept."""

    def adopted(self, room: Room, saved: dict[str, Any]) -> None:
        """``room`` was rebuilt here from ``saved``: keep its absent participants resumable."""

    def room_changed(self, room: Room) -> None:
        """Membership or settings changed: save the resumable state soon."""

    def room_closed(self, room: Room, reason: str) -> None: ...
