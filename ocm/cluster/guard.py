"""
The UDP port of a cluster node, guarded against its own stalls.

A process that was stopped (SIGSTOP), frozen or swapped out finds, when it
runs again, its socket's receive buffer full of datagrams that waited as
long as it did, and may read them before the node can learn that the
cluster reaped it meanwhile.  Its timers may run first too: the sweep
would time out members whose keepalives are waiting in that buffer.  So
the port, the sweep and the heartbeat each ask the L{StallGuard} first:
after a stall longer than half the member timeout, the port's buffer is
drained without relaying anything (a bound member's datagram still counts
as activity, so its keepalives during the stall are not lost).
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.logger import Logger

from ocm.cluster.state import StallWatch
from ocm.relay.port import FastPort, FastUDPServer
from ocm.rooms import Rooms

log = Logger()

#: The most datagrams drained after one stall (a full receive buffer of
#: small datagrams is tens of thousands).
DRAIN_LIMIT = 200_000


class HasRooms(Protocol):
    """The relay, as this port sees it: the rooms whose tokens it checks."""

    rooms: Rooms


class StallGuard:
    """
    What the port, the sweep and the heartbeat ask before they act: after a
    stall of this process, the port's waiting datagrams are drained first.
    """

    def __init__(self, watch: StallWatch, clock: Any) -> None:
        self.watch = watch
        self.clock = clock
        self.port: GuardedPort | None = None

    def attach(self, port: GuardedPort) -> None:
        """C{port} is the node's UDP port (it attaches itself when made)."""
        self.port = port

    def check(self, now: float) -> None:
        """If this process was stalled, drain the port now."""
        if self.watch.stalled(now):
            if self.port is not None:
                self.port.drain(now)
            else:
                self.watch.resumed(now)

    def before_sweep(self) -> None:
        """The sweep is about to time out silent members: drain first (their keepalives may be waiting)."""
        self.check(self.clock.seconds())


class GuardedPort(FastPort):
    """L{FastPort} that drains what arrived during a stall of its process, relaying none of it."""

    def __init__(self, *args: Any, guard: StallGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard
        self.watch = guard.watch
        #: Datagrams drained after stalls.
        self.drained = 0
        guard.attach(self)

    def doRead(self) -> None:
        """After a stall, drain first; then read as L{FastPort} does."""
        self.guard.check(self.reactor.seconds())  # type: ignore[attr-defined]
        super().doRead()

    def drain(self, now: float) -> None:
        """Read and drop every datagram waiting; each one of a bound member refreshes its last-seen time."""
        recvfrom = self.socket.recvfrom
        size = self.maxPacketSize
        tokens = self.protocol.rooms.tokens
        count = 0
        for _ in range(DRAIN_LIMIT):
            try:
                data, addr = recvfrom(size)
            except OSError:
                break
            count += 1
            # SPEC section 2: RoomNameSize, TokenSize, RoomName, Token
            if len(data) < 2:
                continue
            start = 2 + data[0]
            member = tokens.get(data[start : start + data[1]])
            if member is not None and member.source == addr[:2]:
                member.last_seen = now
        gap = self.watch.resumed(now)
        self.drained += count
        dropped = self.protocol.rooms.stats.dropped
        dropped["stale"] = dropped.get("stale", 0) + count
        log.warn("this process was stalled for {seconds:.1f} s: dropped the {count} datagrams that waited meanwhile", seconds=gap, count=count)


class GuardedUDPServer(FastUDPServer):
    """L{FastUDPServer} listening with a L{GuardedPort}."""

    def __init__(self, *args: Any, guard: StallGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard

    def _getPort(self) -> Any:
        from twisted.internet import reactor as global_reactor

        kwargs = {**self.kwargs, "reactor": self.reactor or global_reactor}
        port = GuardedPort(*self.args, guard=self.guard, **kwargs)
        port.startListening()
        return port
