"""
ocm against the native relay (C{bench/crelay.c}), interleaved: the highest
sustained rate (find-max) and the assignment's load (load A), each measured
by C{ocmload} on a fresh server, the servers taking turns so that the
machine's drift shows in all of them.

    python bench/versus.py --ocmload /tmp/ocmload --runs 3

Servers (C{--servers}, comma-separated, in the order of each round):

 - C{ocm}: C{twistd ocm} from this tree (its C{ocm} package and the C
   loop built in place, C{python setup.py build_ext --inplace}, else the
   one installed);
 - C{ocm=DIR}: the same from another tree (a baseline: C{git archive REV |
   tar -x -C DIR}, then build the extension there);
 - C{ocm-py}: this tree without the C loop (C{.ci/no-c-fanout});
 - C{crelay}, C{crelay-mmsg}: C{bench/crelay.c} built with gcc, with a
   C{sendto} per recipient, or C{recvmmsg}/C{sendmmsg}.

Each ocm server's log must say which fan-out loop it runs; the table gives
it.  The server runs on core 1 and C{ocmload} on core 0 (C{taskset}).
Scenarios (C{--scenarios}): C{max} (C{--find-max --fm-start 1 --fm-factor
1.25 --duration 10}), C{A} (C{--rate 2 --duration 20}) and C{B} (C{--rate 3
--duration 10}: near or past what a server carries on this machine), all
over 500 rooms of 10 members, open rooms.  Each round runs every scenario on
every server; a round's ratios are against its own first C{crelay*} server:
relayed/s for C{max}, CPU per delivered datagram for C{A} and C{B}.

find-max stops at the first step with loss over 1% or p99 over 100 ms, so
on a machine shared with other work it measures the neighbours as much as
the server; the CPU a server spends per delivered datagram (C{us/out},
from C{/proc}) is steadier, and C{B}'s gives what a whole core would carry
(C{1e6 / us/out} delivered datagrams a second: the C{core/s} column).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from procs import pinned, stop, wait_for_port

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def build_crelay(workdir: str) -> str:
    """C{bench/crelay.c} built with gcc into C{workdir}."""
    out = os.path.join(workdir, "crelay")
    subprocess.run(["gcc", "-O2", "-Wall", "-o", out, os.path.join(HERE, "crelay.c")], check=True)
    return out


def start_server(spec: str, args: argparse.Namespace, crelay: str, logdir: str, port: int) -> tuple[subprocess.Popen[Any], str]:
    """Start the server C{spec} on C{port} (TCP) and C{port + 1} (UDP); the process and its log file."""
    log = os.path.join(logdir, f"{spec.replace('/', '_').replace('=', '_')}-{port}.log")
    if spec.startswith("crelay"):
        argv = [crelay, "--tcp", str(port), "--udp", str(port + 1)] + (["--mmsg"] if spec == "crelay-mmsg" else [])
        env, cwd = dict(os.environ), ROOT
    else:
        tree = spec.partition("=")[2] or ROOT
        path = [os.path.abspath(tree)]
        if spec == "ocm-py":
            path.insert(0, os.path.join(ROOT, ".ci", "no-c-fanout"))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
        cwd = os.path.abspath(tree)
        twistd = shutil.which("twistd") or os.path.join(os.path.dirname(sys.executable), "twistd")
        argv = [twistd, "--pidfile=", "-n", f"--logfile={log}", "ocm", "--tcp", str(port), "--udp", str(port + 1),
                "--interface", "127.0.0.1", "--request-rate", "100000", "--request-burst", "100000"]
    with open(log if spec.startswith("crelay") else os.devnull, "w") as out:
        proc = subprocess.Popen(pinned(args.server_core, argv), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    wait_for_port(port, time.monotonic() + 60, proc)
    return proc, log


def loop_of(spec: str, log: str) -> str:
    """The fan-out loop an ocm server's log names (C{crelay*}: how it sends)."""
    if spec == "crelay":
        return "sendto"
    if spec == "crelay-mmsg":
        return "mmsg"
    try:
        with open(log) as f:
            for line in f:
                if "relay fan-out:" in line:
                    return line.split("relay fan-out:", 1)[1].strip()
    except OSError:
        pass
    return "?"



def one_run(spec: str, scenario: str, args: argparse.Namespace, crelay: str, logdir: str, port: int) -> dict[str, Any]:
    """One fresh server, one C{ocmload} run; its JSON with the server's loop."""
    proc, log = start_server(spec, args, crelay, logdir, port)
    try:
        load = [args.ocmload, "--tcp", str(port), "--rooms", str(args.rooms), "--members", str(args.members),
                "--no-password", "--json", "--server-pid", str(proc.pid)]
        if scenario == "max":
            load += ["--find-max", "--fm-start", "1", "--fm-factor", "1.25", "--duration", str(args.max_duration)]
        elif scenario == "B":
            load += ["--rate", str(args.rate_b), "--duration", str(args.duration_b)]
        else:
            load += ["--rate", str(args.rate), "--duration", str(args.duration)]
        with subprocess.Popen(pinned(args.load_core, load), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as gen:
            try:
                stdout, stderr = gen.communicate()
            except BaseException:
                gen.kill()
                raise
        done = subprocess.CompletedProcess(load, gen.returncode, stdout, stderr)
        if args.verbose:
            sys.stderr.write(done.stderr)
        try:
            result: dict[str, Any] = json.loads(done.stdout or "{}")
        except ValueError:
            result = {}
        result["loop"] = loop_of(spec, log)
        result["exit"] = done.returncode
        return result
    finally:
        stop(proc)


def row(spec: str, scenario: str, n: int, result: dict[str, Any], yardstick: dict[str, Any] | None) -> str:
    """One line of the table."""
    r = result.get("best" if scenario == "max" else "result") or {}
    ratio = ""
    if yardstick is not None:
        y = yardstick.get("best" if scenario == "max" else "result") or {}
        if scenario == "max" and y.get("delivered_out_s"):
            ratio = f"{r.get('delivered_out_s', 0) / y['delivered_out_s']:.2f}x"
        elif scenario != "max" and y.get("server_us_per_out", 0) > 0:
            ratio = f"{r.get('server_us_per_out', 0) / y['server_us_per_out']:.2f}x"
    us = r.get("server_us_per_out", 0)
    core = f"{1e6 / us:,.0f}" if us > 0 else "-"
    limited = " (generator-limited)" if result.get("generator_limited") else ""
    if r.get("contaminated"):
        limited += " (contaminated)"
    return (
        f"{n:>5}  {scenario:<3}  {spec:<16} {result.get('loop', '?')[:24]:<24} "
        f"{r.get('delivered_out_s', 0):>11,.0f} {r.get('loss_pct', -1):>8.3f} "
        f"{r.get('p50_ms', -1):>7.2f} {r.get('p99_ms', -1):>8.2f} {r.get('server_cpu_pct', -1):>6.0f}% "
        f"{r.get('server_us_per_out', -1):>7.2f} {core:>9} {r.get('gen_cpu_pct', -1):>5.0f}% {ratio:>6}{limited}"
    )


HEADER = (
    "time     round  run  server           loop                     delivered/s    loss%  p50 ms   p99 ms    CPU  us/out    core/s   gen  ratio\n"
    "         (max: the best passing step of find-max; ratio: relayed/s against crelay for max, us/out for A and B)"
)


def main() -> None:
    """Parse the options; run the rounds; print the table as it grows."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ocmload", default="/tmp/ocmload", help="ocmload built from the shared tools")
    parser.add_argument("--crelay", help="a built crelay (default: build bench/crelay.c with gcc)")
    parser.add_argument("--servers", default="crelay-mmsg,ocm", help="comma-separated: ocm, ocm=DIR, ocm-py, crelay, crelay-mmsg")
    parser.add_argument("--scenarios", default="max,A,B", help="comma-separated: max (find-max), A (the assignment's load), B (a fixed higher rate)")
    parser.add_argument("--runs", type=int, default=3, help="rounds")
    parser.add_argument("--rooms", type=int, default=500)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--rate", type=float, default=2, help="load A: messages/s per member")
    parser.add_argument("--duration", type=float, default=20, help="load A: the measured window, s")
    parser.add_argument("--max-duration", type=float, default=10, help="find-max: each step's window, s")
    parser.add_argument("--rate-b", type=float, default=3, help="B: messages/s per member")
    parser.add_argument("--duration-b", type=float, default=10, help="B: the measured window, s")
    parser.add_argument("--port", type=int, default=9500)
    parser.add_argument("--server-core", default="1")
    parser.add_argument("--load-core", default="0")
    parser.add_argument("--retry", type=int, default=2, help="run again when ocmload saw another workload on the machine")
    parser.add_argument("--json", help="append each run's JSON to this file")
    parser.add_argument("--verbose", action="store_true", help="show ocmload's report")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the server of the run too
    servers = args.servers.split(",")
    scenarios = args.scenarios.split(",")
    for spec in servers:
        if spec not in ("ocm", "ocm-py", "crelay", "crelay-mmsg") and not spec.startswith("ocm="):
            raise SystemExit(f"unknown server {spec!r}")
    for scenario in scenarios:
        if scenario not in ("max", "A", "B"):
            raise SystemExit(f"unknown scenario {scenario!r}")
    if not os.path.exists(args.ocmload):
        raise SystemExit(f"no {args.ocmload}: gcc -O2 -o {args.ocmload} ocmload.c -lm (the project's shared tools)")
    workdir = tempfile.mkdtemp(prefix="ocm-versus-")
    try:
        crelay = args.crelay or build_crelay(workdir)
        print(HEADER, flush=True)
        rounds(args, servers, scenarios, crelay, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def rounds(args: argparse.Namespace, servers: list[str], scenarios: list[str], crelay: str, workdir: str) -> None:
    """Every scenario on every server, C{args.runs} times; a line per run."""
    port = args.port
    for n in range(1, args.runs + 1):
        for scenario in scenarios:
            yardstick: dict[str, Any] | None = None
            for spec in servers:
                for attempt in range(1 + args.retry):
                    result = one_run(spec, scenario, args, crelay, workdir, port)
                    port += 2 if port < args.port + 200 else -200  # fresh ports: no stale ICMP or TIME_WAIT
                    if attempt == args.retry or not (result.get("best" if scenario == "max" else "result") or {}).get("contaminated"):
                        break
                    print(time.strftime("%H:%M:%S") + " " + row(spec, scenario, n, result, yardstick) + ": again", flush=True)
                if spec.startswith("crelay") and yardstick is None:
                    yardstick = result
                print(time.strftime("%H:%M:%S") + " " + row(spec, scenario, n, result, yardstick), flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps({"round": n, "scenario": scenario, "server": spec, **result}) + "\n")
                time.sleep(2)


if __name__ == "__main__":
    main()
