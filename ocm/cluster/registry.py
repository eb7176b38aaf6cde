"""
The room registry of a cluster: what the TCRP side asks, answered from
Redis (L{ClusterRegistry}), and the registry's own records
(L{SharedRoom}, password hashes as Redis keeps them).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from ocm.cluster import scripts
from ocm.cluster.links import RedisLinks
from ocm.cluster.records import NODE_GONE, Inbound, Outbound, fill_history
from ocm.cluster.state import Node, RoomFields, flat
from ocm.passwords import PasswordHash
from ocm.relay.protocol import Writer
from ocm.rooms import Member, Room, RoomError, Rooms, governing, normalise_ip

log = Logger()

#: What a TCRP client is told while Redis is unreachable (503).
UNREACHABLE = "the room registry (Redis) is unreachable; try again shortly"


def encode_password(password: PasswordHash | None) -> str:
    """A password hash as the registry keeps it (never the clear text): C{scheme$salt$digest} in hex."""
    if password is None:
        return ""
    return f"{password.scheme}${password.salt.hex()}${password.digest.hex()}"


def decode_password(text: str) -> PasswordHash | None:
    """The inverse of L{encode_password}."""
    if not text:
        return None
    scheme, salt, digest = text.split("$")
    return PasswordHash(bytes.fromhex(salt), bytes.fromhex(digest), scheme)


def pairs(flat: list[Any]) -> list[tuple[str, str]]:
    """C{[k1, v1, k2, v2]} as C{[(k1, v1), (k2, v2)]} (a Redis HGETALL reply)."""
    return list(zip(flat[::2], flat[1::2]))  # noqa: B905 (Python 3.9 has no strict=)


@dataclass(frozen=True)
class SharedRoom:
    """A room as the registry knows it: what a join needs before the password check."""

    name: str
    id: str
    host: str
    password: PasswordHash | None
    capacity: int | None
    history: int = 0
    #: The room's whole registry hash (L{RoomFields}).
    fields: dict[str, str] = field(default_factory=dict)


class ClusterRegistry:
    """
    The L{ocm.tcrp.registry.Registry} of a cluster node: creates and joins
    are decided by scripts in Redis, then made here.
    """

    def __init__(
        self, node: Node, rooms: Rooms, links: RedisLinks, outbound: Outbound, inbound: Inbound, writer: Writer, fields: RoomFields
    ) -> None:
        self.node = node
        #: Every field of the rooms held here, for rebuilds.
        self.fields = fields
        self.rooms = rooms
        self.links = links
        self.outbound = outbound
        self.inbound = inbound
        self.writer = writer
        self.clock = links.clock

    def check_up(self) -> None:
        """Raise a 503 L{RoomError} while the registry cannot be asked (Redis down, not registered, a rebuild running)."""
        if self.node.rebuilding:
            raise RoomError(503, "the room registry is being rebuilt; try again in a moment")
        if not self.links.ready:
            self.links.redis_lost()
            raise RoomError(503, UNREACHABLE)

    def check_create(self, name: str) -> None:
        """See L{ocm.tcrp.registry.Registry.check_create}."""
        self.check_up()
        self.rooms.check_create(name)

    def create(
        self, name: str, username: str, ip: str, now: float, password: PasswordHash | None, capacity: int | None, history: int = 0
    ) -> defer.Deferred[Member]:
        """See L{ocm.tcrp.registry.Registry.create}: decided by the CREATE script."""
        self.check_up()
        self.rooms.check_create(name)
        room_id = secrets.token_hex(8)
        fields = {
            "id": room_id,
            "host": username,
            "node": self.node.name,
            "capacity": "" if capacity is None else str(capacity),
            "password": encode_password(password),
            "history": str(history),
        }

        def created(result: Any) -> Member:
            if int(result) != 1:
                raise RoomError(409, f"room {name!r} already exists")
            try:
                host = self.rooms.create(
                    name, username, ip, self.clock.seconds(), password=password, capacity=capacity, room_id=room_id, history=history
                )
            except RoomError:
                self.links.script(scripts.CLOSE, name, room_id)
                raise
            self.fields.remember(room_id, fields)
            return host

        return self._counted(self.links.run(scripts.CREATE, name, room_id, username, normalise_ip(ip), *flat(fields))).addCallbacks(created, self._registry_failed)

    def _counted(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        """A create or join in flight (see L{_rebuild})."""
        self.node.in_flight += 1

        def done(result: Any) -> Any:
            self.node.in_flight -= 1
            return result

        return d.addBoth(done)

    def _registry_failed(self, failure: Failure) -> Any:
        if failure.check(RoomError):
            return failure
        log.error("room registry request failed: {error}", error=failure.getErrorMessage())
        raise RoomError(503, UNREACHABLE)

    def find(self, name: str) -> defer.Deferred[SharedRoom]:
        """See L{ocm.tcrp.registry.Registry.find}."""
        self.check_up()

        def found(fields: Any) -> SharedRoom:
            if not fields or "id" not in fields:
                raise RoomError(404, f"no room named {name!r}")
            capacity = fields.get("capacity", "")
            return SharedRoom(
                name,
                fields["id"],
                fields.get("host", ""),
                decode_password(fields.get("password", "")),
                int(capacity) if capacity else None,
                int(fields.get("history") or 0),
                {str(k): str(v) for k, v in fields.items()},
            )

        d = self.links.call("HGETALL", scripts.room_key(name, "room"))
        return d.addCallback(lambda flat: dict(pairs(flat or []))).addCallbacks(found, self._registry_failed)

    def join(self, info: SharedRoom, username: str, ip: str, now: float) -> defer.Deferred[Member]:
        """See L{ocm.tcrp.registry.Registry.join}: decided by the JOIN script."""
        self.check_up()
        if len(self.rooms.tokens) >= self.rooms.max_members:
            raise RoomError(503, "the server is at its member limit")

        def joined(result: Any) -> Any:
            status = int(result[0])
            if status == 404:
                raise RoomError(404, f"no room named {info.name!r}")
            if status == 403:
                raise RoomError(403, f"room {info.name!r} is locked" if result[1] == "locked" else f"banned from room {info.name!r}")
            if status == 409:
                raise RoomError(409, f"username {username!r} is taken in room {info.name!r}")
            if status == 503:
                raise RoomError(503, f"room {info.name!r} is full")
            held = self.rooms.rooms.get(info.name)
            fields = dict(pairs(result[4])) if len(result) > 4 else dict(info.fields)
            room = self.rooms.adopt(info.name, info.id, fields.get("host", info.host), info.password, info.capacity, info.history)
            if held is not room:
                # new here: the state SPEC section 7 keeps, as the registry
                # has it now (later changes come as RULE records; those that
                # came before this answer apply now)
                governing.load_fields(room, fields)
                self.writer.send_all(self.inbound.joined(room, asked))
            if fields:
                self.fields.remember(room.id, fields)
            members = pairs(result[1])
            if room.history_size:  # the room's history, as Redis keeps it for every node
                fill_history(room, [notice.encode("utf-8", "surrogateescape") for notice in result[3]])
            if username in room.remote:
                # a namesake on another node that the registry no longer has
                # (a rebuild gave its name away): it is gone, told as such
                self.writer.send_all(self.rooms.remote_left(room, username, NODE_GONE))
            self.writer.send_all(self.inbound.sync_remote(room, members, pairs(result[2])))
            try:
                member = self.rooms.add_member(room, username, ip, self.clock.seconds())
            except RoomError:
                self.links.script(scripts.LEAVE, info.name, info.id, username)
                self.rooms.drop_if_empty(room)
                raise
            # The JOIN script published the MEMBER record itself; the token
            # (and so the welcome) waits until every other node of the room
            # has applied it, so that nothing they relay after the welcome
            # misses the joiner.
            others = {node for _, node in members if node != self.node.name}
            return self.inbound.joins.wait(room.id, username, others).addCallback(lambda _: member)

        asked = self.clock.seconds()
        return self._counted(self.links.run(scripts.JOIN, info.name, info.id, username, normalise_ip(ip))).addCallbacks(joined, self._registry_failed)

    def set_fields(self, room: Room, fields: dict[str, str]) -> defer.Deferred[Any]:
        """
        Keep C{fields} in C{room}'s registry hash (and in this node's copy,
        which a rebuild writes back whole): the extension point of rules
        that keep state in the room (a ban list, a lock, a topic, mutes, a
        new host).  Fires with 1 if set, 0 if the room is another one now.
        """
        self.fields.update(room.id, fields)
        return self.links.script(scripts.SET_FIELDS, room.name, room.id, *flat(fields))

    def listing(self) -> defer.Deferred[list[dict[str, Any]]]:
        """See L{ocm.tcrp.registry.Registry.listing}: every room of the cluster."""
        self.check_up()

        def listed(flat: list[Any]) -> list[dict[str, Any]]:
            return [
                {"name": flat[i], "members": int(flat[i + 3]), "capacity": int(flat[i + 1]) if flat[i + 1] else None, "protected": bool(int(flat[i + 2]))}
                for i in range(0, len(flat), 4)
            ]

        return self.links.eval(scripts.LISTING).addCallbacks(listed, self._registry_failed)
