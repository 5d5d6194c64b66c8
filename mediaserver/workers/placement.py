"""Which worker process hosts each room of a multi-worker node, and where a new room goes.

The front of a multi-worker node (docs/workers.md) asks ``route`` for every signalling
connection's first ``join``/``resume`` and for room-scoped admin calls. A room stays on the
worker it was placed on (a room never spans workers) until that worker reports it gone or
the worker's process ends. A new room goes to the ready worker with the least load: its
participants as last reported, plus one for each room placed there that it has not reported
yet (a burst of new rooms spreads before the next report comes in).

Pure: times are parameters, nothing here awaits or reads a clock; the front feeds it worker
reports (``observe``), readiness and process exits.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

# How long a routing decision keeps a room mapped although its worker does not list it: the
# join it routed may still be on its way, or a room that just ended may be joining again.
ROUTE_GRACE = 10.0


@dataclass
class _Entry:
    worker: int
    routed_at: float  # the last routing decision that used this entry
    reported: bool = False  # the worker has listed the room at least once


@dataclass
class WorkerLoad:
    """A worker as its last report described it."""

    ready: bool = False  # answers, and may take new rooms
    participants: int = 0
    rooms: int = 0


class WorkerPlacement:
    """The sticky room -> worker map of one node and its placement rule."""

    def __init__(self, workers: int, grace: float = ROUTE_GRACE) -> None:
        if workers < 1:
            raise ValueError("WorkerPlacement: need at least one worker")
        self.grace = grace
        self.loads = [WorkerLoad() for _ in range(workers)]
        self._rooms: dict[str, _Entry] = {}

    def owner(self, room: str) -> int | None:
        """The worker hosting (or about to host) ``room``, without recording a decision."""
        entry = self._rooms.get(room)
        return None if entry is None else entry.worker

    def route(self, room: str, now: float, allow_new: bool = True) -> int | None:
        """The worker for a connection or call about ``room``; places a new room.

        None: the room is new and ``allow_new`` is false (a draining node) or no worker is
        ready to take it.
        """
        entry = self._rooms.get(room)
        if entry is not None:
            entry.routed_at = now
            return entry.worker
        if not allow_new:
            return None
        worker = self.least_loaded()
        if worker is not None:
            self._rooms[room] = _Entry(worker, now)
        return worker

    def least_loaded(self) -> int | None:
        ready = [w for w, load in enumerate(self.loads) if load.ready]
        if not ready:
            return None
        pending = [0] * len(self.loads)
        placed = [0] * len(self.loads)
        for entry in self._rooms.values():
            placed[entry.worker] += 1
            pending[entry.worker] += not entry.reported
        return min(ready, key=lambda w: (self.loads[w].participants + pending[w], placed[w], w))

    def release(self, room: str, worker: int) -> None:
        """Forget a placement its worker never took (an admin create it refused)."""
        entry = self._rooms.get(room)
        if entry is not None and entry.worker == worker and not entry.reported:
            del self._rooms[room]

    def set_ready(self, worker: int, ready: bool) -> None:
        """Whether ``worker`` may take new rooms; its rooms stay where they are."""
        self.loads[worker].ready = ready

    def worker_lost(self, worker: int) -> int:
        """The worker's process ended: its rooms are gone with it. Returns how many."""
        lost = [room for room, entry in self._rooms.items() if entry.worker == worker]
        for room in lost:
            del self._rooms[room]
        self.loads[worker] = WorkerLoad()
        return len(lost)

    def observe(self, worker: int, rooms: Collection[str], participants: int,
                asked_at: float) -> tuple[int, int]:
        """Take a worker's report of its rooms, as asked for at ``asked_at``.

        Rooms it lists stay (or become) its own; a room mapped to it that it does not list is
        freed unless it was routed within ``grace`` before the report was asked for. A room
        it lists that is mapped to another worker is left where the map has it (that cannot
        happen while every connection comes through the front) and counted.
        Returns (rooms freed, rooms listed by two workers).
        """
        load = self.loads[worker]
        load.ready, load.participants, load.rooms = True, participants, len(rooms)
        conflicts = 0
        for room in rooms:
            entry = self._rooms.setdefault(room, _Entry(worker, asked_at))
            if entry.worker == worker:
                entry.reported = True
            else:
                conflicts += 1
        listed = set(rooms)
        ended = [room for room, entry in self._rooms.items()
                 if entry.worker == worker and room not in listed
                 and entry.routed_at + self.grace <= asked_at]
        for room in ended:
            del self._rooms[room]
        return len(ended), conflicts

    def rooms_of(self, worker: int) -> list[str]:
        return sorted(room for room, entry in self._rooms.items() if entry.worker == worker)
