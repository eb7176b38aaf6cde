"""Tests for the client: its session logic with a Clock, its rendering."""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial import unittest

from ocm import wire
from ocm.client import render
from ocm.client.options import parse_args, password_of
from ocm.client.session import EXIT_CLOSED, EXIT_DISCONNECTED, EXIT_NO_UDP, EXIT_OK, ChatSession, Ending, LobbySession
from tests.helpers import FakeDatagramTransport

SERVER = ("127.0.0.1", 9001)
TOKEN = b"t" * 32


class ChatSessionTests(unittest.TestCase):
    """ChatSession over a fake transport and a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.lines: list[str] = []
        self.session = ChatSession(self.clock, SERVER, "r", "alice", TOKEN, 30, self.lines.append)
        self.transport = FakeDatagramTransport()
        self.session.makeConnection(self.transport)  # type: ignore[arg-type]
        self.header = wire.encode_datagram(b"r", TOKEN)
        self.endings: list[Ending] = []
        self.session.ended.addCallback(self.endings.append)

    def sent(self) -> list[bytes]:
        return [data[len(self.header) :] for data in self.transport.to(SERVER)]

    def welcome(self) -> None:
        notice = wire.encode_notice("welcome", room="r", user="alice", host="alice", members=["alice"])
        self.session.datagramReceived(notice, SERVER)

    def test_hello_until_welcome(self) -> None:
        """\\x00hello every half second until the welcome, then no more (but one ping: does the server answer pings?)."""
        self.clock.pump([0.5] * 3)
        self.assertEqual(self.sent(), [wire.HELLO] * 4)
        self.welcome()
        self.clock.pump([0.5] * 4)
        self.assertEqual(self.sent(), [wire.HELLO] * 4 + [b"\x00ping"])
        self.assertEqual(self.lines, ["* joined room 'r' as alice (host: alice; here: alice)"])

    def test_no_udp(self) -> None:
        """No welcome in 5 s: the session ends with EXIT_NO_UDP and says why."""
        self.clock.pump([0.5] * 10)
        self.assertEqual(self.endings, [Ending(EXIT_NO_UDP, "no reply over UDP from 127.0.0.1:9001; is UDP blocked?")])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_lines_wait_for_welcome(self) -> None:
        """Lines typed before the welcome are sent after it, in order."""
        self.session.line("one")
        self.session.line("two")
        self.assertEqual(self.sent(), [wire.HELLO])
        self.welcome()
        self.assertEqual(self.sent(), [wire.HELLO, b"one", b"two", b"\x00ping"])

    def test_keepalive(self) -> None:
        """An empty datagram about every timeout/3 while idle, none while talking."""
        self.welcome()
        self.session.datagramReceived(wire.encode_notice("pong"), SERVER)  # the welcome's ping answered
        self.transport.clear()
        self.clock.pump([2.5] * 4)  # 10 s idle
        self.assertEqual(self.sent(), [b""])
        self.transport.clear()
        for _ in range(8):
            self.session.line("talk")
            self.clock.advance(2.5)
        self.assertNotIn(b"", self.sent())

    def test_split(self) -> None:
        """A long line goes out in datagrams that fit, cut at character boundaries."""
        self.welcome()
        self.transport.clear()
        text = "あいう" * 3000 + "end"
        self.session.line(text)
        pieces = self.sent()
        limit = wire.max_text(b"r", TOKEN, b"alice")
        self.assertTrue(all(len(self.header) + len(p) <= 4096 and len(p) <= limit for p in pieces))
        # As few datagrams as character boundaries allow: all but the last nearly full.
        self.assertTrue(all(len(p) > limit - 4 for p in pieces[:-1]))
        self.assertEqual(len(pieces), 7)  # 27003 bytes, 4061 a datagram
        self.assertEqual("".join(p.decode("utf-8") for p in pieces), text)

    def test_commands(self) -> None:
        """/who, /help, /leave."""
        self.welcome()
        self.transport.clear()
        self.session.line("/who")
        self.session.line("/help")
        self.assertEqual(self.sent(), [wire.WHO])
        self.assertIn("/leave", "".join(self.lines))
        self.session.line("/leave")
        self.assertEqual(self.sent(), [wire.WHO, wire.LEAVE])
        self.assertEqual(self.endings, [Ending(EXIT_OK)])

    def test_eof_before_welcome(self) -> None:
        """End of input before the welcome: send what waits (and the welcome's ping), then leave."""
        self.session.line("bye")
        self.session.leave_when_ready()
        self.welcome()
        self.assertEqual(self.sent(), [wire.HELLO, b"bye", b"\x00ping", wire.LEAVE])
        self.assertEqual(self.endings, [Ending(EXIT_OK)])

    def test_render_incoming(self) -> None:
        """Chat lines as HH:MM name: text; notices as * lines; foreign sources ignored."""
        self.welcome()
        self.session.datagramReceived(wire.encode_relayed("ボブ".encode(), "やあ".encode()), SERVER)
        self.session.datagramReceived(wire.encode_notice("leave", user="carol", reason="timeout"), SERVER)
        self.session.datagramReceived(wire.encode_relayed(b"evil", b"spoof"), ("127.0.0.1", 6666))
        self.session.datagramReceived(b"\x09garbage", SERVER)
        self.assertRegex(self.lines[1], r"^\d\d:\d\d ボブ: やあ$")
        self.assertEqual(self.lines[2:], ["* carol left (timeout)"])

    def test_closed(self) -> None:
        """closed ends the session with EXIT_CLOSED."""
        self.welcome()
        self.session.datagramReceived(wire.encode_notice("closed", reason="host_left"), SERVER)
        self.assertEqual(self.endings, [Ending(EXIT_CLOSED, "* room closed: the host left")])

    def test_disconnected(self) -> None:
        """disconnected ends the session, rejoinable."""
        self.welcome()
        self.session.datagramReceived(wire.encode_notice("disconnected", reason="timeout"), SERVER)
        self.assertEqual(self.endings[0].code, EXIT_DISCONNECTED)
        self.assertTrue(self.endings[0].rejoinable)


class LobbySessionTests(unittest.TestCase):
    """The stage-1 lobby client."""

    def test_lobby(self) -> None:
        """A keepalive at start, messages as U|name|text, incoming rendered."""
        clock = Clock()
        lines: list[str] = []
        session = LobbySession(clock, SERVER, "ゆう", lines.append, timeout=3)
        transport = FakeDatagramTransport()
        session.makeConnection(transport)  # type: ignore[arg-type]
        session.line("hi")
        session.datagramReceived(wire.encode_relayed(b"bob", b"yo"), SERVER)
        prefix = wire.sender_prefix("ゆう".encode())
        self.assertEqual(transport.to(SERVER), [prefix, prefix + b"hi"])
        self.assertRegex(lines[-1], r"^\d\d:\d\d bob: yo$")
        clock.pump([0.25] * 8)
        self.assertEqual(transport.to(SERVER)[-1], prefix)


class RenderTests(unittest.TestCase):
    """Plain words."""

    def test_refusals(self) -> None:
        """Each refusal reads as a sentence a person understands."""
        self.assertEqual(render.refusal(2, "x", 401, "room 'x' needs a password"), "room 'x' needs a password")
        self.assertEqual(render.refusal(2, "x", 401, "wrong password"), "wrong password")
        self.assertEqual(render.refusal(2, "x", 409, "..."), "that name is taken in this room")
        self.assertEqual(render.refusal(1, "x", 409, "..."), "a room named 'x' already exists")
        self.assertEqual(render.refusal(2, "x", 503, "room 'x' is full"), "room is full")
        self.assertEqual(render.refusal(2, "x", 404, "..."), "no room named 'x'")

    def test_notices(self) -> None:
        """Notices as * lines."""
        self.assertEqual(render.notice_line({"event": "join", "user": "bob"}), "* bob joined")
        self.assertEqual(render.notice_line({"event": "leave", "user": "bob", "reason": "left"}), "* bob left")
        self.assertEqual(render.notice_line({"event": "closed", "reason": "shutdown"}), "* room closed: the server is shutting down")

    def test_room_list(self) -> None:
        """One line a room."""
        self.assertEqual(render.room_list([{"name": "r", "members": 2, "capacity": 5, "protected": True}]), ["r  2/5 members (password)"])
        self.assertEqual(render.room_list([]), ["no rooms"])


class ArgsTests(unittest.TestCase):
    """The command line."""

    def test_parse_server(self) -> None:
        """host, host:port, [v6]:port, bare IPv6; a bad port is refused."""
        from ocm.client.options import parse_server

        self.assertEqual(parse_server("127.0.0.1:9100"), ("127.0.0.1", 9100))
        self.assertEqual(parse_server("chat.example"), ("chat.example", 9000))
        self.assertEqual(parse_server("", 9005), ("127.0.0.1", 9005))
        self.assertEqual(parse_server("[::1]:9100"), ("::1", 9100))
        self.assertEqual(parse_server("[::1]"), ("::1", 9000))
        self.assertEqual(parse_server("::1"), ("::1", 9000))
        self.assertRaises(ValueError, parse_server, "host:port")
        self.assertRaises(ValueError, parse_server, "host:70000")

    def test_password_sources(self) -> None:
        """--password-file, then OCM_PASSWORD, then --password."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("from-file\nignored\n")
        environ = dict(os.environ)
        environ.pop("OCM_PASSWORD", None)
        self.patch(os, "environ", environ)
        self.assertIsNone(password_of(parse_args([])))
        self.assertEqual(password_of(parse_args(["--password", "x"])), "x")
        environ["OCM_PASSWORD"] = "from-env"
        self.assertEqual(password_of(parse_args(["--password", "x"])), "from-env")
        self.assertEqual(password_of(parse_args(["--password-file", path, "--password", "x"])), "from-file")
