"""
The rooms service: rooms, members and tokens, in memory.

Pure state: no I/O.  Methods that depend on time take C{now}; methods that
must tell members something return the datagrams to send as a list of
C{(data, member)} pairs (L{Sends}) for the relay to write through each
member's route.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from ocm import wire
from ocm.passwords import PasswordHash
from ocm.rooms.model import MAX_SEND_FAILURES, Member, Room, RoomError, Route, Sends, new_token, normalise_ip
from ocm.rooms.peers import Peers
from ocm.sealing import Channel, new_key
from ocm.stats import Stats

log = Logger()


class Rooms:
    """
    Every room, member and token of one server.

    @ivar timeout: seconds of silence after which a member is removed, and
        after which an unbound token expires.
    """

    def __init__(
        self,
        timeout: float = 30.0,
        max_rooms: int = 10_000,
        max_members: int = 100_000,
        rate: float = 50.0,
        burst: float = 100.0,
        stats: Stats | None = None,
        token_factory: Callable[[], bytes] = new_token,
        secure: bool = False,
        peers: Peers | None = None,
    ) -> None:
        self.timeout = timeout
        self.max_rooms = max_rooms
        self.max_members = max_members
        #: Chat messages per second a member may send, and its burst.
        self.rate = rate
        self.burst = burst
        self.stats = stats if stats is not None else Stats()
        self.rooms: dict[str, Room] = {}
        self.tokens: dict[bytes, Member] = {}
        self._token_factory = token_factory
        #: Secure mode: every member gets a key, every datagram is sealed.
        self.secure = secure
        #: The other nodes (L{Peers}: none, unless clustered).
        self.peers = peers if peers is not None else Peers()
        #: Members forgotten since the relay last looked: it closes their
        #: routes (a tunnel, a WebSocket) once their last notices are out.
        self.departed: list[Member] = []

    # TCRP side

    def check_create(self, name: str) -> None:
        """Refuse early a create that cannot succeed (before hashing a password)."""
        if name in self.rooms:
            raise RoomError(409, f"room {name!r} already exists")
        if len(self.rooms) >= self.max_rooms:
            raise RoomError(503, "the server is at its room limit")
        if len(self.tokens) >= self.max_members:
            raise RoomError(503, "the server is at its member limit")

    def create(
        self,
        name: str,
        username: str,
        ip: str,
        now: float,
        password: PasswordHash | None = None,
        capacity: int | None = None,
        room_id: str = "",
        history: int = 0,
    ) -> Member:
        """Open a room with C{username} as its host; return the host member."""
        self.check_create(name)
        room = Room(name, password, capacity, room_id)
        room.history_size = history
        self.rooms[name] = room
        host = self._add(room, username, ip, now, is_host=True)
        room.host = host
        room.host_name = username
        log.info(
            "room {room} created by {user} ({protected})",
            room=name,
            user=username,
            protected="password" if password else "open",
        )
        return host

    def find(self, name: str) -> Room:
        """The open room called C{name}, or a 404."""
        room = self.rooms.get(name)
        if room is None:
            raise RoomError(404, f"no room named {name!r}")
        return room

    def join(self, room: Room, username: str, ip: str, now: float) -> Member:
        """
        Add C{username} to C{room} (whose password the caller has checked).
        """
        if not room.open:
            raise RoomError(404, f"no room named {room.name!r}")
        room.check_join(username, normalise_ip(ip))
        if username in room.members:
            raise RoomError(409, f"username {username!r} is taken in room {room.name!r}")
        if room.capacity is not None and len(room.members) >= room.capacity:
            raise RoomError(503, f"room {room.name!r} is full")
        return self.add_member(room, username, ip, now)

    def add_member(self, room: Room, username: str, ip: str, now: float) -> Member:
        """
        Add C{username} to C{room} with no checks but this node's member
        limit: the cluster's registry has checked the name and the capacity.
        """
        if len(self.tokens) >= self.max_members:
            raise RoomError(503, "the server is at its member limit")
        return self._add(room, username, ip, now, is_host=False)

    def _add(self, room: Room, username: str, ip: str, now: float, is_host: bool) -> Member:
        token = self._token_factory()
        while token in self.tokens:  # pragma: no cover - 128 random bits
            token = self._token_factory()
        member = Member(username, token, room, normalise_ip(ip), now, is_host)
        member.allowance = self.burst
        if self.secure:
            member.key = new_key()
            member.channel = Channel(member.key, wire.encode_datagram(room.name_bytes, token), server_end=True)
        room.members[username] = member
        self.tokens[token] = member
        return member

    def listing(self) -> list[dict[str, Any]]:
        """The room list of a list request: never the passwords."""
        return [
            {
                "name": room.name,
                "members": len(room.members),
                "capacity": room.capacity,
                "protected": room.password is not None,
            }
            for room in self.rooms.values()
        ]

    # UDP side

    def welcome(self, member: Member) -> bytes:
        """The welcome notice for C{member}."""
        room = member.room
        extra = {"topic": room.topic} if room.topic else {}
        return wire.encode_notice(
            "welcome",
            room=room.name,
            user=member.name,
            host=room.host_name or None,
            members=room.member_names(),
            **extra,
        )

    def bind(self, member: Member, route: Route, now: float) -> Sends:
        """
        Bind C{member}'s token to C{route} (its first accepted datagram):
        it gets the welcome, the others a join notice.
        """
        room = member.room
        member.route = route
        member.sockaddr = route.sockaddr
        member.last_seen = now
        sends: Sends = []
        notice = wire.encode_notice("join", user=member.name)
        for other in room.bound:
            sends.append((notice, other))
        room.bound.append(member)
        room.roster[member.name] = None
        sends.append((self.welcome(member), member))
        sends.extend((notice, member) for notice in room.history)
        log.info("{user} joined room {room}", user=member.name, room=room.name)
        self.peers.bound(member)
        return sends

    def who(self, member: Member) -> Sends:
        """Answer C{\\x00who}: the member list and the host."""
        room = member.room
        extra: dict[str, Any] = {}
        if room.muted:
            extra["muted"] = sorted(room.muted)
        if room.topic:
            extra["topic"] = room.topic
        notice = wire.encode_notice(
            "members", members=room.member_names(), host=room.host_name or None, **extra
        )
        return [(notice, member)]

    def allow_message(self, member: Member, now: float) -> bool:
        """
        Whether C{member} may send one more chat message now (a token bucket
        of C{rate} per second, C{burst} deep).
        """
        allowance = member.allowance + (now - member.allowance_at) * self.rate
        if allowance > self.burst:
            allowance = self.burst
        member.allowance_at = now
        if allowance < 1.0:
            member.allowance = allowance
            return False
        member.allowance = allowance - 1.0
        return True

    def rate_limited_notice(self, member: Member, now: float) -> Sends:
        """The C{rate_limited} error notice, at most once a second."""
        if now - member.limited_at < 1.0:
            return []
        member.limited_at = now
        return [(wire.encode_notice("error", code="rate_limited"), member)]

    def remove(self, member: Member, reason: str) -> Sends:
        """
        Remove C{member} for C{reason} (C{left}, C{timeout} or
        C{unreachable}).  A removed host closes its room.
        """
        room = member.room
        if self.tokens.get(member.token) is not member:
            return []
        sends: Sends = []
        if reason != "left" and member.route is not None:
            sends.append((wire.encode_notice("disconnected", reason=reason), member))
        if member is room.host:
            self._forget(member)
            self.stats.removed[reason] += 1
            log.info("host {user} of room {room} gone ({reason})", user=member.name, room=room.name, reason=reason)
            sends.extend(self.close(room, "host_left"))
            return sends
        self._forget(member)
        self.stats.removed[reason] += 1
        if member.route is not None:
            notice = wire.encode_notice("leave", user=member.name, reason=reason)
            for other in room.bound:
                sends.append((notice, other))
            log.info("{user} left room {room} ({reason})", user=member.name, room=room.name, reason=reason)
        self.peers.left(member, reason)
        if room.replica and not room.members:
            self._drop_replica(room)
        return sends

    def _forget(self, member: Member) -> None:
        room = member.room
        del self.tokens[member.token]
        del room.members[member.name]
        if member.route is not None:
            room.bound.remove(member)
            room.roster.pop(member.name, None)
        self.departed.append(member)

    def drop_if_empty(self, room: Room) -> None:
        """Forget C{room} if it is a replica with no local member (a join undone)."""
        if room.replica and not room.members:
            self._drop_replica(room)

    def _drop_replica(self, room: Room) -> None:
        room.open = False
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
        self.peers.emptied(room)

    def close(self, room: Room, reason: str, tell_peers: bool = True) -> Sends:
        """
        Close C{room} for C{reason} (C{host_left} or C{shutdown}): every
        bound member is told, every token deleted, the name freed.

        @param tell_peers: False when another node closed it (L{remote_closed}).
        """
        if not room.open:
            return []
        room.open = False
        notice = wire.encode_notice("closed", reason=reason)
        sends: Sends = []
        members = list(room.members.values())
        for member in members:
            if member.route is not None:
                sends.append((notice, member))
            self._forget(member)
            self.stats.removed[reason] += 1
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
        log.info("room {room} closed ({reason})", room=room.name, reason=reason)
        if tell_peers:
            self.peers.closed(room, reason, members)
        return sends

    # Other nodes' members (a cluster): the registry and pub/sub call these.

    def adopt(self, name: str, room_id: str, host_name: str, password: PasswordHash | None, capacity: int | None, history: int = 0) -> Room:
        """
        The local copy of a room hosted on another node (made if missing,
        or if the one held is an earlier room of that name).
        """
        room = self.rooms.get(name)
        if room is not None and room.id == room_id:
            return room
        if room is not None:
            self.close(room, "host_left")
        room = Room(name, password, capacity, room_id)
        room.history_size = history
        room.replica = True
        room.host_name = host_name
        self.rooms[name] = room
        return room

    def remote_member(self, room: Room, name: str, node: str) -> bool:
        """
        C{name}, a member on C{node}, is in C{room}; True if C{node} had no
        member in it before.
        """
        if name in room.members or room.remote.get(name) == node:
            return False
        self._drop_remote(room, name)
        room.remote[name] = node
        count = room.peer_nodes.get(node, 0)
        room.peer_nodes[node] = count + 1
        return count == 0

    def _drop_remote(self, room: Room, name: str) -> str | None:
        node = room.remote.pop(name, None)
        if node is not None:
            count = room.peer_nodes[node] - 1
            if count:
                room.peer_nodes[node] = count
            else:
                del room.peer_nodes[node]
        return node

    def remote_bound(self, room: Room, name: str, node: str) -> Sends:
        """C{name} on C{node} bound its token: the join notice, once."""
        self.remote_member(room, name, node)
        if name in room.roster or name in room.members:
            return []
        room.roster[name] = node
        notice = wire.encode_notice("join", user=name)
        return [(notice, m) for m in room.bound]

    def remote_left(self, room: Room, name: str, reason: str) -> Sends:
        """C{name}, a member on another node, is gone: the leave notice if it was bound."""
        if self._drop_remote(room, name) is None or name not in room.roster:
            return []  # unknown, or never bound: nobody was told it joined
        del room.roster[name]
        notice = wire.encode_notice("leave", user=name, reason=reason)
        return [(notice, m) for m in room.bound]

    def remote_closed(self, room: Room, reason: str) -> Sends:
        """Another node closed C{room} (its host left, or it stopped)."""
        return self.close(room, reason, tell_peers=False)

    def delivery_failed(self, member: Member) -> Sends:
        """
        Count a failed delivery to C{member}; after L{MAX_SEND_FAILURES} in
        a row it is removed as unreachable.  The count restarts whenever the
        member is heard from.
        """
        member.failures += 1
        if member.failures >= MAX_SEND_FAILURES:
            return self.remove(member, "unreachable")
        return []

    def expire(self, now: float) -> Sends:
        """
        Remove every member silent for longer than C{timeout} (bound or
        not: an unbound token expires the same way).
        """
        deadline = now - self.timeout
        sends: Sends = []
        stale = [m for m in self.tokens.values() if m.last_seen < deadline]
        for member in stale:
            sends.extend(self.remove(member, "timeout"))
        return sends

    def shutdown(self) -> Sends:
        """Close every room for C{shutdown}."""
        sends: Sends = []
        for room in list(self.rooms.values()):
            sends.extend(self.close(room, "shutdown"))
        return sends

    def counts(self) -> tuple[int, int, int]:
        """(rooms, members, bound members)."""
        bound = sum(len(room.bound) for room in self.rooms.values())
        return len(self.rooms), len(self.tokens), bound

    def evict(self, room: Room, reason: str) -> Sends:
        """
        Every local member of C{room}, a replica, is out, though the room
        lives on elsewhere: this node lost its place in a cluster (it was
        fenced, L{ocm.cluster.liveness}).  Each bound member gets
        C{disconnected} with C{reason}; they are not told of each other's
        leaving, the peers are told nothing; the replica is forgotten.
        """
        notice = wire.encode_notice("disconnected", reason=reason)
        sends: Sends = []
        for member in list(room.members.values()):
            if member.route is not None:
                sends.append((notice, member))
            self._forget(member)
            self.stats.removed[reason] += 1
        room.open = False
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
        log.info("room {room}: this node's members are out ({reason})", room=room.name, reason=reason)
        return sends
