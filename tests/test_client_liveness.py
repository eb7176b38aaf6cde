"""
The client's liveness (issue 18): it pings a quiet server (SPEC section 7)
and tells when the server stopped answering, handing back the lines that
may have vanished with it.  The session with a Clock and a fake transport;
then a scripted client against a real server.
"""

from __future__ import annotations

from typing import Any

from ocm import wire
from ocm.client.session import EXIT_NO_UDP, EXIT_OK, EXIT_SERVER_GONE, ChatSession, Ending
from tests.helpers import sleep, wait_until
from tests.test_client_edges import SERVER, TOKEN, Lines, SessionCase
from tests.test_client_end_to_end import ClientCase

PING = b"\x00ping"
GONE = "* the server stopped answering"


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
