"""
SPEC section 7 across the nodes of a cluster: the RULE records
(L{ocm.cluster.wire.RULE}) that carry a host's change to the other nodes
of its room, and what one does on the node that receives it
(L{RuleRecords}).

The host's node decides (L{ocm.rooms.governing}); the registry keeps the
state that outlives a node (the room's hash: topic, lock, mutes, bans, the
host and its node), written by the GOVERN script, which publishes the
record in the same step, so that a node joining the room reads the state or
gets the record, never neither.  A kick, a ban or a private message for a
member of another node is done by that node.

A record's body is a UTF-8 JSON object: C{change} (C{word}, and its
C{user}, C{topic}, C{text}, C{from}...) and C{fields} (the room's fields
that changed, as the registry keeps them).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.logger import Logger

from ocm import wire
from ocm.cluster import scripts
from ocm.cluster import wire as cw
from ocm.cluster.links import RedisLinks
from ocm.cluster.state import Node, RoomFields, flat
from ocm.rooms import Room, Rooms, Sends, governing

log = Logger()


def rule_body(change: dict[str, str], fields: dict[str, str]) -> bytes:
    """The body of a RULE record."""
    return json.dumps({"change": change, "fields": fields}, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def parse_rule(body: bytes) -> tuple[dict[str, str], dict[str, str]]:
    """(change, fields) of a RULE record's body; L{cw.ClusterWireError} if it is not one."""
    try:
        parsed = json.loads(body.decode("utf-8"))
        change, fields = parsed["change"], parsed["fields"]
        if not isinstance(change, dict) or not isinstance(fields, dict) or not isinstance(change.get("word"), str):
            raise TypeError("not a rule")
        return {str(k): str(v) for k, v in change.items()}, {str(k): str(v) for k, v in fields.items()}
    except (ValueError, KeyError, TypeError) as e:
        raise cw.ClusterWireError(f"bad RULE record: {e}") from None


def govern(
    links: RedisLinks,
    fields: RoomFields,
    room: Room,
    change: dict[str, str],
    changed: dict[str, str],
    commander: str = "",
    echo: bool = False,
    member: tuple[str, str] = ("", ""),
    refused: dict[str, str] | None = None,
) -> Any:
    """
    Run the GOVERN script for C{room}: C{changed} into its hash, the RULE
    record to the other nodes of the room (to this one too if C{echo});
    only if the registry names C{commander}, when given, of this node, as
    the host, and C{member} (user, node), when given, is still a member
    there; else the C{refused} change comes back to this node alone.  A
    ban (C{change}'s word) bans the member's IP as its join recorded it.

    This node's copy of the fields takes the change now (a rebuild writes
    it back if Redis loses it), unless it waits for the echo.
    """
    banned = change["user"] if change["word"] == "ban" else ""
    if not echo:
        fields.update(room.id, changed)
    d = links.script(
        scripts.GOVERN, room.name, room.id, rule_body(change, changed), "1" if echo else "0", member[0], member[1],
        commander, rule_body(refused, {}) if refused else "", banned, *flat(changed),
    )

    def done(result: Any) -> Any:
        if banned and isinstance(result, (str, bytes)) and result:
            ip = result if isinstance(result, str) else result.decode("utf-8", "replace")
            room.banned_ips.add(ip)
            # the other nodes' copies too (any of them may host the room
            # one day, and put its hash back after Redis lost it)
            govern(links, fields, room, {"word": "banip"}, {governing.ban_field("ip", ip): "1"}, commander=commander)
        elif result == 0 and not echo:
            log.warn("room {room}: the registry refused {word} from this node (its host has moved)", room=room.name, word=change["word"])
        return result

    return d.addCallback(done)


class RuleRecords:
    """What a RULE record does on the node that receives it."""

    def __init__(self, node: Node, rooms: Rooms, links: RedisLinks, fields: RoomFields) -> None:
        self.node = node
        self.rooms = rooms
        self.links = links
        self.fields = fields
        #: RULE records dropped: not parsed; private messages too old.
        self.bad = 0
        self.stale = 0

    def received(self, origin: str, room: Room, body: bytes, fresh: bool = True) -> Sends:
        """
        Apply one RULE record from C{origin} to C{room}: the notices for
        this node's members (a bad record is logged and dropped; a private
        message that is not C{fresh}, older than half the member timeout,
        is dropped as old chat is).
        """
        try:
            change, changed = parse_rule(body)
        except cw.ClusterWireError as e:
            self.bad += 1
            log.warn("dropped a RULE record from node {origin}: {error}", origin=origin, error=str(e))
            return []
        word = change["word"]
        if word == "private" and not fresh:
            self.stale += 1
            return []
        self.fields.update(room.id, changed)
        governing.load_fields(room, changed)
        user = change.get("user", "")
        if word in ("kick", "ban"):
            target = room.members.get(user)
            if target is None:
                return []
            if word == "ban":  # the registry banned its IP with its name
                room.banned_ips.add(target.ip)
                self.fields.update(room.id, {governing.ban_field("ip", target.ip): "1"})
            log.info("{user} {did} from room {room} by its host, of node {origin}", user=user, did="kicked" if word == "kick" else "banned", room=room.name, origin=origin)
            return self.rooms.remove(target, "kicked" if word == "kick" else "banned")
        if word in ("mute", "unmute"):
            return governing.to_all(room, wire.encode_notice(word + "d", user=user))
        if word == "topic":
            return governing.to_all(room, governing.topic_notice(change.get("topic", ""), user))
        if word in ("lock", "unlock"):
            return governing.to_all(room, wire.encode_notice(word + "ed"))
        if word == "host":
            return governing.new_host(room, user, room.members.get(user))
        if word == "unhanded" and origin == self.node.name:
            # this node's handover was refused (the member had left): the
            # room is its host's again, who is told
            member = room.members.get(user)
            if member is None or room.host is not None or room.host_name != user:
                return []
            member.is_host = True
            room.host = member
            room.replica = False
            return governing.error(member, "no_such_user")
        if word == "private":
            target = room.members.get(user)
            if target is None or target.route is None:
                return []  # gone since its node was asked
            return [(wire.encode_notice("private", user=change.get("from", ""), text=change.get("text", "")), target)]
        return []  # banip: the fields alone; or a newer node's word
