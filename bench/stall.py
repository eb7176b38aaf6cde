"""
The TCRP stall test, repeatable: the assignment's chat load measured by
C{ocmload}, with and without 50 password-protected joins a second beside it,
each run on a fresh server.

    python bench/stall.py --ocmload /tmp/ocmload --runs 3

Runs alternate: A (chat load only), then C (chat load plus
C{bench/joins.py}), A, C, ...; so a drift in the machine's speed shows in
both.  The server is pinned to core 1 and the generators to core 0
(C{taskset}); a fresh server each run, because a reused one inherits the
previous run's members and ephemeral ports.  Prints one line per run and
the JSON of each run with C{--json}.

Needs C{twistd} with ocm installed (C{pip install .}) and C{ocmload} built
from the project's shared tools (C{gcc -O2 -o /tmp/ocmload ocmload.c -lm}).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

from procs import pinned, stop, wait_for_port

HERE = os.path.dirname(os.path.abspath(__file__))


def one_run(args: argparse.Namespace, joins: bool, port: int) -> dict[str, Any]:
    """One fresh server, one C{ocmload} window, joins beside it if asked."""
    twistd = shutil.which("twistd") or "twistd"
    server = subprocess.Popen(
        pinned(
            args.server_core,
            [twistd, "--pidfile=", "-n", "--logfile=/dev/null", "ocm", "--tcp", str(port), "--udp", str(port + 1),
             "--interface", "127.0.0.1", "--request-rate", "100000", "--request-burst", "100000"],
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    joined: list[str] = []
    try:
        wait_for_port(port, time.monotonic() + 30)
        load = subprocess.Popen(
            pinned(
                args.load_core,
                [args.ocmload, "--tcp", str(port), "--rooms", "500", "--members", "10", "--rate", "2",
                 "--duration", str(args.duration), "--no-password", "--json", "--server-pid", str(server.pid)],
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert load.stderr is not None and load.stdout is not None
        helper: threading.Thread | None = None
        for line in load.stderr:
            if args.verbose:
                sys.stderr.write(line)
            if joins and helper is None and "welcomed over UDP" in line:
                # ocmload sends for 2 s (its warm-up) before its window opens:
                # the joins start with the window and last as long.
                helper = threading.Thread(target=run_joins, args=(args, port, joined))
                helper.start()
        result = json.loads(load.stdout.read() or "{}")
        load.wait()
        if helper is not None:
            helper.join()
    finally:
        stop(server)
    result["joins"] = joined[0] if joined else None
    return result


def run_joins(args: argparse.Namespace, port: int, out: list[str]) -> None:
    """Run C{bench/joins.py} on the generator's core; keep its summary line."""
    time.sleep(2)
    done = subprocess.run(
        pinned(
            args.load_core,
            [sys.executable, os.path.join(HERE, "joins.py"), "--port", str(port),
             "--rate", str(args.join_rate), "--duration", str(args.duration), "--password", args.join_password],
        ),
        capture_output=True,
        text=True,
        timeout=args.duration * 3 + 60,
    )
    out.append((done.stdout.strip() or done.stderr.strip()).splitlines()[-1])


def main() -> None:
    """Parse the options; run A, C, A, C, ...; print a line per run."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ocmload", default="/tmp/ocmload")
    parser.add_argument("--runs", type=int, default=3, help="pairs of runs (A then C)")
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--join-rate", type=float, default=50)
    parser.add_argument(
        "--join-password", default="bench-password", help='the joined room\'s password ("" for an open room: the TCRP work without hashing)'
    )
    parser.add_argument("--port", type=int, default=9400)
    parser.add_argument("--server-core", default="1")
    parser.add_argument("--load-core", default="0")
    parser.add_argument("--only", choices=["A", "C"], help="run only this kind")
    parser.add_argument("--json", action="store_true", help="also print each run's JSON")
    parser.add_argument("--verbose", action="store_true", help="show ocmload's report")
    args = parser.parse_args()
    kinds = [args.only] if args.only else ["A", "C"]
    for n in range(args.runs):
        for kind in kinds:
            out = one_run(args, kind == "C", args.port)
            r = out.get("result", {})
            print(
                f"{time.strftime('%H:%M:%S')} {kind}{n + 1}: loss {r.get('loss_pct', -1):.3f}% "
                f"p50 {r.get('p50_ms', -1):.2f} p99 {r.get('p99_ms', -1):.2f} max {r.get('max_ms', -1):.1f} ms, "
                f"server {r.get('server_cpu_pct', -1):.0f}% ({r.get('server_us_per_out', -1):.2f} us/out), "
                f"steal {r.get('cpu_steal_pct', ['?'])}"
                + (f"; {out['joins']}" if out["joins"] else ""),
                flush=True,
            )
            if args.json:
                print(json.dumps(out), flush=True)
            time.sleep(2)


if __name__ == "__main__":
    main()
