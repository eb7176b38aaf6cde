# Type stub for the optional C extension _ocm_fanout (built from ocm/relay/_fanout.c).
from collections.abc import Callable
from typing import Any

API: int

def pack_address(host: str, port: int) -> bytes | None: ...
def fan_out(fd: int, data: bytes, members: list[Any], sender: Any) -> tuple[int, list[tuple[Any, BaseException]] | None]: ...
def recv_batch(fd: int, count: int, size: int) -> list[tuple[bytes, tuple[str, int]]]: ...

# Only where the module was built with libcrypto (setup.py): secure mode's seal loop.
def seal_fan_out(fd: int, data: bytes, members: list[Any], sender: Any) -> tuple[int, list[tuple[Any, BaseException]] | None]: ...

# API 3: the relay's common case in C (ocm/relay/protocol.py, Relay.batch_reader).
def use_types(member: type, room: type) -> None: ...
def relay_batch(
    fd: int,
    count: int,
    size: int,
    budget: int,
    seconds: Callable[[], float],
    tokens: dict[bytes, Any],
    stats: Any,
    rooms: Any,
    handle: Any,
    on_failures: Any,
) -> int: ...
