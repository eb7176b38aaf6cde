"""
The interactive client: prompts for what the flags did not give, then a
line editor (prompt_toolkit) that keeps the typed line intact while
messages print above it.

Why prompt_toolkit and not C{twisted.conch}'s recvline: recvline drops
non-ASCII input (C{héllo} became C{hllo}), and Japanese users come first.
prompt_toolkit runs on asyncio, so Twisted runs on its asyncio reactor here:
the loop is created and set, the reactor installed on it, and the main task
started with C{loop.create_task} (a prompt started any other way hangs).

Ctrl-C and SIGTERM leave the room cleanly.  At a prompt, Ctrl-C is a key
that prompt_toolkit turns into C{KeyboardInterrupt}; it must be caught in
the coroutine that awaits the prompt, because asyncio lets a
C{KeyboardInterrupt} escaping a task out of the event loop itself (the
reactor then never stopped: the process hung, ignoring SIGTERM).  Elsewhere,
SIGINT and SIGTERM are our own handlers, not Twisted's (which stop the
reactor without leaving).
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import signal
import sys
from typing import Any, TextIO

from ocm import wire
from ocm.client import render
from ocm.client.flows import Frontend, chat, list_rooms, lobby, open_room, resolve
from ocm.client.options import BadOption, parse_server, password_of, tls_of
from ocm.client.requests import RequestFailed
from ocm.client.session import EXIT_ERROR, EXIT_OK, EXIT_USAGE


class PromptUI(Frontend):
    """
    Prints above the prompt while one runs (prompt_toolkit's
    C{run_in_terminal}: the prompt steps aside, the lines are written, the
    prompt and its half-typed line are drawn again), straight to the
    terminal otherwise.

    Not prompt_toolkit's C{patch_stdout}: its thread hands each line to the
    event loop for a later turn, and the last lines of a session (why it
    ended) were lost when the prompt and the loop stopped first.  Here the
    lines wait in one batch that L{flush} writes before the chat returns.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        #: Where lines go (standard output unless a test says otherwise).
        self.stream = stream
        self._batch: list[str] = []
        self._writes: set[asyncio.Future[None]] = set()
        #: Set while the chat prompt runs: Ctrl-C and SIGTERM then leave the room.
        self.chatting = False
        #: Set by L{interrupt}: the chat prompt stops waiting for a line.
        self.stop_reading = asyncio.Event()

    def interrupt(self, why: str) -> None:
        """Leave at once (L{Frontend.interrupt}) and stop reading lines."""
        super().interrupt(why)
        self.stop_reading.set()

    def out(self, line: str) -> None:
        """Show one line (history dimmed) above the prompt, or at once if no prompt runs."""
        if line.startswith(render.HISTORY):
            line = "\x1b[2m" + line + "\x1b[0m"
        if self._batch:  # a batch waits for the prompt to step aside: keep the order
            self._batch.append(line)
            return
        from prompt_toolkit.application import get_app_or_none, run_in_terminal

        app = get_app_or_none()
        if app is None or not app.is_running:
            self._write([line])
            return
        self._batch.append(line)
        written: asyncio.Future[None] = asyncio.ensure_future(run_in_terminal(self._write_batch))
        self._writes.add(written)
        written.add_done_callback(self._writes.discard)

    def _write_batch(self) -> None:
        lines, self._batch = self._batch, []
        self._write(lines)

    def _write(self, lines: list[str]) -> None:
        if not lines:
            return
        stream = self.stream or sys.stdout
        stream.write("".join(line + "\n" for line in lines))
        stream.flush()

    async def flush(self, timeout: float = 2.0) -> None:
        """
        Wait (bounded) until every line is written above the prompt; write
        what is left (the prompt gone or stuck) straight away.
        """
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=timeout)
        self._write_batch()


def twisted(coro: Any) -> asyncio.Future[Any]:
    """Run a Twisted-flavoured coroutine from asyncio code."""
    from twisted.internet import defer

    return defer.Deferred.fromCoroutine(coro).asFuture(asyncio.get_event_loop())


def hidden() -> Any:
    """
    A prompt_toolkit input processor that shows nothing of the typed text,
    not even its length (the cursor stays put), as C{getpass} does.
    (C{is_password} shows one C{*} a character.)
    """
    from prompt_toolkit.layout.processors import Processor, Transformation, TransformationInput

    class Hidden(Processor):
        """Nothing shown; every position of the line maps to the prompt's end."""

        def apply_transformation(self, transformation_input: TransformationInput) -> Transformation:
            return Transformation([], source_to_display=lambda i: 0, display_to_source=lambda i: 0)

    return Hidden()


def completer(ui: Frontend) -> Any:
    """Tab completion at the chat prompt: the session's commands and member names (L{_Session.completions})."""
    from prompt_toolkit.completion import CompleteEvent, Completer, Completion
    from prompt_toolkit.document import Document

    class ChatCompleter(Completer):
        """Asks the session attached to C{ui}, if any."""

        def get_completions(self, document: Document, complete_event: CompleteEvent) -> Any:
            session = ui.session
            if session is None:
                return
            for text, start in session.completions(document.text_before_cursor):
                yield Completion(text, start_position=start)

    return ChatCompleter()


async def ask(session: Any, question: str, default: str | None = None, password: bool = False) -> str:
    """
    Ask one question; an empty answer takes the default.  A password is not
    echoed at all.  (Every prompt names its processors: a PromptSession keeps
    the arguments of its last prompt.)
    """
    suffix = f" [{default}]" if default else ""
    answer = await session.prompt_async(f"{question}{suffix}: ", is_password=False, input_processors=[hidden()] if password else [], completer=None)
    return answer.strip() if answer.strip() or default is None else default


class Key(enum.Enum):
    """What ended a prompt other than a line."""

    #: Ctrl-D on an empty line.
    EOF = "eof"
    #: Ctrl-C.
    INTERRUPT = "interrupt"


async def read_line(prompts: Any, completion: Any = None) -> str | Key:
    """
    One line from the chat prompt, or the key that ended it: the prompt's
    C{KeyboardInterrupt} must not escape this coroutine (see the module's
    docstring).
    """
    try:
        # The processors explicitly: a PromptSession keeps the arguments of
        # its last prompt, and a join's last question was the password.
        # Completion on Tab only (a menu popping up under every / line distracts).
        return await prompts.prompt_async(  # type: ignore[no-any-return]
            "> ", is_password=False, input_processors=[], completer=completion, complete_while_typing=False
        )
    except EOFError:
        return Key.EOF
    except KeyboardInterrupt:
        return Key.INTERRUPT


async def interactive(args: argparse.Namespace, ui: PromptUI | None = None) -> int:
    """Ask, connect, chat; a refusal lets the person try again."""
    from prompt_toolkit import PromptSession
    from twisted.internet import reactor

    prompts: Any = PromptSession()
    ui = ui or PromptUI()
    try:
        if args.host:
            host, port = args.host, args.port or 9000
        else:
            while True:
                try:
                    host, port = parse_server(await ask(prompts, "server", f"127.0.0.1:{args.port or 9000}"), args.port or 9000)
                    break
                except ValueError as e:
                    print(f"* {e}")
        tls = tls_of(args, host, print)
        host = await twisted(resolve(reactor, host))
        name = args.name or ""
        while not name:
            name = await ask(prompts, "your name")
        if args.lobby is not None:
            return await _chat_loop(prompts, ui, twisted(lobby(reactor, ui, host, args.lobby, name, args.timeout)))
        given = password_of(args)
        preset = (wire.OP_CREATE, args.create) if args.create else (wire.OP_JOIN, args.join) if args.join else None
        while True:
            if preset is None:
                action = (await ask(prompts, "create, join or list rooms? (c/j/l)", "j")).lower()[:1]
                if action == "l":
                    try:
                        for line in render.room_list(await twisted(list_rooms(reactor, host, port, tls=tls))):
                            print(f"  {line}")
                    except RequestFailed as e:
                        print(f"* {e}")
                    continue
                if action not in ("c", "j"):
                    continue
                operation = wire.OP_CREATE if action == "c" else wire.OP_JOIN
                room = ""
                while not room:
                    room = await ask(prompts, "room name")
            else:
                operation, room = preset
                preset = None
            password = given if given is not None else await ask(prompts, "password (empty for none)", "", password=True)
            capacity = args.capacity
            if operation == wire.OP_CREATE and capacity is None:
                text = await ask(prompts, "capacity (empty for no limit)", "")
                capacity = int(text) if text.isdigit() and int(text) > 0 else None
            try:
                reply = await twisted(open_room(reactor, host, port, operation, room, name, password, capacity, tls=tls, history=args.history))
            except RequestFailed as e:
                print(f"* {e}")
                return EXIT_ERROR
            if reply.status == 200:
                break
            print(f"* {render.refusal(operation, room, reply.status, reply.message)}; try again")
            given = None
            if reply.status == 409 and operation == wire.OP_JOIN:
                name = ""
                while not name:
                    name = await ask(prompts, "another name")
        granted = render.history_granted(args.history, reply.fields) if operation == wire.OP_CREATE else None
        if granted:
            ui.out(granted)
        ui.out("* type /help for commands")
        return await _chat_loop(prompts, ui, twisted(chat(reactor, ui, host, port, reply, room, name, password, args.rejoin, tls=tls, tcp_only=args.tcp_only)))
    except (EOFError, KeyboardInterrupt):
        return EXIT_OK
    except BadOption as e:
        print(f"error: {e}")
        return EXIT_USAGE


async def _chat_loop(prompts: Any, ui: PromptUI, done: asyncio.Future[int]) -> int:
    """
    Read lines into the session until it ends.  Ctrl-D leaves once what was
    typed is sent; Ctrl-C and SIGTERM leave at once (bounded: a rejoin under
    way is abandoned after 2 s).  Every line the session printed (why it
    ended, last) is on the terminal before this returns.
    """
    ui.chatting = True
    typed: asyncio.Future[str | Key] | None = None
    completion = completer(ui)
    try:
        while not done.done():
            typed = asyncio.ensure_future(read_line(prompts, completion))
            stop = asyncio.ensure_future(ui.stop_reading.wait())
            waiting: set[asyncio.Future[Any]] = {typed, done, stop}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not typed.done():
                break
            result = typed.result()
            if result is Key.EOF:
                ui.end_of_input()
                break
            if result is Key.INTERRUPT:
                ui.interrupt("Ctrl-C")
                break
            ui.line(result)
        if ui.interrupted:
            finished, _ = await asyncio.wait({done}, timeout=2)
            if not finished:
                done.cancel()
                return EXIT_OK
        return await done
    finally:
        # The lines above the prompt first, then the prompt goes (its last
        # redraw stays on the screen), then whatever came meanwhile.
        await ui.flush()
        if typed is not None and not typed.done():
            typed.cancel()
            await asyncio.wait({typed}, timeout=2)
        await ui.flush()


def run_interactive(args: argparse.Namespace) -> int:
    """Install Twisted on asyncio, run the interactive flow, return the exit code."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    from twisted.internet import asyncioreactor

    asyncioreactor.install(loop)
    from twisted.internet import reactor

    code = [EXIT_ERROR]
    ui = PromptUI()
    tasks: list[asyncio.Task[None]] = []

    async def main() -> None:
        try:
            code[0] = await interactive(args, ui)
        except asyncio.CancelledError:  # a signal before the chat
            code[0] = EXIT_OK
        finally:
            reactor.stop()  # type: ignore[attr-defined]

    def stop(why: str) -> None:
        # In the chat: leave the room (the session's end ends main()).
        # Before it: end the questions and requests.
        if ui.chatting:
            ui.interrupt(why)
        elif tasks:
            tasks[0].cancel()

    def start() -> None:
        # Twisted's handlers (installed by now) would stop the reactor without
        # leaving the room; ours run on the reactor's thread, as Twisted's do.
        signal.signal(signal.SIGINT, lambda *_: reactor.callFromThread(stop, "Ctrl-C"))  # type: ignore[attr-defined]
        signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(stop, "terminated"))  # type: ignore[attr-defined]
        tasks.append(loop.create_task(main()))

    reactor.callWhenRunning(start)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return code[0]
