"""
L{ocm.relay.port.FastPort} on real sockets, with both read loops: batches
of C{recvmmsg} (the C extension's C{recv_batch}) and C{recvfrom} one at a
time in Python; and C{recv_batch} itself.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.trial import unittest

from ocm import wire
from ocm.relay import fanout, port as udpport
from ocm.relay.protocol import LISTEN_SIZE, Relay
from ocm.rooms import Rooms
from ocm.rooms.peers import Peers

NEEDS_C = None if fanout.NATIVE else "the C fan-out was not built"


class Recorder(DatagramProtocol):
    """Keeps what it is handed; raises for C{boom}."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, Any]] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if data == b"boom":
            raise RuntimeError("boom")
        self.got.append((data, addr))


class ReadLoopMixin:
    """The tests, for one read loop (C{batched})."""

    batched = True

    def setUp(self) -> None:
        if self.batched and NEEDS_C:
            raise unittest.SkipTest(NEEDS_C)
        if not self.batched:
            self.patch(udpport, "recv_batch", None)  # type: ignore[attr-defined]

    def listen(self, proto: DatagramProtocol, host: str = "127.0.0.1") -> udpport.FastPort:
        port = udpport.FastPort(0, proto, interface=host, maxPacketSize=LISTEN_SIZE, reactor=reactor)
        port.startListening()
        self.addCleanup(port.stopListening)  # type: ignore[attr-defined]
        return port

    def client(self, family: int = socket.AF_INET, host: str = "127.0.0.1") -> socket.socket:
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind((host, 0))
        self.addCleanup(s.close)  # type: ignore[attr-defined]
        return s

    def test_reads_and_survives_handler_errors(self) -> None:
        """Every datagram reaches the protocol with its source; one that makes it raise is logged, the rest still arrive."""
        proto = Recorder()
        port = self.listen(proto)
        s = self.client()
        for data in (b"a", b"boom", b"b"):
            s.sendto(data, ("127.0.0.1", port.getHost().port))
        port.doRead()
        self.assertEqual(proto.got, [(b"a", s.getsockname()), (b"b", s.getsockname())])  # type: ignore[attr-defined]
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)  # type: ignore[attr-defined]
        port.doRead()  # nothing left: returns quietly
        self.assertEqual(len(proto.got), 2)  # type: ignore[attr-defined]

    def test_ipv6_source(self) -> None:
        """An IPv6 source is (host, port), without flow info and scope id, as Twisted gives it."""
        try:
            s = self.client(socket.AF_INET6, "::1")
        except OSError:
            raise unittest.SkipTest("no IPv6 here") from None
        proto = Recorder()
        port = self.listen(proto, "::1")
        s.sendto(b"six", ("::1", port.getHost().port))
        port.doRead()
        self.assertEqual(proto.got, [(b"six", ("::1", s.getsockname()[1]))])  # type: ignore[attr-defined]

    def test_burst_is_bounded(self) -> None:
        """One wake-up reads at most READ_BURST datagrams; the rest wait for the next."""
        self.patch(udpport, "READ_BURST", 64)  # type: ignore[attr-defined]
        self.patch(udpport, "RECV_BATCH", 16)  # type: ignore[attr-defined]
        proto = Recorder()
        port = self.listen(proto)
        s = self.client()
        for i in range(150):  # within the default receive buffer
            s.sendto(b"%d" % i, ("127.0.0.1", port.getHost().port))
        port.doRead()
        self.assertEqual(len(proto.got), 64)  # type: ignore[attr-defined]
        port.doRead()
        self.assertEqual(len(proto.got), 128)  # type: ignore[attr-defined]
        port.doRead()
        self.assertEqual([data for data, _ in proto.got], [b"%d" % i for i in range(150)])  # type: ignore[attr-defined]

    def test_reads_until_drained(self) -> None:
        """
        What arrives while a wake-up works is read in the same wake-up
        (a busy relay returns to the reactor only when its port is drained,
        or after READ_BURST datagrams).
        """
        proto = Recorder()
        port = self.listen(proto)
        s = self.client()
        server = ("127.0.0.1", port.getHost().port)
        handle = proto.datagramReceived

        def more(data: bytes, addr: Any) -> None:
            handle(data, addr)
            if data == b"first":
                for i in range(3):
                    s.sendto(b"%d" % i, server)

        proto.datagramReceived = more  # type: ignore[method-assign]
        s.sendto(b"first", server)
        port.doRead()
        self.assertEqual([data for data, _ in proto.got], [b"first", b"0", b"1", b"2"])  # type: ignore[attr-defined]

    def test_oversize_in_a_batch(self) -> None:
        """
        Datagrams over 4096 bytes, up to larger than the port listens for
        (cut by the kernel: MSG_TRUNC), read in one batch with legal ones:
        each oversize one is dropped and counted, the legal ones relayed.
        """
        rooms = Rooms(timeout=30)
        relay = Relay(rooms, reactor)
        port = self.listen(relay)
        server = ("127.0.0.1", port.getHost().port)
        host = rooms.create("r", "host", "127.0.0.1", 0)
        bob = rooms.join(host.room, "bob", "127.0.0.1", 0)
        hs, bs = self.client(), self.client()
        hs.settimeout(2)
        hs.sendto(wire.encode_datagram(b"r", host.token), server)
        bs.sendto(wire.encode_datagram(b"r", bob.token), server)
        port.doRead()
        hs.recv(5000), hs.recv(5000)  # welcome, join
        legal = wire.encode_datagram(b"r", bob.token, b"x" * (4096 - 2 - 1 - 32))
        self.assertEqual(len(legal), 4096)
        for extra in (1, 1024, 1025, 60000):
            bs.sendto(legal + b"x" * extra, server)
            bs.sendto(wire.encode_datagram(b"r", bob.token, b"after %d" % extra), server)
        bs.sendto(legal, server)
        port.doRead()
        self.assertEqual(rooms.stats.dropped["oversize"], 4)
        got = [hs.recv(5000) for _ in range(5)]
        self.assertEqual(got[:4], [wire.encode_relayed(b"bob", b"after %d" % extra) for extra in (1, 1024, 1025, 60000)])
        self.assertEqual(got[4], wire.encode_relayed(b"bob", legal[2 + 1 + 32 :]))


class BatchedReadTests(ReadLoopMixin, unittest.TestCase):
    """The C extension's C{recvmmsg} batches."""


class PythonReadTests(ReadLoopMixin, unittest.TestCase):
    """C{recvfrom} one at a time, where the extension was not built."""

    batched = False


class RecvBatchTests(unittest.TestCase):
    """C{recv_batch} itself."""

    skip = NEEDS_C

    def test_batch(self) -> None:
        """What waits, in order, with sources; cut at C{count}; empty when drained."""
        r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        r.bind(("127.0.0.1", 0))
        self.addCleanup(r.close)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        self.addCleanup(s.close)
        for data in (b"one", b"", b"three"):
            s.sendto(data, r.getsockname())
        recv = fanout.recv_batch
        assert recv is not None
        self.assertEqual(recv(r.fileno(), 2, 100), [(b"one", s.getsockname()), (b"", s.getsockname())])
        self.assertEqual(recv(r.fileno(), 2, 4), [(b"thre", s.getsockname())])  # cut to size, as recvfrom cuts
        self.assertEqual(recv(r.fileno(), 2, 100), [])

    def test_bad_arguments(self) -> None:
        """A count or size out of range, a closed socket: exceptions, nothing read."""
        recv = fanout.recv_batch
        assert recv is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as r:
            self.assertRaises(ValueError, recv, r.fileno(), 0, 100)
            self.assertRaises(ValueError, recv, r.fileno(), 257, 100)
            self.assertRaises(ValueError, recv, r.fileno(), 1, 0)
            fd = r.fileno()
        self.assertRaises(OSError, recv, fd, 1, 100)


class RelayBatchArgumentTests(unittest.TestCase):
    """C{relay_batch}'s arguments, checked before anything is read."""

    skip = NEEDS_C

    def test_bad_arguments(self) -> None:
        """A count, size or budget out of range, a clock that cannot be called: exceptions, nothing read."""
        rooms = Rooms(timeout=30)
        relay = Relay(rooms, Clock())
        read = fanout.relay_batch
        assert read is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as r:
            r.bind(("127.0.0.1", 0))
            r.sendto(b"waiting", r.getsockname())

            def call(count: int, size: int, budget: int, seconds: Any) -> Any:
                return read(r.fileno(), count, size, budget, seconds, rooms.tokens, rooms.stats, rooms, relay.datagramReceived, list)

            for count, size, budget in ((0, 100, 1), (257, 100, 1), (1, 0, 1), (1, 100, 0)):
                self.assertRaises(ValueError, call, count, size, budget, Clock().seconds)
            self.assertRaises(TypeError, call, 1, 100, 1, 12.5)
            self.assertEqual(call(4, 100, 4, Clock().seconds), 1)  # still there: read now (and dropped as malformed)
            self.assertEqual(rooms.stats.dropped["malformed"], 1)


class Sharing(Peers):
    """Peers of a cluster node: records the chat published to them."""

    shared = True

    def __init__(self) -> None:
        self.published: list[bytes] = []

    def chat(self, room: Any, out: bytes) -> None:
        self.published.append(out)


class RelayPathMixin:
    """
    A relay behind a real port, every rule of SPEC section 2 over one
    batch of datagrams: the same results on each read path (C{path}).
    """

    #: C{c}: batches relayed in C (C{relay_batch}); C{batches}: C{recvmmsg}
    #: batches handed to Python; C{python}: C{recvfrom}, one at a time.
    path = "c"

    def setUp(self) -> None:
        if self.path != "python" and NEEDS_C:
            raise unittest.SkipTest(NEEDS_C)
        if self.path == "python":
            self.patch(udpport, "recv_batch", None)  # type: ignore[attr-defined]
        if self.path == "batches":
            self.patch(Relay, "batch_reader", lambda relay: None)  # type: ignore[attr-defined]
        self.clock = Clock()
        self.clock.advance(1000)

    def serve(self, *more: str, **options: Any) -> None:
        """A relay on 127.0.0.1 with members C{a}, C{b}, C{c} (and C{more}) of room C{r}, bound; their sockets."""
        self.rooms = Rooms(timeout=30, **options)
        self.relay = Relay(self.rooms, self.clock)
        self.port = udpport.FastPort(0, self.relay, interface="127.0.0.1", maxPacketSize=LISTEN_SIZE, reactor=reactor)
        self.port.startListening()
        self.addCleanup(self.port.stopListening)  # type: ignore[attr-defined]
        self.server = ("127.0.0.1", self.port.getHost().port)
        host = self.rooms.create("r", "a", "127.0.0.1", 0)
        self.members = {"a": host}
        self.members.update((name, self.rooms.join(host.room, name, "127.0.0.1", 0)) for name in ("b", "c", *more))
        self.sockets = {name: self.socket() for name in self.members}
        for name in self.members:
            self.send(name)
        self.read()
        for name in self.members:
            self.received(name)
        self.handled: list[bytes] = []
        handle = self.relay.datagramReceived

        def spy(data: bytes, addr: Any) -> None:
            self.handled.append(data)
            handle(data, addr)

        self.relay.datagramReceived = spy  # type: ignore[method-assign]

    def after_hello(self, then: Any) -> None:
        """C{then()} runs while Python handles a C{hello} (a datagram of the batch that the C path hands on)."""
        handle = self.relay.datagramReceived

        def hello_then(data: bytes, addr: Any) -> None:
            handle(data, addr)
            if data.endswith(wire.HELLO):
                then()

        self.relay.datagramReceived = hello_then  # type: ignore[method-assign]

    def socket(self) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        self.addCleanup(s.close)  # type: ignore[attr-defined]
        return s

    def send(self, name: str, message: bytes = b"", sock: socket.socket | None = None, token: bytes | None = None) -> None:
        """C{name}'s datagram carrying C{message}, from its socket (or C{sock})."""
        token = self.members[name].token if token is None else token
        (sock or self.sockets[name]).sendto(wire.encode_datagram(b"r", token, message), self.server)

    def read(self) -> None:
        """The port reads what waits (one batch)."""
        self.port.doRead()

    def received(self, name: str) -> list[bytes]:
        """What C{name}'s socket received since the last look."""
        got = []
        while True:
            try:
                got.append(self.sockets[name].recv(5000))
            except BlockingIOError:
                return got

    def notices(self, name: str) -> list[dict[str, Any]]:
        return [wire.decode_notice(data[1:]) for data in self.received(name) if data[0] == 0]

    def test_chat(self) -> None:
        """Chat reaches every other member, counted; on the C path without Python's per-datagram path."""
        self.serve()
        stats = self.rooms.stats
        received, relayed = stats.received, stats.relayed
        self.send("a", b"hello")
        self.send("b", "h\u00e9 \u2603".encode())
        self.send("a")  # a keepalive
        self.read()
        self.assertEqual(self.received("a"), [wire.encode_relayed(b"b", "h\u00e9 \u2603".encode())])
        self.assertEqual(self.received("b"), [wire.encode_relayed(b"a", b"hello")])
        self.assertEqual(self.received("c"), [wire.encode_relayed(b"a", b"hello"), wire.encode_relayed(b"b", "h\u00e9 \u2603".encode())])
        self.assertEqual((stats.received - received, stats.relayed - relayed), (3, 4))
        self.assertEqual(sum(stats.dropped.values()), 0)
        self.assertEqual(len(self.handled), 0 if self.path == "c" else 3)

    def test_reads_until_drained(self) -> None:
        """Chat that arrives while Python handles a datagram of the batch is relayed in the same wake-up."""
        self.serve()
        self.after_hello(lambda: self.send("b", b"meanwhile"))
        self.send("a", wire.HELLO)
        self.read()
        self.assertEqual(self.received("c"), [wire.encode_relayed(b"b", b"meanwhile")])

    def test_time_of_each_read(self) -> None:
        """Chat read after the clock moved, in the same wake-up, is seen at the new time."""
        self.serve()

        def later() -> None:
            self.clock.advance(7)
            self.send("b", b"later")

        self.after_hello(later)
        self.send("a", wire.HELLO)
        self.read()
        self.assertEqual((self.members["a"].last_seen, self.members["b"].last_seen), (1000, 1007))

    def test_burst_is_bounded(self) -> None:
        """One wake-up reads at most READ_BURST datagrams, however many wait; the rest, at the next."""
        self.patch(udpport, "READ_BURST", 4)  # type: ignore[attr-defined]
        self.patch(udpport, "RECV_BATCH", 3)  # type: ignore[attr-defined]
        self.serve()
        for i in range(6):
            self.send("a", b"%d" % i)
        self.read()
        self.assertEqual(self.received("b"), [wire.encode_relayed(b"a", b"%d" % i) for i in range(4)])
        self.read()
        self.assertEqual(self.received("b"), [wire.encode_relayed(b"a", b"%d" % i) for i in range(4, 6)])

    def test_activity(self) -> None:
        """Chat and keepalives refresh the sender's last-seen time and clear its failures."""
        self.serve()
        a, b = self.members["a"], self.members["b"]
        a.failures = b.failures = 3
        self.clock.advance(5)
        self.send("a", b"hi")
        self.send("b")
        self.read()
        self.assertEqual((a.last_seen, a.failures, b.last_seen, b.failures), (1005, 0, 1005, 0))

    def test_rate_limit(self) -> None:
        """Beyond the burst, chat is dropped, counted, and the sender told once."""
        self.serve(rate=1.0, burst=2)
        for i in range(4):
            self.send("a", b"%d" % i)
        self.read()
        self.assertEqual(self.received("b"), [wire.encode_relayed(b"a", b"0"), wire.encode_relayed(b"a", b"1")])
        self.assertEqual(self.rooms.stats.dropped["rate_limited"], 2)
        self.assertEqual([n["code"] for n in self.notices("a")], ["rate_limited"])
        self.clock.advance(1.5)
        self.send("a", b"later")
        self.read()
        self.assertEqual(self.received("b"), [wire.encode_relayed(b"a", b"later")])

    def test_refused(self) -> None:
        """Muted, too long, bad UTF-8: dropped and counted, the sender told when the SPEC says."""
        long = "l" * 100
        self.serve(long)
        self.members["c"].room.muted.add("c")
        self.send("c", b"shh")
        self.send(long, b"x" * (wire.MAX_DATAGRAM - 2 - 1 - 32))
        self.send("a", b"\xff\xfe")
        self.send("a", b"\xed\xa0\x80")  # a surrogate: not UTF-8 for Python
        self.send("b", b"fine")
        self.read()
        dropped = self.rooms.stats.dropped
        self.assertEqual((dropped["muted"], dropped["too_long"], dropped["bad_utf8"]), (1, 1, 2))
        self.assertEqual(self.received("a"), [wire.encode_relayed(b"b", b"fine")])
        self.assertEqual([n["code"] for n in self.notices("c")], ["muted"])
        self.assertEqual([n["code"] for n in self.notices(long)], ["too_long"])

    def test_drops(self) -> None:
        """Malformed, unknown token, wrong room, wrong port: dropped and counted, nothing relayed."""
        self.serve()
        other = self.socket()
        self.sockets["a"].sendto(b"\x05", self.server)
        self.sockets["a"].sendto(b"\x09\x20r", self.server)
        self.send("a", b"x", token=b"0" * 32)
        self.sockets["a"].sendto(wire.encode_datagram(b"q", self.members["a"].token, b"x"), self.server)
        self.send("a", b"from elsewhere", sock=other)
        self.read()
        dropped = self.rooms.stats.dropped
        self.assertEqual(
            {k: dropped[k] for k in ("malformed", "unknown_token", "wrong_room", "wrong_port")},
            {"malformed": 2, "unknown_token": 1, "wrong_room": 1, "wrong_port": 1},
        )
        self.assertEqual(self.rooms.stats.received, 3 + 5)
        self.assertEqual(self.received("b"), [])

    def test_order(self) -> None:
        """A batch is handled in order: chat after its sender's leave is not relayed, nor sent to it."""
        self.serve()
        self.send("b", b"before")
        self.send("a", b"\x00leave")
        self.send("a", b"after")
        self.send("b", b"to c")
        self.read()
        self.assertEqual(self.received("a"), [wire.encode_relayed(b"b", b"before")])
        got = self.received("c")
        self.assertEqual(got[0], wire.encode_relayed(b"b", b"before"))
        self.assertEqual([wire.decode_notice(data[1:])["event"] for data in got[1:]], ["closed"])
        self.assertEqual(self.rooms.stats.dropped["unknown_token"], 2)

    def test_history_and_peers(self) -> None:
        """A room with history keeps its chat; a node with peers publishes it."""
        self.serve()
        peers = Sharing()
        self.rooms.peers = peers
        self.members["a"].room.history_size = 5
        self.send("a", b"kept")
        self.read()
        self.assertEqual(self.received("b"), [wire.encode_relayed(b"a", b"kept")])
        self.assertEqual(len(self.members["a"].room.history), 1)
        self.assertEqual(peers.published, [wire.encode_relayed(b"a", b"kept")])

    def test_failed_delivery(self) -> None:
        """A member whose route fails is set aside and counted; the others still get the chat."""
        self.serve()
        d = self.rooms.join(self.members["a"].room, "d", "127.0.0.1", 0)

        class Refused:
            sockaddr = None
            peer = ("127.0.0.1", 9)

            def send(self, data: bytes) -> None:
                raise ConnectionRefusedError(111, "refused")

        self.relay.send_all(self.rooms.bind(d, Refused(), 1000))  # type: ignore[arg-type]
        errors = self.rooms.stats.send_errors
        self.send("a", b"hi")
        self.read()
        self.assertEqual(self.received("c")[-1], wire.encode_relayed(b"a", b"hi"))
        self.assertEqual((d.failures, self.rooms.stats.send_errors - errors), (1, 1))

    def test_handler_failure(self) -> None:
        """A datagram whose handling raises is logged; the rest of the batch is relayed."""
        self.serve()
        handle = self.relay.datagramReceived

        def boom(data: bytes, addr: Any) -> None:
            if data.endswith(b"who"):
                raise RuntimeError("boom")
            handle(data, addr)

        self.relay.datagramReceived = boom  # type: ignore[method-assign]
        self.send("a", b"\x00who")
        self.send("a", b"next")
        self.read()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)  # type: ignore[attr-defined]
        self.assertEqual(self.received("b"), [wire.encode_relayed(b"a", b"next")])


class CRelayPathTests(RelayPathMixin, unittest.TestCase):
    """Batches relayed in C."""


class BatchRelayPathTests(RelayPathMixin, unittest.TestCase):
    """Batches handed to Python one datagram at a time."""

    path = "batches"


class PythonRelayPathTests(RelayPathMixin, unittest.TestCase):
    """C{recvfrom} and Python, as without the C extension."""

    path = "python"
