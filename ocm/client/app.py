"""
The client's options, its room and lobby flows, and the scripted front end.

C{python -m ocm.client} is interactive when standard input is a terminal
(see L{ocm.client.interactive}) and scripted otherwise.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from ocm import wire
from ocm.client import render
from ocm.client.requests import Reply, RequestFailed, request
from ocm.client.session import (
    EXIT_DISCONNECTED,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    ChatSession,
    Ending,
    LobbySession,
    _Session,
)

EPILOG = """\
exit status: 0 left normally, 1 cannot reach the server, 2 usage,
3 refused by the server (wrong password, no such room, name taken, full),
4 the room closed (host left or server shutdown), 5 disconnected by the
server and could not rejoin, 6 no reply over UDP.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The client's command line."""
    parser = argparse.ArgumentParser(
        prog="python -m ocm.client",
        description="Chat in ocm rooms. Interactive on a terminal; with flags and piped input, scriptable.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", help="server address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="server TCP port (default 9000)")
    parser.add_argument("--name", help="your username")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--create", metavar="ROOM", help="create ROOM and host it")
    what.add_argument("--join", metavar="ROOM", help="join ROOM")
    what.add_argument("--list", action="store_true", help="print the rooms and exit")
    what.add_argument("--lobby", metavar="PORT", type=int, help="chat in the stage-1 open lobby on UDP PORT")
    parser.add_argument("--capacity", type=int, help="with --create: most members, the host included")
    parser.add_argument("--password-file", help="read the room password from this file (first line)")
    parser.add_argument("--password", help="the room password (visible in ps: prefer OCM_PASSWORD or --password-file)")
    parser.add_argument("--no-rejoin", dest="rejoin", action="store_false", help="do not join again after a disconnection")
    parser.add_argument("--timeout", type=float, default=30.0, help="lobby only: the server's timeout, to pace keepalives")
    args = parser.parse_args(argv)
    if args.capacity is not None and args.capacity < 1:
        parser.error("--capacity must be at least 1")
    return args


def password_of(args: argparse.Namespace) -> str | None:
    """The password from --password-file, OCM_PASSWORD or --password; None if none given."""
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    if "OCM_PASSWORD" in os.environ:
        return os.environ["OCM_PASSWORD"]
    return args.password  # type: ignore[no-any-return]


def parse_server(text: str, default_port: int = 9000) -> tuple[str, int]:
    """
    C{host}, C{host:port}, C{[v6]:port} or a bare IPv6 address, as
    (host, port).
    """
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:  # a name, an IPv4 address, or a bare IPv6 address
        host, port_text = text, ""
    if not port_text:
        return host or "127.0.0.1", default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{port_text!r} is not a port number")
    return host or "127.0.0.1", int(port_text)


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

    def out(self, line: str) -> None:
        """Show one line."""
        raise NotImplementedError

    def attach(self, session: _Session | None) -> None:
        """Send typed lines to C{session} from now on."""
        self.session = session
        if session is None:
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

    def end_of_input(self) -> None:
        """No more input: leave once what was typed is sent."""
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
) -> int:
    """
    Chat in C{room} with the token of C{reply} until the session ends;
    after a disconnection, join again once (if C{rejoin}).

    @return: the exit code.
    """
    while True:
        assert reply.complete is not None
        session = ChatSession(reactor, (host, int(reply.fields["udp_port"])), room, name, reply.complete, float(reply.fields.get("timeout", 30)), ui.out)
        ending = await run_session(reactor, ui, session, host)
        if ending.message:
            ui.out(ending.message)
        if not (ending.rejoinable and rejoin):
            return ending.code
        ui.out("* joining again...")
        try:
            reply = await open_room(reactor, host, tcp_port, wire.OP_JOIN, room, name, password, None)
        except RequestFailed as e:
            ui.out(f"* could not join again: {e}")
            return EXIT_DISCONNECTED
        if reply.status != 200:
            ui.out(f"* could not join again: {render.refusal(wire.OP_JOIN, room, reply.status, reply.message)}")
            return EXIT_DISCONNECTED


async def open_room(reactor: Any, host: str, port: int, operation: int, room: str, name: str, password: str | None, capacity: int | None) -> Reply:
    """Create or join a room over TCRP."""
    payload: dict[str, Any] = {"username": name}
    if password:
        payload["password"] = password
    if capacity is not None and operation == wire.OP_CREATE:
        payload["capacity"] = capacity
    return await request(reactor, host, port, operation, room, payload)


async def list_rooms(reactor: Any, host: str, port: int) -> list[dict[str, Any]]:
    """The server's room list."""
    reply = await request(reactor, host, port, wire.OP_LIST, "", {})
    if reply.status != 200 or reply.complete is None:
        raise RequestFailed(render.refusal(wire.OP_LIST, "", reply.status, reply.message))
    rooms = wire.decode_json(reply.complete, "room list")
    return rooms if isinstance(rooms, list) else []


async def lobby(reactor: Any, ui: Frontend, host: str, port: int, name: str, timeout: float) -> int:
    """Chat in the stage-1 lobby until /leave or end of input."""
    session = LobbySession(reactor, (host, port), name, ui.out, timeout)
    return (await run_session(reactor, ui, session, host)).code


@implementer(IHalfCloseableProtocol)
class ScriptedIO(LineReceiver, Frontend):
    """
    The scripted front end over C{StandardIO}: one input line a message or a
    command; plain output lines, one an event. End of input leaves the room
    (half-close: the replies still arrive after EOF).
    """

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self) -> None:
        Frontend.__init__(self)
        self.closed: defer.Deferred[None] = defer.Deferred()

    def out(self, line: str) -> None:
        """Write one line, flushed as it happens."""
        if self.transport is not None:
            self.transport.write((line + "\n").encode("utf-8"))

    def lineReceived(self, line: bytes) -> None:
        """A line of input."""
        self.line(line.decode("utf-8", "replace").rstrip("\r"))

    def readConnectionLost(self) -> None:
        """End of input."""
        self.end_of_input()

    def writeConnectionLost(self) -> None:
        """Nobody reads our output any more."""

    def connectionLost(self, reason: Any = None) -> None:
        """Both directions are closed: output is flushed."""
        if not self.closed.called:
            self.closed.callback(None)


async def scripted(reactor: Any, args: argparse.Namespace, ui: ScriptedIO) -> int:
    """The scripted flow: everything from the flags, no prompts."""
    host = await resolve(reactor, args.host or "127.0.0.1")
    port = args.port or 9000
    try:
        if args.list:
            for line in render.room_list(await list_rooms(reactor, host, port)):
                ui.out(line)
            return EXIT_OK
        if not args.name:
            ui.out("error: --name is required")
            return EXIT_USAGE
        if args.lobby is not None:
            return await lobby(reactor, ui, host, args.lobby, args.name, args.timeout)
        if not (args.create or args.join):
            ui.out("error: give --create ROOM, --join ROOM, --list or --lobby PORT")
            return EXIT_USAGE
        operation, room = (wire.OP_CREATE, args.create) if args.create else (wire.OP_JOIN, args.join)
        password = password_of(args)
        reply = await open_room(reactor, host, port, operation, room, args.name, password, args.capacity)
    except RequestFailed as e:
        ui.out(f"error: {e}")
        return EXIT_ERROR
    if reply.status != 200:
        ui.out(f"error: {render.refusal(operation, room, reply.status, reply.message)}")
        return EXIT_REFUSED
    return await chat(reactor, ui, host, port, reply, room, args.name, password, args.rejoin)


def run_scripted(args: argparse.Namespace) -> int:
    """Run the scripted client on the default reactor; return the exit code."""
    from twisted.internet import reactor, stdio

    ui = ScriptedIO()
    stdio.StandardIO(ui, reactor=reactor)
    code = [EXIT_ERROR]

    async def main() -> None:
        try:
            code[0] = await scripted(reactor, args, ui)
        finally:
            # Flush our output, then stop.
            ui.transport.loseConnection()  # type: ignore[union-attr]
            timer = reactor.callLater(2, ui.closed.callback, None)  # type: ignore[attr-defined]
            await ui.closed
            if timer.active():
                timer.cancel()
            reactor.stop()  # type: ignore[attr-defined]

    def crashed(failure: Any) -> None:
        failure.printTraceback(file=sys.stderr)

    def start() -> None:
        # main() stops the reactor whatever happens; a bug is still shown.
        defer.Deferred.fromCoroutine(main()).addErrback(crashed)

    def interrupted() -> None:
        # Ctrl-C / SIGTERM stop the reactor. Leave the room before shutdown
        # disconnects everything: standard input's end would also leave, but
        # only if it is closed before the UDP port, which is not guaranteed.
        if ui.session is not None:
            ui.session.leave()

    reactor.addSystemEventTrigger("before", "shutdown", interrupted)  # type: ignore[attr-defined]
    reactor.callWhenRunning(start)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return code[0]


def main(argv: list[str] | None = None) -> int:
    """Entry point of C{python -m ocm.client}."""
    args = parse_args(argv)
    if sys.stdin.isatty() and sys.stdout.isatty() and not args.list:
        from ocm.client.interactive import run_interactive

        return run_interactive(args)
    return run_scripted(args)
