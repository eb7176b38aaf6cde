"""
TCRP requests from the client: one connection, one request, the reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS

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
        #: Why the connection ended (a TLS failure shows here).
        self.reason: Any = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.reason = reason
        self.done.callback(self.data)


def tls_failure(reason: Any, host: str, port: int) -> str | None:
    """A plain sentence for a failed TLS connection, or None if it was not TLS that failed."""
    if reason is None:
        return None
    text = str(reason.value)
    name = reason.value.__class__.__name__
    if "certificate verify failed" in text or "VerificationError" in name or "CertificateError" in name:
        return f"certificate not trusted for {host}"
    if reason.value.__class__.__module__.startswith("OpenSSL") or "SSL" in name:
        return f"TLS with {host}:{port} failed ({text[:120]}): is it an ocm server in secure mode?"
    return None


def looks_like_tls(data: bytes) -> bool:
    """Whether C{data} starts like a TLS record (an alert or a handshake), not TCRP."""
    return len(data) >= 2 and data[0] in (0x15, 0x16) and data[1] == 0x03


async def request(
    reactor: Any,
    host: str,
    port: int,
    operation: int,
    room: str,
    payload: dict[str, Any],
    timeout: float = 10.0,
    tls: Any = None,
) -> Reply:
    """
    Send one TCRP request; return the server's reply.

    @param tls: secure mode: how to check the server (L{ocm.tls.ClientTLS}),
        made for the name the user gave.
    """
    endpoint: Any = HostnameEndpoint(reactor, host, port, timeout=timeout)
    if tls is not None:
        endpoint = wrapClientTLS(tls.creator, endpoint)
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
    if tls is not None and not data:
        problem = tls_failure(proto.reason, tls.hostname, port)
        if problem:
            raise RequestFailed(problem)
    if tls is None and looks_like_tls(data):
        raise RequestFailed(f"{host}:{port} speaks TLS (secure mode): use --tls")
    frames, _ = wire.decode_frames(data)
    if not frames or frames[0].state != wire.STATE_RESPONSE:
        hint = "" if tls is not None else " (a server in secure mode needs --tls)"
        raise RequestFailed(f"no answer from {host}:{port}{hint}")
    try:
        body = wire.decode_json(frames[0].payload)
        status = int(body["status"])
    except (wire.WireError, KeyError, TypeError, ValueError):
        raise RequestFailed("the server's answer was not understood") from None
    complete = frames[1].payload if len(frames) > 1 and frames[1].state == wire.STATE_COMPLETE else None
    if status == 200 and complete is None:
        raise RequestFailed("the server accepted but sent no token")
    return Reply(status, str(body.get("message", "")), body, complete)


