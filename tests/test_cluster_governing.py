"""
SPEC section 7 across the nodes of a cluster: three nodes built by the
plugin's own C{makeService} and one real redis-server (L{ClusterCase}), the
host on one node and the members it governs on others.
"""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

from ocm import wire
from ocm.cluster import scripts
from ocm.cluster.governing import rule_body
from ocm.cluster.state import flat
from tests.test_cluster import ClusterCase, Member
from tests.helpers import free_port, sleep, spawn_twistd, status_of, tcrp, wait_until


def command(member: Member, text: str) -> None:
    """Send the control message C{text}."""
    member.send(b"\x00" + text.encode("utf-8"))


def events(member: Member, event: str) -> list[dict[str, Any]]:
    return member.peer.notices(event)


class ClusterGoverning(ClusterCase):
    """The host on a governs members on b and c."""

    async def test_private_across_nodes(self) -> None:
        """msg reaches a member of another node alone, both ways; a muted member's private messages are not relayed."""
        host, bob, carol = await self.room("r", "abc")
        command(bob, "ping")
        await wait_until(lambda: events(bob, "pong"), 5, "pong")
        command(host, "msg guest1 psst, bob")
        await wait_until(lambda: events(bob, "private"), 5, "private on b")
        self.assertEqual(events(bob, "private"), [{"event": "private", "user": "host", "text": "psst, bob"}])
        command(bob, "msg host hello back")
        await wait_until(lambda: events(host, "private"), 5, "private on a")
        self.assertEqual(events(host, "private"), [{"event": "private", "user": "guest1", "text": "hello back"}])
        command(carol, "msg guest1 from c")
        await wait_until(lambda: len(events(bob, "private")) == 2, 5, "private from c to b")
        # nobody else saw any of them
        self.assertEqual(events(carol, "private"), [])
        self.assertEqual(len(events(host, "private")), 1)
        # muted: bob's private messages are dropped on its own node
        command(host, "mute guest1")
        await wait_until(lambda: events(bob, "muted") and events(carol, "muted"), 5, "muted notices")
        command(bob, "msg host you cannot hear me")
        await wait_until(lambda: any(e.get("code") == "muted" for e in events(bob, "error")), 5, "error/muted")
        command(carol, "msg host marker")
        await wait_until(lambda: len(events(host, "private")) == 2, 5, "the marker")
        self.assertEqual([e["text"] for e in events(host, "private")], ["hello back", "marker"])
        command(host, "msg nobody hi")
        await wait_until(lambda: any(e.get("code") == "no_such_user" for e in events(host, "error")), 5, "no_such_user")

    async def test_mute_topic_lock_across_nodes(self) -> None:
        """mute, topic and lock reach every node; the mute holds on the muted member's node; a lock refuses joins everywhere."""
        host, bob, carol = await self.room("r", "abc")
        command(host, "mute guest1")
        for m in (host, bob, carol):
            await wait_until(lambda m=m: events(m, "muted"), 5, "muted")
            self.assertEqual(events(m, "muted"), [{"event": "muted", "user": "guest1"}])
        bob.send(b"muted chat")
        await wait_until(lambda: any(e.get("code") == "muted" for e in events(bob, "error")), 5, "error/muted")
        carol.send(b"marker")
        await wait_until(lambda: ("guest2", "marker") in host.chats(), 5, "the marker")
        self.assertNotIn(("guest1", "muted chat"), host.chats() + carol.chats())
        carol.send(wire.WHO)
        await wait_until(lambda: events(carol, "members"), 5, "members")
        self.assertEqual(events(carol, "members")[0]["muted"], ["guest1"])
        command(host, "unmute guest1")
        await wait_until(lambda: events(carol, "unmuted") and events(bob, "unmuted"), 5, "unmuted")
        bob.send(b"heard")
        await wait_until(lambda: ("guest1", "heard") in host.chats() and ("guest1", "heard") in carol.chats(), 5, "chat after unmute")

        command(host, "topic tea at five")
        for m in (host, bob, carol):
            await wait_until(lambda m=m: events(m, "topic"), 5, "topic")
            self.assertEqual(events(m, "topic"), [{"event": "topic", "topic": "tea at five", "user": "host"}])
        # a newcomer on a node that did not hold the room is welcomed with it
        dave = await self.member("c", 2, "r", "dave")
        self.assertEqual(events(dave, "welcome")[0]["topic"], "tea at five")
        erin = await self.member("b", 2, "r", "erin")
        self.assertEqual(events(erin, "welcome")[0]["topic"], "tea at five")

        command(host, "lock")
        for m in (host, bob, carol):
            await wait_until(lambda m=m: events(m, "locked"), 5, "locked")
        for node in "abc":
            body, _ = await self.request(node, 2, "r", username=f"late-{node}")
            self.assertEqual(body["status"], 403, (node, body))
            self.assertIn("locked", body["message"])
        command(host, "unlock")
        await wait_until(lambda: events(bob, "unlocked"), 5, "unlocked")
        for node in "abc":
            body, _ = await self.request(node, 2, "r", username=f"late-{node}")
            self.assertEqual(body["status"], 200, (node, body))

    async def test_kick_across_nodes(self) -> None:
        """A kick of a member of another node: it gets disconnected/kicked, everyone leave/kicked; it may join again."""
        host, bob, carol = await self.room("r", "abc")
        command(host, "kick guest1")
        await wait_until(lambda: events(bob, "disconnected"), 5, "disconnected")
        self.assertEqual(events(bob, "disconnected"), [{"event": "disconnected", "reason": "kicked"}])
        for m in (host, carol):
            await wait_until(lambda m=m: events(m, "leave"), 5, "leave")
            self.assertEqual(events(m, "leave"), [{"event": "leave", "user": "guest1", "reason": "kicked"}])
        await wait_until(lambda: all(m.name != "guest1" for m in self.nodes["b"].rooms.tokens.values()), 5, "token gone")
        bob.send(b"still here?")
        carol.send(b"marker")
        await wait_until(lambda: ("guest2", "marker") in host.chats(), 5, "marker")
        self.assertNotIn(("guest1", "still here?"), host.chats())
        back = await self.member("c", 2, "r", "guest1")
        self.assertIn("guest1", events(back, "welcome")[0]["members"])

    async def test_ban_across_nodes(self) -> None:
        """A ban of a member of another node refuses its name and its IP with 403 on every node while the room lives."""
        host = await self.member("a", 1, "r", "host")
        bob = await self.member("b", 2, "r", "bob", source="127.0.0.2")
        carol = await self.member("c", 2, "r", "carol")
        await wait_until(lambda: {e["user"] for e in events(host, "join")} == {"bob", "carol"}, 5, "joins")
        command(host, "ban bob")
        await wait_until(lambda: events(bob, "disconnected"), 5, "disconnected")
        self.assertEqual(events(bob, "disconnected"), [{"event": "disconnected", "reason": "banned"}])
        await wait_until(lambda: events(carol, "leave"), 5, "leave")
        self.assertEqual(events(carol, "leave"), [{"event": "leave", "user": "bob", "reason": "banned"}])
        room_key = scripts.room_key("r", "room")
        await wait_until(lambda: self.redis.command("HEXISTS", room_key, "ban:ip:127.0.0.2") == b":1\r\n", 5, "the IP banned in the registry")
        for node in "abc":
            body, _ = await self.request(node, 2, "r", username="bob")
            self.assertEqual(body["status"], 403, (node, body))
            self.assertIn("banned", body["message"])
            body, _ = await self.request(node, 2, "r", source="127.0.0.2", username=f"bob-{node}")
            self.assertEqual(body["status"], 403, (node, body))
        body, _ = await self.request("b", 2, "r", source="127.0.0.3", username="other")
        self.assertEqual(body["status"], 200)
        # every node holding the room knows both bans (a rebuild writes them back)
        for node in "abc":
            room = self.nodes[node].rooms.rooms["r"]
            self.assertEqual((room.banned_names, room.banned_ips), ({"bob"}, {"127.0.0.2"}), node)
        # the room closed, the ban is gone with it
        host.send(wire.LEAVE)
        await wait_until(lambda: events(carol, "closed"), 5, "closed")
        body, _ = await self.request("b", 1, "r", source="127.0.0.2", username="bob")
        self.assertEqual(body["status"], 200)

    async def test_not_host_on_another_node(self) -> None:
        """A host-only command from a member of another node changes nothing: error/not_host."""
        host, bob = await self.room("r", "ab")
        for text in ("kick host", "ban host", "mute host", "topic mine", "lock", "host guest1"):
            command(bob, text)
        await wait_until(lambda: len(events(bob, "error")) == 6, 5, "six errors")
        self.assertEqual({e["code"] for e in events(bob, "error")}, {"not_host"})
        bob.send(wire.WHO)
        await wait_until(lambda: events(bob, "members"), 5, "members")
        self.assertEqual(events(bob, "members")[0]["host"], "host")
        self.assertNotIn("topic", events(bob, "members")[0])
        body, _ = await self.request("c", 2, "r", username="c1")
        self.assertEqual(body["status"], 200)
        self.assertEqual(events(host, "disconnected") + events(host, "topic") + events(host, "locked"), [])

    async def test_host_handed_to_another_node(self) -> None:
        """
        host USER of another node: every node names the new host; the old
        host leaving leaves the room open; the new host governs it; the
        room dies with the new host.
        """
        old, bob, carol = await self.room("r", "abc")
        command(old, "host guest1")
        for m in (old, bob, carol):
            await wait_until(lambda m=m: events(m, "host"), 5, "host")
            self.assertEqual(events(m, "host"), [{"event": "host", "user": "guest1"}])
        room_key = scripts.room_key("r", "room")
        self.assertEqual(self.redis.command("HMGET", room_key, "host", "node"), b"*2\r\n$6\r\nguest1\r\n$1\r\nb\r\n")
        # the old host is an ordinary member now
        command(old, "topic old")
        await wait_until(lambda: any(e.get("code") == "not_host" for e in events(old, "error")), 5, "not_host")
        old.send(wire.LEAVE)
        await wait_until(lambda: events(carol, "leave"), 5, "the old host's leave")
        self.assertEqual(events(carol, "leave"), [{"event": "leave", "user": "host", "reason": "left"}])
        await sleep(0.3)
        self.assertEqual(events(carol, "closed") + events(bob, "closed"), [])
        # a newcomer is welcomed by the new host's name; the new host governs
        dave = await self.member("a", 2, "r", "dave")
        self.assertEqual(events(dave, "welcome")[0]["host"], "guest1")
        command(bob, "topic bob's room")
        await wait_until(lambda: events(dave, "topic") and events(carol, "topic"), 5, "topic from the new host")
        command(bob, "kick dave")
        await wait_until(lambda: events(dave, "disconnected"), 5, "dave kicked by the new host")
        # the room dies with its new host
        bob.send(wire.LEAVE)
        await wait_until(lambda: events(carol, "closed"), 5, "closed")
        self.assertEqual(events(carol, "closed"), [{"event": "closed", "reason": "host_left"}])
        await wait_until(lambda: all("r" not in n.rooms.rooms for n in self.nodes.values()), 5, "room gone everywhere")
        self.assertEqual(self.redis.command("EXISTS", room_key), b":0\r\n")


    async def hand_r_to_guest1(self) -> Any:
        """Node a's GOVERN script, run directly: room r's host is guest1 of node b now. Node a's room r."""
        room = self.nodes["a"].rooms.rooms["r"]
        fields = {"host": "guest1", "node": "b"}
        body = rule_body({"word": "host", "user": "guest1"}, fields)
        done = await self.nodes["a"].cluster.links.run(scripts.GOVERN, "r", room.id, body, "1", "guest1", "b", "host", "", "", *flat(fields))
        self.assertEqual(done, 1)
        return room

    async def test_handed_to_a_member_leaving_meanwhile(self) -> None:
        """
        The registry hands the room to bob (govern) just before bob's node
        records bob's leave: leave closes the room, every node (bob's too)
        is told closed/host_left, and the name is free.  (The two scripts
        are run here directly, in that order, as the race would run them.)
        """
        host, bob, carol = await self.room("r", "abc")
        room = await self.hand_r_to_guest1()
        left = await self.nodes["b"].cluster.links.run(scripts.LEAVE, "r", room.id, "guest1")
        self.assertEqual(left, 2)
        for m in (host, bob, carol):
            await wait_until(lambda m=m: events(m, "closed"), 5, "closed")
            self.assertEqual(events(m, "closed"), [{"event": "closed", "reason": "host_left"}])
        await wait_until(lambda: all("r" not in n.rooms.rooms for n in self.nodes.values()), 5, "room gone everywhere")
        body_, _ = await self.request("c", 1, "r", username="new")
        self.assertEqual(body_["status"], 200)

    async def test_close_from_a_node_that_no_longer_hosts(self) -> None:
        """
        After the room was handed to a member of node b, node a's CLOSE
        (a host there that did not yet know) changes nothing: the room is
        b's to close.
        """
        host, bob, carol = await self.room("r", "abc")
        room = await self.hand_r_to_guest1()
        told = await self.nodes["a"].cluster.links.run(scripts.CLOSE, "r", room.id)
        self.assertEqual(told, [])
        self.assertEqual(self.redis.command("HMGET", scripts.room_key("r", "room"), "host", "node"), b"*2\r\n$6\r\nguest1\r\n$1\r\nb\r\n")
        self.assertEqual(self.redis.command("HEXISTS", scripts.room_key("r", "members"), "guest2"), b":1\r\n")

    async def test_rebuild_reads_the_governed_state(self) -> None:
        """A replica's rebuild takes the governed state from the registry (a change whose record went to the nodes registered then)."""
        host, bob = await self.room("r", "ab")
        key = scripts.room_key("r", "room")
        self.redis.command("HSET", key, "topic", "set while b was away", "locked", "1", "muted", '["guest1"]', "ban:name:eve", "1")
        b = self.nodes["b"]
        room = b.rooms.rooms["r"]
        await b.cluster.liveness._rebuild_room(room)
        self.assertEqual((room.topic, room.locked, room.muted, room.banned_names), ("set while b was away", True, {"guest1"}, {"eve"}))
        self.assertEqual(b.cluster.liveness.room_fields(room)["topic"], "set while b was away")

    async def test_handed_to_a_member_already_gone(self) -> None:
        """
        host USER when USER has just left its node (the registry has it
        gone, this node not yet): nothing changes anywhere, the host is
        told no_such_user and still governs; this node's copy of the
        fields keeps the host.
        """
        host, bob, carol = await self.room("r", "abc")
        room = self.nodes["a"].rooms.rooms["r"]
        self.assertEqual(await self.nodes["b"].cluster.links.run(scripts.LEAVE, "r", room.id, "guest1"), 1)
        command(host, "host guest1")
        await wait_until(lambda: events(host, "error"), 5, "error")
        self.assertEqual(events(host, "error"), [{"event": "error", "code": "no_such_user"}])
        self.assertEqual(self.redis.command("HMGET", scripts.room_key("r", "room"), "host", "node"), b"*2\r\n$4\r\nhost\r\n$1\r\na\r\n")
        self.assertEqual(self.nodes["a"].cluster.liveness.room_fields(room)["host"], "host")
        self.assertEqual(events(host, "host") + events(bob, "host") + events(carol, "host"), [])
        command(host, "topic still mine")
        await wait_until(lambda: events(carol, "topic"), 5, "topic")
        self.assertEqual(events(carol, "topic"), [{"event": "topic", "topic": "still mine", "user": "host"}])

    async def test_two_handovers_in_a_row(self) -> None:
        """
        host USER (another node's), then at once host OTHER: the old host
        is no longer the host once it has handed the room over; every node
        agrees on USER.
        """
        host, bob, carol = await self.room("r", "abc")
        dave = await self.member("a", 2, "r", "dave")
        await wait_until(lambda: all(any(e["user"] == "dave" for e in events(m, "join")) for m in (host, bob, carol)), 5, "dave known")
        command(host, "host guest1")
        command(host, "host dave")
        command(host, "kick guest1")
        for m in (host, bob, carol, dave):
            await wait_until(lambda m=m: events(m, "host"), 5, "host")
        await sleep(0.3)
        for m in (host, bob, carol, dave):
            self.assertEqual(events(m, "host"), [{"event": "host", "user": "guest1"}], m.name)
        self.assertEqual([e["code"] for e in events(host, "error")], ["not_host", "not_host"])
        self.assertEqual(events(bob, "disconnected"), [])
        for name, node in self.nodes.items():
            self.assertEqual(node.rooms.rooms["r"].host_name, "guest1", name)
        self.assertIs(self.nodes["b"].rooms.rooms["r"].host, self.nodes["b"].rooms.rooms["r"].members["guest1"])
        self.assertEqual(self.redis.command("HMGET", scripts.room_key("r", "room"), "host", "node"), b"*2\r\n$6\r\nguest1\r\n$1\r\nb\r\n")

    async def test_old_host_leaves_at_once(self) -> None:
        """host USER (another node's), then the old host leaves at once: the room lives on with USER."""
        host, bob, carol = await self.room("r", "abc")
        command(host, "host guest1")
        host.send(wire.LEAVE)
        await wait_until(lambda: events(carol, "leave"), 5, "leave")
        await wait_until(lambda: events(carol, "host"), 5, "host")
        await sleep(0.3)
        self.assertEqual(events(carol, "closed") + events(bob, "closed"), [])
        self.assertEqual(events(carol, "leave"), [{"event": "leave", "user": "host", "reason": "left"}])
        self.assertEqual(self.redis.command("HMGET", scripts.room_key("r", "room"), "host", "node"), b"*2\r\n$6\r\nguest1\r\n$1\r\nb\r\n")
        bob.send(wire.LEAVE)
        await wait_until(lambda: events(carol, "closed"), 5, "closed with its new host")

    async def test_ban_of_a_member_whose_node_does_nothing(self) -> None:
        """The ban's IP is the registry's (recorded at join), banned with the name in one step, whatever the member's node does."""
        host = await self.member("a", 1, "r", "host")
        bob = await self.member("b", 2, "r", "bob", source="127.0.0.2")
        await wait_until(lambda: events(host, "join"), 5, "join")
        self.nodes["b"].cluster.inbound.rules.received = lambda *args: []  # b is deaf to RULE records
        command(host, "ban bob")
        key = scripts.room_key("r", "room")
        await wait_until(lambda: self.redis.command("HEXISTS", key, "ban:ip:127.0.0.2") == b":1\r\n", 5, "the IP banned")
        body, _ = await self.request("c", 2, "r", source="127.0.0.2", username="someone")
        self.assertEqual(body["status"], 403)
        del bob


class ClusterGoverningFailures(ClusterCase):
    """The room's lifetime follows its host to another node; the governed state outlives Redis."""

    node_args = ["--timeout", "2"]

    async def test_governed_state_survives_redis_restarted_empty(self) -> None:
        """Bans, the lock, the topic and mutes set before Redis restarted empty hold after the rebuild, on every node."""
        host = await self.member("a", 1, "r", "host")
        bob = await self.member("b", 2, "r", "bob", source="127.0.0.2")
        carol = await self.member("c", 2, "r", "carol")
        await wait_until(lambda: {e["user"] for e in events(host, "join")} == {"bob", "carol"}, 5, "joins")
        for text in ("ban bob", "mute carol", "topic tea", "lock"):
            command(host, text)
        await wait_until(lambda: events(carol, "locked"), 5, "locked")
        await wait_until(lambda: self.redis.command("HEXISTS", scripts.room_key("r", "room"), "ban:ip:127.0.0.2") == b":1\r\n", 5, "ip ban")
        self.redis.stop()
        for _ in range(10):
            host.send(b"")
            carol.send(b"")
            await sleep(0.1)
        self.redis.start()
        for _ in range(100):
            host.send(b"")
            carol.send(b"")
            if all(n.cluster.ready for n in self.nodes.values()) and self.redis.command("HGET", scripts.room_key("r", "room"), "topic") == b"$3\r\ntea\r\n":
                break
            await sleep(0.1)
        else:
            raise AssertionError("r was not rebuilt")
        body, _ = await self.request("b", 2, "r", username="dave")
        self.assertEqual(body["status"], 403)
        for _ in range(50):  # every node has put its members back
            host.send(b"")
            carol.send(b"")
            if self.redis.command("HLEN", scripts.room_key("r", "members")) == b":2\r\n":
                break
            await sleep(0.1)
        command(host, "unlock")
        await wait_until(lambda: events(carol, "unlocked"), 5, "unlocked")
        for node, name, source in (("b", "bob", "127.0.0.1"), ("c", "bob2", "127.0.0.2")):
            body, _ = await self.request(node, 2, "r", source=source, username=name)
            self.assertEqual(body["status"], 403, (node, name))
        dave = await self.member("b", 2, "r", "dave")
        self.assertEqual(events(dave, "welcome")[0]["topic"], "tea")
        dave.send(wire.WHO)
        await wait_until(lambda: events(dave, "members"), 5, "members")
        self.assertEqual(events(dave, "members")[0]["muted"], ["carol"])
        del bob

    async def test_new_hosts_node_killed(self) -> None:
        """A room handed to a member of node d closes when d is SIGKILLed (its reaper), though the old host's node lives."""
        tcp_port, udp_port = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
        proc = spawn_twistd(
            self, "-n", "ocm", "--tcp", str(tcp_port), "--udp", str(udp_port), "--interface", "127.0.0.1",
            "--redis", self.redis.url, "--node", "d", "--timeout", "2",
        )
        for _ in range(100):
            try:
                if status_of(await tcrp(tcp_port, 3, "", {}))["status"] == 200:
                    break
            except Exception:
                pass
            await sleep(0.1)
        else:
            raise AssertionError(f"node d did not answer: {proc.output!r}")
        host = await self.member("a", 1, "r", "host")
        frames = await tcrp(tcp_port, 2, "r", {"username": "dave"})
        self.assertEqual(status_of(frames)["status"], 200)
        dave = Member(self, udp_port, "r", "dave", frames[1].payload)
        await dave.hello()
        bob = await self.member("b", 2, "r", "bob")
        await wait_until(lambda: {e["user"] for e in events(host, "join")} == {"dave", "bob"}, 5, "joins")
        command(host, "host dave")
        await wait_until(lambda: events(bob, "host") and events(dave, "host"), 5, "host notices")
        self.assertEqual(self.redis.command("HGET", scripts.room_key("r", "room"), "node"), b"$1\r\nd\r\n")
        os.kill(proc.transport.pid, signal.SIGKILL)  # type: ignore[attr-defined]
        await proc.ended
        for _ in range(25):  # keep a and b's members alive while d is reaped (timeout 2 s)
            host.send(b"")
            bob.send(b"")
            if events(host, "closed") and events(bob, "closed"):
                break
            await sleep(0.2)
        self.assertEqual(events(host, "closed"), [{"event": "closed", "reason": "host_left"}])
        self.assertEqual(events(bob, "closed"), [{"event": "closed", "reason": "host_left"}])
        body, frames = await self.request("c", 3, "")
        self.assertEqual(wire.decode_json(frames[1].payload), [])
