"""
Shared test helpers: fake transports, and real-socket clients for the
end-to-end tests (loopback only, every wait bounded).
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol, reactor, task
from twisted.trial import unittest
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from ocm import wire
from ocm.client.requests import ReplyCollector
from ocm.tap import Options, makeService

Address = tuple[str, int]


class FakeDatagramTransport:
    """
    Records what a DatagramProtocol writes; can be told to fail for some
    addresses.
    """

    def __init__(self, port: int = 9001) -> None:
        self.written: list[tuple[bytes, Address]] = []
        self.failing: dict[Address, int] = {}
        self.port = port

    def write(self, data: bytes, addr: Address) -> None:
        """Record one datagram, or raise the error set for C{addr}."""
        if addr in self.failing:
            raise OSError(self.failing[addr], "injected failure")
        self.written.append((data, addr))

    def getHost(self) -> Any:
        """The port the relay is said to listen on."""
        from twisted.internet.address import IPv4Address

        return IPv4Address("UDP", "127.0.0.1", self.port)

    def to(self, addr: Address) -> list[bytes]:
        """Everything written to C{addr}, in order."""
        return [data for data, a in self.written if a == addr]

    def notices_to(self, addr: Address) -> list[dict[str, Any]]:
        """The server notices written to C{addr}, decoded."""
        out = []
        for data in self.to(addr):
            name, message = wire.decode_relayed(data)
            if not name:
                out.append(wire.decode_notice(message))
        return out

    def clear(self) -> None:
        """Forget what was written."""
        del self.written[:]


def synchronous(function: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
    """A stand-in for C{deferToThread} that runs C{function} at once."""
    return defer.maybeDeferred(function, *args)


EAGAIN = errno.EAGAIN
EPERM = errno.EPERM


def request_bytes(operation: int, room: str | bytes, payload: Any = None) -> bytes:
    """A TCRP request frame; C{payload} a dict (JSON) or raw bytes."""
    room_bytes = room.encode("utf-8") if isinstance(room, str) else room
    if payload is None:
        body = b""
    elif isinstance(payload, bytes):
        body = payload
    else:
        body = json.dumps(payload).encode("utf-8")
    return wire.encode_frame(operation, wire.STATE_REQUEST, room_bytes, body)


# Real sockets


async def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll C{predicate} every 10 ms; fail after C{timeout} seconds."""
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await task.deferLater(reactor, 0.01, lambda: None)
        waited += 0.01


async def sleep(seconds: float) -> None:
    """Let the reactor run for C{seconds}."""
    await task.deferLater(reactor, seconds, lambda: None)


async def tcrp_raw(port: int, data: bytes, source: str = "127.0.0.1", timeout: float = 5.0) -> bytes:
    """Send C{data} to the TCRP port; return all bytes until the server closes."""
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=timeout, bindAddress=(source, 0))
    proto = ReplyCollector()
    await connectProtocol(endpoint, proto)
    proto.transport.write(data)  # type: ignore[union-attr]
    timer = reactor.callLater(timeout, proto.transport.abortConnection)  # type: ignore[attr-defined,union-attr]
    try:
        return await proto.done
    finally:
        if timer.active():
            timer.cancel()


async def tcrp(port: int, operation: int, room: str | bytes, payload: Any = None, source: str = "127.0.0.1") -> list[wire.Frame]:
    """One TCRP request; return the decoded reply frames."""
    data = await tcrp_raw(port, request_bytes(operation, room, payload), source)
    frames, rest = wire.decode_frames(data)
    assert rest == b"", rest
    return frames


def status_of(frames: list[wire.Frame]) -> dict[str, Any]:
    """The JSON of the state-1 frame."""
    assert frames[0].state == wire.STATE_RESPONSE
    return wire.decode_json(frames[0].payload)  # type: ignore[no-any-return]


MARKER = b"marker-"


class UDPPeer(protocol.DatagramProtocol):
    """A UDP socket on a loopback address, collecting what arrives."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def datagramReceived(self, data: bytes, addr: Address) -> None:
        self.received.append(data)

    def chats(self, markers: bool = False) -> list[tuple[str, str]]:
        """(sender, text) of every chat message received (but test barrier markers)."""
        out = []
        for data in self.received:
            name, message = wire.decode_relayed(data)
            if name and (markers or not message.startswith(MARKER)):
                out.append((name.decode(), message.decode()))
        return out

    def notices(self, event: str | None = None) -> list[dict[str, Any]]:
        """Every notice received (of one event, if given)."""
        out = []
        for data in self.received:
            name, message = wire.decode_relayed(data)
            if not name:
                notice = wire.decode_notice(message)
                if event is None or notice["event"] == event:
                    out.append(notice)
        return out


def listen_udp(source: str = "127.0.0.1") -> tuple[UDPPeer, Any]:
    """A UDPPeer bound to C{source}, port 0."""
    peer = UDPPeer()
    port = reactor.listenUDP(0, peer, interface=source)  # type: ignore[attr-defined]
    return peer, port


# twistd as a subprocess


def free_port(kind: int) -> int:
    """An ephemeral port that was free a moment ago."""
    import socket

    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # type: ignore[no-any-return]


class TwistdProcess(protocol.ProcessProtocol):
    """A twistd subprocess: its output, and a Deferred for its end."""

    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred[Any] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value)


def spawn_twistd(case: Any, *args: str) -> TwistdProcess:
    """
    Run the installed C{twistd --pidfile= ARGS} (as an operator runs it) in
    a fresh directory; killed at the end of C{case} if still running.
    """
    import os
    import sys

    path = case.mktemp()
    os.makedirs(path)
    proc = TwistdProcess()
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(twistd):
        argv = [twistd]
    else:  # e.g. pip install --user: the script is elsewhere; same entry point
        twistd = sys.executable
        argv = [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]
    # this tree's ocm first: an editable install may point at another checkout
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p))
    transport = reactor.spawnProcess(proc, twistd, [*argv, "--pidfile=", *args], env=env, path=path)  # type: ignore[attr-defined]

    def kill() -> Any:
        if transport.pid is not None:
            transport.signalProcess("KILL")
            return proc.ended
        return None

    case.addCleanup(kill)
    return proc


class FakeRoute:
    """A member's route that records what is written to it (pure rooms tests)."""

    sockaddr = None

    def __init__(self, peer: Address) -> None:
        self.peer = peer
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        """Record one datagram."""
        self.sent.append(data)


# The end-to-end harness: a whole server built by the plugin's makeService.


class Member:
    """A test client: a token and a UDP socket of its own."""

    def __init__(self, case: Any, room: str, name: str, token: bytes, source: str, udp_port: int = 0) -> None:
        self.case = case
        #: The relay this member talks to (a cluster test names its node's).
        self.udp_port = udp_port or case.udp_port
        self.room = room
        self.name = name
        self.token = token
        self.peer, self.port = listen_udp(source)
        case.addCleanup(self.port.stopListening)

    def send(self, message: bytes) -> None:
        """Send one datagram to the relay."""
        data = wire.encode_datagram(self.room.encode(), self.token, message)
        self.port.write(data, ("127.0.0.1", self.udp_port))

    async def hello(self) -> None:
        """Bind: send \\x00hello until the welcome arrives."""
        for _ in range(50):
            self.send(wire.HELLO)
            try:
                await wait_until(lambda: self.peer.notices("welcome"), 0.1)
                return
            except AssertionError:
                pass
        raise AssertionError(f"no welcome for {self.name}")


class ServerCase(unittest.TestCase):
    """Starts a whole ocm server on loopback for each test."""

    timeout = 30
    server_args: list[str] = []

    async def setUp(self) -> None:
        options = Options()
        options.parseOptions(["--tcp", "0", "--udp", "0", "--lobby", "0", "--interface", "127.0.0.1", *self.server_args])
        self.service = makeService(options, reactor)
        self.service.startService()
        self.addCleanup(self.stop)
        self.rooms = self.service.rooms  # type: ignore[attr-defined]
        self.stats = self.rooms.stats
        self.tcp_port = self.service.getServiceNamed("tcp")._port.getHost().port  # type: ignore[attr-defined]
        self.udp_port = self.service.getServiceNamed("udp")._port.getHost().port  # type: ignore[attr-defined]
        self.lobby_port = self.service.getServiceNamed("lobby")._port.getHost().port  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self.service.running:
            await self.service.stopService()

    async def request(self, operation: int, room: str, source: str = "127.0.0.1", **payload: Any) -> tuple[dict[str, Any], list[wire.Frame]]:
        frames = await tcrp(self.tcp_port, operation, room, payload, source)
        return status_of(frames), frames

    async def member(self, operation: int, room: str, name: str, source: str = "127.0.0.1", hello: bool = True, **payload: Any) -> Member:
        body, frames = await self.request(operation, room, source, username=name, **payload)
        self.assertEqual(body["status"], 200, body)
        member = Member(self, room, name, frames[1].payload, source)
        if hello:
            await member.hello()
        return member

    async def room(self, name: str = "r", *guests: str, **payload: Any) -> list[Member]:
        """A room with a host and guests, all bound, welcome notices cleared."""
        members = [await self.member(1, name, "host", **payload)]
        for guest in guests:
            members.append(await self.member(2, name, guest, password=payload.get("password", "")))
        await wait_until(lambda: len(members[0].peer.notices("join")) == len(guests), what="join notices")
        for m in members:
            m.peer.received.clear()
        return members

    async def barrier(self, sender: Member, *receivers: Member) -> None:
        """Send a marker and wait until every receiver has it: what was sent before has arrived."""
        marker = f"marker-{id(object())}"
        sender.send(marker.encode())
        for r in receivers:
            await wait_until(lambda r=r: (sender.name, marker) in r.peer.chats(markers=True), what="marker")


# A WebSocket client small enough to read: the handshake, masked binary
# frames out, frames in, and raw bytes for the tests of bad input.


def masked_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """One client frame (RFC 6455): masked with a random key, the shortest length form."""
    import os

    size = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 1 << 16:
        head += bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + size.to_bytes(8, "big")
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class WebSocketClient(protocol.Protocol):
    """One WebSocket to the gateway: its handshake status, the messages it got, the close code."""

    def __init__(self, host: str, path: str = "/ws", origin: str | None = None, headers: dict[str, str] | None = None) -> None:
        self.host = host
        self.path = path
        self.origin = origin
        self.headers = headers or {}
        self.status: int | None = None
        self.response = b""
        self.messages: list[bytes] = []
        self.close_code: int | None = None
        self.closed: defer.Deferred[None] = defer.Deferred()
        #: Whether to answer pings (a browser does); pings seen.
        self.answer_pings = True
        self.pings = 0
        self._buffer = b""

    def connectionMade(self) -> None:
        """Ask for the upgrade."""
        import base64
        import os

        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {self.host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
            "Sec-WebSocket-Version: 13",
        ]
        if self.origin is not None:
            lines.append(f"Origin: {self.origin}")
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        """The response head, then frames."""
        self._buffer += data
        if self.status is None:
            head, sep, rest = self._buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            self.response = head
            self.status = int(head.split(b" ", 2)[1])
            self._buffer = rest
        while len(self._buffer) >= 2:
            opcode, size, at = self._buffer[0] & 0x0F, self._buffer[1] & 0x7F, 2
            if size == 126:
                if len(self._buffer) < 4:
                    return
                size, at = int.from_bytes(self._buffer[2:4], "big"), 4
            elif size == 127:
                if len(self._buffer) < 10:
                    return
                size, at = int.from_bytes(self._buffer[2:10], "big"), 10
            if len(self._buffer) < at + size:
                return
            payload, self._buffer = self._buffer[at : at + size], self._buffer[at + size :]
            if opcode == 0x8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.frame(0x8, payload[:2])  # the closing handshake's answer, as a browser gives it
            elif opcode == 0x9:
                self.pings += 1
                if self.answer_pings:
                    self.frame(0xA, payload)  # pong
            elif opcode in (0x1, 0x2):
                self.messages.append(payload)

    def frame(self, opcode: int, payload: bytes) -> None:
        """Send one masked frame."""
        self.transport.write(masked_frame(opcode, payload))  # type: ignore[union-attr]

    def send(self, payload: bytes) -> None:
        """One binary message."""
        self.frame(0x2, payload)

    def connectionLost(self, reason: Any = None) -> None:
        """Gone."""
        if not self.closed.called:
            self.closed.callback(None)

    def frames(self) -> list[wire.Frame]:
        """The TCRP frames among the messages."""
        return [f for m in self.messages for f in wire.decode_frames(m)[0]]

    def notices(self, event: str | None = None) -> list[dict[str, Any]]:
        """The notices among the datagram messages (after the answer frames)."""
        out = []
        for m in self.messages:
            if len(m) >= 1 and m[0] == 0 and not wire.decode_frames(m)[0]:
                notice = wire.decode_notice(m[1:])
                if event is None or notice["event"] == event:
                    out.append(notice)
        return out

    def chats(self) -> list[tuple[str, str]]:
        """(sender, text) of the chat messages received."""
        out = []
        for m in self.messages:
            if m and m[0] != 0 and not wire.decode_frames(m)[0]:
                name, text = wire.decode_relayed(m)
                out.append((name.decode(), text.decode()))
        return out


async def websocket(
    port: int, origin: str | None = None, headers: dict[str, str] | None = None, host: str = "127.0.0.1", path: str = "/ws", tls: Any = None
) -> WebSocketClient:
    """A WebSocket to the gateway on C{port} (through C{tls}, client TLS options, for wss), once its handshake is answered."""
    from twisted.internet.endpoints import wrapClientTLS

    client = WebSocketClient(f"{host}:{port}", path, origin, headers)
    endpoint: Any = TCP4ClientEndpoint(reactor, host, port)
    if tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)
    await connectProtocol(endpoint, client)
    await wait_until(lambda: client.status is not None or client.closed.called, 5, "the upgrade's answer")
    return client
