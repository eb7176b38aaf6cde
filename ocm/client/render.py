"""
What the client says: chat lines, notices and refusals in plain words.
"""

from __future__ import annotations

import time
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


def _names(names: Any) -> str:
    return ", ".join(str(n) for n in names) if names else "nobody"


def notice_line(notice: dict[str, Any]) -> str:
    """A server notice as one readable line starting with C{*}."""
    event = notice.get("event")
    user = notice.get("user", "?")
    if event == "welcome":
        return f"* joined room {notice.get('room')!r} as {user} (host: {notice.get('host')}; here: {_names(notice.get('members'))})"
    if event == "join":
        return f"* {user} joined"
    if event == "leave":
        reason = notice.get("reason")
        return f"* {user} left" if reason == "left" else f"* {user} left ({reason})"
    if event == "members":
        return f"* members: {_names(notice.get('members'))} (host: {notice.get('host')})"
    if event == "closed":
        if notice.get("reason") == "host_left":
            return "* room closed: the host left"
        if notice.get("reason") == "shutdown":
            return "* room closed: the server is shutting down"
        return f"* room closed: {notice.get('reason')}"
    if event == "disconnected":
        reason = notice.get("reason")
        why = "you were silent too long" if reason == "timeout" else "the server could not reach you" if reason == "unreachable" else reason
        return f"* disconnected by the server ({why})"
    if event == "history":
        when = notice.get("time")
        return HISTORY + chat_line(str(user), str(notice.get("text", "")), when if isinstance(when, (int, float)) else None)
    if event == "error":
        code = notice.get("code")
        if code == "too_long":
            return "* message too long; it was not delivered"
        if code == "rate_limited":
            return "* you are sending too fast; some messages were not delivered"
        return f"* error from the server: {code}"
    return f"* {wire.encode_json(notice).decode()}"


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
    return f"the server refused the request ({status}: {message})"


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


#: The commands, in the order /help lists them.
COMMANDS = ["who", "leave", "quit", "help"]


def unknown_command(name: str) -> str:
    """What an unknown C{/name} gets: not sent, and what the commands are."""
    return f"* unknown command /{name} (not sent); commands: {', '.join('/' + c for c in COMMANDS)}"


HELP = [
    "* type a message and press Enter to send it",
    "* /who      list the members of the room",
    "* /leave    leave the room and quit (also /quit, Ctrl-D, Ctrl-C)",
    "* /help     this help",
]
