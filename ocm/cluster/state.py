"""
This node as its cluster parts share it: its name, and where it stands with
the registry (L{Node}); what it knows of other nodes' dead generations
(L{Incarnations}); and whether its own process was stalled (L{StallWatch}).

Pure state: no I/O; time is passed in as C{now}.
"""

from __future__ import annotations


class Node:
    """
    This node in the cluster: its name and the state its parts (links,
    registry, records, liveness) share.

    A node is I{registered} under a generation that Redis gives it (the
    REGISTER script, docs/cluster.rst): every script it runs names that
    generation, and Redis refuses it once another node has reaped this one
    (I{fenced}) or once Redis has lost the registry (I{lost}: restarted
    empty).  Either way the node registers anew; only a lost one puts its
    part back (a rebuild).

    @ivar name: unique in the cluster; given with C{--node}, or named at
        start from the host and ports (L{ocm.cluster.service}).
    """

    def __init__(self, name: str, heartbeat_ttl: float) -> None:
        self.name = name
        #: The heartbeat key's TTL; a node silent that long is reaped.
        self.heartbeat_ttl = heartbeat_ttl
        #: How often the heartbeat is written (and dead nodes looked for).
        self.beat_interval = min(1.0, heartbeat_ttl / 4)
        #: This node's leftovers of a previous run are reaped.
        self.clean = False
        #: The registry's life this node registered in (C{ocm:epoch}).
        self.epoch = ""
        #: The generation of its last registration (0: never registered).
        self.generation = 0
        #: Whether that generation is current as far as this node knows.
        self.registered = False
        #: Whether Redis confirmed it since Redis was last unreachable (a
        #: registry lost meanwhile refuses it at the next beat).
        self.confirmed = False
        #: Its part of the registry must be put back (after the next beat).
        self.rebuild_wanted = True
        #: A rebuild is running: creates and joins wait (503) until it is done.
        self.rebuilding = False
        #: Creates and joins waiting for their script: a rebuild waits for them.
        self.in_flight = 0
        #: Redis's clock minus this node's, in seconds (from the last beat).
        self.offset = 0.0
        #: Times this node found itself fenced.
        self.fenced = 0
        #: When Redis last became reachable to this node (None: never yet).
        self.reached_at: float | None = None

    @property
    def alive(self) -> bool:
        """Whether this node is registered: other nodes may reap it, it may take requests."""
        return self.registered

    def want_rebuild(self) -> None:
        """Ask for a rebuild at the next beat."""
        self.rebuild_wanted = True

    def registered_as(self, epoch: str, generation: int) -> None:
        """REGISTER answered: this node is C{generation} of registry life C{epoch}."""
        self.epoch = epoch
        self.generation = generation
        self.registered = True
        self.confirmed = True

    def synchronise(self, redis_ms: int, sent: float, answered: float) -> None:
        """
        Redis's clock read C{redis_ms} somewhere between C{sent} and
        C{answered} (this node's clock, seconds): the offset between them.
        """
        self.offset = redis_ms / 1000.0 - (sent + answered) / 2

    def reached(self, now: float) -> None:
        """Redis became reachable to this node at C{now}."""
        self.reached_at = now

    def may_reap(self, now: float) -> bool:
        """
        Whether a lapsed heartbeat of another node means it is dead: not
        within one TTL of this node reaching Redis again, when the others
        may have been cut off from Redis as this one was (Redis itself
        down, stopped or unreachable) and are coming back too.
        """
        return self.reached_at is not None and now - self.reached_at >= self.heartbeat_ttl

    def redis_ms(self, now: float) -> int:
        """This node's C{now} on Redis's clock, in milliseconds (batches are stamped with it)."""
        return int((now + self.offset) * 1000)

    def refused(self, generation: int) -> bool:
        """
        Redis refused a script run under C{generation}; True if that is the
        current registration (so the node must act on it), False if it was
        already superseded (a stale answer).
        """
        if not self.registered or generation != self.generation:
            return False
        self.registered = False
        self.confirmed = False
        return True


class Incarnations:
    """
    The other nodes' generations that this node knows are dead (reaped or
    stopped, told by a GONE record): their batches are dropped.
    """

    def __init__(self) -> None:
        self.dead: dict[str, int] = {}

    def admits(self, node: str, generation: int) -> bool:
        """Whether a batch from C{generation} of C{node} is to be applied."""
        return generation > self.dead.get(node, 0)

    def died(self, node: str, generation: int) -> bool:
        """C{generation} of C{node} is dead; True if this is news."""
        if generation <= self.dead.get(node, 0):
            return False
        self.dead[node] = generation
        return True


class StallWatch:
    """
    Whether this process was stalled (stopped, swapped out, frozen) for
    longer than C{limit} seconds: a timer ticks it every beat; a read that
    finds the last tick too old knows that what it reads may have waited
    that long, and that other nodes may have reaped this one meanwhile.
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.last: float | None = None
        #: A stall found by a read before the timer saw it: reported at the next tick.
        self._pending = 0.0

    def stalled(self, now: float) -> bool:
        """Whether the last tick is older than the limit."""
        last = self.last
        return last is not None and now - last > self.limit

    def resumed(self, now: float) -> float:
        """A read found the stall and dealt with it: reads are fresh again from C{now}.  Returns the stall's length."""
        gap = 0.0 if self.last is None else now - self.last
        self._pending = max(self._pending, gap)
        self.last = now
        return gap

    def tick(self, now: float) -> float | None:
        """The timer's tick: the length of a stall since the last one, if there was one."""
        gap = 0.0 if self.last is None else now - self.last
        gap = max(gap, self._pending)
        self._pending = 0.0
        self.last = now
        return gap if gap > self.limit else None


class RoomFields:
    """
    Every field of each room's registry hash (C{ocm:{H}:room}) as this node
    last wrote or read it, by room id: what a rebuild writes back whole
    when Redis lost the room.  The registry's fields today are C{id},
    C{host}, C{node}, C{capacity}, C{password} and C{history}; a rule that
    keeps more state in the room (a ban list, a lock, a topic, mutes, the
    host moved) adds its fields here through
    L{ocm.cluster.registry.ClusterRegistry.set_fields}, and rebuilds keep
    them with no other change.
    """

    def __init__(self) -> None:
        self.rooms: dict[str, dict[str, str]] = {}

    def remember(self, room_id: str, fields: dict[str, str]) -> None:
        """The whole hash of room C{room_id}, as written or read."""
        self.rooms[room_id] = dict(fields)

    def update(self, room_id: str, fields: dict[str, str]) -> None:
        """Some fields of room C{room_id} changed."""
        self.rooms.setdefault(room_id, {}).update(fields)

    def of(self, room_id: str) -> dict[str, str] | None:
        """The fields of room C{room_id}, if known."""
        return self.rooms.get(room_id)

    def keep(self, room_ids: set[str]) -> None:
        """Forget the rooms not in C{room_ids} (no longer held)."""
        for room_id in [r for r in self.rooms if r not in room_ids]:
            del self.rooms[room_id]


def flat(fields: dict[str, str]) -> list[str]:
    """C{{k1: v1, k2: v2}} as C{[k1, v1, k2, v2]} (arguments of HSET)."""
    out: list[str] = []
    for name, value in fields.items():
        out += [name, value]
    return out


class Reachability:
    """
    Whether Redis is reachable, as one fact for all of a node's connections
    to it: reachable once every one of them is up, unreachable as soon as
    one is lost.  Each change is told once (the links log it and, when
    Redis is back, ask for one rebuild), so that connections coming back
    one by one neither flap nor rebuild more than once.
    """

    def __init__(self, links: tuple[str, ...]) -> None:
        self.links = frozenset(links)
        self.up: set[str] = set()
        self.reachable = False
        #: Unreachability was told (and not yet its end).
        self.told_down = False

    def link_up(self, link: str) -> str | None:
        """C{link} is up: C{"up"} (the first time), C{"back"} (after being told down), or None."""
        self.up.add(link)
        if self.reachable or self.up != self.links:
            return None
        self.reachable = True
        was_down, self.told_down = self.told_down, False
        return "back" if was_down else "up"

    def link_down(self, link: str) -> str | None:
        """C{link} is lost: C{"down"} if that makes Redis unreachable (told once), else None."""
        self.up.discard(link)
        if not self.reachable:
            return None
        self.reachable = False
        self.told_down = True
        return "down"

    def failed(self) -> str | None:
        """An attempt to reach Redis failed: C{"down"} if unreachability was not told yet (at start-up)."""
        if self.reachable or self.told_down:
            return None
        self.told_down = True
        return "down"
