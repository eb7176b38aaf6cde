"""
In-process benchmark of the relay behind its real UDP port: datagrams sent
from members' sockets on 127.0.0.1 into the relay's L{FastPort}, read and
relayed by its C{doRead} (C{recvmmsg} batches, the checks, the fan-out),
written to the members' sockets.

Reports microseconds of CPU in C{doRead} per relayed datagram: the whole
server-side path of a chat datagram, the read included, which
C{relay_bench.py} (feeding C{datagramReceived} directly) leaves out.

    python bench/port_bench.py [--rooms 50] [--members 10] [--messages 50000] [--burst 64]

C{--burst}: datagrams sent between two C{doRead} calls (the batch the
port finds waiting).  Only public names of C{ocm} are used, so that
C{bench/abtest.py} can run this script against an older tree.
"""

from __future__ import annotations

import argparse
import socket
import time

from twisted.internet import reactor

from ocm import wire
from ocm.relay.port import FastPort
from ocm.relay.protocol import LISTEN_SIZE, Relay
from ocm.rooms import Rooms


def main() -> None:
    """Run the benchmark and print the result."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--messages", type=int, default=50000, help="chat datagrams sent to the relay")
    parser.add_argument("--size", type=int, default=64, help="bytes of text a message")
    parser.add_argument("--burst", type=int, default=64, help="datagrams waiting at each doRead")
    args = parser.parse_args()

    rooms = Rooms(timeout=3600, max_members=10**6, rate=1e9, burst=1e9)
    relay = Relay(rooms, reactor)
    port = FastPort(0, relay, interface="127.0.0.1", maxPacketSize=LISTEN_SIZE, reactor=reactor)
    port.startListening()
    to = ("127.0.0.1", port.getHost().port)
    senders = []
    for r in range(args.rooms):
        room = f"room{r}"
        host = rooms.create(room, "m0", "127.0.0.1", 0)
        members = [host] + [rooms.join(host.room, f"m{i}", "127.0.0.1", 0) for i in range(1, args.members)]
        for member in members:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            header = wire.encode_datagram(room.encode(), member.token)
            sock.sendto(header, to)  # binds the member
            port.doRead()
            senders.append((sock, header))
    text = b"x" * args.size
    datagrams = [(senders[i % len(senders)][0].sendto, senders[i % len(senders)][1] + text) for i in range(args.messages)]
    bound = sum(len(room.bound) for room in rooms.rooms.values())
    rooms.stats.relayed = 0
    read = port.doRead
    cpu = 0.0
    clock = time.process_time
    for start in range(0, len(datagrams), args.burst):
        for send, data in datagrams[start : start + args.burst]:
            send(data, to)
        before = clock()
        read()
        cpu += clock() - before
    relayed = rooms.stats.relayed
    print(
        f"rooms {args.rooms} x members {args.members} ({bound} bound), {args.messages} messages of {args.size} bytes, "
        f"bursts of {args.burst}: {relayed} relayed, {cpu / max(relayed, 1) * 1e6:.2f} us CPU per relayed datagram "
        f"(received {rooms.stats.received}, dropped {sum(rooms.stats.dropped.values())}, "
        f"send errors {rooms.stats.send_errors}, overload {rooms.stats.send_overload})"
    )
    port.stopListening()
    for sock, _ in senders:
        sock.close()


if __name__ == "__main__":
    main()
