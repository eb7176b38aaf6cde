"""
This node's connections to Redis, and the batches it publishes.

Three connections, each a L{Link} kept open to Redis's primary: one for the
registry's scripts (L{ocm.cluster.resp.CommandProtocol}), one subscribed to
this node's channel (L{ocm.cluster.resp.SubscriberProtocol}), and a lean
publishing connection that writes pre-encoded RESP once per batch
(L{Outbox}, L{PublisherProtocol}).  L{RedisLinks} owns them: one
reconnect policy for the three, one L{Reachability} (Redis is reachable when
all three are up: told once each way, one rebuild when it is back), and the
primary's address from a L{Target} (fixed, or followed through Sentinel).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ocm.backpressure import PausedFlag
from ocm.cluster import scripts
from ocm.cluster import wire as cw
from ocm.cluster.address import REPLY_TIMEOUT, RedisAddress
from ocm.cluster.resp import CommandProtocol, LinkOwner, SubscriberProtocol, handshake, script_sha
from ocm.cluster.state import Node, Reachability

log = Logger()

#: How long a batch may wait for more records (seconds).  One write per
#: reactor turn at the assignment's load is one loopback TCP send per
#: datagram or two, and those sends were a third of a node's CPU
#: (py-spy); gathering a millisecond's records costs at most 1 ms of
#: latency between nodes.  See the README's Performance section.
FLUSH_DELAY = 0.001

#: Reconnecting: the first retry after this many seconds, doubling to
#: L{RETRY_MAX} (each with up to 20% of jitter), back to the first once a
#: connection is up.
RETRY_FIRST = 0.1
RETRY_MAX = 2.0

#: The three connections, by the name each gives itself (C{ocm:<node>:<link>}).
LINKS = ("scripts", "sub", "pub")


class Target(Protocol):
    """Where Redis's primary is (L{ocm.cluster.address}): fixed, or followed through Sentinel."""

    def start(self, moved: Callable[[], None]) -> None:
        """Start following; C{moved} is called when the primary moved (the links reconnect)."""

    def stop(self) -> None:
        """Stop following."""

    def current(self) -> tuple[str, int] | None:
        """C{(host, port)} of the primary, or None while it is not known."""

    def endpoint(self, host: str, port: int) -> Any:
        """A client endpoint to C{host}:C{port} (TLS if the address says so)."""

    def stale(self) -> None:
        """A connection to L{current} failed, or found a replica: ask again."""

    def describe(self) -> str:
        """Where Redis is, for the logs (C{host:port})."""


class LinkEvents(Protocol):
    """What the links tell the rest of the node (L{ocm.cluster.service})."""

    def received(self, data: bytes) -> None:
        """One batch from another node."""

    def command_connected(self) -> None:
        """A script connection is up."""

    def refused(self, verdict: str, generation: int) -> None:
        """
        Redis refused a script run under C{generation}: C{verdict} is
        C{fenced} (the node was reaped) or C{lost} (Redis lost the registry).
        """


class Outbox:
    """
    The batches for the other nodes, one per destination node, written in
    one go (one PUBLISH each, one write in all) L{FLUSH_DELAY} after the
    first record: at most once per reactor turn.  Each batch is stamped with
    the node's generation and the time on Redis's clock.
    """

    def __init__(self, node: Node, clock: IReactorTime, write: Callable[[bytes], bool], delay: float = FLUSH_DELAY) -> None:
        self.node = node
        self.prefix = cw.origin_prefix(node.name)
        self.delay = delay
        self.clock = clock
        self.write = write
        self.pending: dict[str, list[bytes]] = {}
        #: History notices for each room's list in Redis: key -> (how many the room keeps, notices).
        self.history: dict[bytes, tuple[int, list[bytes]]] = {}
        self.scheduled = False
        #: Batches written, and batches dropped (no connection, or Redis behind).
        self.sent = 0
        self.dropped = 0

    def add(self, node: str, record: bytes) -> None:
        """Queue C{record} for C{node}."""
        batch = self.pending.get(node)
        if batch is None:
            self.pending[node] = [record]
            if not self.scheduled:
                self.scheduled = True
                self.clock.callLater(self.delay, self.flush)
        else:
            batch.append(record)

    def remember(self, key: bytes, size: int, notice: bytes) -> None:
        """Queue C{notice} for the history list C{key} (a room keeping C{size} messages)."""
        entry = self.history.get(key)
        if entry is None:
            self.history[key] = (size, [notice])
            if not self.scheduled:
                self.scheduled = True
                self.clock.callLater(self.delay, self.flush)
        else:
            entry[1].append(notice)

    def flush(self) -> None:
        """
        Write every pending batch (one PUBLISH each) and every room's new
        history (one RPUSH and one LTRIM each): one write in all.
        """
        self.scheduled = False
        pending, self.pending = self.pending, {}
        history, self.history = self.history, {}
        if not pending and not history:
            return
        node = self.node
        header = self.prefix + cw.stamp(node.generation, node.redis_ms(self.clock.seconds()))
        data = b"".join(cw.resp_command(b"PUBLISH", cw.channel(node), header + b"".join(records)) for node, records in pending.items())
        if history:
            data += b"".join(
                cw.resp_command(b"RPUSH", key, *notices) + cw.resp_command(b"LTRIM", key, b"%d" % -size, b"-1") for key, (size, notices) in history.items()
            )
        if self.write(data):
            self.sent += len(pending)
        else:
            self.dropped += len(pending)

    def discard(self) -> None:
        """Forget the pending records and history (they belong to a generation that is dead)."""
        self.dropped += len(self.pending)
        self.pending = {}
        self.history = {}


class PublisherProtocol(PausedFlag, protocol.Protocol):
    """
    The publishing connection: writes pre-encoded commands, reads and
    discards their replies (one line each), and stops taking batches while
    the kernel's send buffer is full (a streaming producer), so that a slow
    Redis costs datagrams, never memory.
    """

    def __init__(self, owner: Link, start: list[bytes]) -> None:
        self.owner = owner
        self.start = start
        self.pending = len(start)
        self.paused = False
        self.is_ready = False
        self._buffer = b""
        self._reported: str | None = None

    def connectionMade(self) -> None:
        """Send the handshake; take batches once it is answered."""
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.transport.write(b"".join(self.start))  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        """Replies: the handshake's, then an integer per PUBLISH; an error is logged."""
        buffer = self._buffer + data
        lines = buffer.split(b"\r\n")
        self._buffer = lines.pop()
        for line in lines:
            if self.pending:
                self.pending -= 1
                if line.startswith(b"-"):
                    self.owner.refused(self, line[1:].decode("utf-8", "replace"))
                    self.transport.abortConnection()  # type: ignore[union-attr]
                    return
                if not self.pending:
                    self.is_ready = True
                    self.owner.ready(self)
            elif line.startswith(b"-"):
                self.error(line[1:].decode("utf-8", "replace"))

    def write(self, data: bytes) -> bool:
        """Write one batch of commands; False if it was dropped."""
        if not self.is_ready or self.paused:
            return False
        self.transport.write(data)  # type: ignore[union-attr]
        return True

    def error(self, message: str) -> None:
        """Redis refused a PUBLISH (logged once per kind of message)."""
        if message != self._reported:
            self._reported = message
            log.error("Redis refused a PUBLISH: {message}", message=message)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Batches are dropped until the next connection."""
        self.is_ready = False
        self.owner.lost(self)


class Link(LinkOwner):
    """
    One connection to Redis's primary, kept open: made to the links'
    L{Target}, made again after a loss (at once, then with a growing delay
    while attempts fail), dropped on demand (the primary moved).
    """

    noisy = False

    def __init__(self, links: RedisLinks, name: str, build: Callable[[Link], Any]) -> None:
        self.links = links
        self.name = name
        self.build = build
        self.proto: Any = None
        #: Where it connects, or connected, to.
        self.where: tuple[str, int] | None = None
        self.connecting = False
        self.stopped = False
        self.attempt = 0
        self._retry: IDelayedCall | None = None
        self._gone: list[defer.Deferred[None]] = []

    @property
    def up(self) -> bool:
        """Whether the connection is there and past its handshake."""
        return self.proto is not None and self.proto.is_ready

    def buildProtocol(self, addr: Any) -> Any:
        """The connection's protocol."""
        return self.build(self)

    def connect(self) -> None:
        """Connect to the primary, unless connected, connecting or stopped."""
        self._retry = None
        if self.stopped or self.connecting or self.proto is not None:
            return
        where = self.links.target.current()
        if where is None:  # Sentinel has not said where the primary is (yet): ask again
            self.links.link_failed(self, "no primary known")
            self._schedule()
            return
        self.connecting = True
        self.where = where
        d = self.links.target.endpoint(*where).connect(self)
        d.addCallbacks(self._connected, self._failed)

    def _connected(self, proto: Any) -> None:
        self.connecting = False
        self.proto = proto
        if self.stopped or self.where != self.links.target.current():
            proto.transport.abortConnection()  # stopped, or the primary moved while connecting

    def _failed(self, failure: Failure) -> None:
        self.connecting = False
        self.links.link_failed(self, failure.getErrorMessage())
        self._schedule()

    def _schedule(self) -> None:
        if self.stopped or self._retry is not None:
            return
        delay = min(RETRY_MAX, RETRY_FIRST * 2**self.attempt) * random.uniform(0.8, 1.0)
        self.attempt += 1
        self._retry = self.links.clock.callLater(delay, self.connect)

    def ready(self, proto: Any) -> None:
        """See L{LinkOwner.ready}."""
        if proto is not self.proto:
            return
        if self.where != self.links.target.current():  # the primary moved during the handshake
            proto.transport.abortConnection()
            return
        self.attempt = 0
        self.links.link_up(self)

    def refused(self, proto: Any, error: str) -> None:
        """See L{LinkOwner.refused}."""
        self.links.link_refused(self, error)

    def lost(self, proto: Any) -> None:
        """See L{LinkOwner.lost}: connect again, at once the first time."""
        if proto is not self.proto:
            return
        log.debug("connection {name} to {where} lost", name=self.name, where=self.where)
        self.proto = None
        gone, self._gone = self._gone, []
        for d in gone:
            d.callback(None)
        self.links.link_down(self)
        if not self.stopped:
            if self.attempt == 0:
                self.attempt = 1
                self._retry = self.links.clock.callLater(0, self.connect)
            else:
                self._schedule()

    def drop(self) -> None:
        """Close the connection now (it is made again, to wherever the primary is)."""
        if self.proto is not None and self.proto.transport is not None:
            log.debug("dropping connection {name} to {where}", name=self.name, where=self.where)
            self.proto.transport.abortConnection()

    def stop(self) -> defer.Deferred[None]:
        """Stop connecting; close the connection; fire once it is closed."""
        self.stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self.proto is None or self.proto.transport is None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._gone.append(d)
        self.proto.transport.loseConnection()
        return d

    def abort(self) -> None:
        """Close it without waiting for the peer (a TLS close waits for the peer's close_notify)."""
        self.drop()


class RedisLinks:
    """
    The three connections to Redis, for as long as the node runs: scripts
    (L{eval}, L{run}, L{fire}, L{script}, L{call}), the subscription
    (batches to the events), and the publisher (L{outbox}).
    """

    def __init__(self, address: RedisAddress, clock: Any, node: Node) -> None:
        self.address = address
        self.clock = clock
        self.node = node
        #: Where the primary is (fixed, or followed through Sentinel).
        self.target: Target = address.target(clock)
        self.outbox: Outbox | None = None
        self.events: LinkEvents | None = None
        self.reach = Reachability(LINKS)
        self.command_link = Link(self, "scripts", self._command_protocol)
        self.subscriber_link = Link(self, "sub", self._subscriber_protocol)
        self.publisher_link = Link(self, "pub", self._publisher_protocol)
        self.links = (self.command_link, self.subscriber_link, self.publisher_link)
        self._refusals: set[str] = set()
        self._shas: dict[str, str] = {}
        #: Registry updates made beside the chat path, not answered yet.
        self.pending: set[defer.Deferred[Any]] = set()

    def _handshake(self, link: str) -> list[bytes]:
        return handshake(self.address.password, self.address.db if link == "scripts" else None, connection_name(self.node.name, link))

    def _command_protocol(self, link: Link) -> CommandProtocol:
        return CommandProtocol(link, self.clock, self._handshake("scripts"), REPLY_TIMEOUT, primary=True)

    def _subscriber_protocol(self, link: Link) -> SubscriberProtocol:
        return SubscriberProtocol(link, self._handshake("sub"), cw.channel(self.node.name), self.received)

    def _publisher_protocol(self, link: Link) -> PublisherProtocol:
        return PublisherProtocol(link, self._handshake("pub"))

    def start(self, events: LinkEvents) -> None:
        """Connect; tell C{events} of batches from other nodes, new script connections, refusals."""
        assert self.node.name, "the node needs a name"
        self.events = events
        self.outbox = Outbox(self.node, self.clock, self._publish)
        self.target.start(self.moved)
        for link in self.links:
            link.connect()

    async def stop(self) -> None:
        """Drop the connections (a TLS close is not waited for beyond 1 s)."""
        self.target.stop()
        await self.bounded(defer.DeferredList([link.stop() for link in self.links], consumeErrors=True), 1.0)
        for link in self.links:
            link.abort()

    async def bounded(self, d: Any, seconds: float = REPLY_TIMEOUT) -> Any:
        """Wait for C{d} at most C{seconds}; None if it failed or took longer."""
        d = as_deferred(d)
        d.addTimeout(seconds, self.clock)
        try:
            return await d
        except Exception:
            return None

    @property
    def command_up(self) -> bool:
        """Whether the script connection is there."""
        return self.command_link.up

    @property
    def subscribed(self) -> bool:
        """Whether this node reads its channel."""
        return self.subscriber_link.up

    @property
    def reachable(self) -> bool:
        """Whether all three connections are up."""
        return self.reach.reachable

    @property
    def ready(self) -> bool:
        """Whether the node can take TCRP requests: Redis reachable, leftovers reaped, registered and confirmed since."""
        return self.reach.reachable and self.node.clean and self.node.registered and self.node.confirmed

    def moved(self) -> None:
        """The primary moved (Sentinel): every connection is made again, to it."""
        log.warn("Redis's primary moved to {where}: reconnecting", where=self.target.describe())
        for link in self.links:
            link.drop()

    def _tell(self, change: str | None) -> None:
        where = self.target.describe()
        if change == "down":
            self.node.confirmed = False  # until Redis confirms the registration again
            log.error(
                "Redis at {where} unreachable: relaying among this node's members only, room requests answered 503, reconnecting",
                where=where,
                node=self.node.name,
            )
        elif change is not None:
            log.info("Redis at {where} reachable" + (" again" if change == "back" else ""), where=where, node=self.node.name)
            self.node.reached(self.clock.seconds())
            self._refusals.clear()
            self.node.want_rebuild()

    def link_up(self, link: Link) -> None:
        """A connection is up (past its handshake)."""
        self._tell(self.reach.link_up(link.name))
        if link is self.command_link and self.events is not None:
            self.events.command_connected()

    def link_down(self, link: Link) -> None:
        """
        A connection is lost (it is being made again).  The script
        connection lost (Redis not answering, or gone): the publishing
        connection is made again too, so that batches it may still hold
        do not reach Redis late.
        """
        if link.stopped:  # the node is stopping: nothing to tell
            return
        self._tell(self.reach.link_down(link.name))
        if link is self.command_link:
            self.publisher_link.drop()

    def link_failed(self, link: Link, error: str) -> None:
        """A connection attempt failed."""
        self.target.stale()
        self._tell(self.reach.failed())

    def link_refused(self, link: Link, error: str) -> None:
        """Redis refused a connection's handshake (logged once per kind of refusal)."""
        if error not in self._refusals:
            self._refusals.add(error)
            log.error("Redis at {where} refused this node's connection: {error}", where=self.target.describe(), error=error)
        if error.startswith("READONLY"):  # a primary that Sentinel has made a replica: ask where the primary is now
            self.target.stale()
        self._tell(self.reach.failed())

    def redis_lost(self) -> None:
        """A request found the registry unusable: say once that Redis is out of reach, if that is why."""
        self._tell(self.reach.failed() if not self.reach.reachable else None)

    def received(self, data: bytes) -> None:
        """One batch from another node."""
        if self.events is not None:
            self.events.received(data)

    def _publish(self, data: bytes) -> bool:
        proto = self.publisher_link.proto
        return proto is not None and proto.write(data)

    def eval(self, script: str, *args: Any) -> defer.Deferred[Any]:
        """Run a registry script; an error reply fails the Deferred with L{ocm.cluster.resp.RedisError}."""
        proto = self.command_link.proto
        if proto is None or not proto.is_ready:
            return defer.fail(ConnectionError(f"Redis at {self.target.describe()} is unreachable"))
        sha = self._shas.get(script)
        if sha is None:
            sha = self._shas[script] = script_sha(script)

        def demoted(failure: Failure) -> Failure:
            # the primary became a replica (a failover): ask where the primary is, reconnect
            if failure.getErrorMessage().startswith("READONLY"):
                self.target.stale()
                if self.command_link.proto is proto:  # not a late answer on a connection already replaced
                    self.command_link.drop()
            return failure

        return proto.evaluate(script, sha, *args).addErrback(demoted)  # type: ignore[no-any-return]

    def call(self, *parts: Any) -> defer.Deferred[Any]:
        """Run one plain command on the script connection."""
        proto = self.command_link.proto
        if proto is None or not proto.is_ready:
            return defer.fail(ConnectionError(f"Redis at {self.target.describe()} is unreachable"))
        return proto.execute(*parts)  # type: ignore[no-any-return]

    def run(self, script: str, *args: Any) -> defer.Deferred[Any]:
        """
        Run a registry script under this node's registration (its name,
        epoch and generation first: L{scripts.CHECKED}); a refusal (fenced,
        lost) is told to the events, and fails the Deferred.
        """
        node = self.node
        generation = node.generation

        def refused(failure: Failure) -> Failure:
            text = failure.getErrorMessage()
            if self.events is not None:
                if text.startswith(scripts.FENCED):
                    self.events.refused("fenced", generation)
                elif text.startswith(scripts.LOST):
                    self.events.refused("lost", generation)
            return failure

        return self.eval(script, node.name, node.epoch, generation, *args).addErrback(refused)

    def fire(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        """Track a registry update made beside the chat path; a failure asks for a rebuild."""
        self.pending.add(d)

        def done(result: Any) -> Any:
            self.pending.discard(d)
            if isinstance(result, Failure):
                self.node.want_rebuild()
                log.debug("a registry update failed: {error}", error=result.getErrorMessage())
                return None
            return result

        return d.addBoth(done)

    def script(self, script: str, *args: Any) -> defer.Deferred[Any]:
        """
        Run a registry update (L{run}) if Redis is there and this node is
        registered; otherwise a rebuild will redo it (or, if the node was
        fenced, nothing is left to redo).
        """
        if not self.command_up or not self.node.registered:
            self.node.want_rebuild()
            return defer.succeed(None)
        return self.fire(self.run(script, *args))

    def tell(self, node: str, record: bytes) -> None:
        """Queue C{record} for C{node}'s next batch."""
        self.outbox.add(node, record)  # type: ignore[union-attr]

    def remember(self, room: str, size: int, notice: bytes) -> None:
        """Queue C{notice} for the history list of room C{room} (keeping C{size} messages), in the next batch's write."""
        self.outbox.remember(scripts.room_key(room, "history").encode("utf-8"), size, notice)  # type: ignore[union-attr]


def connection_name(node: str, link: str) -> str:
    """
    The name (C{CLIENT SETNAME}) of one of C{node}'s connections: C{ocm:<node>:<link>},
    any character Redis refuses in a name (space, control) replaced by C{_}.
    """
    safe = "".join(c if c.isprintable() and not c.isspace() else "_" for c in node)
    return f"ocm:{safe}:{link}"


def as_deferred(value: Any) -> defer.Deferred[Any]:
    """C{value} as a Deferred (some stops return one, some None)."""
    return value if isinstance(value, defer.Deferred) else defer.succeed(value)
