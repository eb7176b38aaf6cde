"""
The client's end of a TCP tunnel (docs/reach.rst): where UDP is blocked,
the chat datagrams travel in the TCRP connection, each as a 4-byte length
and the datagram.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS

from ocm import wire
from ocm.client.requests import RequestFailed


class TunnelRefused(RequestFailed):
    """The server answered the tunnel request with a refusal (C{status}, C{message})."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"the server refused the TCP tunnel ({status}: {message})" if message else f"the server refused the TCP tunnel ({status})")

    @property
    def no_tunnel(self) -> bool:
        """Whether the server has no tunnel at all (started without --tunnel: operation 4 is unknown)."""
        return self.status == 400 and "operation" in self.message


def no_delay(transport: Any) -> None:
    """
    Turn Nagle's algorithm off on the tunnel's TCP connection (under TLS,
    the one beneath it): a chat datagram must not wait for an ACK.  (A copy
    of the server's: the client imports no server module.)
    """
    for candidate in (transport, getattr(transport, "transport", None)):
        set_no_delay = getattr(candidate, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass
            return


class TunnelProtocol(protocol.Protocol):
    """Sends the tunnel request; then datagrams both ways."""

    def __init__(self, room: str, token: bytes) -> None:
        self.request = wire.encode_frame(wire.OP_TUNNEL, wire.STATE_REQUEST, room.encode("utf-8"), wire.encode_json({"token": token.decode("ascii")}))
        self.ready: defer.Deferred[TunnelProtocol] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()
        #: Where datagrams go once the tunnel is up (the session's C{datagramReceived}).
        self.deliver: Any = None
        self._buffer = b""
        self._open = False

    def connectionMade(self) -> None:
        """Ask for the tunnel (Nagle off: datagrams must not wait)."""
        no_delay(self.transport)
        self.transport.write(self.request)  # type: ignore[union-attr]

    def send(self, datagram: bytes) -> None:
        """One datagram to the relay."""
        if self._open and self.transport is not None:
            self.transport.write(wire.tunnel_frame(datagram))

    def dataReceived(self, data: bytes) -> None:
        """The answer first, then datagrams."""
        self._buffer += data
        if not self._open:
            frames, rest = wire.decode_frames(self._buffer)
            if not frames:
                return
            try:
                answer = wire.decode_json(frames[0].payload)
                status = int(answer["status"])
                message = str(answer.get("message", ""))
            except (wire.WireError, KeyError, TypeError, ValueError, AttributeError):
                status, message = 0, ""
            if status != 200:
                failure = TunnelRefused(status, message) if status else RequestFailed("the server's answer to the tunnel request was not understood")
                self.ready.errback(failure)
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
            self._open = True
            self._buffer = rest
            self.ready.callback(self)
        try:
            datagrams, self._buffer = wire.split_tunnel_frames(self._buffer, wire.MAX_DATAGRAM + 1024)
        except wire.WireError:
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        for datagram in datagrams:
            if self.deliver is not None:
                self.deliver(datagram)

    def connectionLost(self, reason: Any = None) -> None:
        """Closed: by the server (the member is gone) or by us."""
        if not self.ready.called:
            self.ready.errback(RequestFailed("the server closed the connection instead of opening a tunnel"))
        if not self.closed.called:
            self.closed.callback(None)

    def close(self) -> None:
        """End the tunnel (the server removes the member as left)."""
        if self.transport is not None:
            self.transport.loseConnection()


async def open_tunnel(reactor: Any, host: str, port: int, room: str, token: bytes, tls: Any = None, timeout: float = 10.0) -> TunnelProtocol:
    """Open a tunnel for the member of C{token} in C{room}."""
    endpoint: Any = HostnameEndpoint(reactor, host, port, timeout=timeout)
    if tls is not None:
        endpoint = wrapClientTLS(tls.creator, endpoint)
    proto = TunnelProtocol(room, token)
    try:
        await connectProtocol(endpoint, proto)
    except Exception as e:
        raise RequestFailed(f"cannot reach {host}:{port} over TCP ({e.__class__.__name__})") from None
    timer = reactor.callLater(timeout, proto.close)
    try:
        return await proto.ready
    finally:
        if timer.active():
            timer.cancel()
