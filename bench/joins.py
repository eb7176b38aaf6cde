"""
TCRP load: joins into a password-protected room at a steady rate, to run
beside a chat load (does password hashing stall the relay?).

    python bench/joins.py --port 9000 --rate 50 --duration 20

Creates one protected room, then joins it C{rate} times a second with new
usernames; reports the statuses and the request latency.  Run it from
another core than the server's (taskset -c 0).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from twisted.internet import defer, reactor, task

from ocm import wire
from ocm.client.requests import RequestFailed, request


async def run(args: argparse.Namespace) -> None:
    """Create the room, then join it at the rate; print a summary."""
    room = f"joins-{int(time.time())}"
    reply = await request(reactor, args.host, args.port, wire.OP_CREATE, room, {"username": "host", "password": args.password})
    if reply.status != 200:
        raise SystemExit(f"create failed: {reply.status} {reply.message}")
    statuses: Counter[int | str] = Counter()
    times: list[float] = []
    pending = []

    async def join(i: int) -> None:
        start = time.perf_counter()
        try:
            r = await request(reactor, args.host, args.port, wire.OP_JOIN, room, {"username": f"u{i}", "password": args.password})
            statuses[r.status] += 1
        except RequestFailed:
            statuses["failed"] += 1
        times.append(time.perf_counter() - start)

    count = int(args.rate * args.duration)
    for i in range(count):
        pending.append(defer.Deferred.fromCoroutine(join(i)))
        await task.deferLater(reactor, 1 / args.rate, lambda: None)
    await defer.DeferredList(pending)
    times.sort()
    p = lambda q: times[min(len(times) - 1, int(q * len(times)))] * 1000  # noqa: E731
    print(
        f"{count} joins at {args.rate}/s over {args.duration} s: statuses {dict(statuses)}; "
        f"request ms p50 {p(0.5):.1f} p99 {p(0.99):.1f} max {times[-1] * 1000:.1f}"
    )


def main() -> None:
    """Parse the options and run."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--password", default="bench-password")
    args = parser.parse_args()

    def done(result: object) -> None:
        reactor.stop()  # type: ignore[attr-defined]

    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(run(args)).addBoth(lambda r: (print(r) if r else None, done(r))))  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
