"""Rooms and participants: who may be in a session, and which media flows to whom.

This layer holds the policy (room kinds and sizes, roles, the waiting room, host
controls, resume) and wires the SFU objects together. It never imports aiohttp:
signalling reaches it through ``RoomManager`` and hands each participant a ``send``
callable for its events.
"""

from mediaserver.rooms.errors import RoomError
from mediaserver.rooms.manager import RoomManager
from mediaserver.rooms.participant import Participant
from mediaserver.rooms.room import Room

__all__ = ["Participant", "Room", "RoomError", "RoomManager"]
