"""
A UDP port with a lean read loop, for the relay and the lobby.

Under a junk flood the server does little but read and drop: measured at
230,000 junk datagrams/s, C{recvfrom} was 39% of the server and Twisted's
per-datagram bookkeeping in C{udp.Port.doRead} (a byte count, an address
family test, attribute lookups, a C{log.err} frame) another 14%. This loop
hoists the lookups out and reads a bounded burst before returning to the
reactor, so that timers and TCRP still get their turn.  Where the C
extension is built it reads in batches, one C{recvmmsg} call for up to
L{RECV_BATCH} datagrams (Python's socket has no C{recvmmsg}): measured
draining 2,000 waiting datagrams, 1.3-1.5 us a datagram against 2.0-2.6 us
with C{recvfrom}, and no C{BlockingIOError} raised to learn that the socket
is drained.

Every loop reads until the port is drained (a read that finds nothing), as
C{bench/crelay.c} does, not until a short batch: what arrives while a batch
is relayed is read in the same wake-up, and each wake-up the reactor spares
is 10-15 us of Python (C{epoll}, C{callWithLogger}, C{doRead}).  Measured
with C{ocmload --rate 3} (15,000 datagrams in a second, 500 rooms x 10),
four interleaved pairs: 2,800-3,900 wake-ups a second before, 180-830 after
(C{perf stat}), and 6.60/6.92, 5.75/6.24, 5.79/5.81, 5.30/6.40 us of server
CPU per delivered datagram, after/before.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from twisted.application import internet
from twisted.internet import udp
from twisted.logger import Logger

from ocm.relay.fanout import recv_batch

log = Logger()

# Datagrams read per wake-up before the reactor gets control back: about
# 10 ms of work at most. Measured at the relay's saturation (166,500 relayed
# datagrams/s offered): a burst of 512 lost 11-13% (each return to the
# reactor costs more than it looks), Twisted's own loop (256 KiB, about 2,600
# small datagrams) 4-5%, 4096 0-0.7%.
READ_BURST = 4096

# Datagrams read per system call where the C extension is built (C{recvmmsg}).
RECV_BATCH = 64


class FastPort(udp.Port):
    """C{udp.Port} with a leaner C{doRead}; everything else is Twisted's."""

    def doRead(self) -> None:
        """Read up to L{READ_BURST} datagrams and hand each to the protocol."""
        if recv_batch is not None:
            batch_reader = getattr(self.protocol, "batch_reader", None)
            reader = batch_reader() if batch_reader is not None else None
            if reader is not None:
                self._relay_batches(reader)
            else:
                self._read_batches(recv_batch)
            return
        recvfrom = self.socket.recvfrom
        size = self.maxPacketSize
        handle = self.protocol.datagramReceived
        trim = self.addressFamily == socket.AF_INET6
        for _ in range(READ_BURST):
            try:
                data, addr = recvfrom(size)
            except (BlockingIOError, ConnectionRefusedError):
                return  # drained; or an ICMP error for an earlier send
            except OSError:
                log.failure("reading from the UDP port failed")
                return
            if trim:
                addr = addr[:2]  # drop flow info and scope id, as Twisted does
            try:
                handle(data, addr)
            except Exception:
                log.failure("datagram handler failed")

    def _read_batches(self, recv: Callable[[int, int, int], list[tuple[bytes, Any]]]) -> None:
        """The same, L{RECV_BATCH} datagrams a system call (C{recvmmsg}, in C)."""
        fd = self.socket.fileno()
        size = self.maxPacketSize
        handle = self.protocol.datagramReceived
        left = READ_BURST
        while left > 0:
            try:
                batch = recv(fd, min(RECV_BATCH, left), size)
            except ConnectionRefusedError:
                return  # an ICMP error for an earlier send
            except OSError:
                log.failure("reading from the UDP port failed")
                return
            if not batch:
                return  # drained: the reactor calls again when more arrive
            left -= len(batch)
            for data, addr in batch:
                try:
                    handle(data, addr)
                except Exception:
                    log.failure("datagram handler failed")


    def _relay_batches(self, read: Callable[[int, int, int, int], int]) -> None:
        """
        The same, through a protocol that takes whole batches
        (L{ocm.relay.protocol.Relay.batch_reader}): one call reads
        L{RECV_BATCH} datagrams a C{recvmmsg} call, until the port is
        drained or L{READ_BURST} are read, and handles them (their common
        case relayed in C), without a return to Python between batches.
        """
        try:
            read(self.socket.fileno(), RECV_BATCH, self.maxPacketSize, READ_BURST)
        except ConnectionRefusedError:
            return  # an ICMP error for an earlier send
        except OSError:
            log.failure("reading from the UDP port failed")
        except Exception:
            # not from a handler (the relay logs those and goes on): the rest of this batch is lost
            log.failure("datagram handler failed")


class FastUDPServer(internet.UDPServer):
    """C{internet.UDPServer} listening with a L{FastPort} (fails loudly the same way)."""

    def _getPort(self) -> Any:
        from twisted.internet import reactor as global_reactor

        kwargs = {**self.kwargs, "reactor": self.reactor or global_reactor}
        port = FastPort(*self.args, **kwargs)
        port.startListening()
        return port
