"""
Reach: chat through a TCP tunnel where UDP is blocked, and recent history
on join; a server built by the plugin's own makeService, real sockets on
127.0.0.1, clients as subprocesses, every wait bounded.
"""

from __future__ import annotations

import socket
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from ocm import wire
from tests.helpers import sleep, status_of, tcrp_raw, wait_until
from tests.test_client_end_to_end import ClientCase
from tests.helpers import Member, ServerCase


class RawTunnel:
    """A tunnel opened by hand on a blocking socket (the test reads it when it likes)."""

    def __init__(self, port: int, room: str, token: bytes, rcvbuf: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(wire.encode_frame(wire.OP_TUNNEL, 0, room.encode(), wire.encode_json({"token": token.decode()})))
        self.buffer = b""
        self.room = room
        self.token = token

    def send(self, message: bytes) -> None:
        self.sock.sendall(wire.tunnel_frame(wire.encode_datagram(self.room.encode(), self.token, message)))

    def read_available(self) -> None:
        self.sock.setblocking(False)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self.buffer += chunk
        except BlockingIOError:
            pass

    def answer_and_datagrams(self) -> tuple[list[wire.Frame], list[bytes]]:
        frames, rest = wire.decode_frames(self.buffer)
        datagrams, _ = wire.split_tunnel_frames(rest, 1 << 20)
        return frames[:1], datagrams


class TunnelServer(ServerCase):
    """The server side of the tunnel (--tunnel)."""

    server_args = ["--tunnel", "--max-history", "50", "--timeout", "5", "--rate", "100000", "--burst", "100000"]

    async def test_tunnel_and_udp_members_chat(self) -> None:
        """A tunnelled member and UDP members: the same checks, notices and fan-out both ways."""
        host, udp_guest = await self.room("r", "guest")
        body, frames = await self.request(2, "r", username="tcp")
        token = frames[1].payload
        t = RawTunnel(self.tcp_port, "r", token)
        self.addCleanup(t.sock.close)
        t.send(wire.HELLO)
        await wait_until(lambda: host.peer.notices("join"), 5, "join notice of the tunnelled member")
        self.assertEqual(host.peer.notices("join"), [{"event": "join", "user": "tcp"}])
        host.send("ホストから".encode())
        t.send("トンネルから".encode())
        await wait_until(lambda: ("tcp", "トンネルから") in udp_guest.peer.chats(), 5, "tunnel -> UDP")

        def tunnel_chats() -> list[bytes]:
            t.read_available()
            return t.answer_and_datagrams()[1]

        await wait_until(lambda: wire.sender_prefix(b"host") + "ホストから".encode() in tunnel_chats(), 5, "UDP -> tunnel")
        answer, datagrams = t.answer_and_datagrams()
        self.assertEqual(status_of(answer), {"status": 200})
        self.assertEqual(wire.decode_notice(wire.decode_relayed(datagrams[0])[1])["event"], "welcome")
        # the relay's rules hold in the tunnel: a datagram for another room is dropped
        t.sock.sendall(wire.tunnel_frame(wire.encode_datagram(b"other", token, b"x")))
        await wait_until(lambda: self.stats.dropped["wrong_room"] + self.stats.dropped["unknown_token"] >= 1, 5, "drop")
        # closing the tunnel: the member leaves as "left"
        t.sock.close()
        await wait_until(lambda: host.peer.notices("leave"), 5, "leave notice")
        self.assertEqual(host.peer.notices("leave"), [{"event": "leave", "user": "tcp", "reason": "left"}])

    async def test_refusals(self) -> None:
        """A bad token, another room's token, or a token from another address: 401, no tunnel."""
        await self.room("r")
        _, frames = await self.request(2, "r", username="g")
        token = frames[1].payload.decode()
        for room, tok, source in (("r", "0" * 32, "127.0.0.1"), ("other", token, "127.0.0.1"), ("r", token, "127.0.0.2")):
            data = await tcrp_raw(self.tcp_port, wire.encode_frame(4, 0, room.encode(), wire.encode_json({"token": tok})), source)
            frames, _ = wire.decode_frames(data)
            self.assertEqual(status_of(frames)["status"], 401, (room, source))

    async def test_slow_reader_is_bounded(self) -> None:
        """
        A tunnelled member that never reads: its datagrams are dropped once the
        connection's buffer is full; the server's buffer for it stays bounded.
        """
        host, = await self.room("r")
        _, frames = await self.request(2, "r", username="slow")
        t = RawTunnel(self.tcp_port, "r", frames[1].payload, rcvbuf=4096)
        self.addCleanup(t.sock.close)
        t.send(wire.HELLO)
        await wait_until(lambda: host.peer.notices("join"), 5, "join")
        tunnel = self.service.relay.tunnels[0]  # type: ignore[attr-defined]
        transport = tunnel.transport
        biggest = 0
        text = b"y" * 1000
        for _ in range(300):
            for _ in range(50):
                host.send(text)
            await sleep(0.005)
            biggest = max(biggest, len(transport.dataBuffer) - transport.offset + transport._tempDataLen)
        await wait_until(lambda: self.stats.send_overload > 0, 10, "overload drops")
        self.assertLess(biggest, 64 * 1024 + 8 * 1024)
        self.assertIn(tunnel.member.token, self.rooms.tokens)  # dropped, not removed

    async def test_history_on_join(self) -> None:
        """The last N messages reach a newcomer after its welcome, in order, marked as history; capped."""
        body, _ = await self.request(1, "h", username="host", history=3)
        self.assertEqual(body["status"], 200)
        host = Member(self, "h", "host", _[1].payload, "127.0.0.1")
        await host.hello()
        for i in range(5):
            host.send(f"メッセージ{i}".encode())
        await wait_until(lambda: len(self.rooms.find("h").history) == 3, 5, "history kept")
        newcomer = await self.member(2, "h", "new")
        await wait_until(lambda: len(newcomer.peer.notices("history")) == 3, 5, "history delivered")
        notices = newcomer.peer.notices()
        self.assertEqual([n["event"] for n in notices[:4]], ["welcome", "history", "history", "history"])
        self.assertEqual([(n["user"], n["text"]) for n in notices[1:4]], [("host", f"メッセージ{i}") for i in (2, 3, 4)])
        self.assertTrue(all(isinstance(n["time"], float) for n in notices[1:4]))
        # capped by --max-history
        body, _ = await self.request(1, "big", username="host", history=10_000)
        self.assertEqual(self.rooms.find("big").history_size, 50)
        # 0 (the default) keeps nothing
        await self.request(1, "none", username="host")
        self.assertEqual(self.rooms.find("none").history_size, 0)


class PlainServerStaysPlain(ServerCase):
    """Without --tunnel and --max-history the server answers as the SPEC says."""

    async def test_operation_4_is_unknown(self) -> None:
        data = await tcrp_raw(self.tcp_port, wire.encode_frame(4, 0, b"r", wire.encode_json({"token": "x"})))
        frames, _ = wire.decode_frames(data)
        self.assertEqual(len(frames), 1)
        self.assertEqual(status_of(frames), {"status": 400, "message": "unknown operation 4"})

    async def test_history_key_ignored(self) -> None:
        body, _ = await self.request(1, "r", username="host", history="not even a number")
        self.assertEqual(body["status"], 200)
        self.assertEqual(self.rooms.find("r").history_size, 0)


class TunnelClients(ClientCase):
    """The client through the tunnel: forced, and by itself when UDP is blocked."""

    server_args = ["--tunnel", "--max-history", "50"]

    async def test_tcp_only_and_udp_member_chat(self) -> None:
        alice = self.client("--name", "alice", "--create", "r")
        await self.joined(alice)
        bob = self.client("--name", "bob", "--join", "r", "--tcp-only")
        await self.joined(bob)
        self.assertTrue(bob.has("* chatting through TCP (--tcp-only)"))
        alice.send("hello over UDP")
        await wait_until(lambda: any(line.endswith("alice: hello over UDP") for line in bob.lines), 10, "to bob")
        bob.send("hello over TCP")
        await wait_until(lambda: any(line.endswith("bob: hello over TCP") for line in alice.lines), 10, "to alice")
        bob.close_stdin()
        await wait_until(lambda: alice.has("* bob left"), 10, "bob left")
        alice.close_stdin()

    async def test_switches_when_udp_blocked(self) -> None:
        alice = self.client("--name", "alice", "--create", "r", "--history", "5")
        await self.joined(alice)
        alice.send("before bob came")
        await wait_until(lambda: len(self.rooms.find("r").history) == 1, 10, "history")
        bob = self.client("--name", "bob", "--join", "r", env={"OCM_CLIENT_DROP_UDP": "1"})
        await wait_until(lambda: bob.has("* UDP blocked: chatting through TCP"), 15, "the switch")
        await self.joined(bob)
        self.assertEqual(len([line for line in bob.lines if "UDP blocked" in line]), 1)
        self.assertTrue(any(line.startswith("[history] ") and line.endswith("alice: before bob came") for line in bob.lines), bob.lines)
        bob.send("through the tunnel")
        await wait_until(lambda: any(line.endswith("bob: through the tunnel") for line in alice.lines), 10, "to alice")
        alice.send("and back")
        await wait_until(lambda: any(line.endswith("alice: and back") for line in bob.lines), 10, "to bob")
        alice.close_stdin()
        await wait_until(lambda: bob.has("* room closed: the host left"), 10, "closed")


class InteractiveHistory(ClientCase):
    """The interactive client shows a room's history, dimmed, with its time."""

    server_args = ["--max-history", "50"]

    async def test_history_in_a_terminal(self) -> None:
        host = self.client("--name", "host", "--create", "履歴", "--history", "10")
        await self.joined(host)
        host.send("昨日の話")
        await wait_until(lambda: len(self.rooms.find("履歴").history) == 1, 10, "history")
        child, expect = self.pty_client("--host", "127.0.0.1", "--name", "ゲスト", "--join", "履歴", "--password", "")
        await expect("joined room")
        await expect("\x1b\\[2m\\[history\\] \\d\\d:\\d\\d host: 昨日の話")
        child.sendcontrol("d")
        host.close_stdin()


class TunnelWire(unittest.TestCase):
    """The tunnel's framing and request (pure)."""

    @given(st.lists(st.binary(max_size=5000), max_size=20), st.integers(1, 64))
    def test_frames_round_trip_in_any_chunks(self, datagrams: list[bytes], chunk: int) -> None:
        stream = b"".join(wire.tunnel_frame(d) for d in datagrams)
        got: list[bytes] = []
        buffer = b""
        for i in range(0, len(stream), chunk):
            out, buffer = wire.split_tunnel_frames(buffer + stream[i : i + chunk], 5120)
            got.extend(out)
        self.assertEqual(got, datagrams)
        self.assertEqual(buffer, b"")

    def test_exact_bytes_and_limits(self) -> None:
        self.assertEqual(wire.tunnel_frame(b"\x01\x01rt"), b"\x00\x00\x00\x04\x01\x01rt")
        with self.assertRaises(wire.WireError):
            wire.split_tunnel_frames(b"\x00\x00\x14\x01", 5120)  # 5121 declared: refused before the body
        request = wire.parse_request(wire.Frame(4, 0, b"r", b'{"token": "abc"}'), tunnel=True)
        self.assertEqual((request.room, request.fields), ("r", {"token": "abc"}))
        for payload in (b"{}", b'{"token": ""}', b'{"token": "\\u00e9"}', b'{"token": 5}', b"[]"):
            with self.assertRaises(wire.WireError):
                wire.parse_request(wire.Frame(4, 0, b"r", payload), tunnel=True)
        with self.assertRaises(wire.WireError):  # a plain server: unknown operation
            wire.parse_request(wire.Frame(4, 0, b"r", b'{"token": "abc"}'))


class TunnelLimits(ServerCase):
    """Tunnels are TCRP connections: they count against --max-connections-per-ip."""

    server_args = ["--tunnel", "--max-connections-per-ip", "2"]

    async def test_tunnels_count(self) -> None:
        host, = await self.room("r")
        tunnels = []
        for name in ("t1", "t2"):
            _, frames = await self.request(2, "r", username=name)
            t = RawTunnel(self.tcp_port, "r", frames[1].payload)
            self.addCleanup(t.sock.close)
            t.send(wire.HELLO)
            tunnels.append(t)
        await wait_until(lambda: len(host.peer.notices("join")) == 2, 5, "both tunnels in")
        body, _ = await self.request(3, "")
        self.assertEqual(body["status"], 429)
        tunnels[0].sock.close()
        await wait_until(lambda: host.peer.notices("leave"), 5, "t1 left")
        body, _ = await self.request(3, "")
        self.assertEqual(body["status"], 200)


class TunnelCycles(ServerCase):
    """Tunnels opened and closed many times: notices and chat still reach everyone."""

    server_args = ["--tunnel", "--request-rate", "1000000", "--request-burst", "1000000"]
    timeout = 60

    def open_and_close_tunnel(self, name: str) -> None:
        """In process: a join, a tunnel for it on a fake TCP connection, the connection closed."""
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        from tests.helpers import request_bytes

        factory = self.service.tcrp  # type: ignore[attr-defined]
        answers: list[list[bytes]] = []
        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        join = wire.decode_frames(request_bytes(2, "r", {"username": name}))[0][0]
        factory.handle(join, "127.0.0.1").addCallback(answers.append)
        token = wire.decode_frames(b"".join(answers[0]))[0][1].payload
        proto = factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        proto.makeConnection(transport)
        proto.dataReceived(wire.encode_frame(4, 0, b"r", wire.encode_json({"token": token.decode()})))
        self.assertEqual(status_of(wire.decode_frames(transport.value())[0])["status"], 200)
        proto.connectionLost(None)

    async def test_two_thousand_cycles(self) -> None:
        """2,000 tunnel open/close cycles, then a join notice and a chat message still arrive."""
        host, = await self.room("r")
        for i in range(2000):
            self.open_and_close_tunnel(f"t{i}")
        self.assertEqual(self.stats.send_errors, 0)
        guest = await self.member(2, "r", "guest")
        await wait_until(lambda: host.peer.notices("join"), 5, "the join notice")
        self.assertEqual(host.peer.notices("join"), [{"event": "join", "user": "guest"}])
        host.send(b"still here")
        await wait_until(lambda: guest.peer.chats() == [("host", "still here")], 5, "the chat message")
