"""
Member routes: how the relay writes to one member (L{ocm.rooms.Route}).

A member's route is set when its token is bound (its first accepted
datagram) and written through for every notice and, where the C fan-out
loop cannot reach it, every chat message:

 - L{UdpRoute}: a UDP (IP, port) of the relay's port; the C loop writes
   to its packed address directly;
 - L{SealedUdpRoute}: the same in secure mode, each datagram sealed with
   the member's own key (by the C seal loop where it was built, else by
   the route itself);
 - a L{Connection} (a TCP tunnel, L{ocm.relay.tunnel}; a WebSocket) is a
   route of its own: it carries only its member's datagrams;
 - L{SealedRoute}: a connection's member in secure mode, sealed.

A new way of reaching members is a new route class here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ocm.relay.fanout import pack_address
from ocm.sealing import Channel

Address = tuple[str, int]


class UdpRoute:
    """A member bound to a UDP address of the relay's port."""

    __slots__ = ("peer", "sockaddr", "_sendto")

    def __init__(self, sendto: Callable[[bytes, Address], Any], peer: Address) -> None:
        self._sendto = sendto
        self.peer = peer
        #: The address packed for the C fan-out loop (None without it).
        self.sockaddr: bytes | None = pack_address(peer)

    def send(self, data: bytes) -> None:
        """One datagram to the member's address."""
        self._sendto(data, self.peer)

    def __repr__(self) -> str:
        return f"<UdpRoute {self.peer}>"


class SealedUdpRoute(UdpRoute):
    """Secure mode: a UDP member, every datagram sealed for it (docs/secure.rst)."""

    __slots__ = ("_seal", "sealed_to")

    def __init__(self, sendto: Callable[[bytes, Address], Any], peer: Address, channel: Channel) -> None:
        super().__init__(sendto, peer)
        #: The packed address for the C seal loop (L{ocm.relay.fanout.native_sealed_fan_out}),
        #: which seals with the member's key and channel; never the plain C loop's
        #: C{sockaddr}, so that nothing can send this member a datagram in the clear.
        self.sealed_to = self.sockaddr
        self.sockaddr = None
        self._seal = channel.seal

    def send(self, data: bytes) -> None:
        """One datagram, sealed, to the member's address."""
        self._sendto(self._seal(data), self.peer)


class Connection(Protocol):
    """
    A connection that carries one member's datagrams both ways (a TCP
    tunnel, a WebSocket): the source its datagrams come from, and the
    route that writes to it.
    """

    #: What carries it, for the metrics: C{tunnel}, C{web}.
    kind: str
    #: The normalised IP of the connection's peer (checked against the token's).
    ip: str
    #: The connection's peer address.
    peer: Address
    #: Whether its datagrams are sealed in secure mode (a browser's are not:
    #: they travel inside TLS, and WebCrypto has no ChaCha20-Poly1305).
    sealed: bool

    @property
    def sockaddr(self) -> None:
        """Never written by the C loop."""

    def send(self, data: bytes) -> None:
        """Write one datagram; raise an overload C{OSError} if it cannot wait."""

    def close(self) -> None:
        """Its member is gone: end the connection after what was written."""


class SealedRoute:
    """Secure mode: a member reached through a connection, every datagram sealed for it."""

    __slots__ = ("connection", "sockaddr", "_seal")

    def __init__(self, connection: Connection, channel: Channel) -> None:
        self.connection = connection
        self.sockaddr = None
        self._seal = channel.seal

    @property
    def peer(self) -> Address:
        """The connection's peer."""
        return self.connection.peer

    def send(self, data: bytes) -> None:
        """One datagram, sealed, through the connection."""
        self.connection.send(self._seal(data))
