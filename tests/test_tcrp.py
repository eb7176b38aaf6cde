"""Tests for L{ocm.tcrp}: the TCRP protocol over a StringTransport."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from ocm import wire
from ocm.rooms import Rooms
from ocm.tcrp.protocol import TCRPFactory, TCRPProtocol
from tests.helpers import request_bytes, synchronous


class TCRPTests(unittest.TestCase):
    """One request per connection, every status of the SPEC table."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.rooms = Rooms(timeout=30, max_rooms=10, max_members=10)
        self.factory = TCRPFactory(self.rooms, lambda: 9001, self.clock, max_payload=1000, request_timeout=5, run_blocking=synchronous)

    def connect(self, host: str = "127.0.0.1") -> tuple[TCRPProtocol, StringTransport]:
        proto = self.factory.buildProtocol(IPv4Address("TCP", host, 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        proto.makeConnection(transport)
        return proto, transport  # type: ignore[return-value]

    def request(self, data: bytes, byte_by_byte: bool = False, host: str = "127.0.0.1") -> tuple[list[wire.Frame], StringTransport]:
        proto, transport = self.connect(host)
        if byte_by_byte:
            for i in range(len(data)):
                proto.dataReceived(data[i : i + 1])
        else:
            proto.dataReceived(data)
        frames, rest = wire.decode_frames(transport.value())
        self.assertEqual(rest, b"")
        return frames, transport

    def status(self, frames: list[wire.Frame]) -> dict[str, Any]:
        self.assertEqual(frames[0].state, wire.STATE_RESPONSE)
        return wire.decode_json(frames[0].payload)  # type: ignore[no-any-return]

    def create(self, room: str = "r", **payload: Any) -> tuple[list[wire.Frame], StringTransport]:
        payload.setdefault("username", "alice")
        return self.request(request_bytes(1, room, payload))

    def test_create(self) -> None:
        """200 with udp_port and timeout, then the token; then the connection closes."""
        frames, transport = self.create(password="pw")
        self.assertEqual(len(frames), 2)
        self.assertEqual(self.status(frames), {"status": 200, "udp_port": 9001, "timeout": 30})
        self.assertEqual((frames[0].operation, frames[0].room), (1, b"r"))
        self.assertEqual((frames[1].operation, frames[1].state, frames[1].room), (1, 2, b"r"))
        self.assertEqual(len(frames[1].payload), 32)
        member = self.rooms.tokens[frames[1].payload]
        self.assertEqual((member.name, member.ip, member.is_host), ("alice", "127.0.0.1", True))
        self.assertTrue(transport.disconnecting)

    def test_byte_by_byte(self) -> None:
        """Any split of the bytes gives the same answer."""
        frames, transport = self.request(request_bytes(1, "部屋", {"username": "アリス"}), byte_by_byte=True)
        self.assertEqual(self.status(frames)["status"], 200)
        self.assertIn("部屋", self.rooms.rooms)

    def test_join(self) -> None:
        """A join with the right password."""
        self.create(password="pw")
        frames, _ = self.request(request_bytes(2, "r", {"username": "bob", "password": "pw"}), host="127.0.0.2")
        self.assertEqual(self.status(frames)["status"], 200)
        member = self.rooms.tokens[frames[1].payload]
        self.assertEqual((member.name, member.ip, member.is_host), ("bob", "127.0.0.2", False))

    def test_join_open_room(self) -> None:
        """No password needed for an open room; one given is ignored."""
        self.create()
        frames, _ = self.request(request_bytes(2, "r", {"username": "bob", "password": "x"}))
        self.assertEqual(self.status(frames)["status"], 200)

    def test_list(self) -> None:
        """List: 200, then a JSON array without passwords."""
        self.create(password="secret", capacity=5)
        frames, _ = self.request(request_bytes(3, ""))
        self.assertEqual(self.status(frames), {"status": 200})
        self.assertEqual(frames[1].state, 2)
        self.assertEqual(wire.decode_json(frames[1].payload), [{"name": "r", "members": 1, "capacity": 5, "protected": True}])
        self.assertNotIn(b"secret", frames[1].payload)

    def assertRefused(self, data: bytes, status: int, host: str = "127.0.0.1") -> dict[str, Any]:
        frames, transport = self.request(data, host=host)
        self.assertEqual(len(frames), 1, "an error is only a state-1 frame")
        body = self.status(frames)
        self.assertEqual(body["status"], status)
        self.assertIsInstance(body["message"], str)
        self.assertTrue(transport.disconnecting)
        return body

    def test_400(self) -> None:
        """Malformed requests: 400, repeating the operation and room name."""
        self.assertRefused(request_bytes(1, "r", b"{oops"), 400)
        self.assertRefused(request_bytes(7, "r", {"username": "a"}), 400)
        self.assertRefused(request_bytes(1, "", {"username": "a"}), 400)
        self.assertRefused(request_bytes(1, "r", {}), 400)
        frames, _ = self.request(wire.encode_frame(2, 1, b"r", b"{}"))
        self.assertEqual((frames[0].operation, frames[0].room), (2, b"r"))
        self.assertEqual(self.rooms.stats.requests[(1, 400)], 3)

    def test_401(self) -> None:
        """A wrong or missing password."""
        self.create(password="pw")
        self.assertIn("needs a password", self.assertRefused(request_bytes(2, "r", {"username": "b"}), 401)["message"])
        self.assertEqual(self.assertRefused(request_bytes(2, "r", {"username": "b", "password": "PW"}), 401)["message"], "wrong password")
        self.assertEqual(len(self.rooms.tokens), 1)

    def test_404(self) -> None:
        """Join: no such room."""
        self.assertRefused(request_bytes(2, "nope", {"username": "b"}), 404)

    def test_409(self) -> None:
        """Create: name taken; join: username taken in that room."""
        self.create()
        self.assertRefused(request_bytes(1, "r", {"username": "x"}), 409)
        self.assertRefused(request_bytes(2, "r", {"username": "alice"}), 409)

    def test_413(self) -> None:
        """A declared payload over the limit is refused as soon as the header is in."""
        header = wire.encode_frame(1, 0, b"", b"")[:3] + (1001).to_bytes(29, "big")
        frames, transport = self.request(header)
        self.assertEqual(self.status(frames)["status"], 413)
        self.assertTrue(transport.disconnecting)
        # 2**29 declared: still answered at once, nothing buffered
        header = bytes((1, 1, 0)) + (2**29).to_bytes(29, "big")
        self.assertEqual(self.status(self.request(header)[0])["status"], 413)

    def test_429_request_rate(self) -> None:
        """Too many requests from one address; other addresses are not slowed."""
        self.factory.requests.rate, self.factory.requests.burst = 1.0, 3.0
        for _ in range(3):
            self.assertEqual(self.status(self.request(request_bytes(3, ""))[0])["status"], 200)
        self.assertRefused(request_bytes(3, ""), 429)
        self.assertEqual(self.status(self.request(request_bytes(3, ""), host="127.0.0.2")[0])["status"], 200)
        self.clock.advance(1)
        self.assertEqual(self.status(self.request(request_bytes(3, ""))[0])["status"], 200)

    def test_429_password_guessing(self) -> None:
        """Wrong passwords for one room from one IP are limited, then 429 even for the right one."""
        self.create(password="pw")
        for i in range(5):
            self.assertRefused(request_bytes(2, "r", {"username": f"b{i}", "password": "guess"}), 401)
        self.assertRefused(request_bytes(2, "r", {"username": "b", "password": "pw"}), 429)
        frames, _ = self.request(request_bytes(2, "r", {"username": "c", "password": "pw"}), host="127.0.0.2")
        self.assertEqual(self.status(frames)["status"], 200)
        self.clock.advance(12)
        frames, _ = self.request(request_bytes(2, "r", {"username": "b", "password": "pw"}))
        self.assertEqual(self.status(frames)["status"], 200)

    def test_429_connections(self) -> None:
        """Too many open connections from one IP: 429 at once; closing one frees a place."""
        self.factory.max_connections_per_ip = 2
        first, _ = self.connect()
        self.connect()
        frames = wire.decode_frames(self.connect()[1].value())[0]
        self.assertEqual(self.status(frames)["status"], 429)
        self.assertEqual(self.status(self.request(request_bytes(3, ""), host="127.0.0.2")[0])["status"], 200)
        first.connectionLost(None)
        self.assertEqual(self.status(self.request(request_bytes(3, ""))[0])["status"], 200)
        # StringTransport.loseConnection does not call connectionLost: the
        # answered connections are still open here (the real-socket test
        # checks that the counts return to zero).
        self.assertEqual(self.factory.connections, {"127.0.0.1": 2, "127.0.0.2": 1})

    def test_503(self) -> None:
        """Room full, and the server's limits."""
        self.create(capacity=1)
        self.assertRefused(request_bytes(2, "r", {"username": "bob"}), 503)
        for i in range(9):
            self.create(f"room{i}", username=f"u{i}")
        self.assertRefused(request_bytes(1, "another", {"username": "x"}), 503)

    def test_extra_bytes_ignored(self) -> None:
        """One request per connection: anything after it is ignored."""
        data = request_bytes(3, "") + request_bytes(1, "r", {"username": "a"})
        frames, _ = self.request(data)
        self.assertEqual(len(frames), 2)
        self.assertEqual(self.rooms.rooms, {})

    def test_idle_close(self) -> None:
        """A connection that has not sent a whole request in time is closed."""
        proto, transport = self.connect()
        proto.dataReceived(request_bytes(1, "r", {"username": "a"})[:40])
        self.clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnected)
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(request_bytes(1, "r", {"username": "a"})[40:])
        self.assertEqual(self.rooms.rooms, {})

    def test_timer_cancelled(self) -> None:
        """A whole request cancels the timer."""
        self.create()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_lost_during_hash(self) -> None:
        """A client gone before its password is checked gets no member."""
        pending: defer.Deferred[Any] = defer.Deferred()
        calls = []

        def later(f: Any, *args: Any) -> defer.Deferred[Any]:
            calls.append((f, args))
            return pending

        self.factory.run_blocking = later
        proto, transport = self.connect()
        proto.dataReceived(request_bytes(1, "r", {"username": "a", "password": "pw"}))
        proto.connectionLost(None)
        f, args = calls[0]
        pending.callback(f(*args))
        self.assertEqual(transport.value(), b"")
        self.assertEqual((self.rooms.rooms, self.rooms.tokens), ({}, {}))

    def test_hash_off_thread(self) -> None:
        """Passwords are hashed through run_blocking, not inline."""
        calls = []

        def spy(f: Any, *args: Any) -> defer.Deferred[Any]:
            calls.append(f.__name__)
            return synchronous(f, *args)

        self.factory.run_blocking = spy
        self.create(password="pw")
        self.request(request_bytes(2, "r", {"username": "b", "password": "pw"}))
        self.create("open")
        self.assertEqual(calls, ["hash_password", "verify_password"])

    def test_internal_error(self) -> None:
        """An unexpected error answers 500 and is logged, not raised."""

        def broken(*args: Any) -> Any:
            raise RuntimeError("boom")

        self.factory.run_blocking = broken
        frames, _ = self.create(password="pw")
        self.assertEqual(self.status(frames)["status"], 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
