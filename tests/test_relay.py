"""Tests for L{ocm.relay} and L{ocm.lobby} over fake datagram transports."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from ocm import wire
from ocm.relay.lobby import LobbyProtocol
from ocm.relay.protocol import Relay
from ocm.rooms import MAX_SEND_FAILURES, Member, Rooms
from ocm.stats import Stats
from tests.helpers import EAGAIN, EPERM, FakeDatagramTransport

A = ("127.0.0.1", 5001)
B = ("127.0.0.1", 5002)
C = ("127.0.0.1", 5003)
OTHER_IP = ("127.0.0.2", 5002)


class RelayTests(unittest.TestCase):
    """Every check, drop rule and message kind of SPEC section 2."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.rooms = Rooms(timeout=30, rate=5, burst=5)
        self.relay = Relay(self.rooms, self.clock)
        self.transport = FakeDatagramTransport()
        self.relay.makeConnection(self.transport)  # type: ignore[arg-type]
        now = self.clock.seconds()
        self.alice = self.rooms.create("r", "alice", "127.0.0.1", now)
        self.bob = self.rooms.join(self.alice.room, "bob", "127.0.0.1", now)
        self.carol = self.rooms.join(self.alice.room, "carol", "127.0.0.1", now)

    def send(self, member: Member, message: bytes, addr: tuple[str, int], room: bytes | None = None) -> None:
        data = wire.encode_datagram(member.room.name_bytes if room is None else room, member.token, message)
        self.relay.datagramReceived(data, addr)

    def bind_all(self) -> None:
        self.send(self.alice, b"", A)
        self.send(self.bob, b"", B)
        self.send(self.carol, b"", C)
        self.transport.clear()

    def test_bind_welcome_join(self) -> None:
        """The first datagram binds: welcome to it, join to the bound others."""
        self.send(self.alice, b"", A)
        self.assertEqual(self.transport.notices_to(A), [{"event": "welcome", "room": "r", "user": "alice", "host": "alice", "members": ["alice"]}])
        self.send(self.bob, wire.HELLO, B)
        self.assertEqual(self.transport.notices_to(A)[1:], [{"event": "join", "user": "bob"}])
        self.assertEqual([n["event"] for n in self.transport.notices_to(B)], ["welcome"])
        self.send(self.bob, wire.HELLO, B)
        self.assertEqual([n["event"] for n in self.transport.notices_to(B)], ["welcome", "welcome"])
        self.assertEqual(len(self.transport.notices_to(A)), 2, "join is told once")

    def test_relay(self) -> None:
        """Chat goes to every other bound member, never back to the sender."""
        self.send(self.alice, b"", A)
        self.send(self.bob, b"", B)
        self.transport.clear()
        self.send(self.alice, "こんにちは".encode(), A)
        self.assertEqual(self.transport.written, [(b"\x05alice" + "こんにちは".encode(), B)])
        self.assertEqual(self.rooms.stats.relayed, 1)

    def test_first_chat_binds_and_relays(self) -> None:
        """A chat message as the first datagram binds and is relayed."""
        self.send(self.alice, b"", A)
        self.transport.clear()
        self.send(self.bob, b"hi", B)
        self.assertEqual(self.transport.to(A), [wire.encode_notice("join", user="bob"), b"\x03bobhi"])

    def test_keepalive(self) -> None:
        """An empty message refreshes last_seen and is never relayed or answered."""
        self.bind_all()
        self.clock.advance(10)
        self.send(self.bob, b"", B)
        self.assertEqual(self.bob.last_seen, self.clock.seconds())
        self.assertEqual(self.transport.written, [])

    def test_activity(self) -> None:
        """Any accepted datagram counts as activity, even a dropped control."""
        self.bind_all()
        self.clock.advance(10)
        self.send(self.bob, b"\x00nonsense", B)
        self.assertEqual(self.bob.last_seen, self.clock.seconds())
        self.assertEqual(self.rooms.stats.dropped["bad_control"], 1)
        self.assertEqual(self.transport.written, [])

    def assertDropped(self, reason: str, data: bytes, addr: tuple[str, int] = A) -> None:
        before = self.rooms.stats.dropped[reason]
        self.relay.datagramReceived(data, addr)
        self.assertEqual(self.rooms.stats.dropped[reason], before + 1)
        self.assertEqual(self.transport.written, [], "a drop is never answered")

    def test_drops(self) -> None:
        """Every drop rule, each silent."""
        self.bind_all()
        token, room = self.bob.token, b"r"
        self.assertDropped("oversize", wire.encode_datagram(room, token, b"x" * 4000) + b"x" * 100, B)
        self.assertDropped("malformed", b"", B)
        self.assertDropped("malformed", b"\x01", B)
        self.assertDropped("malformed", b"\x01\x20r" + token[:-1], B)
        self.assertDropped("unknown_token", wire.encode_datagram(room, b"f" * 32, b"hi"), B)
        self.assertDropped("unknown_token", wire.encode_datagram(room, token[:-1], b"hi"), B)
        self.assertDropped("wrong_room", wire.encode_datagram(b"s", token, b"hi"), B)
        self.assertDropped("wrong_ip", wire.encode_datagram(room, token, b"hi"), OTHER_IP)
        self.assertDropped("wrong_port", wire.encode_datagram(room, token, b"hi"), ("127.0.0.1", 6000))
        self.assertDropped("bad_utf8", wire.encode_datagram(room, token, b"\xff\xfe"), B)
        self.assertDropped("bad_utf8", wire.encode_datagram(room, token, "あ".encode()[:2]), B)
        self.assertDropped("bad_control", wire.encode_datagram(room, token, b"\x00hellox"), B)

    def test_wrong_ip_does_not_bind(self) -> None:
        """A token used first from another IP stays unbound."""
        self.send(self.bob, b"hi", OTHER_IP)
        self.assertIsNone(self.bob.addr)
        self.assertEqual(self.rooms.stats.dropped["wrong_ip"], 1)
        self.send(self.bob, b"", B)
        self.assertEqual(self.bob.addr, B)

    def test_port_lock(self) -> None:
        """Once bound, the same IP from another port is dropped."""
        self.send(self.bob, b"", B)
        self.send(self.bob, b"hi", ("127.0.0.1", 7777))
        self.assertEqual(self.bob.addr, B)
        self.assertEqual(self.rooms.stats.dropped["wrong_port"], 1)

    def test_too_long(self) -> None:
        """A message whose relayed form exceeds 4094 bytes: error to the sender only."""
        self.bind_all()
        # Only reachable when the username is longer than room + token.
        long = self.rooms.join(self.alice.room, "L" * 200, "127.0.0.1", self.clock.seconds())
        D = ("127.0.0.1", 5004)
        self.send(long, b"", D)
        self.transport.clear()
        limit = 4093 - 200
        self.send(long, b"x" * (limit + 1), D)
        self.assertEqual(self.transport.written, [(wire.encode_notice("error", code="too_long"), D)])
        self.assertEqual(self.rooms.stats.dropped["too_long"], 1)
        self.transport.clear()
        self.send(long, b"x" * limit, D)
        self.assertEqual(len(self.transport.written), 3)
        self.assertTrue(all(len(data) == 4094 for data, _ in self.transport.written))

    def test_who(self) -> None:
        """\\x00who: members and host, to the asker only."""
        self.bind_all()
        self.send(self.bob, wire.WHO, B)
        self.assertEqual(self.transport.written, [(wire.encode_notice("members", members=["alice", "bob", "carol"], host="alice"), B)])

    def test_leave(self) -> None:
        """\\x00leave: the others are told; the token is gone."""
        self.bind_all()
        self.send(self.bob, wire.LEAVE, B)
        notice = wire.encode_notice("leave", user="bob", reason="left")
        self.assertEqual(sorted(self.transport.written), sorted([(notice, A), (notice, C)]))
        self.transport.clear()
        self.send(self.bob, b"hi", B)
        self.assertEqual(self.rooms.stats.dropped["unknown_token"], 1)

    def test_host_leave(self) -> None:
        """The host leaving closes the room for everyone."""
        self.bind_all()
        self.send(self.alice, wire.LEAVE, A)
        closed = wire.encode_notice("closed", reason="host_left")
        self.assertEqual(sorted(self.transport.written), [(closed, B), (closed, C)])
        self.assertEqual(self.rooms.rooms, {})

    def test_isolation(self) -> None:
        """Rooms do not hear each other."""
        self.bind_all()
        dave = self.rooms.create("s", "dave", "127.0.0.1", self.clock.seconds())
        D = ("127.0.0.1", 5004)
        self.send(dave, b"", D)
        self.transport.clear()
        self.send(dave, b"hello s", D)
        self.send(self.alice, b"hello r", A)
        self.assertEqual(self.transport.to(D), [])
        self.assertEqual(self.transport.to(B), [b"\x05alicehello r"])

    def test_send_error_keeps_fan_out(self) -> None:
        """A failing recipient never stops the rest of the room."""
        self.bind_all()
        self.transport.failing[B] = EPERM
        self.send(self.alice, b"hi", A)
        self.assertEqual(self.transport.written, [(b"\x05alicehi", C)])
        self.assertEqual(self.bob.failures, 1)
        self.assertEqual(self.rooms.stats.send_errors, 1)

    def test_unreachable(self) -> None:
        """Several failures in a row remove the member as unreachable."""
        self.bind_all()
        self.transport.failing[B] = EPERM
        for _ in range(MAX_SEND_FAILURES):
            self.send(self.alice, b"hi", A)
        self.assertNotIn(self.bob.token, self.rooms.tokens)
        self.assertIn((wire.encode_notice("leave", user="bob", reason="unreachable"), C), self.transport.written)

    def test_overload_blames_nobody(self) -> None:
        """EAGAIN means our buffer is full, not that the member is gone."""
        self.bind_all()
        self.transport.failing[B] = EAGAIN
        for _ in range(MAX_SEND_FAILURES + 1):
            self.clock.advance(1)
            self.send(self.alice, b"hi", A)
        self.assertIn(self.bob.token, self.rooms.tokens)
        self.assertEqual(self.rooms.stats.send_overload, MAX_SEND_FAILURES + 1)

    def test_rate_limited(self) -> None:
        """Over the rate: dropped, and at most one rate_limited notice a second."""
        self.bind_all()
        for i in range(8):
            self.send(self.bob, b"m%d" % i, B)
        self.assertEqual(len(self.transport.to(A)), 5)
        self.assertEqual(self.transport.notices_to(B), [{"event": "error", "code": "rate_limited"}])
        self.assertEqual(self.rooms.stats.dropped["rate_limited"], 3)
        self.clock.advance(1)
        self.send(self.bob, b"again", B)
        self.assertEqual(self.transport.to(A)[-1], b"\x03bobagain")

    def test_sweep(self) -> None:
        """The sweep removes idle members and tells them."""
        self.bind_all()
        self.clock.advance(20)
        self.send(self.alice, b"", A)
        self.send(self.bob, b"", B)
        self.clock.advance(11)
        self.relay.sweep()
        self.assertEqual(self.transport.notices_to(C), [{"event": "disconnected", "reason": "timeout"}])
        self.assertEqual(self.transport.notices_to(A), [{"event": "leave", "user": "carol", "reason": "timeout"}])

    def test_shutdown(self) -> None:
        """Shutdown tells every bound member."""
        self.bind_all()
        self.relay.shutdown()
        self.assertEqual(sorted(a for _, a in self.transport.written), [A, B, C])
        self.assertEqual(self.rooms.tokens, {})


class LobbyTests(unittest.TestCase):
    """The stage-1 open relay (SPEC section 4)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.stats = Stats()
        self.lobby = LobbyProtocol(self.stats, self.clock, timeout=10)
        self.transport = FakeDatagramTransport()
        self.lobby.makeConnection(self.transport)  # type: ignore[arg-type]

    def test_relay(self) -> None:
        """The same bytes go to every other recently heard address."""
        self.lobby.datagramReceived(b"\x01a", A)
        self.lobby.datagramReceived(b"\x01b", B)
        self.assertEqual(self.transport.written, [], "keepalives are not relayed")
        self.lobby.datagramReceived("\x01aこんにちは".encode(), A)
        self.assertEqual(self.transport.written, [("\x01aこんにちは".encode(), B)])

    def test_drops(self) -> None:
        """Oversize, malformed and bad UTF-8 datagrams are dropped and not remembered."""
        for data in (b"", b"\x00hi", b"\x05ab", b"\x01a\xff", b"\x01a" + b"x" * 4095):
            self.lobby.datagramReceived(data, C)
        self.assertEqual(self.lobby.clients, {})
        self.assertEqual(self.stats.dropped["oversize"], 1)
        self.assertEqual(self.stats.dropped["malformed"], 3)
        self.assertEqual(self.stats.dropped["bad_utf8"], 1)

    def test_largest(self) -> None:
        """A 4096-byte lobby datagram is relayed whole."""
        self.lobby.datagramReceived(b"\x01b", B)
        data = b"\x01a" + b"x" * 4094
        self.lobby.datagramReceived(data, A)
        self.assertEqual(self.transport.written, [(data, B)])

    def test_forget_idle(self) -> None:
        """Addresses silent for longer than the timeout are forgotten."""
        self.lobby.datagramReceived(b"\x01a", A)
        self.clock.advance(5)
        self.lobby.datagramReceived(b"\x01b", B)
        self.clock.advance(6)
        self.lobby.sweep()
        self.assertEqual(list(self.lobby.clients), [B])

    def test_unreachable(self) -> None:
        """A failing address is dropped after several failures; others still get it."""
        self.lobby.datagramReceived(b"\x01b", B)
        self.lobby.datagramReceived(b"\x01c", C)
        self.transport.failing[B] = EPERM
        for _ in range(MAX_SEND_FAILURES):
            self.lobby.datagramReceived(b"\x01ahi", A)
        self.assertNotIn(B, self.lobby.clients)
        self.assertEqual(self.transport.to(C), [b"\x01ahi"] * MAX_SEND_FAILURES)


class SameIPTests(unittest.TestCase):
    """The relay's source-IP check."""

    def test_same_ip(self) -> None:
        """Equal strings, IPv4-mapped IPv6, and other spellings of the same IPv6."""
        from ocm.relay.protocol import same_ip

        self.assertTrue(same_ip("127.0.0.1", "127.0.0.1"))
        self.assertFalse(same_ip("127.0.0.2", "127.0.0.1"))
        self.assertTrue(same_ip("::ffff:127.0.0.1", "127.0.0.1"))
        self.assertFalse(same_ip("::ffff:127.0.0.2", "127.0.0.1"))
        self.assertTrue(same_ip("0:0::1", "::1"))
        self.assertFalse(same_ip("::2", "::1"))


class FastPortTests(unittest.TestCase):
    """L{ocm.udpport.FastPort} on a real socket."""

    def test_reads_and_survives_handler_errors(self) -> None:
        """Every datagram reaches the protocol; one that makes it raise is logged, the rest still arrive."""
        import socket

        from twisted.internet import reactor
        from twisted.internet.protocol import DatagramProtocol

        from ocm.relay.port import FastPort

        got: list[bytes] = []

        class Proto(DatagramProtocol):
            def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
                if data == b"boom":
                    raise RuntimeError("boom")
                got.append(data)

        port = FastPort(0, Proto(), interface="127.0.0.1", reactor=reactor)
        port.startListening()
        self.addCleanup(port.stopListening)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for data in (b"a", b"boom", b"b"):
                s.sendto(data, ("127.0.0.1", port.getHost().port))
        port.doRead()
        self.assertEqual(got, [b"a", b"b"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        port.doRead()  # nothing left: returns quietly
