"""
The fan-out loops (L{ocm.fanout}): the C one and the Python one send the
same datagrams to the same members and report failures the same way.  Real
sockets on 127.0.0.1 and ::1.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Any

from twisted.trial import unittest

from ocm.relay import fanout
from ocm.relay.routes import SealedRoute, SealedUdpRoute, UdpRoute
from ocm.rooms import Rooms
from ocm.sealing import Channel
from tests.helpers import FakeDatagramTransport

NEEDS_C = None if fanout.NATIVE else "the C fan-out was not built"


def has_ipv6() -> bool:
    """Whether ::1 can be bound here."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class PackAddressTests(unittest.TestCase):
    """L{fanout.pack_address}: a C{struct sockaddr} from recvfrom's tuple."""

    skip = NEEDS_C

    def test_ipv4(self) -> None:
        """sockaddr_in: the family, the port in network order, the address."""
        packed = fanout.pack_address(("127.0.0.2", 0x1234))
        assert packed is not None
        self.assertEqual(len(packed), 16)
        self.assertEqual(struct.unpack("=H", packed[:2])[0], socket.AF_INET)
        self.assertEqual(packed[2:8], b"\x12\x34\x7f\x00\x00\x02")

    def test_ipv6(self) -> None:
        """sockaddr_in6, IPv4-mapped addresses included."""
        packed = fanout.pack_address(("::ffff:127.0.0.1", 9))
        assert packed is not None
        self.assertEqual(len(packed), 28)
        self.assertEqual(struct.unpack("=H", packed[:2])[0], socket.AF_INET6)
        self.assertEqual(packed[2:4], b"\x00\x09")
        self.assertEqual(packed[8:24], socket.inet_pton(socket.AF_INET6, "::ffff:127.0.0.1"))

    def test_unpackable(self) -> None:
        """A scoped address, a name or a bad port: None (the Python loop sends those)."""
        self.assertIsNone(fanout.pack_address(("fe80::1%eth0", 9)))
        self.assertIsNone(fanout.pack_address(("localhost", 9)))
        self.assertIsNone(fanout.pack_address(("127.0.0.1", 70000)))


class FanOutTests(unittest.TestCase):
    """Both loops against real sink sockets."""

    def room(self, family: int, host: str, count: int) -> tuple[Any, list[Any], list[socket.socket]]:
        """A sending socket, C{count} bound members and their sink sockets."""
        rooms = Rooms(timeout=30)
        sender = socket.socket(family, socket.SOCK_DGRAM)
        sender.bind((host, 0))
        sender.setblocking(False)
        self.addCleanup(sender.close)
        members, sinks = [], []
        room = None
        for i in range(count):
            sink = socket.socket(family, socket.SOCK_DGRAM)
            sink.bind((host, 0))
            sink.settimeout(2)
            self.addCleanup(sink.close)
            addr = sink.getsockname()[:2]
            member = rooms.create("r", "m0", host, 0) if room is None else rooms.join(room, f"m{i}", host, 0)
            room = member.room
            rooms.bind(member, UdpRoute(sender.sendto, addr), 0)
            members.append(member)
            sinks.append(sink)
        return sender, members, sinks

    def check_loop(self, fan: fanout.FanOut, sinks: list[socket.socket], members: list[Any]) -> None:
        """Member 1 sends: every other sink gets the datagram once; its own gets nothing."""
        sent, failed = fan(b"\x02m1hello", members, members[1])
        self.assertEqual((sent, failed), (len(members) - 1, None))
        for i, sink in enumerate(sinks):
            if i == 1:
                sink.setblocking(False)
                self.assertRaises(BlockingIOError, sink.recv, 100)
            else:
                self.assertEqual(sink.recv(100), b"\x02m1hello")

    def test_python_loop(self) -> None:
        """The Python loop."""
        sender, members, sinks = self.room(socket.AF_INET, "127.0.0.1", 4)
        self.check_loop(fanout.fan_out_of(FakeDatagramTransport()), sinks, members)

    def test_plain_python_loop(self) -> None:
        """The plain relay's Python loop: UDP members straight through sendto, others through their routes."""
        sender, members, sinks = self.room(socket.AF_INET, "127.0.0.1", 4)
        self.check_loop(fanout.plain_python_fan_out(sender.sendto, UdpRoute), sinks, members)
        written: list[bytes] = []

        class Other:
            peer = ("127.0.0.1", 1)
            sockaddr = None

            def send(self, data: bytes) -> None:
                written.append(data)

        members[3].route = Other()  # type: ignore[assignment]

        def failing(data: bytes, addr: Any) -> None:
            if addr == members[0].addr:
                raise OSError(errno.EPERM, "injected")
            sender.sendto(data, addr)

        sent, failed = fanout.plain_python_fan_out(failing, UdpRoute)(b"\x02m1hi", members, members[1])
        self.assertEqual(sent, 2)
        assert failed is not None
        self.assertEqual([(m, e.errno) for m, e in failed], [(members[0], errno.EPERM)])  # type: ignore[attr-defined]
        self.assertEqual(written, [b"\x02m1hi"])

    def test_native_loop(self) -> None:
        """The C loop, on IPv4."""
        if NEEDS_C:
            raise unittest.SkipTest(NEEDS_C)
        sender, members, sinks = self.room(socket.AF_INET, "127.0.0.1", 4)
        self.check_loop(fanout.native_fan_out(sender.fileno()), sinks, members)

    def test_native_loop_ipv6(self) -> None:
        """The C loop, on IPv6."""
        if NEEDS_C or not has_ipv6():
            raise unittest.SkipTest(NEEDS_C or "no IPv6 here")
        sender, members, sinks = self.room(socket.AF_INET6, "::1", 3)
        self.check_loop(fanout.native_fan_out(sender.fileno()), sinks, members)

    def test_native_failures(self) -> None:
        """
        A send that fails is returned with its errno and does not stop the
        loop; a member with no packed address is sent to the Python way.
        """
        if NEEDS_C:
            raise unittest.SkipTest(NEEDS_C)
        sender, members, sinks = self.room(socket.AF_INET, "127.0.0.1", 4)
        members[0].sockaddr = b"\x02\x00"  # too short for a sockaddr_in
        members[2].sockaddr = None
        sent, failed = fanout.native_fan_out(sender.fileno())(b"\x02m1hi", members, members[1])
        self.assertEqual(sent, 2)
        assert failed is not None
        self.assertEqual([(m, type(e), e.errno) for m, e in failed], [(members[0], OSError, errno.EINVAL)])
        self.assertEqual(sinks[2].recv(100), b"\x02m1hi")
        self.assertEqual(sinks[3].recv(100), b"\x02m1hi")

    def test_native_route_failures(self) -> None:
        """
        A member with no packed address is written by its route; what the
        route raises comes back as it was raised, beside the others' errnos.
        """
        if NEEDS_C:
            raise unittest.SkipTest(NEEDS_C)
        sender, members, sinks = self.room(socket.AF_INET, "127.0.0.1", 4)
        raised = OSError(errno.ENOBUFS, "injected")

        def sendto(data: bytes, addr: Any) -> None:
            raise raised

        members[2].route = UdpRoute(sendto, members[2].addr)
        members[2].sockaddr = None
        members[3].sockaddr = b"\x02\x00"
        sent, failed = fanout.native_fan_out(sender.fileno())(b"\x02m1hi", members, members[1])
        self.assertEqual(sent, 1)
        assert failed is not None
        self.assertEqual(len(failed), 2)
        self.assertEqual(failed[0], (members[2], raised))
        self.assertEqual((failed[1][0], type(failed[1][1]), failed[1][1].errno), (members[3], OSError, errno.EINVAL))  # type: ignore[attr-defined]
        self.assertEqual(sinks[0].recv(100), b"\x02m1hi")

    def test_native_batches(self) -> None:
        """
        A room larger than one C{sendmmsg} batch (256): failures in the middle
        of a batch and at its edges are each returned with their errno, and
        every other member gets the datagram once.
        """
        if NEEDS_C:
            raise unittest.SkipTest(NEEDS_C)
        sender, members, sinks = self.room(socket.AF_INET, "127.0.0.1", 600)
        recipients = [m for m in members if m is not members[1]]
        # places in the batches: first and last of each, and one inside
        bad_members = [recipients[i] for i in (0, 100, 255, 256, 257, 511, 512, 597)]
        for member in bad_members:
            member.sockaddr = b"\x02\x00"  # too short for a sockaddr_in: EINVAL
        recipients[598].sockaddr = None  # the last: sent through its route
        sent, failed = fanout.native_fan_out(sender.fileno())(b"\x02m1hi", members, members[1])
        self.assertEqual(sent, 600 - 1 - len(bad_members))
        assert failed is not None
        self.assertEqual(sorted((m.name, e.errno) for m, e in failed), sorted((m.name, errno.EINVAL) for m in bad_members))
        for i, sink in enumerate(sinks):
            sink.setblocking(False)
            if i == 1 or members[i] in bad_members:
                self.assertRaises(BlockingIOError, sink.recv, 100)
            else:
                self.assertEqual(sink.recv(100), b"\x02m1hi")
                self.assertRaises(BlockingIOError, sink.recv, 100)

    def test_python_failures(self) -> None:
        """The Python loop sets failures aside the same way."""
        sender, members, sinks = self.room(socket.AF_INET, "127.0.0.1", 3)

        def sendto(data: bytes, addr: Any) -> None:
            if addr == members[0].addr:
                raise OSError(errno.ENOBUFS, "injected")
            sender.sendto(data, addr)

        for member in members:
            member.route = UdpRoute(sendto, member.addr)
        sent, failed = fanout.python_fan_out(b"\x02m1hi", members, members[1])
        self.assertEqual(sent, 1)
        assert failed is not None
        self.assertEqual([(m, e.errno) for m, e in failed], [(members[0], errno.ENOBUFS)])  # type: ignore[attr-defined]
        self.assertEqual(sinks[2].recv(100), b"\x02m1hi")

    def test_older_build_not_used(self) -> None:
        """A C module built from older source (another interface version) is not used: the Python loops run."""
        import importlib.util
        import sys
        import types
        from unittest import mock

        spec = importlib.util.spec_from_file_location("fanout_with_an_old_build", fanout.__file__)
        assert spec is not None and spec.loader is not None
        for old in (types.ModuleType("_ocm_fanout"), types.SimpleNamespace(API=fanout.API + 1)):
            copy = importlib.util.module_from_spec(spec)
            with mock.patch.dict(sys.modules, {"_ocm_fanout": old}):
                spec.loader.exec_module(copy)
            self.assertEqual((copy.NATIVE, copy.SEALING, copy.recv_batch), (False, False, None))  # type: ignore[attr-defined]
        if fanout.NATIVE:
            import _ocm_fanout

            self.assertEqual(_ocm_fanout.API, fanout.API)

    def test_choice(self) -> None:
        """A fake transport gets the Python loop; a real socket the C one when built."""
        self.assertIs(fanout.fan_out_of(FakeDatagramTransport()), fanout.python_fan_out)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:

            class Port:
                socket = s

            fan = fanout.fan_out_of(Port())
            self.assertEqual(fan is fanout.python_fan_out, not fanout.NATIVE)


class FakeConnection:
    """A tunnel or WebSocket stand-in: records what its route writes to it."""

    kind = "tunnel"
    ip = "127.0.0.1"
    peer = ("127.0.0.1", 1)
    sockaddr = None

    def __init__(self, sealed: bool) -> None:
        self.sealed = sealed
        self.written: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        pass


class SealedFanOutTests(unittest.TestCase):
    """
    Secure mode's loops against real sink sockets: the C seal loop
    (C{native_sealed_fan_out}) and the Python loop, where each route seals.
    """

    def room(self, count: int) -> tuple[socket.socket, list[Any], list[socket.socket]]:
        """A sending socket, C{count} members bound over UDP in secure mode, their sinks."""
        rooms = Rooms(timeout=30, secure=True)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.bind(("127.0.0.1", 0))
        sender.setblocking(False)
        self.addCleanup(sender.close)
        members, sinks = [], []
        room = None
        for i in range(count):
            sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sink.bind(("127.0.0.1", 0))
            sink.settimeout(2)
            self.addCleanup(sink.close)
            member = rooms.create("r", "m0", "127.0.0.1", 0) if room is None else rooms.join(room, f"m{i}", "127.0.0.1", 0)
            room = member.room
            rooms.bind(member, SealedUdpRoute(sender.sendto, sink.getsockname(), member.channel), 0)
            members.append(member)
            sinks.append(sink)
        return sender, members, sinks

    #: The loops to test: the C seal loop where it was built, and the Python loop.
    loops = ["c", "python"] if fanout.SEALING else ["python"]

    def loop(self, name: str, sender: socket.socket) -> fanout.FanOut:
        """The loop called C{name}, on C{sender}."""
        return fanout.native_sealed_fan_out(sender.fileno()) if name == "c" else fanout.python_fan_out

    def client_end(self, member: Any) -> Channel:
        """The member's own end of its channel, as its client holds it."""
        return Channel(member.key, member.channel.aad, server_end=False)

    def test_sealed_for_each_recipient(self) -> None:
        """Every other member gets the datagram sealed with its own key and next counter; never in the clear."""
        for name in self.loops:
            sender, members, sinks = self.room(4)
            fan = self.loop(name, sender)
            ends = [self.client_end(m) for m in members]
            for n, text in enumerate([b"\x02m1first", b"\x02m1second"]):
                self.assertEqual(fan(text, members, members[1]), (3, None), name)
                for i, sink in enumerate(sinks):
                    if i == 1:
                        continue
                    sealed = sink.recv(5000)
                    self.assertEqual(sealed[:8], n.to_bytes(8, "big"), name)
                    self.assertEqual(len(sealed), len(text) + 24)
                    self.assertEqual(ends[i].open(sealed), (text, ""), name)
            self.assertEqual([m.channel.counter for m in members], [2, 0, 2, 2], name)
            sinks[1].setblocking(False)
            self.assertRaises(BlockingIOError, sinks[1].recv, 100)

    def test_same_bytes_as_the_python_seal(self) -> None:
        """The C loop's datagram is byte for byte what C{Channel.seal} makes (same key, counter, header)."""
        if not fanout.SEALING:
            raise unittest.SkipTest("the C seal loop was not built")
        sender, members, sinks = self.room(2)
        member = members[1]
        for counter in (0, 1, 2**32, 2**64 - 2):
            for text in (b"", b"\x01a", b"\x02m0" + bytes(range(256)) * 15):
                twin = Channel(member.key, member.channel.aad, server_end=True)
                twin.counter = member.channel.counter = counter
                fanout.native_sealed_fan_out(sender.fileno())(text, members, members[0])
                self.assertEqual(sinks[1].recv(5000), twin.seal(text))
                self.assertEqual(member.channel.counter, counter + 1)

    def test_last_counter(self) -> None:
        """
        The last counter (2**64 - 1) is used; after it the member's key is
        used up: its route raises and the failure is returned, the others
        still get theirs.
        """
        for name in self.loops:
            sender, members, sinks = self.room(3)
            fan = self.loop(name, sender)
            members[2].channel.counter = 2**64 - 1
            self.assertEqual(fan(b"\x02m0hi", members, members[0]), (2, None), name)
            self.assertEqual(sinks[2].recv(5000)[:8], b"\xff" * 8)
            self.assertEqual(members[2].channel.counter, 2**64)
            sent, failed = fan(b"\x02m0hi", members, members[0])
            self.assertEqual(sent, 1, name)
            assert failed is not None
            self.assertEqual([(m, type(e)) for m, e in failed], [(members[2], OverflowError)], name)
            end = self.client_end(members[1])
            self.assertEqual([end.open(sinks[1].recv(5000)) for _ in range(2)], [(b"\x02m0hi", "")] * 2, name)

    def test_other_routes_and_failures(self) -> None:
        """
        A member reached through a connection is written by its route (sealed
        for a tunnel, as it is for a browser); an unusable address fails with
        its errno; the rest of the room, across a batch edge, gets its datagram.
        """
        if not fanout.SEALING:
            raise unittest.SkipTest("the C seal loop was not built")
        sender, members, sinks = self.room(300)
        tunnel, web = FakeConnection(sealed=True), FakeConnection(sealed=False)
        members[5].route = SealedRoute(tunnel, members[5].channel)
        members[6].route = web
        bad = members[260]
        bad.route.sealed_to = b"\x02\x00"  # type: ignore[union-attr]
        sent, failed = fanout.native_sealed_fan_out(sender.fileno())(b"\x02m0hi", members, members[0])
        self.assertEqual(sent, 298)
        assert failed is not None
        self.assertEqual([(m, e.errno) for m, e in failed], [(bad, errno.EINVAL)])  # type: ignore[attr-defined]
        self.assertEqual(self.client_end(members[5]).open(tunnel.written[0]), (b"\x02m0hi", ""))
        self.assertEqual(web.written, [b"\x02m0hi"])
        for i, sink in enumerate(sinks):
            sink.setblocking(False)
            if i in (0, 5, 6, 260):
                self.assertRaises(BlockingIOError, sink.recv, 100)
            else:
                self.assertEqual(self.client_end(members[i]).open(sink.recv(5000)), (b"\x02m0hi", ""))

    def test_plain_loop_never_sends_a_sealed_member_in_the_clear(self) -> None:
        """A sealed route gives the plain C loop no address: it leaves the member to its route, which seals."""
        sender, members, sinks = self.room(2)
        self.assertIsNone(members[1].sockaddr)
        fan = fanout.native_fan_out(sender.fileno()) if fanout.NATIVE else fanout.python_fan_out
        self.assertEqual(fan(b"\x02m0hi", members, members[0]), (1, None))
        self.assertEqual(self.client_end(members[1]).open(sinks[1].recv(5000)), (b"\x02m0hi", ""))

    def test_choice(self) -> None:
        """A fake transport gets the Python loop; a real socket the C seal loop where it was built."""
        self.assertIs(fanout.sealed_fan_out_of(FakeDatagramTransport()), fanout.python_fan_out)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:

            class Port:
                socket = s

            fan = fanout.sealed_fan_out_of(Port())
            self.assertEqual(fan is fanout.python_fan_out, not fanout.SEALING)
