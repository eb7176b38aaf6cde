"""
The ocm wire formats: TCRP frames, chat datagrams and server notices.

One codec for the server and the client.  Nothing here does I/O; every
decoder raises L{WireError} (and only that) on malformed input.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import Any

# TCRP (SPEC section 1)
HEADER_SIZE = 32
PAYLOAD_SIZE_BYTES = 29
OP_CREATE = 1
OP_JOIN = 2
OP_LIST = 3
OPERATIONS = (OP_CREATE, OP_JOIN, OP_LIST)
#: Extension (docs/reach.rst): chat through this TCP connection; only on a
#: server started with --tunnel (a plain server answers 400, as the SPEC says).
OP_TUNNEL = 4
#: Each datagram in a tunnel: its length (4 bytes, big-endian), then the datagram.
TUNNEL_LENGTH_BYTES = 4
STATE_REQUEST = 0
STATE_RESPONSE = 1
STATE_COMPLETE = 2
MAX_NAME = 255
MAX_TOKEN = 255

# UDP (SPEC section 2)
MAX_DATAGRAM = 4096
MAX_RELAYED = 4094
CONTROL = 0x00
HELLO = b"\x00hello"
LEAVE = b"\x00leave"
WHO = b"\x00who"


class WireError(ValueError):
    """
    Malformed input.

    @ivar status: the TCRP status this error answers with (400 unless said).
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Header:
    """The 32-byte TCRP header, decoded."""

    room_size: int
    operation: int
    state: int
    payload_size: int

    @property
    def body_size(self) -> int:
        """Bytes of body (room name + payload) that follow this header."""
        return self.room_size + self.payload_size


@dataclass(frozen=True)
class Frame:
    """One whole TCRP frame: header fields plus the raw room name and payload."""

    operation: int
    state: int
    room: bytes
    payload: bytes


@dataclass(frozen=True)
class Request:
    """A validated TCRP request (state 0)."""

    operation: int
    room: str
    room_bytes: bytes
    fields: dict[str, Any]


def encode_frame(operation: int, state: int, room: bytes, payload: bytes) -> bytes:
    """Encode one TCRP frame."""
    if len(room) > MAX_NAME:
        raise WireError("room name longer than 255 bytes")
    return (
        bytes((len(room), operation, state))
        + len(payload).to_bytes(PAYLOAD_SIZE_BYTES, "big")
        + room
        + payload
    )


def decode_header(header: bytes) -> Header:
    """Decode the 32-byte TCRP header (the sizes only; no validation of values)."""
    if len(header) != HEADER_SIZE:
        raise WireError(f"header must be {HEADER_SIZE} bytes")
    return Header(
        room_size=header[0],
        operation=header[1],
        state=header[2],
        payload_size=int.from_bytes(header[3:HEADER_SIZE], "big"),
    )


def decode_frames(data: bytes) -> tuple[list[Frame], bytes]:
    """
    Split a byte stream into whole frames.

    @return: the complete frames and the unparsed rest.
    """
    frames = []
    while len(data) >= HEADER_SIZE:
        header = decode_header(data[:HEADER_SIZE])
        end = HEADER_SIZE + header.body_size
        if len(data) < end:
            break
        room = data[HEADER_SIZE : HEADER_SIZE + header.room_size]
        frames.append(Frame(header.operation, header.state, room, data[HEADER_SIZE + header.room_size : end]))
        data = data[end:]
    return frames, data


def check_text(raw: bytes, what: str, required: bool = True) -> str:
    """
    Decode a room name or username: UTF-8, at most 255 bytes, no control
    characters (Unicode category Cc).
    """
    if required and not raw:
        raise WireError(f"{what} is required")
    if len(raw) > MAX_NAME:
        raise WireError(f"{what} is longer than 255 bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError(f"{what} is not valid UTF-8") from None
    if any(unicodedata.category(c) == "Cc" for c in text):
        raise WireError(f"{what} contains control characters")
    return text


def decode_json(payload: bytes, what: str = "payload") -> Any:
    """Decode a UTF-8 JSON document, raising L{WireError}."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError(f"{what} is not valid UTF-8") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise WireError(f"{what} is not valid JSON") from None


def encode_json(value: Any) -> bytes:
    """Encode a JSON document as compact UTF-8."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def parse_request(frame: Frame, tunnel: bool = False, history: bool = False) -> Request:
    """
    Validate a request frame (SPEC section 1, state 0).

    Checks the operation and state, decodes the room name and the JSON
    payload, and checks the fields each operation needs.

    @param tunnel: whether L{OP_TUNNEL} is served (C{--tunnel}).
    @param history: whether rooms keep history (C{--max-history}): only then
        is a create's C{history} read (elsewhere it is an unknown key, ignored).
    """
    if frame.state != STATE_REQUEST:
        raise WireError(f"state must be {STATE_REQUEST} in a request")
    if frame.operation == OP_TUNNEL and tunnel:
        return parse_tunnel_request(frame)
    if frame.operation not in OPERATIONS:
        raise WireError(f"unknown operation {frame.operation}")
    if frame.operation == OP_LIST:
        room = check_text(frame.room, "room name", required=False)
        fields: Any = decode_json(frame.payload) if frame.payload else {}
        if not isinstance(fields, dict):
            raise WireError("payload must be a JSON object")
        return Request(frame.operation, room, frame.room, fields)
    room = check_text(frame.room, "room name")
    fields = decode_json(frame.payload)
    if not isinstance(fields, dict):
        raise WireError("payload must be a JSON object")
    username = fields.get("username")
    if not isinstance(username, str):
        raise WireError("username is required")
    try:
        username_bytes = username.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from \\ud800 escapes
        raise WireError("username is not valid UTF-8") from None
    check_text(username_bytes, "username")
    password = fields.get("password", "")
    if password is None:
        password = ""
    if not isinstance(password, str):
        raise WireError("password must be a string")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise WireError("password is not valid UTF-8") from None
    clean: dict[str, Any] = {"username": username, "password": password}
    if frame.operation == OP_CREATE:
        capacity = fields.get("capacity")
        if capacity is not None:
            if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
                raise WireError("capacity must be an integer >= 1")
        clean["capacity"] = capacity
        if history:
            history_size = fields.get("history", 0)
            if isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 0:
                raise WireError("history must be an integer >= 0")
            clean["history"] = history_size
    return Request(frame.operation, room, frame.room, clean)


def parse_tunnel_request(frame: Frame) -> Request:
    """An L{OP_TUNNEL} request: the room name, and C{{"token": "..."}} (ASCII, 1..255)."""
    room = check_text(frame.room, "room name")
    fields = decode_json(frame.payload)
    if not isinstance(fields, dict) or not isinstance(fields.get("token"), str):
        raise WireError("token is required")
    token = fields["token"]
    if not token or len(token) > MAX_TOKEN or not token.isascii():
        raise WireError("token must be 1..255 ASCII characters")
    return Request(frame.operation, room, frame.room, {"token": token})


def tunnel_frame(datagram: bytes) -> bytes:
    """One datagram as it travels in a tunnel."""
    return len(datagram).to_bytes(TUNNEL_LENGTH_BYTES, "big") + datagram


def split_tunnel_frames(buffer: bytes, limit: int) -> tuple[list[bytes], bytes]:
    """
    The whole datagrams at the start of C{buffer}, and the rest.  Raises
    L{WireError} for a declared length over C{limit}, as soon as it is read.
    """
    out = []
    at = 0
    size = len(buffer)
    while size - at >= TUNNEL_LENGTH_BYTES:
        length = int.from_bytes(buffer[at : at + TUNNEL_LENGTH_BYTES], "big")
        if length > limit:
            raise WireError(f"tunnelled datagram of {length} bytes")
        end = at + TUNNEL_LENGTH_BYTES + length
        if end > size:
            break
        out.append(buffer[at + TUNNEL_LENGTH_BYTES : end])
        at = end
    return out, buffer[at:]


def response_frame(operation: int, room: bytes, status: int, **fields: Any) -> bytes:
    """Encode a state-1 response: C{{"status": status, ...fields}}."""
    return encode_frame(operation, STATE_RESPONSE, room, encode_json({"status": status, **fields}))


def complete_frame(operation: int, room: bytes, payload: bytes) -> bytes:
    """Encode a state-2 completion frame (a token, or the room list)."""
    return encode_frame(operation, STATE_COMPLETE, room, payload)


# UDP


def encode_datagram(room: bytes, token: bytes, message: bytes = b"") -> bytes:
    """Encode a client-to-server chat datagram."""
    if len(room) > MAX_NAME or len(token) > MAX_TOKEN:
        raise WireError("room name or token longer than 255 bytes")
    data = bytes((len(room), len(token))) + room + token + message
    if len(data) > MAX_DATAGRAM:
        raise WireError("datagram longer than 4096 bytes")
    return data


def decode_datagram(data: bytes) -> tuple[bytes, bytes, bytes]:
    """
    Decode a client-to-server chat datagram.

    @return: (room name, token, message), all raw bytes.
    """
    if len(data) > MAX_DATAGRAM:
        raise WireError("datagram longer than 4096 bytes")
    if len(data) < 2:
        raise WireError("datagram shorter than its header")
    r, t = data[0], data[1]
    start = 2 + r + t
    if len(data) < start:
        raise WireError("datagram shorter than its header")
    return data[2 : 2 + r], data[2 + r : start], data[start:]


def sender_prefix(username: bytes) -> bytes:
    """The C{UserNameSize | UserName} prefix of a relayed message."""
    if not 0 < len(username) <= MAX_NAME:
        raise WireError("username must be 1..255 bytes")
    return bytes((len(username),)) + username


def encode_relayed(username: bytes, message: bytes) -> bytes:
    """Encode a server-to-client chat message (also the lobby's datagram)."""
    return sender_prefix(username) + message


def decode_relayed(data: bytes, limit: int = MAX_RELAYED) -> tuple[bytes, bytes]:
    """
    Decode a server-to-client datagram (or a lobby datagram, with
    C{limit=MAX_DATAGRAM}).

    @return: (username, message); an empty username marks a server notice.
    """
    if len(data) > limit:
        raise WireError(f"datagram longer than {limit} bytes")
    if not data:
        raise WireError("empty datagram")
    u = data[0]
    if len(data) < 1 + u:
        raise WireError("datagram shorter than its header")
    return data[1 : 1 + u], data[1 + u :]


def encode_notice(event: str, **fields: Any) -> bytes:
    """Encode a server notice: UserNameSize 0, then a JSON object."""
    return b"\x00" + encode_json({"event": event, **fields})


def decode_notice(message: bytes) -> dict[str, Any]:
    """Decode the JSON body of a server notice."""
    notice = decode_json(message, "notice")
    if not isinstance(notice, dict) or not isinstance(notice.get("event"), str):
        raise WireError("notice must be a JSON object with an event")
    return notice


def max_text(room: bytes, token: bytes, username: bytes) -> int:
    """Bytes of chat text one datagram may carry (SPEC section 2)."""
    return min(MAX_DATAGRAM - 2 - len(room) - len(token), MAX_RELAYED - 1 - len(username))


def split_text(text: str, limit: int) -> list[bytes]:
    """
    Encode C{text} as UTF-8 pieces of at most C{limit} bytes, cut only at
    character boundaries.
    """
    if limit < 4:
        raise ValueError("limit must leave room for one character")
    data = text.encode("utf-8")
    pieces = []
    while len(data) > limit:
        cut = limit
        # Back up over continuation bytes (10xxxxxx) to a character start.
        while data[cut] & 0xC0 == 0x80:
            cut -= 1
        pieces.append(data[:cut])
        data = data[cut:]
    if data:
        pieces.append(data)
    return pieces
