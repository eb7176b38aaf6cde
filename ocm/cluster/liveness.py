"""
Liveness: heartbeats with a TTL in Redis; a node whose heartbeat lapsed is
reaped by the first other node to notice (its members removed, its rooms
closed); after Redis restarted, each node rebuilds its part of the registry.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

from ocm.cluster import scripts
from ocm.cluster import wire as cw
from ocm.cluster.links import RedisLinks
from ocm.cluster.records import NODE_GONE, Inbound
from ocm.cluster.registry import encode_password, pairs
from ocm.cluster.state import Node
from ocm.relay.protocol import Writer
from ocm.rooms import Room, Rooms

log = Logger()


class Liveness:
    """
    This node's heartbeat, the reaping of nodes whose heartbeat lapsed, and
    the rebuilding of this node's part of the registry (after Redis
    restarted, or lost an update of ours).
    """

    def __init__(self, node: Node, rooms: Rooms, writer: Writer, links: RedisLinks, inbound: Inbound) -> None:
        self.node = node
        self.rooms = rooms
        self.writer = writer
        self.links = links
        self.inbound = inbound
        self.clock = links.clock
        self.beating = False
        self._beat: task.LoopingCall | None = None
        self._missing_since: dict[str, float] = {}

    def start(self) -> None:
        """Beat every L{Node.beat_interval} seconds."""
        self._beat = task.LoopingCall(self._guarded_beat)
        self._beat.clock = self.clock
        self._beat.start(self.node.beat_interval, now=False)

    def stop(self) -> None:
        """Stop beating."""
        if self._beat is not None and self._beat.running:
            self._beat.stop()

    def command_connected(self) -> None:
        """A script connection is up: reap what a previous run left, once."""
        self.reap_leftovers()

    def reap_leftovers(self) -> None:
        """Once, at start: what a previous run of this node left in the registry goes."""
        if self.node.clean or self.beating:
            return
        self.beating = True

        def reaped(result: Any) -> None:
            self.beating = False
            if result is not None:
                self._reaped(self.node.name, result)
                self.node.clean = True
                self.beat()  # in the node set, beating, before taking a request

        self.links.fire(self.links.eval(scripts.REAP, self.node.name, "gone")).addCallback(reaped)

    def _guarded_beat(self) -> None:
        try:
            self.beat()
        except Exception:
            log.failure("cluster heartbeat failed")

    def beat(self) -> None:
        """Write the heartbeat; reap nodes whose heartbeat lapsed; rebuild if needed."""
        if not self.links.command_up or self.beating:
            return
        if not self.node.clean:
            self.reap_leftovers()
            return
        self.beating = True
        ttl_ms = int(self.node.heartbeat_ttl * 1000)

        def beaten(result: Any) -> Any:
            had, dead = int(result[0]), result[1]
            self.node.alive = True
            if not had:
                self.node.rebuild_wanted = True
            steps = [self._reap(node) for node in dead]
            # a create or join in flight is in the registry and not yet here:
            # a rebuild now would take it for stale; it waits for the next beat
            if self.node.rebuild_wanted and self.links.subscribed and not self.node.in_flight:
                steps.append(self._rebuild())
            return defer.DeferredList(steps)

        def done(result: Any) -> None:
            self.beating = False

        self.links.fire(self.links.eval(scripts.HEARTBEAT, self.node.name, ttl_ms).addCallback(beaten)).addBoth(done)

    def _reap(self, node: str) -> defer.Deferred[Any]:
        log.warn("node {node} stopped beating: removing its members", node=node)
        return self.links.fire(self.links.eval(scripts.REAP, node, "gone").addCallback(lambda result: self._reaped(node, result)))

    def _reaped(self, node: str, result: Any) -> None:
        """Tell the nodes concerned, and this one, what a REAP removed."""
        for name, room_id, what, nodes, users in result or ():
            if what == "closed":
                records = [cw.record(cw.CLOSED, name.encode("utf-8"), b"host_left")]
            else:
                records = [cw.record(cw.LEFT, name.encode("utf-8"), cw.left_body(user, NODE_GONE)) for user in users]
            for other in nodes:
                if other not in (self.node.name, node):
                    for record in records:
                        self.links.tell(other, record)
            room = self.rooms.rooms.get(name)
            if room is None or room.id != room_id or node == self.node.name:
                continue
            if what == "closed":
                self.writer.send_all(self.rooms.remote_closed(room, "host_left"))
            else:
                for user in users:
                    self.writer.send_all(self.rooms.remote_left(room, user, NODE_GONE))

    def _rebuild(self) -> defer.Deferred[Any]:
        """
        Put this node's part of the registry back as its rooms hold it (after
        Redis restarted, or lost an update of ours), and tell the sharing
        nodes again who is here.
        """
        self.node.rebuild_wanted = False
        self.node.rebuilding = True
        held = list(self.rooms.rooms.values())
        log.info("rebuilding this node's part of the registry: {count} rooms", count=len(held))

        def rebuild_rooms(result: Any) -> Any:
            self._reaped(self.node.name, result)
            return defer.DeferredList([self._rebuild_room(room) for room in held if room.open])

        def done(result: Any) -> Any:
            self.node.rebuilding = False
            return result

        return self.links.eval(scripts.REAP, self.node.name, "keep", *[room.name for room in held]).addCallback(rebuild_rooms).addBoth(done)

    def _missing(self, room: Room) -> None:
        """
        The registry has no such room (or another of that name).  A replica's
        host node may not have rebuilt yet after a Redis restart: give it one
        heartbeat TTL, then close the room here.
        """
        now = self.clock.seconds()
        since = self._missing_since.setdefault(room.id, now)
        if room.replica and now - since < self.node.heartbeat_ttl:
            self.node.rebuild_wanted = True  # again at the next beat
            return
        self._missing_since.pop(room.id, None)
        self.writer.send_all(self.rooms.remote_closed(room, "host_left"))

    def _rebuild_room(self, room: Room) -> defer.Deferred[Any]:
        args: list[Any] = [
            room.name,
            room.id,
            room.host_name,
            self.node.name if not room.replica else "",
            "" if room.capacity is None else room.capacity,
            encode_password(room.password),
            self.node.name,
            "0" if room.replica else "1",
        ]
        for member in room.members.values():
            args += [member.name, "1" if member.route is not None else "0"]

        def rebuilt(result: Any) -> None:
            if not room.open:
                return
            if not result:
                self._missing(room)
                return
            self._missing_since.pop(room.id, None)
            self.writer.send_all(self.inbound.sync_remote(room, pairs(result[0]), pairs(result[1])))
            # every node with members there learns who is here, and answers in kind
            record = self.inbound.sync_record(room, True)
            nodes = {node for _, node in pairs(result[0])} | set(room.peer_nodes)
            nodes.discard(self.node.name)
            for node in nodes:
                self.links.tell(node, record)

        return self.links.eval(scripts.REBUILD, *args).addCallback(rebuilt)
