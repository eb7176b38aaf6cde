"""
Several ocm nodes serving one set of rooms, on Redis (C{--redis}).

Each node keeps its own members in its in-memory L{Rooms} (the node that
issued a token holds that member, so a datagram is checked against local
state and fanned out to local members at once, never waiting for Redis).
Redis holds what the nodes share (L{ocm.clusterscripts}):

 - the room registry, changed only by Lua scripts, so that races are decided
   atomically in Redis (L{RedisCluster} is the TCRP side's L{Registry});
 - node heartbeats with a TTL: a node whose heartbeat lapsed is reaped by
   the first other node to notice, its members removed, its rooms closed;
 - pub/sub: each node reads one channel of its own, and each other node
   writes it at most one PUBLISH per reactor turn, a batch of every chat
   datagram and membership event of that turn for rooms both share
   (L{ocm.clusterwire}).

Three connections to Redis: txredisapi for the scripts and the
subscription (Twisted-native, reconnecting with backoff), and a lean
publishing connection that writes pre-encoded RESP once per batch.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

import txredisapi
from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ocm import clusterscripts as scripts
from ocm import clusterwire as cw
from ocm.passwords import PasswordHash
from ocm.rooms import Member, Peers, Room, RoomError, Rooms, Sends
from ocm.sending import PausedFlag

log = Logger()

#: Seconds a Redis command may take before the node counts Redis as down.
REPLY_TIMEOUT = 3.0
#: What a TCRP client is told while Redis is unreachable (503).
UNREACHABLE = "the room registry (Redis) is unreachable; try again shortly"
#: Why the members of a node that died or stopped leave the others' rooms.
NODE_GONE = "unreachable"
#: How long a batch may wait for more records (seconds).  One write per
#: reactor turn at the assignment's load is one loopback TCP send per
#: datagram or two, and those sends were a third of a node's CPU
#: (py-spy); gathering a millisecond's records costs at most 1 ms of
#: latency between nodes.  See the README's Performance section.
FLUSH_DELAY = 0.001


@dataclass(frozen=True)
class RedisAddress:
    """
    Where Redis is, from a C{redis://[:password@]host[:port][/db]} URL
    (C{rediss://}: over TLS, the certificate checked for C{host} against
    C{ca}, a PEM file, or the system's trust store).
    """

    host: str
    port: int
    db: int
    password: str | None
    tls: bool = False
    ca: str | None = None

    @classmethod
    def parse(cls, url: str, ca: str | None = None) -> RedisAddress:
        """Parse C{url}; raise ValueError for anything but a redis:// or rediss:// URL."""
        parts = urlparse(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(f"{url!r} is not a redis://host[:port][/db] (or rediss://) URL")
        path = parts.path.strip("/")
        db = int(path) if path else 0
        password = unquote(parts.password) if parts.password else None
        return cls(parts.hostname, parts.port or 6379, db, password, parts.scheme == "rediss", ca)

    def endpoint(self, reactor: Any) -> Any:
        """A client endpoint to Redis (through TLS for C{rediss://})."""
        endpoint: Any = TCP4ClientEndpoint(reactor, self.host, self.port, timeout=REPLY_TIMEOUT)
        if self.tls:
            from ocm.tls import client_options

            endpoint = wrapClientTLS(client_options(self.host, self.ca), endpoint)
        return endpoint


def encode_password(password: PasswordHash | None) -> str:
    """A password hash as the registry keeps it (never the clear text): C{scheme$salt$digest} in hex."""
    if password is None:
        return ""
    return f"{password.scheme}${password.salt.hex()}${password.digest.hex()}"


def decode_password(text: str) -> PasswordHash | None:
    """The inverse of L{encode_password}."""
    if not text:
        return None
    scheme, salt, digest = text.split("$")
    return PasswordHash(bytes.fromhex(salt), bytes.fromhex(digest), scheme)


def pairs(flat: list[Any]) -> list[tuple[str, str]]:
    """C{[k1, v1, k2, v2]} as C{[(k1, v1), (k2, v2)]} (a Redis HGETALL reply)."""
    return list(zip(flat[::2], flat[1::2]))  # noqa: B905 (Python 3.9 has no strict=)


@dataclass(frozen=True)
class SharedRoom:
    """A room as the registry knows it: what a join needs before the password check."""

    name: str
    id: str
    host: str
    password: PasswordHash | None
    capacity: int | None
    history: int = 0


class Outbox:
    """
    The batches for the other nodes, one per destination node, written in
    one go (one PUBLISH each, one write in all) L{FLUSH_DELAY} after the
    first record: at most once per reactor turn.
    """

    def __init__(self, node: str, clock: IReactorTime, write: Callable[[bytes], bool], delay: float = FLUSH_DELAY) -> None:
        self.header = cw.batch_header(node)
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
        header = self.header
        data = b"".join(cw.resp_command(b"PUBLISH", cw.channel(node), header + b"".join(records)) for node, records in pending.items())
        if self.write(data):
            self.sent += len(pending)
        else:
            self.dropped += len(pending)


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

    cluster: RedisCluster

    def connectionMade(self) -> Any:
        """Subscribe once the connection is usable."""
        d = super().connectionMade()
        self.whenConnected().addCallback(lambda proto: self.factory.cluster.subscriber_ready(proto))
        return d

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        """One batch from another node."""
        self.factory.cluster.received(message)

    def connectionLost(self, why: Failure) -> None:
        """Until the next connection, no batch arrives."""
        super().connectionLost(why)
        self.factory.cluster.subscriber_lost(self)


class CommandFactory(txredisapi.RedisFactory):
    """txredisapi's factory, telling the cluster of each new connection and each lost one."""

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


class RedisCluster(Peers):
    """
    This node's part of a cluster: the L{Registry} the TCRP server asks,
    and the L{Peers} the rooms tell (both through Redis).
    """

    shared = True

    def __init__(self, rooms: Rooms, address: RedisAddress, clock: Any, node: str = "", heartbeat_ttl: float | None = None) -> None:
        self.rooms = rooms
        self.address = address
        self.clock = clock
        self.node = node
        #: The relay (set by L{ocm.tap}): writes what other nodes send here.
        self.relay: Any = None
        ttl = heartbeat_ttl if heartbeat_ttl is not None else rooms.timeout
        #: The heartbeat key's TTL; a node silent that long is reaped.
        self.heartbeat_ttl = ttl
        #: How often the heartbeat is written (and dead nodes looked for).
        self.beat_interval = min(1.0, ttl / 4)
        self.outbox: Outbox | None = None
        self.command: Any = None
        self._command_factory: CommandFactory | None = None
        self._subscriber_factory: Any = None
        self.publisher: Publisher | None = None
        self.subscribed = False
        self.clean = False  # this node's leftovers of a previous run reaped
        self.alive = False  # its heartbeat written once: other nodes can reap it
        self._rebuild_wanted = True
        self._down_reported = False
        self._pending: set[defer.Deferred[Any]] = set()
        self._missing_since: dict[str, float] = {}
        #: Creates and joins waiting for their script: a rebuild waits for them.
        self._in_flight = 0
        #: A rebuild is running: creates and joins wait (503) until it is done.
        self._rebuilding = False
        self._beat: task.LoopingCall | None = None
        self._beating = False
        rooms.peers = self

    # Connections

    def start(self) -> None:
        """Connect to Redis (three connections) and start the heartbeat."""
        assert self.node, "the node needs a name"
        self.outbox = Outbox(self.node, self.clock, self._publish)
        address = self.address
        endpoint = address.endpoint(self.clock)
        factory = CommandFactory(
            f"{address.host}:{address.port}", address.db, 1, isLazy=True, password=address.password, replyTimeout=REPLY_TIMEOUT
        )
        factory.on_connect = self._command_connected
        factory.on_disconnect = self._redis_lost
        factory.startConnecting(endpoint)
        self._command_factory = factory
        self.command = factory.handler
        subscriber = txredisapi.SubscriberFactory(isLazy=True)
        subscriber.protocol = BatchSubscriber
        subscriber.charset = None  # batches are bytes
        subscriber.convertNumbers = False
        subscriber.password = address.password
        subscriber.cluster = self
        subscriber.startConnecting(address.endpoint(self.clock))
        self._subscriber_factory = subscriber
        self.publisher = Publisher(address, self.clock, self._want_rebuild)
        self.publisher.service.startService()
        self._beat = task.LoopingCall(self._guarded_beat)
        self._beat.clock = self.clock
        self._beat.start(self.beat_interval, now=False)

    async def stop(self) -> None:
        """
        Leave the cluster: flush the last batches (the shutdown notices), let
        the last scripts finish, take this node's members and rooms out of
        the registry, drop the connections.
        """
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        if self.outbox is not None:
            self.outbox.flush()
        if self._pending:
            await self._bounded(defer.DeferredList(list(self._pending), consumeErrors=True))
        if self.outbox is not None:
            self.outbox.flush()  # what those scripts' answers added (a close's other nodes)
        if self.ready:
            await self._bounded(self._eval(scripts.REAP, self.node, "gone"))
            await self._bounded(self.command.delete(f"ocm:alive:{self.node}"))
        stops: list[defer.Deferred[Any]] = []
        if self.publisher is not None:
            stops.append(_as_deferred(self.publisher.service.stopService()))
        for factory in (self._command_factory, self._subscriber_factory):
            if factory is not None:
                stops.append(factory.disconnect())
        await self._bounded(defer.DeferredList(stops, consumeErrors=True), 1.0)
        # A TLS connection waits for the peer's close_notify: do not wait longer.
        for factory in (self._command_factory, self._subscriber_factory):
            for conn in list(getattr(factory, "pool", ())):
                if conn.transport is not None:
                    conn.transport.abortConnection()
        if self.publisher is not None and self.publisher.current is not None:
            self.publisher.current.transport.abortConnection()  # type: ignore[union-attr]

    async def _bounded(self, d: Any, seconds: float = REPLY_TIMEOUT) -> Any:
        d = _as_deferred(d)
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
        """Whether the node can take TCRP requests: every connection up, leftovers reaped."""
        return (
            self.command_up
            and self.subscribed
            and self.clean
            and self.alive
            and self.publisher is not None
            and self.publisher.current is not None
        )

    def _check_up(self) -> None:
        if self._rebuilding:
            raise RoomError(503, "the room registry is being rebuilt; try again in a moment")
        if not self.ready:
            self._redis_lost()
            raise RoomError(503, UNREACHABLE)

    def _redis_lost(self) -> None:
        """Say once that Redis is out of reach (and again only after it came back)."""
        if not self._down_reported:
            self._down_reported = True
            log.error(
                "Redis at {host}:{port} unreachable: relaying among this node's members only, room requests answered 503, reconnecting",
                host=self.address.host,
                port=self.address.port,
            )

    def _command_connected(self) -> None:
        self._want_rebuild()
        self._reap_leftovers()

    def _reap_leftovers(self) -> None:
        """Once, at start: what a previous run of this node left in the registry goes."""
        if self.clean or self._beating:
            return
        self._beating = True

        def reaped(result: Any) -> None:
            self._beating = False
            if result is not None:
                self._reaped(self.node, result)
                self.clean = True
                self.beat()  # in the node set, beating, before taking a request

        self._fire(self._eval(scripts.REAP, self.node, "gone")).addCallback(reaped)

    def subscriber_ready(self, proto: Any) -> None:
        """The subscriber connected: subscribe to this node's channel."""

        def subscribed(_: Any) -> None:
            self.subscribed = True
            self._want_rebuild()

        def failed(failure: Failure) -> None:
            log.error("subscribing to {channel} failed: {error}", channel=cw.channel(self.node), error=failure.getErrorMessage())
            proto.transport.loseConnection()

        proto.subscribe(cw.channel(self.node).decode("utf-8")).addCallbacks(subscribed, failed)

    def subscriber_lost(self, proto: Any) -> None:
        """The subscriber's connection is gone (txredisapi reconnects)."""
        self.subscribed = False

    def _want_rebuild(self) -> None:
        self._rebuild_wanted = True

    def _publish(self, data: bytes) -> bool:
        return self.publisher is not None and self.publisher.write(data)

    def _eval(self, script: str, *args: Any) -> defer.Deferred[Any]:
        d = self.command.eval(script, [], [str(a) for a in args])

        def check(result: Any) -> Any:
            if isinstance(result, Exception):
                raise result
            return result

        return d.addCallback(check)  # type: ignore[no-any-return]

    def _fire(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        """Track a registry update made beside the chat path; a failure asks for a rebuild."""
        self._pending.add(d)

        def done(result: Any) -> Any:
            self._pending.discard(d)
            if isinstance(result, Failure):
                self._want_rebuild()
                log.debug("a registry update failed: {error}", error=result.getErrorMessage())
                return None
            if self._down_reported:
                self._down_reported = False
                log.info("Redis reachable again")
            return result

        return d.addBoth(done)

    def _script(self, script: str, *args: Any) -> defer.Deferred[Any]:
        """Run a registry update if Redis is there; otherwise a rebuild will redo it."""
        if not self.command_up:
            self._want_rebuild()
            return defer.succeed(None)
        return self._fire(self._eval(script, *args))

    # Registry (the TCRP side)

    def check_create(self, name: str) -> None:
        """See L{ocm.registry.Registry.check_create}."""
        self._check_up()
        self.rooms.check_create(name)

    def create(
        self, name: str, username: str, ip: str, now: float, password: PasswordHash | None, capacity: int | None, history: int = 0
    ) -> defer.Deferred[Member]:
        """See L{ocm.registry.Registry.create}: decided by the CREATE script."""
        self._check_up()
        self.rooms.check_create(name)
        room_id = secrets.token_hex(8)
        args = (name, room_id, username, self.node, "" if capacity is None else capacity, encode_password(password), history)

        def created(result: Any) -> Member:
            if int(result) != 1:
                raise RoomError(409, f"room {name!r} already exists")
            try:
                return self.rooms.create(
                    name, username, ip, self.clock.seconds(), password=password, capacity=capacity, room_id=room_id, history=history
                )
            except RoomError:
                self._script(scripts.CLOSE, name, room_id, self.node)
                raise

        return self._counted(self._eval(scripts.CREATE, *args)).addCallbacks(created, self._registry_failed)

    def _counted(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        """A create or join in flight (see L{_rebuild})."""
        self._in_flight += 1

        def done(result: Any) -> Any:
            self._in_flight -= 1
            return result

        return d.addBoth(done)

    def _registry_failed(self, failure: Failure) -> Any:
        if failure.check(RoomError):
            return failure
        log.error("room registry request failed: {error}", error=failure.getErrorMessage())
        raise RoomError(503, UNREACHABLE)

    def find(self, name: str) -> defer.Deferred[SharedRoom]:
        """See L{ocm.registry.Registry.find}."""
        self._check_up()

        def found(fields: Any) -> SharedRoom:
            if not fields or "id" not in fields:
                raise RoomError(404, f"no room named {name!r}")
            capacity = fields.get("capacity", "")
            return SharedRoom(
                name,
                fields["id"],
                fields.get("host", ""),
                decode_password(fields.get("password", "")),
                int(capacity) if capacity else None,
                int(fields.get("history") or 0),
            )

        d: defer.Deferred[Any] = self.command.hgetall(scripts.room_key(name, "room"))
        return d.addCallbacks(found, self._registry_failed)  # type: ignore[no-any-return]

    def join(self, info: SharedRoom, username: str, ip: str, now: float) -> defer.Deferred[Member]:
        """See L{ocm.registry.Registry.join}: decided by the JOIN script."""
        self._check_up()
        if len(self.rooms.tokens) >= self.rooms.max_members:
            raise RoomError(503, "the server is at its member limit")

        def joined(result: Any) -> Member:
            status = int(result[0])
            if status == 404:
                raise RoomError(404, f"no room named {info.name!r}")
            if status == 409:
                raise RoomError(409, f"username {username!r} is taken in room {info.name!r}")
            if status == 503:
                raise RoomError(503, f"room {info.name!r} is full")
            room = self.rooms.adopt(info.name, info.id, info.host, info.password, info.capacity, info.history)
            self.relay.send_all(self._sync_remote(room, pairs(result[1]), pairs(result[2])))
            try:
                member = self.rooms.add_member(room, username, ip, self.clock.seconds())
            except RoomError:
                self._script(scripts.LEAVE, info.name, info.id, username, self.node)
                self.rooms.drop_if_empty(room)
                raise
            self._tell(room, cw.record(cw.MEMBER, room.name_bytes, member.name_bytes))
            return member

        return self._counted(self._eval(scripts.JOIN, info.name, info.id, username, self.node)).addCallbacks(joined, self._registry_failed)

    def _sync_remote(self, room: Room, members: list[tuple[str, str]], bound: list[tuple[str, str]]) -> Sends:
        """
        Learn C{room}'s remote members from the registry (notices for those
        newly bound).  Only additions: a departure is told by its node (a
        LEFT or SYNC record) or by the reaper, never inferred from a registry
        that another node may not have rebuilt yet.
        """
        sends: Sends = []
        for user, node in members:
            if node != self.node:
                self.rooms.remote_member(room, user, node)
        for user, node in bound:
            if node != self.node:
                sends.extend(self.rooms.remote_bound(room, user, node))
        return sends

    def _sync_record(self, room: Room, reply: bool) -> bytes:
        members = [(m.name, m.addr is not None) for m in room.members.values()]
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
        self.relay.send_all(sends)
        if reply:
            self.outbox.add(origin, self._sync_record(room, False))  # type: ignore[union-attr]

    def listing(self) -> defer.Deferred[list[dict[str, Any]]]:
        """See L{ocm.registry.Registry.listing}: every room of the cluster."""
        self._check_up()

        def listed(flat: list[Any]) -> list[dict[str, Any]]:
            return [
                {"name": flat[i], "members": int(flat[i + 3]), "capacity": int(flat[i + 1]) if flat[i + 1] else None, "protected": bool(int(flat[i + 2]))}
                for i in range(0, len(flat), 4)
            ]

        return self._eval(scripts.LISTING).addCallbacks(listed, self._registry_failed)

    # Peers (what this node's rooms tell the others)

    def chat(self, room: Room, out: bytes) -> None:
        """A local member's chat: one record in each sharing node's batch."""
        if room.peer_nodes:
            self._tell(room, cw.record(cw.CHAT, room.name_bytes, out))

    def _tell(self, room: Room, record: bytes) -> None:
        """Queue C{record} for every other node with members in C{room}."""
        add = self.outbox.add  # type: ignore[union-attr]
        for node in room.peer_nodes:
            add(node, record)

    def bound(self, member: Member) -> None:
        """See L{Peers.bound}."""
        room = member.room
        self._tell(room, cw.record(cw.BOUND, room.name_bytes, member.name_bytes))
        self._script(scripts.BIND, room.name, room.id, member.name, self.node)

    def left(self, member: Member, reason: str) -> None:
        """See L{Peers.left}."""
        room = member.room
        self._tell(room, cw.record(cw.LEFT, room.name_bytes, cw.left_body(member.name, reason)))
        self._script(scripts.LEAVE, room.name, room.id, member.name, self.node)

    def closed(self, room: Room, reason: str, members: list[Member]) -> None:
        """
        See L{Peers.closed}.  A room hosted here closes everywhere (the
        registry names every node with members, some perhaps not yet known
        here); a replica closes here only when this node stops: its members
        leave the others' rooms.
        """
        if room.replica:
            for member in members:
                self._tell(room, cw.record(cw.LEFT, room.name_bytes, cw.left_body(member.name, NODE_GONE)))
                self._script(scripts.LEAVE, room.name, room.id, member.name, self.node)
            self._script(scripts.UNWHERE, room.name, self.node)
            return
        record = cw.record(cw.CLOSED, room.name_bytes, reason.encode("ascii"))
        told = set(room.peer_nodes)
        self._tell(room, record)

        def tell_the_rest(nodes: Any) -> None:
            for node in nodes or ():
                if node not in told and node != self.node:
                    self.outbox.add(node, record)  # type: ignore[union-attr]

        self._script(scripts.CLOSE, room.name, room.id, self.node).addCallback(tell_the_rest)
        self._script(scripts.UNWHERE, room.name, self.node)

    def emptied(self, room: Room) -> None:
        """See L{Peers.emptied}."""
        self._script(scripts.UNWHERE, room.name, self.node)

    # What the other nodes send

    def received(self, data: bytes) -> None:
        """Apply one batch from another node; a bad one is logged and dropped."""
        try:
            origin, records = cw.parse_batch(data)
            if origin == self.node:
                return
            for kind, room_name, body in records:
                room = self.rooms.rooms.get(room_name.decode("utf-8"))
                if room is not None:
                    self._apply(origin, kind, room, body)
        except Exception:
            log.failure("a batch from another node failed")

    def _apply(self, origin: str, kind: int, room: Room, body: bytes) -> None:
        if kind == cw.CHAT:
            self.relay.deliver(room, body)
        elif kind == cw.MEMBER:
            if self.rooms.remote_member(room, body.decode("utf-8"), origin):
                # a node new to the room: it may not know who is bound here
                for member in room.bound:
                    self.outbox.add(origin, cw.record(cw.BOUND, room.name_bytes, member.name_bytes))  # type: ignore[union-attr]
        elif kind == cw.BOUND:
            self.relay.send_all(self.rooms.remote_bound(room, body.decode("utf-8"), origin))
        elif kind == cw.LEFT:
            user, reason = cw.parse_left(body)
            self.relay.send_all(self.rooms.remote_left(room, user, reason))
        elif kind == cw.CLOSED:
            self.relay.send_all(self.rooms.remote_closed(room, body.decode("ascii")))
        elif kind == cw.SYNC:
            self._synced(origin, room, body)

    # Heartbeat, reaping, rebuilding

    def _guarded_beat(self) -> None:
        try:
            self.beat()
        except Exception:
            log.failure("cluster heartbeat failed")

    def beat(self) -> None:
        """Write the heartbeat; reap nodes whose heartbeat lapsed; rebuild if needed."""
        if not self.command_up or self._beating:
            return
        if not self.clean:
            self._reap_leftovers()
            return
        self._beating = True
        ttl_ms = int(self.heartbeat_ttl * 1000)

        def beaten(result: Any) -> Any:
            had, dead = int(result[0]), result[1]
            self.alive = True
            if not had:
                self._rebuild_wanted = True
            steps = [self._reap(node) for node in dead]
            # a create or join in flight is in the registry and not yet here:
            # a rebuild now would take it for stale; it waits for the next beat
            if self._rebuild_wanted and self.subscribed and not self._in_flight:
                steps.append(self._rebuild())
            return defer.DeferredList(steps)

        def done(result: Any) -> None:
            self._beating = False

        self._fire(self._eval(scripts.HEARTBEAT, self.node, ttl_ms).addCallback(beaten)).addBoth(done)

    def _reap(self, node: str) -> defer.Deferred[Any]:
        log.warn("node {node} stopped beating: removing its members", node=node)
        return self._fire(self._eval(scripts.REAP, node, "gone").addCallback(lambda result: self._reaped(node, result)))

    def _reaped(self, node: str, result: Any) -> None:
        """Tell the nodes concerned, and this one, what a REAP removed."""
        for name, room_id, what, nodes, users in result or ():
            if what == "closed":
                records = [cw.record(cw.CLOSED, name.encode("utf-8"), b"host_left")]
            else:
                records = [cw.record(cw.LEFT, name.encode("utf-8"), cw.left_body(user, NODE_GONE)) for user in users]
            for other in nodes:
                if other not in (self.node, node):
                    for record in records:
                        self.outbox.add(other, record)  # type: ignore[union-attr]
            room = self.rooms.rooms.get(name)
            if room is None or room.id != room_id or node == self.node:
                continue
            if what == "closed":
                self.relay.send_all(self.rooms.remote_closed(room, "host_left"))
            else:
                for user in users:
                    self.relay.send_all(self.rooms.remote_left(room, user, NODE_GONE))

    def _rebuild(self) -> defer.Deferred[Any]:
        """
        Put this node's part of the registry back as its rooms hold it (after
        Redis restarted, or lost an update of ours), and tell the sharing
        nodes again who is here.
        """
        self._rebuild_wanted = False
        self._rebuilding = True
        held = list(self.rooms.rooms.values())
        log.info("rebuilding this node's part of the registry: {count} rooms", count=len(held))

        def rebuild_rooms(result: Any) -> Any:
            self._reaped(self.node, result)
            return defer.DeferredList([self._rebuild_room(room) for room in held if room.open])

        def done(result: Any) -> Any:
            self._rebuilding = False
            return result

        return self._eval(scripts.REAP, self.node, "keep", *[room.name for room in held]).addCallback(rebuild_rooms).addBoth(done)

    def _missing(self, room: Room) -> None:
        """
        The registry has no such room (or another of that name).  A replica's
        host node may not have rebuilt yet after a Redis restart: give it one
        heartbeat TTL, then close the room here.
        """
        now = self.clock.seconds()
        since = self._missing_since.setdefault(room.id, now)
        if room.replica and now - since < self.heartbeat_ttl:
            self._rebuild_wanted = True  # again at the next beat
            return
        self._missing_since.pop(room.id, None)
        self.relay.send_all(self.rooms.remote_closed(room, "host_left"))

    def _rebuild_room(self, room: Room) -> defer.Deferred[Any]:
        args: list[Any] = [
            room.name,
            room.id,
            room.host_name,
            self.node if not room.replica else "",
            "" if room.capacity is None else room.capacity,
            encode_password(room.password),
            self.node,
            "0" if room.replica else "1",
        ]
        for member in room.members.values():
            args += [member.name, "1" if member.addr is not None else "0"]

        def rebuilt(result: Any) -> None:
            if not room.open:
                return
            if not result:
                self._missing(room)
                return
            self._missing_since.pop(room.id, None)
            self.relay.send_all(self._sync_remote(room, pairs(result[0]), pairs(result[1])))
            # every node with members there learns who is here, and answers in kind
            record = self._sync_record(room, True)
            nodes = {node for _, node in pairs(result[0])} | set(room.peer_nodes)
            nodes.discard(self.node)
            for node in nodes:
                self.outbox.add(node, record)  # type: ignore[union-attr]

        return self._eval(scripts.REBUILD, *args).addCallback(rebuilt)


def _as_deferred(value: Any) -> defer.Deferred[Any]:
    return value if isinstance(value, defer.Deferred) else defer.succeed(value)


def default_node_name(tcp_port: int, udp_port: int) -> str:
    """The host name and ports: unique per process on one machine."""
    return f"{socket.gethostname()}:{tcp_port}:{udp_port}"


class ClusterService(service.Service):
    """Runs a L{RedisCluster} for as long as the server runs."""

    def __init__(self, cluster: RedisCluster, ports: Callable[[], tuple[int, int]]) -> None:
        self.cluster = cluster
        self.ports = ports

    def startService(self) -> None:
        """Name the node (host and ports unless --node), connect, beat."""
        super().startService()
        if not self.cluster.node:
            self.cluster.node = default_node_name(*self.ports())
        log.info("cluster node {node} on Redis {host}:{port}/{db}", node=self.cluster.node, host=self.cluster.address.host, port=self.cluster.address.port, db=self.cluster.address.db)
        self.cluster.start()

    def stopService(self) -> defer.Deferred[Any]:
        """Runs after the shutdown notices: they leave in the last batches."""
        super().stopService()
        return defer.ensureDeferred(self.cluster.stop())
