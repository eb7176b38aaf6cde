"""
Two versions of ocm side by side, interleaved in one run (A B A B ...), so
that the machine's drift shows in both: the in-process C{relay_bench}
(plain, the Python loop, secure) and C{ocmload}'s find-max against a fresh
pinned server of each.

    git worktree add /tmp/old 7b13ed0
    python bench/abtest.py --a /tmp/old --b . --runs 3 relay_bench
    python bench/abtest.py --a /tmp/old --b . --runs 2 --ocmload /tmp/ocmload find_max

    python bench/abtest.py --a /tmp/old --b . --runs 5 port_bench

Each tree is put first on C{PYTHONPATH}; the C fan-out module C{_ocm_fanout}
is the tree's own where it was built in place (C{python setup.py build_ext
--inplace}), else the one installed.  C{port_bench} runs this checkout's
C{bench/port_bench.py} (public names only) against each tree: the relay
behind its real port, the read and the checks included.  The server and the
in-process benchmark are pinned to core 1, the generator to core 0.  Prints
one line per run and the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

from procs import pinned, stop, wait_for_port

SERVE = """
import sys
from twisted.internet import reactor
from ocm.tap import Options, makeService
options = Options()
options.parseOptions(sys.argv[1:])
service = makeService(options)
service.startService()
reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
reactor.run()
"""


def env_for(tree: str) -> dict[str, str]:
    """The environment that imports ocm from C{tree}."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.abspath(tree) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def relay_bench(tree: str, extra: list[str]) -> float:
    """One C{relay_bench} run from C{tree}: us of CPU per relayed datagram."""
    script = os.path.join(os.path.abspath(tree), "bench", "relay_bench.py")
    out = subprocess.run(
        pinned("1", [sys.executable, script, "--rooms", "50", "--members", "10", "--messages", "50000", *extra]),
        env=env_for(tree), capture_output=True, text=True, timeout=600, check=True, cwd=os.path.abspath(tree),
    ).stdout
    match = re.search(r"([0-9.]+) us CPU per relayed", out)
    if match is None:
        raise SystemExit(f"relay_bench said: {out!r}")
    return float(match.group(1))


def port_bench(tree: str, extra: list[str]) -> float:
    """One C{port_bench} run (this checkout's script) on C{tree}'s ocm: us of CPU per relayed datagram."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "port_bench.py")
    out = subprocess.run(
        pinned("1", [sys.executable, script, "--rooms", "50", "--members", "10", "--messages", "50000", *extra]),
        env=env_for(tree), capture_output=True, text=True, timeout=600, check=True, cwd=os.path.abspath(tree),
    ).stdout
    match = re.search(r"([0-9.]+) us CPU per relayed", out)
    if match is None:
        raise SystemExit(f"port_bench said: {out!r}")
    return float(match.group(1))


def find_max(tree: str, ocmload: str, port: int, server_args: list[str]) -> dict[str, float]:
    """One fresh server from C{tree} and one find-max: the best passing step."""
    server = subprocess.Popen(
        pinned("1", [sys.executable, "-c", SERVE, "--tcp", str(port), "--udp", str(port + 1), "--interface", "127.0.0.1",
                     "--request-rate", "100000", "--request-burst", "100000", *server_args]),
        env=env_for(tree), cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, time.monotonic() + 20)
        out = subprocess.run(
            pinned("0", [ocmload, "--tcp", str(port), "--rooms", "500", "--members", "10", "--find-max", "--fm-start", "1",
                         "--fm-factor", "1.25", "--duration", "10", "--no-password", "--server-pid", str(server.pid), "--json"]),
            capture_output=True, text=True, timeout=1800,
        ).stdout
        best = json.loads(out.strip().splitlines()[-1]).get("best") or {}
        return {"relayed_s": float(best.get("delivered_out_s", 0.0)), "p99_ms": float(best.get("p99_ms", 0.0)),
                "server_cpu_pct": float(best.get("server_cpu_pct", 0.0))}
    finally:
        stop(server)


def main() -> None:
    """Run the comparison and print it."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, help="source tree A (e.g. a worktree of an older commit)")
    parser.add_argument("--b", required=True, help="source tree B")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ocmload", default="/tmp/ocmload")
    parser.add_argument("--port", type=int, default=19000)
    parser.add_argument("what", choices=["relay_bench", "port_bench", "find_max"])
    args = parser.parse_args()
    trees = {"A": args.a, "B": args.b}
    if args.what == "relay_bench":
        for label, extra in (("plain, C loop", []), ("plain, Python loop", ["--loop", "python"]), ("secure", ["--secure"])):
            got: dict[str, list[float]] = {"A": [], "B": []}
            for _ in range(args.runs):
                for key, tree in trees.items():
                    got[key].append(relay_bench(tree, extra))
            a, b = statistics.median(got["A"]), statistics.median(got["B"])
            print(f"relay_bench {label}: A {got['A']} B {got['B']} us CPU/relayed; median B/A = {b / a:.3f}", flush=True)
    elif args.what == "port_bench":
        for label, extra in (("bursts of 64", ["--burst", "64"]), ("bursts of 4", ["--burst", "4"])):
            got = {"A": [], "B": []}
            for _ in range(args.runs):
                for key, tree in trees.items():
                    got[key].append(port_bench(tree, extra))
            a, b = statistics.median(got["A"]), statistics.median(got["B"])
            print(f"port_bench {label}: A {got['A']} B {got['B']} us CPU/relayed; median B/A = {b / a:.3f}", flush=True)
    else:
        results: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
        for _ in range(args.runs):
            for key, tree in trees.items():
                result = find_max(tree, args.ocmload, args.port, [])
                results[key].append(result)
                print(f"find-max {key}: {result}", flush=True)
        a = statistics.median(r["relayed_s"] for r in results["A"])
        b = statistics.median(r["relayed_s"] for r in results["B"])
        print(f"find-max median relayed/s: A {a:,.0f} B {b:,.0f}; B/A = {b / a:.3f}")


if __name__ == "__main__":
    main()
