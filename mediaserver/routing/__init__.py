"""Routing: which node hosts a room, and how a node finds the others.

Signalling asks a ``Router`` (``interface.py``) where a room lives before it creates one.
``LocalRouter`` is the single-node default: every room is here and nothing else is needed.
``RedisRouter`` (``redis_router.py``) forms a cluster through Redis: a node registry with
heartbeats, atomic room placement, room leases tied to the heartbeat, and the small
resumable state of each session (``session.py``) so that another node can take a room over
after its node died. docs/cluster.md lists every Redis key.

This package never imports aiohttp; the HTTP side (redirects, admin forwarding, drain) is
``mediaserver/signaling/cluster.py``.
"""

from mediaserver.routing.interface import NodeInfo, Placement, Router, RoutingError
from mediaserver.routing.local import LocalRouter

__all__ = ["LocalRouter", "NodeInfo", "Placement", "Router", "RoutingError", "make_router"]


def make_router(config: object, rooms: object) -> Router:
    """``RedisRouter`` when ``redis_url`` is set, else ``LocalRouter``."""
    from mediaserver.config import Config
    from mediaserver.rooms import RoomManager

    assert isinstance(config, Config) and isinstance(rooms, RoomManager)
    if config.redis_url is None:
        return LocalRouter(rooms)
    from mediaserver.routing.redis_router import RedisRouter

    return RedisRouter(config, rooms)
