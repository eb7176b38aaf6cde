"""
Liveness and fencing: a node registers with a generation that Redis gives
it, writes a heartbeat with a TTL, reaps the nodes whose heartbeat lapsed
(their members removed, their rooms closed), and, when Redis refuses its
generation, acts on it: a node that was reaped (fenced) drops everything it
had and registers anew; a node whose registry Redis lost registers again
and rebuilds its part.
"""

from __future__ import annotations

import secrets
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ocm.cluster import scripts
from ocm.cluster import wire as cw
from ocm.cluster.guard import StallGuard
from ocm.cluster.links import RedisLinks
from ocm.cluster.records import NODE_GONE, Inbound
from ocm.cluster.registry import encode_password, pairs
from ocm.cluster.state import Node, RoomFields, flat
from ocm.relay.protocol import Writer
from ocm.rooms import Room, Rooms, Sends, governing

log = Logger()


class Liveness:
    """
    This node's registration and heartbeat, the reaping of nodes whose
    heartbeat lapsed, what this node does when Redis refuses it (fenced,
    lost), and the rebuilding of its part of the registry (after Redis
    restarted, or lost an update of ours).
    """

    def __init__(
        self, node: Node, rooms: Rooms, writer: Writer, links: RedisLinks, inbound: Inbound, guard: StallGuard, fields: RoomFields
    ) -> None:
        self.node = node
        self.fields = fields
        self.rooms = rooms
        self.writer = writer
        self.links = links
        self.inbound = inbound
        self.guard = guard
        self.clock = links.clock
        #: A beat's scripts are running: the next beat waits.
        self.beating = False
        self._beat: task.LoopingCall | None = None
        self._missing_since: dict[str, float] = {}
        #: The registry epoch of the last rebuild: within one epoch the
        #: registry is authoritative (every node rebuilt into it), so a
        #: rebuild may infer departures told by records this node missed.
        self._rebuilt_epoch = ""
        #: Replicas to ask about again (their host had not rebuilt them), by room id.
        self._retries: dict[str, IDelayedCall] = {}

    def start(self) -> None:
        """Beat every L{Node.beat_interval} seconds."""
        self.guard.watch.tick(self.clock.seconds())
        self._beat = task.LoopingCall(self._guarded_beat)
        self._beat.clock = self.clock
        self._beat.start(self.node.beat_interval, now=False)

    def stop(self) -> None:
        """Stop beating, and asking again."""
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        retries, self._retries = self._retries, {}
        for call in retries.values():
            if call.active():
                call.cancel()

    def command_connected(self) -> None:
        """A script connection is up: beat now (reap leftovers, register) rather than at the next tick."""
        self.beat()

    def _guarded_beat(self) -> None:
        try:
            now = self.clock.seconds()
            self.guard.check(now)
            stall = self.guard.watch.tick(now)
            if stall is not None:
                log.warn(
                    "this process was stalled for {seconds:.1f} s (more than half the member timeout): what arrived meanwhile was dropped; "
                    "checking this node's registration",
                    seconds=stall,
                )
            self.beat()
        except Exception:
            log.failure("cluster heartbeat failed")

    def beat(self) -> None:
        """One step: reap leftovers, or register, or write the heartbeat and reap the dead; then rebuild if wanted."""
        if not self.links.command_up or self.beating:
            return
        self.beating = True

        def failed(failure: Failure) -> None:
            self.node.want_rebuild()
            log.debug("cluster beat failed: {error}", error=failure.getErrorMessage())

        def done(_: Any) -> None:
            self.beating = False

        defer.ensureDeferred(self._step()).addErrback(failed).addBoth(done)

    async def _step(self) -> None:
        node = self.node
        if not node.clean:
            await self._reap_self()
            node.clean = True
        if not node.registered:
            await self._register()
        else:
            dead = await self._heartbeat()
            if dead and node.may_reap(self.clock.seconds()):  # not while the others may be coming back with Redis
                for other in dead:
                    await self._reap(other)
        # a create or join in flight is in the registry and not yet here:
        # a rebuild now would take it for stale; it waits for the next beat
        if node.registered and node.rebuild_wanted and self.links.reachable and not node.in_flight:
            await self._rebuild()

    async def _reap_self(self) -> None:
        """Once, at start: what a previous run of this node left in the registry goes."""
        generation, count = await self.links.eval(scripts.REAP_SELF, self.node.name, 0)
        if generation:
            log.info("removed what a previous run of this node left: {count} members", count=count)

    async def _register(self) -> None:
        node = self.node
        sent = self.clock.seconds()
        ttl_ms = int(node.heartbeat_ttl * 1000)
        epoch, generation, redis_ms = await self.links.eval(scripts.REGISTER, node.name, secrets.token_hex(8), node.generation, ttl_ms)
        node.synchronise(int(redis_ms), sent, self.clock.seconds())
        node.registered_as(str(epoch), int(generation))
        log.info("cluster node {node} registered (generation {generation})", node=node.name, generation=node.generation)

    async def _heartbeat(self) -> list[str]:
        node = self.node
        sent = self.clock.seconds()
        dead, redis_ms = await self.links.run(scripts.HEARTBEAT, int(node.heartbeat_ttl * 1000))
        node.synchronise(int(redis_ms), sent, self.clock.seconds())
        node.confirmed = True
        return list(dead)

    async def _reap(self, other: str) -> None:
        generation, count = await self.links.run(scripts.REAP, other)
        if generation:
            log.warn("node {node} stopped beating: reaped it ({count} members removed)", node=other, count=count)
            self.inbound.gone(other, int(generation))

    def refused(self, verdict: str, generation: int) -> None:
        """
        Redis refused a script run under C{generation} (L{RedisLinks.run}):
        C{fenced}, this node was reaped (everything it had goes, it
        registers anew); C{lost}, Redis lost the registry (it registers
        again and puts its part back).  Once per generation.
        """
        if not self.node.refused(generation):
            return
        if verdict == "fenced":
            self._fenced()
        else:
            log.warn("Redis lost the room registry (restarted empty?): registering again, then putting this node's part back")
            self.node.want_rebuild()
        self.clock.callLater(0, self.beat)

    def _fenced(self) -> None:
        """
        This node was declared dead and reaped while it could not beat
        (stopped, stalled, cut off): others may hold its members' names
        now.  Every member it has is out: C{closed}/C{host_left} in the rooms
        it hosted, C{disconnected}/C{unreachable} in the others; nothing of
        it is put back.
        """
        node = self.node
        node.fenced += 1
        held = list(self.rooms.rooms.values())
        log.error(
            "this node was declared dead by the cluster (its heartbeat lapsed for {ttl} s and another node reaped it): "
            "its {members} members in {count} rooms are out; registering anew",
            ttl=node.heartbeat_ttl,
            members=sum(len(room.members) for room in held),
            count=len(held),
        )
        if self.links.outbox is not None:
            self.links.outbox.discard()
        sends: Sends = []
        for room in held:
            if room.replica:
                sends.extend(self.rooms.evict(room, NODE_GONE))
            else:
                sends.extend(self.rooms.remote_closed(room, "host_left"))
        self._missing_since.clear()
        node.rebuild_wanted = False
        self.writer.send_all(sends)

    def _pruned(self, result: Any) -> None:
        """Tell the nodes concerned what a PRUNE removed."""
        for name, room_id, what, nodes, users in result or ():
            rid = room_id.encode()
            if what == "closed":
                records = [cw.record(cw.CLOSED, name.encode("utf-8"), rid, b"host_left")]
            else:
                records = [cw.record(cw.LEFT, name.encode("utf-8"), rid, cw.left_body(user, NODE_GONE)) for user in users]
            for other in nodes:
                if other != self.node.name:
                    for record in records:
                        self.links.tell(other, record)

    async def _rebuild(self) -> None:
        """
        Put this node's part of the registry back as its rooms hold it (after
        Redis restarted, or lost an update of ours), and tell the sharing
        nodes again who is here.
        """
        node = self.node
        node.rebuild_wanted = False
        node.rebuilding = True
        held = list(self.rooms.rooms.values())
        log.info("rebuilding this node's part of the registry: {count} rooms", count=len(held))
        self.fields.keep({room.id for room in held})
        settled = self._rebuilt_epoch == node.epoch
        try:
            self._pruned(await self.links.run(scripts.PRUNE, *[room.name for room in held]))
            await defer.DeferredList([self._rebuild_room(room, settled) for room in held if room.open])
            self._rebuilt_epoch = node.epoch
        finally:
            node.rebuilding = False

    def _missing(self, room: Room) -> None:
        """
        The registry has no such room.  A replica's host node may not have
        rebuilt yet after a Redis restart: give it one heartbeat TTL, then
        close the room here.
        """
        now = self.clock.seconds()
        since = self._missing_since.setdefault(room.id, now)
        if room.replica and now - since < self.node.heartbeat_ttl:
            if room.id not in self._retries:
                self._retries[room.id] = self.clock.callLater(self.node.beat_interval, self._retry_room, room)
            return
        self._missing_since.pop(room.id, None)
        self.writer.send_all(self.rooms.remote_closed(room, "host_left"))

    def _retry_room(self, room: Room) -> None:
        """Ask again for a replica whose host had not rebuilt it (not a whole rebuild: only that room)."""
        self._retries.pop(room.id, None)
        if room.open and self.node.registered and self.links.reachable:
            self.links.fire(self._rebuild_room(room, False))
        elif room.open:
            self.node.want_rebuild()

    def room_fields(self, room: Room) -> dict[str, str]:
        """The whole registry hash of C{room} as this node knows it (the fields it was created or found with, and any set since)."""
        known = self.fields.of(room.id)
        if known is not None:
            return known
        return {
            "id": room.id,
            "host": room.host_name,
            "node": self.node.name if not room.replica else "",
            "capacity": "" if room.capacity is None else str(room.capacity),
            "password": encode_password(room.password),
            "history": str(room.history_size),
            **governing.state_fields(room),
        }

    def _governed_state(self, room: Room, fields: dict[str, str]) -> Sends:
        """
        The registry's hash of C{room}, read by a rebuild: a change made
        while this node was away (its RULE record went to the nodes
        registered then) is taken here.  A replica takes the governed
        state; any node takes the host the registry names (a handover
        whose record it missed): the C{host} notice tells its members.
        """
        sends: Sends = []
        if room.replica:
            governing.load_fields(room, fields)
            self.fields.remember(room.id, fields)
        host, node = fields.get("host", ""), fields.get("node", "")
        if host and node:
            local = room.members.get(host) if node == self.node.name else None
            if (node == self.node.name) == (local is not None) and (room.host is not local or room.host_name != host):
                log.info("rebuilding room {room}: the registry names {user} as its host", room=room.name, user=host)
                sends.extend(governing.new_host(room, host, local))
                self.fields.update(room.id, {"host": host, "node": node})
        return sends

    def _rebuild_room(self, room: Room, settled: bool = False) -> defer.Deferred[Any]:
        """
        Put C{room} back (REBUILD).  If C{settled} (the registry has not
        been lost since the last rebuild), the remote members this node
        knew when it asked and the registry no longer has are gone: a LEFT
        or GONE record was missed (this node's subscription was cut).
        """
        known = dict(room.remote)
        fields = self.room_fields(room)
        history = [] if room.replica else list(room.history)  # the host's node puts back what Redis lost
        args: list[Any] = [room.name, room.id, "0" if room.replica else "1", len(fields), *flat(fields), len(history), *history]
        for member in room.members.values():
            args += [member.name, "1" if member.route is not None else "0", member.ip]

        def rebuilt(result: Any) -> None:
            if not room.open:
                return
            if result == -1:  # another room of that name now: this one is closed for good
                self._missing_since.pop(room.id, None)
                self.writer.send_all(self.rooms.remote_closed(room, "host_left"))
                return
            if not result:
                self._missing(room)
                return
            self._missing_since.pop(room.id, None)
            members, bound, refused = pairs(result[0]), pairs(result[1]), list(result[2])
            sends: Sends = []
            if len(result) > 3:
                sends.extend(self._governed_state(room, dict(pairs(result[3]))))
            for user in refused:
                # another node holds the name now, or the room is full: it is out
                member = room.members.get(user)
                if member is not None:
                    log.warn("rebuilding room {room}: {user} is out (its name is taken, or the room is full)", room=room.name, user=user)
                    sends.extend(self.rooms.remove(member, NODE_GONE))
            if settled:
                registered = {user for user, _ in members}
                for user, node in known.items():
                    if user not in registered and room.remote.get(user) == node:
                        sends.extend(self.rooms.remote_left(room, user, "left"))
            self.writer.send_all(sends)
            if not room.open:
                return
            self.writer.send_all(self.inbound.sync_remote(room, members, bound))
            # every node with members there learns who is here, and answers in kind
            record = self.inbound.sync_record(room, True)
            nodes = {node for _, node in members} | set(room.peer_nodes)
            nodes.discard(self.node.name)
            for node in nodes:
                self.links.tell(node, record)

        return self.links.run(scripts.REBUILD, *args).addCallback(rebuilt)
