"""
The cluster under faults (docs/cluster.rst, "Faults, and the rule for
each"): a node stalled past its heartbeat's TTL (SIGSTOP, SIGCONT) and
fenced, a room closed and made again under one name, joins racing chat,
Redis restarted under a stalled node.

Nodes a and c run in this process (the plugin's own C{makeService}); node b,
which the tests stall, is a real C{twistd -n ocm}.  One real redis-server; every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

from twisted.internet import reactor, task
from twisted.trial import unittest

from ocm import wire
from tests.helpers import free_port, sleep, spawn_twistd, status_of, tcrp, wait_until
from tests.redis_server import RedisServer, require_redis
from tests.test_cluster import ClusterCase, Member, Node

TIMEOUT = 2.0


class Remote:
    """Node b: a twistd subprocess, stopped and continued by the test."""

    def __init__(self, case: unittest.TestCase, name: str, redis_url: str, *args: str) -> None:
        self.name = name
        self.tcp_port = free_port(socket.SOCK_STREAM)
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.proc = spawn_twistd(
            case, "-n", "ocm", "--tcp", str(self.tcp_port), "--udp", str(self.udp_port), "--interface", "127.0.0.1",
            "--redis", redis_url, "--node", name, *args,
        )

    async def ready(self, seconds: float = 15.0) -> None:
        """Wait until it answers a list request with 200."""
        for _ in range(int(seconds / 0.1)):
            try:
                if status_of(await tcrp(self.tcp_port, 3, "", {}))["status"] == 200:
                    return
            except Exception:
                pass
            await sleep(0.1)
        raise AssertionError(f"node {self.name} did not answer: {self.proc.output.decode(errors='replace')}")

    def signal(self, sig: int) -> None:
        os.kill(self.proc.transport.pid, sig)  # type: ignore[attr-defined]

    def log_count(self, text: str) -> int:
        return self.proc.output.decode("utf-8", "replace").count(text)


class FaultCase(unittest.TestCase):
    """One redis-server; nodes a and c in this process, b a twistd (all --timeout 2)."""

    timeout = 90
    node_args = ["--timeout", str(TIMEOUT)]

    async def setUp(self) -> None:
        require_redis()
        self.redis = RedisServer(os.path.abspath(self.mktemp()))
        self.redis.start()
        self.addCleanup(self.redis.stop)
        self.b = Remote(self, "b", self.redis.url, *self.node_args)
        self.nodes = {name: Node(self, name, self.redis.url, *self.node_args) for name in "ac"}
        for node in self.nodes.values():
            self.addCleanup(node.stop)
        await wait_until(lambda: all(n.cluster.ready for n in self.nodes.values()), 10, "nodes a and c ready")
        await self.b.ready()
        self.addCleanup(lambda: print(self.b.proc.output.decode(errors="replace")) if os.environ.get("OCM_DEBUG") else None)
        self.keep: list[Member] = []
        loop = task.LoopingCall(self._keepalives)
        loop.start(TIMEOUT / 5)
        self.addCleanup(loop.stop)

    def _keepalives(self) -> None:
        for m in self.keep:
            m.send(b"")

    def ports(self, node: str) -> tuple[int, int]:
        if node == "b":
            return self.b.tcp_port, self.b.udp_port
        n = self.nodes[node]
        return n.tcp_port, n.udp_port

    async def request(self, node: str, operation: int, room: str, **payload: Any) -> dict[str, Any]:
        return status_of(await tcrp(self.ports(node)[0], operation, room, payload))

    async def member(self, node: str, operation: int, room: str, name: str, **payload: Any) -> Member:
        tcp_port, udp_port = self.ports(node)
        frames = await tcrp(tcp_port, operation, room, {"username": name, **payload})
        self.assertEqual(status_of(frames)["status"], 200, status_of(frames))
        m = Member(self, udp_port, room, name, frames[1].payload)
        await m.hello()
        self.keep.append(m)
        return m

    async def who(self, m: Member) -> set[str]:
        """The member list C{m}'s node answers C{\\x00who} with."""
        before = len(m.peer.notices("members"))
        m.send(wire.WHO)
        await wait_until(lambda: len(m.peer.notices("members")) > before, 5, f"who for {m.name}")
        return set(m.peer.notices("members")[-1]["members"])

    def registry_members(self, room: str) -> dict[str, str]:
        """The registry's members hash of C{room}: username -> node."""
        raw = self.redis.command("HGETALL", "ocm:{" + room.encode().hex() + "}:members")
        parts = [p for p in raw.split(b"\r\n") if p and p[:1] not in (b"*", b"$")]
        return {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts), 2)}

    async def barrier(self, sender: Member, *receivers: Member) -> None:
        """A marker from C{sender} reached every receiver: what was sent before it has arrived."""
        marker = f"marker-{id(object())}"
        sender.send(marker.encode())
        for r in receivers:
            await wait_until(lambda r=r: (sender.name, marker) in r.peer.chats(markers=True), 5, "marker")


class StalledNode(FaultCase):
    """Node b stopped past its heartbeat's TTL, then continued."""

    async def test_stalled_node_is_fenced(self) -> None:
        """
        b stopped (SIGSTOP) past its TTL is reaped by a; a gives b's
        member's username to a newcomer and fills the room.  When b
        continues (SIGCONT) it finds itself fenced: its members are told
        they are out (disconnected/unreachable; closed/host_left in the room
        it hosted), nothing they sent while it was stopped reaches anyone,
        b re-adds nothing, says once that it was declared dead, and takes
        requests again under a new generation.
        """
        host = await self.member("a", 1, "r", "host", capacity=3)
        x = await self.member("b", 2, "r", "x")
        x2 = await self.member("b", 2, "r", "x2")
        hb = await self.member("b", 1, "s", "hb")
        g = await self.member("a", 2, "s", "g")
        await wait_until(lambda: {n["user"] for n in host.peer.notices("join")} == {"x", "x2"}, 5, "x and x2 known on a")
        await self.barrier(x, host, x2)
        self.b.signal(signal.SIGSTOP)
        stopped = reactor.seconds()  # type: ignore[attr-defined]
        x.send(b"sent while b was stopped")
        hb.send(b"sent while b was stopped")
        host.send(b"sent to b while it was stopped")  # waits in Redis for b
        g.send(b"sent to b while it was stopped")
        await wait_until(lambda: len(host.peer.notices("leave")) == 2 and g.peer.notices("closed"), 2 * TIMEOUT + 2, "b reaped")
        self.assertEqual(g.peer.notices("closed"), [{"event": "closed", "reason": "host_left"}])
        newcomer = await self.member("a", 2, "r", "x")
        newcomer2 = await self.member("c", 2, "r", "x2")  # capacity 3: host, x (new, on a), x2 (new, on c)
        body = await self.request("c", 2, "r", username="late")
        self.assertEqual(body["status"], 503)
        await sleep(max(0.0, 2 * TIMEOUT + 0.5 - (reactor.seconds() - stopped)))  # type: ignore[attr-defined]
        self.b.signal(signal.SIGCONT)
        # b's members are told they are out
        await wait_until(lambda: x.peer.notices("disconnected") and x2.peer.notices("disconnected") and hb.peer.notices("closed"), 5, "b's members told")
        self.assertEqual(x.peer.notices("disconnected"), [{"event": "disconnected", "reason": "unreachable"}])
        self.assertEqual(x2.peer.notices("disconnected"), [{"event": "disconnected", "reason": "unreachable"}])
        self.assertEqual(hb.peer.notices("closed"), [{"event": "closed", "reason": "host_left"}])
        # nothing sent while b was stopped reached anyone
        await self.barrier(host, newcomer, newcomer2)
        await sleep(0.5)
        for m in (host, newcomer, newcomer2, g, x, x2, hb):
            self.assertNotIn("sent while b was stopped", [text for _, text in m.chats()], m.name)
            self.assertNotIn("sent to b while it was stopped", [text for _, text in m.chats() if m in (x, x2, hb)], m.name)
        # b re-added nothing: x and x2 are held once, by a and c; capacity holds
        await sleep(1.0)
        self.assertEqual(self.registry_members("r"), {"host": "a", "x": "a", "x2": "c"})
        for m in (host, newcomer, newcomer2):
            self.assertEqual(await self.who(m), {"host", "x", "x2"})
        body, frames = await self.request("c", 3, ""), await tcrp(self.nodes["c"].tcp_port, 3, "", {})
        self.assertEqual(wire.decode_json(frames[1].payload), [{"name": "r", "members": 3, "capacity": 3, "protected": False}])
        self.assertEqual(self.b.log_count("this node was declared dead by the cluster"), 1, self.b.proc.output.decode(errors="replace"))
        # b registered anew: it takes requests, and chat crosses
        await self.b.ready()
        newer = await self.member("b", 1, "t", "nb")
        guest = await self.member("a", 2, "t", "ga")
        await self.barrier(newer, guest)
        await self.barrier(guest, newer)


def kill_connection(redis: RedisServer, name: str) -> bool:
    """CLIENT KILL the connection named C{name} (the nodes name theirs: docs/cluster.rst); True if there was one."""
    for line in redis.command("CLIENT", "LIST").decode(errors="replace").splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if fields.get("name") == name:
            redis.command("CLIENT", "KILL", "ID", fields["id"])
            return True
    return False


class RoomIds(ClusterCase):
    """Rooms are told apart by their id between nodes, never by their name alone."""

    node_args = ["--timeout", "10"]

    async def test_closed_room_and_new_room_of_one_name_never_mix(self) -> None:
        """
        b misses the CLOSED of room r (its subscription was cut), and a
        makes a new room r with a password.  b's member of the old r keeps
        posting: nothing reaches the new room's members (the records name
        the old room's id); once b is back it closes its old r at once.
        """
        host, m = await self.room("r", "ab")
        self.assertTrue(kill_connection(self.redis, "ocm:b:sub"))
        host.send(wire.LEAVE)
        await wait_until(lambda: "r" not in self.nodes["a"].rooms.rooms, 5, "r closed on a")
        h2 = await self.member("a", 1, "r", "h2", password="pw")
        n = await self.member("c", 2, "r", "n", password="pw")
        await wait_until(lambda: h2.peer.notices("join"), 5, "n known on a")
        for i in range(16):
            m.send(f"intruder {i}".encode())
            await sleep(0.05)
        await wait_until(lambda: m.peer.notices("closed"), 5, "the old r closed on b")
        self.assertEqual(m.peer.notices("closed"), [{"event": "closed", "reason": "host_left"}])
        h2.send(b"after")
        await wait_until(lambda: ("h2", "after") in n.chats(), 5, "chat in the new room")
        for member in (h2, n):
            self.assertEqual([t for _, t in member.chats() if t.startswith("intruder")], [], member.name)


class JoinsVisibleAtOnce(ClusterCase):
    """A join is known on every node before the joiner's welcome."""

    async def test_chat_sent_as_the_welcome_arrives_reaches_the_joiner(self) -> None:
        """
        The first member of a room on b gets its welcome, and in the same
        instant (from the welcome's own arrival) the host on a and a member
        on c send: both messages reach it, five rooms out of five.
        """
        got = 0
        for i in range(5):
            room = f"w{i}"
            host = await self.member("a", 1, room, "host")
            other = await self.member("c", 2, room, "other")
            body, frames = await self.request("b", 2, room, username="joiner")
            self.assertEqual(body["status"], 200)
            joiner = Member(self, self.nodes["b"].udp_port, room, "joiner", frames[1].payload)
            received = joiner.peer.datagramReceived

            def at_once(data: bytes, addr: Any, host: Member = host, other: Member = other, received: Any = received) -> None:
                received(data, addr)
                if data[0] == 0 and b'"welcome"' in data:
                    host.send(b"right after your welcome")
                    other.send(b"right after your welcome")

            joiner.peer.datagramReceived = at_once  # type: ignore[method-assign]
            await joiner.hello()
            try:
                await wait_until(
                    lambda j=joiner: ("host", "right after your welcome") in j.chats() and ("other", "right after your welcome") in j.chats(), 2, "the messages"
                )
                got += 1
            except AssertionError:
                pass
        self.assertEqual(got, 5)


class RedisRestartedUnderAStall(FaultCase):
    """Redis restarted empty while b was stopped: b's rebuild is checked as a join is."""

    node_args = ["--timeout", str(TIMEOUT), "--max-history", "10"]

    def room_field(self, room: str, field: str) -> bytes:
        raw = self.redis.command("HGET", "ocm:{" + room.encode().hex() + "}:room", field)
        return raw.split(b"\r\n")[1] if raw.startswith(b"$") and not raw.startswith(b"$-1") else b""

    async def test_rebuild_checks_names_and_capacity_and_keeps_every_field(self) -> None:
        """
        a rebuilds room r first and gives the name of b's member x to a
        newcomer, then fills the room; when b comes back its rebuild finds
        x taken: b's x is told it is out, x is held once (by a), the room
        stays within its capacity, /who agrees everywhere, and the room
        kept every field: its history setting, and a field set through the
        registry's extension point for governing state.
        """
        host = await self.member("a", 1, "r", "host", capacity=3, history=5)
        x = await self.member("b", 2, "r", "x")
        await wait_until(lambda: host.peer.notices("join"), 5, "x known on a")
        # a field a governing rule would keep in the room (the extension point)
        a = self.nodes["a"]
        self.assertEqual(await a.cluster.registry.set_fields(a.rooms.rooms["r"], {"topic": "tea"}), 1)
        self.redis.stop()
        self.b.signal(signal.SIGSTOP)
        self.redis.start()
        await wait_until(lambda: all(n.cluster.ready for n in self.nodes.values()) and self.registry_members("r") == {"host": "a"}, 15, "a rebuilt r")
        newcomer = await self.member("a", 2, "r", "x")
        z = await self.member("c", 2, "r", "z")
        self.b.signal(signal.SIGCONT)
        await wait_until(lambda: x.peer.notices("disconnected"), 15, "b's x told it is out")
        self.assertEqual(x.peer.notices("disconnected"), [{"event": "disconnected", "reason": "unreachable"}])
        await self.b.ready()
        await sleep(1.0)  # a heartbeat: every node has rebuilt
        self.assertEqual(self.registry_members("r"), {"host": "a", "x": "a", "z": "c"})
        self.assertEqual(self.room_field("r", "history"), b"5")
        self.assertEqual(self.room_field("r", "capacity"), b"3")
        self.assertEqual(self.room_field("r", "topic"), b"tea")
        for m in (host, newcomer, z):
            self.assertEqual(await self.who(m), {"host", "x", "z"}, m.name)


class LogLines:
    """The text of every log event of the test (twisted.logger's global publisher)."""

    def __init__(self, case: unittest.TestCase) -> None:
        from twisted.logger import globalLogPublisher

        self.lines: list[str] = []
        globalLogPublisher.addObserver(self.observe)
        case.addCleanup(globalLogPublisher.removeObserver, self.observe)

    def observe(self, event: dict[str, Any]) -> None:
        from twisted.logger import formatEvent

        self.lines.append(formatEvent(event))

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)


class Reconnecting(ClusterCase):
    """Redis going away and coming back: told once each way, one rebuild, no flapping."""

    node_args = ["--timeout", str(TIMEOUT)]

    async def test_redis_restart_told_once_and_rebuilt_once(self) -> None:
        """Each node says once that Redis is unreachable and once that it is back, and rebuilds once."""
        host, b1, c1 = await self.room("r", "abc")
        loop = task.LoopingCall(lambda: [m.send(b"") for m in (host, b1, c1)])
        loop.start(TIMEOUT / 5)
        self.addCleanup(loop.stop)
        logs = LogLines(self)
        self.redis.stop()
        await wait_until(lambda: not any(n.cluster.ready for n in self.nodes.values()), 5, "the nodes noticing")
        await sleep(0.5)
        self.redis.start()
        await wait_until(lambda: all(n.cluster.ready for n in self.nodes.values()), 15, "the nodes back")
        await sleep(3.0)  # time to flap, if they would
        self.assertTrue(all(n.cluster.ready for n in self.nodes.values()))
        port = self.redis.port
        self.assertEqual(logs.count(f"Redis at 127.0.0.1:{port} unreachable"), 3, "\n".join(logs.lines))
        self.assertEqual(logs.count(f"Redis at 127.0.0.1:{port} reachable again"), 3, "\n".join(logs.lines))
        self.assertEqual(logs.count("rebuilding this node's part of the registry"), 3, "\n".join(logs.lines))
        b1.send(b"after")
        await wait_until(lambda: ("guest1", "after") in host.chats() and ("guest1", "after") in c1.chats(), 5, "chat across nodes")
        for m in (host, b1, c1):
            m.send(wire.WHO)
        await wait_until(lambda: all(m.peer.notices("members") for m in (host, b1, c1)), 5, "who")
        for m in (host, b1, c1):
            self.assertEqual(set(m.peer.notices("members")[-1]["members"]), {"host", "guest1", "guest2"}, m.name)


class StartingWithoutRedis(unittest.TestCase):
    """A node started while Redis is down says so, naming where Redis is, and serves once it is up."""

    timeout = 30

    async def test_unreachable_at_start_up(self) -> None:
        require_redis()
        logs = LogLines(self)
        redis = RedisServer(os.path.abspath(self.mktemp()))
        self.addCleanup(redis.stop)
        node = Node(self, "a", redis.url, "--timeout", str(TIMEOUT))
        self.addCleanup(node.stop)
        await wait_until(lambda: logs.count(f"Redis at 127.0.0.1:{redis.port} unreachable"), 5, "the log line")
        body = status_of(await tcrp(node.tcp_port, 3, "", {}))
        self.assertEqual(body["status"], 503)
        redis.start()
        await wait_until(lambda: node.cluster.ready, 10, "the node ready")
        self.assertEqual(logs.count(f"Redis at 127.0.0.1:{redis.port} unreachable"), 1, "\n".join(logs.lines))
        self.assertEqual(logs.count(f"Redis at 127.0.0.1:{redis.port} reachable"), 1, "\n".join(logs.lines))
        # no anonymous retry messages (an object's address instead of Redis's)
        self.assertEqual([line for line in logs.lines if "retry" in line.lower() or "ocm.cluster" in line], [])
        body = status_of(await tcrp(node.tcp_port, 3, "", {}))
        self.assertEqual(body["status"], 200)


class SharedHistory(ClusterCase):
    """A room's history lives in Redis: a newcomer on any node gets it, bounded as on one node."""

    node_args = ["--max-history", "40"]

    def history(self, m: Member) -> list[tuple[str, str]]:
        return [(n["user"], n["text"]) for n in m.peer.notices("history")]

    async def test_newcomer_on_another_node_gets_the_history(self) -> None:
        """Chat from a and b; a newcomer on c gets the last three messages, in order."""
        host, guest = await self.room("r", "ab", history=3)
        for i, sender in enumerate((host, guest, host, guest)):
            sender.send(f"m{i}".encode())
            other = guest if sender is host else host
            await wait_until(lambda i=i, other=other: any(t == f"m{i}" for _, t in other.chats()), 5, f"m{i}")
        newcomer = await self.member("c", 2, "r", "c1")
        await wait_until(lambda: len(self.history(newcomer)) == 3, 5, "the history")
        self.assertEqual(self.history(newcomer), [("guest1", "m1"), ("host", "m2"), ("guest1", "m3")])
        # and after Redis restarted empty, from the host's copy
        self.redis.stop()
        await wait_until(lambda: not self.nodes["a"].cluster.ready, 5, "a noticing")
        self.redis.start()
        await wait_until(lambda: all(n.cluster.ready for n in self.nodes.values()), 15, "the nodes back")
        await wait_until(lambda: not self.redis.command("HGET", "ocm:rooms", "r").startswith(b"$-1"), 5, "r rebuilt by its host")
        late = await self.member("b", 2, "r", "b2")
        await wait_until(lambda: len(self.history(late)) == 3, 5, "the history after the restart")
        self.assertEqual(self.history(late), [("guest1", "m1"), ("host", "m2"), ("guest1", "m3")])

    async def test_history_bounded_by_bytes(self) -> None:
        """40 messages of 3,000 bytes kept for a room of history 40: a newcomer gets the newest that fit in 64 KiB."""
        host, guest = await self.room("big", "ab", history=40)
        texts = [f"{i:02d}" + "x" * 2998 for i in range(40)]
        for text in texts:
            guest.send(text.encode())
        await wait_until(lambda: len(host.chats()) == 40, 10, "every message")
        newcomer = await self.member("c", 2, "big", "c1")
        await wait_until(lambda: self.history(newcomer), 5, "the history")
        await sleep(0.2)
        got = [t for _, t in self.history(newcomer)]
        notices = [d for d in newcomer.peer.received if d[0] == 0 and b'"history"' in d]
        self.assertLessEqual(sum(len(d) - 1 for d in notices), 64 * 1024)
        self.assertEqual(got, texts[-len(got) :])
        self.assertGreater(len(got), 15)


class RedisProcess(RedisServer):
    """A redis-server with more arguments (a replica), or a redis-sentinel, on 127.0.0.1."""

    def __init__(self, directory: str, extra: list[str], sentinel: str | None = None) -> None:
        super().__init__(directory)
        self.extra = extra
        #: A sentinel's configuration (it rewrites the file: it must be its own).
        self.sentinel = sentinel

    def start(self, timeout: float = 10.0) -> None:
        """Start it; return once it answers PING (bounded)."""
        import shutil
        import subprocess
        import time

        if self.sentinel is not None:
            path = os.path.join(self.directory, "sentinel.conf")
            with open(path, "w") as f:
                f.write(f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n{self.sentinel}")
            argv = [shutil.which("redis-sentinel") or "redis-sentinel", path]
        else:
            argv = [require_redis(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.directory, *self.extra]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping():
                return
            time.sleep(0.02)
        self.stop()
        raise AssertionError(f"{argv[0]} did not answer on port {self.port} within {timeout}s")


class SentinelFailover(ClusterCase):
    """A primary, a replica and a sentinel: the nodes follow a forced failover mid-chat."""

    timeout = 60
    node_args = ["--timeout", str(TIMEOUT)]

    async def setUp(self) -> None:
        import shutil

        require_redis()
        if shutil.which("redis-sentinel") is None:
            if os.environ.get("CI"):
                raise AssertionError("redis-sentinel is missing")
            raise unittest.SkipTest("redis-sentinel is not installed")
        self.redis = RedisServer(os.path.abspath(self.mktemp()))
        self.redis.start()
        self.addCleanup(self.redis.stop)
        self.replica = RedisProcess(os.path.abspath(self.mktemp()), ["--replicaof", "127.0.0.1", str(self.redis.port)])
        self.replica.start()
        self.addCleanup(self.replica.stop)
        self.sentinel = RedisProcess(
            os.path.abspath(self.mktemp()),
            [],
            sentinel=(
                f"sentinel monitor mymaster 127.0.0.1 {self.redis.port} 1\n"
                "sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n"
            ),
        )
        self.sentinel.start()
        self.addCleanup(self.sentinel.stop)
        await wait_until(lambda: b"\r\nslave\r\n" in self.sentinel.command("SENTINEL", "REPLICAS", "mymaster"), 15, "the sentinel knowing the replica")
        await wait_until(lambda: b"master_link_status:up" in self.replica.command("INFO", "replication"), 15, "the replica in sync")
        url = f"redis+sentinel://127.0.0.1:{self.sentinel.port}/mymaster"
        self.nodes = {name: Node(self, name, url, *self.node_args) for name in "abc"}
        for node in self.nodes.values():
            self.addCleanup(node.stop)
        await wait_until(lambda: all(n.cluster.ready for n in self.nodes.values()), 10, "every node ready")

    async def test_failover_mid_chat(self) -> None:
        """
        SENTINEL FAILOVER while the host on a chats: within seconds every
        node's links are on the new primary and its part of the registry is
        there; chat crosses nodes again; joins go to the new primary; /who
        agrees everywhere.
        """
        host, b1, c1 = await self.room("r", "abc")
        keep = task.LoopingCall(lambda: [m.send(b"") for m in (host, b1, c1)])
        keep.start(TIMEOUT / 5)
        self.addCleanup(keep.stop)
        sent = []

        def chat() -> None:
            text = f"during {len(sent)}"
            sent.append(text)
            host.send(text.encode())

        chatter = task.LoopingCall(chat)
        chatter.start(0.05)
        self.addCleanup(lambda: chatter.stop() if chatter.running else None)
        await sleep(0.3)
        new = ("127.0.0.1", self.replica.port)
        started = reactor.seconds()  # type: ignore[attr-defined]
        self.assertIn(b"OK", self.sentinel.command("SENTINEL", "FAILOVER", "mymaster"))
        await wait_until(
            lambda: all(n.cluster.links.target.current() == new and n.cluster.ready for n in self.nodes.values()), 15, "the nodes on the new primary"
        )
        followed = reactor.seconds() - started  # type: ignore[attr-defined]
        self.assertLess(followed, 8.0)
        await wait_until(lambda: b"host" in self.replica.command("HGETALL", "ocm:{72}:members"), 5, "the registry on the new primary")
        chatter.stop()
        # Sentinel itself drops the clients of an instance it reconfigures: a
        # node may reconnect once more around the failover, and chat in
        # that instant is dropped (as real-time chat allows); so, until through
        await self.until_through(b1, b"after the failover", host, c1)
        await self.until_through(host, b"and back", b1, c1)
        members = self.replica.command("HGETALL", "ocm:{72}:members")
        for name, node in ((b"host", b"a"), (b"guest1", b"b"), (b"guest2", b"c")):
            self.assertIn(name + b"\r\n$1\r\n" + node, members)
        late = await self.joined("c", "r", "late")
        await wait_until(lambda: b"late" in self.replica.command("HGETALL", "ocm:{72}:members"), 5, "the join on the new primary")
        await sleep(TIMEOUT / 2)
        for m in (host, b1, c1, late):
            self.assertEqual(await self.who(m), {"host", "guest1", "guest2", "late"}, m.name)
        # chat before and during the failover: nothing out of order, most of it through
        got = [t for n, t in b1.chats() if n == "host" and t.startswith("during")]
        self.assertEqual(got, sorted(got, key=lambda t: int(t.split()[1])))
        self.assertGreater(len(got), len(sent) / 2)

    async def who(self, m: Member) -> set[str]:
        before = len(m.peer.notices("members"))
        m.send(wire.WHO)
        await wait_until(lambda: len(m.peer.notices("members")) > before, 5, f"who for {m.name}")
        return set(m.peer.notices("members")[-1]["members"])

    async def until_through(self, sender: Member, text: bytes, *receivers: Member) -> None:
        """Send C{text} every 0.1 s until every receiver has it (at most 5 s)."""
        expected = (sender.name, text.decode())
        for _ in range(50):
            sender.send(text)
            await sleep(0.1)
            if all(expected in r.chats() for r in receivers):
                return
        raise AssertionError(f"{text!r} from {sender.name} never reached everyone")

    async def joined(self, node: str, room: str, name: str) -> Member:
        """Join (again while the registry answers 503, being rebuilt: at most 5 s), bind."""
        for _ in range(50):
            body, frames = await self.request(node, 2, room, username=name)
            if body["status"] != 503:
                break
            await sleep(0.1)
        self.assertEqual(body["status"], 200, body)
        m = Member(self, self.nodes[node].udp_port, room, name, frames[1].payload)
        await m.hello()
        return m


class RedisPaused(ClusterCase):
    """Redis stopped (SIGSTOP) longer than the TTL: every heartbeat lapsed, yet nobody is fenced."""

    node_args = ["--timeout", str(TIMEOUT)]

    async def test_redis_paused_past_the_ttl(self) -> None:
        """
        When Redis runs again, the node that reaches it first does not reap
        the others (they were cut off as it was): nobody is told to leave,
        /who agrees everywhere, chat crosses nodes.
        """
        members = await self.room("r", "abc")
        keep = task.LoopingCall(lambda: [m.send(b"") for m in members])
        keep.start(TIMEOUT / 5)
        self.addCleanup(keep.stop)
        assert self.redis.process is not None
        self.redis.process.send_signal(signal.SIGSTOP)
        try:
            await sleep(TIMEOUT + 1.5)
        finally:
            self.redis.process.send_signal(signal.SIGCONT)
        await wait_until(lambda: all(n.cluster.ready for n in self.nodes.values()), 15, "the nodes back")
        await sleep(TIMEOUT + 1)  # past the grace: a reaping would have happened by now
        for m in members:
            self.assertEqual([n for n in m.peer.notices() if n["event"] in ("disconnected", "leave", "closed")], [], m.name)
        for m in members:
            m.send(wire.WHO)
        await wait_until(lambda: all(m.peer.notices("members") for m in members), 5, "who")
        for m in members:
            self.assertEqual(set(m.peer.notices("members")[-1]["members"]), {"host", "guest1", "guest2"}, m.name)
        members[1].send(b"still here")
        await wait_until(lambda: all(("guest1", "still here") in m.chats() for m in (members[0], members[2])), 5, "chat across nodes")
