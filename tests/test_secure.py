"""
Secure mode: sealed datagrams (pure and through the relay), TLS on the TCRP
port end to end with certificates made here, the client's refusals.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.protocols import portforward
from twisted.trial import unittest

from ocm import wire
from ocm.client.requests import RequestFailed, request
from ocm.client.session import EXIT_ERROR, EXIT_OK
from ocm.relay.protocol import SecureRelay
from ocm.rooms import Member, Rooms
from ocm.sealing import OVERHEAD, WINDOW, Channel, ReplayWindow, new_key
from ocm.tap import Options, makeService
from ocm.tls import client_tls
from tests.certs import write_server_files
from tests.helpers import FakeDatagramTransport, wait_until
from tests.test_client_end_to_end import spawn_client

A = ("127.0.0.1", 5001)
B = ("127.0.0.1", 5002)
C = ("127.0.0.1", 5003)
HEADER = wire.encode_datagram(b"room", b"t" * 32)


def pair(key: bytes | None = None) -> tuple[Channel, Channel]:
    """The client's and the server's ends of one member's channel."""
    key = key or new_key()
    return Channel(key, HEADER, server_end=False), Channel(key, HEADER, server_end=True)


class Sealing(unittest.TestCase):
    """L{ocm.sealing}: round trips, tampering, replay, reordering, keys."""

    @given(st.lists(st.binary(max_size=4000), min_size=1, max_size=20))
    @settings(max_examples=50)
    def test_round_trips_both_ways(self, messages: list[bytes]) -> None:
        client, server = pair()
        for m in messages:
            sealed = client.seal(m)
            self.assertEqual(len(sealed), len(m) + OVERHEAD)
            self.assertEqual(server.open(sealed), (m, ""))
            self.assertEqual(client.open(server.seal(m)), (m, ""))

    def test_every_byte_tampered(self) -> None:
        """Flipping any bit of any byte (counter, ciphertext, tag) makes it fail, and moves nothing."""
        client, server = pair()
        sealed = client.seal("こんにちは".encode())
        for i in range(len(sealed)):
            for bit in (0x01, 0x80):
                bad = bytearray(sealed)
                bad[i] ^= bit
                plaintext, why = server.open(bytes(bad))
                self.assertIsNone(plaintext, (i, bit))
                self.assertIn(why, ("bad_seal", "replayed"))
        self.assertEqual(server.window.top, -1)  # no forgery moved the window
        self.assertEqual(server.open(sealed), ("こんにちは".encode(), ""))

    def test_header_is_authenticated(self) -> None:
        """Another room or token in the clear header: does not open."""
        key = new_key()
        client = Channel(key, HEADER, server_end=False)
        other = Channel(key, wire.encode_datagram(b"room", b"u" * 32), server_end=True)
        self.assertEqual(other.open(client.seal(b"hi")), (None, "bad_seal"))

    def test_direction_is_in_the_nonce(self) -> None:
        """A datagram the server sent, reflected back to it, does not open."""
        client, server = pair()
        self.assertEqual(server.open(server.seal(b"echo")), (None, "bad_seal"))

    def test_other_members_key(self) -> None:
        client, _ = pair()
        _, other_server = pair()
        self.assertEqual(other_server.open(client.seal(b"hi")), (None, "bad_seal"))

    def test_replay_and_reordering(self) -> None:
        client, server = pair()
        sealed = [client.seal(b"%d" % i) for i in range(WINDOW + 10)]
        self.assertEqual(server.open(sealed[5]), (b"5", ""))
        self.assertEqual(server.open(sealed[5]), (None, "replayed"))
        self.assertEqual(server.open(sealed[2]), (b"2", ""))  # late, within the window
        self.assertEqual(server.open(sealed[WINDOW + 9]), (b"%d" % (WINDOW + 9), ""))
        self.assertEqual(server.open(sealed[3]), (None, "replayed"))  # beyond the window now
        self.assertEqual(server.open(sealed[10]), (b"10", ""))  # still inside: 1023 behind
        self.assertEqual(server.open(sealed[9]), (None, "replayed"))  # 1024 behind: too old
        self.assertEqual(server.open(b"short"), (None, "unsealed"))

    @given(st.lists(st.integers(0, 3000), max_size=200))
    def test_window_model(self, counters: list[int]) -> None:
        """The bitmap window agrees with a plain set model."""
        window = ReplayWindow()
        seen: set[int] = set()
        for c in counters:
            top = max(seen) if seen else -1
            expected = c not in seen and (c > top or top - c < WINDOW)
            self.assertEqual(window.fresh(c), expected)
            if expected:
                window.mark(c)
                seen.add(c)


class SealedRelay(unittest.TestCase):
    """The relay in secure mode, over a fake transport."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.rooms = Rooms(timeout=30, secure=True)
        self.relay = SecureRelay(self.rooms, self.clock)
        self.transport = FakeDatagramTransport()
        self.relay.makeConnection(self.transport)  # type: ignore[arg-type]
        now = self.clock.seconds()
        self.members = [self.rooms.create("r", "alice", "127.0.0.1", now)]
        self.members += [self.rooms.join(self.members[0].room, name, "127.0.0.1", now) for name in ("bob", "carol")]
        self.clients = {m.name: Channel(m.key, wire.encode_datagram(b"r", m.token), server_end=False) for m in self.members}  # type: ignore[arg-type]

    def send(self, member: Member, message: bytes, addr: tuple[str, int]) -> bytes:
        data = wire.encode_datagram(b"r", member.token, self.clients[member.name].seal(message))
        self.relay.datagramReceived(data, addr)
        return data

    def received(self, name: str, addr: tuple[str, int]) -> list[bytes]:
        out = []
        for data in self.transport.to(addr):
            plaintext, why = self.clients[name].open(data)
            self.assertEqual(why, "", "every datagram to a member is sealed for it")
            out.append(plaintext)
        return out

    def bind_all(self) -> None:
        for i, addr in enumerate((A, B, C)):
            self.send(self.members[i], wire.HELLO, addr)

    def test_chat_sealed_per_recipient(self) -> None:
        self.bind_all()
        self.send(self.members[0], "やあ".encode(), A)
        for name, addr in (("bob", B), ("carol", C)):
            self.assertIn(wire.sender_prefix(b"alice") + "やあ".encode(), self.received(name, addr))
        welcome = wire.decode_notice(wire.decode_relayed(self.received("alice", A)[0])[1])
        self.assertEqual(welcome["event"], "welcome")

    def test_plain_tampered_replayed_dropped_unanswered(self) -> None:
        self.bind_all()
        self.transport.clear()
        alice = self.members[0]
        plain = wire.encode_datagram(b"r", alice.token, b"plain text")
        self.relay.datagramReceived(plain, A)
        sealed = self.send(alice, b"once", A)
        self.transport.clear()
        self.relay.datagramReceived(sealed, A)  # replayed
        tampered = bytearray(wire.encode_datagram(b"r", alice.token, self.clients["alice"].seal(b"two")))
        tampered[-1] ^= 1
        self.relay.datagramReceived(bytes(tampered), A)
        self.relay.datagramReceived(wire.encode_datagram(b"r", alice.token, b"x"), A)  # too short for a seal
        self.assertEqual(self.transport.written, [])
        dropped = self.rooms.stats.dropped
        self.assertEqual((dropped["bad_seal"], dropped["replayed"], dropped["unsealed"]), (1, 1, 2))

    def test_forgery_cannot_bind(self) -> None:
        """An unbound token with a bad seal: no binding, no welcome, no join notice."""
        bob = self.members[1]
        self.relay.datagramReceived(wire.encode_datagram(b"r", bob.token, b"\x00" * 40), B)
        self.assertIsNone(bob.addr)
        self.assertEqual(self.transport.written, [])

    def test_notices_sealed(self) -> None:
        self.bind_all()
        self.transport.clear()
        self.send(self.members[1], wire.LEAVE, B)
        leave = [wire.decode_notice(wire.decode_relayed(p)[1]) for p in self.received("alice", A)]
        self.assertEqual(leave, [{"event": "leave", "user": "bob", "reason": "left"}])
        self.relay.shutdown()
        self.assertEqual(wire.decode_notice(wire.decode_relayed(self.received("carol", C)[-1])[1]), {"event": "closed", "reason": "shutdown"})


class Capture(portforward.ProxyServer):
    """A TCP proxy that keeps every byte both ways."""

    def dataReceived(self, data: bytes) -> None:
        self.factory.captured.append(data)  # type: ignore[attr-defined]
        super().dataReceived(data)


class CapturingClient(portforward.ProxyClient):
    def dataReceived(self, data: bytes) -> None:
        self.peer.factory.captured.append(data)
        super().dataReceived(data)


class CapturingClientFactory(portforward.ProxyClientFactory):
    protocol = CapturingClient


class Capture2(Capture):
    clientProtocolFactory = CapturingClientFactory


class SecureEndToEnd(unittest.TestCase):
    """A whole server in secure mode on loopback; clients as subprocesses."""

    timeout = 60
    #: More options of the server under test.
    server_args: list[str] = ["--tunnel"]

    async def setUp(self) -> None:
        self.files = write_server_files(os.path.abspath(self.mktemp()))
        options = Options()
        options.parseOptions(
            ["--tcp", "0", "--udp", "0", "--interface", "127.0.0.1", "--tls-cert", self.files["server.pem"], "--tls-key", self.files["server.key"], *self.server_args]
        )
        self.service = makeService(options, reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.tcp_port = self.service.getServiceNamed("tcp")._port.getHost().port  # type: ignore[attr-defined]
        self.rooms = self.service.rooms  # type: ignore[attr-defined]

    def client(self, *args: str, env: dict[str, str] | None = None) -> Any:
        return spawn_client(self, self.tcp_port, "--host", "127.0.0.1", *args, env=env)

    async def ended(self, proc: Any) -> int:
        await wait_until(lambda: proc.ended.called, 15, f"client exit: {proc.out!r} {proc.err!r}")
        return await proc.ended  # type: ignore[no-any-return]

    async def test_chat_over_tls(self) -> None:
        """Both clients check the server against --ca; chat both ways, sealed."""
        alice = self.client("--tls", "--ca", self.files["ca.pem"], "--name", "アリス", "--create", "部屋", env={"OCM_PASSWORD": "秘密"})
        await wait_until(lambda: alice.has("* joined room"), 10, "alice in")
        bob = self.client("--tls", "--ca", self.files["ca.pem"], "--name", "ボブ", "--join", "部屋", env={"OCM_PASSWORD": "秘密"})
        await wait_until(lambda: bob.has("* joined room"), 10, "bob in")
        alice.send("こんにちは")
        await wait_until(lambda: any(line.endswith("アリス: こんにちは") for line in bob.lines), 10, "to bob")
        bob.send("やあ")
        await wait_until(lambda: any(line.endswith("ボブ: やあ") for line in alice.lines), 10, "to alice")
        self.assertEqual(self.rooms.stats.dropped["bad_seal"] + self.rooms.stats.dropped["unsealed"], 0)
        bob.close_stdin()
        alice.close_stdin()
        self.assertEqual(await self.ended(bob), EXIT_OK)
        self.assertEqual(await self.ended(alice), EXIT_OK)

    async def test_tunnel_inside_tls(self) -> None:
        """With --tunnel too: a member chatting through its TLS tunnel, sealed, with a UDP member."""
        alice = self.client("--tls", "--ca", self.files["ca.pem"], "--name", "alice", "--create", "r")
        await wait_until(lambda: alice.has("* joined room"), 10, "alice in")
        bob = self.client("--tls", "--ca", self.files["ca.pem"], "--name", "bob", "--join", "r", "--tcp-only")
        await wait_until(lambda: bob.has("* joined room"), 10, f"bob in: {bob.out!r}")
        self.assertEqual(len(self.service.relay.tunnels), 1)  # type: ignore[attr-defined]
        alice.send("over UDP, sealed")
        await wait_until(lambda: any(line.endswith("alice: over UDP, sealed") for line in bob.lines), 10, "to bob")
        bob.send("through TLS, sealed")
        await wait_until(lambda: any(line.endswith("bob: through TLS, sealed") for line in alice.lines), 10, "to alice")
        bob.close_stdin()
        alice.close_stdin()
        self.assertEqual(await self.ended(bob), EXIT_OK)

    async def test_wrong_ca_refused(self) -> None:
        c = self.client("--tls", "--ca", self.files["other-ca.pem"], "--name", "x", "--list")
        self.assertEqual(await self.ended(c), EXIT_ERROR)
        self.assertTrue(c.has("certificate not trusted for 127.0.0.1"), c.lines)

    async def test_plain_client_refused_clearly(self) -> None:
        c = self.client("--name", "x", "--list")
        self.assertEqual(await self.ended(c), EXIT_ERROR)
        self.assertTrue(any("--tls" in line for line in c.lines), c.lines)

    async def test_insecure_says_so(self) -> None:
        c = self.client("--tls", "--insecure", "--name", "x", "--list")
        self.assertEqual(await self.ended(c), EXIT_OK)
        self.assertTrue(c.has("* --insecure: the server's certificate is NOT checked"), c.lines)

    async def test_password_never_on_the_wire(self) -> None:
        """The captured bytes of a TLS session hold neither the password nor the key."""
        factory = portforward.ProxyFactory("127.0.0.1", self.tcp_port)
        factory.protocol = Capture2
        factory.captured = []  # type: ignore[attr-defined]
        proxy = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(proxy.stopListening)
        tls = client_tls("127.0.0.1", self.files["ca.pem"])
        reply = await request(reactor, "127.0.0.1", proxy.getHost().port, wire.OP_CREATE, "r", {"username": "u", "password": "very-secret-合言葉"}, tls=tls)
        self.assertEqual(reply.status, 200)
        self.assertEqual(len(bytes.fromhex(reply.fields["key"])), 32)
        wire_bytes = b"".join(factory.captured)  # type: ignore[attr-defined]
        self.assertGreater(len(wire_bytes), 200)
        self.assertNotIn("very-secret-合言葉".encode(), wire_bytes)
        self.assertNotIn(b"very-secret", wire_bytes)
        self.assertNotIn(bytes.fromhex(reply.fields["key"]), wire_bytes)
        self.assertNotIn(reply.fields["key"].encode(), wire_bytes)

    async def test_refusal_in_process(self) -> None:
        """The same refusal from the request function itself."""
        tls = client_tls("127.0.0.1", self.files["other-ca.pem"])
        with self.assertRaises(RequestFailed) as caught:
            await request(reactor, "127.0.0.1", self.tcp_port, wire.OP_LIST, "", {}, tls=tls)
        self.assertEqual(str(caught.exception), "certificate not trusted for 127.0.0.1")
