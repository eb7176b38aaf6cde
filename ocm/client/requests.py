"""
TCRP requests from the client: one connection, one request, the reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol

from ocm import wire


class RequestFailed(Exception):
    """The request got no usable answer (connection refused, timeout, garbage)."""


@dataclass
class Reply:
    """What the server answered."""

    status: int
    message: str
    fields: dict[str, Any]
    #: The state-2 payload: a token, or the JSON room list.
    complete: bytes | None


class ReplyCollector(protocol.Protocol):
    """Collects everything the server sends until it closes the connection (C{done})."""

    def __init__(self) -> None:
        self.data = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.data)


async def request(
    reactor: Any,
    host: str,
    port: int,
    operation: int,
    room: str,
    payload: dict[str, Any],
    timeout: float = 10.0,
) -> Reply:
    """Send one TCRP request; return the server's reply."""
    endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    proto = ReplyCollector()
    try:
        await connectProtocol(endpoint, proto)
    except Exception as e:
        raise RequestFailed(f"cannot reach {host}:{port} over TCP ({e.__class__.__name__})") from None
    frame = wire.encode_frame(operation, wire.STATE_REQUEST, room.encode("utf-8"), wire.encode_json(payload))
    proto.transport.write(frame)  # type: ignore[union-attr]
    timer = reactor.callLater(timeout, proto.transport.abortConnection)  # type: ignore[union-attr]
    try:
        data = await proto.done
    finally:
        if timer.active():
            timer.cancel()
    frames, _ = wire.decode_frames(data)
    if not frames or frames[0].state != wire.STATE_RESPONSE:
        raise RequestFailed(f"no answer from {host}:{port}")
    try:
        body = wire.decode_json(frames[0].payload)
        status = int(body["status"])
    except (wire.WireError, KeyError, TypeError, ValueError):
        raise RequestFailed("the server's answer was not understood") from None
    complete = frames[1].payload if len(frames) > 1 and frames[1].state == wire.STATE_COMPLETE else None
    if status == 200 and complete is None:
        raise RequestFailed("the server accepted but sent no token")
    return Reply(status, str(body.get("message", "")), body, complete)

