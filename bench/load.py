"""
A small end-to-end load run against a running ocm server, in Python.

    taskset -c 1 twistd --pidfile= -n ocm --tcp 9000 --udp 9001 --interface 127.0.0.1 &
    taskset -c 0 python bench/load.py --port 9000 --rooms 50 --members 10 --rate 2 --duration 10

Sets up ROOMS x MEMBERS over TCRP, binds every member's UDP socket, then each
member sends RATE messages a second; every member socket is read and each
relayed message timed. Reports loss and latency percentiles. For the
assignment's full load (500 rooms) use the C generator ocmload: one Python
process cannot drive 90,000 datagrams a second.
"""

from __future__ import annotations

import argparse
import json
import random
import selectors
import socket
import time

from ocm import wire

# Chat text must be UTF-8 and must not start with 0x00 (a control message):
# "M", sender index, sequence and send time (ns), in hex.
STAMP_SIZE = 1 + 8 + 8 + 16


def stamp(sender: int, seq: int) -> bytes:
    """The timed, ASCII start of a message."""
    return b"M%08x%08x%016x" % (sender, seq, time.perf_counter_ns())


def tcrp(host: str, port: int, operation: int, room: str, payload: dict[str, object]) -> tuple[bytes, int]:
    """One TCRP request; the token and the UDP port (retrying on 429)."""
    for _ in range(100):
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(wire.encode_frame(operation, 0, room.encode(), json.dumps(payload).encode()))
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        frames, _ = wire.decode_frames(data)
        body = wire.decode_json(frames[0].payload)
        status = body["status"]
        if status == 429:
            time.sleep(0.05)
            continue
        if status != 200:
            raise SystemExit(f"{room}/{payload['username']}: status {status}")
        return frames[1].payload, int(body["udp_port"])
    raise SystemExit("too many 429 answers")


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

    run = f"{random.randrange(16**6):06x}"
    members = []  # (socket, header, room index)
    start = time.perf_counter()
    for r in range(args.rooms):
        room = f"load-{run}-{r}"
        for m in range(args.members):
            token, udp_port = tcrp(args.host, args.port, 1 if m == 0 else 2, room, {"username": f"u{m}"})
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((args.host, 0))
            sock.setblocking(False)
            members.append((sock, wire.encode_datagram(room.encode(), token), r))
    udp = (args.host, udp_port)
    setup = time.perf_counter() - start

    selector = selectors.DefaultSelector()
    for i, (sock, _, _) in enumerate(members):
        selector.register(sock, selectors.EVENT_READ, i)
    welcomed: set[int] = set()
    delivered = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + 30
    while len(welcomed) < len(members):
        if time.perf_counter() > deadline:
            raise SystemExit(f"only {len(welcomed)} of {len(members)} welcomed")
        for i, (sock, header, _) in enumerate(members):
            if i not in welcomed:
                sock.sendto(header + wire.HELLO, udp)
        end = time.perf_counter() + 0.5
        while time.perf_counter() < end and len(welcomed) < len(members):
            for key, _ in selector.select(0.05):
                sock = key.fileobj
                while True:
                    try:
                        msg = sock.recv(4096)  # type: ignore[union-attr]
                    except BlockingIOError:
                        break
                    if msg[:1] == b"\x00" and b'"welcome"' in msg:
                        welcomed.add(key.data)

    interval = 1.0 / args.rate
    n = len(members)
    phases = [random.random() * interval for _ in range(n)]
    next_send = [time.perf_counter() + 0.5 + p for p in phases]
    window_end = time.perf_counter() + 0.5 + args.duration
    seq = [0] * n
    sent = 0
    filler = b"x" * max(0, args.size - STAMP_SIZE)
    while True:
        now = time.perf_counter()
        if now >= window_end + 1.0:
            break
        if now < window_end:
            for i in range(n):
                if next_send[i] <= now:
                    sock, header, _ = members[i]
                    sock.sendto(header + stamp(i, seq[i]) + filler, udp)
                    seq[i] += 1
                    sent += 1
                    next_send[i] += interval
        for key, _ in selector.select(0.001):
            sock = key.fileobj
            while True:
                try:
                    msg = sock.recv(4096)  # type: ignore[union-attr]
                except BlockingIOError:
                    break
                if msg[0] == 0:
                    continue
                body = msg[1 + msg[0] :]
                if len(body) >= STAMP_SIZE and body[:1] == b"M":
                    sent_ns = int(body[17:STAMP_SIZE], 16)
                    latencies.append((time.perf_counter_ns() - sent_ns) / 1e6)
                    delivered += 1
    expected = sent * (args.members - 1)
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    print(
        f"{args.rooms} rooms x {args.members} members at {args.rate}/s for {args.duration} s "
        f"(setup {setup:.1f} s): sent {sent}, delivered {delivered} of {expected} "
        f"(loss {100 * (1 - delivered / expected):.3f}%), {delivered / args.duration:,.0f} relayed/s; "
        f"latency ms p50 {pct(0.5):.2f} p99 {pct(0.99):.2f} max {latencies[-1] if latencies else float('nan'):.2f}"
    )
    for sock, header, _ in members:
        sock.sendto(header + wire.LEAVE, udp)
        sock.close()


if __name__ == "__main__":
    main()
