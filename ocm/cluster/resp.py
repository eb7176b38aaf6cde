"""
Redis's wire protocol (RESP 2), just what a node needs: a reply parser,
a connection that pipelines commands and waits for their replies (with a
deadline), and a connection that reads one channel's messages.

Why not a client library: a node needs one reconnect policy for its three
connections together (so that Redis going away and coming back is one
event, not three that flap), logs that name Redis's address, connections
that can be dropped and made again to another primary when Sentinel
switches (L{ocm.cluster.address}), and the chat path's publishing
connection stays a plain write of pre-encoded commands
(L{ocm.cluster.links.Publisher}).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from ocm.cluster import wire as cw


class RedisError(Exception):
    """An error reply from Redis (C{-ERR ...}, C{-NOSCRIPT ...}, a script's own error)."""


class Incomplete(Exception):
    """The buffer ends inside a reply: C{need} bytes would hold at least as much as is known."""

    def __init__(self, need: int) -> None:
        super().__init__(need)
        self.need = need


def parse(buffer: bytes | bytearray, at: int, decode: bool) -> tuple[Any, int]:
    """
    One reply starting at C{at}: (value, where the next starts).  Bulk
    strings are C{str} (UTF-8, undecodable bytes kept as surrogates) if
    C{decode}, else C{bytes}; errors are L{RedisError} values (not raised);
    nil is None.  Raises L{Incomplete} where the buffer ends too soon.
    """
    end = buffer.find(b"\r\n", at)
    if end < 0:
        raise Incomplete(len(buffer) + 1)
    kind = buffer[at]
    line = bytes(buffer[at + 1 : end])
    if kind == 0x3A:  # ':' integer
        return int(line), end + 2
    if kind == 0x24:  # '$' bulk string
        size = int(line)
        if size < 0:
            return None, end + 2
        start = end + 2
        stop = start + size
        if len(buffer) < stop + 2:
            raise Incomplete(stop + 2)
        raw = bytes(buffer[start:stop])
        return (raw.decode("utf-8", "surrogateescape") if decode else raw), stop + 2
    if kind == 0x2A:  # '*' array
        count = int(line)
        if count < 0:
            return None, end + 2
        items = []
        position = end + 2
        for _ in range(count):
            item, position = parse(buffer, position, decode)
            items.append(item)
        return items, position
    if kind == 0x2B:  # '+' status
        return line.decode("utf-8", "replace"), end + 2
    if kind == 0x2D:  # '-' error
        return RedisError(line.decode("utf-8", "replace")), end + 2
    raise ValueError(f"not a RESP reply: {bytes(buffer[at : at + 16])!r}")


class Replies:
    """Replies parsed as bytes arrive; a reply cut across reads is parsed once it is whole."""

    def __init__(self, decode: bool) -> None:
        self.decode = decode
        self.buffer = bytearray()
        self.need = 0

    def feed(self, data: bytes) -> list[Any]:
        """The replies completed by C{data}."""
        buffer = self.buffer
        buffer += data
        if len(buffer) < self.need:
            return []
        out = []
        at = 0
        try:
            while at < len(buffer):
                value, at = parse(buffer, at, self.decode)
                out.append(value)
            self.need = 0
        except Incomplete as e:
            self.need = e.need - at
        del buffer[:at]
        return out


def command(*parts: Any) -> bytes:
    """One command in RESP; str parts as UTF-8, numbers in decimal."""
    encoded = []
    for part in parts:
        if isinstance(part, bytes):
            encoded.append(part)
        elif isinstance(part, str):
            encoded.append(part.encode("utf-8", "surrogateescape"))
        else:
            encoded.append(str(part).encode("ascii"))
    return cw.resp_command(*encoded)


def handshake(password: str | None, db: int | None, name: str) -> list[bytes]:
    """The commands that start a connection: AUTH, SELECT, CLIENT SETNAME."""
    out = []
    if password is not None:
        out.append(command("AUTH", password))
    if db:
        out.append(command("SELECT", db))
    out.append(command("CLIENT", "SETNAME", name))
    return out


class LinkOwner(protocol.Factory):
    """What a connection tells the link that keeps it (L{ocm.cluster.links.Link})."""

    def ready(self, proto: Any) -> None:
        """The connection finished its handshake: usable."""

    def refused(self, proto: Any, error: str) -> None:
        """Redis refused the handshake (a wrong password, an unknown db)."""

    def lost(self, proto: Any) -> None:
        """The connection is gone."""


class CommandProtocol(protocol.Protocol):
    """
    A connection that pipelines commands and matches replies to them in
    order; a command unanswered within C{reply_timeout} seconds drops the
    connection (and fails every command waiting on it).
    """

    def __init__(self, owner: LinkOwner, clock: IReactorTime, start: list[bytes], reply_timeout: float, primary: bool = False) -> None:
        self.owner = owner
        self.clock = clock
        self.start = start
        self.reply_timeout = reply_timeout
        #: Whether the connection must be to a primary (ROLE after the handshake): a replica is refused.
        self.primary = primary
        self.replies = Replies(decode=True)
        self.waiting: deque[tuple[defer.Deferred[Any], IDelayedCall]] = deque()
        self.is_ready = False
        #: Scripts this connection has sent whole (later: by their SHA1 only).
        self.loaded: set[str] = set()

    def connectionMade(self) -> None:
        """Send the handshake; usable once every part of it is answered."""
        handshakes = [self._send(data) for data in self.start]
        if self.primary:
            handshakes.append(self.execute("ROLE"))

        def done(results: list[Any]) -> None:
            if self.primary and not (results and isinstance(results[-1], list) and results[-1][:1] == ["master"]):
                role = results[-1][0] if results and isinstance(results[-1], list) and results[-1] else "?"
                self.owner.refused(self, f"READONLY this Redis is a {role}, not the primary")
                if self.transport is not None:
                    self.transport.abortConnection()  # type: ignore[attr-defined]
                return
            self.is_ready = True
            self.owner.ready(self)

        def failed(failure: Failure) -> None:
            if failure.check(defer.FirstError):
                failure = failure.value.subFailure  # type: ignore[union-attr]
            if failure.check(RedisError):
                self.owner.refused(self, failure.getErrorMessage())
            if self.transport is not None:
                self.transport.abortConnection()  # type: ignore[attr-defined]

        defer.gatherResults(handshakes, consumeErrors=True).addCallbacks(done, failed)

    def execute(self, *parts: Any) -> defer.Deferred[Any]:
        """Send one command; fire with its reply (an error reply fails it with L{RedisError})."""
        return self._send(command(*parts))

    def evaluate(self, script: str, sha: str, *args: Any) -> defer.Deferred[Any]:
        """Run a Lua script (EVALSHA, or EVAL the first time on this connection)."""
        if sha in self.loaded:
            return self.execute("EVALSHA", sha, 0, *args)
        self.loaded.add(sha)
        return self.execute("EVAL", script, 0, *args)

    def _send(self, data: bytes) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        call = self.clock.callLater(self.reply_timeout, self._late)
        self.waiting.append((d, call))
        self.transport.write(data)  # type: ignore[union-attr]
        return d

    def _late(self) -> None:
        """A reply is overdue: Redis is stuck or out of reach; the link reconnects."""
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        """Fire each waiting command with its reply, in order."""
        try:
            replies = self.replies.feed(data)
        except ValueError:
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        for reply in replies:
            if not self.waiting:
                self.transport.abortConnection()  # type: ignore[union-attr]
                return
            d, call = self.waiting.popleft()
            if call.active():
                call.cancel()
            if isinstance(reply, RedisError):
                d.errback(reply)
            else:
                d.callback(reply)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Every command still waiting fails."""
        self.is_ready = False
        waiting, self.waiting = self.waiting, deque()
        for d, call in waiting:
            if call.active():
                call.cancel()
            d.errback(ConnectionError("the connection to Redis was lost"))
        self.owner.lost(self)


class SubscriberProtocol(protocol.Protocol):
    """A connection subscribed to one channel: its messages go to C{received}, as bytes."""

    def __init__(self, owner: LinkOwner, start: list[bytes], channel: bytes, received: Callable[[bytes], None]) -> None:
        self.owner = owner
        self.start = start
        self.channel = channel
        self.received = received
        self.replies = Replies(decode=False)
        self.pending = len(start) + 1
        self.is_ready = False

    def connectionMade(self) -> None:
        """Handshake, then SUBSCRIBE; usable once subscribed."""
        self.transport.write(b"".join(self.start) + command(b"SUBSCRIBE", self.channel))  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        """The handshake's replies, the subscription's, then messages."""
        try:
            replies = self.replies.feed(data)
        except ValueError:
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        for reply in replies:
            if isinstance(reply, RedisError):
                self.owner.refused(self, str(reply))
                self.transport.abortConnection()  # type: ignore[union-attr]
                return
            if self.pending:
                self.pending -= 1
                if not self.pending:
                    self.is_ready = True
                    self.owner.ready(self)
                continue
            if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                self.received(reply[2])

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """No message arrives until the next connection."""
        self.is_ready = False
        self.owner.lost(self)


def script_sha(script: str) -> str:
    """The SHA1 Redis knows a script by."""
    return hashlib.sha1(script.encode("utf-8")).hexdigest()
