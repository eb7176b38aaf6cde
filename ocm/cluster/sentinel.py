"""
Following Redis's primary through Sentinel (C{--redis
redis+sentinel://h1:26379,h2:26379/mymaster}).

L{SentinelTarget} is the links' L{ocm.cluster.links.Target}: it asks the
sentinels, in turn, where the primary of the named master is (C{SENTINEL
get-master-addr-by-name}), keeps a subscription to C{+switch-master} on one
of them (the next one if it goes), and asks again whenever a connection to
the primary fails or finds a replica.  When the primary moves, the links
drop their three connections and make them again to the new one; Redis
being reachable again, the node rebuilds its part there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from ocm.cluster.address import REPLY_TIMEOUT, RedisAddress
from ocm.cluster.resp import CommandProtocol, LinkOwner, SubscriberProtocol

log = Logger()

#: Seconds between attempts to subscribe to a sentinel's C{+switch-master}.
WATCH_RETRY = 0.5


class _Answer(LinkOwner):
    """The owner of a one-question connection to a sentinel: fires when it is usable, or gone."""

    def __init__(self) -> None:
        self.usable: defer.Deferred[Any] = defer.Deferred()

    def ready(self, proto: Any) -> None:
        """The connection is usable."""
        if not self.usable.called:
            self.usable.callback(proto)

    def lost(self, proto: Any) -> None:
        """The connection is gone."""
        if not self.usable.called:
            self.usable.errback(ConnectionError("the sentinel closed the connection"))


async def ask(reactor: Any, host: str, port: int, *command: Any) -> Any:
    """One command to a sentinel at C{host}:C{port}, on a connection of its own; its reply."""
    owner = _Answer()
    proto = CommandProtocol(owner, reactor, [], REPLY_TIMEOUT)
    await connectProtocol(TCP4ClientEndpoint(reactor, host, port, timeout=REPLY_TIMEOUT), proto)
    try:
        await owner.usable
        return await proto.execute(*command)
    finally:
        if proto.transport is not None:
            proto.transport.loseConnection()


class SentinelTarget:
    """Where the primary of a Sentinel-monitored master is, followed as it moves (L{ocm.cluster.links.Target})."""

    def __init__(self, address: RedisAddress, reactor: Any) -> None:
        self.address = address
        self.reactor = reactor
        self.primary: tuple[str, int] | None = None
        self.moved: Callable[[], None] = lambda: None
        self.resolving = False
        self.again = False
        self.stopped = False
        self.watch = SwitchWatch(self)
        self._unanswered = False
        #: +switch-master messages seen: an answer to a question asked
        #: before the last one may name the old primary, and is not taken.
        self.switches = 0

    def start(self, moved: Callable[[], None]) -> None:
        """Ask where the primary is; watch for switches."""
        self.moved = moved
        self.resolve()
        self.watch.connect()

    def stop(self) -> None:
        """Stop watching."""
        self.stopped = True
        self.watch.stop()

    def current(self) -> tuple[str, int] | None:
        """C{(host, port)} of the primary, once a sentinel said."""
        return self.primary

    def endpoint(self, host: str, port: int) -> Any:
        """An endpoint to C{host}:C{port}."""
        return self.address.endpoint_to(host, port, self.reactor)

    def stale(self) -> None:
        """A connection to the primary failed or found a replica: ask the sentinels again."""
        self.resolve()

    def describe(self) -> str:
        """The primary's host:port, and whose primary it is."""
        sentinels = ",".join(f"{h}:{p}" for h, p in self.address.sentinels)
        if self.primary is None:
            return f"(primary of {self.address.master} unknown to Sentinel {sentinels})"
        return f"{self.primary[0]}:{self.primary[1]}"

    def resolve(self) -> None:
        """Ask the sentinels, one after another, where the primary is now."""
        if self.stopped:
            return
        if self.resolving:
            self.again = True
            return
        self.resolving = True

        def done(_: Any) -> None:
            self.resolving = False
            if self.again and not self.stopped:
                self.again = False
                self.resolve()

        defer.ensureDeferred(self._ask()).addErrback(lambda f: log.failure("asking Sentinel failed", f)).addBoth(done)

    async def _ask(self) -> None:
        switches = self.switches
        for host, port in self.address.sentinels:
            try:
                reply = await ask(self.reactor, host, port, "SENTINEL", "get-master-addr-by-name", self.address.master)
            except Exception:
                continue
            if isinstance(reply, list) and len(reply) == 2:
                self._unanswered = False
                if self.switches != switches:
                    self.again = True  # a switch came meanwhile: this answer may be older than it
                    return
                self.found((str(reply[0]), int(reply[1])))
                return
        if not self._unanswered:
            self._unanswered = True
            log.error("no sentinel ({sentinels}) knows a primary for {master}", sentinels=self.describe(), master=self.address.master)

    def found(self, where: tuple[str, int]) -> None:
        """The primary is at C{where}: if it moved, the links reconnect to it."""
        if where == self.primary:
            return
        before, self.primary = self.primary, where
        if before is None:
            log.info("Sentinel: the primary of {master} is at {host}:{port}", master=self.address.master, host=where[0], port=where[1])
        else:
            log.warn(
                "Sentinel: the primary of {master} moved from {old} to {host}:{port}",
                master=self.address.master,
                old=f"{before[0]}:{before[1]}",
                host=where[0],
                port=where[1],
            )
            self.moved()

    def switched(self, message: bytes) -> None:
        """A C{+switch-master} message: C{<master> <old ip> <old port> <new ip> <new port>}."""
        try:
            name, _, _, host, port = message.decode("utf-8").split()
            if name == self.address.master:
                self.switches += 1
                self.found((host, int(port)))
        except ValueError:
            log.warn("an unreadable +switch-master message from Sentinel")


class SwitchWatch(LinkOwner):
    """A subscription to C{+switch-master} on one sentinel, moved to the next when it goes."""

    noisy = False

    def __init__(self, target: SentinelTarget) -> None:
        self.target = target
        self.index = 0
        self.proto: SubscriberProtocol | None = None
        self.stopped = False
        self._retry: IDelayedCall | None = None

    def buildProtocol(self, addr: Any) -> SubscriberProtocol:
        """The subscription's protocol."""
        return SubscriberProtocol(self, [], b"+switch-master", self.target.switched)

    def connect(self) -> None:
        """Subscribe on the current sentinel."""
        self._retry = None
        if self.stopped:
            return
        host, port = self.target.address.sentinels[self.index % len(self.target.address.sentinels)]
        d = TCP4ClientEndpoint(self.target.reactor, host, port, timeout=REPLY_TIMEOUT).connect(self)
        d.addCallbacks(self._connected, lambda _: self._next())

    def _connected(self, proto: SubscriberProtocol) -> None:
        self.proto = proto
        if self.stopped and proto.transport is not None:
            proto.transport.loseConnection()

    def _next(self) -> None:
        """Try the next sentinel, a little later."""
        self.index += 1
        if not self.stopped and self._retry is None:
            self._retry = self.target.reactor.callLater(WATCH_RETRY, self.connect)

    def ready(self, proto: Any) -> None:
        """Subscribed: ask again where the primary is (a switch may have been missed)."""
        self.target.resolve()

    def lost(self, proto: Any) -> None:
        """The sentinel went: watch on the next one."""
        if proto is self.proto:
            self.proto = None
            self._next()

    def stop(self) -> None:
        """Stop watching."""
        self.stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.loseConnection()
