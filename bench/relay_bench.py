"""
In-process relay benchmark: the relay protocol fed datagrams directly,
writing through a real UDP socket to sink sockets on 127.0.0.1.

Reports microseconds of relay work per relayed datagram (the Python cost
plus the kernel's C{sendto}), without a load generator's noise.

    python bench/relay_bench.py [--rooms 20] [--members 10] [--messages 20000] [--loop python]

C{--loop python} measures the relay with its fan-out loop in Python (the
fallback where the C loop was not built) instead of the C loop.  With
C{--secure} the C loop is the seal loop (where the extension was built
with libcrypto), the Python loop seals through each route.
"""

from __future__ import annotations

import argparse
import socket
import time

from twisted.internet import reactor

from ocm import wire
from ocm.relay import fanout
from ocm.relay.protocol import LISTEN_SIZE, Relay, SecureRelay
from ocm.relay.routes import UdpRoute
from ocm.rooms import Rooms
from ocm.sealing import Channel


def main() -> None:
    """Run the benchmark and print the result."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=20)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--messages", type=int, default=20000, help="chat datagrams fed to the relay")
    parser.add_argument("--size", type=int, default=64, help="bytes of text a message")
    parser.add_argument("--loop", choices=["c", "python"], default="c", help="the fan-out loop (c: when built)")
    parser.add_argument("--secure", action="store_true", help="secure mode: every datagram opened, and sealed again per recipient")
    args = parser.parse_args()

    rooms = Rooms(timeout=3600, max_members=10**6, rate=1e9, burst=1e9, secure=args.secure)
    relay = (SecureRelay if args.secure else Relay)(rooms, reactor)
    port = reactor.listenUDP(0, relay, interface="127.0.0.1", maxPacketSize=LISTEN_SIZE)  # type: ignore[attr-defined]
    if args.loop == "python" or not fanout.NATIVE:
        # the relay's own Python loop: straight to UDP addresses (secure: through the sealing routes)
        relay._fan = fanout.python_fan_out if args.secure else fanout.plain_python_fan_out(relay._sendto, UdpRoute)
    loop = "C" if fanout.NATIVE and args.loop == "c" and not args.secure else "Python"
    if args.secure:
        loop = f"secure ({loop}, sealed per recipient)"
    sinks = []
    senders = []
    for r in range(args.rooms):
        room = f"room{r}"
        host = rooms.create(room, "m0", "127.0.0.1", 0)
        members = [host] + [rooms.join(host.room, f"m{i}", "127.0.0.1", 0) for i in range(1, args.members)]
        for member in members:
            sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sink.bind(("127.0.0.1", 0))
            sinks.append(sink)
            addr = sink.getsockname()
            header = wire.encode_datagram(room.encode(), member.token)
            if args.secure:  # the member's own end, as its client holds it
                channel = Channel(member.key, header, server_end=False)  # type: ignore[arg-type]
                seal = channel.seal
            else:
                seal = bytes
            relay.datagramReceived(header + seal(b""), addr)
            senders.append((header, seal, addr))
    count = len(senders)
    text = b"x" * args.size
    # sealed by the members beforehand: only the server's work is timed
    datagrams = [(senders[i % count][0] + senders[i % count][1](text), senders[i % count][2]) for i in range(args.messages)]
    rooms.stats.relayed = 0
    feed = relay.datagramReceived
    start = time.perf_counter()
    cpu = time.process_time()
    for data, addr in datagrams:
        feed(data, addr)
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - start
    relayed = rooms.stats.relayed
    print(
        f"{loop} loop, rooms {args.rooms} x members {args.members}, {args.messages} messages of {args.size} bytes: "
        f"{relayed} relayed in {wall:.3f} s = {relayed / wall:,.0f} relayed/s, "
        f"{wall / relayed * 1e6:.2f} us wall and {cpu / relayed * 1e6:.2f} us CPU per relayed datagram "
        f"(send errors {rooms.stats.send_errors}, overload {rooms.stats.send_overload})"
    )
    port.stopListening()
    for sink in sinks:
        sink.close()


if __name__ == "__main__":
    main()
