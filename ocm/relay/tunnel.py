"""
Chat through TCP where UDP is blocked (C{--tunnel}; docs/reach.rst).

After a successful L{wire.OP_TUNNEL} request, the TCRP connection carries
the member's chat datagrams both ways, each as a 4-byte big-endian length
and the datagram, exactly the SPEC's (or, in secure mode, sealed) bytes.
The relay treats a tunnelled member as a UDP one: the same checks, notices,
rate limits, timeouts and fan-out; it only writes to this connection
instead of a UDP address.  A tunnel whose peer reads too slowly loses
datagrams, as a UDP member would: the transport pauses the tunnel (a
streaming producer) once its buffer passes Twisted's high-water mark
(64 KiB), and from then until it drains every datagram is dropped.
"""

from __future__ import annotations

import errno
from typing import Any, Protocol

from twisted.internet import tcp
from twisted.logger import Logger

from ocm import wire
from ocm.backpressure import PausedFlag
from ocm.rooms import Member

log = Logger()

#: The largest datagram a client may send in a tunnel (the SPEC's 4096,
#: and room for a longer one to be dropped by the relay's own check).
MAX_IN = wire.MAX_DATAGRAM + 1024


class ConnectionSink(Protocol):
    """Where a connection's datagrams go: the relay (L{ocm.relay.protocol.Relay})."""

    def connection_datagram(self, data: bytes, connection: Any) -> None:
        """One datagram that came through C{connection}."""

    def connection_lost(self, connection: Any) -> None:
        """C{connection} is gone."""


def no_delay(transport: Any) -> None:
    """
    Turn Nagle's algorithm off on a tunnel's TCP connection (under TLS, the
    one beneath it): real-time datagrams must not wait for an ACK (with it
    on, p99 was 13 ms at 9,000 deliveries/s).
    """
    for candidate in (transport, getattr(transport, "transport", None)):
        set_no_delay = getattr(candidate, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
                return
            except OSError:
                return


class Tunnel(PausedFlag):
    """
    One member's tunnel over its TCP transport: a L{ocm.relay.routes.Connection}
    (the source of its datagrams and the route to it), and a streaming
    producer of the transport (paused, it drops).
    """

    kind = "tunnel"
    #: In secure mode a tunnel carries sealed datagrams, as UDP does.
    sealed = True
    #: Never written by the C fan-out loop.
    sockaddr = None

    def __init__(self, transport: Any, sink: ConnectionSink, member: Member, ip: str) -> None:
        self.transport = transport
        self.sink = sink
        #: The member the tunnel was opened for.
        self.member = member
        self.ip = ip
        peer = transport.getPeer()
        self.peer = (peer.host, peer.port)
        self.paused = False
        self._buffer = b""
        transport.registerProducer(self, True)
        no_delay(transport)
        #: The socket, for writes straight to it while Twisted has nothing
        #: queued (plain TCP only; under TLS every write goes through it).
        self._socket = transport.socket if isinstance(transport, tcp.Connection) else None

    def send(self, datagram: bytes) -> None:
        """Write one datagram; raise an overload error (the member is not blamed) if it cannot wait."""
        if self.paused:
            raise OSError(errno.ENOBUFS, "tunnel buffer full")
        frame = wire.tunnel_frame(datagram)
        transport = self.transport
        sock = self._socket
        # Straight to the socket when nothing waits in Twisted's buffer (so
        # the order holds): a transport.write per datagram costs two epoll_ctl
        # calls and a reactor turn, measured 13.5 us a tunnelled delivery.
        if sock is not None and not transport.dataBuffer and not transport._tempDataBuffer and not transport.disconnecting:
            try:
                sent = sock.send(frame)
            except OSError:  # EAGAIN, or an error Twisted's write will report
                sent = 0
            if sent == len(frame):
                return
            frame = frame[sent:]
        transport.write(frame)

    def close(self) -> None:
        """Its member is gone: close the connection once what was written is out."""
        self.transport.loseConnection()

    def data_received(self, data: bytes) -> None:
        """Datagrams from the member, to the relay as if they came over UDP."""
        try:
            datagrams, self._buffer = wire.split_tunnel_frames(self._buffer + data, MAX_IN)
        except wire.WireError as e:
            log.info("tunnel from {ip} closed: {error}", ip=self.ip, error=str(e))
            self.transport.loseConnection()
            return
        sink = self.sink
        for datagram in datagrams:
            sink.connection_datagram(datagram, self)

    def __repr__(self) -> str:
        return f"<Tunnel {self.peer} for {self.member!r}>"
