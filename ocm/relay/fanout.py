"""
The relay's fan-out: one datagram to every other bound member of a room.

This is the server's hot path: at the assignment's load two thirds of its
time is the C{sendto} of this loop.  There are two implementations of the
one loop:

 - C{_ocm_fanout}, a C extension built from C{ocm/relay/_fanout.c} at install
   where a compiler is present: it sends to addresses packed once, when a
   member binds (L{pack_address}), the whole room in one C{sendmmsg} call
   (a C{sendto} per recipient costs 3.4 us from Python, 2.3 us from C,
   on loopback; the one call saves a system call entry per recipient,
   0-30% of the relay's CPU as the machine goes); where libcrypto
   was found at build time, it also seals secure mode's datagrams for
   each recipient (L{native_sealed_fan_out});
 - the same loop in Python, used where the extension could not be built
   and for transports without a socket (the fakes of the tests).

Either way a failed send is set aside and returned, never raised, so that
one failure cannot silence the rest of the room.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

try:
    import _ocm_fanout
except ImportError:  # no compiler at install time: the Python loop
    _ocm_fanout = None  # type: ignore[assignment]

#: The version of the C module's interface this code speaks (C{API} in C{_fanout.c}).
API = 4
if getattr(_ocm_fanout, "API", 1) != API:  # built from older source (not rebuilt since): not used
    _ocm_fanout = None  # type: ignore[assignment]

from ocm.rooms import Member, Room

if _ocm_fanout is not None:  # the C relay path reads these classes' slots directly
    _ocm_fanout.use_types(Member, Room)

Address = tuple[str, int]

#: Whether the C loop was built.
NATIVE = _ocm_fanout is not None

#: Whether it was built with secure mode's seal loop (libcrypto's headers were found).
SEALING = hasattr(_ocm_fanout, "seal_fan_out")

#: C{recv_batch(fd, count, size) -> [(data, (host, port)), ...]}: up to
#: C{count} datagrams in one C{recvmmsg} call; None without the C extension.
recv_batch = None if _ocm_fanout is None else _ocm_fanout.recv_batch

#: C{relay_batch(fd, count, size, budget, seconds, tokens, stats, rooms,
#: handle, on_failures) -> read}: C{recvmmsg} batches of C{count} read until
#: the socket is drained or C{budget} datagrams are read, and their common
#: case (a bound UDP member's chat that every rule lets through unchanged)
#: relayed in C at the time C{seconds()} gives, each other datagram handed to
#: C{handle} in its turn (L{ocm.relay.protocol.Relay.batch_reader}); None
#: without the C extension.
relay_batch = None if _ocm_fanout is None else _ocm_fanout.relay_batch

#: Failed sends: each member with the exception its send raised.
Failures = list[tuple[Member, BaseException]]

#: C{fan_out(data, members, sender) -> (sent, failures or None)}.
FanOut = Callable[[bytes, list[Member], "Member | None"], tuple[int, "Failures | None"]]


def pack_address(addr: Address) -> bytes | None:
    """
    C{addr} as the C loop sends to it (a C{struct sockaddr}); None without
    the C loop, or for an address it cannot pack (the Python way is used).
    """
    if _ocm_fanout is None:
        return None
    return _ocm_fanout.pack_address(addr[0], addr[1])


def python_fan_out(data: bytes, members: list[Member], sender: Member | None) -> tuple[int, Failures | None]:
    """
    Send C{data} to each of C{members} but C{sender}, in Python, each
    through its route (which seals it for its recipient in secure mode).
    """
    failed: Failures | None = None
    sent = 0
    for other in members:
        if other is not sender:
            try:
                other.route.send(data)  # type: ignore[union-attr]
                sent += 1
            except Exception as e:
                if failed is None:
                    failed = []
                failed.append((other, e))
    return sent, failed


def plain_python_fan_out(sendto: Callable[[bytes, Address], Any], udp_route: type) -> FanOut:
    """
    The Python loop of a plain relay: a member on a C{udp_route} is written
    straight through C{sendto} to its address (one Python call fewer per
    recipient: 11% of the loop's cost in C{bench/relay_bench.py --loop
    python}), any other through its route.
    """

    def fan_out(data: bytes, members: list[Member], sender: Member | None) -> tuple[int, Failures | None]:
        failed: Failures | None = None
        sent = 0
        for other in members:
            if other is not sender:
                route = other.route
                try:
                    if route.__class__ is udp_route:
                        sendto(data, route.peer)  # type: ignore[union-attr]
                    else:
                        route.send(data)  # type: ignore[union-attr]
                    sent += 1
                except Exception as e:
                    if failed is None:
                        failed = []
                    failed.append((other, e))
        return sent, failed

    return fan_out


def native_fan_out(fd: int) -> FanOut:
    """
    The C loop on socket C{fd}; members it cannot write (no packed address)
    it writes through their routes.  It returns its failures as the Python
    loop does, so it is called directly, without a Python frame between.
    """
    assert _ocm_fanout is not None
    return partial(_ocm_fanout.fan_out, fd)


def native_sealed_fan_out(fd: int) -> FanOut:
    """
    Secure mode's C loop on socket C{fd}: each member of a L{SealedUdpRoute
    <ocm.relay.routes.SealedUdpRoute>} gets the datagram sealed for it (as
    its route would seal it); the others go through their routes.
    """
    assert SEALING and _ocm_fanout is not None
    return partial(_ocm_fanout.seal_fan_out, fd)


def fan_out_of(transport: Any, sendto: Callable[[bytes, Address], Any] | None = None, udp_route: type | None = None) -> FanOut:
    """
    The fan-out for C{transport}: the C loop on a real port's socket when it
    was built, else the Python loop (writing members on a C{udp_route}
    straight through C{sendto} when both are given).
    """
    sock = getattr(transport, "socket", None)
    if _ocm_fanout is not None and sock is not None and hasattr(sock, "fileno"):
        return native_fan_out(sock.fileno())
    if sendto is not None and udp_route is not None:
        return plain_python_fan_out(sendto, udp_route)
    return python_fan_out


def sealed_fan_out_of(transport: Any) -> FanOut:
    """
    Secure mode's fan-out for C{transport}: the C seal loop on a real port's
    socket when it was built with libcrypto, else the Python loop (each
    route seals).
    """
    sock = getattr(transport, "socket", None)
    if SEALING and sock is not None and hasattr(sock, "fileno"):
        return native_sealed_fan_out(sock.fileno())
    return python_fan_out
