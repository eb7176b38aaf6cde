"""
The cluster's pub/sub messages (docs/cluster.rst gives every byte).

A node sends each other node at most one Redis PUBLISH per reactor turn,
on the channel C{ocm:node:<name>}, carrying a batch:

    batch  = OriginSize (1) | Origin (UTF-8 node name) | Generation (8) | SentAt (8) | record*
    record = Kind (1) | RoomNameSize (1) | RoomName | RoomId (16) | BodySize (2, big-endian) | Body

C{RoomId} tells a room from an earlier or later one of the same name: a
record whose id is not the one of the room the receiver holds under that
name is ignored.

C{Generation} is the origin's registration (L{ocm.cluster.state.Node}):
a receiver drops every batch of a generation it knows is dead.  C{SentAt}
is the time of the batch, in milliseconds of Redis's clock: a receiver
drops chat older than half the member timeout.

Pure codec: no I/O.  Also the RESP encoding of PUBLISH, written as is to
Redis so that the chat path pays a few microseconds per batch, not a
client library's round of Deferreds per message.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

#: Record kinds.
CHAT = 0x43  # "C": Body = a relayed datagram (UserNameSize | UserName | Message)
MEMBER = 0x4D  # "M": Body = username; joined on the origin (not bound yet)
BOUND = 0x42  # "B": Body = username; bound its token on the origin
LEFT = 0x4C  # "L": Body = ReasonSize (1) | Reason | username
CLOSED = 0x58  # "X": Body = reason; the room is closed
SYNC = 0x53  # "S": Body = Reply (1) | (Bound (1) | UserNameSize (1) | UserName)*: every member the origin has there
GONE = 0x47  # "G": no room; Body = Generation (8) | NodeName: that generation of the node is dead (reaped, or stopped)
ACK = 0x41  # "A": Body = username: the receiver's MEMBER record of that member was applied here
RULE = 0x52  # "R": Body = a UTF-8 JSON object: a SPEC section 7 change (ocm.cluster.governing)

KINDS = frozenset({CHAT, MEMBER, BOUND, LEFT, CLOSED, SYNC, GONE, ACK, RULE})

_SIZE = struct.Struct(">H")
#: The size of a room id on the wire (16 hex characters, ASCII).
ID_SIZE = 16
#: The room id of a record that names no room (GONE).
NO_ROOM = b"0" * ID_SIZE
#: Generation and SentAt, after the origin.
_STAMP = struct.Struct(">QQ")
_GENERATION = struct.Struct(">Q")


class ClusterWireError(ValueError):
    """A batch that does not parse."""


def channel(node: str) -> bytes:
    """The channel node C{node} reads its batches from."""
    return b"ocm:node:" + node.encode("utf-8")


def origin_prefix(node: str) -> bytes:
    """C{OriginSize | Origin}, which starts every batch C{node} sends."""
    name = node.encode("utf-8")
    if not 1 <= len(name) <= 255:
        raise ValueError("a node name is 1..255 bytes of UTF-8")
    return bytes((len(name),)) + name


def stamp(generation: int, sent_at: int) -> bytes:
    """C{Generation | SentAt}, after the origin."""
    return _STAMP.pack(generation, sent_at)


def batch_header(node: str, generation: int = 0, sent_at: int = 0) -> bytes:
    """The whole header of a batch C{node} sends: origin, generation, time (ms of Redis's clock)."""
    return origin_prefix(node) + _STAMP.pack(generation, sent_at)


def room_id(room_id: str) -> bytes:
    """A room id as records carry it."""
    raw = room_id.encode("ascii")
    if len(raw) != ID_SIZE:
        raise ValueError(f"a room id is {ID_SIZE} ASCII characters")
    return raw


def record(kind: int, room: bytes, rid: bytes, body: bytes) -> bytes:
    """One record of a batch, about room C{room} (its UTF-8 name) of id C{rid} (L{room_id})."""
    return bytes((kind, len(room))) + room + rid + _SIZE.pack(len(body)) + body


def gone_record(node: str, generation: int) -> bytes:
    """The GONE record: C{generation} of C{node} is dead."""
    return record(GONE, b"", NO_ROOM, gone_body(node, generation))


def left_body(username: str, reason: str) -> bytes:
    """The body of a LEFT record."""
    r = reason.encode("ascii")
    return bytes((len(r),)) + r + username.encode("utf-8")


def parse_left(body: bytes) -> tuple[str, str]:
    """(username, reason) of a LEFT record's body."""
    if not body or len(body) < 1 + body[0]:
        raise ClusterWireError("short LEFT record")
    return body[1 + body[0] :].decode("utf-8"), body[1 : 1 + body[0]].decode("ascii")


def gone_body(node: str, generation: int) -> bytes:
    """The body of a GONE record: C{node}'s C{generation} is dead."""
    return _GENERATION.pack(generation) + node.encode("utf-8")


def parse_gone(body: bytes) -> tuple[str, int]:
    """(node, generation) of a GONE record's body."""
    if len(body) < 9:
        raise ClusterWireError("short GONE record")
    return body[8:].decode("utf-8"), _GENERATION.unpack_from(body)[0]


def sync_body(members: list[tuple[str, bool]], reply: bool) -> bytes:
    """The body of a SYNC record: the origin's members of a room, and whether to answer in kind."""
    out = [b"\x01" if reply else b"\x00"]
    for name, bound in members:
        raw = name.encode("utf-8")
        out.append(bytes((1 if bound else 0, len(raw))) + raw)
    return b"".join(out)


def parse_sync(body: bytes) -> tuple[list[tuple[str, bool]], bool]:
    """(members, reply) of a SYNC record's body."""
    if not body:
        raise ClusterWireError("empty SYNC record")
    members = []
    at = 1
    while at < len(body):
        if at + 2 > len(body) or at + 2 + body[at + 1] > len(body):
            raise ClusterWireError("short SYNC record")
        end = at + 2 + body[at + 1]
        members.append((body[at + 2 : end].decode("utf-8"), body[at] == 1))
        at = end
    return members, body[0] == 1


class Batch(NamedTuple):
    """A parsed batch: who sent it, when, and its records."""

    origin: str
    generation: int
    sent_at: int
    #: C{(kind, room name, room id, body)}, parsed as they are taken.
    records: Iterator[tuple[int, bytes, bytes, bytes]]


def parse_batch(data: bytes) -> Batch:
    """
    A batch's header, and its records, C{(kind, room name, room id, body)}, parsed as they
    are taken: they raise L{ClusterWireError} where the batch is cut short.
    Unknown kinds are skipped (a newer node's).
    """
    if not data or data[0] == 0 or len(data) < 1 + data[0] + _STAMP.size:
        raise ClusterWireError("short batch header")
    end = 1 + data[0]
    origin = data[1:end].decode("utf-8")
    generation, sent_at = _STAMP.unpack_from(data, end)
    end += _STAMP.size

    def records() -> Iterator[tuple[int, bytes, bytes, bytes]]:
        at = end
        size = len(data)
        while at < size:
            if at + 2 > size:
                raise ClusterWireError("short record header")
            kind = data[at]
            room_end = at + 2 + data[at + 1]
            id_end = room_end + ID_SIZE
            if id_end + 2 > size:
                raise ClusterWireError("short record")
            (body_size,) = _SIZE.unpack_from(data, id_end)
            body_end = id_end + 2 + body_size
            if body_end > size:
                raise ClusterWireError("short record body")
            if kind in KINDS:
                yield kind, data[at + 2 : room_end], data[room_end:id_end], data[id_end + 2 : body_end]
            at = body_end

    return Batch(origin, generation, sent_at, records())


def resp_command(*parts: bytes) -> bytes:
    """One Redis command in RESP (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n" % len(part))
        out.append(part)
        out.append(b"\r\n")
    return b"".join(out)
