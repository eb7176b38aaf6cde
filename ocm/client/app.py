"""
The scripted client: everything from the flags, one input line a message
or a command, plain output lines (standard input not a terminal).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from ocm import wire
from ocm.client import render
from ocm.client.flows import Frontend, chat, list_rooms, lobby, open_room, resolve
from ocm.client.options import BadOption, password_of, tls_of
from ocm.client.requests import RequestFailed
from ocm.client.session import EXIT_ERROR, EXIT_OK, EXIT_REFUSED, EXIT_USAGE


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
    try:
        return await _scripted(reactor, args, ui)
    except BadOption as e:
        ui.out(f"error: {e}")
        return EXIT_USAGE


async def _scripted(reactor: Any, args: argparse.Namespace, ui: ScriptedIO) -> int:
    name = args.host or "127.0.0.1"
    tls = tls_of(args, name, ui.out)
    host = await resolve(reactor, name)
    port = args.port or 9000
    try:
        if args.list:
            for line in render.room_list(await list_rooms(reactor, host, port, tls=tls)):
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
        reply = await open_room(reactor, host, port, operation, room, args.name, password, args.capacity, tls=tls, history=args.history)
    except RequestFailed as e:
        ui.out(f"error: {e}")
        return EXIT_ERROR
    if reply.status != 200:
        ui.out(f"error: {render.refusal(operation, room, reply.status, reply.message)}")
        return EXIT_REFUSED
    if operation == wire.OP_CREATE:
        granted = render.history_granted(args.history, reply.fields)
        if granted:
            ui.out(granted)
    return await chat(reactor, ui, host, port, reply, room, args.name, password, args.rejoin, tls=tls, tcp_only=args.tcp_only)


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
