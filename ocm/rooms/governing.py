"""
The rules of SPEC section 7: liveness, private messages, and a host who
governs the room (kick, ban, mute, topic, lock, hand over).

Pure: each rule takes the rooms, the member who asked and what it asked,
changes the state, and returns the notices to send (L{Sends}); nothing here
writes.  The relay parses the control message and dispatches to these
through a table (L{ocm.relay.protocol.Relay.controls}).
"""

from __future__ import annotations

import json

from twisted.logger import Logger

from ocm import wire
from ocm.rooms.model import Member, Room, Sends
from ocm.rooms.service import Rooms

log = Logger()

#: The commands only the host may give.
HOST_ONLY = frozenset({"kick", "ban", "mute", "unmute", "topic", "lock", "unlock", "host"})


def error(member: Member, code: str) -> Sends:
    """The C{error} notice with C{code}, to C{member}."""
    return [(wire.encode_notice("error", code=code), member)]


def to_all(room: Room, notice: bytes) -> Sends:
    """C{notice} to every bound member of C{room} here."""
    return [(notice, m) for m in room.bound]


def ping(rooms: Rooms, member: Member, argument: str, now: float) -> Sends:
    """C{ping}: the member alone gets C{pong}."""
    return [(wire.encode_notice("pong"), member)]


def private(rooms: Rooms, member: Member, argument: str, now: float) -> Sends:
    """
    C{msg USER TEXT}: USER alone gets C{private}; the chat limits apply
    (mute, rate, C{too_long}).
    """
    target_name, _, text = argument.partition(" ")
    room = member.room
    target = room.members.get(target_name)
    # a bound member of another node is in the roster under its node
    elsewhere = target is None and room.roster.get(target_name) is not None
    if (target is None or target.route is None) and not elsewhere:
        return error(member, "no_such_user")
    if member.name in room.muted:
        rooms.stats.dropped["muted"] += 1
        return muted_notice(member, now)
    if not rooms.allow_message(member, now):
        rooms.stats.dropped["rate_limited"] += 1
        return rooms.rate_limited_notice(member, now)
    notice = wire.encode_notice("private", user=member.name, text=text)
    if 1 + len(notice) > wire.MAX_RELAYED:
        rooms.stats.dropped["too_long"] += 1
        return error(member, "too_long")
    if target is None:
        rooms.peers.private(room, member.name, target_name, text)
        return []
    return [(notice, target)]


def muted_notice(member: Member, now: float) -> Sends:
    """C{error}/C{muted}, at most once a second."""
    if now - member.muted_at < 1.0:
        return []
    member.muted_at = now
    return error(member, "muted")


def _target(member: Member, name: str) -> Member | None:
    """The member called C{name} in C{member}'s room here (bound or not)."""
    return member.room.members.get(name)


def kick(rooms: Rooms, member: Member, argument: str, now: float) -> Sends:
    """C{kick USER}: USER is removed (C{kicked}); it may join again."""
    return _remove(rooms, member, argument, "kicked")


def ban(rooms: Rooms, member: Member, argument: str, now: float) -> Sends:
    """C{ban USER}: as kick (C{banned}); its name and its token's IP may not join while the room lives."""
    return _remove(rooms, member, argument, "banned")


def _remove(rooms: Rooms, member: Member, name: str, reason: str) -> Sends:
    room = member.room
    target = _target(member, name)
    word = "ban" if reason == "banned" else "kick"
    if target is None:
        if name not in room.remote:
            return error(member, "no_such_user")
        # a member of another node: its node removes it (and, for a ban,
        # adds the IP its token was issued to)
        fields = {}
        if reason == "banned":
            room.banned_names.add(name)
            fields = {ban_field("name", name): "1"}
        log.info("{user} {did} {target} from room {room}", user=member.name, did=reason, target=name, room=room.name)
        rooms.peers.governed(room, {"word": word, "user": name}, fields)
        return []
    if reason == "banned":
        room.banned_names.add(target.name)
        room.banned_ips.add(target.ip)
        # the other nodes refuse the name and IP before the name is free again
        rooms.peers.governed(room, {"word": word, "user": target.name}, {ban_field("name", target.name): "1", ban_field("ip", target.ip): "1"})
    log.info("{user} {did} {target} from room {room}", user=member.name, did=reason, target=target.name, room=room.name)
    return rooms.remove(target, reason)


def mute(rooms: Rooms, member: Member, argument: str, now: float) -> Sends:
    """C{mute USER}: its chat and private messages are not relayed; everyone gets C{muted}."""
    return _mute(rooms, member, argument, True)


def unmute(rooms: Rooms, member: Member, argument: str, now: float) -> Sends:
    """C{unmute USER}: everyone gets C{unmuted}."""
    return _mute(rooms, member, argument, False)


def _mute(rooms: Rooms, member: Member, name: str, on: bool) -> Sends:
    room = member.room
    if name not in room.roster and name not in room.members and name not in room.remote:
        return error(member, "no_such_user")
    if on:
        room.muted.add(name)
    else:
        room.muted.discard(name)
    word = "mute" if on else "unmute"
    log.info("{user} {did} {target} in room {room}", user=member.name, did=word + "d", target=name, room=room.name)
    rooms.peers.governed(room, {"word": word, "user": name}, {"muted": muted_field(room)})
    return to_all(room, wire.encode_notice(word + "d", user=name))


def topic(rooms: Rooms, member: Member, argument: str, now: float) -> Sends:
    """C{topic TEXT}: everyone gets C{topic}; an empty TEXT clears it."""
    room = member.room
    room.topic = argument
    log.info("{user} set the topic of room {room}", user=member.name, room=room.name)
    rooms.peers.governed(room, {"word": "topic", "topic": argument, "user": member.name}, {"topic": argument})
    return to_all(room, topic_notice(argument, member.name))


def lock(rooms: Rooms, member: Member, argument: str, now: float) -> Sends:
    """C{lock}: joins are refused (403) until C{unlock}; everyone gets C{locked}."""
    return _lock(rooms, member, True)


def unlock(rooms: Rooms, member: Member, argument: str, now: float) -> Sends:
    """C{unlock}: everyone gets C{unlocked}."""
    return _lock(rooms, member, False)


def _lock(rooms: Rooms, member: Member, on: bool) -> Sends:
    room = member.room
    room.locked = on
    word = "lock" if on else "unlock"
    log.info("{user} {did} room {room}", user=member.name, did=word + "ed", room=room.name)
    rooms.peers.governed(room, {"word": word}, {"locked": "1" if on else ""})
    return to_all(room, wire.encode_notice(word + "ed"))


def hand_over(rooms: Rooms, member: Member, argument: str, now: float) -> Sends:
    """
    C{host USER}: USER becomes the host (the room lives as long as it does); everyone gets C{host}.
    USER may be a bound member of another node: the cluster makes the
    change everywhere (L{ocm.rooms.peers.Peers.handed}).
    """
    room = member.room
    target = _target(member, argument)
    if target is None or target.route is None:
        if target is None and room.roster.get(argument) is not None:
            log.info("{user} hands room {room} to {target}, of another node", user=member.name, room=room.name, target=argument)
            # no longer the host from now on: not two hosts while the
            # cluster hands the room over (L{ocm.rooms.peers.Peers.handed})
            member.is_host = False
            room.host = None
            room.replica = True
            rooms.peers.handed(room, argument, member.name)
            return []
        return error(member, "no_such_user")
    log.info("{user} handed room {room} to {target}", user=member.name, room=room.name, target=target.name)
    sends = new_host(room, target.name, target)
    rooms.peers.handed(room, target.name, member.name)
    return sends


def new_host(room: Room, name: str, member: Member | None) -> Sends:
    """
    C{name} is C{room}'s host from now on: C{member}, if it is a member of
    this node (the room lives here, not a replica), else a member of
    another node.  Every member here gets C{host}.
    """
    old = room.host
    if old is not None:
        old.is_host = False
    room.host = member
    room.host_name = name
    if member is not None:
        member.is_host = True
        room.replica = False
    else:
        room.replica = True
    return to_all(room, wire.encode_notice("host", user=name))


def topic_notice(topic: str, user: str) -> bytes:
    """The C{topic} notice: C{topic} set by C{user}."""
    return wire.encode_notice("topic", topic=topic, user=user)


# The room's governed state as the registry of a cluster keeps it: string
# fields of the room's hash (ocm.cluster.scripts.GOVERN), '' for none.


def ban_field(kind: str, value: str) -> str:
    """The field that bans a username (C{kind} C{name}) or an IP (C{ip})."""
    return f"ban:{kind}:{value}"


def muted_field(room: Room) -> str:
    """The muted usernames of C{room}, as one field ('' for none)."""
    return json.dumps(sorted(room.muted)) if room.muted else ""


def state_fields(room: Room) -> dict[str, str]:
    """Every field of C{room}'s governed state (for a room written whole)."""
    fields = {"topic": room.topic, "locked": "1" if room.locked else "", "muted": muted_field(room)}
    fields.update((ban_field("name", name), "1") for name in room.banned_names)
    fields.update((ban_field("ip", ip), "1") for ip in room.banned_ips)
    return fields


def load_fields(room: Room, fields: dict[str, str]) -> None:
    """
    Set C{room}'s governed state from C{fields}: some of them (a change
    another node made), or the room's whole hash (a room this node adopts).
    Fields it does not know are left alone.
    """
    for name, value in fields.items():
        if name == "topic":
            room.topic = value
        elif name == "locked":
            room.locked = value == "1"
        elif name == "muted":
            try:
                muted = json.loads(value) if value else []
            except ValueError:
                muted = []
            room.muted = {str(n) for n in muted} if isinstance(muted, list) else set()
        elif name.startswith("ban:name:"):
            if value:
                room.banned_names.add(name[len("ban:name:"):])
        elif name.startswith("ban:ip:"):
            if value:
                room.banned_ips.add(name[len("ban:ip:"):])


#: Section 7's control messages: the word, and its rule.
RULES = {
    "ping": ping,
    "msg": private,
    "kick": kick,
    "ban": ban,
    "mute": mute,
    "unmute": unmute,
    "topic": topic,
    "lock": lock,
    "unlock": unlock,
    "host": hand_over,
}


def govern(rooms: Rooms, member: Member, word: str, argument: str, now: float) -> Sends:
    """
    Apply section 7's control message C{word} with C{argument} from
    C{member}: C{error}/C{not_host} for a host-only one from another member.
    """
    if word in HOST_ONLY and member.room.host is not member:
        return error(member, "not_host")
    rooms.stats.commands[word] += 1
    return RULES[word](rooms, member, argument, now)
