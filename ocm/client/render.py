"""
What the client says: chat lines, notices and refusals in plain words.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ocm import wire


def clock_label(now: float | None = None) -> str:
    """C{HH:MM} in local time."""
    return time.strftime("%H:%M", time.localtime(now))


def chat_line(sender: str, text: str, now: float | None = None) -> str:
    """C{HH:MM alice: text}."""
    return f"{clock_label(now)} {sender}: {text}"


#: Starts a message from the room's history (the interactive client dims these lines).
HISTORY = "[history] "
#: Starts a private message (C{/msg}).
PRIVATE = "[private] "


def _names(names: Any) -> str:
    return ", ".join(str(n) for n in names) if names else "nobody"


def notice_line(notice: dict[str, Any], me: str | None = None) -> str:
    """
    A server notice as one readable line: C{*} and plain words, or
    C{[private] bob: text}.  C{me}: this member's name (a notice about it
    reads "you").
    """
    event = notice.get("event")
    user = notice.get("user", "?")
    if event == "welcome":
        return f"* joined room {notice.get('room')!r} as {user} (host: {notice.get('host')}; here: {_names(notice.get('members'))})"
    if event == "join":
        return f"* {user} joined"
    if event == "leave":
        reason = notice.get("reason")
        if reason == "left":
            return f"* {user} left"
        if reason == "kicked":
            return f"* {user} was kicked out by the host"
        if reason == "banned":
            return f"* {user} was banned by the host"
        return f"* {user} left ({reason})"
    if event == "members":
        extra = f"; muted: {_names(notice['muted'])}" if notice.get("muted") else ""
        return f"* members: {_names(notice.get('members'))} (host: {notice.get('host')}{extra})"
    if event == "closed":
        if notice.get("reason") == "host_left":
            return "* room closed: the host left"
        if notice.get("reason") == "shutdown":
            return "* room closed: the server is shutting down"
        return f"* room closed: {notice.get('reason')}"
    if event == "disconnected":
        reason = notice.get("reason")
        if reason == "kicked":
            return "* the host kicked you out of the room (you may join again)"
        if reason == "banned":
            return "* the host banned you from the room (no joining again while it lives)"
        why = "you were silent too long" if reason == "timeout" else "the server could not reach you" if reason == "unreachable" else reason
        return f"* disconnected by the server ({why})"
    if event == "history":
        when = notice.get("time")
        return HISTORY + chat_line(str(user), str(notice.get("text", "")), when if isinstance(when, (int, float)) else None)
    if event == "private":
        return f"{PRIVATE}{user}: {notice.get('text', '')}"
    if event == "pong":
        return "* pong: the server answers"
    if event in ("muted", "unmuted"):
        if user == me:
            return "* the host muted you: your messages are not delivered" if event == "muted" else "* the host unmuted you: your messages are delivered again"
        return f"* {user} was {event} by the host"
    if event == "topic":
        return topic_line(notice.get("topic"), user)
    if event == "locked":
        return "* the room is locked: nobody new can join"
    if event == "unlocked":
        return "* the room is unlocked: anyone may join again"
    if event == "host":
        return "* you are now the host" if user == me else f"* {user} is now the host"
    if event == "error":
        code = notice.get("code")
        if code == "too_long":
            return "* message too long; it was not delivered"
        if code == "rate_limited":
            return "* you are sending too fast; some messages were not delivered"
        if code == "no_such_user":
            return "* no member of this room has that name (names are exact; /who lists them)"
        if code == "not_host":
            return "* only the host can do that"
        if code == "muted":
            return "* you are muted: your messages are not delivered"
        return f"* error from the server: {code}"
    return f"* {wire.encode_json(notice).decode()}"


def topic_line(topic: Any, user: Any = None) -> str:
    """The room's topic, set or cleared (by C{user}, if known)."""
    by = f" (set by {user})" if user else ""
    if not topic:
        return f"* {user} cleared the topic" if user else "* no topic"
    return f"* topic: {topic}{by}"


def refusal(operation: int, room: str, status: int, message: str) -> str:
    """A TCRP refusal in plain words."""
    if status == 401:
        return f"room {room!r} needs a password" if "needs a password" in message else "wrong password"
    if status == 404:
        return f"no room named {room!r}"
    if status == 409:
        return f"a room named {room!r} already exists" if operation == wire.OP_CREATE else "that name is taken in this room"
    if status == 503:
        # Only the server knows why (a room or member limit, Redis down): its own words.
        if "is full" in message:
            return "room is full"
        return message or "the server is busy; try again later"
    if status == 429:
        return "too many attempts; wait a minute and try again"
    if status == 403:
        if "lock" in message:
            return f"room {room!r} is locked: nobody new may join"
        if "ban" in message:
            return f"you are banned from room {room!r}"
        return f"room {room!r} refused you ({message or 403})"
    return f"the server refused the request ({status}: {message})"


#: The session's pings went unanswered (SPEC section 7), nothing else came.
SERVER_GONE = "* the server stopped answering"
#: The same, and the client joins again.
SERVER_GONE_REJOINING = "* the server stopped answering; rejoining…"


def resending(count: int) -> str:
    """What is said of the C{count} lines the server did not confirm, before the rejoin."""
    lines = "line" if count == 1 else f"{count} lines"
    return f"* the server did not confirm your last {lines}: sent again once rejoined"


def rejoin_refused(room: str, status: int, message: str, hosted: bool) -> str:
    """
    The one rejoin refused.  A 404 means the room ended (with its server,
    or its host): its host (C{hosted}) is told it cannot rejoin it.
    """
    if status == 404 and hosted:
        return f"* could not join again: room {room!r} is gone (it ended with the server), and you were its host: a room that is gone cannot be rejoined; create it again to go on chatting"
    if status == 404:
        return f"* could not join again: room {room!r} is gone (no room of that name on the server now)"
    return f"* could not join again: {refusal(wire.OP_JOIN, room, status, message)}"


def history_granted(asked: int | None, answer: dict[str, Any]) -> str | None:
    """
    What a creator who asked for C{asked} messages of history is told, from
    the create answer's C{history} (the count the server keeps, docs/reach.rst;
    absent or 0: none).  None if it asked for none.
    """
    if not asked:
        return None
    granted = answer.get("history")
    if not isinstance(granted, int) or isinstance(granted, bool) or granted <= 0:
        return f"* history: asked for {asked} messages; this server keeps no history (only a server started with --max-history does)"
    kept = "the last message" if granted == 1 else f"the last {granted} messages"
    if granted < asked:
        return f"* history: asked for {asked} messages; the server keeps {kept}"
    return f"* the server keeps {kept} for newcomers"


def room_list(rooms: list[dict[str, Any]]) -> list[str]:
    """The room list, one line a room."""
    if not rooms:
        return ["no rooms"]
    lines = []
    for room in rooms:
        capacity = room.get("capacity")
        size = f"{room.get('members')}/{capacity}" if capacity else f"{room.get('members')}"
        lock = " (password)" if room.get("protected") else ""
        lines.append(f"{room.get('name')}  {size} members{lock}")
    return lines


@dataclass(frozen=True)
class Command:
    """One C{/command}: its arguments, what it does, whether only the host may."""

    name: str
    arguments: str
    meaning: str
    host_only: bool = False


#: The room's commands, in the order /help lists them (SPEC sections 2 and 7).
COMMANDS = [
    Command("who", "", "list the members of the room"),
    Command("msg", "USER TEXT", "a private message to USER alone"),
    Command("ping", "", "check that the server answers, and how fast"),
    Command("topic", "[TEXT]", "set the room's topic (no TEXT: clear it)", host_only=True),
    Command("kick", "USER", "remove USER from the room (may join again)", host_only=True),
    Command("ban", "USER", "remove USER for as long as the room lives", host_only=True),
    Command("mute", "USER", "stop delivering USER's messages", host_only=True),
    Command("unmute", "USER", "deliver USER's messages again", host_only=True),
    Command("lock", "", "let nobody new join", host_only=True),
    Command("unlock", "", "let anyone join again", host_only=True),
    Command("host", "USER", "make USER the host (the room then lives as long as USER)", host_only=True),
    Command("leave", "", "leave the room and quit (also /quit, Ctrl-D, Ctrl-C)"),
    Command("quit", "", "the same as /leave"),
    Command("help", "", "this help"),
]
#: By name.
COMMAND = {c.name: c for c in COMMANDS}
#: What the stage-1 lobby understands.
LOBBY_COMMANDS = ["leave", "quit", "help"]


def help_lines(names: list[str] | None = None, host: bool = False) -> list[str]:
    """
    /help: the commands C{names} (all by default), one a line; those only
    the host may use are marked, and whether this member is the host said.
    """
    commands = [COMMAND[n] for n in names] if names is not None else COMMANDS
    lines = ["* type a message and press Enter to send it; a line starting with / and a letter is a command:"]
    width = max(len(f"/{c.name} {c.arguments}".strip()) for c in commands)
    for c in commands:
        usage = f"/{c.name} {c.arguments}".strip()
        mark = "(host) " if c.host_only else ""
        lines.append(f"*   {usage:<{width}}  {mark}{c.meaning}")
    lines.append("* in a terminal, Tab completes a command's name and, where it takes USER, a member's name")
    if any(c.host_only for c in commands):
        lines.append("* (host): only the room's host may; " + ("you are the host" if host else "you are not the host"))
    return lines


def usage_line(name: str) -> str:
    """How C{/name} is used."""
    c = COMMAND[name]
    return f"* usage: /{c.name} {c.arguments}".rstrip()


def unknown_command(name: str, names: list[str] | None = None) -> str:
    """What an unknown C{/name} gets: not sent, and what the commands are (C{names}, all by default)."""
    listed = names if names is not None else [c.name for c in COMMANDS]
    return f"* unknown command /{name} (not sent); commands: {', '.join('/' + c for c in listed)}"
