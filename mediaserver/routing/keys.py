"""Every Redis key the cluster uses, in one place (docs/cluster.md describes each one)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str

    @property
    def nodes(self) -> str:
        """ZSET node id -> heartbeat expiry (ms): the index of the registry."""
        return f"{self.prefix}:nodes"

    def node(self, node_id: str) -> str:
        """STRING (JSON NodeInfo) with the heartbeat's expiry: a dead node vanishes."""
        return f"{self.prefix}:node:{node_id}"

    def node_rooms(self, node_id: str) -> str:
        """SET of rooms placed on the node, for placement's load count."""
        return f"{self.prefix}:node:{node_id}:rooms"

    def owner(self, room: str) -> str:
        """STRING node id: the room's lease."""
        return f"{self.prefix}:room:{room}:owner"

    def session(self, room: str) -> str:
        """STRING (JSON, session.snapshot): what a new node needs to accept resumes."""
        return f"{self.prefix}:room:{room}:session"
