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
import itertools
from typing import Any

from twisted.internet import tcp
from twisted.logger import Logger

from ocm import wire
from ocm.rooms import Address, Member
from ocm.sending import PausedFlag

log = Logger()

#: Tunnel addresses are (IP, n) with n from here up: never a UDP port.
TUNNEL_PORT_BASE = 1 << 20
#: The largest datagram a client may send in a tunnel (the SPEC's 4096,
#: and room for a longer one to be dropped by the relay's own check).
MAX_IN = wire.MAX_DATAGRAM + 1024

_numbers = itertools.count(TUNNEL_PORT_BASE)


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


def is_tunnel(addr: Address) -> bool:
    """Whether C{addr} names a tunnel, not a UDP peer."""
    return addr[1] >= TUNNEL_PORT_BASE


class Tunnel(PausedFlag):
    """One member's tunnel over its TCP transport (a streaming producer of it: paused, it drops)."""

    def __init__(self, transport: Any, relay: Any, member: Member, ip: str) -> None:
        self.transport = transport
        self.relay = relay
        self.member = member
        self.addr: Address = (ip, next(_numbers))
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

    def data_received(self, data: bytes) -> None:
        """Datagrams from the member, to the relay as if they came over UDP."""
        try:
            datagrams, self._buffer = wire.split_tunnel_frames(self._buffer + data, MAX_IN)
        except wire.WireError as e:
            log.info("tunnel from {ip} closed: {error}", ip=self.addr[0], error=str(e))
            self.transport.loseConnection()
            return
        for datagram in datagrams:
            self.relay.datagramReceived(datagram, self.addr)
