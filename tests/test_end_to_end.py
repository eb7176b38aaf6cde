"""
End-to-end tests: the server built by the plugin's own C{makeService}, real
sockets on 127.0.0.1 (and 127.0.0.2 as the other address), ephemeral ports,
every wait bounded.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest

from ocm import wire
from ocm.relay import fanout
from ocm.relay.routes import UdpRoute
from tests.helpers import Member, ServerCase, UDPPeer, listen_udp, sleep, status_of, tcrp_raw, wait_until


class TCRPEndToEnd(ServerCase):
    """Every status of the TCRP table over a real TCP connection."""

    async def test_create_join_list(self) -> None:
        """200 for create and join (with udp_port and timeout), list without passwords."""
        body, frames = await self.request(1, "部屋", username="アリス", password="秘密", capacity=3)
        self.assertEqual(body, {"status": 200, "udp_port": self.udp_port, "timeout": 30})
        self.assertEqual([(f.operation, f.state, f.room) for f in frames], [(1, 1, "部屋".encode()), (1, 2, "部屋".encode())])
        self.assertEqual(len(frames[1].payload), 32)
        body, frames = await self.request(2, "部屋", username="ボブ", password="秘密")
        self.assertEqual(body["status"], 200)
        self.assertNotEqual(frames[1].payload, b"")
        body, frames = await self.request(3, "")
        self.assertEqual(body, {"status": 200})
        listing = wire.decode_json(frames[1].payload)
        self.assertEqual(listing, [{"name": "部屋", "members": 2, "capacity": 3, "protected": True}])
        self.assertNotIn("秘密".encode(), frames[1].payload)

    async def test_errors(self) -> None:
        """400, 401, 404, 409, 503, each a single state-1 frame with a message."""
        await self.request(1, "r", username="alice", password="pw", capacity=2)
        cases = [
            ((1, "r"), {"username": ""}, 400),
            ((2, "r"), {"username": "bob"}, 401),
            ((2, "r"), {"username": "bob", "password": "nope"}, 401),
            ((2, "nowhere"), {"username": "bob"}, 404),
            ((1, "r"), {"username": "bob"}, 409),
            ((2, "r"), {"username": "alice", "password": "pw"}, 409),
        ]
        for (op, room), payload, status in cases:
            body, frames = await self.request(op, room, **payload)
            self.assertEqual((body["status"], len(frames)), (status, 1), (op, room, payload))
            self.assertTrue(body["message"])
        await self.request(2, "r", username="bob", password="pw")
        body, _ = await self.request(2, "r", username="carol", password="pw")
        self.assertEqual(body["status"], 503)

    async def test_413(self) -> None:
        """A declared payload over --max-payload is refused without the body being sent."""
        header = bytes((1, 1, 0)) + (65537).to_bytes(29, "big") + b"r"
        frames, _ = wire.decode_frames(await tcrp_raw(self.tcp_port, header))
        self.assertEqual(status_of(frames)["status"], 413)

    async def test_429(self) -> None:
        """Too many requests from one address."""
        self.service.tcrp.requests.burst = 2  # type: ignore[attr-defined]
        self.service.tcrp.requests.rate = 0.001  # type: ignore[attr-defined]
        statuses = [(await self.request(3, ""))[0]["status"] for _ in range(3)]
        self.assertEqual(statuses, [200, 200, 429])

    async def test_connection_cap(self) -> None:
        """Idle connections from one IP beyond the cap get 429; others are served; counts return to zero."""
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        from tests.helpers import ReplyCollector

        self.service.tcrp.max_connections_per_ip = 5  # type: ignore[attr-defined]
        idle = []
        for _ in range(5):
            proto = ReplyCollector()
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.tcp_port, bindAddress=("127.0.0.2", 0)), proto)
            idle.append(proto)
        await wait_until(lambda: self.service.tcrp.connections.get("127.0.0.2") == 5)  # type: ignore[attr-defined]
        frames, _ = wire.decode_frames(await tcrp_raw(self.tcp_port, b"", source="127.0.0.2"))
        self.assertEqual(status_of(frames)["status"], 429)
        self.assertEqual((await self.request(3, ""))[0]["status"], 200)
        for proto in idle:
            proto.transport.loseConnection()  # type: ignore[union-attr]
            await proto.done
        await wait_until(lambda: self.service.tcrp.connections == {})  # type: ignore[attr-defined]

    async def test_bad_frame(self) -> None:
        """Garbage gets a 400 and a closed connection."""
        data = bytes((0, 9, 0)) + (3).to_bytes(29, "big") + b"xyz"
        frames, _ = wire.decode_frames(await tcrp_raw(self.tcp_port, data))
        self.assertEqual(status_of(frames)["status"], 400)


class RelayEndToEnd(ServerCase):
    """Chat over real UDP sockets."""

    async def test_relay_to_others_not_self(self) -> None:
        """A message reaches every other member exactly once, and not its sender."""
        host, bob, carol = await self.room("r", "bob", "carol")
        host.send("こんにちは 🌸".encode())
        await wait_until(lambda: bob.peer.chats() and carol.peer.chats())
        await self.barrier(bob, host)
        self.assertEqual(bob.peer.chats(), [("host", "こんにちは 🌸")])
        self.assertEqual(carol.peer.chats(), [("host", "こんにちは 🌸")])
        self.assertEqual(host.peer.chats(), [])

    async def test_welcome_and_join(self) -> None:
        """welcome on bind and on every hello; join once to the others."""
        host = await self.member(1, "r", "host")
        welcome = host.peer.notices("welcome")[0]
        self.assertEqual(welcome, {"event": "welcome", "room": "r", "user": "host", "host": "host", "members": ["host"]})
        bob = await self.member(2, "r", "bob")
        self.assertEqual(bob.peer.notices("welcome")[0]["members"], ["host", "bob"])
        await wait_until(lambda: host.peer.notices("join"))
        bob.send(wire.HELLO)
        await wait_until(lambda: len(bob.peer.notices("welcome")) == 2)
        await self.barrier(bob, host)
        self.assertEqual(host.peer.notices("join"), [{"event": "join", "user": "bob"}])

    async def test_isolation(self) -> None:
        """Two rooms do not hear each other."""
        a_host, a_guest = await self.room("a", "guest")
        b_host, b_guest = await self.room("b", "guest")
        a_host.send(b"to a")
        b_host.send(b"to b")
        await wait_until(lambda: a_guest.peer.chats() and b_guest.peer.chats())
        await self.barrier(a_host, a_guest)
        await self.barrier(b_host, b_guest)
        self.assertEqual(a_guest.peer.chats(), [("host", "to a")])
        self.assertEqual(b_guest.peer.chats(), [("host", "to b")])

    async def test_token_ip_binding(self) -> None:
        """A token issued to 127.0.0.1 used from 127.0.0.2 is dropped and does not bind."""
        host, = await self.room("r")
        bob = await self.member(2, "r", "bob", hello=False)
        thief, port = listen_udp("127.0.0.2")
        self.addCleanup(port.stopListening)
        port.write(wire.encode_datagram(b"r", bob.token, wire.HELLO), ("127.0.0.1", self.udp_port))
        port.write(wire.encode_datagram(b"r", bob.token, b"spoofed"), ("127.0.0.1", self.udp_port))
        await wait_until(lambda: self.stats.dropped["wrong_ip"] == 2)
        await bob.hello()
        await self.barrier(bob, host)
        self.assertEqual(thief.received, [])
        self.assertEqual(host.peer.chats(), [])

    async def test_token_from_other_ip(self) -> None:
        """A member that got its token from 127.0.0.2 chats from 127.0.0.2."""
        host, = await self.room("r")
        bob = await self.member(2, "r", "bob", source="127.0.0.2")
        bob.send(b"from .2")
        await wait_until(lambda: host.peer.chats() == [("bob", "from .2")])

    async def test_bound_port_lock(self) -> None:
        """After binding, the same token from another port of the same IP is dropped."""
        host, bob = await self.room("r", "bob")
        other, port = listen_udp("127.0.0.1")
        self.addCleanup(port.stopListening)
        port.write(wire.encode_datagram(b"r", bob.token, b"hijack"), ("127.0.0.1", self.udp_port))
        await wait_until(lambda: self.stats.dropped["wrong_port"] == 1)
        await self.barrier(bob, host)
        self.assertEqual(host.peer.chats(), [])
        self.assertEqual(other.received, [])

    async def test_drop_rules(self) -> None:
        """Each drop rule: silent, counted, and the room carries on."""
        host, bob = await self.room("r", "bob")
        junk, port = listen_udp("127.0.0.1")
        self.addCleanup(port.stopListening)
        server = ("127.0.0.1", self.udp_port)
        datagrams = {
            "oversize": wire.encode_datagram(b"r", bob.token, b"x" * 4000) + b"x" * 200,
            "malformed": b"\x05\x20r",
            "unknown_token": wire.encode_datagram(b"r", b"0" * 32, b"x"),
            "wrong_room": wire.encode_datagram(b"s", bob.token, b"x"),
        }
        for data in datagrams.values():
            port.write(data, server)
        bob.send(b"\xff\xfe bad utf-8")
        bob.send(b"\x00dance")
        for reason in [*datagrams, "bad_utf8", "bad_control"]:
            await wait_until(lambda reason=reason: self.stats.dropped[reason] == 1, what=reason)
        await self.barrier(bob, host)
        self.assertEqual(junk.received, [])
        self.assertEqual(host.peer.chats(), [])
        self.assertEqual(bob.peer.received, [])

    async def test_too_long(self) -> None:
        """too_long to the sender only, nothing relayed."""
        body, frames = await self.request(1, "r", username="h")
        host = Member(self, "r", "h", frames[1].payload, "127.0.0.1")
        await host.hello()
        long = await self.member(2, "r", "L" * 250)
        long.send(b"x" * (4093 - 250 + 1))
        await wait_until(lambda: long.peer.notices("error"))
        self.assertEqual(long.peer.notices("error"), [{"event": "error", "code": "too_long"}])
        await self.barrier(long, host)
        self.assertEqual(host.peer.chats(), [])

    async def test_largest_message(self) -> None:
        """The largest legal text arrives intact: a 4094-byte relayed datagram."""
        host, bob = await self.room("r", "bob")
        limit = wire.max_text(b"r", bob.token, b"bob")
        text = ("あ" * 2000 + "x" * 4000).encode()[:limit]
        text = text.decode("utf-8", "ignore").encode()
        text += b"x" * (limit - len(text))
        bob.send(text)
        await wait_until(lambda: host.peer.received)
        self.assertEqual(host.peer.received, [wire.encode_relayed(b"bob", text)])
        self.assertLessEqual(len(host.peer.received[0]), 4094)
        self.assertEqual(len(wire.encode_datagram(b"r", bob.token, text)), 4096)

    async def test_who(self) -> None:
        """\\x00who answers the asker with the members and host."""
        host, bob = await self.room("r", "bob")
        bob.send(wire.WHO)
        await wait_until(lambda: bob.peer.notices("members"))
        self.assertEqual(bob.peer.notices("members"), [{"event": "members", "members": ["host", "bob"], "host": "host"}])

    async def test_leave(self) -> None:
        """\\x00leave: the others get leave/left; the token no longer works."""
        host, bob, carol = await self.room("r", "bob", "carol")
        bob.send(wire.LEAVE)
        await wait_until(lambda: host.peer.notices("leave") and carol.peer.notices("leave"))
        self.assertEqual(carol.peer.notices("leave"), [{"event": "leave", "user": "bob", "reason": "left"}])
        bob.send(b"still here?")
        await wait_until(lambda: self.stats.dropped["unknown_token"] == 1)
        body, _ = await self.request(2, "r", username="bob")
        self.assertEqual(body["status"], 200, "the name is free again")

    async def test_host_leave(self) -> None:
        """The host leaving closes the room: closed/host_left, tokens gone, name free."""
        host, bob, carol = await self.room("r", "bob", "carol")
        host.send(wire.LEAVE)
        for m in (bob, carol):
            await wait_until(lambda m=m: m.peer.notices("closed"))
            self.assertEqual(m.peer.notices("closed"), [{"event": "closed", "reason": "host_left"}])
        bob.send(b"hello?")
        await wait_until(lambda: self.stats.dropped["unknown_token"] == 1)
        self.assertEqual((await self.request(1, "r", username="bob"))[0]["status"], 200)

    async def test_send_failure_does_not_stop_fan_out(self) -> None:
        """A recipient whose send fails is skipped; the others still get the message."""
        host, bob, carol = await self.room("r", "bob", "carol")
        relay = self.service.relay  # type: ignore[attr-defined]
        real = relay._sendto
        bad = bob.port.getHost().port

        def flaky(data: bytes, addr: tuple[str, int]) -> Any:
            if addr[1] == bad:
                raise OSError(1, "injected")
            return real(data, addr)

        for member in self.rooms.tokens.values():
            member.route = UdpRoute(flaky, member.addr)
        relay._fan = fanout.python_fan_out  # the Python loop
        host.send(b"one")
        await wait_until(lambda: carol.peer.chats() == [("host", "one")])
        self.assertEqual(self.stats.send_errors, 1)

    async def test_native_send_failure_does_not_stop_fan_out(self) -> None:
        """The same with the C loop: a real failed sendto (a bad address) skips only that member."""
        if not fanout.NATIVE:
            raise unittest.SkipTest("the C fan-out was not built")
        host, bob, carol = await self.room("r", "bob", "carol")
        self.assertIsInstance(self.rooms.tokens[bob.token].sockaddr, bytes)
        self.rooms.tokens[bob.token].sockaddr = b"\x02\x00"  # too short: EINVAL
        host.send(b"one")
        await wait_until(lambda: carol.peer.chats() == [("host", "one")])
        self.assertEqual(self.stats.send_errors, 1)
        self.assertEqual(self.stats.relayed, 1)
        self.assertEqual(bob.peer.chats(), [])


class LifetimeEndToEnd(ServerCase):
    """Timeouts, keepalives and expiry, with --timeout 1."""

    server_args = ["--timeout", "1"]

    async def test_idle_timeout_and_keepalive(self) -> None:
        """A member kept alive stays; a silent one is disconnected and the others told."""
        host, bob = await self.room("r", "bob")
        for _ in range(8):  # 1.6 s of keepalives from the host only
            host.send(b"")
            await sleep(0.2)
        await wait_until(lambda: bob.peer.notices("disconnected"), 3)
        self.assertEqual(bob.peer.notices("disconnected"), [{"event": "disconnected", "reason": "timeout"}])
        await wait_until(lambda: host.peer.notices("leave"))
        self.assertEqual(host.peer.notices("leave"), [{"event": "leave", "user": "bob", "reason": "timeout"}])
        self.assertIn(host.token, self.rooms.tokens)
        self.assertNotIn(bob.token, self.rooms.tokens)

    async def test_host_timeout_closes(self) -> None:
        """A host that times out closes the room."""
        host, bob = await self.room("r", "bob")
        for _ in range(8):
            bob.send(b"")
            await sleep(0.2)
        await wait_until(lambda: bob.peer.notices("closed"), 3)
        self.assertEqual(bob.peer.notices("closed"), [{"event": "closed", "reason": "host_left"}])
        self.assertEqual(host.peer.notices("disconnected"), [{"event": "disconnected", "reason": "timeout"}])
        self.assertEqual(self.rooms.rooms, {})

    async def test_unbound_token_expires(self) -> None:
        """A token never used over UDP expires after the timeout."""
        host, = await self.room("r")
        bob = await self.member(2, "r", "bob", hello=False)
        for _ in range(25):  # at most 5 s of keepalives from the host only, until bob's token expires
            host.send(b"")
            if bob.token not in self.rooms.tokens:
                break
            await sleep(0.2)
        self.assertNotIn(bob.token, self.rooms.tokens)
        self.assertIn(host.token, self.rooms.tokens)
        bob.send(wire.HELLO)
        await wait_until(lambda: self.stats.dropped["unknown_token"] == 1)
        self.assertEqual(bob.peer.received, [])


class LobbyEndToEnd(ServerCase):
    """The stage-1 lobby on its own port."""

    async def test_lobby(self) -> None:
        """Same bytes to every other address heard from; not to the sender."""
        peers = [listen_udp("127.0.0.1") for _ in range(3)]
        for _, port in peers:
            self.addCleanup(port.stopListening)
        lobby = ("127.0.0.1", self.lobby_port)
        for i, (_, port) in enumerate(peers):
            port.write(wire.encode_relayed(b"u%d" % i, b""), lobby)
        await wait_until(lambda: len(self.service.lobby.clients) == 3)  # type: ignore[attr-defined]
        data = wire.encode_relayed("ゆう".encode(), "やあ".encode())
        peers[0][1].write(data, lobby)
        await wait_until(lambda: peers[1][0].received and peers[2][0].received)
        self.assertEqual(peers[1][0].received, [data])
        self.assertEqual(peers[2][0].received, [data])
        peers[1][1].write(wire.encode_relayed(b"u1", b"back"), lobby)
        await wait_until(lambda: peers[0][0].received)
        self.assertEqual(peers[0][0].received, [b"\x02u1back"])


class ShutdownEndToEnd(ServerCase):
    """Stopping the service tells every bound member."""

    async def test_shutdown(self) -> None:
        """closed/shutdown reaches every bound member of every room."""
        members = await self.room("a", "bob") + await self.room("b", "carol")
        peers: list[UDPPeer] = [m.peer for m in members]
        await self.service.stopService()
        await wait_until(lambda: all(p.notices("closed") for p in peers))
        for p in peers:
            self.assertEqual(p.notices("closed"), [{"event": "closed", "reason": "shutdown"}])


class IPv6EndToEnd(ServerCase):
    """--interface :: serves IPv6 and IPv4-mapped clients with the same token/IP rules."""

    server_args = ["--interface", "::"]

    async def test_mapped_ipv4(self) -> None:
        """IPv4 clients of an IPv6 socket: tokens, binding and the IP check still hold."""
        host, bob = await self.room("r", "bob")
        self.assertEqual(self.rooms.tokens[bob.token].ip, "127.0.0.1")
        self.assertTrue(self.rooms.tokens[bob.token].addr[0].startswith("::ffff:"))
        host.send(b"over v6")
        await wait_until(lambda: bob.peer.chats() == [("host", "over v6")])
        thief, port = listen_udp("127.0.0.2")
        self.addCleanup(port.stopListening)
        port.write(wire.encode_datagram(b"r", bob.token, b"spoof"), ("127.0.0.1", self.udp_port))
        await wait_until(lambda: self.stats.dropped["wrong_ip"] == 1)

    async def test_native_ipv6(self) -> None:
        """A client on ::1 chats with one on 127.0.0.1."""
        from twisted.internet.endpoints import TCP6ClientEndpoint, connectProtocol

        from tests.helpers import ReplyCollector, request_bytes

        host, = await self.room("r")
        endpoint = TCP6ClientEndpoint(reactor, "::1", self.tcp_port, timeout=5)
        proto = ReplyCollector()
        await connectProtocol(endpoint, proto)
        proto.transport.write(request_bytes(2, "r", {"username": "six"}))  # type: ignore[union-attr]
        frames, _ = wire.decode_frames(await proto.done)
        self.assertEqual(status_of(frames)["status"], 200)
        token = frames[1].payload
        self.assertEqual(self.rooms.tokens[token].ip, "::1")
        peer = UDPPeer()
        port = reactor.listenUDP(0, peer, interface="::1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        port.write(wire.encode_datagram(b"r", token, b"hello from six"), ("::1", self.udp_port))
        await wait_until(lambda: host.peer.chats() == [("six", "hello from six")])
        host.send(b"hi six")
        await wait_until(lambda: ("host", "hi six") in peer.chats())


class SocketTests(ServerCase):
    """The relay's socket set-up."""

    def test_receive_buffer(self) -> None:
        """The relay asks for a receive buffer larger than Linux's 208 KiB default."""
        import socket

        sock = self.service.getServiceNamed("udp")._port.socket  # type: ignore[attr-defined]
        with open("/proc/sys/net/core/rmem_max") as f:
            cap = int(f.read())
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.assertGreaterEqual(granted, min(2 * cap, 2 * 1024 * 1024))


class MetricsEndToEnd(ServerCase):
    """--metrics serves /metrics; the counters move by the right amounts."""

    server_args = ["--metrics", "0"]

    async def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        from prometheus_client.parser import text_string_to_metric_families

        port = self.service.getServiceNamed("metrics")._port.getHost().port  # type: ignore[attr-defined]
        reply = await tcrp_raw(port, b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        head, _, body = reply.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.0 200"), head)
        self.assertIn(b"content-type: text/plain", head.lower())
        text = body.decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples}

    async def test_counts(self) -> None:
        """Rooms, members, requests, relayed, dropped, removed: after real traffic."""
        before = await self.scrape()
        self.assertEqual(before[("ocm_rooms", ())], 0)
        host, bob, carol = await self.room("r", "bob", "carol", password="pw")
        await self.request(2, "r", username="dave", password="nope")
        host.send(b"one")
        host.send(b"two")
        await wait_until(lambda: len(bob.peer.chats()) == 2 and len(carol.peer.chats()) == 2)
        junk, port = listen_udp()
        self.addCleanup(port.stopListening)
        port.write(wire.encode_datagram(b"r", b"0" * 32, b"x"), ("127.0.0.1", self.udp_port))
        await wait_until(lambda: self.stats.dropped["unknown_token"] == 1)
        carol.send(wire.LEAVE)
        await wait_until(lambda: bob.peer.notices("leave"))
        after = await self.scrape()
        self.assertEqual(after[("ocm_rooms", ())], 1)
        self.assertEqual(after[("ocm_members", ())], 2)
        self.assertEqual(after[("ocm_members_bound", ())], 2)
        self.assertEqual(after[("ocm_tcrp_requests_total", (("operation", "create"), ("status", "200")))], 1)
        self.assertEqual(after[("ocm_tcrp_requests_total", (("operation", "join"), ("status", "200")))], 2)
        self.assertEqual(after[("ocm_tcrp_requests_total", (("operation", "join"), ("status", "401")))], 1)
        self.assertEqual(after[("ocm_datagrams_relayed_total", ())], 4)
        self.assertEqual(after[("ocm_datagrams_dropped_total", (("reason", "unknown_token"),))], 1)
        self.assertEqual(after[("ocm_datagrams_dropped_total", (("reason", "wrong_ip"),))], 0)
        self.assertEqual(after[("ocm_members_removed_total", (("reason", "left"),))], 1)
        # In: 3 hellos (more if one was retried), 2 chats, the junk, the leave.
        self.assertGreaterEqual(after[("ocm_datagrams_received_total", ())], 3 + 2 + 1 + 1)
        # Out: 3 welcomes, 3 join notices (bob's to host, carol's to host and bob), 2 leave notices.
        self.assertGreaterEqual(after[("ocm_notices_sent_total", ())], 3 + 3 + 2)

    async def test_metrics_on_loopback_only_by_default(self) -> None:
        """The metrics port listens on 127.0.0.1 unless told otherwise."""
        self.assertEqual(self.service.getServiceNamed("metrics")._port.getHost().host, "127.0.0.1")  # type: ignore[attr-defined]
