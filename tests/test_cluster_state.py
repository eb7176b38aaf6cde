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
from ocm.cluster.governing import rule_body
from ocm.cluster.links import FLUSH_DELAY, Outbox
from ocm.cluster.records import JOIN_ACK_TIMEOUT, Inbound, JoinWaits
from ocm.cluster.state import Incarnations, Node, RoomFields, StallWatch
from ocm.rooms import Peers, Rooms
from tests.helpers import FakeRoute

RID = b"0123456789abcdef"
R_ID = "7777777777777777"
S_ID = "5555555555555555"
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
        outbox = Outbox(Node("a", 30), clock, lambda data: writes.append(data) or True)
        for i in range(3):
            outbox.add("b", cw.record(cw.CHAT, b"r", RID, b"\x01x%d" % i))
        outbox.add("c", cw.record(cw.CHAT, b"s", RID, b"\x01y"))
        outbox.add("c", cw.record(cw.LEFT, b"s", RID, cw.left_body("y", "left")))
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
        batch = cw.parse_batch(rest[: int(size)])
        self.assertEqual((batch.origin, [b for _, _, _, b in batch.records]), ("a", [b"\x01x0", b"\x01x1", b"\x01x2"]))

    def test_dropped_without_a_connection(self) -> None:
        clock = Clock()
        outbox = Outbox(Node("a", 30), clock, lambda data: False)
        outbox.add("b", cw.record(cw.CHAT, b"r", RID, b"\x01x"))
        clock.advance(FLUSH_DELAY)
        self.assertEqual((outbox.sent, outbox.dropped), (0, 1))


class Fencing(unittest.TestCase):
    """Generations, dead incarnations and stalls, as pure state."""

    def test_refused_once_per_generation(self) -> None:
        node = Node("a", 2)
        self.assertFalse(node.refused(0))  # never registered
        node.registered_as("e1", 10)
        self.assertFalse(node.refused(9))  # a stale answer
        self.assertTrue(node.refused(10))
        self.assertFalse(node.refused(10))  # acted on already
        node.registered_as("e1", 11)
        self.assertTrue(node.registered)

    def test_no_reaping_within_a_ttl_of_reaching_redis(self) -> None:
        """Back from a Redis outage, a node gives the others one TTL to come back too before reaping them."""
        node = Node("a", 2)
        self.assertFalse(node.may_reap(100.0))
        node.reached(100.0)
        self.assertFalse(node.may_reap(101.9))
        self.assertTrue(node.may_reap(102.0))

    def test_redis_clock(self) -> None:
        node = Node("a", 2)
        node.synchronise(5_000, 1.0, 1.2)  # Redis read 5 s while this node read 1.1 s
        self.assertEqual(node.redis_ms(2.1), 6_000)

    def test_incarnations(self) -> None:
        inc = Incarnations()
        self.assertTrue(inc.admits("b", 1))
        self.assertTrue(inc.died("b", 5))
        self.assertFalse(inc.died("b", 5))
        self.assertFalse(inc.died("b", 4))
        self.assertFalse(inc.admits("b", 5))
        self.assertFalse(inc.admits("b", 3))
        self.assertTrue(inc.admits("b", 6))  # its next registration
        self.assertTrue(inc.admits("c", 1))

    def test_stall_watch(self) -> None:
        watch = StallWatch(1.0)
        self.assertFalse(watch.stalled(100.0))  # not started
        self.assertIsNone(watch.tick(100.0))
        self.assertIsNone(watch.tick(100.5))
        self.assertFalse(watch.stalled(101.4))
        self.assertTrue(watch.stalled(105.0))
        # a read found it first: reads are fresh again, the tick still reports it
        self.assertEqual(watch.resumed(105.0), 4.5)
        self.assertFalse(watch.stalled(105.1))
        self.assertEqual(watch.tick(105.2), 4.5)
        self.assertIsNone(watch.tick(105.7))


class FakeLinks:
    """What Inbound asks of the links: a clock, and records to other nodes."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.told: list[tuple[str, bytes]] = []

    def tell(self, node: str, record: bytes) -> None:
        self.told.append((node, record))


class FakeWriter:
    """What Inbound asks of the relay."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []
        self.delivered: list[tuple[str, bytes]] = []

    def send_all(self, sends: list[tuple[bytes, Any]]) -> None:
        self.sent.extend(sends)

    def deliver(self, room: Any, out: bytes) -> None:
        self.delivered.append((room.name, out))


class InboundRules(unittest.TestCase):
    """What another node's batch does here: generations, GONE, old chat, namesakes."""

    def setUp(self) -> None:
        self.node = Node("a", 2)  # chat older than 1 s is dropped
        self.node.registered_as("e", 1)
        self.rooms = Rooms(peers=Recording())
        self.links = FakeLinks()
        self.links.clock.advance(1000)
        self.node.synchronise(1_000_000, 1000, 1000)  # Redis's clock is this node's
        self.writer = FakeWriter()
        self.inbound = Inbound(self.node, self.rooms, self.writer, self.links, Incarnations(), JoinWaits(self.links.clock), RoomFields())  # type: ignore[arg-type]
        # a replica of r, hosted on b; and s hosted here with a member on b
        self.r = self.rooms.adopt("r", R_ID, "hb", None, None)
        self.rooms.remote_bound(self.r, "hb", "b")
        self.rooms.remote_bound(self.r, "cb", "c")
        self.me = self.rooms.add_member(self.r, "me", "127.0.0.1", 1000)
        self.rooms.bind(self.me, FakeRoute(A), 1000)
        self.host = self.rooms.create("s", "host", "127.0.0.1", 1000, room_id=S_ID)
        self.rooms.bind(self.host, FakeRoute(B), 1000)
        self.rooms.remote_bound(self.host.room, "gb", "b")

    def batch(self, origin: str, generation: int, *records: bytes, sent_at: int = 1_000_000) -> bytes:
        return cw.batch_header(origin, generation, sent_at) + b"".join(records)

    def test_gone_purges_and_fences(self) -> None:
        chat = cw.record(cw.CHAT, b"r", R_ID.encode(), b"\x02hbhi")
        self.inbound.received(self.batch("b", 7, chat))
        self.assertEqual(self.writer.delivered, [("r", b"\x02hbhi")])
        self.inbound.received(self.batch("c", 3, cw.gone_record("b", 7)))
        got = {(m.name, tuple(sorted(wire.decode_notice(wire.decode_relayed(d)[1]).items()))) for d, m in self.writer.sent}
        self.assertEqual(got, {("me", (("event", "closed"), ("reason", "host_left"))), ("host", (("event", "leave"), ("reason", "unreachable"), ("user", "gb")))})
        self.assertNotIn("r", self.rooms.rooms)
        self.assertEqual(self.host.room.remote, {})
        # generation 7 of b is dead: its late batches are dropped whole; 8 is its next life
        self.inbound.received(self.batch("b", 7, cw.record(cw.MEMBER, b"s", S_ID.encode(), b"zombie")))
        self.assertEqual(self.host.room.remote, {})
        self.assertEqual(self.inbound.fenced_batches, 1)
        self.inbound.received(self.batch("b", 8, cw.record(cw.MEMBER, b"s", S_ID.encode(), b"new")))
        self.assertEqual(self.host.room.remote, {"new": "b"})

    def test_old_chat_dropped_other_records_applied(self) -> None:
        old = 1_000_000 - 1_500
        rid = R_ID.encode()
        self.inbound.received(self.batch("c", 1, cw.record(cw.CHAT, b"r", rid, b"\x02cbold"), cw.record(cw.LEFT, b"r", rid, cw.left_body("cb", "left")), sent_at=old))
        self.assertEqual(self.writer.delivered, [])
        self.assertEqual(self.inbound.stale_chat, 1)
        self.assertNotIn("cb", self.r.remote)

    def test_left_only_from_the_members_node(self) -> None:
        self.inbound.received(self.batch("c", 1, cw.record(cw.LEFT, b"r", R_ID.encode(), cw.left_body("hb", "left"))))
        self.assertEqual(self.r.remote.get("hb"), "b")
        self.assertEqual(self.writer.sent, [])

    def test_records_of_another_room_of_that_name_ignored(self) -> None:
        """A record for room r under another id (an earlier or later r) changes nothing here."""
        other = b"0000111122223333"
        self.inbound.received(self.batch("b", 1, cw.record(cw.CHAT, b"r", other, b"\x02hbhi"), cw.record(cw.CLOSED, b"r", other, b"host_left")))
        self.assertEqual(self.writer.delivered, [])
        self.assertIn("r", self.rooms.rooms)
        self.assertTrue(self.r.open)

    def rule(self, room: bytes, rid: str, change: dict[str, str], fields: dict[str, str] | None = None) -> bytes:
        return cw.record(cw.RULE, room, rid.encode(), rule_body(change, fields or {}))

    def test_bad_rule_dropped_rest_of_batch_applied(self) -> None:
        """A RULE record that is not JSON, or not a rule, is dropped; the batch's other records still apply."""
        rid = R_ID.encode()
        for body in (b"\xff not json", b"[]", b'{"change": {"word": 3}, "fields": {}}', b'{"change": {}}'):
            self.inbound.received(self.batch("b", 1, cw.record(cw.RULE, b"r", rid, body), cw.record(cw.CHAT, b"r", rid, b"\x02hbhi")))
        self.assertEqual(self.writer.delivered, [("r", b"\x02hbhi")] * 4)
        self.assertTrue(self.r.open)

    def test_rules_here(self) -> None:
        """mute, topic, lock and host from the host's node: the state, the notices, this node's copy of the fields."""
        self.inbound.received(self.batch("b", 1, self.rule(b"r", R_ID, {"word": "mute", "user": "me"}, {"muted": '["me"]'})))
        self.inbound.received(self.batch("b", 1, self.rule(b"r", R_ID, {"word": "topic", "topic": "tea", "user": "hb"}, {"topic": "tea"})))
        self.inbound.received(self.batch("b", 1, self.rule(b"r", R_ID, {"word": "lock"}, {"locked": "1"})))
        self.assertEqual((self.r.muted, self.r.topic, self.r.locked), ({"me"}, "tea", True))
        self.assertEqual(
            [n for n, _ in notices(self.writer.sent)],
            [{"event": "muted", "user": "me"}, {"event": "topic", "topic": "tea", "user": "hb"}, {"event": "locked"}],
        )
        self.assertEqual(self.inbound.rules.fields.of(R_ID), {"muted": '["me"]', "topic": "tea", "locked": "1"})
        # handed to this node's member: the room lives here now
        self.writer.sent.clear()
        self.inbound.received(self.batch("b", 1, self.rule(b"r", R_ID, {"word": "host", "user": "me"}, {"host": "me", "node": "a"})))
        self.assertIs(self.r.host, self.me)
        self.assertTrue(self.me.is_host)
        self.assertFalse(self.r.replica)
        self.assertEqual(notices(self.writer.sent), [({"event": "host", "user": "me"}, A)])

    def test_private_to_this_node(self) -> None:
        """A private message for a bound member here: to it alone; for one not here: nothing."""
        self.inbound.received(self.batch("b", 1, self.rule(b"r", R_ID, {"word": "private", "user": "me", "from": "hb", "text": "psst"})))
        self.inbound.received(self.batch("b", 1, self.rule(b"r", R_ID, {"word": "private", "user": "nobody", "from": "hb", "text": "x"})))
        self.assertEqual(notices(self.writer.sent), [({"event": "private", "user": "hb", "text": "psst"}, A)])

    def test_old_private_dropped(self) -> None:
        """A private message older than half the member timeout is dropped, as old chat is; a governing change is applied however old."""
        old = 1_000_000 - 1_500
        self.inbound.received(self.batch("b", 1, self.rule(b"r", R_ID, {"word": "private", "user": "me", "from": "hb", "text": "late"}), sent_at=old))
        self.inbound.received(self.batch("b", 1, self.rule(b"r", R_ID, {"word": "lock"}, {"locked": "1"}), sent_at=old))
        self.assertEqual(notices(self.writer.sent), [({"event": "locked"}, A)])
        self.assertEqual(self.inbound.rules.stale, 1)

    def test_rules_before_the_join_answer(self) -> None:
        """RULE records of a room not held yet, come after the join was asked and before its answer, apply once it is held; earlier ones do not."""
        t_id = "7777777777777777"
        self.inbound.received(self.batch("b", 1, self.rule(b"t", t_id, {"word": "topic", "topic": "stale", "user": "h"}, {"topic": "stale"})))
        self.links.clock.advance(1)
        asked = self.links.clock.seconds()
        self.inbound.received(self.batch("b", 1, self.rule(b"t", t_id, {"word": "lock"}, {"locked": "1"})))
        self.inbound.received(self.batch("b", 1, self.rule(b"t", "8888888888888888", {"word": "mute", "user": "x"}, {"muted": '["x"]'})))
        self.links.clock.advance(0.1)
        room = self.rooms.adopt("t", t_id, "h", None, None)
        room.topic = "from the answer"
        self.inbound.joined(room, asked)
        self.assertEqual((room.topic, room.locked, room.muted), ("from the answer", True, set()))

    def test_own_batch_rules_and_closed_only(self) -> None:
        """A batch this node's own script published to it: RULE and CLOSED apply, nothing else."""
        sid = S_ID.encode()
        self.inbound.received(self.batch("a", 1, cw.record(cw.MEMBER, b"s", sid, b"ghost"), cw.record(cw.CHAT, b"s", sid, b"\x02gbhi")))
        self.assertEqual((self.writer.delivered, self.host.room.remote), ([], {"gb": "b"}))
        self.inbound.received(self.batch("a", 1, cw.record(cw.CLOSED, b"s", sid, b"host_left")))
        self.assertNotIn("s", self.rooms.rooms)

    def test_evict(self) -> None:
        """A fenced node's replica: its members get disconnected/unreachable, nothing else is told."""
        other = self.rooms.add_member(self.r, "other", "127.0.0.1", 1000)
        self.rooms.bind(other, FakeRoute(B), 1000)
        self.rooms.peers.told.clear()  # type: ignore[attr-defined]
        sends = self.rooms.evict(self.r, "unreachable")
        self.assertEqual(notices(sends), [({"event": "disconnected", "reason": "unreachable"}, A), ({"event": "disconnected", "reason": "unreachable"}, B)])
        self.assertNotIn("r", self.rooms.rooms)
        self.assertNotIn(self.me.token, self.rooms.tokens)
        self.assertEqual(self.rooms.peers.told, [])  # type: ignore[attr-defined]


class JoinAcknowledgements(unittest.TestCase):
    """A join's token waits for every other node of the room to acknowledge its MEMBER record, at most JOIN_ACK_TIMEOUT."""

    def test_fires_when_all_acked(self) -> None:
        clock = Clock()
        waits = JoinWaits(clock)
        fired: list[Any] = []
        waits.wait(R_ID, "j", {"a", "c"}).addCallback(fired.append)
        waits.acked(R_ID, "j", "a")
        waits.acked(R_ID, "other", "c")
        self.assertEqual(fired, [])
        waits.acked(R_ID, "j", "c")
        self.assertEqual(fired, [None])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_fires_after_the_timeout(self) -> None:
        clock = Clock()
        waits = JoinWaits(clock)
        fired: list[Any] = []
        waits.wait(R_ID, "j", {"dead"}).addCallback(fired.append)
        clock.advance(JOIN_ACK_TIMEOUT)
        self.assertEqual(fired, [None])
        waits.acked(R_ID, "j", "dead")  # late: nothing left to do
        self.assertEqual(waits.waiting, {})

    def test_nobody_to_wait_for(self) -> None:
        fired: list[Any] = []
        JoinWaits(Clock()).wait(R_ID, "j", set()).addCallback(fired.append)
        self.assertEqual(fired, [None])

    def test_member_record_is_acknowledged(self) -> None:
        """A MEMBER is answered with an ACK to its origin, held room or not."""
        links = FakeLinks()
        node = Node("a", 30)
        inbound = Inbound(node, Rooms(peers=Recording()), FakeWriter(), links, Incarnations(), JoinWaits(links.clock), RoomFields())  # type: ignore[arg-type]
        inbound.received(cw.batch_header("b", 1) + cw.record(cw.MEMBER, b"r", RID, b"j"))
        self.assertEqual(links.told, [("b", cw.record(cw.ACK, b"r", RID, b"j"))])


class History(unittest.TestCase):
    """A room's history in Redis: written in the batches' write, read back within the room's bounds."""

    def test_written_with_the_batches(self) -> None:
        clock = Clock()
        writes: list[bytes] = []
        outbox = Outbox(Node("a", 30), clock, lambda data: writes.append(data) or True)
        outbox.add("b", cw.record(cw.CHAT, b"r", RID, b"\x01xhi"))
        outbox.remember(b"ocm:{72}:history", 3, b"n1")
        outbox.remember(b"ocm:{72}:history", 3, b"n2")
        clock.advance(FLUSH_DELAY)
        self.assertEqual(len(writes), 1)
        self.assertTrue(writes[0].endswith(cw.resp_command(b"RPUSH", b"ocm:{72}:history", b"n1", b"n2") + cw.resp_command(b"LTRIM", b"ocm:{72}:history", b"-3", b"-1")))
        self.assertEqual(writes[0].count(b"PUBLISH"), 1)

    def test_fill_within_count_and_bytes(self) -> None:
        from ocm.cluster.records import fill_history
        from ocm.rooms import MAX_HISTORY_BYTES, Room

        room = Room("r", None, None)
        room.history_size = 5
        fill_history(room, [b"a", b"b", b"c", b"d", b"e", b"f", b"g"])
        self.assertEqual(list(room.history), [b"c", b"d", b"e", b"f", b"g"])
        self.assertEqual(room.history_bytes, 5)
        big = [bytes([65 + i]) * 30_000 for i in range(4)]
        fill_history(room, big)
        self.assertEqual(list(room.history), big[-2:])
        self.assertLessEqual(room.history_bytes, MAX_HISTORY_BYTES)
        room.history_size = 0
        fill_history(room, [b"x"])
        self.assertEqual(list(room.history), [])


class RebuildLinks(FakeLinks):
    """The links as a rebuild uses them: scripts answered from a list."""

    def __init__(self, answers: list[Any]) -> None:
        super().__init__()
        self.answers = answers
        self.reachable = True
        self.ran: list[tuple[Any, ...]] = []

    def run(self, script: str, *args: Any) -> Any:
        from twisted.internet import defer

        self.ran.append(args)
        return defer.succeed(self.answers.pop(0))

    def fire(self, d: Any) -> Any:
        return d


class RebuildInference(unittest.TestCase):
    """Within one registry epoch, a rebuild infers the departures whose records this node missed."""

    def rebuild(self, epochs: list[str]) -> tuple[Rooms, FakeWriter, Any]:
        from twisted.internet import defer

        from ocm.cluster.guard import StallGuard
        from ocm.cluster.liveness import Liveness
        from ocm.cluster.state import RoomFields

        node = Node("c", 2)
        rooms = Rooms(peers=Recording())
        room = rooms.adopt("r", R_ID, "host", None, None)
        rooms.remote_bound(room, "host", "a")
        rooms.remote_bound(room, "ghost", "b")  # b was reaped while c's subscription was cut
        me = rooms.add_member(room, "me", "127.0.0.1", 0)
        rooms.bind(me, FakeRoute(A), 0)
        answer = [["host", "a", "me", "c"], ["host", "a", "me", "c"], []]
        links = RebuildLinks([[], answer] * len(epochs))
        writer = FakeWriter()
        inbound = Inbound(node, rooms, writer, links, Incarnations(), JoinWaits(links.clock), RoomFields())  # type: ignore[arg-type]
        liveness = Liveness(node, rooms, writer, links, inbound, StallGuard(StallWatch(1), links.clock), RoomFields())  # type: ignore[arg-type]
        for epoch in epochs:
            node.registered_as(epoch, 1)
            defer.ensureDeferred(liveness._rebuild())  # the step under test
        return rooms, writer, room

    def test_same_epoch_infers(self) -> None:
        rooms, writer, room = self.rebuild(["e1", "e1"])
        self.assertNotIn("ghost", room.remote)
        self.assertEqual(notices(writer.sent), [({"event": "leave", "user": "ghost", "reason": "left"}, A)])

    def test_first_rebuild_of_an_epoch_does_not(self) -> None:
        """After Redis lost the registry, the others may not have rebuilt yet: no inference."""
        rooms, writer, room = self.rebuild(["e1", "e2"])
        self.assertIn("ghost", room.remote)
        self.assertEqual(writer.sent, [])
