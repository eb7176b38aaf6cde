"""
The room relay: the UDP side of SPEC section 2.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from ocm import wire
from ocm.fanout import NATIVE, FanOut, Failures, fan_out_of, pack_address
from ocm.rooms import Address, Member, Room, Rooms, Sends, normalise_ip_cached
from ocm.sending import enlarge_receive_buffer, is_overload, send_all, sendto_of
from ocm.tunnel import Tunnel, is_tunnel

log = Logger()

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


class RelayProtocol(DatagramProtocol):
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
        #: Secure mode: the member bound to each address, to seal its notices.
        self._by_addr: dict[Address, Member] = {}
        #: Open tunnels (L{ocm.tunnel}) by their address.
        self.tunnels: dict[Address, Tunnel] = {}
        if rooms.secure:
            self.datagramReceived = self.sealed_datagram_received  # type: ignore[method-assign]

    def startProtocol(self) -> None:
        """Pick the send paths once the port exists; enlarge its receive buffer."""
        self._sendto = sendto_of(self.transport)
        self._fan = fan_out_of(self.transport, self._sendto, sealed=self.rooms.secure)
        enlarge_receive_buffer(self.transport)
        if getattr(self.transport, "socket", None) is not None:
            log.info("relay fan-out: the {loop} loop", loop="C" if NATIVE else "Python (the C loop was not built)")

    def send_all(self, sends: Sends) -> None:
        """Write notices returned by the rooms service (sealed, in secure mode)."""
        if sends and self._sendto is not None:
            if self.rooms.secure:
                sends = self._seal_notices(sends)
            send_all(self._sendto, sends, self.stats)
            if self.tunnels:
                self._close_orphan_tunnels()

    # Tunnels (--tunnel): members whose datagrams come and go over TCP

    def open_tunnel(self, tunnel: Tunnel) -> None:
        """
        Start writing C{tunnel}'s member through it.  A member already bound
        to a UDP address moves to the tunnel (its UDP replies were lost).
        """
        if not self.tunnels:
            self._route_through_tunnels()
        self.tunnels[tunnel.addr] = tunnel
        member = tunnel.member
        if member.addr is not None and member.addr != tunnel.addr:
            old = member.addr
            member.addr = tunnel.addr
            member.sockaddr = None
            if member.channel is not None:
                self._by_addr.pop(old, None)
                self._by_addr[tunnel.addr] = member

    def close_tunnel(self, tunnel: Tunnel) -> None:
        """The tunnel's connection is gone: its member leaves (C{left}) if it still chats through it."""
        self.tunnels.pop(tunnel.addr, None)
        member = tunnel.member
        if self.rooms.tokens.get(member.token) is member and member.addr in (tunnel.addr, None):
            self.send_all(self.rooms.remove(member, "left"))

    def _close_orphan_tunnels(self) -> None:
        tokens = self.rooms.tokens
        for tunnel in [t for t in self.tunnels.values() if tokens.get(t.member.token) is not t.member]:
            self.tunnels.pop(tunnel.addr, None)
            tunnel.transport.loseConnection()

    def _route_through_tunnels(self) -> None:
        """From the first tunnel on, sends to a tunnel address go to its tunnel."""
        raw = self._sendto
        tunnels = self.tunnels

        def sendto(data: bytes, addr: Address) -> Any:
            tunnel = tunnels.get(addr)
            if tunnel is not None:
                return tunnel.send(data)
            return raw(data, addr)

        self._sendto = sendto
        self._fan = fan_out_of(self.transport, sendto, sealed=self.rooms.secure)

    def _seal_notices(self, sends: Sends) -> Sends:
        """Each notice sealed for the member bound to its address; members gone are forgotten after."""
        sealed: Sends = []
        by_addr = self._by_addr
        for data, addr in sends:
            member = by_addr.get(addr)
            if member is not None and member.channel is not None:
                sealed.append((member.channel.seal(data), addr))
        tokens = self.rooms.tokens
        for _, addr in sends:
            member = by_addr.get(addr)
            if member is not None and tokens.get(member.token) is not member:
                del by_addr[addr]
        return sealed

    def _check(self, data: bytes, addr: Address) -> tuple[Member, int] | None:
        """
        The member a datagram comes from, and where its message starts; None
        (counted) if it fails the SPEC's checks of size, header, token, room
        and source address.
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
        if member.addr != addr:
            if not same_ip(addr[0], member.ip):
                dropped["wrong_ip"] += 1
                return None
            if member.addr is not None:
                dropped["wrong_port"] += 1
                return None
        return member, start

    def _bind(self, member: Member, addr: Address) -> None:
        """The member's first accepted datagram: bind its token to C{addr}."""
        member.sockaddr = None if is_tunnel(addr) else pack_address(addr)
        if member.channel is not None:
            self._by_addr[addr] = member
        self.send_all(self.rooms.bind(member, addr, self.clock.seconds()))

    def datagramReceived(self, data: bytes, addr: Address) -> None:
        """Check one datagram (SPEC section 2) and act on it."""
        self.stats.received += 1
        found = self._check(data, addr)
        if found is None:
            return
        member, start = found
        bound_now = member.addr is None
        if bound_now:
            self._bind(member, addr)
        self._accepted(member, data[start:], addr, bound_now)

    def sealed_datagram_received(self, data: bytes, addr: Address) -> None:
        """
        Secure mode: the same checks, then the seal (docs/secure.rst): a
        datagram that does not open, or is replayed, or has no seal is dropped
        before it can bind or refresh anything.
        """
        self.stats.received += 1
        found = self._check(data, addr)
        if found is None:
            return
        member, start = found
        if member.channel is None:  # pragma: no cover - every member of a secure server has one
            self.dropped["unsealed"] += 1
            return
        message, why = member.channel.open(data[start:])
        if message is None:
            self.dropped[why] += 1
            return
        bound_now = member.addr is None
        if bound_now:
            self._bind(member, addr)
        self._accepted(member, message, addr, bound_now)

    def _accepted(self, member: Member, message: bytes, addr: Address, bound_now: bool) -> None:
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
        out = member.prefix + message
        if len(out) > wire.MAX_RELAYED:
            dropped["too_long"] += 1
            self.send_all([(wire.encode_notice("error", code="too_long"), addr)])
            return
        self._fan_out(member, out)

    def _fan_out(self, sender: Member, out: bytes) -> None:
        """
        Write C{out} to every bound member of the sender's room but the
        sender (L{ocm.fanout}: the hot path).  Failures come back set aside
        and are dealt with after the loop, so none stops the rest of the room.
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
        sent, failed = self._fan(out, room.bound, None)  # type: ignore[misc,arg-type]
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
        if message == wire.HELLO:
            if not bound_now:  # binding already sent the welcome
                self.send_all([(self.rooms.welcome(member), member.addr)])  # type: ignore[list-item]
        elif message == wire.LEAVE:
            self.send_all(self.rooms.remove(member, "left"))
        elif message == wire.WHO:
            self.send_all(self.rooms.who(member))
        else:
            self.stats.drop("bad_control")

    def sweep(self) -> None:
        """Remove idle members and expired tokens (run by a timer)."""
        self.send_all(self.rooms.expire(self.clock.seconds()))

    def shutdown(self) -> None:
        """Tell every bound member the server is stopping; close every room."""
        self.send_all(self.rooms.shutdown())
