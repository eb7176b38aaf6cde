"""
The room relay: the datagram side of SPEC section 2.

Every datagram is checked here, whatever carried it: the UDP port
(L{Relay.datagramReceived}) or a connection (a TCP tunnel, a WebSocket:
L{Relay.connection_datagram}).  An accepted one binds its member's token
to a route (L{ocm.relay.routes}) on its first arrival, and chat is fanned
out to the room (L{ocm.relay.fanout}).  Secure mode is its own class,
L{SecureRelay}, chosen when the service is wired.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from ocm import wire
from ocm.relay.fanout import NATIVE, SEALING, FanOut, Failures, fan_out_of, relay_batch, sealed_fan_out_of
from ocm.relay.routes import Connection, SealedRoute, SealedUdpRoute, UdpRoute
from ocm.relay.sending import enlarge_receive_buffer, is_overload, sendto_of
from ocm.relay.tunnel import Tunnel
from ocm.rooms import Member, Room, RoomError, Rooms, Route, Sends, governing, normalise_ip_cached

log = Logger()

Address = tuple[str, int]
#: A control message's handler: the member, the argument (text), whether it just bound.
ControlHandler = Callable[[Member, str, bool], None]
#: Section 7's control words that take no argument.
ARGUMENTLESS = frozenset({"ping", "lock", "unlock"})

# Listen larger than the largest legal datagram so that an oversize one
# arrives longer than 4096 bytes (and is dropped) instead of being cut to a
# legal-looking 4096 by recvfrom.
LISTEN_SIZE = wire.MAX_DATAGRAM + 1024


def same_ip(source: str, issued: str) -> bool:
    """
    Whether a datagram's source IP is the (normalised) IP a token was issued
    to.  On the drop path of a spoofing flood, so cheap first: a dotted quad
    from an IPv4 socket's recvfrom is already in normal form; only IPv6 text
    (IPv4-mapped, or another spelling) is parsed, through a bounded cache.
    """
    if source == issued:
        return True
    if ":" not in source:
        return False
    return normalise_ip_cached(source) == issued


class Writer(Protocol):
    """What the cluster asks of the relay: write notices, and chat from another node."""

    def send_all(self, sends: Sends) -> None:
        """Write each notice to its member."""

    def deliver(self, room: Room, out: bytes) -> None:
        """Write C{out}, chat from another node's member, to C{room}'s members here."""


class Relay(DatagramProtocol):
    """
    Validates chat datagrams against the rooms and fans them out.

    Everything that fails a check is dropped without a reply and counted in
    C{rooms.stats.dropped}.
    """

    def __init__(self, rooms: Rooms, clock: IReactorTime) -> None:
        self.rooms = rooms
        self.stats = rooms.stats
        self.dropped = rooms.stats.dropped
        self.clock = clock
        self._sendto: Any = None
        self._fan: FanOut | None = None
        #: The C loop on the port's socket, when whole batches can be relayed in C (L{batch_reader}).
        self._batch_fan: FanOut | None = None
        #: Members that chat (or are about to) through a connection, and
        #: that connection: closed when the member goes.
        self.connections: dict[Member, Connection] = {}
        #: The control messages understood (SPEC sections 2 and 7): the word,
        #: its handler, and whether it takes an argument.  Others are dropped.
        self.controls = self._control_table()

    def startProtocol(self) -> None:
        """Pick the send paths once the port exists; enlarge its receive buffer."""
        self._sendto = sendto_of(self.transport)
        self._fan = self._fan_out_for(self.transport)
        if self._batches(self.transport):
            self._batch_fan = self._fan
        enlarge_receive_buffer(self.transport)
        if getattr(self.transport, "socket", None) is not None:
            log.info("relay fan-out: the {loop} loop", loop=self._loop_name())

    def _fan_out_for(self, transport: Any) -> FanOut:
        """The C loop on a real socket when it was built, else the Python loop."""
        return fan_out_of(transport, self._sendto, UdpRoute)

    def _batches(self, transport: Any) -> bool:
        """Whether batches read from C{transport} can be relayed in C: a real socket, the C extension."""
        sock = getattr(transport, "socket", None)
        return relay_batch is not None and sock is not None and hasattr(sock, "fileno")

    def _loop_name(self) -> str:
        return "C" if NATIVE else "Python (the C loop was not built)"

    # Routes

    def _udp_route(self, member: Member, addr: Address) -> Route:
        """The route to a member bound to a UDP address."""
        return UdpRoute(self._sendto, addr)

    def _connection_route(self, member: Member, connection: Connection) -> Route:
        """The route to a member bound through a connection: the connection itself."""
        return connection

    def _opened(self, member: Member, connection: Connection, message: bytes) -> bytes | None:
        """The message of a datagram that came through a connection (as it is, here)."""
        return message

    # Writing

    def send_all(self, sends: Sends) -> None:
        """
        Write notices returned by the rooms service, each through its
        member's route; then close the connections of members gone.
        """
        stats = self.stats
        for data, member in sends:
            try:
                member.route.send(data)  # type: ignore[union-attr]
            except Exception as e:
                if is_overload(e):
                    stats.send_overload += 1
                else:
                    stats.send_errors += 1
                    log.debug("send to {user} failed: {error}", user=member.name, error=e)
            else:
                stats.notices += 1
        if self.rooms.departed:
            self._close_departed()

    def _close_departed(self) -> None:
        """The members the rooms forgot: their connections close (after their last notices)."""
        departed, self.rooms.departed = self.rooms.departed, []
        connections = self.connections
        for member in departed:
            connection = connections.pop(member, None)
            if connection is not None:
                connection.close()

    # Connections: tunnels (--tunnel) and WebSockets

    @property
    def tunnels(self) -> list[Tunnel]:
        """The open tunnels."""
        return [c for c in self.connections.values() if isinstance(c, Tunnel)]

    def open_tunnel(self, transport: Any, room: str, token: bytes, ip: str) -> Tunnel:
        """
        Start a tunnel on C{transport} for the member of C{token} in C{room},
        issued to C{ip} (TCRP operation 4); raise a 401 L{RoomError} if
        there is no such member.  A member already bound moves to the
        tunnel (its UDP replies were lost).
        """
        member = self.rooms.tokens.get(token)
        if member is None or member.room.name != room or member.ip != ip:
            raise RoomError(401, "no such member of this room for this address")
        tunnel = Tunnel(transport, self, member, ip)
        self.connections[member] = tunnel
        if member.route is not None:
            member.source = tunnel
            member.route = self._connection_route(member, tunnel)
            member.sockaddr = None
        return tunnel

    def adopt_connection(self, token: bytes, connection: Any) -> Member | None:
        """
        C{connection} (a WebSocket) carries the datagrams of the member of
        C{token}, just created or joined through it: the member goes when
        the connection does, and the connection when the member does.
        """
        member = self.rooms.tokens.get(token)
        if member is not None:
            connection.member = member
            self.connections[member] = connection
        return member

    def connection_counts(self) -> dict[str, int]:
        """Members that chat through a connection, by kind (C{tunnel}, C{web})."""
        counts: dict[str, int] = {}
        for connection in self.connections.values():
            counts[connection.kind] = counts.get(connection.kind, 0) + 1
        return counts

    def connection_lost(self, connection: Any) -> None:
        """A connection is gone: its member leaves (C{left}) if it still chats through it."""
        member: Member | None = getattr(connection, "member", None)
        if member is None:
            return
        if self.connections.get(member) is connection:
            del self.connections[member]
        if self.rooms.tokens.get(member.token) is member and member.source in (connection, None):
            self.send_all(self.rooms.remove(member, "left"))

    def connection_datagram(self, data: bytes, connection: Any) -> None:
        """One datagram that came through C{connection}: the same checks as over UDP."""
        self.stats.received += 1
        found = self._check(data, connection)
        if found is None:
            return
        member, start = found
        carried = connection.member
        if carried is not None and carried is not member:
            # a connection carries its own member's datagrams, no other's
            self.dropped["wrong_port"] += 1
            return
        message = self._opened(member, connection, data[start:])
        if message is None:
            return
        bound_now = member.route is None
        if bound_now:
            connection.member = member
            self.connections[member] = connection
            member.source = connection
            self.send_all(self.rooms.bind(member, self._connection_route(member, connection), self.clock.seconds()))
        self._accepted(member, message, bound_now)

    # Reading

    def _check(self, data: bytes, source: Any) -> tuple[Member, int] | None:
        """
        The member a datagram comes from, and where its message starts; None
        (counted) if it fails the SPEC's checks of size, header, token, room
        and source (a UDP address, or a connection).
        """
        dropped = self.dropped
        size = len(data)
        if size > wire.MAX_DATAGRAM:
            dropped["oversize"] += 1
            return None
        if size < 2:
            dropped["malformed"] += 1
            return None
        r = data[0]
        start = 2 + r + data[1]
        if size < start:
            dropped["malformed"] += 1
            return None
        member = self.rooms.tokens.get(data[2 + r : start])
        if member is None:
            dropped["unknown_token"] += 1
            return None
        if data[2 : 2 + r] != member.room.name_bytes:
            dropped["wrong_room"] += 1
            return None
        if member.source != source:
            if not same_ip(source[0] if source.__class__ is tuple else source.ip, member.ip):
                dropped["wrong_ip"] += 1
                return None
            if member.source is not None:
                dropped["wrong_port"] += 1
                return None
        return member, start

    def _bind_udp(self, member: Member, addr: Address) -> None:
        """The member's first accepted datagram came over UDP: bind its token to C{addr}."""
        member.source = addr
        self.send_all(self.rooms.bind(member, self._udp_route(member, addr), self.clock.seconds()))

    def batch_reader(self) -> Callable[[int, int, int, int], int] | None:
        """
        How the port (L{ocm.relay.port.FastPort}) hands this relay whole
        C{recvmmsg} batches: C{read(fd, count, size, budget) -> datagrams
        read}, C{count} a system call until the port is drained or
        C{budget} are read.  The C extension relays a bound UDP member's
        chat that every rule lets through unchanged (the steps of
        L{_check}, L{_accepted} and L{_fan_out}), at the time of its batch,
        and hands every other datagram to L{datagramReceived} in its turn.
        None where that does not apply (no C extension, a fake transport,
        secure mode, a fan-out other than the C loop).
        """
        if self._batch_fan is None or self._fan is not self._batch_fan:
            return None
        return self._read_batch

    def _read_batch(self, fd: int, count: int, size: int, budget: int) -> int:
        rooms = self.rooms
        return relay_batch(  # type: ignore[misc]
            fd, count, size, budget, self.clock.seconds, rooms.tokens, self.stats, rooms, self._handle, self._failed_in_batch
        )

    def _handle(self, data: bytes, addr: Address) -> None:
        """One datagram of a batch that the C path left to Python; a failure is logged, the batch goes on."""
        try:
            self.datagramReceived(data, addr)
        except Exception:
            log.failure("datagram handler failed")

    def _failed_in_batch(self, failed: Failures) -> None:
        """L{_delivery_failed}, for the C path; a failure is logged, the batch goes on."""
        try:
            self._delivery_failed(failed)
        except Exception:
            log.failure("datagram handler failed")

    def datagramReceived(self, data: bytes, addr: Address) -> None:
        """Check one UDP datagram (SPEC section 2) and act on it."""
        self.stats.received += 1
        found = self._check(data, addr)
        if found is None:
            return
        member, start = found
        bound_now = member.route is None
        if bound_now:
            self._bind_udp(member, addr)
        self._accepted(member, data[start:], bound_now)

    def _accepted(self, member: Member, message: bytes, bound_now: bool) -> None:
        """An accepted datagram's message: keepalive, control or chat."""
        dropped = self.dropped
        member.last_seen = now = self.clock.seconds()
        member.failures = 0
        if not message:
            return  # keepalive
        if message[0] == wire.CONTROL:
            self._control(member, message, bound_now)
            return
        try:
            message.decode("utf-8")
        except UnicodeDecodeError:
            dropped["bad_utf8"] += 1
            return
        if not self.rooms.allow_message(member, now):
            dropped["rate_limited"] += 1
            self.send_all(self.rooms.rate_limited_notice(member, now))
            return
        if member.room.muted and member.name in member.room.muted:
            dropped["muted"] += 1
            self.send_all(governing.muted_notice(member, now))
            return
        out = member.prefix + message
        if len(out) > wire.MAX_RELAYED:
            dropped["too_long"] += 1
            self.send_all([(wire.encode_notice("error", code="too_long"), member)])
            return
        self._fan_out(member, out)

    def _fan_out(self, sender: Member, out: bytes) -> None:
        """
        Write C{out} to every bound member of the sender's room but the
        sender (L{ocm.relay.fanout}: the hot path).  Failures come back set
        aside and are dealt with after the loop, so none stops the rest of
        the room.
        """
        room = sender.room
        sent, failed = self._fan(out, room.bound, sender)  # type: ignore[misc]
        self.stats.relayed += sent
        if failed is not None:
            self._delivery_failed(failed)
        if room.history_size:
            room.remember(out, self.clock.seconds())
        peers = self.rooms.peers
        if peers.shared:
            peers.chat(room, out)

    def deliver(self, room: Room, out: bytes) -> None:
        """
        Write C{out}, a chat message from another node's member, to every
        bound member of C{room} here.  (The same steps as L{_fan_out}, kept
        apart: one more call on the per-datagram path measured 3-5% in
        C{bench/relay_bench.py}.)
        """
        sent, failed = self._fan(out, room.bound, None)  # type: ignore[misc]
        self.stats.relayed += sent
        if failed is not None:
            self._delivery_failed(failed)
        if room.history_size:
            room.remember(out, self.clock.seconds())

    def _delivery_failed(self, failed: Failures) -> None:
        sends: Sends = []
        for member, error in failed:
            if is_overload(error):
                self.stats.send_overload += 1
                continue
            self.stats.send_errors += 1
            log.debug("delivery to {user} failed: {error}", user=member.name, error=error)
            sends.extend(self.rooms.delivery_failed(member))
        self.send_all(sends)

    def _control(self, member: Member, message: bytes, bound_now: bool) -> None:
        """A control message (SPEC sections 2 and 7), dispatched through L{controls}."""
        word, space, argument = message[1:].partition(b" ")
        entry = self.controls.get(word)
        if entry is None or (space and not entry[1]):
            self.stats.drop("bad_control")
            return
        try:
            text = argument.decode("utf-8")
        except UnicodeDecodeError:
            self.stats.drop("bad_utf8")
            return
        entry[0](member, text, bound_now)

    def _hello(self, member: Member, argument: str, bound_now: bool) -> None:
        """C{hello}: the welcome again (binding already sent it the first time)."""
        if not bound_now:
            self.send_all([(self.rooms.welcome(member), member)])

    def _leave(self, member: Member, argument: str, bound_now: bool) -> None:
        """C{leave}: the member leaves."""
        self.send_all(self.rooms.remove(member, "left"))

    def _who(self, member: Member, argument: str, bound_now: bool) -> None:
        """C{who}: the member list."""
        self.send_all(self.rooms.who(member))

    def _governed(self, word: str) -> ControlHandler:
        """A section 7 command: its rule (L{ocm.rooms.governing}) decides."""

        def handle(member: Member, argument: str, bound_now: bool) -> None:
            self.send_all(governing.govern(self.rooms, member, word, argument, self.clock.seconds()))

        return handle

    def _control_table(self) -> dict[bytes, tuple[ControlHandler, bool]]:
        """Each control word, its handler, and whether it takes an argument."""
        table: dict[bytes, tuple[ControlHandler, bool]] = {
            b"hello": (self._hello, False),
            b"leave": (self._leave, False),
            b"who": (self._who, False),
        }
        for word in governing.RULES:
            table[word.encode("ascii")] = (self._governed(word), word not in ARGUMENTLESS)
        return table

    def sweep(self) -> None:
        """Remove idle members and expired tokens (run by a timer)."""
        self.send_all(self.rooms.expire(self.clock.seconds()))

    def shutdown(self) -> None:
        """Tell every bound member the server is stopping; close every room."""
        self.send_all(self.rooms.shutdown())


class SecureRelay(Relay):
    """
    The relay in secure mode (docs/secure.rst): every datagram a UDP or
    tunnel member sends must open with its key (a datagram that does not,
    or is replayed, or has no seal is dropped before it can bind or refresh
    anything), and every datagram to it is sealed by its route.
    """

    def _fan_out_for(self, transport: Any) -> FanOut:
        """Each datagram sealed for its recipient: by the C seal loop where it was built, else by its route."""
        return sealed_fan_out_of(transport)

    def _batches(self, transport: Any) -> bool:
        """Never: every datagram is opened and sealed (the C relay path is the plain relay's)."""
        return False

    def _loop_name(self) -> str:
        if SEALING:
            return "C (secure mode: sealed for each recipient, libcrypto)"
        return "Python (secure mode: sealed for each recipient)"

    def _udp_route(self, member: Member, addr: Address) -> Route:
        """A UDP member's route, sealing with its key."""
        assert member.channel is not None
        return SealedUdpRoute(self._sendto, addr, member.channel)

    def _connection_route(self, member: Member, connection: Connection) -> Route:
        """A tunnel's member: sealed; a browser's: in the clear inside TLS."""
        if connection.sealed:
            assert member.channel is not None
            return SealedRoute(connection, member.channel)
        return connection

    def _open(self, member: Member, sealed: bytes) -> bytes | None:
        message, why = member.channel.open(sealed)  # type: ignore[union-attr]
        if message is None:
            self.dropped[why] += 1
        return message

    def _opened(self, member: Member, connection: Connection, message: bytes) -> bytes | None:
        """A tunnel's datagram opened with the member's key; a browser's as it is."""
        return self._open(member, message) if connection.sealed else message

    def datagramReceived(self, data: bytes, addr: Address) -> None:
        """The same checks as L{Relay.datagramReceived}, then the seal."""
        self.stats.received += 1
        found = self._check(data, addr)
        if found is None:
            return
        member, start = found
        message = self._open(member, data[start:])
        if message is None:
            return
        bound_now = member.route is None
        if bound_now:
            self._bind_udp(member, addr)
        self._accepted(member, message, bound_now)
