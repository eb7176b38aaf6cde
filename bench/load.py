"""
A small end-to-end load run against a running ocm server, in Python.

    taskset -c 1 twistd --pidfile= -n ocm --tcp 9000 --udp 9001 --interface 127.0.0.1 &
    taskset -c 0 python bench/load.py --port 9000 --rooms 50 --members 10 --rate 2 --duration 10

Sets up ROOMS x MEMBERS over TCRP, binds every member's UDP socket, then each
member sends RATE messages a second; every member socket is read and each
relayed message timed. Reports loss and latency percentiles. For the
assignment's full load (500 rooms) use the C generator ocmload: one Python
process cannot drive 90,000 datagrams a second.

Also a library for bench/survive.py: L{Chat} sets up and drives rooms.
"""

from __future__ import annotations

import argparse
import json
import random
import selectors
import socket
import time
from dataclasses import dataclass, field

from ocm import wire

# Chat text must be UTF-8 and must not start with 0x00 (a control message):
# "M", sender index, sequence and send time (ns), in hex.
STAMP_SIZE = 1 + 8 + 8 + 16


def stamp(sender: int, seq: int) -> bytes:
    """The timed, ASCII start of a message."""
    return b"M%08x%08x%016x" % (sender, seq, time.perf_counter_ns())


def tcrp(host: str, port: int, operation: int, room: str, payload: dict[str, object], source: str = "") -> tuple[dict[str, object], bytes | None]:
    """One TCRP request: the state-1 JSON and the state-2 payload (retrying on 429)."""
    for _ in range(200):
        with socket.create_connection((host, port), timeout=10, source_address=(source, 0) if source else None) as s:
            s.sendall(wire.encode_frame(operation, 0, room.encode(), json.dumps(payload).encode()))
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        frames, _ = wire.decode_frames(data)
        body = wire.decode_json(frames[0].payload)
        if body["status"] == 429:
            time.sleep(0.05)
            continue
        return body, frames[1].payload if len(frames) > 1 else None
    raise SystemExit("too many 429 answers")


@dataclass
class Result:
    """What one traffic window measured."""

    sent: int = 0
    delivered: int = 0
    expected: int = 0
    latencies: list[float] = field(default_factory=list)

    @property
    def loss(self) -> float:
        """Lost fraction, in percent."""
        return 100.0 * (1 - self.delivered / self.expected) if self.expected else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile, in ms."""
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    def summary(self) -> str:
        """One line."""
        return (
            f"sent {self.sent}, delivered {self.delivered} of {self.expected} (loss {self.loss:.3f}%); "
            f"latency ms p50 {self.percentile(0.5):.2f} p99 {self.percentile(0.99):.2f} max {self.percentile(1.0):.2f}"
        )


class Chat:
    """ROOMS x MEMBERS members on one server, each with its own UDP socket."""

    def __init__(self, host: str, port: int, rooms: int, members: int, prefix: str = "load") -> None:
        self.host = host
        self.members_per_room = members
        self.members: list[tuple[socket.socket, bytes]] = []
        run = f"{prefix}-{random.randrange(16**6):06x}"
        udp_port = 0
        for r in range(rooms):
            room = f"{run}-{r}"
            for m in range(members):
                body, token = tcrp(host, port, 1 if m == 0 else 2, room, {"username": f"u{m}"})
                if body["status"] != 200 or token is None:
                    raise SystemExit(f"{room}/u{m}: status {body['status']}")
                udp_port = int(body["udp_port"])  # type: ignore[call-overload]
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind((host, 0))
                sock.setblocking(False)
                self.members.append((sock, wire.encode_datagram(room.encode(), token)))
        self.udp = (host, udp_port)
        self.selector = selectors.DefaultSelector()
        for i, (sock, _) in enumerate(self.members):
            self.selector.register(sock, selectors.EVENT_READ, i)

    def _drain(self, timeout: float) -> list[tuple[int, bytes]]:
        got = []
        for key, _ in self.selector.select(timeout):
            sock = key.fileobj
            while True:
                try:
                    got.append((key.data, sock.recv(4096)))  # type: ignore[union-attr]
                except BlockingIOError:
                    break
        return got

    def bind(self, timeout: float = 30) -> None:
        """\\x00hello from every member until every one is welcomed."""
        welcomed: set[int] = set()
        deadline = time.perf_counter() + timeout
        while len(welcomed) < len(self.members):
            if time.perf_counter() > deadline:
                raise SystemExit(f"only {len(welcomed)} of {len(self.members)} welcomed")
            for i, (sock, header) in enumerate(self.members):
                if i not in welcomed:
                    sock.sendto(header + wire.HELLO, self.udp)
            end = time.perf_counter() + 0.5
            while time.perf_counter() < end and len(welcomed) < len(self.members):
                for i, msg in self._drain(0.05):
                    if msg[:1] == b"\x00" and b'"welcome"' in msg:
                        welcomed.add(i)

    def traffic(self, rate: float, duration: float, size: int = 64) -> Result:
        """Every member sends C{rate} messages a second for C{duration} s; count what arrives."""
        result = Result()
        interval = 1.0 / rate
        n = len(self.members)
        next_send = [time.perf_counter() + 0.2 + random.random() * interval for _ in range(n)]
        window_end = time.perf_counter() + 0.2 + duration
        seq = [0] * n
        filler = b"x" * max(0, size - STAMP_SIZE)
        while True:
            now = time.perf_counter()
            if now >= window_end + 1.0:
                break
            if now < window_end:
                for i in range(n):
                    if next_send[i] <= now:
                        sock, header = self.members[i]
                        sock.sendto(header + stamp(i, seq[i]) + filler, self.udp)
                        seq[i] += 1
                        result.sent += 1
                        next_send[i] += interval
            for _, msg in self._drain(0.001):
                if msg[0] == 0:
                    continue
                body = msg[1 + msg[0] :]
                if len(body) >= STAMP_SIZE and body[:1] == b"M":
                    result.latencies.append((time.perf_counter_ns() - int(body[17:STAMP_SIZE], 16)) / 1e6)
                    result.delivered += 1
        result.expected = result.sent * (self.members_per_room - 1)
        return result

    def leave(self) -> None:
        """Every member leaves; sockets closed."""
        for sock, header in self.members:
            sock.sendto(header + wire.LEAVE, self.udp)
            sock.close()


def main() -> None:
    """Run the load and print the result."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--rate", type=float, default=2.0, help="messages per second per member")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    start = time.perf_counter()
    chat = Chat(args.host, args.port, args.rooms, args.members)
    chat.bind()
    setup = time.perf_counter() - start
    result = chat.traffic(args.rate, args.duration, args.size)
    chat.leave()
    print(
        f"{args.rooms} rooms x {args.members} members at {args.rate}/s for {args.duration} s "
        f"(setup {setup:.1f} s): {result.summary()}; {result.delivered / args.duration:,.0f} relayed/s"
    )


if __name__ == "__main__":
    main()
