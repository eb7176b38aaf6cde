"""
Writing datagrams from a UDP port: the fastest send path, the receive
buffer, and which send errors mean "this host is busy".
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import Any

Address = tuple[str, int]

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
