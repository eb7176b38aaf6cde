"""
What both front ends do (the scripted one, L{ocm.client.app}, and the
interactive one, L{ocm.client.interactive}): resolve the server, ask it over
TCRP, run a chat session and join again after a disconnection.  The front
ends sit above this module and the sessions (L{ocm.client.session}) below
it; nothing here imports a front end.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Awaitable
from typing import Any

from twisted.internet import defer

from ocm import wire
from ocm.client import render
from ocm.client.requests import Reply, RequestFailed, request
from ocm.client.tunnel import open_tunnel
from ocm.client.session import EXIT_DISCONNECTED, EXIT_SERVER_GONE, ChatSession, Ending, LobbySession, _Session


async def resolve(reactor: Any, host: str) -> str:
    """An IP literal for C{host}: TCP and UDP must leave from the same address family."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        return await reactor.resolve(host)  # type: ignore[no-any-return]


class Frontend:
    """
    Where a session's lines go, and where typed lines come from. Lines typed
    while no session is attached (before the first, during a rejoin) wait.
    """

    def __init__(self) -> None:
        self.session: _Session | None = None
        self._pending: list[str] = []
        self._eof = False
        #: Ctrl-C or SIGTERM: leave at once, now and in any session still to come.
        self.interrupted = False

    def out(self, line: str) -> None:
        """Show one line."""
        raise NotImplementedError

    def attach(self, session: _Session | None) -> None:
        """Send typed lines to C{session} from now on."""
        self.session = session
        if session is None:
            return
        if self.interrupted:
            session.leave()
            return
        pending, self._pending = self._pending, []
        for text in pending:
            session.line(text)
        if self._eof:
            session.leave_when_ready()

    def line(self, text: str) -> None:
        """One typed line."""
        if self.session is not None:
            self.session.line(text)
        else:
            self._pending.append(text)

    def requeue(self, lines: list[str]) -> None:
        """Lines a session ended without sending for sure: first for the next session."""
        self._pending[:0] = lines

    def not_sent(self, lines: list[str]) -> None:
        """
        No session comes any more: say which typed lines were not sent
        (C{lines}, then those waiting here), rather than dropping them silently.
        An interrupted client dropped them on purpose.
        """
        lines, self._pending = [*lines, *self._pending], []
        if not self.interrupted:
            for text in lines:
                self.out(f"* not sent: {text}")

    def interrupt(self, why: str) -> None:
        """
        Ctrl-C or SIGTERM: say so and leave at once (sending C{\\x00leave});
        lines not sent yet are dropped.  During a rejoin, the next session
        leaves as soon as it starts.
        """
        if self.interrupted:
            return
        self.interrupted = True
        self._pending.clear()
        self.out(f"* {why}: leaving the room")
        if self.session is not None:
            self.session.leave()

    def end_of_input(self) -> None:
        """No more input: leave once what was typed is sent and the server has confirmed it."""
        self._eof = True
        if self.session is not None:
            self.session.leave_when_ready()


async def run_session(reactor: Any, ui: Frontend, session: _Session, host: str) -> Ending:
    """Give C{session} a UDP socket and the typed lines until it ends."""
    port = reactor.listenUDP(0, session, interface="::" if ":" in host else "")
    ui.attach(session)
    try:
        return await session.ended
    finally:
        ui.attach(None)
        await defer.maybeDeferred(port.stopListening)


async def chat(
    reactor: Any,
    ui: Frontend,
    host: str,
    tcp_port: int,
    reply: Reply,
    room: str,
    name: str,
    password: str | None,
    rejoin: bool,
    tls: Any = None,
    tcp_only: bool = False,
) -> int:
    """
    Chat in C{room} with the token of C{reply} until the session ends;
    after a disconnection, or the server stopping answering, join again
    once (if C{rejoin}): a new TCRP join, same name and password, new token.
    Lines the server did not confirm before it stopped answering, and those
    typed meanwhile, are sent after the rejoin; with no rejoin (or a failed
    one), each is said not to have been sent.

    @return: the exit code.
    """
    while True:
        assert reply.complete is not None
        token = reply.complete

        def tunnel(token: bytes = token) -> Awaitable[Any]:
            return open_tunnel(reactor, host, tcp_port, room, token, tls)

        session = ChatSession(
            reactor,
            (host, int(reply.fields["udp_port"])),
            room,
            name,
            token,
            float(reply.fields.get("timeout", 30)),
            ui.out,
            key=key_of(reply),
            tunnel=tunnel,
            tcp_only=tcp_only,
            drop_udp=os.environ.get("OCM_CLIENT_DROP_UDP") == "1",
        )
        ending = await run_session(reactor, ui, session, host)
        rejoining = ending.rejoinable and rejoin
        if ending.gone:
            ui.out(render.SERVER_GONE_REJOINING if rejoining else render.SERVER_GONE)
        elif ending.message:
            ui.out(ending.message)
        if not rejoining:
            ui.not_sent(ending.unsent)
            return ending.code
        if ending.unsent:
            ui.out(render.resending(len(ending.unsent)))
            ui.requeue(ending.unsent)
        if not ending.gone:
            ui.out("* joining again...")
        failed = EXIT_SERVER_GONE if ending.gone else EXIT_DISCONNECTED
        try:
            reply = await open_room(reactor, host, tcp_port, wire.OP_JOIN, room, name, password, None, tls=tls)
        except RequestFailed as e:
            ui.out(f"* could not join again: {e}")
            ui.not_sent([])
            return failed
        if reply.status != 200:
            ui.out(render.rejoin_refused(room, reply.status, reply.message, hosted=session.host == name))
            ui.not_sent([])
            return failed


def key_of(reply: Reply) -> bytes | None:
    """Secure mode: this member's key from the create/join answer (None from a plain server)."""
    key = reply.fields.get("key")
    if key is None:
        return None
    try:
        raw = bytes.fromhex(key)
    except (TypeError, ValueError):
        raise RequestFailed("the server sent a key that is not hex") from None
    if len(raw) != 32:
        raise RequestFailed("the server sent a key that is not 32 bytes")
    return raw


async def open_room(
    reactor: Any,
    host: str,
    port: int,
    operation: int,
    room: str,
    name: str,
    password: str | None,
    capacity: int | None,
    tls: Any = None,
    history: int | None = None,
) -> Reply:
    """Create or join a room over TCRP (a create asking for C{history} messages kept)."""
    payload: dict[str, Any] = {"username": name}
    if history and operation == wire.OP_CREATE:
        payload["history"] = history
    if password:
        payload["password"] = password
    if capacity is not None and operation == wire.OP_CREATE:
        payload["capacity"] = capacity
    return await request(reactor, host, port, operation, room, payload, tls=tls)


async def list_rooms(reactor: Any, host: str, port: int, tls: Any = None) -> list[dict[str, Any]]:
    """The server's room list."""
    reply = await request(reactor, host, port, wire.OP_LIST, "", {}, tls=tls)
    if reply.status != 200 or reply.complete is None:
        raise RequestFailed(render.refusal(wire.OP_LIST, "", reply.status, reply.message))
    rooms = wire.decode_json(reply.complete, "room list")
    return rooms if isinstance(rooms, list) else []


async def lobby(reactor: Any, ui: Frontend, host: str, port: int, name: str, timeout: float) -> int:
    """Chat in the stage-1 lobby until /leave or end of input."""
    session = LobbySession(reactor, (host, port), name, ui.out, timeout)
    return (await run_session(reactor, ui, session, host)).code
