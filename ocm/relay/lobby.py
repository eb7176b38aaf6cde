"""
The stage-1 open lobby (SPEC section 4): no rooms, no tokens; every
datagram goes to every other address heard from within the timeout.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol

from ocm import wire
from ocm.relay.sending import enlarge_receive_buffer, is_overload, sendto_of
from ocm.rooms import MAX_SEND_FAILURES
from ocm.stats import Stats

Address = tuple[str, int]


class LobbyProtocol(DatagramProtocol):
    """
    Relays C{UserNameSize | UserName | Message} datagrams, unchanged, to
    every other recently heard address.
    """

    def __init__(self, stats: Stats, clock: IReactorTime, timeout: float = 30.0) -> None:
        self.stats = stats
        self.clock = clock
        self.timeout = timeout
        #: Address -> the last time it was heard from.
        self.clients: dict[Address, float] = {}
        #: Address -> consecutive failed deliveries (only those with any).
        self.failures: dict[Address, int] = {}
        self._sendto: Any = None

    def startProtocol(self) -> None:
        """Pick the send path once the port exists; enlarge its receive buffer."""
        self._sendto = sendto_of(self.transport)
        enlarge_receive_buffer(self.transport)

    def datagramReceived(self, data: bytes, addr: Address) -> None:
        """Check one lobby datagram and relay it."""
        stats = self.stats
        stats.lobby_received += 1
        if len(data) > wire.MAX_DATAGRAM:
            stats.drop("oversize")
            return
        try:
            username, message = wire.decode_relayed(data, wire.MAX_DATAGRAM)
            if not username:
                raise wire.WireError("empty username")
        except wire.WireError:
            stats.drop("malformed")
            return
        try:
            username.decode("utf-8")
            message.decode("utf-8")
        except UnicodeDecodeError:
            stats.drop("bad_utf8")
            return
        self.clients[addr] = self.clock.seconds()
        self.failures.pop(addr, None)
        if not message:
            return  # keepalive
        sendto = self._sendto
        failed = None
        sent = 0
        for other in self.clients:
            if other != addr:
                try:
                    sendto(data, other)
                    sent += 1
                except Exception as e:
                    if failed is None:
                        failed = []
                    failed.append((other, e))
        stats.lobby_relayed += sent
        if failed is not None:
            for other, error in failed:
                if is_overload(error):
                    stats.send_overload += 1
                    continue
                stats.send_errors += 1
                count = self.failures.get(other, 0) + 1
                if count >= MAX_SEND_FAILURES:
                    self.forget(other, "unreachable")
                else:
                    self.failures[other] = count

    def forget(self, addr: Address, reason: str) -> None:
        """Stop relaying to C{addr}."""
        if self.clients.pop(addr, None) is not None:
            self.stats.removed["lobby_" + reason] += 1
        self.failures.pop(addr, None)

    def sweep(self) -> None:
        """Forget addresses silent for longer than the timeout."""
        deadline = self.clock.seconds() - self.timeout
        for addr in [a for a, seen in self.clients.items() if seen < deadline]:
            self.forget(addr, "timeout")
