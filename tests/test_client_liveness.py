"""
The client's liveness (issue 18): it pings a quiet server (SPEC section 7),
says when the server stopped answering, rejoins once, and never lets typed
lines vanish silently.  The session with a Clock and a fake transport; then
the client as people run it against a real C{twistd} that the test SIGKILLs
or SIGSTOPs (and starts again on the same ports), every wait bounded.
"""

from __future__ import annotations

import os
import random
import socket
import sys
from typing import Any

from twisted.internet import error, reactor
from twisted.trial import unittest

from ocm import wire
from ocm.client import render
from ocm.client.options import EPILOG
from ocm.client.session import EXIT_NO_UDP, EXIT_OK, EXIT_SERVER_GONE, ChatSession, Ending
from tests.helpers import Member, TwistdProcess, sleep, tcrp, wait_until
from tests.test_client_edges import SERVER, TOKEN, Lines, SessionCase, exited
from tests.test_client_end_to_end import ClientCase, ClientProcess, spawn_client

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PING = b"\x00ping"
GONE = "* the server stopped answering"
GONE_REJOINING = "* the server stopped answering; rejoining…"


class PingScheduleTests(SessionCase):
    """
    When the session pings, and when it gives the server up (timeout 30:
    ping after 15 s of quiet, gone 10 s later).  The fake server answers
    the welcome's ping, as every server of SPEC section 7 does.
    """

    def welcome(self, **fields: Any) -> None:
        """The relay welcomes alice and answers her first ping; what was sent is forgotten."""
        super().welcome(**fields)
        self.assertEqual(self.sent()[-1], PING)
        self.notice("pong")
        self.transport.clear()

    def pings(self) -> int:
        return self.sent().count(PING)

    def test_quiet_server_is_pinged(self) -> None:
        """Nothing heard for timeout/2: one ping; its pong is not shown; the next ping after as much quiet again."""
        self.welcome()
        self.clock.pump([2.5] * 5)  # 12.5 s
        self.assertEqual(self.sent(), [b""])  # the keepalive only
        self.clock.pump([2.5] * 1)  # 15 s
        self.assertEqual(self.pings(), 1)
        self.notice("pong")
        self.assertEqual(len(self.ui.lines), 1)  # the welcome only: no pong line
        self.clock.pump([2.5] * 5)  # 27.5 s: 12.5 s after the pong
        self.assertEqual(self.pings(), 1)
        self.clock.pump([2.5] * 1)
        self.assertEqual(self.pings(), 2)
        self.assertEqual(self.endings, [])

    def test_busy_room_no_ping(self) -> None:
        """A room that talks shows the server is alive: no ping."""
        self.welcome()
        for _ in range(20):
            self.clock.advance(2.5)
            self.session.datagramReceived(wire.encode_relayed(b"bob", b"hi"), SERVER)
        self.assertEqual(self.pings(), 0)
        self.assertEqual(self.endings, [])

    def test_gone(self) -> None:
        """No pong (asked again meanwhile) within 10 s of the first ping: the session ends, gone, rejoinable; no timer left."""
        self.welcome()
        self.clock.pump([2.5] * 9)  # 22.5 s
        self.assertEqual(self.endings, [])
        self.assertEqual(self.pings(), 2)  # at 15 s, and again at 20 s (a ping or pong may be lost)
        self.clock.pump([2.5])  # 25 s
        self.assertEqual(self.endings, [Ending(EXIT_SERVER_GONE, GONE, rejoinable=True, gone=True)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_short_timeout(self) -> None:
        """Timeout 3 s: ping after 1.5 s of quiet, gone 2 s later (the least wait for an answer)."""
        session = ChatSession(self.clock, SERVER, "r", "alice", TOKEN, 3, Lines().out)
        self.assertEqual((session.ping_after, session.answer_within), (1.5, 2.0))

    def test_line_after_quiet(self) -> None:
        """A line after a second of quiet is followed by a ping; unanswered, the line is handed back with the ending."""
        self.welcome()
        self.clock.advance(0.5)
        self.session.line("right after the welcome")
        self.assertEqual(self.sent(), [b"right after the welcome"])  # heard 0.5 s ago: no ping
        self.clock.advance(1)
        self.session.line("anyone?")
        self.session.line("/who")
        self.session.line("/ping")
        self.session.line("/topic dark")
        self.assertEqual(self.sent()[1:], [b"anyone?", PING, wire.WHO, PING, b"\x00topic dark"])
        self.clock.pump([2.5] * 5)  # 12.5 s: 11 s after the first ping
        self.assertEqual(len(self.endings), 1)
        self.assertTrue(self.endings[0].gone)
        # /who and /ping only asked; the rest is what the room may have missed (the first line too: nothing heard since).
        self.assertEqual(self.endings[0].unsent, ["right after the welcome", "anyone?", "/topic dark"])

    def test_heard_confirms(self) -> None:
        """Anything from the server (a pong, a chat line) confirms what was sent before it."""
        self.welcome()
        self.clock.advance(2)
        self.session.line("one")
        self.notice("pong")
        self.session.line("two")
        self.session.datagramReceived(wire.encode_relayed(b"bob", b"hi"), SERVER)
        self.clock.advance(1.5)
        self.session.line("three")
        self.clock.pump([2.5] * 5)
        self.assertEqual(self.endings[0].unsent, ["three"])
        self.assertNotIn("pong", "\n".join(self.ui.lines))

    def test_user_ping_still_answered(self) -> None:
        """The user's /ping among the session's own: its pong is shown with the time, once."""
        self.welcome()
        self.clock.pump([2.5] * 6)  # the session pinged at 15 s
        self.session.line("/ping")
        self.clock.advance(0.02)
        self.notice("pong")
        self.notice("pong")
        self.assertEqual(self.ui.lines[1:], ["* pong: the server answered in 20 ms"])

    def test_end_of_input_waits_for_confirmation(self) -> None:
        """End of input with a line unconfirmed: a ping, and the leave once the server answers; if it never does, the line is handed back."""
        self.welcome()
        self.clock.advance(0.2)
        self.session.line("last words")
        self.session.leave_when_ready()
        self.assertEqual(self.sent(), [b"last words", PING])
        self.notice("pong")
        self.assertEqual(self.sent()[-1], wire.LEAVE)
        self.assertEqual(self.endings, [Ending(EXIT_OK)])

        self.session = self.new_session()
        self.endings = []
        self.session.ended.addCallback(self.endings.append)
        self.welcome()
        self.session.line("into the void")
        self.session.leave_when_ready()
        self.clock.pump([2.5] * 4)  # 10 s: no answer
        self.assertNotIn(wire.LEAVE, self.sent())
        self.assertEqual(self.endings, [Ending(EXIT_SERVER_GONE, GONE, rejoinable=True, gone=True, unsent=["into the void"])])

    def test_room_closes_while_leaving(self) -> None:
        """Waiting at end of input, the room closes (the host left first): the lines are confirmed, and it ends as a leave."""
        self.welcome()
        self.session.line("bye all")
        self.session.leave_when_ready()
        self.notice("closed", reason="host_left")
        self.assertEqual(self.endings, [Ending(EXIT_OK, "* room closed: the host left")])

    def test_waiting_lines_handed_back(self) -> None:
        """No welcome at all: the lines that waited for it come back with the ending, not dropped."""
        self.session.line("hello")
        self.session.line("/topic x")
        self.clock.pump([0.5] * 10)
        self.assertEqual(self.endings[0].code, EXIT_NO_UDP)
        self.assertEqual(self.endings[0].unsent, ["hello", "/topic x"])


class OlderServerTests(SessionCase):
    """A server that never answers pings (older than SPEC section 7, or bench/crelay.c): never judged by its silence."""

    def test_probes_then_as_before(self) -> None:
        """Three pings after the welcome, then only keepalives; a minute of silence ends nothing; end of input leaves at once."""
        self.welcome()
        self.clock.pump([2.5] * 24)  # 60 s
        self.assertEqual(self.sent().count(PING), 3)
        self.assertIn(b"", self.sent())
        self.assertEqual(self.endings, [])
        self.session.line("still here")
        self.session.leave_when_ready()
        self.assertEqual(self.sent()[-2:], [b"still here", wire.LEAVE])
        self.assertEqual(self.endings, [Ending(EXIT_OK)])


class FrontendTests(unittest.TestCase):
    """Lines handed back: first for the next session; said not sent when none comes."""

    def test_requeue_then_attach(self) -> None:
        """Handed-back lines go before those typed meanwhile."""
        ui = Lines()
        ui.line("typed during the rejoin")
        ui.requeue(["unconfirmed"])
        sent: list[str] = []

        class Session:
            def line(self, text: str) -> None:
                sent.append(text)

        ui.attach(Session())  # type: ignore[arg-type]
        self.assertEqual(sent, ["unconfirmed", "typed during the rejoin"])

    def test_not_sent(self) -> None:
        """Each line said not sent, in order; after Ctrl-C nothing is said (dropped on purpose)."""
        ui = Lines()
        ui.line("typed later")
        ui.requeue(["unconfirmed"])
        ui.not_sent(["last of the session"])
        self.assertEqual(ui.lines, ["* not sent: last of the session", "* not sent: unconfirmed", "* not sent: typed later"])
        ui = Lines()
        ui.line("x")
        ui.interrupt("Ctrl-C")
        ui.not_sent(["y"])
        self.assertEqual(ui.lines, ["* Ctrl-C: leaving the room"])


class WordsTests(unittest.TestCase):
    """What the user reads."""

    def test_rejoin_refused(self) -> None:
        """A host whose room is gone is told it cannot rejoin it; a member that the room is gone; others as before."""
        self.assertIn("you were its host", render.rejoin_refused("r", 404, "no such room", hosted=True))
        self.assertIn("create it again", render.rejoin_refused("r", 404, "no such room", hosted=True))
        self.assertEqual(render.rejoin_refused("r", 404, "", hosted=False), "* could not join again: room 'r' is gone (no room of that name on the server now)")
        self.assertEqual(render.rejoin_refused("r", 401, "wrong password", hosted=False), "* could not join again: wrong password")

    def test_exit_code(self) -> None:
        """5 for a server gone, as --help says."""
        self.assertEqual(EXIT_SERVER_GONE, 5)
        self.assertIn("stopped answering", " ".join(EPILOG.split()))


class PingWithServerTests(ClientCase):
    """The session's pings against a real server (in process, timeout 1.5 s)."""

    server_args = ["--timeout", "1.5"]

    async def test_idle_client_pings_silently(self) -> None:
        """An idle scripted client pings (the server counts them), prints no pong, stays; /ping is still answered aloud."""
        alice = self.client("--name", "alice", "--create", "r")
        await self.joined(alice)
        await wait_until(lambda: self.stats.commands["ping"] >= 2, 10, "the session's pings")
        await sleep(2.5)  # longer than ping_after + answer_within: a live server is never given up
        self.assertEqual(alice.lines[1:], [])
        self.assertFalse(alice.ended.called)
        alice.send("/ping")
        await wait_until(lambda: alice.has("* pong: the server answered in"), 5, "the pong")
        alice.close_stdin()
        self.assertEqual(await self.ended(alice), EXIT_OK)


def quiet_port(kind: int) -> int:
    """
    A free port below the ephemeral range (Linux: 32768 and up), so that no
    socket bound to port 0 (a client's, another test's) takes it while the
    node is down between a kill and its restart.
    """
    for _ in range(100):
        port = random.randrange(20000, 32768)
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no free port below 32768")


class Server:
    """A C{twistd -n ocm} subprocess on fixed loopback ports, running this worktree's ocm."""

    def __init__(self, case: unittest.TestCase, tcp: int, udp: int, timeout: float) -> None:
        self.case = case
        self.tcp = tcp
        self.udp = udp
        path = case.mktemp()
        os.makedirs(path)
        self.proc = TwistdProcess()
        args = ["-n", "ocm", "--tcp", str(tcp), "--udp", str(udp), "--interface", "127.0.0.1", "--timeout", str(timeout)]
        executable = os.path.join(os.path.dirname(sys.executable), "twistd")
        argv = [executable]
        if not os.path.exists(executable):  # as tests.helpers.spawn_twistd does
            executable = sys.executable
            argv = [executable, "-c", "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]
        # PYTHONPATH: the server from this tree (its plugin too), not whichever ocm is installed.
        env = {**os.environ, "PYTHONPATH": ROOT}
        self.transport = reactor.spawnProcess(self.proc, executable, [*argv, "--pidfile=", *args], env=env, path=path)  # type: ignore[attr-defined]
        case.addCleanup(self.stop)

    async def ready(self) -> bool:
        """Wait (bounded) until the TCRP port answers a list: True; False if twistd exited (a port taken)."""
        for _ in range(250):
            try:
                await tcrp(self.tcp, wire.OP_LIST, "", {})
                return True
            except (error.ConnectError, ConnectionError):
                if self.proc.ended.called:
                    return False
                await sleep(0.02)
        raise AssertionError(f"twistd never answered: {self.proc.output!r}")

    def signal(self, name: str) -> None:
        """Send the process a signal (KILL, STOP)."""
        self.transport.signalProcess(name)

    async def kill(self) -> None:
        """SIGKILL: the node dies without a word to its members; its ports are free again."""
        self.signal("KILL")
        await wait_until(lambda: self.proc.ended.called, 5, "twistd's death")

    def stop(self) -> Any:
        if not self.proc.ended.called:
            self.signal("KILL")
            return self.proc.ended
        return None


class DeadServerTests(unittest.TestCase):
    """
    Scripted and interactive clients on a node that dies (SIGKILL) or
    freezes (SIGSTOP).  The server's timeout is 3 s: the clients ping after
    1.5 s of quiet and give the server up 2 s after an unanswered ping, so
    a dead node is noticed 2 to 4 s after it dies.  (Each test first lets
    the welcome's ping be answered: until then a client cannot tell a
    server that does not answer pings from a dead one.)
    """

    timeout = 60

    async def setUp(self) -> None:
        for _ in range(5):  # a port taken meanwhile by someone else: other ports
            self.tcp = quiet_port(socket.SOCK_STREAM)
            self.udp = quiet_port(socket.SOCK_DGRAM)
            server = Server(self, self.tcp, self.udp, 3)
            if await server.ready():
                self.server = server
                return
        raise AssertionError(f"twistd could not start: {server.proc.output!r}")

    async def start(self, timeout: float) -> Server:
        """Another node on the same ports (the last one dead)."""
        server = Server(self, self.tcp, self.udp, timeout)
        self.assertTrue(await server.ready(), server.proc.output)
        return server

    def client(self, *args: str) -> ClientProcess:
        return spawn_client(self, self.tcp, *args)

    async def joined(self, proc: ClientProcess, times: int = 1) -> None:
        await wait_until(lambda: sum("* joined room" in line for line in proc.lines) >= times, 10, f"welcome #{times}: {proc.out!r} {proc.err!r}")

    async def ended(self, proc: ClientProcess, timeout: float) -> int:
        await wait_until(lambda: proc.ended.called, timeout, f"client exit: {proc.out!r}")
        return await proc.ended

    async def test_rejoin_on_restarted_node(self) -> None:
        """
        The node dies; a new one starts on the same ports and someone
        creates the room again: bob says the server stopped answering,
        rejoins (new token, new hello), delivers the line he typed into the
        dead node, and chats again.  The old host rejoins as a member.
        """
        alice = self.client("--name", "alice", "--create", "r")
        await self.joined(alice)
        bob = self.client("--name", "bob", "--join", "r")
        await self.joined(bob)
        await wait_until(lambda: alice.has("* bob joined"), 5, "bob's join")
        await sleep(2)  # idle: the clients ping (silently)
        await self.server.kill()
        bob.send("typed into the dead node")
        # A node that comes back on the same ports, and the room created again there.
        await self.start(30)
        created = await tcrp(self.tcp, wire.OP_CREATE, "r", {"username": "carol"})
        carol = Member(self, "r", "carol", created[1].payload, "127.0.0.1", udp_port=self.udp)
        await carol.hello()
        await wait_until(lambda: bob.has(GONE_REJOINING), 10, f"bob noticing: {bob.out!r}")
        await self.joined(bob, 2)
        self.assertIn("* the server did not confirm your last line: sent again once rejoined", bob.lines)
        await wait_until(lambda: ("bob", "typed into the dead node") in carol.peer.chats(), 5, f"the line typed into the dead node: {bob.out!r}")
        carol.send("welcome back".encode())
        await wait_until(lambda: any(line.endswith(" carol: welcome back") for line in bob.lines), 5, "carol's line")
        bob.send("chatting again")
        await wait_until(lambda: ("bob", "chatting again") in carol.peer.chats(), 5, "bob's line")
        await self.joined(alice, 2)
        self.assertIn(GONE_REJOINING, alice.lines)
        self.assertFalse(any("pong" in line for line in alice.lines + bob.lines), "no pong shown without /ping")
        bob.close_stdin()
        alice.close_stdin()
        self.assertEqual(await self.ended(bob, 10), EXIT_OK)
        self.assertEqual(await self.ended(alice, 10), EXIT_OK)

    async def test_no_server_comes_back(self) -> None:
        """
        The node dies for good; bob types a line and his input ends: said,
        one rejoin tried and failed, the line said not sent; exit 5 within
        8 s (not 0, as if the line had gone out).
        """
        alice = self.client("--name", "alice", "--create", "r")
        await self.joined(alice)
        bob = self.client("--name", "bob", "--join", "r")
        await self.joined(bob)
        await sleep(0.5)  # the welcome's ping answered: the clients know the server answers pings
        await self.server.kill()
        bob.send("hello?")
        bob.close_stdin()
        self.assertEqual(await self.ended(bob, 8), EXIT_SERVER_GONE)
        self.assertEqual(await self.ended(alice, 8), EXIT_SERVER_GONE)
        after = bob.lines[bob.lines.index(GONE_REJOINING) :]
        self.assertEqual(after[1], "* the server did not confirm your last line: sent again once rejoined")
        self.assertTrue(after[2].startswith("* could not join again: cannot reach 127.0.0.1:"), after)
        self.assertEqual(after[3:], ["* not sent: hello?"])

    async def test_host_cannot_rejoin_its_room(self) -> None:
        """The host's node dies and comes back empty: its room is gone (404); it says why and exits 5."""
        alice = self.client("--name", "alice", "--create", "r")
        await self.joined(alice)
        await sleep(0.5)  # the welcome's ping answered
        await self.server.kill()
        await self.start(3)
        self.assertEqual(await self.ended(alice, 8), EXIT_SERVER_GONE)
        self.assertEqual(
            alice.lines[-2:],
            [
                GONE_REJOINING,
                "* could not join again: room 'r' is gone (it ended with the server), and you were its host:"
                " a room that is gone cannot be rejoined; create it again to go on chatting",
            ],
        )

    async def test_frozen_node_no_rejoin(self) -> None:
        """SIGSTOP: the node holds its ports but answers nothing; with --no-rejoin, said and exit 5 at once."""
        alice = self.client("--name", "alice", "--create", "r", "--no-rejoin")
        await self.joined(alice)
        await sleep(0.5)  # the welcome's ping answered
        self.server.signal("STOP")  # the cleanup's SIGKILL ends it, stopped or not
        self.assertEqual(await self.ended(alice, 8), EXIT_SERVER_GONE)
        self.assertEqual(alice.lines[-1], GONE)

    async def test_interactive(self) -> None:
        """In a terminal: the same words, the line typed meanwhile said not sent, exit 5."""
        import pexpect

        alice = self.client("--name", "alice", "--create", "r")
        await self.joined(alice)
        child = pexpect.spawn(
            sys.executable,
            ["-m", "ocm.client", "--port", str(self.tcp), "--host", "127.0.0.1", "--password", "", "--name", "bob", "--join", "r"],
            cwd=ROOT,
            env={**os.environ, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1"},
            encoding="utf-8",
            timeout=10,
            dimensions=(24, 100),
        )
        self.addCleanup(child.terminate, True)
        for _ in range(200):  # pexpect blocks: poll it, the reactor running between
            try:
                child.expect("joined room", timeout=0.05)
                break
            except pexpect.TIMEOUT:
                await sleep(0.01)
        else:
            raise AssertionError(f"bob never joined: {child.before!r}")
        await sleep(0.5)  # the welcome's ping answered
        await self.server.kill()
        child.sendline("anyone there?")
        code, output = await exited(child, 10)
        self.assertEqual(code, EXIT_SERVER_GONE, output)
        self.assertIn(GONE_REJOINING, output)
        self.assertIn("* could not join again: cannot reach", output)
        self.assertIn("* not sent: anyone there?", output)
        self.assertNotIn("pong", output)

