"""
TCRP, the room set-up protocol over TCP (SPEC section 1).

One request per connection, framed in the manner of C{IntNStringReceiver}:
one buffer, parsed once the 32-byte header is whole, the declared payload
size checked as soon as the header arrives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITCPTransport
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from ocm import wire
from ocm.limits import TokenBuckets
from ocm.passwords import at_low_priority, hash_password, verify_password
from ocm.registry import LocalRegistry, Registry
from ocm.rooms import Member, RoomError, Rooms, normalise_ip
from ocm.sealing import ALGORITHM
from ocm.tunnel import Tunnel

log = Logger()

RunBlocking = Callable[..., "defer.Deferred[Any]"]


def in_worker_thread(function: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
    """Run slow work (password hashing) in a low-priority worker thread."""
    return deferToThread(at_low_priority, function, *args)


class ClientGone(Exception):
    """The client closed its connection before its request was answered."""


def json_number(value: float) -> float | int:
    """C{30.0} as C{30}: whole seconds are written as JSON integers."""
    return int(value) if float(value).is_integer() else value


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
            self.factory.relay.close_tunnel(tunnel)
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
        if frame.operation == wire.OP_TUNNEL and self.factory.relay is not None:
            self._start_tunnel(frame, rest)
            return
        self.factory.handle(frame, self._peer(), lambda: not self._lost).addCallbacks(self._answer, self._failed)

    def _start_tunnel(self, frame: wire.Frame, rest: bytes) -> None:
        """
        L{wire.OP_TUNNEL}: the token's member chats through this connection
        from now on (docs/reach.rst); the connection stays open.
        """
        factory = self.factory
        try:
            if not factory.requests.allow(self._ip, factory.clock.seconds()):
                raise RoomError(429, "too many requests from this address; slow down")
            request = wire.parse_request(frame, tunnel=True)
            member = factory.rooms.tokens.get(request.fields["token"].encode("ascii"))
            if member is None or member.room.name != request.room or member.ip != self._ip:
                raise RoomError(401, "no such member of this room for this address")
        except (RoomError, wire.WireError) as e:
            factory.rooms.stats.requests[(wire.OP_TUNNEL, e.status)] += 1
            self._error(e.status, str(e))
            return
        factory.rooms.stats.requests[(wire.OP_TUNNEL, 200)] += 1
        self._tunnel = Tunnel(self._tcp, factory.relay, member, self._ip)
        self._tcp.write(wire.response_frame(wire.OP_TUNNEL, frame.room, 200))
        factory.relay.open_tunnel(self._tunnel)
        log.info("{user} of room {room} chats through a TCP tunnel", user=member.name, room=member.room.name)
        if rest:
            self._tunnel.data_received(rest)

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


class TCRPFactory(ServerFactory):
    """
    Answers TCRP requests from the rooms service.

    @ivar udp_port: returns the relay's port, for the 200 response.
    @ivar run_blocking: runs a slow function (password hashing) off the
        reactor thread, at low priority, unless a test says otherwise.
    @ivar relay: the relay, for tunnels (C{--tunnel}); None: no tunnels.
    @ivar registry: where rooms are created, found and joined (the local
        rooms by default; L{ocm.cluster.RedisCluster} when clustered).
    """

    protocol = TCRPProtocol  # type: ignore[assignment]

    def __init__(
        self,
        rooms: Rooms,
        udp_port: Callable[[], int],
        clock: IReactorTime,
        max_payload: int = 64 * 1024,
        request_timeout: float = 5.0,
        run_blocking: RunBlocking = in_worker_thread,
        request_rate: float = 200.0,
        request_burst: float = 400.0,
        password_tries: int = 5,
        max_connections_per_ip: int = 100,
        registry: Registry | None = None,
        relay: Any = None,
        max_history: int = 0,
    ) -> None:
        self.rooms = rooms
        self.registry: Registry = registry if registry is not None else LocalRegistry(rooms)
        #: The relay, when tunnels are served (C{--tunnel}); None: operation 4 is unknown (400).
        self.relay = relay
        #: The most history a room may keep (C{--max-history}); 0: none, the key is ignored.
        self.max_history = max_history
        self.udp_port = udp_port
        self.clock = clock
        self.max_payload = max_payload
        self.request_timeout = request_timeout
        self.run_blocking = run_blocking
        #: Requests per second from one IP (429 beyond).
        self.requests = TokenBuckets(request_rate, request_burst)
        #: Wrong passwords for one room from one IP: C{password_tries} a minute.
        self.guesses = TokenBuckets(password_tries / 60.0, password_tries)
        #: Open connections by IP, and the most one IP may hold (429 beyond).
        self.connections: dict[str, int] = {}
        self.max_connections_per_ip = max_connections_per_ip

    def connection_opened(self, ip: str) -> bool:
        """Count a new connection from C{ip}; False if it is one too many."""
        count = self.connections.get(ip, 0)
        if count >= self.max_connections_per_ip:
            self.rooms.stats.requests[(0, 429)] += 1
            return False
        self.connections[ip] = count + 1
        return True

    def connection_closed(self, ip: str) -> None:
        """A counted connection from C{ip} is gone."""
        count = self.connections.get(ip, 0) - 1
        if count > 0:
            self.connections[ip] = count
        else:
            self.connections.pop(ip, None)

    def handle(self, frame: wire.Frame, peer: str, wanted: Callable[[], bool] = lambda: True) -> defer.Deferred[list[bytes]]:
        """
        Answer one whole request frame from C{peer}.

        @param wanted: whether the client is still there; checked after a
            password hash, so that a client gone meanwhile leaves no room or
            token behind.
        @return: the frames to write back, then close.
        """
        d = defer.maybeDeferred(self._dispatch, frame, peer, wanted)

        def refused(failure: Failure) -> list[bytes]:
            if failure.check(ClientGone):
                return []
            failure.trap(RoomError, wire.WireError)
            error = failure.value
            status = error.status  # type: ignore[union-attr]
            self.rooms.stats.requests[(frame.operation, status)] += 1
            log.info(
                "TCRP operation {operation} from {peer} refused: {status}",
                operation=frame.operation,
                peer=peer,
                status=status,
            )
            return [wire.response_frame(frame.operation, frame.room, status, message=str(error))]

        return d.addErrback(refused)

    def _dispatch(self, frame: wire.Frame, peer: str, wanted: Callable[[], bool]) -> Any:
        if not self.requests.allow(normalise_ip(peer), self.clock.seconds()):
            raise RoomError(429, "too many requests from this address; slow down")
        request = wire.parse_request(frame, tunnel=False, history=self.max_history > 0)
        if request.operation == wire.OP_LIST:
            return self.registry.listing().addCallback(
                lambda listing: self._ok(request, [wire.complete_frame(wire.OP_LIST, frame.room, wire.encode_json(listing))])
            )
        if request.operation == wire.OP_CREATE:
            return self._create(request, peer, wanted)
        return self._join(request, peer, wanted)

    def _ok(self, request: wire.Request, complete: list[bytes], **fields: Any) -> list[bytes]:
        self.rooms.stats.requests[(request.operation, 200)] += 1
        return [wire.response_frame(request.operation, request.room_bytes, 200, **fields), *complete]

    def _issued(self, request: wire.Request, member: Member) -> list[bytes]:
        sealed: dict[str, Any] = {}
        if member.key is not None:  # secure mode: the member's key, over TLS only
            sealed = {"key": member.key.hex(), "seal": ALGORITHM}
        return self._ok(
            request,
            [wire.complete_frame(request.operation, request.room_bytes, member.token)],
            udp_port=self.udp_port(),
            timeout=json_number(self.rooms.timeout),
            **sealed,
        )

    def _create(self, request: wire.Request, peer: str, wanted: Callable[[], bool]) -> Any:
        fields = request.fields
        self.registry.check_create(request.room)

        def create(password: Any) -> defer.Deferred[list[bytes]]:
            if not wanted():
                raise ClientGone()
            d = self.registry.create(
                request.room,
                fields["username"],
                peer,
                self.clock.seconds(),
                password,
                fields["capacity"],
                min(fields.get("history", 0), self.max_history),
            )
            return d.addCallback(lambda member: self._issued(request, member))

        if fields["password"]:
            return self.run_blocking(hash_password, fields["password"]).addCallback(create)
        return create(None)

    def _join(self, request: wire.Request, peer: str, wanted: Callable[[], bool]) -> Any:
        return self.registry.find(request.room).addCallback(self._join_found, request, peer, wanted)

    def _join_found(self, room: Any, request: wire.Request, peer: str, wanted: Callable[[], bool]) -> Any:
        fields = request.fields
        guess_key = (normalise_ip(peer), request.room)

        def join(ok: bool) -> defer.Deferred[list[bytes]]:
            if not wanted():
                raise ClientGone()
            if not ok:
                self.guesses.charge(guess_key, self.clock.seconds())
                raise RoomError(401, "wrong password")
            d = self.registry.join(room, fields["username"], peer, self.clock.seconds())
            return d.addCallback(lambda member: self._issued(request, member))

        if room.password is None:
            return join(True)
        if not fields["password"]:
            raise RoomError(401, f"room {request.room!r} needs a password")
        if self.guesses.blocked(guess_key, self.clock.seconds()):
            raise RoomError(429, "too many wrong passwords for this room; try again later")
        return self.run_blocking(verify_password, fields["password"], room.password).addCallback(join)
