"""
The client's side of SPEC section 7 (liveness, private messages, governing
a room): the commands as control datagrams, the notices and refusals in
plain words, /help, Tab completion.  The server does not implement section
7 yet, so the session and rendering are driven with a Clock and a fake
transport; only completion runs end to end (in a pseudo-terminal).
"""

from __future__ import annotations

from twisted.trial import unittest

from ocm import wire
from ocm.client import render
from ocm.client.session import EXIT_DISCONNECTED, EXIT_OK, Ending, LobbySession
from tests.helpers import FakeDatagramTransport, sleep, wait_until
from tests.test_client_edges import SERVER, Lines, SessionCase, exited
from tests.test_client_end_to_end import ClientCase


class CommandDatagramTests(SessionCase):
    """Each command is one control datagram: byte 0x00, then the words, one space apart."""

    def test_commands(self) -> None:
        """/msg, /ping and the host's commands, exactly as SPEC section 7 spells them."""
        self.welcome()
        self.transport.clear()
        for line in (
            "/msg bob hello there",
            "/ping",
            "/kick bob",
            "/ban John Smith",
            "/mute bob",
            "/unmute bob",
            "/topic 今日の議題",
            "/topic",
            "/lock",
            "/unlock",
            "/host bob",
            "/MSG bob  two  spaces ",
        ):
            self.session.line(line)
        self.assertEqual(
            self.sent(),
            [
                b"\x00msg bob hello there",
                b"\x00ping",
                b"\x00kick bob",
                b"\x00ban John Smith",
                b"\x00mute bob",
                b"\x00unmute bob",
                "\x00topic 今日の議題".encode(),
                b"\x00topic",
                b"\x00lock",
                b"\x00unlock",
                b"\x00host bob",
                b"\x00msg bob  two  spaces",
            ],
        )
        self.assertEqual(self.ui.lines[1:], [])

    def test_usage(self) -> None:
        """A command missing its USER or TEXT is not sent; its usage is shown."""
        self.welcome()
        self.transport.clear()
        self.session.line("/msg")
        self.session.line("/msg bob")
        self.session.line("/kick")
        self.session.line("/host   ")
        self.assertEqual(self.sent(), [])
        self.assertEqual(
            self.ui.lines[1:], ["* usage: /msg USER TEXT", "* usage: /msg USER TEXT", "* usage: /kick USER", "* usage: /host USER"]
        )

    def test_wait_for_welcome(self) -> None:
        """Before the welcome, commands wait with the chat lines, in order; /help does not."""
        self.session.line("hi")
        self.session.line("/topic first")
        self.session.line("/help")
        self.assertEqual(self.sent(), [wire.HELLO])
        self.assertTrue(self.ui.lines)
        self.welcome()
        self.assertEqual(self.sent(), [wire.HELLO, b"hi", b"\x00topic first", b"\x00ping"])

    def test_long_private_message(self) -> None:
        """A long /msg goes out in several private messages that fit, each to the same USER."""
        self.welcome()
        self.transport.clear()
        text = "あ" * 3000
        self.session.line(f"/msg bob {text}")
        pieces = self.sent()
        self.assertGreater(len(pieces), 1)
        self.assertTrue(all(len(p) <= self.session.limit for p in pieces))
        self.assertTrue(all(p.startswith(b"\x00msg bob ") for p in pieces))
        self.assertEqual("".join(p[len(b"\x00msg bob ") :].decode() for p in pieces), text)


class NoticeTests(SessionCase):
    """Section 7's notices, as the session shows them."""

    def test_private(self) -> None:
        """A private message: [private] bob: text."""
        self.welcome()
        self.notice("private", user="bob", text="秘密だよ")
        self.assertEqual(self.ui.lines[-1], "[private] bob: 秘密だよ")

    def test_pong(self) -> None:
        """/ping, then pong: how long the server took; a pong nobody typed /ping for is not shown (the session pings by itself)."""
        self.welcome()
        self.session.line("/ping")
        self.clock.advance(0.05)
        self.notice("pong")
        self.assertEqual(self.ui.lines[-1], "* pong: the server answered in 50 ms")
        self.notice("pong")
        self.assertEqual(self.ui.lines[-1], "* pong: the server answered in 50 ms")
        self.assertEqual(len(self.ui.lines), 2)
        self.assertFalse(self.session._ping_timer.active())  # no "no pong" later

    def test_no_pong(self) -> None:
        """No pong within 3 s: said once (a server without section 7 drops the ping)."""
        self.welcome()
        self.session.line("/ping")
        self.clock.advance(3)
        self.assertEqual(self.ui.lines[-1], "* no pong within 3 s (a server older than SPEC section 7 does not answer /ping)")
        self.notice("pong")
        self.assertEqual(self.ui.lines[-1], "* pong: the server answers")

    def test_ping_timer_stops_with_session(self) -> None:
        """The session ending cancels the wait for a pong."""
        self.welcome()
        self.session.line("/ping")
        self.session.line("/leave")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_governing(self) -> None:
        """Muted, unmuted, topic, locked, unlocked, host, kicked and banned members: plain words; "you" for this member."""
        self.welcome(members=["alice", "bob", "carol"])
        for event, fields in (
            ("muted", {"user": "bob"}),
            ("unmuted", {"user": "bob"}),
            ("muted", {"user": "alice"}),
            ("unmuted", {"user": "alice"}),
            ("topic", {"topic": "release", "user": "alice"}),
            ("topic", {"topic": "", "user": "alice"}),
            ("locked", {}),
            ("unlocked", {}),
            ("host", {"user": "bob"}),
            ("host", {"user": "alice"}),
            ("leave", {"user": "bob", "reason": "kicked"}),
            ("leave", {"user": "carol", "reason": "banned"}),
        ):
            self.notice(event, **fields)
        self.assertEqual(
            self.ui.lines[1:],
            [
                "* bob was muted by the host",
                "* bob was unmuted by the host",
                "* the host muted you: your messages are not delivered",
                "* the host unmuted you: your messages are delivered again",
                "* topic: release (set by alice)",
                "* alice cleared the topic",
                "* the room is locked: nobody new can join",
                "* the room is unlocked: anyone may join again",
                "* bob is now the host",
                "* you are now the host",
                "* bob was kicked out by the host",
                "* carol was banned by the host",
            ],
        )
        self.assertEqual(self.session.members, ["alice"])
        self.assertEqual(self.session.host, "alice")

    def test_errors(self) -> None:
        """no_such_user, not_host, muted."""
        self.welcome()
        for code in ("no_such_user", "not_host", "muted"):
            self.notice("error", code=code)
        self.assertEqual(
            self.ui.lines[1:],
            [
                "* no member of this room has that name (names are exact; /who lists them)",
                "* only the host can do that",
                "* you are muted: your messages are not delivered",
            ],
        )

    def test_topic_on_welcome_and_members(self) -> None:
        """The welcome's topic shows under it; members shows who is muted, and the topic."""
        self.welcome(topic="release", members=["alice", "bob"])
        self.notice("members", members=["alice", "bob"], host="alice", muted=["bob"], topic="release")
        self.assertEqual(
            self.ui.lines,
            [
                "* joined room 'r' as alice (host: alice; here: alice, bob)",
                "* topic: release",
                "* members: alice, bob (host: alice; muted: bob)",
                "* topic: release",
            ],
        )
        self.assertEqual(self.session.topic, "release")
        self.assertEqual(self.session.muted, {"bob"})

    def test_kicked(self) -> None:
        """Kicked: the session ends, not to be joined again by itself."""
        self.welcome()
        self.notice("disconnected", reason="kicked")
        self.assertEqual(self.endings, [Ending(EXIT_DISCONNECTED, "* the host kicked you out of the room (you may join again)", rejoinable=False)])

    def test_banned(self) -> None:
        """Banned: the same, said so."""
        self.welcome()
        self.notice("disconnected", reason="banned")
        self.assertEqual(
            self.endings, [Ending(EXIT_DISCONNECTED, "* the host banned you from the room (no joining again while it lives)", rejoinable=False)]
        )

    def test_timeout_still_rejoins(self) -> None:
        """A timeout is still rejoinable."""
        self.welcome()
        self.notice("disconnected", reason="timeout")
        self.assertTrue(self.endings[0].rejoinable)


class RefusalTests(unittest.TestCase):
    """TCRP 403 in plain words."""

    def test_403(self) -> None:
        """Banned or locked, as the server's message says."""
        self.assertEqual(render.refusal(wire.OP_JOIN, "r", 403, "you are banned from room 'r'"), "you are banned from room 'r'")
        self.assertEqual(render.refusal(wire.OP_JOIN, "r", 403, "room 'r' is locked"), "room 'r' is locked: nobody new may join")
        self.assertEqual(render.refusal(wire.OP_JOIN, "r", 403, "no"), "room 'r' refused you (no)")


class HelpTests(SessionCase):
    """/help lists the commands and marks the host's."""

    def test_help(self) -> None:
        """Every command, one a line; (host) marks; whether this member is the host."""
        self.welcome(host="bob", members=["alice", "bob"])
        self.session.line("/help")
        text = "\n".join(self.ui.lines[1:])
        for command in render.COMMANDS:
            self.assertIn(f"/{command.name}", text)
        kick = next(line for line in self.ui.lines if "/kick" in line)
        self.assertIn("(host)", kick)
        who = next(line for line in self.ui.lines if "/who" in line)
        self.assertNotIn("(host)", who)
        self.assertTrue(self.ui.lines[-1].endswith("you are not the host"))
        self.notice("host", user="alice")
        self.session.line("/help")
        self.assertTrue(self.ui.lines[-1].endswith("you are the host"))

    def test_lobby(self) -> None:
        """The lobby has no room commands: it says so, and its /help lists only its own."""
        lines = Lines()
        session = LobbySession(self.clock, SERVER, "ゆう", lines.out, timeout=3)
        transport = FakeDatagramTransport()
        session.makeConnection(transport)  # type: ignore[arg-type]
        transport.clear()
        session.line("/msg bob hi")
        session.line("/help")
        self.assertEqual(transport.written, [])
        self.assertEqual(lines.lines[1], "* /msg is not available here")
        self.assertNotIn("/kick", "\n".join(lines.lines))


class CompletionTests(SessionCase):
    """Tab completion: command names, and members' names where a command takes USER."""

    def test_commands(self) -> None:
        """After /: the commands that start so."""
        self.assertEqual(self.session.completions("/ki"), [("/kick ", -3)])
        self.assertEqual(self.session.completions("/u"), [("/unmute ", -2), ("/unlock ", -2)])
        self.assertEqual(len(self.session.completions("/")), len(render.COMMANDS))
        self.assertEqual(self.session.completions("hello /ki"), [])

    def test_members(self) -> None:
        """USER: the other members, as the notices told; never TEXT."""
        self.welcome(members=["alice", "bob", "bea", "carol"])
        self.notice("join", user="bernd")
        self.notice("leave", user="carol", reason="left")
        self.assertEqual(self.session.completions("/msg b"), [("bob ", -1), ("bea ", -1), ("bernd ", -1)])
        self.assertEqual(self.session.completions("/kick "), [("bob", 0), ("bea", 0), ("bernd", 0)])
        self.assertEqual(self.session.completions("/msg bob he"), [])
        self.assertEqual(self.session.completions("/topic b"), [])
        self.assertEqual(self.session.completions("/msg a"), [])  # not ourselves

    def test_lobby(self) -> None:
        """The lobby completes its own commands only."""
        session = LobbySession(self.clock, SERVER, "ゆう", Lines().out, timeout=3)
        self.assertEqual(session.completions("/"), [("/leave ", -1), ("/quit ", -1), ("/help ", -1)])
        self.assertEqual(session.completions("/msg b"), [])


class CompletionInTerminalTests(ClientCase):
    """Tab at the interactive chat prompt."""

    async def test_tab(self) -> None:
        """/ms and Tab gives /msg; al and Tab gives alice."""
        alice = self.client("--name", "alice", "--create", "r")
        await self.joined(alice)
        child, expect = self.pty_client("--host", "127.0.0.1", "--password", "", "--name", "bob", "--join", "r")
        await expect("joined room")
        await expect(">")
        child.send("/ms\t")
        await expect("/msg")
        child.send("al\t")
        await expect("alice")
        child.sendline("psst")
        # the next prompt must be up before the ^D (typed between two prompts,
        # with the terminal in cooked mode, it is the line discipline's EOF and lost)
        await sleep(0.5)
        child.sendcontrol("d")
        code, output = await exited(child, 10.0)
        self.assertEqual(code, EXIT_OK, output)
        await wait_until(lambda: alice.has("* bob left"), 5, "bob's leave")
        alice.close_stdin()
        await self.ended(alice)
