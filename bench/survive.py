"""
Survival under abuse, measured against a running ocm server (loopback only).

    python bench/survive.py flood --port 9000 --duration 30
        50 members in 5 rooms chat at 2 msg/s each while another process
        blasts the UDP port with random bytes, unknown tokens and real tokens
        from the wrong IP (127.0.0.2) as fast as it can.  Goal: legitimate
        loss below 1%.

    python bench/survive.py tcp --port 9000 --idle 1000 --duration 20
        IDLE connections that never send a byte (100 per source IP, from
        127.0.1.x) and a slow-loris sender (one byte every 0.5 s) while
        creates and joins go on from 127.0.0.1.  Goal: every one answered
        200 within 1 s.

    python bench/survive.py churn --port 9000 --duration 600 --server-pid PID
        (server started with --timeout 2) rooms created, joined, chatted in,
        left, timed out and closed at a high rate.  Reports the server's
        resident memory after warm-up and at the end; goal: every room and
        member gone at the end (the room list is empty).

Exit status 0 when the goal is met, 1 when not.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from load import Chat, tcrp  # noqa: E402

from ocm import wire  # noqa: E402


def blast(host: str, port: int, headers: list[bytes], duration: float, counter: multiprocessing.Value, rate: float = 0) -> None:  # type: ignore[valid-type]
    """Send junk as fast as one process can (or at C{rate}/s), for C{duration} seconds."""
    strangers = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    strangers.bind(("127.0.0.2", 0))
    local = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    local.bind(("127.0.0.1", 0))
    target = (host, port)
    rooms = [h[2 : 2 + h[0]] for h in headers]
    junk = [os.urandom(random.randrange(0, 600)) for _ in range(64)]
    junk += [wire.encode_datagram(random.choice(rooms), os.urandom(16).hex().encode(), b"spam") for _ in range(64)]
    sent = 0
    begin = time.perf_counter()
    end = begin + duration
    while time.perf_counter() < end:
        if rate and sent > rate * (time.perf_counter() - begin):
            time.sleep(0.001)
            continue
        for i in range(256):
            try:
                local.sendto(junk[i % len(junk)], target)
                strangers.sendto(headers[i % len(headers)] + b"spoofed", target)
                sent += 2
            except OSError:
                pass
    counter.value = sent


def flood(args: argparse.Namespace) -> bool:
    """Legitimate chat during a junk flood."""
    chat = Chat(args.host, args.port, 5, 10, prefix="flood")
    chat.bind()
    counter = multiprocessing.Value("q", 0)
    blaster = multiprocessing.Process(target=blast, args=(args.host, chat.udp[1], [h for _, h in chat.members], args.duration + 1, counter, args.junk_rate))
    blaster.start()
    time.sleep(0.5)
    result = chat.traffic(2.0, args.duration)
    blaster.join(args.duration + 30)
    chat.leave()
    rate = counter.value / (args.duration + 1)
    print(f"flood: {rate:,.0f} junk datagrams/s for {args.duration:.0f} s; legitimate: {result.summary()}")
    return result.loss < 1.0


def tcp_abuse(args: argparse.Namespace) -> bool:
    """Creates and joins while idle and slow connections pile up."""
    idle = []
    for i in range(args.idle):
        s = socket.socket()
        s.bind((f"127.0.1.{1 + i // 100}", 0))
        s.connect((args.host, args.port))
        idle.append(s)
    stop = threading.Event()
    loris_sent = [0]

    def loris() -> None:
        while not stop.is_set():
            with socket.socket() as s:
                s.bind(("127.0.2.1", 0))
                s.connect((args.host, args.port))
                header = bytes((1, 1, 0)) + (20).to_bytes(29, "big")
                try:
                    for byte in header:
                        if stop.wait(0.5):
                            return
                        s.send(bytes((byte,)))
                        loris_sent[0] += 1
                except OSError:
                    pass  # closed by the server's request timeout: start again

    thread = threading.Thread(target=loris, daemon=True)
    thread.start()
    times = []
    failures = 0
    end = time.perf_counter() + args.duration
    n = 0
    while time.perf_counter() < end:
        room = f"tcp-{os.getpid()}-{n}"
        for operation, name in ((1, "host"), (2, "guest")):
            start = time.perf_counter()
            try:
                body, _ = tcrp(args.host, args.port, operation, room, {"username": name})
                ok = body["status"] == 200
            except OSError:
                ok = False
            times.append(time.perf_counter() - start)
            failures += not ok
        n += 1
        time.sleep(0.05)
    stop.set()
    open_still = 0
    for s in idle:
        s.setblocking(False)
        try:
            s.recv(1)  # b"" or a reset: the server closed it
        except BlockingIOError:
            open_still += 1
        except OSError:
            pass
        s.close()
    times.sort()
    print(
        f"tcp: {args.idle} idle connections ({open_still} still open at the end: the server closes idle ones "
        f"after --request-timeout), a slow-loris sender ({loris_sent[0]} bytes); {len(times)} creates/joins: "
        f"{failures} failed, p50 {times[len(times) // 2] * 1000:.1f} ms, max {times[-1] * 1000:.1f} ms"
    )
    return failures == 0 and times[-1] < 1.0


def rss(pid: int) -> int:
    """Resident memory of C{pid}, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def churn(args: argparse.Namespace) -> bool:
    """Rooms and members coming and going, fast, for a long time."""
    start = time.perf_counter()
    end = start + args.duration
    warm = start + min(30.0, args.duration / 5)
    rss_warm = rss_end = 0
    cycles = 0
    udp = None
    local = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    local.bind(("127.0.0.1", 0))
    while time.perf_counter() < end:
        room = f"churn-{os.getpid()}-{cycles}"
        body, host_token = tcrp(args.host, args.port, 1, room, {"username": "host", "password": "pw" if cycles % 4 == 0 else ""})
        if body["status"] != 200 or host_token is None:
            print(f"churn: create refused {body}")
            return False
        udp = (args.host, int(body["udp_port"]))  # type: ignore[call-overload]
        tokens = [host_token]
        for m in range(4):
            body, token = tcrp(args.host, args.port, 2, room, {"username": f"m{m}", "password": "pw"})
            if token:
                tokens.append(token)
        socks = []
        for token in tokens[:-1]:  # the last one never binds: its token expires
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.sendto(wire.encode_datagram(room.encode(), token, wire.HELLO), udp)
            s.sendto(wire.encode_datagram(room.encode(), token, b"hello " * 10), udp)
            socks.append((s, token))
        # one leaves, one goes silent (times out), the host leaves or goes silent
        if len(socks) > 2:
            s, token = socks[1]
            s.sendto(wire.encode_datagram(room.encode(), token, wire.LEAVE), udp)
        if cycles % 2 == 0:
            s, token = socks[0]
            s.sendto(wire.encode_datagram(room.encode(), token, wire.LEAVE), udp)
        for s, _ in socks:
            s.close()
        cycles += 1
        if not rss_warm and time.perf_counter() > warm and args.server_pid:
            rss_warm = rss(args.server_pid)
    if args.server_pid:
        rss_end = rss(args.server_pid)
    time.sleep(args.settle)
    body, listing = tcrp(args.host, args.port, 3, "", {})
    rooms = wire.decode_json(listing or b"[]")
    mine = [r for r in rooms if str(r["name"]).startswith(f"churn-{os.getpid()}-")]
    elapsed = time.perf_counter() - start - args.settle
    memory = f"server RSS {rss_warm / 1024:.1f} MiB after warm-up, {rss_end / 1024:.1f} MiB at the end; " if args.server_pid else ""
    print(
        f"churn: {cycles} rooms ({cycles * 5} members) in {elapsed:.0f} s = {cycles / elapsed:.0f} rooms/s; "
        f"{memory}rooms left after {args.settle:.0f} s: {len(mine)}"
    )
    return not mine


def main() -> None:
    """Run one of the measurements."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["flood", "tcp", "churn"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--duration", type=float, default=30)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--junk-rate", type=float, default=0, help="flood: junk datagrams/s (default: as fast as possible)")
    parser.add_argument("--server-pid", type=int, default=0)
    parser.add_argument("--settle", type=float, default=6.0, help="churn: seconds to wait for timeouts before counting")
    args = parser.parse_args()
    ok = {"flood": flood, "tcp": tcp_abuse, "churn": churn}[args.what](args)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
