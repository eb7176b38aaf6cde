"""
SPEC section 7 through the relay over a fake datagram transport: ping,
private messages, and the host's kick, ban, mute, topic, lock and hand-over;
plus the TCRP 403 end to end.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from ocm import wire
from ocm.relay.protocol import Relay
from ocm.rooms import Member, RoomError, Rooms
from tests.helpers import FakeDatagramTransport, ServerCase

A = ("127.0.0.1", 5001)
B = ("127.0.0.1", 5002)
C = ("127.0.0.2", 5003)


class Governing(unittest.TestCase):
    """Alice hosts; bob and carol (from another IP) are members."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.rooms = Rooms(timeout=30, rate=5, burst=5)
        self.relay = Relay(self.rooms, self.clock)
        self.transport = FakeDatagramTransport()
        self.relay.makeConnection(self.transport)  # type: ignore[arg-type]
        now = self.clock.seconds()
        self.alice = self.rooms.create("r", "alice", "127.0.0.1", now)
        self.room = self.alice.room
        self.bob = self.rooms.join(self.room, "bob", "127.0.0.1", now)
        self.carol = self.rooms.join(self.room, "carol", "127.0.0.2", now)
        for member, addr in ((self.alice, A), (self.bob, B), (self.carol, C)):
            self.send(member, b"", addr)
        self.transport.clear()

    def send(self, member: Member, message: bytes, addr: tuple[str, int]) -> None:
        self.relay.datagramReceived(wire.encode_datagram(b"r", member.token, message), addr)

    def command(self, member: Member, text: str, addr: tuple[str, int]) -> None:
        self.send(member, b"\x00" + text.encode("utf-8"), addr)

    def notices(self, addr: tuple[str, int]) -> list[dict[str, Any]]:
        return self.transport.notices_to(addr)

    def test_ping(self) -> None:
        """ping: the member alone gets pong; it counts as activity."""
        self.clock.advance(10)
        self.command(self.bob, "ping", B)
        self.assertEqual(self.notices(B), [{"event": "pong"}])
        self.assertEqual(self.transport.to(A) + self.transport.to(C), [])
        self.assertEqual(self.bob.last_seen, self.clock.seconds())

    def test_private(self) -> None:
        """msg USER TEXT: USER alone gets private with the sender and the text (spaces kept)."""
        self.command(self.bob, "msg carol やあ、 元気？", B)
        self.assertEqual(self.notices(C), [{"event": "private", "user": "bob", "text": "やあ、 元気？"}])
        self.assertEqual(self.transport.to(A) + self.transport.to(B), [])

    def test_private_limits(self) -> None:
        """No such user; rate limited like chat; too long."""
        self.command(self.bob, "msg nobody hi", B)
        self.assertEqual(self.notices(B), [{"event": "error", "code": "no_such_user"}])
        self.transport.clear()
        self.command(self.bob, "msg carol " + '"' * 2100, B)  # each quote escaped in the notice's JSON
        self.assertEqual(self.notices(B), [{"event": "error", "code": "too_long"}])
        self.transport.clear()
        for _ in range(6):
            self.command(self.bob, "msg carol hi", B)
        self.assertEqual(len(self.notices(C)), 4)  # burst 5, one spent on the too-long one
        self.assertEqual(self.notices(B), [{"event": "error", "code": "rate_limited"}])

    def test_not_host(self) -> None:
        """A host-only command from another member: error/not_host, nothing changes."""
        for text in ("kick carol", "ban carol", "mute carol", "unmute carol", "topic x", "lock", "unlock", "host bob"):
            self.command(self.bob, text, B)
        self.assertEqual(self.notices(B), [{"event": "error", "code": "not_host"}] * 8)
        self.assertEqual(self.transport.to(A) + self.transport.to(C), [])
        self.assertEqual((self.room.topic, self.room.locked, self.room.muted, self.room.host), ("", False, set(), self.alice))
        self.assertIn(self.carol.token, self.rooms.tokens)

    def test_kick(self) -> None:
        """kick USER: it gets disconnected/kicked, the others leave/kicked; its token is gone; it may join again."""
        self.command(self.alice, "kick carol", A)
        self.assertEqual(self.notices(C), [{"event": "disconnected", "reason": "kicked"}])
        self.assertEqual(self.notices(A), [{"event": "leave", "user": "carol", "reason": "kicked"}])
        self.assertEqual(self.notices(B), [{"event": "leave", "user": "carol", "reason": "kicked"}])
        self.assertNotIn(self.carol.token, self.rooms.tokens)
        self.rooms.join(self.room, "carol", "127.0.0.2", self.clock.seconds())
        self.assertEqual(self.rooms.stats.removed["kicked"], 1)

    def test_ban(self) -> None:
        """ban USER: as kick with banned; its name and its token's IP are refused (403) while the room lives."""
        self.command(self.alice, "ban carol", A)
        self.assertEqual(self.notices(C), [{"event": "disconnected", "reason": "banned"}])
        self.assertEqual(self.notices(B), [{"event": "leave", "user": "carol", "reason": "banned"}])
        now = self.clock.seconds()
        for name, ip in (("carol", "127.0.0.1"), ("someone", "127.0.0.2"), ("someone", "::ffff:127.0.0.2")):
            with self.assertRaises(RoomError) as caught:
                self.rooms.join(self.room, name, ip, now)
            self.assertEqual(caught.exception.status, 403)
        self.rooms.join(self.room, "dave", "127.0.0.1", now)

    def test_no_such_user(self) -> None:
        """A command that names no member: error/no_such_user, nothing changes."""
        for text in ("kick nobody", "ban nobody", "mute nobody", "host nobody"):
            self.command(self.alice, text, A)
        self.assertEqual(self.notices(A), [{"event": "error", "code": "no_such_user"}] * 4)
        self.assertEqual(self.room.banned_names, set())

    def test_mute(self) -> None:
        """A muted member's chat and private messages are not relayed; it hears error/muted at most once a second."""
        self.command(self.alice, "mute bob", A)
        for addr in (A, B, C):
            self.assertEqual(self.notices(addr), [{"event": "muted", "user": "bob"}])
        self.transport.clear()
        self.send(self.bob, b"hello?", B)
        self.send(self.bob, b"anyone?", B)
        self.command(self.bob, "msg carol psst", B)
        self.assertEqual(self.notices(B), [{"event": "error", "code": "muted"}])
        self.assertEqual(self.transport.to(A) + self.transport.to(C), [])
        self.command(self.bob, "who", B)
        self.assertEqual(self.notices(B)[-1], {"event": "members", "members": ["alice", "bob", "carol"], "host": "alice", "muted": ["bob"]})
        self.transport.clear()
        self.command(self.alice, "unmute bob", A)
        self.assertEqual(self.notices(C), [{"event": "unmuted", "user": "bob"}])
        self.send(self.bob, b"back", B)
        self.assertEqual(self.transport.to(C)[-1], b"\x03bobback")

    def test_topic(self) -> None:
        """topic TEXT: everyone gets topic; the welcome carries it; empty clears it."""
        self.command(self.alice, "topic 今日の議題: リリース", A)
        for addr in (A, B, C):
            self.assertEqual(self.notices(addr), [{"event": "topic", "topic": "今日の議題: リリース", "user": "alice"}])
        self.transport.clear()
        self.command(self.bob, "hello", B)
        self.assertEqual(self.notices(B)[0]["topic"], "今日の議題: リリース")
        self.command(self.alice, "topic", A)
        self.assertEqual(self.notices(C)[-1], {"event": "topic", "topic": "", "user": "alice"})
        self.transport.clear()
        self.command(self.bob, "hello", B)
        self.assertNotIn("topic", self.notices(B)[0])

    def test_lock(self) -> None:
        """lock: joins refused with 403 until unlock; everyone is told."""
        self.command(self.alice, "lock", A)
        self.assertEqual(self.notices(B), [{"event": "locked"}])
        with self.assertRaises(RoomError) as caught:
            self.rooms.join(self.room, "dave", "127.0.0.1", self.clock.seconds())
        self.assertEqual(caught.exception.status, 403)
        self.command(self.alice, "unlock", A)
        self.assertEqual(self.notices(C)[-1], {"event": "unlocked"})
        self.rooms.join(self.room, "dave", "127.0.0.1", self.clock.seconds())

    def test_host(self) -> None:
        """host USER: USER is the host; welcome and members name it; the room lives as long as it does."""
        self.command(self.alice, "host bob", A)
        for addr in (A, B, C):
            self.assertEqual(self.notices(addr), [{"event": "host", "user": "bob"}])
        self.command(self.alice, "kick carol", A)
        self.assertEqual(self.notices(A)[-1], {"event": "error", "code": "not_host"})
        self.command(self.carol, "who", C)
        self.assertEqual(self.notices(C)[-1]["host"], "bob")
        self.transport.clear()
        self.command(self.alice, "leave", A)  # the old host leaves: the room stays
        self.assertEqual(self.notices(C), [{"event": "leave", "user": "alice", "reason": "left"}])
        self.command(self.bob, "leave", B)  # the new host leaves: the room closes
        self.assertEqual(self.notices(C)[-1], {"event": "closed", "reason": "host_left"})
        self.assertEqual(self.rooms.rooms, {})

    def test_unlisted_still_dropped(self) -> None:
        """Control messages not in sections 2 or 7, or with an argument they do not take, are dropped."""
        for text in ("nonsense", "ping x", "lock now", "hello again", "Kick carol"):
            self.command(self.alice, text, A)
        self.assertEqual(self.rooms.stats.dropped["bad_control"], 5)
        self.assertEqual(self.transport.written, [])
        self.send(self.alice, b"\x00msg carol \xff", A)
        self.assertEqual(self.rooms.stats.dropped["bad_utf8"], 1)

    def test_counted(self) -> None:
        """Each command is counted by word."""
        self.command(self.alice, "ping", A)
        self.command(self.alice, "lock", A)
        self.command(self.bob, "lock", B)  # not the host: not counted
        self.assertEqual(dict(self.rooms.stats.commands), {"ping": 1, "lock": 1})


class GoverningEndToEnd(ServerCase):
    """A banned or locked-out join gets 403 over TCRP."""

    async def test_403(self) -> None:
        host, guest = await self.room("r", "guest")
        host.send(b"\x00ban guest")
        from tests.helpers import wait_until

        await wait_until(lambda: guest.peer.notices("disconnected"), 5, "the ban")
        body, _ = await self.request(2, "r", username="guest")
        self.assertEqual((body["status"], body["message"]), (403, "banned from room 'r'"))
        host.send(b"\x00lock")
        await wait_until(lambda: host.peer.notices("locked"), 5, "locked")
        body, _ = await self.request(2, "r", username="other", source="127.0.0.2")
        self.assertEqual((body["status"], body["message"]), (403, "room 'r' is locked"))
