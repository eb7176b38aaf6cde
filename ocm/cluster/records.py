"""
The records between nodes (L{ocm.cluster.wire}): what this node's rooms tell
the others (L{Outbound}, the rooms' L{Peers}), and what the others' records
do here (L{Inbound}).
"""

from __future__ import annotations

from ocm.cluster import scripts
from ocm.cluster import wire as cw
from ocm.cluster.links import RedisLinks
from ocm.cluster.state import Node
from ocm.relay.protocol import Writer
from ocm.rooms import Member, Peers, Room, Rooms, Sends
from twisted.logger import Logger

log = Logger()

#: Why the members of a node that died or stopped leave the others' rooms.
NODE_GONE = "unreachable"


class Outbound(Peers):
    """What this node's rooms tell the other nodes (through Redis), after each change here."""

    shared = True

    def __init__(self, node: Node, links: RedisLinks) -> None:
        self.node = node
        self.links = links

    def chat(self, room: Room, out: bytes) -> None:
        """A local member's chat: one record in each sharing node's batch."""
        if room.peer_nodes:
            self.tell(room, cw.record(cw.CHAT, room.name_bytes, out))

    def tell(self, room: Room, record: bytes) -> None:
        """Queue C{record} for every other node with members in C{room}."""
        add = self.links.tell
        for node in room.peer_nodes:
            add(node, record)

    def bound(self, member: Member) -> None:
        """See L{Peers.bound}."""
        room = member.room
        self.tell(room, cw.record(cw.BOUND, room.name_bytes, member.name_bytes))
        self.links.script(scripts.BIND, room.name, room.id, member.name, self.node.name)

    def left(self, member: Member, reason: str) -> None:
        """See L{Peers.left}."""
        room = member.room
        self.tell(room, cw.record(cw.LEFT, room.name_bytes, cw.left_body(member.name, reason)))
        self.links.script(scripts.LEAVE, room.name, room.id, member.name, self.node.name)

    def closed(self, room: Room, reason: str, members: list[Member]) -> None:
        """
        See L{Peers.closed}.  A room hosted here closes everywhere (the
        registry names every node with members, some perhaps not yet known
        here); a replica closes here only when this node stops: its members
        leave the others' rooms.
        """
        node = self.node.name
        if room.replica:
            for member in members:
                self.tell(room, cw.record(cw.LEFT, room.name_bytes, cw.left_body(member.name, NODE_GONE)))
                self.links.script(scripts.LEAVE, room.name, room.id, member.name, node)
            self.links.script(scripts.UNWHERE, room.name, node)
            return
        record = cw.record(cw.CLOSED, room.name_bytes, reason.encode("ascii"))
        told = set(room.peer_nodes)
        self.tell(room, record)

        def tell_the_rest(nodes: object) -> None:
            for other in nodes or ():  # type: ignore[attr-defined]
                if other not in told and other != node:
                    self.links.tell(other, record)

        self.links.script(scripts.CLOSE, room.name, room.id, node).addCallback(tell_the_rest)
        self.links.script(scripts.UNWHERE, room.name, node)

    def emptied(self, room: Room) -> None:
        """See L{Peers.emptied}."""
        self.links.script(scripts.UNWHERE, room.name, self.node.name)


class Inbound:
    """What the other nodes' records do to this node's rooms, and the whole-membership records (SYNC)."""

    def __init__(self, node: Node, rooms: Rooms, writer: Writer, links: RedisLinks) -> None:
        self.node = node
        self.rooms = rooms
        self.writer = writer
        self.links = links

    def received(self, data: bytes) -> None:
        """Apply one batch from another node; a bad one is logged and dropped."""
        try:
            origin, records = cw.parse_batch(data)
            if origin == self.node.name:
                return
            for kind, room_name, body in records:
                room = self.rooms.rooms.get(room_name.decode("utf-8"))
                if room is not None:
                    self._apply(origin, kind, room, body)
        except Exception:
            log.failure("a batch from another node failed")

    def _apply(self, origin: str, kind: int, room: Room, body: bytes) -> None:
        writer = self.writer
        if kind == cw.CHAT:
            writer.deliver(room, body)
        elif kind == cw.MEMBER:
            if self.rooms.remote_member(room, body.decode("utf-8"), origin):
                # a node new to the room: it may not know who is bound here
                for member in room.bound:
                    self.links.tell(origin, cw.record(cw.BOUND, room.name_bytes, member.name_bytes))
        elif kind == cw.BOUND:
            writer.send_all(self.rooms.remote_bound(room, body.decode("utf-8"), origin))
        elif kind == cw.LEFT:
            user, reason = cw.parse_left(body)
            writer.send_all(self.rooms.remote_left(room, user, reason))
        elif kind == cw.CLOSED:
            writer.send_all(self.rooms.remote_closed(room, body.decode("ascii")))
        elif kind == cw.SYNC:
            self._synced(origin, room, body)

    def sync_remote(self, room: Room, members: list[tuple[str, str]], bound: list[tuple[str, str]]) -> Sends:
        """
        Learn C{room}'s remote members from the registry (notices for those
        newly bound).  Only additions: a departure is told by its node (a
        LEFT or SYNC record) or by the reaper, never inferred from a registry
        that another node may not have rebuilt yet.
        """
        sends: Sends = []
        me = self.node.name
        for user, node in members:
            if node != me:
                self.rooms.remote_member(room, user, node)
        for user, node in bound:
            if node != me:
                sends.extend(self.rooms.remote_bound(room, user, node))
        return sends

    def sync_record(self, room: Room, reply: bool) -> bytes:
        """The SYNC record of this node's whole membership of C{room}."""
        members = [(m.name, m.route is not None) for m in room.members.values()]
        return cw.record(cw.SYNC, room.name_bytes, cw.sync_body(members, reply))

    def _synced(self, origin: str, room: Room, body: bytes) -> None:
        """C{origin}'s whole membership of C{room}: make ours match it."""
        members, reply = cw.parse_sync(body)
        names = {name for name, _ in members}
        sends: Sends = []
        for user in [u for u, node in room.remote.items() if node == origin and u not in names]:
            sends.extend(self.rooms.remote_left(room, user, "left"))
        for name, bound in members:
            self.rooms.remote_member(room, name, origin)
            if bound:
                sends.extend(self.rooms.remote_bound(room, name, origin))
        self.writer.send_all(sends)
        if reply:
            self.links.tell(origin, self.sync_record(room, False))
