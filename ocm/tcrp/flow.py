"""
Room set-up as a request flow: one TCRP request frame in, the frames that
answer it out (SPEC section 1), whatever carried it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from ocm import wire
from ocm.passwords import at_low_priority, hash_password, verify_password
from ocm.rooms import Member, RoomError, Rooms, normalise_ip
from ocm.sealing import ALGORITHM
from ocm.tcrp.limits import TokenBuckets
from ocm.tcrp.registry import LocalRegistry, Registry

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


class RequestFlow:
    """
    Answers room set-up requests (SPEC section 1) from the rooms, whatever
    carried the frame: a TCRP connection (L{ocm.tcrp.protocol}) or a
    WebSocket.  It also keeps the per-IP limits every carrier applies.

    @ivar udp_port: returns the relay's port, for the 200 response.
    @ivar run_blocking: runs a slow function (password hashing) off the
        reactor thread, at low priority, unless a test says otherwise.
    @ivar registry: where rooms are created, found and joined (the local
        rooms by default; L{ocm.cluster.registry.ClusterRegistry} when
        clustered).
    """

    def __init__(
        self,
        rooms: Rooms,
        udp_port: Callable[[], int],
        clock: IReactorTime,
        run_blocking: RunBlocking = in_worker_thread,
        request_rate: float = 200.0,
        request_burst: float = 400.0,
        password_tries: int = 5,
        max_connections_per_ip: int = 100,
        registry: Registry | None = None,
        max_history: int = 0,
    ) -> None:
        self.rooms = rooms
        self.registry: Registry = registry if registry is not None else LocalRegistry(rooms)
        #: The most history a room may keep (C{--max-history}); 0: none, the key is ignored.
        self.max_history = max_history
        self.udp_port = udp_port
        self.clock = clock
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
        if request.operation == wire.OP_CREATE and "history" in request.fields:
            # a create that asked for history learns what it was granted (a
            # server with --max-history only: a plain server ignores the key)
            sealed["history"] = member.room.history_size
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
