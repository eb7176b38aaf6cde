"""
This node's connections to Redis, and the batches it publishes.

Three connections: txredisapi for the registry's scripts and for the
subscription to this node's channel (Twisted-native, reconnecting with
backoff), and a lean publishing connection that writes pre-encoded RESP
once per batch (L{Outbox}).  L{RedisLinks} owns them, runs the scripts,
and says once when Redis is out of reach and once when it is back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ocm.backpressure import PausedFlag
from ocm.cluster import scripts
from ocm.cluster import wire as cw
from ocm.cluster.address import REPLY_TIMEOUT, RedisAddress
from ocm.cluster.state import Node

log = Logger()

#: How long a batch may wait for more records (seconds).  One write per
#: reactor turn at the assignment's load is one loopback TCP send per
#: datagram or two, and those sends were a third of a node's CPU
#: (py-spy); gathering a millisecond's records costs at most 1 ms of
#: latency between nodes.  See the README's Performance section.
FLUSH_DELAY = 0.001


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

    def flush(self) -> None:
        """Write every pending batch: one PUBLISH each, one write in all."""
        self.scheduled = False
        pending, self.pending = self.pending, {}
        if not pending:
            return
        node = self.node
        header = self.prefix + cw.stamp(node.generation, node.redis_ms(self.clock.seconds()))
        data = b"".join(cw.resp_command(b"PUBLISH", cw.channel(node), header + b"".join(records)) for node, records in pending.items())
        if self.write(data):
            self.sent += len(pending)
        else:
            self.dropped += len(pending)

    def discard(self) -> None:
        """Forget the pending records (they belong to a generation that is dead)."""
        self.dropped += len(self.pending)
        self.pending = {}


class PublisherProtocol(PausedFlag, protocol.Protocol):
    """
    The publishing connection: writes pre-encoded commands, reads and
    discards their replies (one line each), and stops taking batches while
    the kernel's send buffer is full (a streaming producer), so that a slow
    Redis costs datagrams, never memory.
    """

    def __init__(self, link: Publisher) -> None:
        self.link = link
        self.paused = False
        self._buffer = b""

    def connectionMade(self) -> None:
        """Authenticate if asked, then take batches."""
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        if self.link.password is not None:
            self.transport.write(cw.resp_command(b"AUTH", self.link.password.encode("utf-8")))  # type: ignore[union-attr]
        self.link.connected(self)

    def dataReceived(self, data: bytes) -> None:
        """Replies: an integer per PUBLISH; an error is logged."""
        buffer = self._buffer + data
        lines = buffer.split(b"\r\n")
        self._buffer = lines.pop()
        for line in lines:
            if line.startswith(b"-"):
                self.link.error(line[1:].decode("utf-8", "replace"))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Batches are dropped until the next connection."""
        self.link.disconnected(self)


class Publisher(protocol.Factory):
    """Keeps one publishing connection open (reconnecting with backoff)."""

    def __init__(self, address: RedisAddress, clock: Any, on_connect: Callable[[], None]) -> None:
        self.password = address.password
        self.on_connect = on_connect
        self.current: PublisherProtocol | None = None
        self.service = ClientService(address.endpoint(clock), self, retryPolicy=backoffPolicy(0.5, 10.0), clock=clock)
        self._reported: str | None = None

    def buildProtocol(self, addr: Any) -> PublisherProtocol:
        """A new publishing connection."""
        return PublisherProtocol(self)

    def write(self, data: bytes) -> bool:
        """Write one batch of commands; False if it was dropped."""
        current = self.current
        if current is None or current.paused:
            return False
        current.transport.write(data)  # type: ignore[union-attr]
        return True

    def connected(self, proto: PublisherProtocol) -> None:
        """A connection is up."""
        self.current = proto
        self.on_connect()

    def disconnected(self, proto: PublisherProtocol) -> None:
        """A connection is gone."""
        if self.current is proto:
            self.current = None

    def error(self, message: str) -> None:
        """Redis refused a PUBLISH (logged once per kind of message)."""
        if message != self._reported:
            self._reported = message
            log.error("Redis refused a PUBLISH: {message}", message=message)


class BatchSubscriber(txredisapi.SubscriberProtocol):
    """Reads this node's channel; subscribes again on every new connection."""

    links: RedisLinks

    def connectionMade(self) -> Any:
        """Subscribe once the connection is usable."""
        d = super().connectionMade()
        self.whenConnected().addCallback(lambda proto: self.factory.links.subscriber_ready(proto))
        return d

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        """One batch from another node."""
        self.factory.links.received(message)

    def connectionLost(self, why: Failure) -> None:
        """Until the next connection, no batch arrives."""
        super().connectionLost(why)
        self.factory.links.subscriber_lost(self)


class CommandFactory(txredisapi.RedisFactory):
    """txredisapi's factory, telling the links of each new connection and each lost one."""

    on_connect: Callable[[], None]
    on_disconnect: Callable[[], None]

    def addConnection(self, conn: Any) -> None:
        """A connection joined the pool."""
        super().addConnection(conn)
        if conn.connected:
            self.on_connect()

    def delConnection(self, conn: Any) -> None:
        """A connection left the pool (txredisapi reconnects, with backoff)."""
        super().delConnection(conn)
        if not self.stopped:
            self.on_disconnect()


class RedisLinks:
    """
    The three connections to Redis, for as long as the node runs: scripts
    (L{eval}, L{fire}, L{script}), the subscription (batches to
    C{received}), and the publisher (L{outbox}).
    """

    def __init__(self, address: RedisAddress, clock: Any, node: Node) -> None:
        self.address = address
        self.clock = clock
        self.node = node
        self.outbox: Outbox | None = None
        self.command: Any = None
        self.subscribed = False
        self.publisher: Publisher | None = None
        self._command_factory: CommandFactory | None = None
        self._subscriber_factory: Any = None
        self.events: LinkEvents | None = None
        self._down_reported = False
        #: Registry updates made beside the chat path, not answered yet.
        self.pending: set[defer.Deferred[Any]] = set()

    def start(self, events: LinkEvents) -> None:
        """Connect; tell C{events} of batches from other nodes, new script connections, refusals."""
        assert self.node.name, "the node needs a name"
        self.events = events
        self.outbox = Outbox(self.node, self.clock, self._publish)
        address = self.address
        factory = CommandFactory(
            f"{address.host}:{address.port}", address.db, 1, isLazy=True, password=address.password, replyTimeout=REPLY_TIMEOUT
        )
        factory.on_connect = self._connected
        factory.on_disconnect = self.redis_lost
        factory.startConnecting(address.endpoint(self.clock))
        self._command_factory = factory
        self.command = factory.handler
        subscriber = txredisapi.SubscriberFactory(isLazy=True)
        subscriber.protocol = BatchSubscriber
        subscriber.charset = None  # batches are bytes
        subscriber.convertNumbers = False
        subscriber.password = address.password
        subscriber.links = self
        subscriber.startConnecting(address.endpoint(self.clock))
        self._subscriber_factory = subscriber
        self.publisher = Publisher(address, self.clock, self.node.want_rebuild)
        self.publisher.service.startService()

    async def stop(self) -> None:
        """Drop the connections (a TLS close is not waited for beyond 1 s)."""
        stops: list[defer.Deferred[Any]] = []
        if self.publisher is not None:
            stops.append(as_deferred(self.publisher.service.stopService()))
        for factory in (self._command_factory, self._subscriber_factory):
            if factory is not None:
                stops.append(factory.disconnect())
        await self.bounded(defer.DeferredList(stops, consumeErrors=True), 1.0)
        # A TLS connection waits for the peer's close_notify: do not wait longer.
        for factory in (self._command_factory, self._subscriber_factory):
            for conn in list(getattr(factory, "pool", ())):
                if conn.transport is not None:
                    conn.transport.abortConnection()
        if self.publisher is not None and self.publisher.current is not None:
            self.publisher.current.transport.abortConnection()  # type: ignore[union-attr]

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
        return self._command_factory is not None and self._command_factory.size > 0

    @property
    def ready(self) -> bool:
        """Whether the node can take TCRP requests: every connection up, leftovers reaped, beating."""
        return (
            self.command_up
            and self.subscribed
            and self.node.clean
            and self.node.registered
            and self.publisher is not None
            and self.publisher.current is not None
        )

    def redis_lost(self) -> None:
        """Say once that Redis is out of reach (and again only after it came back)."""
        if not self._down_reported:
            self._down_reported = True
            log.error(
                "Redis at {host}:{port} unreachable: relaying among this node's members only, room requests answered 503, reconnecting",
                host=self.address.host,
                port=self.address.port,
            )

    def _connected(self) -> None:
        self.node.want_rebuild()
        if self.events is not None:
            self.events.command_connected()

    def received(self, data: bytes) -> None:
        """One batch from another node."""
        if self.events is not None:
            self.events.received(data)

    def subscriber_ready(self, proto: Any) -> None:
        """The subscriber connected: subscribe to this node's channel."""

        def subscribed(_: Any) -> None:
            self.subscribed = True
            self.node.want_rebuild()

        def failed(failure: Failure) -> None:
            log.error("subscribing to {channel} failed: {error}", channel=cw.channel(self.node.name), error=failure.getErrorMessage())
            proto.transport.loseConnection()

        d = proto.execute_command("CLIENT", "SETNAME", connection_name(self.node.name, "sub"))
        d.addBoth(lambda _: proto.subscribe(cw.channel(self.node.name).decode("utf-8"))).addCallbacks(subscribed, failed)

    def subscriber_lost(self, proto: Any) -> None:
        """The subscriber's connection is gone (txredisapi reconnects)."""
        self.subscribed = False

    def _publish(self, data: bytes) -> bool:
        return self.publisher is not None and self.publisher.write(data)

    def eval(self, script: str, *args: Any) -> defer.Deferred[Any]:
        """Run a registry script; an error reply fails the Deferred."""
        d = self.command.eval(script, [], [str(a) for a in args])

        def check(result: Any) -> Any:
            if isinstance(result, Exception):
                raise result
            return result

        return d.addCallback(check)  # type: ignore[no-any-return]

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
            if self._down_reported:
                self._down_reported = False
                log.info("Redis reachable again")
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
