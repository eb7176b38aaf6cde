"""
The cluster (C{--redis}): three nodes built by the plugin's own
C{makeService} and one real redis-server, real sockets on 127.0.0.1,
members split across the nodes, every wait bounded.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from ocm import wire
from ocm.tap import Options, makeService
import socket

from tests.helpers import free_port, sleep, spawn_twistd, status_of, tcrp, wait_until
from tests.redis_server import RedisServer, require_redis
from tests.helpers import Member as EndToEndMember


class Node:
    """One ocm node of the test cluster."""

    def __init__(self, case: unittest.TestCase, name: str, redis_url: str, *args: str) -> None:
        options = Options()
        options.parseOptions(["--tcp", "0", "--udp", "0", "--interface", "127.0.0.1", "--redis", redis_url, "--node", name, *args])
        self.name = name
        self.service = makeService(options, reactor)
        self.service.startService()
        self.rooms = self.service.rooms  # type: ignore[attr-defined]
        self.cluster = self.service.cluster  # type: ignore[attr-defined]
        self.tcp_port = self.service.getServiceNamed("tcp")._port.getHost().port  # type: ignore[attr-defined]
        self.udp_port = self.service.getServiceNamed("udp")._port.getHost().port  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self.service.running:
            await self.service.stopService()


class Member(EndToEndMember):
    """A test client of one node: a token and a UDP socket of its own."""

    def __init__(self, case: unittest.TestCase, udp_port: int, room: str, name: str, token: bytes, source: str = "127.0.0.1") -> None:
        super().__init__(case, room, name, token, source, udp_port)

    def chats(self) -> list[tuple[str, str]]:
        return self.peer.chats()


class ClusterCase(unittest.TestCase):
    """One redis-server and three nodes, a, b and c."""

    timeout = 60
    node_args: list[str] = []
    #: Redis over TLS only (rediss://), with a certificate made here.
    redis_tls = False

    async def setUp(self) -> None:
        require_redis()
        tls = None
        if self.redis_tls:
            from tests.certs import write_server_files

            tls = write_server_files(os.path.abspath(self.mktemp()))
            self.node_args = [*self.node_args, "--redis-ca", tls["ca.pem"]]
        self.redis = RedisServer(os.path.abspath(self.mktemp()), tls)
        self.redis.start()
        self.addCleanup(self.redis.stop)
        self.nodes = {name: Node(self, name, self.redis.url, *self.node_args) for name in "abc"}
        for node in self.nodes.values():
            self.addCleanup(node.stop)
        await wait_until(lambda: all(n.cluster.ready for n in self.nodes.values()), 10, "every node ready")

    async def request(self, node: str, operation: int, room: str, source: str = "127.0.0.1", **payload: Any) -> tuple[dict[str, Any], list[wire.Frame]]:
        frames = await tcrp(self.nodes[node].tcp_port, operation, room, payload, source=source)
        return status_of(frames), frames

    async def member(self, node: str, operation: int, room: str, name: str, hello: bool = True, source: str = "127.0.0.1", **payload: Any) -> Member:
        body, frames = await self.request(node, operation, room, source=source, username=name, **payload)
        self.assertEqual(body["status"], 200, body)
        self.assertEqual(body["udp_port"], self.nodes[node].udp_port)
        m = Member(self, self.nodes[node].udp_port, room, name, frames[1].payload, source)
        if hello:
            await m.hello()
        return m

    async def room(self, name: str, placement: str, **payload: Any) -> list[Member]:
        """
        A room whose host is on node C{placement[0]} and guest i on
        C{placement[i]}; every member bound and known to all, notices cleared.
        """
        members = [await self.member(placement[0], 1, name, "host", **payload)]
        for i, node in enumerate(placement[1:], 1):
            members.append(await self.member(node, 2, name, f"guest{i}", password=payload.get("password", "")))
        everyone = {m.name for m in members}
        await wait_until(lambda: all(set(m.peer.notices("welcome")[-1]["members"]) | {n["user"] for n in m.peer.notices("join")} >= everyone for m in members), 5, "everyone known to everyone")
        for m in members:
            m.peer.received.clear()
        return members


class ClusterChat(ClusterCase):
    """The end-to-end chat scenarios with members split across nodes."""

    async def test_room_exists_on_every_node(self) -> None:
        """Created on a, joined with its password on b and c; listed on every node with its count; hash only in Redis."""
        body, _ = await self.request("a", 1, "部屋", username="アリス", password="秘密の合言葉", capacity=5)
        self.assertEqual(body["status"], 200)
        body, _ = await self.request("b", 2, "部屋", username="ボブ", password="違う")
        self.assertEqual(body["status"], 401)
        body, _ = await self.request("b", 2, "部屋", username="ボブ", password="秘密の合言葉")
        self.assertEqual(body["status"], 200)
        body, _ = await self.request("c", 2, "部屋", username="チャーリー", password="秘密の合言葉")
        self.assertEqual(body["status"], 200)
        for node in "abc":
            body, frames = await self.request(node, 3, "")
            self.assertEqual(wire.decode_json(frames[1].payload), [{"name": "部屋", "members": 3, "capacity": 5, "protected": True}])
        from ocm.metrics import OcmCollector

        families = {m.name: m for m in OcmCollector(self.nodes["a"].rooms.stats, self.nodes["a"].rooms, cluster=self.nodes["a"].cluster).collect()}
        self.assertEqual(families["ocm_cluster_ready"].samples[0].value, 1)
        self.assertIn("ocm_cluster_batches", families)
        self.assertEqual({s.labels["reason"]: s.value for s in families["ocm_cluster_records_dropped"].samples}, {"fenced": 0, "stale": 0, "bad": 0})
        dump = self.redis.command("HGETALL", "ocm:{" + "部屋".encode().hex() + "}:room")
        from ocm.passwords import default_scheme

        self.assertIn(default_scheme().encode() + b"$", dump)  # scrypt; PBKDF2 where hashlib has no scrypt (PyPy)
        self.assertNotIn("秘密の合言葉".encode(), dump)

    async def test_chat_reaches_everyone_once_in_order(self) -> None:
        """Chat from each node reaches every other member on a, b and c exactly once, byte for byte, in order."""
        members = await self.room("r", "aabbcc")
        texts = [f"メッセージ {i} " + "x" * (i % 7) for i in range(60)]
        for sender in (members[0], members[3], members[5]):
            for text in texts:
                sender.send(text.encode())
            await wait_until(lambda s=sender: all(len([c for c in m.chats() if c[0] == s.name]) == len(texts) for m in members if m is not s), 10, "every chat")
        for m in members:
            for sender in (members[0], members[3], members[5]):
                got = [text for name, text in m.chats() if name == sender.name]
                self.assertEqual(got, [] if m is sender else texts)
        raw = [d for d in members[4].peer.received if d[1:1 + 5] == b"guest"]
        self.assertIn(wire.sender_prefix(b"guest3") + texts[0].encode(), raw)

    async def test_welcome_who_join_leave_across_nodes(self) -> None:
        """welcome and who list members of every node; join and leave notices cross nodes."""
        host, b1 = await self.room("r", "ab")
        c1 = await self.member("c", 2, "r", "carol")
        self.assertEqual(set(c1.peer.notices("welcome")[0]["members"]), {"host", "guest1", "carol"})
        self.assertEqual(c1.peer.notices("welcome")[0]["host"], "host")
        await wait_until(lambda: host.peer.notices("join") and b1.peer.notices("join"), 5, "join notices")
        self.assertEqual(host.peer.notices("join"), [{"event": "join", "user": "carol"}])
        self.assertEqual(b1.peer.notices("join"), [{"event": "join", "user": "carol"}])
        b1.send(wire.WHO)
        await wait_until(lambda: b1.peer.notices("members"), 5, "members")
        self.assertEqual(set(b1.peer.notices("members")[0]["members"]), {"host", "guest1", "carol"})
        c1.send(wire.LEAVE)
        await wait_until(lambda: host.peer.notices("leave") and b1.peer.notices("leave"), 5, "leave notices")
        self.assertEqual(b1.peer.notices("leave"), [{"event": "leave", "user": "carol", "reason": "left"}])
        # carol's name is free again, cluster-wide
        body, _ = await self.request("a", 2, "r", username="carol")
        self.assertEqual(body["status"], 200)

    async def test_host_leaving_closes_everywhere(self) -> None:
        """The host leaving on b closes the room on a, b and c; its name is free again."""
        host, a1, c1 = await self.room("r", "bac")
        host.send(wire.LEAVE)
        for m in (a1, c1):
            await wait_until(lambda m=m: m.peer.notices("closed"), 5, "closed")
            self.assertEqual(m.peer.notices("closed"), [{"event": "closed", "reason": "host_left"}])
        await wait_until(lambda: all("r" not in n.rooms.rooms for n in self.nodes.values()), 5, "room gone")
        body, _ = await self.request("c", 1, "r", username="new")
        self.assertEqual(body["status"], 200)
        body, frames = await self.request("a", 3, "")
        self.assertEqual(wire.decode_json(frames[1].payload), [{"name": "r", "members": 1, "capacity": None, "protected": False}])

    async def test_unique_names_and_capacity_across_nodes(self) -> None:
        """Room names and usernames are unique across the cluster; capacity counts every node."""
        await self.member("a", 1, "r", "host", capacity=2)
        body, _ = await self.request("b", 1, "r", username="other")
        self.assertEqual(body["status"], 409)
        body, _ = await self.request("c", 2, "r", username="host")
        self.assertEqual(body["status"], 409)
        body, _ = await self.request("b", 2, "r", username="second")
        self.assertEqual(body["status"], 200)
        body, _ = await self.request("c", 2, "r", username="third")
        self.assertEqual(body["status"], 503)
        body, _ = await self.request("c", 2, "nowhere", username="x")
        self.assertEqual(body["status"], 404)

    async def test_create_race(self) -> None:
        """Two creates of one name on two nodes at the same moment: one 200, one 409 (decided in Redis)."""
        for i in range(20):
            name = f"race{i}"
            results = await defer.gatherResults(
                [defer.ensureDeferred(self.request(node, 1, name, username=f"u{node}")) for node in ("a", "b")]
            )
            self.assertEqual(sorted(body["status"] for body, _ in results), [200, 409], name)
        self.assertEqual(sum(len(n.rooms.rooms) for n in self.nodes.values()), 20)


class ClusterTimeouts(ClusterCase):
    """Idle timeouts work as on one node, each node for its own members."""

    node_args = ["--timeout", "2"]

    async def test_idle_member_on_other_node(self) -> None:
        """A silent member on c times out: it gets disconnected, the others on a and b a leave notice."""
        host, b1, c1 = await self.room("r", "abc")
        for _ in range(8):  # host and b1 keep alive, c1 is silent
            host.send(b"")
            b1.send(b"")
            await sleep(0.4)
            if host.peer.notices("leave"):
                break
        await wait_until(lambda: host.peer.notices("leave") and b1.peer.notices("leave"), 5, "leave notices")
        self.assertEqual(host.peer.notices("leave"), [{"event": "leave", "user": "guest2", "reason": "timeout"}])
        self.assertEqual(c1.peer.notices("disconnected"), [{"event": "disconnected", "reason": "timeout"}])


class ClusterFailures(ClusterCase):
    """A node killed, and Redis restarted, mid-chat."""

    node_args = ["--timeout", "2"]

    async def test_node_killed(self) -> None:
        """
        SIGKILL of a node (a real twistd): within twice --timeout its members
        leave the rooms of the other nodes and the rooms it hosted close.
        """
        tcp_port, udp_port = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
        proc = spawn_twistd(
            self, "-n", "ocm", "--tcp", str(tcp_port), "--udp", str(udp_port), "--interface", "127.0.0.1",
            "--redis", self.redis.url, "--node", "d", "--timeout", "2",
        )

        async def listed() -> bool:
            try:
                return status_of(await tcrp(tcp_port, 3, "", {}))["status"] == 200
            except Exception:
                return False

        for _ in range(100):
            if await listed():
                break
            await sleep(0.1)
        else:
            raise AssertionError(f"node d did not answer: {proc.output!r}")
        host = await self.member("a", 1, "on-a", "host")
        guest_d = await self.connect_d(tcp_port, udp_port, 2, "on-a", "dave")
        host_d = await self.connect_d(tcp_port, udp_port, 1, "on-d", "dhost")
        guest_b = await self.member("b", 2, "on-d", "bob")
        self.keep_alive(host, guest_b, host_d, guest_d)
        await wait_until(lambda: host.peer.notices("join"), 5, "dave's join notice")
        guest_d.send("こんにちは".encode())
        await wait_until(lambda: host.chats() == [("dave", "こんにちは")], 5, "chat from the node to be killed")
        os.kill(proc.transport.pid, signal.SIGKILL)  # type: ignore[attr-defined]
        await proc.ended
        started = reactor.seconds()  # type: ignore[attr-defined]
        await wait_until(lambda: host.peer.notices("leave") and guest_b.peer.notices("closed"), 2 * 2 + 1, "the dead node's members gone")
        self.assertLessEqual(reactor.seconds() - started, 2 * 2)  # type: ignore[attr-defined]
        self.assertEqual(host.peer.notices("leave"), [{"event": "leave", "user": "dave", "reason": "unreachable"}])
        self.assertEqual(guest_b.peer.notices("closed"), [{"event": "closed", "reason": "host_left"}])
        # the registry forgot them: the name is free, the room gone
        body, frames = await self.request("c", 3, "")
        self.assertEqual(wire.decode_json(frames[1].payload), [{"name": "on-a", "members": 1, "capacity": None, "protected": False}])
        body, _ = await self.request("c", 2, "on-a", username="dave")
        self.assertEqual(body["status"], 200)
        self.assertNotIn(b"ocm:alive:d", self.redis.command("KEYS", "ocm:alive:*"))
        del host_d

    def keep_alive(self, *members: Member) -> None:
        """Keepalives every 0.4 s (the timeout is 2 s) until the test ends."""
        loop = task.LoopingCall(lambda: [m.send(b"") for m in members])
        loop.start(0.4)
        self.addCleanup(loop.stop)

    async def connect_d(self, tcp_port: int, udp_port: int, operation: int, room: str, name: str) -> Member:
        frames = await tcrp(tcp_port, operation, room, {"username": name})
        self.assertEqual(status_of(frames)["status"], 200)
        m = Member(self, udp_port, room, name, frames[1].payload)
        await m.hello()
        return m

    async def test_redis_restarted(self) -> None:
        """
        Redis stopped and started again (empty): each node keeps relaying
        among its own members, answers TCRP with 503, reconnects, and
        rebuilds its part of the shared state; chat crosses nodes again.
        """
        host, a1, b1 = await self.room("r", "aab")
        self.keep_alive(host, a1, b1)
        self.redis.stop()
        await wait_until(lambda: not self.nodes["a"].cluster.ready, 5, "node a noticing")
        host.send(b"still here")
        await wait_until(lambda: a1.chats() == [("host", "still here")], 5, "local chat without Redis")
        body, _ = await self.request("a", 2, "r", username="late")
        self.assertEqual(body["status"], 503)
        self.assertIn("Redis", body["message"])
        body, _ = await self.request("b", 3, "")
        self.assertEqual(body["status"], 503)
        self.redis.start()
        await wait_until(lambda: all(n.cluster.ready for n in self.nodes.values()), 20, "nodes reconnected")
        await wait_until(lambda: b"ocm:rooms" in self.redis.command("KEYS", "ocm:rooms"), 10, "registry rebuilt")
        for _ in range(100):
            host.send(b"after")
            await sleep(0.05)
            if ("host", "after") in b1.chats():
                break
        self.assertIn(("host", "after"), b1.chats())
        b1.send(b"back")
        await wait_until(lambda: ("guest2", "back") in host.chats() and ("guest2", "back") in a1.chats(), 5, "chat from b")
        # every node has put its members back within a few heartbeats
        expected = [{"name": "r", "members": 3, "capacity": None, "protected": False}]
        listing: list[Any] = []
        for _ in range(50):
            _, frames = await self.request("c", 3, "")
            listing = wire.decode_json(frames[1].payload)
            if listing == expected:
                break
            await sleep(0.1)
        self.assertEqual(listing, expected)
        body, _ = await self.request("c", 2, "r", username="host")
        self.assertEqual(body["status"], 409)


class ClusterEdges(ClusterCase):
    """What the single-node checks become across nodes."""

    async def test_token_only_on_its_node(self) -> None:
        """A token issued by node a, sent to node b's UDP port, is dropped there (b holds no such member)."""
        host, guest = await self.room("r", "ab")
        forged = Member(self, self.nodes["b"].udp_port, "r", "host", host.token)
        forged.send(b"spoofed")
        await wait_until(lambda: self.nodes["b"].rooms.stats.dropped["unknown_token"] >= 1, 5, "the drop")
        # a marker from the real host, through the same relay: what was sent before it has arrived
        marker = f"marker-{id(object())}"
        host.send(marker.encode())
        await wait_until(lambda: ("host", marker) in guest.peer.chats(markers=True), 5, "the marker")
        self.assertEqual(guest.chats(), [])

    async def test_node_stopping(self) -> None:
        """
        A node stopped (SIGTERM's path): its rooms close everywhere with
        shutdown, its members leave the other nodes' rooms as unreachable.
        """
        host_b, guest_a = await self.room("on-b", "ba")
        host_a, guest_b = await self.room("on-a", "ab")
        await self.nodes["b"].stop()
        await wait_until(lambda: guest_a.peer.notices("closed") and host_a.peer.notices("leave"), 5, "the stop told")
        self.assertEqual(guest_a.peer.notices("closed"), [{"event": "closed", "reason": "shutdown"}])
        self.assertEqual(host_a.peer.notices("leave"), [{"event": "leave", "user": "guest1", "reason": "unreachable"}])
        self.assertEqual(host_b.peer.notices("closed"), [{"event": "closed", "reason": "shutdown"}])
        _, frames = await self.request("c", 3, "")
        self.assertEqual(wire.decode_json(frames[1].payload), [{"name": "on-a", "members": 1, "capacity": None, "protected": False}])
        self.assertEqual(self.redis.command("SMEMBERS", "ocm:nodes").count(b"$1\r\nb\r\n"), 0)


class ClusterOverTLS(ClusterCase):
    """rediss://: the nodes reach Redis through TLS (its certificate checked with --redis-ca)."""

    redis_tls = True

    async def test_chat_and_registry_over_tls(self) -> None:
        self.assertTrue(self.redis.url.startswith("rediss://"))
        members = await self.room("r", "abc", password="pw")
        members[1].send("TLS の向こう".encode())
        await wait_until(lambda: all(("guest1", "TLS の向こう") in m.chats() for m in (members[0], members[2])), 5, "chat across nodes")
        _, frames = await self.request("c", 3, "")
        self.assertEqual(wire.decode_json(frames[1].payload), [{"name": "r", "members": 3, "capacity": None, "protected": True}])
