"""Tests for L{ocm.rooms}: pure state, explicit C{now}."""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.trial import unittest

from ocm import wire
from ocm.passwords import PasswordHash, hash_password, verify_password
from ocm.rooms import MAX_SEND_FAILURES, RoomError, Rooms, normalise_ip
from tests.helpers import FakeRoute

A = ("127.0.0.1", 5001)
B = ("127.0.0.1", 5002)
C = ("127.0.0.1", 5003)


def notices(sends: list[tuple[bytes, Any]]) -> list[tuple[dict[str, Any], Any]]:
    """Decode (notice, member) pairs as (notice, the member's address)."""
    return [(wire.decode_notice(wire.decode_relayed(data)[1]), member.addr) for data, member in sends]


class CreateJoinTests(unittest.TestCase):
    """The TCRP side: create, find, join, list."""

    def setUp(self) -> None:
        self.rooms = Rooms(timeout=30, max_rooms=3, max_members=5)

    def test_create(self) -> None:
        """The creator is the host; its token is 32 hex characters."""
        host = self.rooms.create("r", "alice", "127.0.0.1", 0)
        self.assertTrue(host.is_host)
        self.assertIs(host.room.host, host)
        self.assertEqual(len(host.token), 32)
        int(host.token, 16)
        self.assertIs(self.rooms.tokens[host.token], host)

    def test_tokens_differ(self) -> None:
        """Every member gets its own token."""
        room = self.rooms.create("r", "alice", "127.0.0.1", 0).room
        bob = self.rooms.join(room, "bob", "127.0.0.1", 0)
        self.assertNotEqual(room.host.token, bob.token)  # type: ignore[union-attr]

    def test_name_taken(self) -> None:
        """409 for a second room of the same name."""
        self.rooms.create("r", "alice", "127.0.0.1", 0)
        self.assertEqual(self.assertRaises(RoomError, self.rooms.create, "r", "bob", "127.0.0.1", 0).status, 409)

    def test_room_limit(self) -> None:
        """503 at the server's room limit."""
        for name in "abc":
            self.rooms.create(name, "alice", "127.0.0.1", 0)
        self.assertEqual(self.assertRaises(RoomError, self.rooms.create, "d", "x", "127.0.0.1", 0).status, 503)

    def test_member_limit(self) -> None:
        """503 at the server's member limit, for joins and creates."""
        room = self.rooms.create("a", "h", "127.0.0.1", 0).room
        for i in range(4):
            self.rooms.join(room, f"m{i}", "127.0.0.1", 0)
        self.assertEqual(self.assertRaises(RoomError, self.rooms.join, room, "x", "127.0.0.1", 0).status, 503)
        self.assertEqual(self.assertRaises(RoomError, self.rooms.create, "b", "x", "127.0.0.1", 0).status, 503)

    def test_find(self) -> None:
        """404 for no such room."""
        self.assertEqual(self.assertRaises(RoomError, self.rooms.find, "nope").status, 404)

    def test_username_taken(self) -> None:
        """409 for a username already in the room; other rooms are separate."""
        room = self.rooms.create("r", "alice", "127.0.0.1", 0).room
        self.assertEqual(self.assertRaises(RoomError, self.rooms.join, room, "alice", "127.0.0.1", 0).status, 409)
        other = self.rooms.create("s", "bob", "127.0.0.1", 0).room
        self.rooms.join(other, "alice", "127.0.0.1", 0)

    def test_capacity(self) -> None:
        """503 when the room is full; the host counts."""
        room = self.rooms.create("r", "alice", "127.0.0.1", 0, capacity=2).room
        self.rooms.join(room, "bob", "127.0.0.1", 0)
        self.assertEqual(self.assertRaises(RoomError, self.rooms.join, room, "carol", "127.0.0.1", 0).status, 503)

    def test_join_closed_room(self) -> None:
        """A room closed while a password was being checked is a 404."""
        host = self.rooms.create("r", "alice", "127.0.0.1", 0)
        self.rooms.remove(host, "left")
        self.assertEqual(self.assertRaises(RoomError, self.rooms.join, host.room, "bob", "127.0.0.1", 0).status, 404)

    def test_listing(self) -> None:
        """The list shows name, members, capacity and protection, never the password."""
        pw = hash_password("secret")
        self.rooms.create("r", "alice", "127.0.0.1", 0, password=pw, capacity=4)
        self.rooms.create("s", "bob", "127.0.0.1", 0)
        listing = self.rooms.listing()
        self.assertEqual(
            listing,
            [
                {"name": "r", "members": 1, "capacity": 4, "protected": True},
                {"name": "s", "members": 1, "capacity": None, "protected": False},
            ],
        )
        self.assertNotIn("secret", repr(listing) + repr(pw))

    def test_ip_normalised(self) -> None:
        """IPv4-mapped IPv6 addresses are kept as IPv4."""
        host = self.rooms.create("r", "alice", "::ffff:127.0.0.2", 0)
        self.assertEqual(host.ip, "127.0.0.2")
        self.assertEqual(normalise_ip("::FFFF:10.0.0.1"), "10.0.0.1")
        self.assertEqual(normalise_ip("0:0::1"), "::1")
        self.assertEqual(normalise_ip("fe80::1%eth0"), "fe80::1")
        self.assertEqual(normalise_ip("not an address"), "not an address")


class PasswordTests(unittest.TestCase):
    """Salted scrypt hashes."""

    def test_verify(self) -> None:
        """The right password verifies, a wrong one does not; salts differ."""
        stored = hash_password("パスワード")
        self.assertTrue(verify_password("パスワード", stored))
        self.assertFalse(verify_password("password", stored))
        self.assertNotEqual(hash_password("パスワード"), stored)
        self.assertNotIn("パスワード", repr(stored))

    def test_pbkdf2(self) -> None:
        """The PBKDF2 fallback verifies the same way and says what it is."""
        stored = hash_password("パスワード", "pbkdf2")
        self.assertEqual(stored.scheme, "pbkdf2")
        self.assertTrue(verify_password("パスワード", stored))
        self.assertFalse(verify_password("password", stored))
        self.assertNotEqual(stored.digest, hash_password("パスワード", "pbkdf2").digest)

    def test_scheme_follows_hashlib(self) -> None:
        """scrypt where hashlib has it, PBKDF2 where it does not (PyPy)."""
        import types
        from unittest import mock

        from ocm import passwords

        self.assertEqual(passwords.default_scheme(), "scrypt" if hasattr(hashlib, "scrypt") else "pbkdf2")
        without = types.SimpleNamespace(pbkdf2_hmac=hashlib.pbkdf2_hmac)
        with mock.patch.object(passwords, "hashlib", without):
            stored = hash_password("secret")
            self.assertEqual(stored.scheme, "pbkdf2")
            self.assertTrue(verify_password("secret", stored))

    def test_unknown_scheme(self) -> None:
        """A scheme the module does not know is an error, not a match."""
        with self.assertRaises(ValueError):
            verify_password("x", PasswordHash(b"salt", b"digest", "md5"))


class RelayStateTests(unittest.TestCase):
    """The UDP side: bind, who, leave, timeouts, closing."""

    def setUp(self) -> None:
        self.rooms = Rooms(timeout=30)
        self.host = self.rooms.create("r", "alice", "127.0.0.1", 0)
        self.room = self.host.room
        self.bob = self.rooms.join(self.room, "bob", "127.0.0.1", 0)

    def test_bind(self) -> None:
        """Binding welcomes the member and tells the others once."""
        self.assertEqual(
            notices(self.rooms.bind(self.host, FakeRoute(A), 1)),
            [({"event": "welcome", "room": "r", "user": "alice", "host": "alice", "members": ["alice"]}, A)],
        )
        self.assertEqual(
            notices(self.rooms.bind(self.bob, FakeRoute(B), 2)),
            [
                ({"event": "join", "user": "bob"}, A),
                ({"event": "welcome", "room": "r", "user": "bob", "host": "alice", "members": ["alice", "bob"]}, B),
            ],
        )
        self.assertEqual(self.bob.addr, B)
        self.assertEqual(self.bob.last_seen, 2)
        self.assertEqual(self.rooms.counts(), (1, 2, 2))

    def test_who(self) -> None:
        """The member list and the host, to the asker."""
        self.rooms.bind(self.host, FakeRoute(A), 1)
        self.rooms.bind(self.bob, FakeRoute(B), 1)
        self.assertEqual(notices(self.rooms.who(self.bob)), [({"event": "members", "members": ["alice", "bob"], "host": "alice"}, B)])

    def test_leave(self) -> None:
        """A member leaving: the others are told; its token is gone."""
        self.rooms.bind(self.host, FakeRoute(A), 1)
        self.rooms.bind(self.bob, FakeRoute(B), 1)
        self.assertEqual(notices(self.rooms.remove(self.bob, "left")), [({"event": "leave", "user": "bob", "reason": "left"}, A)])
        self.assertNotIn(self.bob.token, self.rooms.tokens)
        self.assertEqual(self.rooms.remove(self.bob, "left"), [])
        self.assertEqual(self.rooms.stats.removed["left"], 1)

    def test_unbound_leave(self) -> None:
        """A member that never bound leaves without a notice."""
        self.rooms.bind(self.host, FakeRoute(A), 1)
        self.assertEqual(self.rooms.remove(self.bob, "timeout"), [])
        self.assertNotIn("bob", self.room.members)

    def test_host_leave(self) -> None:
        """The host leaving closes the room: closed/host_left, every token gone, the name free."""
        carol = self.rooms.join(self.room, "carol", "127.0.0.1", 0)
        self.rooms.bind(self.host, FakeRoute(A), 1)
        self.rooms.bind(self.bob, FakeRoute(B), 1)
        self.assertEqual(notices(self.rooms.remove(self.host, "left")), [({"event": "closed", "reason": "host_left"}, B)])
        self.assertEqual(self.rooms.tokens, {})
        self.assertNotIn(carol.token, self.rooms.tokens)
        self.assertEqual(self.rooms.rooms, {})
        self.rooms.create("r", "dave", "127.0.0.1", 2)

    def test_timeout(self) -> None:
        """Silent for longer than timeout: disconnected to it, leave to the others."""
        self.rooms.bind(self.host, FakeRoute(A), 0)
        self.rooms.bind(self.bob, FakeRoute(B), 0)
        self.host.last_seen = 20
        self.assertEqual(self.rooms.expire(30), [])
        self.assertEqual(
            notices(self.rooms.expire(30.5)),
            [({"event": "disconnected", "reason": "timeout"}, B), ({"event": "leave", "user": "bob", "reason": "timeout"}, A)],
        )
        self.assertEqual(self.rooms.counts(), (1, 1, 1))

    def test_host_timeout(self) -> None:
        """A host timing out: disconnected to it, closed/host_left to the others."""
        self.rooms.bind(self.host, FakeRoute(A), 0)
        self.rooms.bind(self.bob, FakeRoute(B), 0)
        self.bob.last_seen = 31
        self.assertEqual(
            notices(self.rooms.expire(31)),
            [({"event": "disconnected", "reason": "timeout"}, A), ({"event": "closed", "reason": "host_left"}, B)],
        )
        self.assertEqual(self.rooms.counts(), (0, 0, 0))

    def test_unbound_token_expires(self) -> None:
        """A token never bound expires after timeout seconds."""
        self.rooms.bind(self.host, FakeRoute(A), 0)
        self.host.last_seen = 100
        self.assertEqual(self.rooms.expire(29), [])
        self.assertEqual(self.rooms.expire(31), [])
        self.assertNotIn(self.bob.token, self.rooms.tokens)

    def test_unreachable(self) -> None:
        """Several failed deliveries in a row remove the member as unreachable."""
        self.rooms.bind(self.host, FakeRoute(A), 0)
        self.rooms.bind(self.bob, FakeRoute(B), 0)
        for _ in range(MAX_SEND_FAILURES - 1):
            self.assertEqual(self.rooms.delivery_failed(self.bob), [])
        self.assertEqual(
            notices(self.rooms.delivery_failed(self.bob)),
            [({"event": "disconnected", "reason": "unreachable"}, B), ({"event": "leave", "user": "bob", "reason": "unreachable"}, A)],
        )
        self.assertEqual(self.rooms.stats.removed["unreachable"], 1)

    def test_shutdown(self) -> None:
        """Every bound member of every room gets closed/shutdown."""
        self.rooms.bind(self.host, FakeRoute(A), 0)
        self.rooms.bind(self.bob, FakeRoute(B), 0)
        other = self.rooms.create("s", "carol", "127.0.0.1", 0)
        self.rooms.bind(other, FakeRoute(C), 0)
        sent = notices(self.rooms.shutdown())
        self.assertEqual(sorted(addr for _, addr in sent), [A, B, C])
        self.assertTrue(all(n == {"event": "closed", "reason": "shutdown"} for n, _ in sent))
        self.assertEqual(self.rooms.counts(), (0, 0, 0))

    def test_rate_limit(self) -> None:
        """A token bucket of rate/s, burst deep; one notice per second at most."""
        rooms = Rooms(rate=2, burst=3)
        member = rooms.create("r", "a", "127.0.0.1", 0)
        rooms.bind(member, FakeRoute(A), 0)
        self.assertEqual([rooms.allow_message(member, 0) for _ in range(4)], [True, True, True, False])
        self.assertTrue(rooms.allow_message(member, 0.5))
        self.assertFalse(rooms.allow_message(member, 0.5))
        self.assertEqual(len(rooms.rate_limited_notice(member, 0.5)), 1)
        self.assertEqual(rooms.rate_limited_notice(member, 1.4), [])
        self.assertEqual(notices(rooms.rate_limited_notice(member, 1.6)), [({"event": "error", "code": "rate_limited"}, A)])


class TokenBucketTests(unittest.TestCase):
    """L{ocm.limits.TokenBuckets}."""

    def test_bucket(self) -> None:
        """burst at once, then rate a second; keys are separate."""
        from ocm.tcrp.limits import TokenBuckets

        buckets = TokenBuckets(rate=2, burst=3)
        self.assertEqual([buckets.allow("a", 0) for _ in range(4)], [True, True, True, False])
        self.assertTrue(buckets.allow("b", 0))
        self.assertTrue(buckets.allow("a", 0.5))
        self.assertFalse(buckets.allow("a", 0.5))

    def test_charge_and_prune(self) -> None:
        """charge may go below zero; full buckets are pruned."""
        from ocm.tcrp.limits import TokenBuckets

        buckets = TokenBuckets(rate=1, burst=2, max_keys=2)
        buckets.charge("a", 0, 3)
        self.assertTrue(buckets.blocked("a", 1.5))
        self.assertFalse(buckets.blocked("a", 2))
        buckets.allow("b", 0)
        buckets.allow("c", 0)
        self.assertEqual(len(buckets), 3)
        buckets.allow("d", 10)
        self.assertEqual(len(buckets), 1)


class LowPriorityTests(unittest.TestCase):
    """Password hashing runs at low priority in its worker thread."""

    def test_niced_in_thread(self) -> None:
        """The worker thread ends up SCHED_IDLE (or at nice 19); the calling thread is untouched."""
        import os
        import threading

        from ocm.passwords import SCHED_IDLE, at_low_priority

        def policy() -> tuple[int, int]:
            return os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

        seen = []

        def work() -> None:
            seen.append(at_low_priority(policy))

        before = policy()
        thread = threading.Thread(target=work)
        thread.start()
        thread.join(10)
        self.assertTrue(seen[0][0] == SCHED_IDLE or seen[0][1] == 19, seen)
        self.assertEqual(policy(), before)
