"""Room placement on the workers of one node, as tables of steps (time is a parameter)."""

from __future__ import annotations

from typing import Any

import pytest

from mediaserver.workers.placement import WorkerPlacement

# Steps, run in order against a placement of 2 or 3 workers (all ready unless told):
#   ("route", room, now, expected worker or None)     a join/resume/admin call for the room
#   ("drain_route", room, now, expected)                the same on a draining node
#   ("report", worker, rooms, participants, asked_at, (freed, conflicts))
#   ("ready", worker, bool)                            readiness from the front's polls
#   ("lost", worker, rooms lost)                       the worker's process ended
#   ("release", room, worker)                          an admin create the worker refused
#   ("owner", room, expected)
CASES: dict[str, tuple[int, list[tuple[Any, ...]]]] = {
    "new rooms spread before any report, ties to the lowest index": (3, [
        ("route", "a", 0.0, 0), ("route", "b", 0.1, 1), ("route", "c", 0.2, 2),
        ("route", "d", 0.3, 0)]),
    "a room stays on its worker whatever the load": (2, [
        ("route", "a", 0.0, 0), ("report", 0, ["a"], 40, 1.0, (0, 0)),
        ("route", "b", 1.1, 1), ("route", "a", 1.2, 0), ("owner", "a", 0)]),
    "participants decide, a reported room no longer counts as pending": (2, [
        ("route", "a", 0.0, 0), ("route", "b", 0.0, 1),
        ("report", 0, ["a"], 2, 1.0, (0, 0)), ("report", 1, ["b"], 6, 1.0, (0, 0)),
        ("route", "c", 1.1, 0), ("route", "d", 1.2, 0), ("route", "e", 1.3, 0),
        ("route", "f", 1.4, 0), ("route", "g", 1.5, 1)]),
    "a worker that is not ready takes no new room but keeps its own": (2, [
        ("route", "a", 0.0, 0), ("ready", 0, False), ("route", "b", 0.1, 1),
        ("route", "c", 0.2, 1), ("route", "a", 0.3, 0)]),
    "no ready worker: nowhere to go": (2, [
        ("ready", 0, False), ("ready", 1, False), ("route", "a", 0.0, None),
        ("owner", "a", None)]),
    "a draining node routes its rooms but places none": (2, [
        ("route", "a", 0.0, 0), ("drain_route", "a", 1.0, 0),
        ("drain_route", "b", 1.0, None), ("owner", "b", None)]),
    "a room its worker stops listing is freed once the grace has passed": (2, [
        ("route", "a", 0.0, 0), ("report", 0, ["a"], 1, 1.0, (0, 0)),
        ("report", 0, [], 0, 5.0, (0, 0)),  # routed 5 s ago: the room may be re-joining
        ("report", 0, [], 0, 10.0, (1, 0)), ("owner", "a", None)]),
    "a join just routed survives a report asked before it arrived": (2, [
        ("route", "a", 3.0, 0), ("report", 0, [], 0, 2.9, (0, 0)), ("owner", "a", 0)]),
    "routing refreshes the grace": (2, [
        ("route", "a", 0.0, 0), ("route", "a", 8.0, 0),
        ("report", 0, [], 0, 12.0, (0, 0)), ("report", 0, [], 0, 18.0, (1, 0))]),
    "a room placed on a worker that never took it is freed after the grace": (2, [
        ("route", "a", 0.0, 0), ("report", 0, [], 0, 10.0, (1, 0)),
        ("route", "a", 10.1, 0)]),
    "rooms a worker lists that the map lacks are adopted": (2, [
        ("report", 1, ["x"], 2, 1.0, (0, 0)), ("owner", "x", 1), ("route", "x", 1.1, 1)]),
    "a room listed by a second worker stays where it is, and is counted": (2, [
        ("route", "a", 0.0, 0), ("report", 1, ["a"], 1, 1.0, (0, 1)), ("owner", "a", 0)]),
    "a lost worker's rooms go with it; it takes nothing until ready again": (2, [
        ("route", "a", 0.0, 0), ("route", "b", 0.0, 1), ("lost", 0, 1),
        ("owner", "a", None), ("route", "a", 1.0, 1), ("route", "c", 1.1, 1),
        ("ready", 0, True), ("route", "d", 1.2, 0)]),
    "a refused admin create is forgotten at once, a reported room never": (2, [
        ("route", "a", 0.0, 0), ("release", "a", 0), ("owner", "a", None),
        ("route", "b", 0.0, 0), ("report", 0, ["b"], 0, 1.0, (0, 0)),
        ("release", "b", 0), ("owner", "b", 0), ("release", "b", 1), ("owner", "b", 0)]),
}  # fmt: skip


@pytest.mark.parametrize("workers, steps", CASES.values(), ids=list(CASES))
def test_placement(workers: int, steps: list[tuple[Any, ...]]) -> None:
    placement = WorkerPlacement(workers, grace=10.0)
    for w in range(workers):
        placement.set_ready(w, True)
    for number, (op, *args) in enumerate(steps, 1):
        where = f"step {number}: {(op, *args)}"
        if op == "route":
            room, now, expected = args
            assert placement.route(room, now) == expected, where
        elif op == "drain_route":
            room, now, expected = args
            assert placement.route(room, now, allow_new=False) == expected, where
        elif op == "report":
            worker, rooms, participants, asked_at, expected = args
            assert placement.observe(worker, rooms, participants, asked_at) == expected, where
        elif op == "ready":
            placement.set_ready(*args)
        elif op == "lost":
            worker, expected = args
            assert placement.worker_lost(worker) == expected, where
        elif op == "release":
            placement.release(*args)
        elif op == "owner":
            room, expected = args
            assert placement.owner(room) == expected, where
        else:
            raise AssertionError(f"unknown step {op}")


def test_rooms_of_lists_a_workers_rooms_sorted() -> None:
    placement = WorkerPlacement(2)
    placement.set_ready(0, True)
    for room in ("b", "a"):
        placement.route(room, 0.0)
    assert (placement.rooms_of(0), placement.rooms_of(1)) == (["a", "b"], [])


def test_at_least_one_worker() -> None:
    with pytest.raises(ValueError):
        WorkerPlacement(0)
