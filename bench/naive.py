"""
ocm with the naive relay path, for the ratio in the README: each recipient
written with C{transport.write} (Twisted's C{udp.Port.write}, which checks
the address on every call) and Twisted's own read loop.  Everything else is
ocm's.  Not for use: a measuring point only.

    taskset -c 1 python bench/naive.py --tcp 9000 --udp 9001 --interface 127.0.0.1 \\
        --request-rate 100000 --request-burst 100000

takes the same options as C{twistd ocm}; stop it with Ctrl-C.
"""

from __future__ import annotations

import sys

from twisted.internet import reactor, udp

from ocm.relay import fanout, port as udpport, protocol as relay
from ocm.tap import Options, makeService


fast_start = relay.Relay.startProtocol


def naive_start(self: relay.Relay) -> None:
    """Send through C{transport.write}, one recipient at a time (ocm's Python loop over it)."""
    fast_start(self)
    self._sendto = self.transport.write  # type: ignore[union-attr]
    self._fan = fanout.python_fan_out


def main() -> None:
    """Patch the two fast paths out, then serve as C{twistd ocm} would."""
    udpport.FastPort.doRead = udp.Port.doRead  # type: ignore[method-assign]
    relay.Relay.startProtocol = naive_start  # type: ignore[method-assign]
    options = Options()
    options.parseOptions(sys.argv[1:])
    service = makeService(options)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
