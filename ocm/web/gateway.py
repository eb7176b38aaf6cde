"""
The WebSocket gateway (SPEC section 8): a browser speaks the SPEC's own
bytes, one unit per binary message.

The first message is one TCRP request frame, answered by the same
L{ocm.tcrp.flow.RequestFlow} as the TCRP port, each answer frame as one
message.  After a list or a refusal the WebSocket closes; after a create or
join it carries that member's datagrams both ways, and its member is a relay
member like any other, reached through a L{WebRoute}.

Built on autobahn rather than C{twisted.web.websocket}: Twisted's module
buffers a whole message before the application sees it, with no limit;
autobahn checks a frame's declared length against C{maxFramePayloadSize}
as soon as the frame header is in, and closes with 1009 without buffering
the payload, and its close codes and origin hooks are ready to use.  Its own timers
(txaio's batched ones) are off: the request timeout, the close timeout and
the keepalive pings run on the reactor's clock here (L{GatewayFactory.ping}),
so that they stop with the service.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Sequence
from typing import Any, Protocol

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ocm import wire
from ocm.backpressure import PausedFlag
from ocm.rooms import Member, normalise_ip
from ocm.stats import Stats
from ocm.tcrp.flow import RequestFlow

log = Logger()

#: The largest datagram message (SPEC section 2).
MAX_DATAGRAM_MESSAGE = wire.MAX_DATAGRAM
#: Close codes (RFC 6455).
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003
CLOSE_TOO_BIG = 1009
#: Seconds between keepalive pings; a WebSocket that has not answered the
#: previous ping by the next is dropped (a browser whose network went away).
PING_INTERVAL = 20.0
#: Seconds a closing WebSocket has to answer the close before it is dropped.
CLOSE_TIMEOUT = 5.0


class WebRelay(Protocol):
    """What the gateway asks of the relay (L{ocm.relay.protocol.Relay})."""

    def adopt_connection(self, token: bytes, connection: Any) -> Member | None:
        """The member of C{token}, whose datagrams C{connection} will carry."""

    def connection_datagram(self, data: bytes, connection: Any) -> None:
        """One datagram from C{connection}."""

    def connection_lost(self, connection: Any) -> None:
        """C{connection} is gone."""


class WebRoute(PausedFlag):
    """
    A browser member's WebSocket as the relay sees it: a
    L{ocm.relay.routes.Connection} (the source of its datagrams, and the
    route to it), never sealed (it travels inside TLS in secure mode), and a
    streaming producer of the transport (paused, it drops).
    """

    kind = "web"
    sealed = False
    sockaddr = None

    def __init__(self, protocol: GatewayProtocol, ip: str, peer: tuple[str, int]) -> None:
        self.protocol = protocol
        self.ip = ip
        self.peer = peer
        #: The member created or joined through this WebSocket.
        self.member: Member | None = None
        self.paused = False

    def send(self, data: bytes) -> None:
        """One datagram as one binary message; an overload error while the browser does not read."""
        if self.paused:
            raise OSError(errno.ENOBUFS, "WebSocket buffer full")
        self.protocol.send_binary(data)

    def close(self) -> None:
        """The member is gone: close the WebSocket after its last notice."""
        self.protocol.close(CLOSE_NORMAL)

    def __repr__(self) -> str:
        return f"<WebRoute {self.peer} for {self.member!r}>"


def allowed_origins(extra: Sequence[str]) -> frozenset[str]:
    """The operator's C{--web-origin} values, as browsers send them (scheme://host[:port], no slash)."""
    return frozenset(origin.strip().rstrip("/").lower() for origin in extra if origin.strip())


def client_ip(peer: str, forwarded_for: str | None, trusted: frozenset[str]) -> str:
    """
    The member's IP: the WebSocket's peer, or, when the peer is a trusted
    proxy (C{--web-trusted-proxy}), the last address in C{X-Forwarded-For}
    that is not one of the trusted proxies.
    """
    ip = normalise_ip(peer)
    if ip not in trusted or not forwarded_for:
        return ip
    for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
        try:
            candidate = normalise_ip(str(ipaddress.ip_address(hop)))
        except ValueError:
            return ip  # not an address: trust nothing in it
        if candidate not in trusted:
            return candidate
    return ip


class GatewayProtocol(WebSocketServerProtocol):
    """One browser's WebSocket: a request frame first, then its member's datagrams."""

    factory: GatewayFactory

    def __init__(self) -> None:
        super().__init__()
        self.route: WebRoute | None = None
        self._ip = ""
        self._counted = False
        self._state = "request"  # then "answering", "chatting", "done"
        self._timer: IDelayedCall | None = None
        #: A keepalive ping is unanswered.
        self.awaiting_pong = False

    def onConnect(self, request: Any) -> None:
        """Refuse another origin (403) and one connection too many from an IP (429)."""
        factory = self.factory
        origin = (request.origin or "").rstrip("/").lower()
        if origin and origin != "null":
            own = f"{'https' if factory.secure else 'http'}://{request.headers.get('host', '')}".lower()
            if origin != own and origin not in factory.origins:
                factory.stats.web_refused["origin"] += 1
                log.info("WebSocket from {peer} refused: origin {origin} not allowed", peer=request.peer, origin=origin)
                raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        peer: Any = self.transport.getPeer()  # type: ignore[union-attr]
        self._ip = client_ip(peer.host, request.headers.get("x-forwarded-for"), factory.trusted_proxies)
        if not factory.flow.connection_opened(self._ip):
            factory.stats.web_refused["connections"] += 1
            raise ConnectionDeny(429, "too many connections from this address")
        self._counted = True
        self.route = WebRoute(self, self._ip, (peer.host, peer.port))

    def onOpen(self) -> None:
        """Give the request the same time as over TCP; drop what the browser does not read."""
        assert self.route is not None
        transport: Any = self.transport
        # The HTTP channel that handed this connection over is still its
        # producer: the WebSocket's own takes its place.
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()
        transport.registerProducer(self.route, True)
        self.factory.open.add(self)
        self._timer = self.factory.flow.clock.callLater(self.factory.request_timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        if self._state == "request":
            self.close(CLOSE_NORMAL)

    def close(self, code: int, reason: str | None = None) -> None:
        """Start the closing handshake; drop the connection if it is not answered in time."""
        self._state = "done"
        self._cancel_timer()
        # sendCloseFrame: sendClose allows only 1000 and 3000-4999, and the
        # SPEC's codes (1003, 1001) are the RFC's own
        self.sendCloseFrame(code, reason.encode("utf-8") if reason else None)
        self._timer = self.factory.flow.clock.callLater(CLOSE_TIMEOUT, self._drop)

    def _drop(self) -> None:
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def ping(self) -> None:
        """Keepalive: a ping; the connection dropped if the last one is unanswered."""
        if self.awaiting_pong:
            log.info("WebSocket from {ip} did not answer a ping: dropped", ip=self._ip)
            self._drop()
            return
        self.awaiting_pong = True
        self.sendPing()

    def onPong(self, payload: bytes) -> None:
        """The browser is there."""
        self.awaiting_pong = False

    def send_binary(self, data: bytes) -> None:
        """
        One binary message.  When all autobahn's C{sendMessage} would do is
        write one unmasked, unfragmented frame (the WebSocket open, nothing
        of autobahn's queued before it, no compression, within the message
        size limit and 16-bit lengths), the frame is written here: autobahn
        spends several microseconds a message on assertions, counters and
        debug log arguments formatted whether logged or not, and a relay
        writes a message per recipient.  Measured with C{bench/pyload.py
        --modes web} (the assignment's load, a third of the members on
        WebSockets), two interleaved rounds: 11.1 against 11.3 us of server
        CPU per delivery, which took the server from just past its core
        (loss 0-0.8%, p50 173-212 ms) to just under it (no loss, p50
        33-34 ms).  Otherwise (and with its exceptions) autobahn sends it.
        """
        size = len(data)
        if (
            self.state == self.STATE_OPEN
            and self.transport is not None
            and size < 0x10000
            and not self.send_queue
            and self.send_state == self.SEND_STATE_GROUND
            and self._perMessageCompress is None
            and not 0 < self.maxMessagePayloadSize < size
        ):
            head = bytes((0x82, size)) if size < 126 else b"\x82\x7e" + size.to_bytes(2, "big")  # FIN | binary
            self.transport.write(head + data)
            return
        self.sendMessage(data, isBinary=True)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """The request frame, or a datagram."""
        if not isBinary:
            self.close(CLOSE_UNSUPPORTED, "binary messages only")
            return
        if self._state == "chatting":
            self.factory.relay.connection_datagram(payload, self.route)
        elif self._state == "request":
            self._request(payload)

    def _request(self, payload: bytes) -> None:
        self._cancel_timer()
        self._state = "answering"
        flow = self.factory.flow
        operation, room = (payload[1], payload[wire.HEADER_SIZE : wire.HEADER_SIZE + payload[0]]) if len(payload) >= wire.HEADER_SIZE else (0, b"")
        try:
            if len(payload) >= wire.HEADER_SIZE and wire.decode_header(payload[: wire.HEADER_SIZE]).payload_size > self.factory.max_payload:
                raise wire.WireError(f"payload larger than {self.factory.max_payload} bytes", 413)
            frames, rest = wire.decode_frames(payload)
            if len(frames) != 1 or rest:
                raise wire.WireError("one whole TCRP request frame expected")
            frame = frames[0]
        except wire.WireError as e:
            flow.rooms.stats.requests[(operation, e.status)] += 1
            self._answer([wire.response_frame(operation, room, e.status, message=str(e))])
            return
        flow.handle(frame, self._ip, lambda: self._state != "done").addCallbacks(self._answer, self._failed)

    def _failed(self, failure: Failure) -> None:
        log.failure("WebSocket request failed", failure)
        self._answer([])

    def _answer(self, frames: list[bytes]) -> None:
        if self._state == "done":
            return
        for frame in frames:
            self.sendMessage(frame, isBinary=True)
        member = None
        if len(frames) == 2:
            header = wire.decode_header(frames[1][: wire.HEADER_SIZE])
            if header.operation in (wire.OP_CREATE, wire.OP_JOIN):
                token = frames[1][wire.HEADER_SIZE + header.room_size :]
                member = self.factory.relay.adopt_connection(token, self.route)
        if member is None:
            self.close(CLOSE_NORMAL)
            return
        self._state = "chatting"
        self.maxMessagePayloadSize = MAX_DATAGRAM_MESSAGE
        self.maxFramePayloadSize = MAX_DATAGRAM_MESSAGE
        log.info("{user} of room {room} chats through a WebSocket", user=member.name, room=member.room.name)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """The member chatting through this WebSocket leaves (C{left})."""
        self._cancel_timer()
        self.factory.open.discard(self)
        self._state = "done"
        if self.route is not None and self.route.member is not None:
            self.factory.relay.connection_lost(self.route)
        if self._counted:
            self._counted = False
            self.factory.flow.connection_closed(self._ip)


class GatewayFactory(WebSocketServerFactory):
    """
    The gateway's WebSockets: the request flow and the relay they use, and
    the limits they are held to.
    """

    protocol = GatewayProtocol  # type: ignore[assignment]

    def __init__(
        self,
        flow: RequestFlow,
        relay: WebRelay,
        stats: Stats,
        max_payload: int,
        request_timeout: float = 5.0,
        secure: bool = False,
        origins: Sequence[str] = (),
        trusted_proxies: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.flow = flow
        self.relay = relay
        self.stats = stats
        self.max_payload = max_payload
        self.request_timeout = request_timeout
        self.secure = secure
        self.origins = allowed_origins(origins)
        self.trusted_proxies = frozenset(normalise_ip(ip.strip()) for ip in trusted_proxies if ip.strip())
        # The first message is one request frame: header, room name, payload.
        first = wire.HEADER_SIZE + 255 + max_payload
        self.setProtocolOptions(
            maxFramePayloadSize=first,
            maxMessagePayloadSize=first,
            # autobahn's own timers off: ours run on the reactor's clock
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
            failByDrop=False,  # a failed WebSocket (1009) is told why before it is closed
            autoPingInterval=0,
            perMessageCompressionAccept=lambda offers: None,  # no compression: sizes are what they say
        )
        #: The open WebSockets.
        self.open: set[GatewayProtocol] = set()

    def ping(self) -> None:
        """Ping every open WebSocket (run every L{PING_INTERVAL} seconds)."""
        for protocol in list(self.open):
            protocol.ping()

    def close_all(self) -> None:
        """The server is stopping: close every WebSocket (their members were told)."""
        for protocol in list(self.open):
            protocol.close(1001, "server stopping")
            protocol._drop()  # the reactor is stopping: no time for the answer
