"""
The records between nodes (L{ocm.cluster.wire}): what this node's rooms tell
the others (L{Outbound}, the rooms' L{Peers}), and what the others' records
do here (L{Inbound}).
"""

from __future__ import annotations

from collections import deque

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from ocm.cluster import scripts
from ocm.cluster import wire as cw
from ocm.cluster.governing import RuleRecords, govern, rule_body
from ocm.cluster.links import RedisLinks
from ocm.cluster.state import Incarnations, Node, RoomFields
from ocm.relay.protocol import Writer
from ocm.rooms import MAX_HISTORY_BYTES, Member, Peers, Room, Rooms, Sends
from twisted.logger import Logger

log = Logger()

#: How many RULE records of rooms not held are kept, and for how long (s).
UNHELD_RULES = 64
UNHELD_AGE = 5.0

#: Why the members of a node that died or stopped leave the others' rooms.
NODE_GONE = "unreachable"


class Outbound(Peers):
    """What this node's rooms tell the other nodes (through Redis), after each change here."""

    shared = True

    def __init__(self, node: Node, links: RedisLinks, fields: RoomFields) -> None:
        self.node = node
        self.links = links
        #: Every field of the rooms held here (this node's copy of the registry's).
        self.fields = fields
        #: The last history notice of each room written to Redis (by room id).
        self._remembered: dict[str, bytes] = {}

    def chat(self, room: Room, out: bytes) -> None:
        """
        A local member's chat: one record in each sharing node's batch;
        and, in a room that keeps history, the notice the relay just kept
        (L{Room.remember}) goes to the room's history list in Redis, in the
        same write.
        """
        if room.peer_nodes:
            self.tell(room, cw.record(cw.CHAT, room.name_bytes, room.id.encode(), out))
        if room.history_size and room.history:
            notice = room.history[-1]
            if self._remembered.get(room.id) is not notice:  # not kept (too long): nothing new
                self._remembered[room.id] = notice
                self.links.remember(room.name, room.history_size, notice)

    def tell(self, room: Room, record: bytes) -> None:
        """Queue C{record} for every other node with members in C{room}."""
        add = self.links.tell
        for node in room.peer_nodes:
            add(node, record)

    def bound(self, member: Member) -> None:
        """See L{Peers.bound}."""
        room = member.room
        self.tell(room, cw.record(cw.BOUND, room.name_bytes, room.id.encode(), member.name_bytes))
        self.links.script(scripts.BIND, room.name, room.id, member.name)

    def left(self, member: Member, reason: str) -> None:
        """See L{Peers.left}."""
        room = member.room
        self.tell(room, cw.record(cw.LEFT, room.name_bytes, room.id.encode(), cw.left_body(member.name, reason)))
        self.links.script(scripts.LEAVE, room.name, room.id, member.name)

    def closed(self, room: Room, reason: str, members: list[Member]) -> None:
        """
        See L{Peers.closed}.  A room hosted here closes everywhere (the
        registry names every node with members, some perhaps not yet known
        here); a replica closes here only when this node stops: its members
        leave the others' rooms.
        """
        node = self.node.name
        self._remembered.pop(room.id, None)
        if room.replica:
            for member in members:
                self.tell(room, cw.record(cw.LEFT, room.name_bytes, room.id.encode(), cw.left_body(member.name, NODE_GONE)))
                self.links.script(scripts.LEAVE, room.name, room.id, member.name)
            self.links.script(scripts.UNWHERE, room.name)
            return
        record = cw.record(cw.CLOSED, room.name_bytes, room.id.encode(), reason.encode("ascii"))
        told = set(room.peer_nodes)
        self.tell(room, record)

        def tell_the_rest(nodes: object) -> None:
            for other in nodes or ():  # type: ignore[attr-defined]
                if other not in told and other != node:
                    self.links.tell(other, record)

        self.links.script(scripts.CLOSE, room.name, room.id).addCallback(tell_the_rest)
        self.links.script(scripts.UNWHERE, room.name)

    def emptied(self, room: Room) -> None:
        """See L{Peers.emptied}."""
        self._remembered.pop(room.id, None)
        self.links.script(scripts.UNWHERE, room.name)

    def governed(self, room: Room, change: dict[str, str], fields: dict[str, str]) -> None:
        """
        See L{Peers.governed}: the GOVERN script keeps C{fields} and tells
        the other nodes, if the registry still names this node's host.
        """
        govern(self.links, self.fields, room, change, fields, commander=room.host_name)

    def handed(self, room: Room, user: str, by: str) -> None:
        """
        See L{Peers.handed}.  The registry's C{host} and C{node} name the
        new host and its node: the room lives as long as that node has it.
        To a member of another node, only if it is still a member there;
        then every node, this one too, applies the record.
        """
        node = room.remote.get(user)
        fields = {"host": user, "node": node or self.node.name}
        change = {"word": "host", "user": user}
        if node is None:
            govern(self.links, self.fields, room, change, fields, commander=by)
        else:
            govern(self.links, self.fields, room, change, fields, commander=by, echo=True, member=(user, node), refused={"word": "unhanded", "user": by})

    def private(self, room: Room, sender: str, target: str, text: str) -> None:
        """See L{Peers.private}: one record, to the target's node only."""
        node = room.remote.get(target)
        if node is not None:
            body = rule_body({"word": "private", "user": target, "from": sender, "text": text}, {})
            self.links.tell(node, cw.record(cw.RULE, room.name_bytes, room.id.encode(), body))


def fill_history(room: Room, notices: list[bytes]) -> None:
    """
    C{room}'s history is C{notices} (its list in Redis, oldest first): the
    newest of them within the room's count and L{MAX_HISTORY_BYTES}, as
    L{Room.remember} keeps them.
    """
    kept: list[bytes] = []
    size = 0
    for notice in reversed(notices[-room.history_size :] if room.history_size else []):
        if size + len(notice) > MAX_HISTORY_BYTES:
            break
        kept.append(notice)
        size += len(notice)
    room.history.clear()
    room.history.extend(reversed(kept))
    room.history_bytes = size


#: The longest a join waits for the other nodes of its room to acknowledge
#: its MEMBER record (a node that does not answer is dying: the join goes on).
JOIN_ACK_TIMEOUT = 1.0


class JoinWaits:
    """
    Joins waiting for every other node of their room to acknowledge the
    MEMBER record (ACK), so that the joiner's token, and so its welcome,
    comes after every node knows the join: C{(room id, username)} -> the
    nodes not heard from, and the Deferred to fire.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.waiting: dict[tuple[str, str], tuple[set[str], defer.Deferred[None], IDelayedCall]] = {}

    def wait(self, room_id: str, user: str, nodes: set[str], timeout: float = JOIN_ACK_TIMEOUT) -> defer.Deferred[None]:
        """Fire once each of C{nodes} acknowledged, or after C{timeout} seconds."""
        if not nodes:
            return defer.succeed(None)
        key = (room_id, user)
        d: defer.Deferred[None] = defer.Deferred()

        def late() -> None:
            if key in self.waiting and self.waiting[key][1] is d:
                del self.waiting[key]
                log.info("join of {user}: {nodes} did not acknowledge within {timeout} s", user=user, nodes=sorted(nodes), timeout=timeout)
                d.callback(None)

        self.waiting[key] = (set(nodes), d, self.clock.callLater(timeout, late))
        return d

    def release(self) -> None:
        """The node is stopping: every join still waiting goes on now."""
        waiting, self.waiting = self.waiting, {}
        for _, d, call in waiting.values():
            if call.active():
                call.cancel()
            d.callback(None)

    def acked(self, room_id: str, user: str, node: str) -> None:
        """C{node} acknowledged the join of C{user} to room C{room_id}."""
        entry = self.waiting.get((room_id, user))
        if entry is None:
            return
        nodes, d, call = entry
        nodes.discard(node)
        if not nodes:
            del self.waiting[(room_id, user)]
            call.cancel()
            d.callback(None)


class Inbound:
    """
    What the other nodes' records do to this node's rooms, and the
    whole-membership records (SYNC).

    A record applies to the room held under its room's name only if the ids
    match (a closed room and a new one of the same name never mix).  A
    batch from a generation of its origin that is known dead (L{gone}) is
    dropped whole; chat older than C{max_age} seconds (half the member
    timeout, on Redis's clock) is dropped, the other records of its batch
    applied.
    """

    def __init__(
        self, node: Node, rooms: Rooms, writer: Writer, links: RedisLinks, incarnations: Incarnations, joins: JoinWaits, fields: RoomFields
    ) -> None:
        self.node = node
        self.rooms = rooms
        self.writer = writer
        self.links = links
        self.incarnations = incarnations
        self.joins = joins
        #: What SPEC section 7's records do here.
        self.rules = RuleRecords(node, rooms, links, fields)
        #: RULE records for a room not held here, the last few seconds' (a
        #: join's answer may come after the records published just after
        #: it): (when, room id, origin, body), oldest first.
        self.unheld: deque[tuple[float, str, str, bytes]] = deque(maxlen=UNHELD_RULES)
        self.clock = links.clock
        #: Chat older than this many milliseconds is not delivered.
        self.max_age_ms = int(node.heartbeat_ttl * 1000 / 2)
        #: Batches dropped whole (a dead generation), chat records dropped (too old).
        self.fenced_batches = 0
        self.stale_chat = 0

    def received(self, data: bytes) -> None:
        """Apply one batch from another node; a bad one is logged and dropped."""
        try:
            origin, generation, sent_at, records = cw.parse_batch(data)
            if origin == self.node.name:
                self._own(records)
                return
            admitted = self.incarnations.admits(origin, generation)
            if not admitted:
                self.fenced_batches += 1
            fresh = self.node.redis_ms(self.clock.seconds()) - sent_at <= self.max_age_ms
            rooms = self.rooms.rooms
            for kind, room_name, rid, body in records:
                if kind == cw.GONE:
                    self.gone(*cw.parse_gone(body))
                elif not admitted:
                    continue
                elif kind == cw.CHAT and not fresh:
                    self.stale_chat += 1
                else:
                    room = rooms.get(room_name.decode("utf-8"))
                    if room is not None and room.id == rid.decode("ascii"):
                        self._apply(origin, kind, room, body, fresh)
                    elif kind == cw.RULE:
                        self.unheld.append((self.clock.seconds(), rid.decode("ascii"), origin, body))
                    if kind == cw.MEMBER:  # applied, or nothing to apply: either way the join is known here
                        self.links.tell(origin, cw.record(cw.ACK, room_name, rid, body))
                    elif kind == cw.ACK:
                        self.joins.acked(rid.decode("ascii"), body.decode("utf-8"), origin)
        except Exception:
            log.failure("a batch from another node failed")

    def joined(self, room: Room, since: float) -> Sends:
        """
        This node now holds C{room}, just joined (its state read from the
        join's answer): the RULE records of it that came before that
        answer, since the join was asked (at C{since}) and within the last
        L{UNHELD_AGE} seconds, apply now, in order.
        """
        sends: Sends = []
        horizon = max(since, self.clock.seconds() - UNHELD_AGE)
        for when, rid, origin, body in self.unheld:
            if rid == room.id and when >= horizon:
                sends.extend(self.rules.received(origin, room, body))
        return sends

    def _own(self, records: object) -> None:
        """
        A batch this node's own scripts published to it too: what Redis
        ordered for every node of a room, this one included (a host handed
        to a member of another node; a room closed by its host's leaving).
        """
        rooms = self.rooms.rooms
        me = self.node.name
        for kind, room_name, rid, body in records:  # type: ignore[attr-defined]
            if kind in (cw.RULE, cw.CLOSED):
                room = rooms.get(room_name.decode("utf-8"))
                if room is not None and room.id == rid.decode("ascii"):
                    self._apply(me, kind, room, body)

    def gone(self, node: str, generation: int) -> None:
        """
        C{generation} of C{node} is dead (reaped, or stopped): its members
        here leave as unreachable, the rooms it hosted close (host_left),
        and its later batches of that generation are dropped.
        """
        if node == self.node.name or not self.incarnations.died(node, generation):
            return
        sends: Sends = []
        for room in list(self.rooms.rooms.values()):
            if room.replica and room.remote.get(room.host_name) == node:
                sends.extend(self.rooms.remote_closed(room, "host_left"))
                continue
            for user in [u for u, n in room.remote.items() if n == node]:
                sends.extend(self.rooms.remote_left(room, user, NODE_GONE))
        self.writer.send_all(sends)

    def _apply(self, origin: str, kind: int, room: Room, body: bytes, fresh: bool = True) -> None:
        writer = self.writer
        if kind == cw.CHAT:
            writer.deliver(room, body)
        elif kind == cw.MEMBER:
            if self.rooms.remote_member(room, body.decode("utf-8"), origin):
                # a node new to the room: it may not know who is bound here
                for member in room.bound:
                    self.links.tell(origin, cw.record(cw.BOUND, room.name_bytes, room.id.encode(), member.name_bytes))
        elif kind == cw.BOUND:
            writer.send_all(self.rooms.remote_bound(room, body.decode("utf-8"), origin))
        elif kind == cw.LEFT:
            user, reason = cw.parse_left(body)
            if room.remote.get(user) == origin:  # not a namesake that another node holds now
                writer.send_all(self.rooms.remote_left(room, user, reason))
        elif kind == cw.CLOSED:
            writer.send_all(self.rooms.remote_closed(room, body.decode("ascii")))
        elif kind == cw.SYNC:
            self._synced(origin, room, body)
        elif kind == cw.RULE:
            writer.send_all(self.rules.received(origin, room, body, fresh))

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
        return cw.record(cw.SYNC, room.name_bytes, room.id.encode(), cw.sync_body(members, reply))

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
