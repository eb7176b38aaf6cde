"""
The rooms' state: members, rooms, and the errors that refuse a request.

Pure: no I/O.  A member holds the route that writes to it (L{Route}); the
rooms only keep it, the relay writes through it.
"""

from __future__ import annotations

import functools
import ipaddress
import secrets
from collections import deque
from typing import Protocol

from ocm import wire
from ocm.passwords import PasswordHash
from ocm.sealing import Channel

#: A notice (or any datagram) and the member it goes to.
Sends = list[tuple[bytes, "Member"]]

# Consecutive failed deliveries after which a member is removed as unreachable.
MAX_SEND_FAILURES = 5
#: The most bytes of history one room keeps, whatever its message count.
MAX_HISTORY_BYTES = 64 * 1024


class RoomError(Exception):
    """A refused request, with the TCRP status that answers it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def normalise_ip(host: str) -> str:
    """
    The one form in which addresses are compared: IPv4-mapped IPv6
    addresses become plain IPv4, IPv6 addresses are compressed.
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


@functools.lru_cache(maxsize=65536)
def normalise_ip_cached(host: str) -> str:
    """L{normalise_ip}, remembered (for the relay's hot path; bounded)."""
    return normalise_ip(host)


def new_token() -> bytes:
    """32 hex characters from the CSPRNG."""
    return secrets.token_hex(16).encode("ascii")


class Route(Protocol):
    """
    How the relay writes to one member (L{ocm.relay.routes}): UDP through
    the C fan-out loop, a TCP tunnel, a WebSocket.  The rooms only hold it.
    """

    @property
    def peer(self) -> tuple[str, int]:
        """
        The member's address as the relay sees it: (IP, port) of its UDP
        socket, or of the TCP or WebSocket connection that carries it.
        """

    @property
    def sockaddr(self) -> bytes | None:
        """
        The packed C{struct sockaddr} the C fan-out loop sends to; None for
        routes it cannot write (they are written through L{send}).
        """

    def send(self, data: bytes) -> None:
        """Write one datagram to the member; raise C{OSError} if it cannot be."""


class Member:
    """One member of one room, known by its token."""

    __slots__ = (
        "name", "name_bytes", "prefix", "token", "room", "ip", "route", "source", "sockaddr",
        "last_seen", "failures", "is_host", "allowance", "allowance_at", "limited_at", "muted_at", "key", "channel",
    )

    def __init__(self, name: str, token: bytes, room: Room, ip: str, now: float, is_host: bool) -> None:
        self.name = name
        self.name_bytes = name.encode("utf-8")
        #: C{UserNameSize | UserName}, prepended to every message it sends.
        self.prefix = wire.sender_prefix(self.name_bytes)
        self.token = token
        self.room = room
        #: The normalised IP the token was issued to.
        self.ip = ip
        #: How the relay writes to the member: None until its token is bound
        #: (its first accepted datagram); the member is bound from then on.
        self.route: Route | None = None
        #: Where its datagrams must come from, once bound (the relay's
        #: business: a UDP (IP, port), or the connection that carries it).
        self.source: object = None
        #: The route's packed address, for the relay's C fan-out loop.
        self.sockaddr: bytes | None = None
        self.last_seen = now
        self.failures = 0
        self.is_host = is_host
        # Message rate limit (a token bucket): see L{Rooms.allow_message}.
        self.allowance = 0.0
        self.allowance_at = now
        self.limited_at = -1e18
        #: When it was last told it is muted (at most once a second).
        self.muted_at = -1e18
        #: Secure mode: the member's key, and its sealed datagrams (L{ocm.sealing}).
        self.key: bytes | None = None
        self.channel: Channel | None = None

    @property
    def addr(self) -> tuple[str, int] | None:
        """The address the member is reached at (its route's peer); None until bound."""
        route = self.route
        return None if route is None else route.peer

    def __repr__(self) -> str:
        return f"<Member {self.name!r} of {self.room.name!r}>"


class Room:
    """
    A chat room: lives as long as its host.

    On one node every member is local.  In a cluster (L{ocm.cluster}) a
    node holds the room while it has local members: a I{replica} when the
    host is on another node, with the other nodes' members known by name.
    """

    __slots__ = (
        "name", "name_bytes", "host", "host_name", "members", "bound", "password", "capacity", "open",
        "id", "replica", "roster", "remote", "peer_nodes", "history", "history_size", "history_bytes",
        "topic", "locked", "muted", "banned_names", "banned_ips",
    )

    def __init__(self, name: str, password: PasswordHash | None, capacity: int | None, room_id: str = "") -> None:
        self.name = name
        self.name_bytes = name.encode("utf-8")
        #: The host, when it is a member of this node.
        self.host: Member | None = None
        #: The host's username (the host may be on another node).
        self.host_name = ""
        #: Every local member, by username, bound or not, in order of arrival.
        self.members: dict[str, Member] = {}
        #: Local members whose token is bound to an address, in order of binding.
        self.bound: list[Member] = []
        self.password = password
        self.capacity = capacity
        self.open = True
        #: Tells this room from an earlier one of the same name (cluster).
        self.id = room_id or secrets.token_hex(8)
        #: Whether the host is on another node.
        self.replica = False
        #: Usernames of every bound member, local (None) or remote (its
        #: node), in the order this node learnt of them.
        self.roster: dict[str, str | None] = {}
        #: Members on other nodes, bound or not: username -> node.
        self.remote: dict[str, str] = {}
        #: Other nodes with members here, and how many: where chat goes.
        self.peer_nodes: dict[str, int] = {}
        #: Recent history (C{--max-history}): the last C{history_size} chat
        #: messages, each kept as the C{history} notice a newcomer receives.
        self.history: deque[bytes] = deque()
        self.history_size = 0
        self.history_bytes = 0
        # What the host governs (SPEC section 7; L{ocm.rooms.governing}).
        #: The topic ("" when none is set).
        self.topic = ""
        #: Whether joins are refused (403).
        self.locked = False
        #: Usernames whose chat and private messages are not relayed.
        self.muted: set[str] = set()
        #: Usernames and IPs refused (403) while the room lives.
        self.banned_names: set[str] = set()
        self.banned_ips: set[str] = set()

    def remember(self, out: bytes, now: float) -> None:
        """
        Keep chat message C{out} (relayed form) in the history, as its
        notice; the oldest go beyond C{history_size} messages or
        L{MAX_HISTORY_BYTES}.  A message whose notice would not fit in a
        datagram is not kept.
        """
        name_size = out[0]
        try:
            notice = wire.encode_notice(
                "history", user=out[1 : 1 + name_size].decode("utf-8"), text=out[1 + name_size :].decode("utf-8"), time=round(now, 3)
            )
        except UnicodeDecodeError:  # pragma: no cover - the relay checked it
            return
        if 1 + len(notice) > wire.MAX_RELAYED:
            return
        self.history.append(notice)
        self.history_bytes += len(notice)
        while len(self.history) > self.history_size or self.history_bytes > MAX_HISTORY_BYTES:
            self.history_bytes -= len(self.history.popleft())

    def check_join(self, username: str, ip: str) -> None:
        """Refuse (403) a join while the room is locked, or from a banned name or IP (SPEC section 7)."""
        if self.locked:
            raise RoomError(403, f"room {self.name!r} is locked")
        if username in self.banned_names or ip in self.banned_ips:
            raise RoomError(403, f"banned from room {self.name!r}")

    def member_names(self) -> list[str]:
        """Usernames of the bound members, in order of arrival."""
        return list(self.roster)

    def __repr__(self) -> str:
        return f"<Room {self.name!r}>"


