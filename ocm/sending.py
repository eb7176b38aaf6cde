"""
Writing datagrams from a UDP port, fast and without letting one failure
silence the rest of a fan-out.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterable
from typing import Any

from twisted.logger import Logger

from ocm.stats import Stats

Address = tuple[str, int]

log = Logger()

# Errors that say the sending host is overloaded, not that the recipient is
# unreachable: the datagram is dropped and no member is blamed.
OVERLOAD_ERRNOS = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EINTR})


def sendto_of(transport: Any) -> Callable[[bytes, Address], Any]:
    """
    The fastest way to write one datagram through C{transport}.

    A real C{udp.Port} is written through its socket's C{sendto}:
    C{Port.write} validates the address string on every call (two parser
    runs per datagram), which costs more than the system call on a
    loopback fan-out, and our addresses all come from C{recvfrom} already.
    Fakes in tests have no socket and are written through C{write}.
    """
    sock = getattr(transport, "socket", None)
    if sock is not None and hasattr(sock, "sendto"):
        return sock.sendto  # type: ignore[no-any-return]
    return transport.write  # type: ignore[no-any-return]


# Receive buffer asked of the kernel for the UDP ports (Linux doubles it and
# caps it at net.core.rmem_max): room for about 1,500 small datagrams, 100 ms
# of a busy relay's input, so that a short pause (a sweep, a GC pass, a TCRP
# burst) delays datagrams instead of dropping them.  Larger would turn a
# sustained overload into seconds of latency (measured with 4 MiB); real-time
# delivery matters more than reliability, so beyond this the kernel drops.
RECEIVE_BUFFER = 1024 * 1024


def enlarge_receive_buffer(transport: Any, size: int = RECEIVE_BUFFER) -> int:
    """
    Ask for a C{size}-byte receive buffer on C{transport}'s socket (fakes
    have none); return what the kernel granted (0 if there is no socket).
    """
    sock = getattr(transport, "socket", None)
    if sock is None:
        return 0
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    except OSError:
        pass
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


def is_overload(error: BaseException) -> bool:
    """Whether a send error means 'this host is busy' rather than 'they are gone'."""
    return isinstance(error, OSError) and error.errno in OVERLOAD_ERRNOS


def send_all(sendto: Callable[[bytes, Address], Any], sends: Iterable[tuple[bytes, Address]], stats: Stats) -> None:
    """
    Write each C{(data, address)}; a failure is counted and logged, and the
    rest are still written.
    """
    for data, addr in sends:
        try:
            sendto(data, addr)
        except Exception as e:
            if is_overload(e):
                stats.send_overload += 1
            else:
                stats.send_errors += 1
                log.debug("send to {addr} failed: {error}", addr=addr, error=e)
        else:
            stats.notices += 1


class PausedFlag:
    """
    A streaming producer that only remembers whether its consumer (a TCP
    transport) asked it to pause: the writer drops what it would have
    queued while C{paused}, so that a slow peer costs data, never memory.
    """

    paused = False

    def pauseProducing(self) -> None:
        """The transport's buffer is past its high-water mark."""
        self.paused = True

    def resumeProducing(self) -> None:
        """The buffer drained."""
        self.paused = False

    def stopProducing(self) -> None:
        """The connection is going."""
        self.paused = True
