"""
The room registry: what the TCRP server asks of the rooms, as Deferreds.

Two implementations: L{LocalRegistry} (one node, the in-memory L{Rooms}
answering at once) and L{ocm.cluster.RedisCluster} (several nodes sharing
the rooms through Redis).  The TCRP protocol sees only this interface, so
it does not know whether the rooms are local or shared.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet import defer

from ocm.passwords import PasswordHash
from ocm.rooms import Member, Room, Rooms


class RoomInfo(Protocol):
    """What a join needs to know of a room before the password is checked."""

    name: str
    password: PasswordHash | None


class Registry(Protocol):
    """The rooms as the TCRP server sees them."""

    rooms: Rooms

    def check_create(self, name: str) -> None:
        """Raise L{ocm.rooms.RoomError} early for a create that cannot succeed."""

    def create(
        self, name: str, username: str, ip: str, now: float, password: PasswordHash | None, capacity: int | None, history: int = 0
    ) -> defer.Deferred[Member]:
        """Open a room hosted by C{username}, keeping C{history} messages; fire with the host member."""

    def find(self, name: str) -> defer.Deferred[Any]:
        """Fire with the L{RoomInfo} of the room called C{name}, or fail with a 404."""

    def join(self, info: Any, username: str, ip: str, now: float) -> defer.Deferred[Member]:
        """Add C{username} to the room C{info} (found by L{find}, password checked)."""

    def listing(self) -> defer.Deferred[list[dict[str, Any]]]:
        """Fire with the room list of a list request."""


class LocalRegistry:
    """L{Registry} of one node: the in-memory rooms, answering at once."""

    def __init__(self, rooms: Rooms) -> None:
        self.rooms = rooms

    def check_create(self, name: str) -> None:
        """See L{Registry.check_create}."""
        self.rooms.check_create(name)

    def create(
        self, name: str, username: str, ip: str, now: float, password: PasswordHash | None, capacity: int | None, history: int = 0
    ) -> defer.Deferred[Member]:
        """See L{Registry.create}."""
        return defer.maybeDeferred(self.rooms.create, name, username, ip, now, password=password, capacity=capacity, history=history)

    def find(self, name: str) -> defer.Deferred[Room]:
        """See L{Registry.find}: the room itself is its info."""
        return defer.maybeDeferred(self.rooms.find, name)

    def join(self, info: Room, username: str, ip: str, now: float) -> defer.Deferred[Member]:
        """See L{Registry.join}: the very room found, if it is still open."""
        return defer.maybeDeferred(self.rooms.join, info, username, ip, now)

    def listing(self) -> defer.Deferred[list[dict[str, Any]]]:
        """See L{Registry.listing}."""
        return defer.succeed(self.rooms.listing())
