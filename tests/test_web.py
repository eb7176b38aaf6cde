"""
The WebSocket gateway (SPEC section 8) on a whole server built by
makeService: browsers' bytes over a real WebSocket on 127.0.0.1, beside UDP
members; bad input; the page's headers.
"""

from __future__ import annotations

import json

from twisted.internet import reactor, task
from twisted.trial import unittest

from ocm import wire
from ocm.web.gateway import client_ip
from tests.helpers import ServerCase, WebSocketClient, masked_frame, request_bytes, wait_until, websocket
from tests.test_cluster import ClusterCase


class WebCase(ServerCase):
    """A server with --web."""

    server_args = ["--web", "0", "--timeout", "5"]

    async def setUp(self) -> None:
        await super().setUp()
        self.web_port = self.service.getServiceNamed("web")._port.getHost().port  # type: ignore[attr-defined]

    async def ws(self, origin: str | None = None, **headers: str) -> WebSocketClient:
        client = await websocket(self.web_port, origin=origin, headers=headers)
        self.addCleanup(lambda: client.transport.loseConnection() if client.transport else None)  # type: ignore[union-attr]
        return client

    async def web_member(self, operation: int, room: str, name: str, **payload: object) -> tuple[WebSocketClient, bytes]:
        """A browser member that created or joined C{room} and is bound (welcome received)."""
        client = await self.ws()
        self.assertEqual(client.status, 101)
        client.send(request_bytes(operation, room, {"username": name, **payload}))
        await wait_until(lambda: len(client.frames()) >= 2 or client.closed.called, 5, "the answer")
        frames = client.frames()
        self.assertEqual(json.loads(frames[0].payload)["status"], 200, frames)
        token = frames[1].payload
        client.send(wire.encode_datagram(room.encode(), token, wire.HELLO))
        await wait_until(lambda: client.notices("welcome"), 5, "the welcome")
        return client, token


class Gateway(WebCase):
    """A web member is a relay member like any other."""

    async def test_web_and_udp_members_chat(self) -> None:
        """Create over the WebSocket, a UDP member joins: notices and chat both ways, exact bytes."""
        browser, token = await self.web_member(1, "部屋", "ブラウザ")
        self.assertEqual(browser.notices("welcome")[0], {"event": "welcome", "room": "部屋", "user": "ブラウザ", "host": "ブラウザ", "members": ["ブラウザ"]})
        udp = await self.member(2, "部屋", "udp")
        await wait_until(lambda: browser.notices("join"), 5, "the join notice")
        self.assertEqual(browser.notices("join"), [{"event": "join", "user": "udp"}])
        udp.send("こんにちは".encode())
        await wait_until(lambda: browser.chats(), 5, "UDP -> web")
        self.assertEqual(browser.messages[-1], wire.sender_prefix(b"udp") + "こんにちは".encode())
        browser.send(wire.encode_datagram("部屋".encode(), token, b"hi from the web"))
        await wait_until(lambda: udp.peer.chats() == [("ブラウザ", "hi from the web")], 5, "web -> UDP")
        self.assertEqual(self.service.relay.connection_counts(), {"web": 1})  # type: ignore[attr-defined]

    async def test_message_sizes(self) -> None:
        """
        Datagrams to a web member across the 7-bit/16-bit length boundary
        and up to the largest, each one binary message with its exact
        bytes, written as plain frames (autobahn's sendMessage is not
        needed for them).
        """
        browser, _ = await self.web_member(1, "r", "web")
        udp = await self.member(2, "r", "udp")
        await wait_until(lambda: browser.notices("join"), 5, "the join notice")
        (route,) = self.service.relay.connections.values()  # type: ignore[attr-defined]
        through_autobahn: list[bytes] = []
        route.protocol.sendMessage = lambda data, isBinary: through_autobahn.append(data)
        prefix = wire.sender_prefix(b"udp")
        largest = len(prefix) + wire.max_text(b"r", b"t" * 32, b"udp")  # SPEC section 2
        sizes = [125, 126, 127, 1000, largest]  # of the relayed datagram
        for size in sizes:
            udp.send(b"x" * (size - len(prefix)))
        await wait_until(lambda: len(browser.chats()) == len(sizes), 5, "every size")
        self.assertEqual([m for m in browser.messages if m.startswith(prefix)], [prefix + b"x" * (size - len(prefix)) for size in sizes])
        self.assertEqual(through_autobahn, [])

    async def test_datagrams_from_the_browser(self) -> None:
        """
        A browser's datagrams in every arrangement TCP may give them: many
        frames in one read, 7-bit and 16-bit lengths, a frame cut across
        reads, a ping, a fragmented message and an empty one between them:
        every chat arrives, in order.
        """
        browser, token = await self.web_member(1, "r", "web")
        udp = await self.member(2, "r", "udp")
        await wait_until(lambda: browser.notices("join"), 5, "the join notice")

        def chat(text: bytes) -> bytes:
            return masked_frame(0x2, wire.encode_datagram(b"r", token, text))

        texts = [b"one", b"x" * 200, b"three"]
        browser.transport.write(b"".join(chat(t) for t in texts))  # type: ignore[union-attr]
        await wait_until(lambda: len(udp.peer.chats()) == 3, 5, "three chats")
        cut = chat(b"cut across reads")
        ping = masked_frame(0x9, b"p")
        datagram = wire.encode_datagram(b"r", token, b"in two fragments")
        last = chat(b"last")
        writes = [
            chat(b"four") + cut[:3],
            cut[3:] + ping + chat(b"after the ping"),
            masked_frame(0x2, datagram[:5], fin=False) + masked_frame(0x0, datagram[5:]),
            masked_frame(0x2, b"") + last[:-1],
            last[-1:],
        ]
        for data in writes:  # each its own read, most likely
            browser.transport.write(data)  # type: ignore[union-attr]
            await task.deferLater(reactor, 0.02, lambda: None)
        expected = [t.decode() for t in texts] + ["four", "cut across reads", "after the ping", "in two fragments", "last"]
        await wait_until(lambda: len(udp.peer.chats()) == len(expected), 5, "every chat")
        self.assertEqual([text for _, text in udp.peer.chats()], expected)
        self.assertEqual(self.service.relay.connection_counts(), {"web": 1})  # type: ignore[attr-defined]

    async def test_closing_the_websocket_leaves(self) -> None:
        """The WebSocket closing removes its member: the others get leave/left."""
        host = await self.member(1, "r", "host")
        browser, _ = await self.web_member(2, "r", "web")
        await wait_until(lambda: host.peer.notices("join"), 5, "join")
        browser.transport.loseConnection()  # type: ignore[union-attr]
        await wait_until(lambda: host.peer.notices("leave"), 5, "leave")
        self.assertEqual(host.peer.notices("leave"), [{"event": "leave", "user": "web", "reason": "left"}])
        self.assertEqual(self.service.relay.connections, {})  # type: ignore[attr-defined]

    async def test_member_removed_closes_the_websocket(self) -> None:
        """The host leaves: the web member gets closed/host_left, then its WebSocket closes."""
        host = await self.member(1, "r", "host")
        browser, _ = await self.web_member(2, "r", "web")
        host.send(wire.LEAVE)
        await browser.closed
        self.assertEqual(browser.notices("closed"), [{"event": "closed", "reason": "host_left"}])
        self.assertEqual(browser.close_code, 1000)

    async def test_list_then_closed(self) -> None:
        """A list is answered with the TCP frames, then the WebSocket closes."""
        await self.member(1, "r", "host", password="pw", capacity=4)
        browser = await self.ws()
        browser.send(request_bytes(3, ""))
        await browser.closed
        frames = browser.frames()
        self.assertEqual([(f.operation, f.state) for f in frames], [(3, 1), (3, 2)])
        self.assertEqual(json.loads(frames[1].payload), [{"name": "r", "members": 1, "capacity": 4, "protected": True}])

    async def test_refusal_then_closed(self) -> None:
        """A refusal: the status frame alone, then the close; no member is left behind."""
        browser = await self.ws()
        browser.send(request_bytes(2, "nowhere", {"username": "x"}))
        await browser.closed
        self.assertEqual([json.loads(f.payload)["status"] for f in browser.frames()], [404])
        self.assertEqual(self.rooms.tokens, {})

    async def test_checks_hold(self) -> None:
        """The relay's checks apply: another room's token is dropped, the web member's IP is its peer."""
        browser, token = await self.web_member(1, "r", "web")
        browser.send(wire.encode_datagram(b"other", token, b"x"))
        await wait_until(lambda: self.stats.dropped["wrong_room"] == 1, 5, "the drop")
        member = self.rooms.tokens[token]
        self.assertEqual(member.ip, "127.0.0.1")
        udp = await self.member(2, "r", "udp")
        # a UDP datagram with the web member's token: bound elsewhere, dropped
        udp.port.write(wire.encode_datagram(b"r", token, b"spoof"), ("127.0.0.1", self.udp_port))
        await wait_until(lambda: self.stats.dropped["wrong_port"] == 1, 5, "the drop")


class OneMemberAConnection(WebCase):
    """A WebSocket carries the datagrams of the member it created or joined, and no other's."""

    async def test_other_token_dropped(self) -> None:
        browser, _ = await self.web_member(1, "r", "web")
        body, frames = await self.request(2, "r", username="other")  # same IP, never bound
        other = frames[1].payload
        browser.send(wire.encode_datagram(b"r", other, wire.HELLO))
        await wait_until(lambda: self.stats.dropped["wrong_port"] == 1, 5, "the drop")
        self.assertIsNone(self.rooms.tokens[other].route)
        self.assertEqual(browser.notices("welcome")[1:], [])


class Keepalive(WebCase):
    """Pings: a browser that answers stays; one that does not is dropped and its member leaves."""

    async def test_pings(self) -> None:
        host = await self.member(1, "r", "host")
        alive, _ = await self.web_member(2, "r", "alive")
        silent, _ = await self.web_member(2, "r", "silent")
        silent.answer_pings = False
        gateway = self.service.getServiceNamed("web").gateway  # type: ignore[attr-defined]
        gateway.ping()
        await wait_until(lambda: alive.pings == 1 and silent.pings == 1, 5, "the pings")
        await wait_until(lambda: not any(p.awaiting_pong for p in gateway.open if p.route.member.name == "alive"), 5, "the pong")
        gateway.ping()  # the silent one missed the last: dropped
        await silent.closed
        await wait_until(lambda: host.peer.notices("leave"), 5, "its leave")
        self.assertEqual(host.peer.notices("leave"), [{"event": "leave", "user": "silent", "reason": "left"}])
        self.assertFalse(alive.closed.called)
        from ocm.metrics import OcmCollector

        families = {m.name: m for m in OcmCollector(self.stats, self.rooms, relay=self.service.relay).collect()}  # type: ignore[attr-defined]
        self.assertEqual({s.labels["kind"]: s.value for s in families["ocm_members_connected"].samples}, {"tunnel": 0, "web": 1})


class BadInput(WebCase):
    """Oversize messages, foreign origins, text frames, too many connections."""

    server_args = ["--web", "0", "--max-payload", "1000", "--max-connections-per-ip", "3"]

    async def test_oversize_request_closes_with_1009(self) -> None:
        """A first message over the request limit closes with 1009 before its payload is read."""
        browser = await self.ws()
        # a frame header declaring 32 MiB, and only a little of it
        browser.transport.write(bytes([0x82, 0x80 | 127]) + (32 << 20).to_bytes(8, "big") + b"mask" + b"x" * 100)  # type: ignore[union-attr]
        await browser.closed
        self.assertEqual(browser.close_code, 1009, browser.messages)

    async def test_oversize_datagram_closes_with_1009(self) -> None:
        """After the join, a message over 4096 bytes closes with 1009; the member leaves."""
        host = await self.member(1, "r", "host")
        browser, token = await self.web_member(2, "r", "web")
        browser.send(bytes([1, len(token)]) + b"r" + token + b"x" * 5000)
        await browser.closed
        self.assertEqual(browser.close_code, 1009, browser.messages)
        await wait_until(lambda: host.peer.notices("leave"), 5, "leave")

    async def test_declared_payload_too_large_is_413(self) -> None:
        """A request declaring more payload than --max-payload: 413, as over TCP."""
        browser = await self.ws()
        browser.send(wire.encode_frame(1, 0, b"r", b"x" * 1001))
        await browser.closed
        self.assertEqual([json.loads(f.payload)["status"] for f in browser.frames()], [413])

    async def test_malformed_request_is_400(self) -> None:
        """Not a whole frame: 400, then closed."""
        browser = await self.ws()
        browser.send(b"hello")
        await browser.closed
        self.assertEqual([json.loads(f.payload)["status"] for f in browser.frames()], [400])

    async def test_text_message_closes(self) -> None:
        """Text messages are not part of the contract: closed with 1003."""
        browser = await self.ws()
        browser.frame(0x1, b"{}")
        await browser.closed
        self.assertEqual(browser.close_code, 1003)

    async def test_foreign_origin_is_403(self) -> None:
        """Another origin's page may not open the WebSocket; the page's own may."""
        foreign = await self.ws(origin="https://evil.example")
        self.assertEqual(foreign.status, 403)
        own = await self.ws(origin=f"http://127.0.0.1:{self.web_port}")
        self.assertEqual(own.status, 101)
        self.assertEqual(self.stats.web_refused["origin"], 1)

    async def test_connections_per_ip(self) -> None:
        """WebSockets count against --max-connections-per-ip, with the TCRP connections."""
        clients = [await self.ws() for _ in range(3)]
        self.assertEqual([c.status for c in clients], [101] * 3)
        refused = await self.ws()
        self.assertEqual(refused.status, 429)
        clients[0].transport.loseConnection()  # type: ignore[union-attr]
        await wait_until(lambda: self.service.tcrp.connections.get("127.0.0.1", 0) == 2, 5, "one closed")  # type: ignore[attr-defined]
        again = await self.ws()
        self.assertEqual(again.status, 101)


class AllowedOrigins(WebCase):
    """--web-origin adds origins."""

    server_args = ["--web", "0", "--web-origin", "https://chat.example.org, https://other.example"]

    async def test_allowed(self) -> None:
        self.assertEqual((await self.ws(origin="https://chat.example.org")).status, 101)
        self.assertEqual((await self.ws(origin="https://other.example")).status, 101)
        self.assertEqual((await self.ws(origin="https://third.example")).status, 403)


class Page(WebCase):
    """The page and its headers."""

    async def test_page_and_headers(self) -> None:
        """GET / is the page, with CSP, nosniff and no referrer; no directory listing."""
        from twisted.internet import reactor
        from twisted.web.client import Agent, readBody

        agent = Agent(reactor)
        response = await agent.request(b"GET", f"http://127.0.0.1:{self.web_port}/".encode())
        body = await readBody(response)
        self.assertEqual(response.code, 200)
        self.assertIn(b"<html", body.lower())
        headers = response.headers
        self.assertEqual(headers.getRawHeaders(b"content-security-policy"), [b"default-src 'self'; frame-ancestors 'none'"])
        self.assertEqual(headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])
        self.assertEqual(headers.getRawHeaders(b"referrer-policy"), [b"no-referrer"])
        missing = await agent.request(b"GET", f"http://127.0.0.1:{self.web_port}/no-such-file".encode())
        await readBody(missing)
        self.assertEqual(missing.code, 404)
        self.assertEqual(missing.headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])


class ClientIP(unittest.TestCase):
    """X-Forwarded-For, trusted only from the proxies named."""

    def test_untrusted_peer(self) -> None:
        self.assertEqual(client_ip("192.0.2.1", "198.51.100.7", frozenset()), "192.0.2.1")

    def test_trusted_proxy(self) -> None:
        trusted = frozenset({"10.0.0.1", "10.0.0.2"})
        self.assertEqual(client_ip("10.0.0.1", "198.51.100.7", trusted), "198.51.100.7")
        self.assertEqual(client_ip("10.0.0.1", "203.0.113.9, 198.51.100.7, 10.0.0.2", trusted), "198.51.100.7")
        self.assertEqual(client_ip("::ffff:10.0.0.1", "::ffff:198.51.100.7", trusted), "198.51.100.7")
        self.assertEqual(client_ip("10.0.0.1", "not an address", trusted), "10.0.0.1")
        self.assertEqual(client_ip("10.0.0.1", None, trusted), "10.0.0.1")


class SecureWeb(WebCase):
    """In secure mode the web port is HTTPS/WSS with the TCRP port's certificate; web datagrams are not sealed."""

    async def setUp(self) -> None:
        import os

        from tests.certs import write_server_files

        self.files = write_server_files(os.path.abspath(self.mktemp()))
        self.server_args = ["--web", "0", "--tls-cert", self.files["server.pem"], "--tls-key", self.files["server.key"]]
        await super().setUp()

    async def test_wss_chat_unsealed(self) -> None:
        """Two browser members over WSS: plain SPEC datagrams both ways; a plain ws:// upgrade gets nowhere."""
        from ocm.tls import client_options

        tls = client_options("127.0.0.1", self.files["ca.pem"])
        members = []
        for operation, name in ((1, "host"), (2, "guest")):
            client = await websocket(self.web_port, tls=tls)
            self.addCleanup(lambda c=client: c.transport.loseConnection() if c.transport else None)  # type: ignore[union-attr]
            self.assertEqual(client.status, 101)
            client.send(request_bytes(operation, "r", {"username": name}))
            await wait_until(lambda c=client: len(c.frames()) >= 2, 5, "the answer")
            body = json.loads(client.frames()[0].payload)
            self.assertEqual(body["status"], 200)
            self.assertIn("key", body)  # the member has one; the page does not use it
            token = client.frames()[1].payload
            client.send(wire.encode_datagram(b"r", token, wire.HELLO))
            await wait_until(lambda c=client: c.notices("welcome"), 5, "the welcome, unsealed")
            members.append((client, token))
        (host, host_token), (guest, _) = members
        host.send(wire.encode_datagram(b"r", host_token, "秘密の話".encode()))
        await wait_until(lambda: guest.chats() == [("host", "秘密の話")], 5, "web -> web over WSS")
        plain = await websocket(self.web_port)
        self.assertIsNone(plain.status)  # no HTTP answer to a plain upgrade on a TLS port


class WebAcrossNodes(ClusterCase):
    """A browser member on one node chats with UDP members on others."""

    node_args = ["--web", "0"]

    async def test_web_member_on_another_node(self) -> None:
        host, udp_c = await self.room("r", "ac")
        web_port = self.nodes["b"].service.getServiceNamed("web")._port.getHost().port  # type: ignore[attr-defined]
        browser = await websocket(web_port)
        self.addCleanup(lambda: browser.transport.loseConnection() if browser.transport else None)  # type: ignore[union-attr]
        browser.send(request_bytes(2, "r", {"username": "web"}))
        await wait_until(lambda: len(browser.frames()) >= 2, 5, "the answer from node b")
        self.assertEqual(json.loads(browser.frames()[0].payload)["status"], 200)
        token = browser.frames()[1].payload
        browser.send(wire.encode_datagram(b"r", token, wire.HELLO))
        await wait_until(lambda: browser.notices("welcome"), 5, "the welcome")
        await wait_until(lambda: host.peer.notices("join") and udp_c.peer.notices("join"), 5, "join notices on a and c")
        self.assertIn({"event": "join", "user": "web"}, host.peer.notices("join"))
        browser.send(wire.encode_datagram(b"r", token, b"from the browser on b"))
        await wait_until(lambda: ("web", "from the browser on b") in host.chats() and ("web", "from the browser on b") in udp_c.chats(), 5, "b -> a, c")
        udp_c.send(b"from c")
        await wait_until(lambda: (udp_c.name, "from c") in browser.chats(), 5, "c -> b")
        browser.transport.loseConnection()  # type: ignore[union-attr]
        await wait_until(lambda: {"event": "leave", "user": "web", "reason": "left"} in host.peer.notices("leave"), 5, "leave on a")
