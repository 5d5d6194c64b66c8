"""All rooms on this node (the embedded, in-memory routing)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from mediaserver import metrics
from mediaserver.config import RoomConfig
from mediaserver.rooms.errors import RoomError
from mediaserver.rooms.participant import Participant
from mediaserver.rooms.recording import RecordingSettings
from mediaserver.rooms.room import Room
from mediaserver.sfu.aiortc_adapter import CandidatePolicy

KIND_LIMITS = {"one_to_one": 2, "couples": 3}


class RoomManager:
    def __init__(self, policy: CandidatePolicy, group_max_participants: int = 16,
                 limits: RoomConfig | None = None,
                 recording: RecordingSettings | None = None,
                 publish_kbps: dict[str, int] | None = None, adaptation: bool = True) -> None:
        self.recording = recording
        self.publish_kbps = publish_kbps or {}
        self.adaptation = adaptation
        self.policy = policy
        self.group_max = group_max_participants
        self.limits = limits or RoomConfig()
        self.rooms: dict[str, Room] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Quality reports of ended sessions: room name -> (ended at, report).
        self.ended_reports: dict[str, tuple[float, dict[str, Any]]] = {}
        # Told as a room starts closing (participants still in): the router releases it.
        self.on_closed: Callable[[Room, str], None] | None = None

    def limit_for(self, kind: str) -> int:
        return KIND_LIMITS.get(kind, self.group_max)

    def create(self, name: str, kind: str, max_participants: int | None = None,
               options: dict[str, Any] | None = None) -> Room:
        if name in self.rooms:
            raise RoomError("room_exists", "a room with this name already exists")
        limit = self.limit_for(kind)
        if max_participants is not None:
            limit = min(limit, max_participants)
        room = Room(name, kind, limit, self.policy, options,
                    empty_timeout=self.limits.empty_timeout,
                    max_duration=self.limits.max_duration,
                    resume_grace=self.limits.resume_grace, recording=self.recording,
                    publish_kbps=self.publish_kbps, adaptation=self.adaptation)
        self.rooms[name] = room
        metrics.ROOMS.labels(kind=kind).inc()
        self._tasks[name] = asyncio.create_task(room.run(self._closed_by_task))
        return room

    def get_or_create(self, name: str, kind: str | None) -> Room:
        room = self.rooms.get(name)
        if room is None:
            return self.create(name, kind or "group")
        if kind is not None and room.kind != kind:
            raise RoomError("room_kind_mismatch",
                            f"the room is a {room.kind} session, the token says {kind}")
        return room

    async def _closed_by_task(self, room: Room, reason: str) -> None:
        self._tasks.pop(room.name, None)  # the task is finishing by itself
        await self._close(room, "session_time_limit" if reason == "max_duration" else reason)

    async def end(self, name: str, reason: str = "room_ended") -> None:
        room = self.rooms.get(name)
        if room is None:
            raise RoomError("room_not_found", "no such room")
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
        await self._close(room, reason)

    async def _close(self, room: Room, reason: str) -> None:
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            metrics.ROOMS.labels(kind=room.kind).dec()
            if self.on_closed is not None:
                self.on_closed(room, reason)
        await room.close(reason)
        if self.limits.report_retention > 0:
            report = room.report()
            report["end_reason"] = reason
            self.ended_reports[room.name] = (time.monotonic(), report)

    def participant_count(self) -> int:
        """Everyone in a room on this node, waiting or disconnected ones included."""
        return sum(len(room.participants) for room in self.rooms.values())

    def quality_counts(self) -> dict[str, int]:
        """Participants per quality level across the node (for the Prometheus gauge)."""
        total: dict[str, int] = {}
        for room in self.rooms.values():
            for level, n in room.quality_counts().items():
                total[level] = total.get(level, 0) + n
        return total

    def report(self, name: str) -> dict[str, Any] | None:
        """A session's quality report: live if the room is open, else kept for a while."""
        now = time.monotonic()
        for key in [k for k, (t, _) in self.ended_reports.items()
                    if now - t > self.limits.report_retention]:
            del self.ended_reports[key]
        room = self.rooms.get(name)
        if room is not None:
            return room.report()
        kept = self.ended_reports.get(name)
        return kept[1] if kept else None

    async def leave(self, room: Room, p: Participant, reason: str = "left") -> None:
        await room.remove(p, reason)

    async def close_all(self) -> None:
        for name in list(self.rooms):
            await self.end(name, "server_shutdown")
