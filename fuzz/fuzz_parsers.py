"""
Coverage-guided fuzzing of ocm's parsers with atheris (not run by CI).

    pip install atheris && pip install .
    python fuzz/fuzz_parsers.py -max_total_time=300

Each input is split by its first byte into a target: the TCRP byte stream
(through the real protocol, in random chunks), a chat datagram (through the
relay, against a room with real tokens, from the member's own address and
from a stranger's), a lobby datagram, or the client's decoding of what a
server sends. Any exception other than the codec's own WireError, and any
reply to an unauthenticated datagram, is a finding.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from twisted.internet.address import IPv4Address
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from ocm import wire
    from ocm.cluster import wire as clusterwire
    from ocm.client.session import ChatSession, Ending
    from ocm.sealing import Channel, new_key
    from ocm.relay.lobby import LobbyProtocol
    from ocm.relay.protocol import Relay, SecureRelay
    from ocm.rooms import Rooms
    from ocm.stats import Stats
    from ocm.tcrp.protocol import TCRPFactory


class Sink:
    """A datagram transport that records."""

    def __init__(self) -> None:
        self.written: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.written.append((data, addr))


def synchronous(function, *args):  # type: ignore[no-untyped-def]
    from twisted.internet import defer

    return defer.maybeDeferred(function, *args)


def tcrp(data: bytes) -> None:
    factory = TCRPFactory(Rooms(), lambda: 9001, Clock(), max_payload=4096, run_blocking=synchronous)
    factory.rooms.create("room", "host", "127.0.0.1", 0)
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
    proto.makeConnection(transport)
    step = 1 + (data[0] % 64 if data else 0)
    for i in range(1, len(data), step):
        proto.dataReceived(data[i : i + step])
    frames, rest = wire.decode_frames(transport.value())
    assert rest == b"", rest


def relay(data: bytes) -> None:
    rooms = Rooms()
    proto = Relay(rooms, Clock())
    sink = Sink()
    proto.makeConnection(sink)  # type: ignore[arg-type]
    host = rooms.create("room", "host", "127.0.0.1", 0)
    guest = rooms.join(host.room, "guest", "127.0.0.1", 0)
    proto.datagramReceived(wire.encode_datagram(b"room", host.token), ("127.0.0.1", 5001))
    sink.written.clear()
    proto.datagramReceived(data, ("127.0.0.9", 7000))
    if len(data) > 2:
        spoof = wire.encode_datagram(b"room", guest.token, data[:4000])
        proto.datagramReceived(spoof, ("127.0.0.9", 7000))
    assert sink.written == [], "answered a stranger"
    # from the member itself: anything goes, but no exception
    body = data[:4000]
    proto.datagramReceived(wire.encode_datagram(b"room", host.token, body), ("127.0.0.1", 5001))


def lobby(data: bytes) -> None:
    proto = LobbyProtocol(Stats(), Clock())
    sink = Sink()
    proto.makeConnection(sink)  # type: ignore[arg-type]
    proto.datagramReceived(b"\x01a", ("127.0.0.1", 5001))
    proto.datagramReceived(data, ("127.0.0.1", 5002))


def client(data: bytes) -> None:
    lines: list[str] = []
    session = ChatSession(Clock(), ("127.0.0.1", 9001), "room", "me", b"t" * 32, 30, lines.append)
    session.makeConnection(Sink())  # type: ignore[arg-type]
    session.datagramReceived(data, ("127.0.0.1", 9001))
    session.end(Ending(0))  # stop its timers


def cluster_batch(data: bytes) -> None:
    try:
        _, records = clusterwire.parse_batch(data)
        for kind, _room, body in records:
            if kind == clusterwire.LEFT:
                clusterwire.parse_left(body)
            elif kind == clusterwire.SYNC:
                clusterwire.parse_sync(body)
    except (clusterwire.ClusterWireError, UnicodeDecodeError):
        pass


def tunnel_and_seal(data: bytes) -> None:
    try:
        wire.split_tunnel_frames(data, 5120)
    except wire.WireError:
        pass
    server = Channel(new_key(), b"\x01\x01rt", server_end=True)
    plaintext, why = server.open(data)
    assert plaintext is None and why, "a random datagram opened"
    assert server.window.top == -1, "a forgery moved the window"


def sealed_relay(data: bytes) -> None:
    rooms = Rooms(secure=True)
    proto = SecureRelay(rooms, Clock())
    sink = Sink()
    proto.makeConnection(sink)  # type: ignore[arg-type]
    host = rooms.create("room", "host", "127.0.0.1", 0)
    proto.datagramReceived(wire.encode_datagram(b"room", host.token, data[:4000]), ("127.0.0.1", 5001))
    assert sink.written == [] and host.addr is None, "an unsealed or forged datagram was accepted"


TARGETS = [tcrp, relay, lobby, client, cluster_batch, tunnel_and_seal, sealed_relay]


def test_one(data: bytes) -> None:
    if not data:
        return
    TARGETS[data[0] % len(TARGETS)](data[1:])


def main() -> None:
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
