"""
Memory of the Rooms state per member, measured with tracemalloc (no sockets).

    python bench/memory.py [--members 100000] [--per-room 10] [--protected]

Every member is created over the same calls TCRP uses and bound to an
address as its first datagram would bind it (with the address packed for
the C fan-out, as the relay packs it), so the figure includes the token,
the member, its room's share and the indexes.
"""

from __future__ import annotations

import argparse
import gc
import tracemalloc

from ocm.relay.routes import UdpRoute
from ocm.passwords import hash_password
from ocm.rooms import Rooms


def sendto(data: bytes, addr: tuple[str, int]) -> None:
    """Stands for the relay's socket (nothing is sent here)."""


def main() -> None:
    """Build the state, print bytes per member."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--per-room", type=int, default=10)
    parser.add_argument("--protected", action="store_true", help="rooms with a password hash")
    args = parser.parse_args()
    stored = hash_password("pw") if args.protected else None
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    rooms = Rooms(max_rooms=10**7, max_members=10**7)
    port = 1024
    room_count = args.members // args.per_room
    for r in range(room_count):
        host = rooms.create(f"room-{r:06d}", "host-user", "127.0.0.1", 0.0, password=stored, capacity=args.per_room)
        members = [host] + [rooms.join(host.room, f"member-{i:03d}", "127.0.0.1", 0.0) for i in range(1, args.per_room)]
        for member in members:
            port = port + 1 if port < 65535 else 1024
            rooms.bind(member, UdpRoute(sendto, ("127.0.0.1", port)), 0.0)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    total = room_count * args.per_room
    print(f"{total} members in {room_count} rooms: {used / 2**20:.1f} MiB, {used / total:.0f} bytes per member")


if __name__ == "__main__":
    main()
