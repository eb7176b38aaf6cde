"""The cluster's own Redis client (L{ocm.cluster.resp}) and reachability (L{ocm.cluster.state.Reachability}), pure."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from ocm.cluster.resp import CommandProtocol, LinkOwner, RedisError, Replies, SubscriberProtocol, command, handshake
from ocm.cluster.state import Reachability

SAMPLE = b"+OK\r\n:42\r\n$5\r\nh\xc3\xa9y\r\r\n$-1\r\n*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$3\r\n\x00\r\n\r\n*0\r\n-ERR no\r\n*2\r\n*1\r\n:1\r\n$0\r\n\r\n"


class Parsing(unittest.TestCase):
    """Replies parse the same whole or cut anywhere."""

    def expected(self) -> list[Any]:
        return ["OK", 42, b"h\xc3\xa9y\r", None, [b"message", b"ch", b"\x00\r\n"], [], "ERR no", [[1], b""]]

    def normal(self, replies: list[Any]) -> list[Any]:
        return [str(r) if isinstance(r, RedisError) else r for r in replies]

    def test_whole(self) -> None:
        self.assertEqual(self.normal(Replies(decode=False).feed(SAMPLE)), self.expected())

    @given(st.lists(st.integers(0, len(SAMPLE)), max_size=8))
    def test_cut_anywhere(self, cuts: list[int]) -> None:
        replies = Replies(decode=False)
        got: list[Any] = []
        at = 0
        for cut in sorted(cuts) + [len(SAMPLE)]:
            got += replies.feed(SAMPLE[at:cut])
            at = cut
        self.assertEqual(self.normal(got), self.expected())

    def test_decoded(self) -> None:
        self.assertEqual(Replies(decode=True).feed(b"$4\r\n\xe9\xa4\xa8x\r\n"), ["館x"])

    def test_commands(self) -> None:
        self.assertEqual(command("EVALSHA", "ab", 0, b"\x00"), b"*4\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n0\r\n$1\r\n\x00\r\n")
        self.assertEqual(handshake("pw", 2, "ocm:a:scripts"), [command("AUTH", "pw"), command("SELECT", 2), command("CLIENT", "SETNAME", "ocm:a:scripts")])
        self.assertEqual(handshake(None, 0, "n"), [command("CLIENT", "SETNAME", "n")])


class Owner(LinkOwner):
    def __init__(self) -> None:
        self.events: list[Any] = []

    def ready(self, proto: Any) -> None:
        self.events.append("ready")

    def refused(self, proto: Any, error: str) -> None:
        self.events.append(("refused", error))

    def lost(self, proto: Any) -> None:
        self.events.append("lost")


class Commands(unittest.TestCase):
    """Pipelined commands get their own replies, in order; a late reply drops the connection."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.owner = Owner()
        self.proto = CommandProtocol(self.owner, self.clock, handshake(None, 0, "n"), 3.0)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def test_handshake_then_commands(self) -> None:
        self.assertEqual(self.transport.value(), command("CLIENT", "SETNAME", "n"))
        self.proto.dataReceived(b"+OK\r\n")
        self.assertEqual(self.owner.events, ["ready"])
        got: list[Any] = []
        self.proto.evaluate("return 1", "sha", "a").addCallback(got.append)
        self.proto.evaluate("return 1", "sha", "b").addCallback(got.append)
        self.proto.execute("HGETALL", "k").addErrback(lambda f: got.append(f.getErrorMessage()))
        self.assertIn(command("EVAL", "return 1", 0, "a"), self.transport.value())
        self.assertIn(command("EVALSHA", "sha", 0, "b"), self.transport.value())
        self.proto.dataReceived(b":1\r\n*1\r\n$1\r\nx\r\n-WRONG")
        self.proto.dataReceived(b"TYPE\r\n")
        self.assertEqual(got, [1, ["x"], "WRONGTYPE"])

    def test_refused_handshake(self) -> None:
        self.proto.dataReceived(b"-NOAUTH Authentication required.\r\n")
        self.assertEqual(self.owner.events, [("refused", "NOAUTH Authentication required.")])
        self.assertTrue(self.transport.disconnecting)

    def test_late_reply_drops_the_connection(self) -> None:
        self.proto.dataReceived(b"+OK\r\n")
        failed: list[Any] = []
        self.proto.execute("PING").addErrback(failed.append)
        self.clock.advance(3.0)
        self.assertTrue(self.transport.disconnecting)
        self.proto.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(len(failed), 1)
        self.assertEqual(self.owner.events, ["ready", "lost"])


class Subscribing(unittest.TestCase):
    def test_messages_after_the_subscription(self) -> None:
        owner = Owner()
        got: list[bytes] = []
        proto = SubscriberProtocol(owner, handshake(None, 0, "s"), b"ocm:node:a", got.append)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.assertTrue(transport.value().endswith(command(b"SUBSCRIBE", b"ocm:node:a")))
        proto.dataReceived(b"+OK\r\n*3\r\n$9\r\nsubscribe\r\n$10\r\nocm:node:a\r\n:1\r\n")
        self.assertEqual(owner.events, ["ready"])
        proto.dataReceived(b"*3\r\n$7\r\nmessage\r\n$10\r\nocm:node:a\r\n$4\r\n\x01\r\n\x02\r\n")
        self.assertEqual(got, [b"\x01\r\n\x02"])


class Reachable(unittest.TestCase):
    """Redis is reachable when all three connections are: told once each way."""

    def test_start_up_with_redis_there(self) -> None:
        r = Reachability(("a", "b", "c"))
        self.assertEqual([r.link_up("a"), r.link_up("b"), r.link_up("c")], [None, None, "up"])

    def test_start_up_without_redis(self) -> None:
        r = Reachability(("a", "b"))
        self.assertEqual([r.failed(), r.failed(), r.link_up("a"), r.failed(), r.link_up("b")], ["down", None, None, None, "back"])

    def test_restart_no_flapping(self) -> None:
        r = Reachability(("a", "b", "c"))
        for link in "abc":
            r.link_up(link)
        changes = [r.link_down("b"), r.link_down("a"), r.failed(), r.link_up("a"), r.link_down("c"), r.link_up("b"), r.link_up("c")]
        self.assertEqual([c for c in changes if c], ["down", "back"])
