"""
What a node's rooms tell the other nodes of a cluster (L{Peers}).
"""

from __future__ import annotations

from ocm.rooms.model import Member, Room


class Peers:
    """
    What a L{Rooms} tells the other nodes of a cluster: nothing, on one
    node.  L{ocm.cluster} overrides each method; all are called after the
    local state has changed, and must not raise.
    """

    #: Whether there are other nodes (the relay publishes chat only then).
    shared = False

    def chat(self, room: Room, out: bytes) -> None:
        """A member of this node sent C{out} (relayed form) to C{room}."""

    def bound(self, member: Member) -> None:
        """C{member}, of this node, bound its token."""

    def left(self, member: Member, reason: str) -> None:
        """C{member}, of this node, is gone from its room (not closed)."""

    def closed(self, room: Room, reason: str, members: list[Member]) -> None:
        """C{room} closed here; C{members} were its local members."""

    def emptied(self, room: Room) -> None:
        """C{room}, a replica, has no local member left and is forgotten."""
