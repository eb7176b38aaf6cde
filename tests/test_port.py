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
from twisted.trial import unittest

from ocm import wire
from ocm.relay import fanout, port as udpport
from ocm.relay.protocol import LISTEN_SIZE, Relay
from ocm.rooms import Rooms

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
