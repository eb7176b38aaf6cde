"""
The client's rough edges, found by trying it as a new user: each test here
failed before its fix.  Unit tests drive the client's own code with fakes;
the others run C{python -m ocm.client} against a real server on 127.0.0.1
(in a pseudo-terminal where the terminal matters).
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from ocm import wire
from ocm.client.flows import Frontend
from ocm.client import render
from ocm.client.session import EXIT_CLOSED, EXIT_NO_UDP, EXIT_OK, EXIT_REFUSED, EXIT_USAGE, ChatSession, Ending
from ocm.client.tunnel import no_delay
from tests.helpers import FakeDatagramTransport, sleep, wait_until
from tests.test_client_end_to_end import ClientCase, answer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeTCP:
    """A TCP transport that records C{setTcpNoDelay}."""

    def __init__(self, fails: bool = False) -> None:
        self.no_delay: bool | None = None
        self.fails = fails

    def setTcpNoDelay(self, enabled: bool) -> None:
        """Record the setting (or fail as a closed socket does)."""
        if self.fails:
            raise OSError("closed")
        self.no_delay = enabled


class FakeTLS:
    """A TLS transport: no C{setTcpNoDelay} of its own, a TCP one beneath."""

    def __init__(self, tcp: FakeTCP) -> None:
        self.transport = tcp


class ImportTests(unittest.TestCase):
    """The client stands apart from the server."""

    def test_no_server_modules(self) -> None:
        """Importing every client module loads only ocm.wire, ocm.sealing, ocm.tls and the client's own."""
        code = (
            "import sys\n"
            "import ocm.client.cli, ocm.client.app, ocm.client.interactive, ocm.client.tunnel\n"
            "import ocm.client.flows, ocm.client.options, ocm.client.requests, ocm.client.session, ocm.client.render\n"
            "import ocm.tls\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('ocm'))))\n"
        )
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True)
        loaded = set(done.stdout.split())
        shared = {"ocm", "ocm.wire", "ocm.sealing", "ocm.tls"}
        self.assertEqual({m for m in loaded if not m.startswith("ocm.client")} - shared, set())

    def test_no_delay(self) -> None:
        """Nagle goes off on a TCP transport, or on the one beneath TLS; a closed socket is no error."""
        tcp = FakeTCP()
        no_delay(tcp)
        self.assertIs(tcp.no_delay, True)
        beneath = FakeTCP()
        no_delay(FakeTLS(beneath))
        self.assertIs(beneath.no_delay, True)
        no_delay(FakeTCP(fails=True))
        no_delay(object())


def plain(output: str) -> str:
    """Terminal output without its escape sequences."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output)


async def drained(child: Any) -> str:
    """What a pexpect child has written that no C{expect} consumed, without waiting."""
    import pexpect

    seen = [child.buffer]
    child.buffer = ""
    try:
        while True:
            seen.append(child.read_nonblocking(4096, timeout=0))
    except (pexpect.TIMEOUT, pexpect.EOF):
        pass
    return "".join(seen)


async def exited(child: Any, timeout: float = 5.0) -> tuple[int | None, str]:
    """
    Wait (bounded) for a pexpect child to end: its exit status (None if a
    signal killed it) and what it wrote that no C{expect} has consumed.
    """
    import pexpect

    seen = [child.buffer]
    child.buffer = ""
    for _ in range(int(timeout / 0.05)):
        try:
            while True:
                seen.append(child.read_nonblocking(4096, timeout=0))
        except (pexpect.TIMEOUT, pexpect.EOF):
            pass
        if not child.isalive():
            return child.exitstatus, "".join(seen)
        await sleep(0.05)
    raise AssertionError(f"the client did not exit within {timeout}s; it wrote {''.join(seen)!r}")


SERVER = ("127.0.0.1", 9001)
TOKEN = b"t" * 32


class Lines(Frontend):
    """A front end that keeps its lines."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def out(self, line: str) -> None:
        """Keep C{line}."""
        self.lines.append(line)


class SessionCase(unittest.TestCase):
    """A ChatSession over a fake transport and a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.ui = Lines()
        self.transport = FakeDatagramTransport()
        self.header = wire.encode_datagram(b"r", TOKEN)
        self.session = self.new_session()
        self.endings: list[Ending] = []
        self.session.ended.addCallback(self.endings.append)

    def new_session(self) -> ChatSession:
        """A session of C{alice} in room C{r}, its datagrams on C{self.transport}."""
        session = ChatSession(self.clock, SERVER, "r", "alice", TOKEN, 30, self.ui.out)
        session.makeConnection(self.transport)  # type: ignore[arg-type]
        return session

    def sent(self) -> list[bytes]:
        """The messages the session sent (headers cut off)."""
        return [data[len(self.header) :] for data in self.transport.to(SERVER)]

    def notice(self, event: str, **fields: Any) -> None:
        """The relay sends a notice."""
        self.session.datagramReceived(wire.encode_notice(event, **fields), SERVER)

    def welcome(self, **fields: Any) -> None:
        """The relay welcomes alice."""
        self.notice("welcome", **{"room": "r", "user": "alice", "host": "alice", "members": ["alice"], **fields})


NO_TUNNEL = "the server does not offer a TCP tunnel (a server started with --tunnel does); chat without --tcp-only"


class TunnelRefusalTests(SessionCase):
    """How a session tells a refused tunnel."""

    def refusing(self, status: int, message: str) -> Any:
        """A tunnel opener that the server refuses with C{status}."""
        from twisted.internet import defer

        from ocm.client.tunnel import TunnelRefused

        def open_tunnel() -> defer.Deferred[Any]:
            return defer.fail(TunnelRefused(status, message))

        return open_tunnel

    def session_with(self, opener: Any, tcp_only: bool) -> list[Ending]:
        """A session that opens its tunnel with C{opener}; how it ends."""
        endings: list[Ending] = []
        session = ChatSession(self.clock, SERVER, "r", "alice", TOKEN, 30, self.ui.out, tunnel=opener, tcp_only=tcp_only)
        session.ended.addCallback(endings.append)
        session.makeConnection(self.transport)  # type: ignore[arg-type]
        return endings

    def test_tcp_only_no_tunnel(self) -> None:
        """--tcp-only, a server without --tunnel (400 unknown operation): no word of UDP; refused."""
        endings = self.session_with(self.refusing(400, "unknown operation 4"), tcp_only=True)
        self.assertEqual(endings, [Ending(EXIT_REFUSED, NO_TUNNEL)])

    def test_tcp_only_other_refusal(self) -> None:
        """--tcp-only, another refusal: its status and message."""
        endings = self.session_with(self.refusing(429, "slow down"), tcp_only=True)
        self.assertEqual(endings, [Ending(EXIT_REFUSED, "the server refused the TCP tunnel (429: slow down)")])

    def test_udp_silent_no_tunnel(self) -> None:
        """UDP got no reply, and the server has no tunnel to fall back on."""
        endings = self.session_with(self.refusing(400, "unknown operation 4"), tcp_only=False)
        self.clock.pump([0.5] * 10)
        self.assertEqual(
            endings, [Ending(EXIT_NO_UDP, "no reply over UDP from 127.0.0.1:9001, and the server does not offer a TCP tunnel; is UDP blocked?")]
        )


class FrontendInterruptTests(SessionCase):
    """Frontend.interrupt: Ctrl-C and SIGTERM leave at once."""

    def test_interrupt_leaves(self) -> None:
        """\\x00leave goes out at once, said; lines still waiting are dropped; a second interrupt does nothing."""
        self.ui.attach(self.session)
        self.ui.line("typed before the welcome")
        self.ui.interrupt("Ctrl-C")
        self.ui.interrupt("terminated")
        self.assertEqual(self.sent(), [wire.HELLO, wire.LEAVE])
        self.assertEqual(self.endings, [Ending(EXIT_OK)])
        self.assertEqual(self.ui.lines, ["* Ctrl-C: leaving the room"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_interrupt_between_sessions(self) -> None:
        """Interrupted during a rejoin: the next session leaves as soon as it starts."""
        self.ui.line("waiting")
        self.ui.interrupt("terminated")
        self.ui.attach(self.session)
        self.assertEqual(self.sent(), [wire.HELLO, wire.LEAVE])
        self.assertEqual(self.endings, [Ending(EXIT_OK)])

    def test_leave_once(self) -> None:
        """A session that ended (the room closed) sends no leave afterwards."""
        self.welcome()
        self.notice("closed", reason="host_left")
        self.transport.clear()
        self.session.leave()
        self.assertEqual(self.sent(), [])


class CommandTests(SessionCase):
    """Lines that start with / and a letter are commands, never chat."""

    def test_unknown_command(self) -> None:
        """An unknown /command is not sent; the line says so and names the commands."""
        self.welcome()
        self.transport.clear()
        self.session.line("/shrug at you")
        self.session.line("/WHOO")
        self.assertEqual(self.sent(), [])
        self.assertEqual(len(self.ui.lines), 3)
        self.assertTrue(self.ui.lines[1].startswith("* unknown command /shrug (not sent); commands: "), self.ui.lines[1])
        self.assertIn("/help", self.ui.lines[1])
        self.assertTrue(self.ui.lines[2].startswith("* unknown command /whoo (not sent)"), self.ui.lines[2])

    def test_known_commands(self) -> None:
        """/who, /help, /leave and /quit work as before, in any case and with spaces around."""
        self.welcome()
        self.transport.clear()
        self.session.line("/who")
        self.session.line("  /WHO  ")
        self.session.line("/help")
        self.assertEqual(self.sent(), [wire.WHO, wire.WHO])
        self.assertTrue(any("/leave" in line for line in self.ui.lines))
        self.session.line("/quit")
        self.assertEqual(self.sent(), [wire.WHO, wire.WHO, wire.LEAVE])
        self.assertEqual(self.endings, [Ending(EXIT_OK)])

    def test_not_commands(self) -> None:
        """A / not followed by a letter is chat, sent as typed (as before)."""
        self.welcome()
        self.transport.clear()
        for text in ("//shrug", "/ hi", "/1", "/", "a /who in the middle"):
            self.session.line(text)
        self.assertEqual(self.sent(), [b"//shrug", b"/ hi", b"/1", b"/", b"a /who in the middle"])


class InterruptTests(ClientCase):
    """Ctrl-C and SIGTERM at the interactive chat prompt leave the room."""

    async def joined_in_pty(self, *args: str) -> tuple[Any, Any]:
        """The interactive client, every question answered by flags, at the chat prompt."""
        child, expect = self.pty_client("--host", "127.0.0.1", "--password", "", *args)
        await expect("joined room")
        await expect(">")  # the chat prompt (drawn as ">" and a cursor move)
        return child, expect

    async def test_ctrl_c_member(self) -> None:
        """Ctrl-C: the member leaves (the others see it leave, not time out), says so, exits 0 at once."""
        alice = self.client("--name", "alice", "--create", "r")
        await self.joined(alice)
        child, expect = await self.joined_in_pty("--name", "bob", "--join", "r")
        await wait_until(lambda: alice.has("* bob joined"), 5, "bob's join")
        child.sendcontrol("c")
        code, output = await exited(child)
        self.assertEqual(code, EXIT_OK, output)
        self.assertIn("leaving the room", output)
        self.assertNotIn("Traceback", output)
        await wait_until(lambda: alice.has("* bob left"), 5, "bob's leave")
        self.assertNotIn("* bob left (timeout)", alice.lines)
        alice.close_stdin()
        await self.ended(alice)

    async def test_ctrl_c_host(self) -> None:
        """Ctrl-C by the host: its room closes for the others at once."""
        child, expect = await self.joined_in_pty("--name", "alice", "--create", "r", "--capacity", "5")
        bob = self.client("--name", "bob", "--join", "r")
        await self.joined(bob)
        child.sendcontrol("c")
        code, output = await exited(child)
        self.assertEqual(code, EXIT_OK, output)
        await wait_until(lambda: bob.has("* room closed: the host left"), 5, "the room's close")
        await self.ended(bob)
        self.assertEqual(self.rooms.rooms, {})

    async def test_sigterm(self) -> None:
        """SIGTERM at the chat prompt: the same clean leave, exit 0."""
        alice = self.client("--name", "alice", "--create", "r")
        await self.joined(alice)
        child, expect = await self.joined_in_pty("--name", "bob", "--join", "r")
        await wait_until(lambda: alice.has("* bob joined"), 5, "bob's join")
        child.kill(15)
        code, output = await exited(child)
        self.assertEqual(code, EXIT_OK, output)
        self.assertIn("leaving the room", output)
        await wait_until(lambda: alice.has("* bob left"), 5, "bob's leave")
        alice.close_stdin()
        await self.ended(alice)


class PromptUITests(unittest.TestCase):
    """The interactive front end's output without a prompt running."""

    def test_straight_out(self) -> None:
        """With no prompt on the screen, a line is written (and flushed) at once; history dimmed."""
        from ocm.client.interactive import PromptUI

        stream = io.StringIO()
        ui = PromptUI(stream)
        ui.out("* room closed: the host left")
        self.assertEqual(stream.getvalue(), "* room closed: the host left\n")
        ui.out("[history] 12:00 bob: hi")
        self.assertEqual(stream.getvalue().splitlines()[1], "\x1b[2m[history] 12:00 bob: hi\x1b[0m")


class EndingTests(ClientCase):
    """The interactive client says why its session ended before it exits."""

    async def test_room_closed(self) -> None:
        """The host leaves: the member's terminal shows why, then the client exits 4."""
        alice = self.client("--name", "alice", "--create", "r")
        await self.joined(alice)
        child, expect = self.pty_client("--host", "127.0.0.1", "--password", "", "--name", "bob", "--join", "r")
        await expect("joined room")
        await wait_until(lambda: alice.has("* bob joined"), 5, "bob's join")
        alice.send("/leave")
        self.assertEqual(await self.ended(alice), EXIT_OK)
        code, output = await exited(child)
        self.assertEqual(code, EXIT_CLOSED, output)
        self.assertIn("room closed: the host left", output)


class RefusalTests(unittest.TestCase):
    """TCRP refusals in the server's own words where only the server knows why."""

    def test_503_says_why(self) -> None:
        """A 503 shows the server's message (Redis down, a limit), not always 'the server is full'."""
        redis = "the room registry (Redis) is unreachable; try again shortly"
        self.assertEqual(render.refusal(wire.OP_JOIN, "x", 503, redis), redis)
        self.assertEqual(render.refusal(wire.OP_CREATE, "x", 503, "the server is at its room limit"), "the server is at its room limit")
        self.assertEqual(render.refusal(wire.OP_JOIN, "x", 503, "room 'x' is full"), "room is full")
        self.assertEqual(render.refusal(wire.OP_JOIN, "x", 503, ""), "the server is busy; try again later")


class HistoryGrantTests(unittest.TestCase):
    """What the creator is told about the history it asked for (the create answer's optional 'history')."""

    def test_granted(self) -> None:
        """The server's granted count, as given; none when the answer has no count or 0."""
        self.assertIsNone(render.history_granted(None, {"status": 200}))
        self.assertIsNone(render.history_granted(0, {"status": 200}))
        self.assertEqual(render.history_granted(20, {"status": 200, "history": 20}), "* the server keeps the last 20 messages for newcomers")
        self.assertEqual(render.history_granted(200, {"status": 200, "history": 50}), "* history: asked for 200 messages; the server keeps the last 50 messages")
        none = "* history: asked for 5 messages; this server keeps no history (only a server started with --max-history does)"
        self.assertEqual(render.history_granted(5, {"status": 200}), none)
        self.assertEqual(render.history_granted(5, {"status": 200, "history": 0}), none)
        self.assertEqual(render.history_granted(5, {"status": 200, "history": "lots"}), none)
        self.assertEqual(render.history_granted(1, {"status": 200, "history": 1}), "* the server keeps the last message for newcomers")

    def test_negative(self) -> None:
        """--history below 0 is a usage error."""
        from ocm.client.options import parse_args

        self.patch(sys, "stderr", io.StringIO())
        self.assertRaises(SystemExit, parse_args, ["--history", "-1"])
        self.assertEqual(parse_args(["--history", "0"]).history, 0)


class PlainServerHistoryTests(ClientCase):
    """A server without --max-history."""

    async def test_history_not_kept(self) -> None:
        """--history N at create: the creator is told this server keeps none."""
        alice = self.client("--name", "alice", "--create", "r", "--history", "5")
        await self.joined(alice)
        self.assertIn(
            "* history: asked for 5 messages; this server keeps no history (only a server started with --max-history does)", alice.lines
        )
        alice.close_stdin()
        self.assertEqual(await self.ended(alice), EXIT_OK)


class NoTunnelTests(ClientCase):
    """--tcp-only against a server without --tunnel."""

    async def test_tcp_only_refused(self) -> None:
        """Says the server offers no TCP tunnel (UDP was never tried), exits 3 (refused)."""
        alice = self.client("--name", "alice", "--create", "r")
        await self.joined(alice)
        bob = self.client("--name", "bob", "--join", "r", "--tcp-only")
        self.assertEqual(await self.ended(bob), EXIT_REFUSED)
        self.assertEqual(bob.lines, ["* chatting through TCP (--tcp-only)", NO_TUNNEL])
        alice.close_stdin()
        await self.ended(alice)


class RoomLimitTests(ClientCase):
    """A server at its room limit."""

    server_args = ["--max-rooms", "1"]

    async def test_503_message(self) -> None:
        """The scripted client prints the server's reason for a 503 and exits 3."""
        alice = self.client("--name", "alice", "--create", "one")
        await self.joined(alice)
        bob = self.client("--name", "bob", "--create", "two")
        self.assertEqual(await self.ended(bob), EXIT_REFUSED)
        self.assertEqual(bob.lines, ["error: the server is at its room limit"])
        alice.close_stdin()
        await self.ended(alice)


class BadFileTests(ClientCase):
    """A file named on the command line that cannot be used: one line, exit 2, no traceback."""

    def write(self, data: bytes) -> str:
        """A temporary file holding C{data}; its absolute path."""
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(data)
        return path

    async def refused(self, *args: str) -> list[str]:
        """Run the scripted client with C{args}: it must exit 2 with nothing on standard error."""
        proc = self.client("--name", "alice", "--create", "r", *args)
        self.assertEqual(await self.ended(proc), EXIT_USAGE, proc.err)
        self.assertEqual(proc.err, b"")
        return proc.lines

    async def test_ca_missing(self) -> None:
        """--ca naming no file."""
        missing = os.path.abspath(self.mktemp())
        self.assertEqual(await self.refused("--tls", "--ca", missing), [f"error: --ca {missing}: No such file or directory"])

    async def test_ca_not_pem(self) -> None:
        """--ca naming a file that is not a PEM certificate, or a broken one."""
        path = self.write(b"not a certificate\n")
        self.assertEqual(await self.refused("--tls", "--ca", path), [f"error: --ca {path}: not a PEM certificate"])
        path = self.write(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        self.assertEqual(await self.refused("--tls", "--ca", path), [f"error: --ca {path}: not a PEM certificate"])

    async def test_password_file_missing(self) -> None:
        """--password-file naming no file."""
        missing = os.path.abspath(self.mktemp())
        self.assertEqual(await self.refused("--password-file", missing), [f"error: --password-file {missing}: No such file or directory"])

    async def test_ca_missing_interactive(self) -> None:
        """The interactive client says the same in one line, exits 2."""
        missing = os.path.abspath(self.mktemp())
        child, _ = self.pty_client("--host", "127.0.0.1", "--name", "alice", "--create", "r", "--tls", "--ca", missing)
        code, output = await exited(child, 10)
        self.assertEqual(code, EXIT_USAGE, output)
        self.assertEqual(plain(output).strip().splitlines(), [f"error: --ca {missing}: No such file or directory"])


class ScriptedCommandTests(ClientCase):
    """Commands in the scripted client, end to end."""

    async def test_unknown_command_not_sent(self) -> None:
        """An unknown /command never reaches the room; the line after it does."""
        alice = self.client("--name", "alice", "--create", "r")
        await self.joined(alice)
        bob = self.client("--name", "bob", "--join", "r")
        await self.joined(bob)
        alice.send("/shrug")
        alice.send("after")
        await wait_until(lambda: any(line.endswith(" alice: after") for line in bob.lines), 5, "the chat line")
        self.assertFalse(bob.has("shrug"), bob.lines)
        await wait_until(lambda: alice.has("* unknown command /shrug (not sent)"), 5, "the unknown command line")
        bob.close_stdin()
        alice.close_stdin()
        self.assertEqual(await self.ended(alice), EXIT_OK)


class PasswordPromptTests(ClientCase):
    """The password prompt echoes nothing, as the README says."""

    async def test_no_echo(self) -> None:
        """Neither the typed characters nor asterisks appear, and the cursor stays put; the password works."""
        host = self.client("--name", "host", "--create", "r", env={"OCM_PASSWORD": "sesame合言葉"})
        await self.joined(host)
        child, expect = self.pty_client("--host", "127.0.0.1", "--name", "guest", "--join", "r")
        await expect("password")
        await sleep(0.3)
        await drained(child)  # the prompt, drawn
        child.send("sesame合言葉")
        await sleep(0.5)
        typed = await drained(child)
        self.assertNotIn("*", typed)
        self.assertNotIn("sesame", typed)
        self.assertNotIn("合", typed)
        self.assertIsNone(re.search(r"\x1b\[\d*C", typed), f"the cursor moved: {typed!r}")
        child.sendline("")
        await expect("joined room")
        child.send("visible")
        await expect("visible")  # the chat prompt echoes again
        child.sendline("")
        await wait_until(lambda: any(line.endswith("guest: visible") for line in host.lines), 5, "the chat line")
        # the next prompt must be up (the terminal back in raw mode): a ^D
        # typed while the line discipline is cooked is taken as its EOF and lost
        await sleep(0.5)
        child.sendcontrol("d")
        code, output = await exited(child, 10.0)
        self.assertEqual(code, EXIT_OK, output)
        host.close_stdin()
        await self.ended(host)

    async def test_no_echo_after_refusal(self) -> None:
        """A wrong password, then the right one: neither is shown."""
        host = self.client("--name", "host", "--create", "r", env={"OCM_PASSWORD": "right"})
        await self.joined(host)
        child, expect = self.pty_client("--host", "127.0.0.1", "--name", "guest", "--join", "r")
        await answer(child, expect, ("password", "wrong"))
        await expect("wrong password; try again")
        await answer(child, expect, ("create, join or list", "j"), ("room name", "r"), ("password", "right"))
        await expect("joined room")
        seen = (child.before or "") + await drained(child)
        self.assertNotIn("right", plain(seen).replace("wrong password", ""))
        child.sendcontrol("d")
        await exited(child)
        host.close_stdin()
        await self.ended(host)
