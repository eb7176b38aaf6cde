"""Tests for L{ocm.wire}: the one codec of server and client."""

from __future__ import annotations

import json

from twisted.trial import unittest

from ocm import wire
from tests.helpers import request_bytes


class FrameTests(unittest.TestCase):
    """TCRP frames."""

    def test_header_layout(self) -> None:
        """RoomNameSize, Operation, State, then a 29-byte big-endian size."""
        frame = wire.encode_frame(2, 1, b"abc", b"x" * 300)
        self.assertEqual(frame[:3], bytes((3, 2, 1)))
        self.assertEqual(frame[3:32], (300).to_bytes(29, "big"))
        self.assertEqual(frame[32:35], b"abc")
        self.assertEqual(len(frame), 32 + 3 + 300)

    def test_round_trip(self) -> None:
        """decode_frames gives back what encode_frame wrote, and the rest."""
        data = wire.encode_frame(1, 1, "部屋".encode(), b'{"status":200}') + wire.encode_frame(1, 2, b"r", b"tok")
        frames, rest = wire.decode_frames(data + b"\x01\x02")
        self.assertEqual(rest, b"\x01\x02")
        self.assertEqual(frames, [wire.Frame(1, 1, "部屋".encode(), b'{"status":200}'), wire.Frame(1, 2, b"r", b"tok")])

    def test_partial(self) -> None:
        """An incomplete frame stays in the rest."""
        data = wire.encode_frame(3, 2, b"", b"[]")
        for cut in range(len(data)):
            self.assertEqual(wire.decode_frames(data[:cut]), ([], data[:cut]))

    def test_room_too_long(self) -> None:
        """A room name over 255 bytes cannot be encoded."""
        self.assertRaises(wire.WireError, wire.encode_frame, 1, 0, b"x" * 256, b"")

    def test_header_size(self) -> None:
        """decode_header wants exactly 32 bytes."""
        self.assertRaises(wire.WireError, wire.decode_header, b"\x00" * 31)
        self.assertEqual(wire.decode_header(b"\x05\x01\x00" + (2**29).to_bytes(29, "big")).payload_size, 2**29)


class RequestTests(unittest.TestCase):
    """parse_request: every 400 case and the valid requests."""

    def parse(self, operation: int, room: bytes | str, payload: object = None, state: int = 0) -> wire.Request:
        data = request_bytes(operation, room, payload)
        frame = wire.decode_frames(data)[0][0]
        return wire.parse_request(wire.Frame(frame.operation, state, frame.room, frame.payload))

    def assertBad(self, *args: object, **kw: object) -> wire.WireError:
        error = self.assertRaises(wire.WireError, self.parse, *args, **kw)
        self.assertEqual(error.status, 400)
        return error

    def test_create(self) -> None:
        """A create request with every field."""
        request = self.parse(1, "room", {"username": "alice", "password": "pw", "capacity": 3, "extra": 1})
        self.assertEqual(request.room, "room")
        self.assertEqual(request.fields, {"username": "alice", "password": "pw", "capacity": 3})

    def test_create_defaults(self) -> None:
        """No password means an open room; no capacity means unlimited."""
        request = self.parse(1, "room", {"username": "alice"})
        self.assertEqual(request.fields, {"username": "alice", "password": "", "capacity": None})

    def test_join(self) -> None:
        """A join request."""
        request = self.parse(2, "ルーム", {"username": "ボブ", "password": "pw"})
        self.assertEqual((request.operation, request.room, request.fields["username"]), (2, "ルーム", "ボブ"))

    def test_list(self) -> None:
        """A list request may have an empty payload or {}."""
        self.assertEqual(self.parse(3, "").fields, {})
        self.assertEqual(self.parse(3, "", {}).fields, {})

    def test_bad_state(self) -> None:
        """Only state 0 is a request."""
        self.assertBad(1, "room", {"username": "a"}, state=1)

    def test_unknown_operation(self) -> None:
        """Operations other than 1, 2, 3."""
        self.assertBad(0, "room", {"username": "a"})
        self.assertBad(4, "room", {"username": "a"})

    def test_room_absent(self) -> None:
        """Create and join need a room name."""
        self.assertBad(1, "", {"username": "a"})
        self.assertBad(2, "", {"username": "a"})

    def test_bad_json(self) -> None:
        """Payloads that are not JSON objects."""
        self.assertBad(1, "room", b"{not json")
        self.assertBad(1, "room", b"[1, 2]")
        self.assertBad(1, "room", b"")
        self.assertBad(3, "", b"[]")
        self.assertBad(1, "room", b"[" * 100000)

    def test_bad_utf8(self) -> None:
        """Room names and payloads must be UTF-8."""
        self.assertBad(1, b"\xff\xfe", {"username": "a"})
        self.assertBad(1, "room", b'{"username": "\xff"}')

    def test_missing_username(self) -> None:
        """username is required and must be a non-empty string."""
        self.assertBad(1, "room", {})
        self.assertBad(1, "room", {"username": ""})
        self.assertBad(2, "room", {"username": 5})

    def test_username_too_long(self) -> None:
        """At most 255 bytes of UTF-8."""
        self.parse(1, "room", {"username": "a" * 255})
        self.assertBad(1, "room", {"username": "あ" * 86})

    def test_control_characters(self) -> None:
        """No Cc characters in room names or usernames."""
        self.assertBad(1, "ro\x00om", {"username": "a"})
        self.assertBad(1, "room", {"username": "a\nb"})
        self.assertBad(2, "room", {"username": "a\x7f"})

    def test_lone_surrogate(self) -> None:
        r"""A JSON \ud800 escape is not valid UTF-8 text."""
        self.assertBad(1, "room", b'{"username": "\\ud800"}')
        self.assertBad(1, "room", b'{"username": "a", "password": "\\ud800"}')

    def test_bad_password(self) -> None:
        """password must be a string."""
        self.assertBad(1, "room", {"username": "a", "password": 5})

    def test_bad_capacity(self) -> None:
        """capacity must be an integer of at least 1."""
        for capacity in (0, -1, 1.5, "3", True):
            self.assertBad(1, "room", {"username": "a", "capacity": capacity})

    def test_response(self) -> None:
        """A state-1 response carries the status and fields as JSON."""
        frame = wire.decode_frames(wire.response_frame(2, b"r", 404, message="no"))[0][0]
        self.assertEqual((frame.operation, frame.state, frame.room), (2, 1, b"r"))
        self.assertEqual(json.loads(frame.payload), {"status": 404, "message": "no"})


class DatagramTests(unittest.TestCase):
    """Chat datagrams both ways, and notices."""

    def test_round_trip(self) -> None:
        """encode_datagram / decode_datagram."""
        data = wire.encode_datagram(b"room", b"tok", "こんにちは".encode())
        self.assertEqual(data[:2], bytes((4, 3)))
        self.assertEqual(wire.decode_datagram(data), (b"room", b"tok", "こんにちは".encode()))

    def test_short(self) -> None:
        """Shorter than its header says."""
        for data in (b"", b"\x01", b"\x04\x03roomto"):
            self.assertRaises(wire.WireError, wire.decode_datagram, data)

    def test_sizes(self) -> None:
        """4096 bytes is the limit, both for encoding and decoding."""
        data = wire.encode_datagram(b"r", b"t", b"x" * (4096 - 4))
        self.assertEqual(len(data), 4096)
        self.assertEqual(wire.decode_datagram(data)[2], b"x" * 4092)
        self.assertRaises(wire.WireError, wire.encode_datagram, b"r", b"t", b"x" * 4093)
        self.assertRaises(wire.WireError, wire.decode_datagram, data + b"x")

    def test_relayed(self) -> None:
        """Server to client: UserNameSize | UserName | Message."""
        data = wire.encode_relayed(b"alice", b"hi")
        self.assertEqual(data, b"\x05alicehi")
        self.assertEqual(wire.decode_relayed(data), (b"alice", b"hi"))
        self.assertRaises(wire.WireError, wire.decode_relayed, b"\x09ali")
        self.assertRaises(wire.WireError, wire.decode_relayed, b"")
        self.assertRaises(wire.WireError, wire.decode_relayed, b"\x01a" + b"x" * 4093)

    def test_notice(self) -> None:
        """Notices: a zero UserNameSize then a JSON object with an event."""
        data = wire.encode_notice("leave", user="ボブ", reason="left")
        name, message = wire.decode_relayed(data)
        self.assertEqual(name, b"")
        self.assertEqual(wire.decode_notice(message), {"event": "leave", "user": "ボブ", "reason": "left"})
        self.assertRaises(wire.WireError, wire.decode_notice, b"[]")
        self.assertRaises(wire.WireError, wire.decode_notice, b'{"x": 1}')

    def test_max_text(self) -> None:
        """min(4094 - R - T, 4093 - len(username))."""
        self.assertEqual(wire.max_text(b"r", b"t" * 32, b"alice"), 4061)
        self.assertEqual(wire.max_text(b"r", b"t", b"a" * 255), 3838)
        self.assertEqual(wire.max_text(b"r" * 200, b"t" * 200, b"a"), 3694)


class SplitTests(unittest.TestCase):
    """split_text: cut at UTF-8 character boundaries."""

    def test_short(self) -> None:
        """Text within the limit is one piece; empty text is none."""
        self.assertEqual(wire.split_text("hello", 10), [b"hello"])
        self.assertEqual(wire.split_text("", 10), [])

    def test_boundaries(self) -> None:
        """Every piece decodes alone and the pieces join to the text."""
        text = "aあ😀é" * 500
        for limit in (4, 5, 7, 100, 4088):
            pieces = wire.split_text(text, limit)
            self.assertTrue(all(len(p) <= limit for p in pieces))
            self.assertEqual("".join(p.decode("utf-8") for p in pieces), text)

    def test_limit_too_small(self) -> None:
        """A limit below one 4-byte character is refused."""
        self.assertRaises(ValueError, wire.split_text, "x", 3)
