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
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from ocm import wire
from ocm.client.requests import ReplyCollector

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
    transport = reactor.spawnProcess(proc, twistd, [*argv, "--pidfile=", *args], env=dict(os.environ), path=path)  # type: ignore[attr-defined]

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
