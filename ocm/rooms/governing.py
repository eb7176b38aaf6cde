"""
The rules of SPEC section 7: liveness, private messages, and a host who
governs the room (kick, ban, mute, topic, lock, hand over).

Pure: each rule takes the rooms, the member who asked and what it asked,
changes the state, and returns the notices to send (L{Sends}); nothing here
writes.  The relay parses the control message and dispatches to these
through a table (L{ocm.relay.protocol.Relay.controls}).
"""

from __future__ import annotations

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
    target = member.room.members.get(target_name)
    if target is None or target.route is None:
        return error(member, "no_such_user")
    if member.name in member.room.muted:
        rooms.stats.dropped["muted"] += 1
        return muted_notice(member, now)
    if not rooms.allow_message(member, now):
        rooms.stats.dropped["rate_limited"] += 1
        return rooms.rate_limited_notice(member, now)
    notice = wire.encode_notice("private", user=member.name, text=text)
    if 1 + len(notice) > wire.MAX_RELAYED:
        rooms.stats.dropped["too_long"] += 1
        return error(member, "too_long")
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
    target = _target(member, name)
    if target is None:
        return error(member, "no_such_user")
    room = member.room
    if reason == "banned":
        room.banned_names.add(target.name)
        room.banned_ips.add(target.ip)
    log.info("{user} {did} {target} from room {room}", user=member.name, did=reason, target=target.name, room=room.name)
    return rooms.remove(target, reason)


def mute(rooms: Rooms, member: Member, argument: str, now: float) -> Sends:
    """C{mute USER}: its chat and private messages are not relayed; everyone gets C{muted}."""
    return _mute(member, argument, True)


def unmute(rooms: Rooms, member: Member, argument: str, now: float) -> Sends:
    """C{unmute USER}: everyone gets C{unmuted}."""
    return _mute(member, argument, False)


def _mute(member: Member, name: str, on: bool) -> Sends:
    room = member.room
    if name not in room.roster and name not in room.members:
        return error(member, "no_such_user")
    if on:
        room.muted.add(name)
    else:
        room.muted.discard(name)
    log.info("{user} {did} {target} in room {room}", user=member.name, did="muted" if on else "unmuted", target=name, room=room.name)
    return to_all(room, wire.encode_notice("muted" if on else "unmuted", user=name))


def topic(rooms: Rooms, member: Member, argument: str, now: float) -> Sends:
    """C{topic TEXT}: everyone gets C{topic}; an empty TEXT clears it."""
    room = member.room
    room.topic = argument
    log.info("{user} set the topic of room {room}", user=member.name, room=room.name)
    return to_all(room, wire.encode_notice("topic", topic=argument, user=member.name))


def lock(rooms: Rooms, member: Member, argument: str, now: float) -> Sends:
    """C{lock}: joins are refused (403) until C{unlock}; everyone gets C{locked}."""
    return _lock(member, True)


def unlock(rooms: Rooms, member: Member, argument: str, now: float) -> Sends:
    """C{unlock}: everyone gets C{unlocked}."""
    return _lock(member, False)


def _lock(member: Member, on: bool) -> Sends:
    room = member.room
    room.locked = on
    log.info("{user} {did} room {room}", user=member.name, did="locked" if on else "unlocked", room=room.name)
    return to_all(room, wire.encode_notice("locked" if on else "unlocked"))


def hand_over(rooms: Rooms, member: Member, argument: str, now: float) -> Sends:
    """C{host USER}: USER becomes the host (the room lives as long as it does); everyone gets C{host}."""
    room = member.room
    target = _target(member, argument)
    if target is None or target.route is None:
        return error(member, "no_such_user")
    member.is_host = False
    target.is_host = True
    room.host = target
    room.host_name = target.name
    log.info("{user} handed room {room} to {target}", user=member.name, room=room.name, target=target.name)
    return to_all(room, wire.encode_notice("host", user=target.name))


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
