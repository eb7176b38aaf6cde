"""
TCRP, the room set-up protocol over TCP (SPEC section 1).

One request per connection, framed in the manner of C{IntNStringReceiver}:
one buffer, parsed once the 32-byte header is whole, the declared payload
size checked as soon as the header arrives.  The request itself is
answered by the L{RequestFlow} the factory is.
"""

from __future__ import annotations

from typing import Any, Protocol as TypingProtocol, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IDelayedCall, ITCPTransport
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from ocm import wire
from ocm.relay.tunnel import Tunnel
from ocm.rooms import RoomError, normalise_ip
from ocm.tcrp.flow import RequestFlow

log = Logger()


class TunnelOpener(TypingProtocol):
    """Where a tunnel request (operation 4) goes: the relay (L{ocm.relay.protocol.Relay})."""

    def open_tunnel(self, transport: Any, room: str, token: bytes, ip: str) -> Tunnel:
        """A tunnel for the member of C{token} in C{room}, issued to C{ip}; a 401 L{RoomError} if none."""

    def connection_lost(self, connection: Any) -> None:
        """The tunnel's connection is gone."""


class TCRPProtocol(Protocol):
    """Reads one TCRP request, answers it, and closes the connection."""

    factory: TCRPFactory

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._header: wire.Header | None = None
        self._done = False
        self._lost = False
        self._timer: IDelayedCall | None = None
        self._operation = 0
        self._room = b""
        self._ip = ""
        self._counted = False
        self._tunnel: Tunnel | None = None

    @property
    def _tcp(self) -> ITCPTransport:
        return cast(ITCPTransport, self.transport)

    def connectionMade(self) -> None:
        """Count the connection against its IP; start the clock for the whole request."""
        self._ip = normalise_ip(self._peer())
        if not self.factory.connection_opened(self._ip):
            self._counted = False
            self._error(429, "too many connections from this address")
            return
        self._counted = True
        self._timer = self.factory.clock.callLater(self.factory.request_timeout, self._timed_out)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Forget the timer; a pending password check will not be answered; a tunnel's member leaves."""
        self._lost = True
        self._cancel_timer()
        if self._tunnel is not None:
            tunnel, self._tunnel = self._tunnel, None
            self.factory.tunnels.connection_lost(tunnel)  # type: ignore[union-attr]
        if self._counted:
            self._counted = False
            self.factory.connection_closed(self._ip)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if not self._done:
            self._done = True
            log.info("TCRP request from {peer} timed out", peer=self._peer())
            self._tcp.abortConnection()

    def _peer(self) -> str:
        return cast("IPv4Address | IPv6Address", self._tcp.getPeer()).host

    def dataReceived(self, data: bytes) -> None:
        """Buffer until one whole frame is in; ignore anything after it (but in a tunnel)."""
        if self._tunnel is not None:
            self._tunnel.data_received(data)
            return
        if self._done:
            return
        self._buffer += data
        if self._header is None:
            if len(self._buffer) < wire.HEADER_SIZE:
                return
            self._header = wire.decode_header(bytes(self._buffer[: wire.HEADER_SIZE]))
            self._operation = self._header.operation
            if self._header.payload_size > self.factory.max_payload:
                self._error(413, f"payload larger than {self.factory.max_payload} bytes")
                return
        end = wire.HEADER_SIZE + self._header.body_size
        if len(self._buffer) < end:
            return
        room_end = wire.HEADER_SIZE + self._header.room_size
        frame = wire.Frame(
            self._header.operation,
            self._header.state,
            bytes(self._buffer[wire.HEADER_SIZE : room_end]),
            bytes(self._buffer[room_end:end]),
        )
        self._room = frame.room
        self._done = True
        self._cancel_timer()
        rest = bytes(self._buffer[end:])
        self._buffer = bytearray()
        if frame.operation == wire.OP_TUNNEL and self.factory.tunnels is not None:
            self._start_tunnel(frame, rest)
            return
        self.factory.handle(frame, self._peer(), lambda: not self._lost).addCallbacks(self._answer, self._failed)

    def _start_tunnel(self, frame: wire.Frame, rest: bytes) -> None:
        """
        L{wire.OP_TUNNEL}: the token's member chats through this connection
        from now on (docs/reach.rst); the connection stays open.
        """
        factory = self.factory
        tunnels = factory.tunnels
        assert tunnels is not None
        try:
            if not factory.requests.allow(self._ip, factory.clock.seconds()):
                raise RoomError(429, "too many requests from this address; slow down")
            request = wire.parse_request(frame, tunnel=True)
            tunnel = tunnels.open_tunnel(self._tcp, request.room, request.fields["token"].encode("ascii"), self._ip)
        except (RoomError, wire.WireError) as e:
            factory.rooms.stats.requests[(wire.OP_TUNNEL, e.status)] += 1
            self._error(e.status, str(e))
            return
        factory.rooms.stats.requests[(wire.OP_TUNNEL, 200)] += 1
        self._tunnel = tunnel
        self._tcp.write(wire.response_frame(wire.OP_TUNNEL, frame.room, 200))
        log.info("{user} of room {room} chats through a TCP tunnel", user=tunnel.member.name, room=tunnel.member.room.name)
        if rest:
            tunnel.data_received(rest)

    def _answer(self, frames: list[bytes]) -> None:
        if not self._lost:
            self._tcp.write(b"".join(frames))
            self._tcp.loseConnection()

    def _failed(self, failure: Failure) -> None:
        log.failure("TCRP request failed", failure)
        self._error(500, "internal error")

    def _error(self, status: int, message: str) -> None:
        self._done = True
        self._cancel_timer()
        self._answer([wire.response_frame(self._operation, self._room, status, message=message)])




class TCRPFactory(RequestFlow, ServerFactory):
    """
    The TCRP port: a L{RequestFlow} that answers over TCP connections.

    @ivar tunnels: the relay, when tunnels are served (C{--tunnel}); None:
        operation 4 is unknown (400).
    """

    protocol = TCRPProtocol  # type: ignore[assignment]

    def __init__(
        self,
        rooms: Any,
        udp_port: Any,
        clock: Any,
        max_payload: int = 64 * 1024,
        request_timeout: float = 5.0,
        tunnels: TunnelOpener | None = None,
        **flow: Any,
    ) -> None:
        RequestFlow.__init__(self, rooms, udp_port, clock, **flow)
        self.max_payload = max_payload
        self.request_timeout = request_timeout
        self.tunnels = tunnels
