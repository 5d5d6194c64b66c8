"""The room's control step decides closing by time passed in (empty timeout, time limit)."""

from __future__ import annotations

from mediaserver.rooms.room import Room
from mediaserver.sfu.aiortc_adapter import CandidatePolicy

POLICY = CandidatePolicy(addresses=("127.0.0.1",))


async def test_empty_room_closes_after_the_timeout_only():
    room = Room("r", "group", 16, POLICY, empty_timeout=60, max_duration=3600)
    start = room.started
    assert await room.tick(start + 59) is None
    assert await room.tick(start + 60) == "empty"


async def test_room_created_by_the_admin_api_waits_for_its_participants():
    room = Room("r", "group", 16, POLICY, empty_timeout=60, max_duration=3600)
    room.mark_persistent()
    assert await room.tick(room.started + 600) is None


async def test_session_time_limit_and_room_options_override_defaults():
    room = Room("r", "group", 16, POLICY, {"max_duration": 120, "empty_timeout": 5},
                empty_timeout=60, max_duration=3600)
    room.empty_since = None  # someone is in
    assert await room.tick(room.started + 119) is None
    assert await room.tick(room.started + 121) == "max_duration"
    assert room.empty_timeout == 5
