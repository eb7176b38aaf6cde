"""
The cluster benchmark: the assignment's load with each room's members split
over two ocm nodes sharing one Redis, side by side with one node, in one run.

    python bench/cluster.py --runs 1             # load A: one node, then two
    python bench/cluster.py --find-max           # the highest sustained rate, both ways

The generator is the project's C{ocmload}, rebuilt here with two options of
its own (C{--tcp2}, C{--udp2}): the members of each room alternate between
the nodes (host, 3rd, 5th... on the first; 2nd, 4th... on the second), so
that every datagram is fanned out on both.  ocmload checks every delivery
(duplicates, misrouted, lost).  The generator runs on core 0; the nodes and
Redis share core 1 (C{taskset}); each run starts fresh processes.  CPU of
each node and of Redis is read from C{/proc} over ocmload's whole run
(warm-up, window and drain).

Needs C{twistd} with ocm installed (C{pip install .}), C{redis-server} and gcc.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from procs import free_port, pinned, wait_for_port

HERE = os.path.dirname(os.path.abspath(__file__))
OCMLOAD_C = os.path.join(HERE, "..", "..", "shared", "tools", "ocmload.c")

# The two-node options, as textual edits of the shared ocmload.c.
EDITS = [
    ("    int tcp, udp, lobby;", "    int tcp, udp, lobby, tcp2, udp2;"),
    (
        "static int udp_port_of_server(void) { return O.lobby ? O.lobby : O.udp; }",
        "static int udp_port_of_server(void) { return O.lobby ? O.lobby : O.udp; }\n"
        "static int on_second(int i) { return O.tcp2 && (i % O.members) % 2 == 1; }",
    ),
    (
        ".sin_port = htons((uint16_t)udp_port_of_server())};",
        ".sin_port = htons((uint16_t)(on_second(i) ? O.udp2 : udp_port_of_server()))};",
    ),
    (
        ".sin_port = htons((uint16_t)O.tcp)};",
        ".sin_port = htons((uint16_t)(on_second(j->member) ? O.tcp2 : O.tcp))};",
    ),
    ('{"help", 0, 0, \'?\'}', '{"tcp2", 1, 0, OPT_BASE + 20}, {"udp2", 1, 0, OPT_BASE + 21}, {"help", 0, 0, \'?\'}'),
    (
        "        case 't': O.tcp = atoi(optarg); break;",
        "        case 't': O.tcp = atoi(optarg); break;\n"
        "        case OPT_BASE + 20: O.tcp2 = atoi(optarg); break;\n"
        "        case OPT_BASE + 21: O.udp2 = atoi(optarg); break;",
    ),
]


def build_ocmload(out: str) -> str:
    """Compile ocmload with the two-node options into C{out}."""
    with open(OCMLOAD_C) as f:
        source = f.read()
    for old, new in EDITS:
        if source.count(old) != 1:
            raise SystemExit(f"ocmload.c changed: cannot apply the edit for {old!r}")
        source = source.replace(old, new)
    path = out + ".c"
    with open(path, "w") as f:
        f.write(source)
    subprocess.run(["gcc", "-O2", "-o", out, path, "-lm"], check=True)
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of C{pid}, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Processes:
    """The servers of one run, stopped at the end."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.dir = tempfile.mkdtemp(prefix="ocm-cluster-bench-")

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(os.path.join(self.dir, name + ".log"), "wb")
        proc = subprocess.Popen(pinned("1", argv), stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        self.procs[name] = proc
        return proc

    def node(self, name: str, tcp: int, udp: int, redis: str | None) -> None:
        argv = [shutil.which("twistd") or "twistd", "--pidfile=", "-n", "ocm", "--tcp", str(tcp), "--udp", str(udp),
                "--interface", "127.0.0.1", "--request-rate", "100000", "--request-burst", "100000",
                "--max-connections-per-ip", "100000"]
        if redis:
            argv += ["--redis", redis, "--node", name]
        self.start(name, argv)
        wait_for_port(tcp, time.monotonic() + 15)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def run(args: argparse.Namespace, nodes: int) -> dict[str, Any]:
    """One fresh set of processes (one node, or two and a Redis) and one ocmload run."""
    ps = Processes()
    try:
        ports = [(free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)) for _ in range(nodes)]
        redis = None
        if nodes > 1:
            rport = free_port(socket.SOCK_STREAM)
            ps.start("redis", [shutil.which("redis-server") or "redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", ps.dir])
            wait_for_port(rport, time.monotonic() + 15)
            redis = f"redis://127.0.0.1:{rport}/0"
        for i, (tcp, udp) in enumerate(ports):
            ps.node(f"n{i + 1}", tcp, udp, redis)
        time.sleep(1.5)  # every node beating and subscribed
        argv = [args.ocmload, "--tcp", str(ports[0][0]), "--udp", str(ports[0][1]), "--rooms", str(args.rooms),
                "--members", str(args.members), "--duration", str(args.duration), "--no-password", "--json",
                "--server-pid", str(ps.procs["n1"].pid)]
        if nodes > 1:
            argv += ["--tcp2", str(ports[1][0]), "--udp2", str(ports[1][1])]
        if args.find_max:
            argv += ["--find-max", "--fm-start", "1", "--fm-factor", "1.25", "--duration", "10"]
        else:
            argv += ["--rate", str(args.rate)]
        before = {name: cpu_seconds(p.pid) for name, p in ps.procs.items()}
        started = time.monotonic()
        out = subprocess.run(pinned("0", argv), capture_output=True, timeout=args.max_seconds)
        elapsed = time.monotonic() - started
        after = {name: cpu_seconds(p.pid) for name, p in ps.procs.items()}
        if out.returncode not in (0, 1):
            sys.stderr.write(out.stderr.decode(errors="replace"))
            raise SystemExit(f"ocmload exited {out.returncode}")
        report = json.loads(out.stdout.decode().strip().splitlines()[-1])
        report["cpu_percent_over_run"] = {name: round(100 * (after[name] - before[name]) / elapsed, 1) for name in after}
        if args.verbose:
            sys.stderr.write(out.stderr.decode(errors="replace"))
        return report
    finally:
        ps.stop()


def summary(label: str, report: dict[str, Any]) -> str:
    """One line of a run."""
    result = report.get("result") or report.get("best") or {}
    keys = ("rate", "loss_pct", "p50_ms", "p99_ms", "delivered_out_s", "dups", "misrouted", "server_us_per_out")
    shown = {k: result[k] for k in keys if k in result}
    return f"{label}: {json.dumps(shown)} cpu% {json.dumps(report['cpu_percent_over_run'])}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ocmload", default="/tmp/ocmload-two-nodes", help="where to build the generator")
    parser.add_argument("--rooms", type=int, default=500)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--find-max", action="store_true")
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("--json", action="store_true", help="print each run's whole ocmload report")
    parser.add_argument("--verbose", action="store_true", help="show ocmload's human report")
    args = parser.parse_args()
    build_ocmload(args.ocmload)
    for i in range(args.runs):
        for nodes in (1, 2):
            report = run(args, nodes)
            print(summary(f"run {i + 1}, {nodes} node{'s' if nodes > 1 else ''}", report), flush=True)
            if args.json:
                print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
