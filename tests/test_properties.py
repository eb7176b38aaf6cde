"""
Property tests (hypothesis): decoders only ever raise WireError, encoders
and decoders round-trip at every size boundary, the server's protocols
survive arbitrary input, and the Rooms state keeps its invariants under
random sequences of operations.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from ocm import wire
from ocm.relay.protocol import Relay
from ocm.rooms import RoomError, Rooms
from ocm.tcrp.protocol import TCRPFactory
from tests.helpers import FakeDatagramTransport, FakeRoute, synchronous

BOUNDARIES = [0, 1, 255, 4094, 4096, 4097]
names = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40).filter(lambda s: len(s.encode()) <= 255)
sizes = st.sampled_from(BOUNDARIES) | st.integers(0, 5000)


class DecoderProperties(unittest.TestCase):
    """Arbitrary bytes: WireError or a value, nothing else."""

    @given(st.binary(max_size=5000))
    def test_decoders_raise_only_wire_error(self, data: bytes) -> None:
        """Every decoder of the codec, on arbitrary bytes."""
        for decode in (wire.decode_datagram, wire.decode_relayed, wire.decode_notice, wire.decode_json, lambda d: wire.decode_header(d[:32])):
            try:
                decode(data)
            except wire.WireError:
                pass
        frames, rest = wire.decode_frames(data)
        for frame in frames:
            try:
                wire.parse_request(frame)
            except wire.WireError:
                pass
        try:
            wire.check_text(data, "name")
        except wire.WireError:
            pass

    @given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255), st.binary(max_size=300), st.binary(max_size=300))
    def test_parse_request_arbitrary_frames(self, operation: int, state: int, room_size: int, room: bytes, payload: bytes) -> None:
        """parse_request on any frame: a Request or a 400 WireError."""
        try:
            wire.parse_request(wire.Frame(operation, state, room[:room_size], payload))
        except wire.WireError as e:
            self.assertEqual(e.status, 400)

    @settings(suppress_health_check=[HealthCheck.too_slow])
    @given(st.dictionaries(st.sampled_from(["username", "password", "capacity", "x"]), st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.lists(st.integers())))
    def test_parse_request_arbitrary_json(self, fields: dict[str, object]) -> None:
        """Any JSON object as a create payload: a Request or a 400."""
        frame = wire.Frame(1, 0, b"room", json.dumps(fields).encode())
        try:
            request = wire.parse_request(frame)
        except wire.WireError as e:
            self.assertEqual(e.status, 400)
        else:
            self.assertIsInstance(request.fields["username"], str)


class RoundTripProperties(unittest.TestCase):
    """encode then decode gives back the value, at every size boundary."""

    @given(st.binary(max_size=255), st.binary(max_size=255), sizes)
    def test_datagram(self, room: bytes, token: bytes, size: int) -> None:
        """Client datagrams up to 4096 bytes round-trip; longer cannot be encoded."""
        message = b"m" * size
        if 2 + len(room) + len(token) + size > wire.MAX_DATAGRAM:
            self.assertRaises(wire.WireError, wire.encode_datagram, room, token, message)
            return
        data = wire.encode_datagram(room, token, message)
        self.assertEqual(wire.decode_datagram(data), (room, token, message))

    @given(st.binary(min_size=1, max_size=255), sizes)
    def test_relayed(self, name: bytes, size: int) -> None:
        """Server datagrams round-trip within 4094 bytes."""
        data = wire.encode_relayed(name, b"m" * size)
        if len(data) > wire.MAX_RELAYED:
            self.assertRaises(wire.WireError, wire.decode_relayed, data)
        else:
            self.assertEqual(wire.decode_relayed(data), (name, b"m" * size))

    @given(st.integers(0, 255), st.integers(0, 2), st.binary(max_size=255), st.binary(max_size=5000))
    def test_frame(self, operation: int, state: int, room: bytes, payload: bytes) -> None:
        """TCRP frames round-trip, also through any split of the stream."""
        data = wire.encode_frame(operation, state, room, payload)
        self.assertEqual(wire.decode_frames(data), ([wire.Frame(operation, state, room, payload)], b""))

    @given(st.text(max_size=3000), st.sampled_from([4, 5, 100, 4061, 4093]))
    def test_split(self, text: str, limit: int) -> None:
        """split_text pieces fit and join back to the text."""
        assume("\ud800" not in text)
        pieces = wire.split_text(text, limit)
        self.assertTrue(all(0 < len(p) <= limit for p in pieces))
        self.assertEqual(b"".join(pieces).decode("utf-8"), text)

    @given(st.text(max_size=50), st.dictionaries(st.text(max_size=10), st.text(max_size=20) | st.integers()))
    def test_notice(self, event: str, fields: dict[str, object]) -> None:
        """Notices round-trip."""
        fields.pop("event", None)
        try:
            data = wire.encode_notice(event, **fields)
        except UnicodeEncodeError:
            return  # lone surrogates are not text
        name, message = wire.decode_relayed(data, 10**9)
        self.assertEqual(name, b"")
        self.assertEqual(wire.decode_notice(message), {"event": event, **fields})


class ProtocolProperties(unittest.TestCase):
    """The server's protocols on arbitrary input: no exception, other members unharmed."""

    @settings(suppress_health_check=[HealthCheck.too_slow], max_examples=200)
    @given(st.lists(st.binary(max_size=4200), max_size=20), st.sampled_from([("127.0.0.1", 5001), ("127.0.0.2", 5002), ("127.0.0.1", 5009)]))
    def test_relay_survives_junk(self, junk: list[bytes], source: tuple[str, int]) -> None:
        """Junk never raises, never gets a reply, and the room still relays."""
        clock = Clock()
        rooms = Rooms()
        relay = Relay(rooms, clock)
        transport = FakeDatagramTransport()
        relay.makeConnection(transport)  # type: ignore[arg-type]
        host = rooms.create("r", "h", "127.0.0.1", 0)
        guest = rooms.join(host.room, "g", "127.0.0.1", 0)
        relay.datagramReceived(wire.encode_datagram(b"r", host.token), ("127.0.0.1", 5001))
        relay.datagramReceived(wire.encode_datagram(b"r", guest.token), ("127.0.0.1", 5002))
        transport.clear()
        for data in junk:
            relay.datagramReceived(data, ("127.0.0.9", 7000))
            # spoofed: a real token and room from a stranger's address
            relay.datagramReceived(wire.encode_datagram(b"r", guest.token, data[:4000]), ("127.0.0.9", 7000))
        self.assertEqual(transport.written, [])
        relay.datagramReceived(wire.encode_datagram(b"r", host.token, b"still here"), ("127.0.0.1", 5001))
        self.assertEqual(transport.to(("127.0.0.1", 5002)), [b"\x01hstill here"])

    @settings(suppress_health_check=[HealthCheck.too_slow], max_examples=200)
    @given(st.binary(max_size=2000), st.integers(1, 50))
    def test_tcrp_survives_junk(self, data: bytes, chunk: int) -> None:
        """Any bytes in any chunks: at most one answer, which is a well-formed frame."""
        factory = TCRPFactory(Rooms(), lambda: 9001, Clock(), max_payload=1000, run_blocking=synchronous)
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        proto.makeConnection(transport)
        for i in range(0, len(data), chunk):
            proto.dataReceived(data[i : i + chunk])
        frames, rest = wire.decode_frames(transport.value())
        self.assertEqual(rest, b"")
        self.assertLessEqual(len(frames), 2)
        if frames:
            self.assertEqual(frames[0].state, wire.STATE_RESPONSE)
            self.assertIn(wire.decode_json(frames[0].payload)["status"], (200, 400, 401, 404, 409, 413, 429, 503))


class RoomsMachine(RuleBasedStateMachine):
    """Random create/join/bind/leave/timeout/close sequences on Rooms."""

    members = Bundle("members")

    def __init__(self) -> None:
        super().__init__()
        self.rooms = Rooms(timeout=10, max_rooms=4, max_members=12)
        self.now = 0.0
        self.port = 1000

    @rule(target=members, room=st.sampled_from("abcde"), name=st.sampled_from(["u1", "u2", "u3"]))
    def create(self, room: str, name: str) -> object:
        try:
            return self.rooms.create(room, name, "127.0.0.1", self.now)
        except RoomError as e:
            assert e.status in (409, 503)
            return None

    @rule(target=members, room=st.sampled_from("abcde"), name=st.sampled_from(["u1", "u2", "u3", "u4"]))
    def join(self, room: str, name: str) -> object:
        try:
            return self.rooms.join(self.rooms.find(room), name, "127.0.0.1", self.now)
        except RoomError as e:
            assert e.status in (404, 409, 503)
            return None

    @rule(member=members)
    def bind(self, member: object) -> None:
        if member is not None and member.addr is None and member.token in self.rooms.tokens:  # type: ignore[attr-defined]
            self.port += 1
            self.rooms.bind(member, FakeRoute(("127.0.0.1", self.port)), self.now)  # type: ignore[arg-type]

    @rule(member=members)
    def touch(self, member: object) -> None:
        if member is not None:
            member.last_seen = self.now  # type: ignore[attr-defined]

    @rule(member=consumes(members), reason=st.sampled_from(["left", "timeout", "unreachable"]))
    def remove(self, member: object, reason: str) -> None:
        if member is not None:
            self.rooms.remove(member, reason)  # type: ignore[arg-type]

    @rule(member=members)
    def fail(self, member: object) -> None:
        if member is not None:
            self.rooms.delivery_failed(member)  # type: ignore[arg-type]

    @rule(seconds=st.floats(0, 15))
    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.rooms.expire(self.now)

    @rule()
    def shutdown(self) -> None:
        self.rooms.shutdown()

    @invariant()
    def consistent(self) -> None:
        rooms = self.rooms
        members_in_rooms = [m for room in rooms.rooms.values() for m in room.members.values()]
        # every token belongs to exactly one member of one open room
        assert sorted(id(m) for m in members_in_rooms) == sorted(id(m) for m in rooms.tokens.values())
        for token, member in rooms.tokens.items():
            assert member.token == token
            assert member.room.open and rooms.rooms[member.room.name] is member.room
            assert member.room.members[member.name] is member
        for name, room in rooms.rooms.items():
            assert room.name == name and room.open
            # a room exists exactly while its host is a member
            assert room.host is not None and room.members.get(room.host.name) is room.host
            assert room.bound == [m for m in room.bound if m.addr is not None and m.name in room.members]
            assert sorted(id(m) for m in room.bound) == sorted(id(m) for m in room.members.values() if m.addr is not None)
            if room.capacity is not None:
                assert len(room.members) <= room.capacity
        assert len(rooms.rooms) <= rooms.max_rooms and len(rooms.tokens) <= rooms.max_members
        counts = rooms.counts()
        assert counts == (len(rooms.rooms), len(rooms.tokens), sum(len(r.bound) for r in rooms.rooms.values()))


class RoomsStateTests(unittest.TestCase):
    """The Rooms state machine, run by trial and pytest alike."""

    def test_invariants(self) -> None:
        """Random sequences keep every invariant."""
        from hypothesis.stateful import run_state_machine_as_test

        run_state_machine_as_test(RoomsMachine, settings=settings(max_examples=150, stateful_step_count=40))

    def test_invariants_can_fail(self) -> None:
        """The invariant check sees a broken state (a token left behind by a closed room)."""
        machine = RoomsMachine()
        member = machine.rooms.create("a", "u1", "127.0.0.1", 0)
        machine.rooms.close(member.room, "host_left")
        machine.rooms.tokens[member.token] = member
        self.assertRaises(AssertionError, machine.consistent)
