"""
The cluster's pure parts, without Redis: the rooms' replicas and remote
members (L{ocm.rooms}), what they tell the other nodes (L{ocm.rooms.Peers}),
and the per-destination batching (L{ocm.cluster.Outbox}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from ocm.cluster import wire as cw
from ocm import wire
from ocm.cluster.links import FLUSH_DELAY, Outbox
from ocm.rooms import Peers, Rooms
from tests.helpers import FakeRoute

A = ("127.0.0.1", 5001)
B = ("127.0.0.1", 5002)


class Recording(Peers):
    """Peers that write down what they are told."""

    shared = True

    def __init__(self) -> None:
        self.told: list[tuple[Any, ...]] = []

    def chat(self, room: Any, out: bytes) -> None:
        self.told.append(("chat", room.name, out))

    def bound(self, member: Any) -> None:
        self.told.append(("bound", member.name))

    def left(self, member: Any, reason: str) -> None:
        self.told.append(("left", member.name, reason))

    def closed(self, room: Any, reason: str, members: list[Any]) -> None:
        self.told.append(("closed", room.name, reason, [m.name for m in members]))

    def emptied(self, room: Any) -> None:
        self.told.append(("emptied", room.name))


def notices(sends: list[tuple[bytes, Any]]) -> list[tuple[dict[str, Any], Any]]:
    return [(wire.decode_notice(wire.decode_relayed(d)[1]), m.addr) for d, m in sends]


class Replicas(unittest.TestCase):
    """A room hosted on another node, as this node holds it."""

    def setUp(self) -> None:
        self.peers = Recording()
        self.rooms = Rooms(peers=self.peers)
        self.room = self.rooms.adopt("r", "id1", "host", None, None)
        self.rooms.remote_member(self.room, "host", "n1")
        self.rooms.remote_bound(self.room, "host", "n1")
        self.me = self.rooms.add_member(self.room, "me", "127.0.0.1", 0)

    def test_welcome_lists_remote_members_and_host(self) -> None:
        sends = self.rooms.bind(self.me, FakeRoute(A), 0)
        welcome = notices(sends)[-1][0]
        self.assertEqual(welcome, {"event": "welcome", "room": "r", "user": "me", "host": "host", "members": ["host", "me"]})
        self.assertEqual(self.peers.told, [("bound", "me")])

    def test_remote_join_and_leave_notices_once(self) -> None:
        self.rooms.bind(self.me, FakeRoute(A), 0)
        self.assertTrue(self.rooms.remote_member(self.room, "bob", "n2"))
        self.assertFalse(self.rooms.remote_member(self.room, "bob", "n2"))
        self.assertEqual(self.room.peer_nodes, {"n1": 1, "n2": 1})
        self.assertEqual(notices(self.rooms.remote_bound(self.room, "bob", "n2")), [({"event": "join", "user": "bob"}, A)])
        self.assertEqual(self.rooms.remote_bound(self.room, "bob", "n2"), [])
        self.assertEqual(notices(self.rooms.remote_left(self.room, "bob", "timeout")), [({"event": "leave", "user": "bob", "reason": "timeout"}, A)])
        self.assertEqual(self.rooms.remote_left(self.room, "bob", "timeout"), [])
        self.assertEqual(self.room.peer_nodes, {"n1": 1})
        # a member that never bound leaves silently
        self.rooms.remote_member(self.room, "quiet", "n3")
        self.assertEqual(self.rooms.remote_left(self.room, "quiet", "left"), [])

    def test_last_local_member_drops_the_replica(self) -> None:
        self.rooms.bind(self.me, FakeRoute(A), 0)
        self.rooms.remove(self.me, "left")
        self.assertNotIn("r", self.rooms.rooms)
        self.assertEqual(self.peers.told[-2:], [("left", "me", "left"), ("emptied", "r")])

    def test_remote_close_does_not_echo(self) -> None:
        self.rooms.bind(self.me, FakeRoute(A), 0)
        self.peers.told.clear()
        sends = self.rooms.remote_closed(self.room, "host_left")
        self.assertEqual(notices(sends), [({"event": "closed", "reason": "host_left"}, A)])
        self.assertEqual(self.peers.told, [])
        self.assertNotIn(self.me.token, self.rooms.tokens)

    def test_a_new_room_of_the_same_name_replaces_the_old(self) -> None:
        self.rooms.bind(self.me, FakeRoute(A), 0)
        newer = self.rooms.adopt("r", "id2", "other", None, 3)
        self.assertIsNot(newer, self.room)
        self.assertFalse(self.room.open)
        self.assertNotIn(self.me.token, self.rooms.tokens)


class HostedRooms(unittest.TestCase):
    """A room hosted here tells the peers when it closes, with its local members."""

    def test_host_leaving(self) -> None:
        peers = Recording()
        rooms = Rooms(peers=peers)
        host = rooms.create("r", "host", "127.0.0.1", 0)
        guest = rooms.join(host.room, "guest", "127.0.0.1", 0)
        rooms.bind(host, FakeRoute(A), 0)
        rooms.bind(guest, FakeRoute(B), 0)
        rooms.remove(host, "left")
        self.assertEqual(peers.told[-1], ("closed", "r", "host_left", ["guest"]))


class Batching(unittest.TestCase):
    """At most one PUBLISH per destination node per flush, all in one write."""

    def test_one_publish_per_node_one_write(self) -> None:
        clock = Clock()
        writes: list[bytes] = []
        outbox = Outbox("a", clock, lambda data: writes.append(data) or True)
        for i in range(3):
            outbox.add("b", cw.record(cw.CHAT, b"r", b"\x01x%d" % i))
        outbox.add("c", cw.record(cw.CHAT, b"s", b"\x01y"))
        outbox.add("c", cw.record(cw.LEFT, b"s", cw.left_body("y", "left")))
        self.assertEqual(writes, [])
        clock.advance(FLUSH_DELAY)
        self.assertEqual(len(writes), 1)
        data = writes[0]
        self.assertEqual(data.count(b"PUBLISH"), 2)
        self.assertEqual(outbox.sent, 2)
        # the batch for b, as c and b would parse it
        start = data.index(b"ocm:node:b")
        body = data[data.index(b"\r\n$", start) + 3 :]
        size, _, rest = body.partition(b"\r\n")
        origin, recs = cw.parse_batch(rest[: int(size)])
        self.assertEqual((origin, [b for _, _, b in recs]), ("a", [b"\x01x0", b"\x01x1", b"\x01x2"]))

    def test_dropped_without_a_connection(self) -> None:
        clock = Clock()
        outbox = Outbox("a", clock, lambda data: False)
        outbox.add("b", cw.record(cw.CHAT, b"r", b"\x01x"))
        clock.advance(FLUSH_DELAY)
        self.assertEqual((outbox.sent, outbox.dropped), (0, 1))
