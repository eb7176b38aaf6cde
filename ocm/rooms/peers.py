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

    def governed(self, room: Room, change: dict[str, str], fields: dict[str, str]) -> None:
        """
        The host, a member of this node, changed C{room} (SPEC section 7,
        L{ocm.rooms.governing}): C{change} says what (C{word}, and its
        C{user}, C{topic}...), for the other nodes to apply and tell their
        members; C{fields} is the room's state that changed, as the
        cluster's registry keeps it (L{state_fields}).  A kick or ban of a
        member of another node is done there.
        """

    def handed(self, room: Room, user: str, by: str) -> None:
        """
        The host C{by} handed C{room} to C{user}: done here already if
        C{user} is a member of this node.  Otherwise (a member of another
        node) C{by} is no longer the host here, and the room has no host
        here until the cluster makes the change on every node, this one
        too, in the order Redis gives it (or, if C{user} is gone, gives the
        room back to C{by}).
        """

    def private(self, room: Room, sender: str, target: str, text: str) -> None:
        """C{sender}, of this node, sent C{text} privately to C{target}, a bound member of another node."""
