"""
The assignment's load through the extensions ocmload does not speak, with
one Python generator, in one run:

    python bench/pyload.py                          # secure, then plain: 500 rooms x 10 x 2 msg/s, 20 s
    python bench/pyload.py --modes tunnel,plain     # a third of the members tunnelled, then all over UDP
    python bench/pyload.py --modes web,plain        # a third of the members on WebSockets, then all over UDP
    python bench/pyload.py --rooms 50 --duration 5

Modes: C{secure} joins every member over TLS (checking a certificate made
for the run), seals every datagram with the member's key and opens every
one it receives (L{ocm.sealing}, the same code as the client); C{tunnel}
(a server with C{--tunnel}) sends and receives every third member's
datagrams through its TCP tunnel (docs/reach.rst); C{web} (a server with
C{--web}) makes every third member a browser on its WebSocket gateway
(SPEC section 8: the request and then the datagrams, one binary message
each); C{plain} is the SPEC over UDP.  Each message carries its send
time; every delivery is timed.  A fresh server each run (C{twistd}, pinned
to core 1); the generator pins itself to core 0.  Prints loss, latency,
the server's CPU and the generator's own (if it nears 100%, the figures
are the generator's limit, not the server's).

Needs C{twistd} with ocm installed (C{pip install .}).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import select
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from ocm import wire  # noqa: E402
from ocm.sealing import Channel  # noqa: E402
from procs import free_port, stop  # noqa: E402


def make_certificate(directory: str) -> tuple[str, str, str]:
    """A server certificate for 127.0.0.1 and its CA (EC P-256, made as the test suite makes them)."""
    from tests.certs import write_server_files

    files = write_server_files(directory)
    return files["server.pem"], files["server.key"], files["ca.pem"]


def cpu_seconds(pid: int) -> float:
    """utime + stime of C{pid}, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tcrp(port: int, operation: int, room: str, payload: dict[str, Any], context: ssl.SSLContext | None) -> tuple[dict[str, Any], bytes]:
    """One TCRP request (over TLS with C{context}); the state-1 JSON and the token."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        sock: Any = context.wrap_socket(raw, server_hostname="127.0.0.1") if context else raw
        sock.sendall(wire.encode_frame(operation, wire.STATE_REQUEST, room.encode(), wire.encode_json(payload)))
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    frames, _ = wire.decode_frames(data)
    body = wire.decode_json(frames[0].payload)
    if body["status"] != 200:
        raise SystemExit(f"TCRP {operation} {room}: {body}")
    return body, frames[1].payload


class WebSocket:
    """
    A browser's WebSocket to the gateway's C{/ws} (RFC 6455, SPEC section 8)
    on a plain socket: the upgrade with the page's own origin, then masked
    frames sent blocking and whole messages received without waiting (the
    server sends each unfragmented and unmasked); pings answered.
    """

    GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16))
        host = f"127.0.0.1:{port}".encode()
        self.sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
            b"Sec-WebSocket-Version: 13\r\nOrigin: http://%s\r\n\r\n" % (host, key, host)
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise SystemExit("the WebSocket upgrade was not answered")
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        accept = base64.b64encode(hashlib.sha1(key + self.GUID).digest())
        if head.split(b" ", 2)[1] != b"101" or accept not in head:
            raise SystemExit(f"WebSocket upgrade refused: {head.decode(errors='replace')}")

    def request(self, operation: int, room: str, payload: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        """One TCRP request as the first message; the state-1 JSON and the token (as L{tcrp})."""
        self.send(wire.encode_frame(operation, wire.STATE_REQUEST, room.encode(), wire.encode_json(payload)))
        body: dict[str, Any] | None = None
        while True:
            for message in self.messages():  # one TCRP frame each
                frame = wire.decode_frames(message)[0][0]
                if body is not None:
                    self.sock.settimeout(None)  # blocking sends from now on
                    return body, frame.payload
                body = wire.decode_json(frame.payload)
                if body["status"] != 200:
                    raise SystemExit(f"TCRP {operation} {room} (WebSocket): {body}")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SystemExit(f"TCRP {operation} {room}: the WebSocket closed before the answer")
            self.buffer += chunk

    def send(self, payload: bytes, opcode: int = 0x2) -> None:
        """One masked frame: a whole binary message unless told."""
        size = len(payload)
        if size < 126:
            head = bytes([0x80 | opcode, 0x80 | size])
        elif size < 1 << 16:
            head = bytes([0x80 | opcode, 0x80 | 126]) + size.to_bytes(2, "big")
        else:
            head = bytes([0x80 | opcode, 0x80 | 127]) + size.to_bytes(8, "big")
        mask = os.urandom(4)
        masked = int.from_bytes(payload, "big") ^ int.from_bytes((mask * (size // 4 + 1))[:size], "big")
        self.sock.sendall(head + mask + masked.to_bytes(size, "big"))

    def receive(self) -> list[bytes]:
        """Every whole binary message that arrived (without waiting)."""
        out = []
        while True:
            try:
                data = self.sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if not data:
                break
            self.buffer += data
            out.extend(self.messages())
        return out

    def messages(self) -> list[bytes]:
        """The whole binary messages at the head of the buffer (pings answered); a part of one is kept."""
        out = []
        buffer, at = self.buffer, 0
        while len(buffer) - at >= 2:
            first, size = buffer[at], buffer[at + 1] & 0x7F
            start = at + 2 + {126: 2, 127: 8}.get(size, 0)
            if len(buffer) < start:
                break
            if size >= 126:  # a 16-bit or 64-bit length
                size = int.from_bytes(buffer[at + 2 : start], "big")
            if len(buffer) < start + size:
                break
            payload, at = buffer[start : start + size], start + size
            if first == 0x82:  # FIN | binary
                out.append(payload)
            elif first == 0x89:  # FIN | ping
                self.send(payload, 0xA)
            elif first == 0x88:  # FIN | close
                raise SystemExit(f"the server closed a WebSocket: {payload!r}")
            else:
                raise SystemExit(f"unexpected WebSocket frame {first:#x}")
        self.buffer = buffer[at:]
        return out


class Member:
    """One generated member: its socket, token and seal."""

    __slots__ = ("index", "room", "name", "sock", "header", "channel", "welcomed", "tunnelled", "buffer", "web")

    def __init__(
        self,
        index: int,
        room: str,
        name: str,
        token: bytes,
        key: bytes | None,
        udp_port: int,
        tunnel_port: int = 0,
        web: WebSocket | None = None,
    ) -> None:
        self.index = index
        self.room = room
        self.name = name
        self.header = wire.encode_datagram(room.encode(), token)
        self.channel = Channel(key, self.header, server_end=False) if key else None
        self.tunnelled = bool(tunnel_port)
        self.buffer = b""
        self.web = web
        if web is not None:  # its request made through the WebSocket (L{WebSocket.request})
            self.sock = web.sock
        elif self.tunnelled:  # blocking sends, non-blocking reads (MSG_DONTWAIT)
            self.sock = socket.create_connection(("127.0.0.1", tunnel_port), timeout=30)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.sendall(wire.encode_frame(wire.OP_TUNNEL, 0, room.encode(), wire.encode_json({"token": token.decode()})))
            while not wire.decode_frames(self.buffer)[0]:
                self.buffer += self.sock.recv(4096)
            frames, self.buffer = wire.decode_frames(self.buffer)
            if wire.decode_json(frames[0].payload)["status"] != 200:
                raise SystemExit(f"tunnel refused: {frames[0].payload!r}")
            self.sock.settimeout(None)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("127.0.0.1", 0))
            self.sock.connect(("127.0.0.1", udp_port))
            self.sock.setblocking(False)
        self.welcomed = False

    def send(self, message: bytes) -> None:
        data = self.header + (self.channel.seal(message) if self.channel else message)
        if self.web is not None:
            self.web.send(data)
            return
        if self.tunnelled:
            self.sock.sendall(wire.tunnel_frame(data))
            return
        try:
            self.sock.send(data)
        except BlockingIOError:
            pass

    def receive(self) -> list[bytes]:
        """Every datagram waiting (UDP), or every whole one that arrived (tunnel, WebSocket)."""
        if self.web is not None:
            return self.web.receive()
        out = []
        flags = socket.MSG_DONTWAIT if self.tunnelled else 0
        while True:
            try:
                data = self.sock.recv(65536 if self.tunnelled else 8192, flags)
            except BlockingIOError:
                break
            if not data:
                break
            if not self.tunnelled:
                out.append(data)
                continue
            datagrams, self.buffer = wire.split_tunnel_frames(self.buffer + data, 1 << 20)
            out.extend(datagrams)
        return out

    def open(self, data: bytes) -> bytes | None:
        if self.channel is None:
            return data
        return self.channel.open(data)[0]


def run(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """One fresh server and one generated load."""
    directory = tempfile.mkdtemp(prefix="ocm-secure-bench-")
    tcp, udp = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    web = free_port(socket.SOCK_STREAM) if mode == "web" else 0
    argv = [shutil.which("twistd") or "twistd", "--pidfile=", "-n", "ocm", "--tcp", str(tcp), "--udp", str(udp), "--interface", "127.0.0.1",
            "--request-rate", "100000", "--request-burst", "100000", "--max-connections-per-ip", "100000"]
    context = None
    secure = mode == "secure"
    if mode == "tunnel":
        argv += ["--tunnel"]
    if web:
        argv += ["--web", str(web)]
    if secure:
        cert, key, ca = make_certificate(directory)
        argv += ["--tls-cert", cert, "--tls-key", key]
        context = ssl.create_default_context(cafile=ca)
    if shutil.which("taskset"):
        argv = ["taskset", "-c", "1", *argv]
    log = open(os.path.join(directory, "server.log"), "wb")
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=directory)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                for port in (tcp, web) if web else (tcp,):
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.05)
        return load(args, mode, tcp, context, server.pid, web)
    finally:
        stop(server)


def load(args: argparse.Namespace, mode: str, tcp: int, context: ssl.SSLContext | None, pid: int, web_port: int = 0) -> dict[str, Any]:  # noqa: C901
    """Set up every member, send for warm-up + window, drain, count."""
    secure = mode == "secure"
    started = time.monotonic()
    names = [(r, m) for r in range(args.rooms) for m in range(args.members)]

    def setup(rm: tuple[int, int]) -> Member:
        r, m = rm
        room = f"room{r}"
        operation, payload = wire.OP_CREATE if m == 0 else wire.OP_JOIN, {"username": f"u{m}"}
        index = r * args.members + m
        web = WebSocket(web_port) if mode == "web" and index % 3 == 2 else None
        body, token = web.request(operation, room, payload) if web else tcrp(tcp, operation, room, payload, context)
        key = bytes.fromhex(body["key"]) if secure else None
        tunnel = tcp if mode == "tunnel" and index % 3 == 2 else 0
        return Member(index, room, f"u{m}", token, key, int(body["udp_port"]), tunnel, web)

    with ThreadPoolExecutor(16) as pool:
        hosts = list(pool.map(setup, [n for n in names if n[1] == 0]))
        guests = list(pool.map(setup, [n for n in names if n[1] != 0]))
    members = sorted(hosts + guests, key=lambda m: m.index)
    setup_s = time.monotonic() - started
    by_fd = {m.sock.fileno(): m for m in members}
    poller = select.epoll()
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    # bind every token (hello until welcomed)
    for _ in range(20):
        for m in members:
            if not m.welcomed:
                m.send(wire.HELLO)
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            for fd, _ in poller.poll(0.05):
                m = by_fd[fd]
                for data in m.receive():
                    plain = m.open(data)
                    if plain and plain[0] == 0:
                        m.welcomed = True
        if all(m.welcomed for m in members):
            break
    else:
        raise SystemExit("not every member was welcomed")
    # the schedule: each member sends every 1/rate s at a random phase
    period = 1.0 / args.rate
    order = sorted((random.random() * period, m) for m in members)
    per = args.members - 1
    sent_in_window = 0
    delivered = 0
    latencies: list[float] = []
    t0 = time.monotonic() + 0.2
    window_start = t0 + args.warmup
    window_end = window_start + args.duration
    stop_sending = window_end
    drain_end = stop_sending + args.drain
    cpu0 = time.process_time()
    server0 = cpu_seconds(pid)
    seq = 0
    i = 0
    cycle = 0
    padding = b"x" * max(0, args.size - 24)
    while True:
        now = time.monotonic()
        if now >= drain_end:
            break
        # send what is due
        while now < stop_sending:
            phase, m = order[i]
            due = t0 + cycle * period + phase
            if due > now:
                break
            in_window = window_start <= due < window_end
            if in_window:
                sent_in_window += 1
            seq += 1
            m.send(b"%d %d %.6f " % (1 if in_window else 0, seq, time.monotonic()) + padding)
            i += 1
            if i == len(order):
                i = 0
                cycle += 1
        for fd, _ in poller.poll(0.001):
            m = by_fd[fd]
            for data in m.receive():
                plain = m.open(data)
                if plain is None:
                    continue
                user_size = plain[0]
                if user_size == 0:
                    continue
                text = plain[1 + user_size :]
                if text[:2] == b"1 ":
                    delivered += 1
                    latencies.append(time.monotonic() - float(text.split(b" ", 3)[2]))
    gen_cpu = time.process_time() - cpu0
    server_cpu = cpu_seconds(pid) - server0
    elapsed = drain_end - t0
    expected = sent_in_window * per
    latencies.sort()

    def pct(q: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 3) if latencies else -1.0

    for m in members:
        m.sock.close()
    return {
        "mode": mode,
        "tunnelled": sum(1 for m in members if m.tunnelled),
        "web": sum(1 for m in members if m.web is not None),
        "rooms": args.rooms,
        "members": args.members,
        "rate": args.rate,
        "setup_s": round(setup_s, 1),
        "sent": sent_in_window,
        "expected": expected,
        "delivered": delivered,
        "loss_pct": round(100 * (1 - delivered / expected), 4) if expected else None,
        "delivered_out_s": round(delivered / args.duration, 1),
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "server_cpu_pct": round(100 * server_cpu / elapsed, 1),
        "server_us_per_out": round(1e6 * server_cpu / max(1, seq * per), 2),
        "generator_cpu_pct": round(100 * gen_cpu / elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=500)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--drain", type=float, default=2.0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--modes", default="secure,plain", help="comma-separated, run in this order: secure, tunnel, web, plain")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {0})
        except OSError:
            pass
    modes = args.modes.split(",")
    for mode in modes:
        if mode not in ("secure", "tunnel", "web", "plain"):
            parser.error(f"unknown mode {mode!r}")
    for _ in range(args.runs):
        for mode in modes:
            print(json.dumps(run(args, mode)), flush=True)


if __name__ == "__main__":
    main()
