"""
Where Redis is: a C{redis://}, C{rediss://} or C{redis+sentinel://} URL,
the endpoint to it, and the links' target when it is fixed (L{StaticTarget};
followed through Sentinel: L{ocm.cluster.sentinel}).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS

#: Seconds a Redis command (or a connection attempt) may take before the
#: node counts Redis as down.
REPLY_TIMEOUT = 3.0


#: The port of a sentinel named without one.
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class RedisAddress:
    """
    Where Redis is, from a C{redis://[:password@]host[:port][/db]} URL
    (C{rediss://}: over TLS, the certificate checked for C{host} against
    C{ca}, a PEM file, or the system's trust store), or a
    C{redis+sentinel://[:password@]host[:port],host[:port].../master[/db]}
    URL: the primary of C{master} as those sentinels know it, followed when
    they switch it (L{ocm.cluster.sentinel}; the password is Redis's, the
    sentinels are asked without one).
    """

    host: str
    port: int
    db: int
    password: str | None
    tls: bool = False
    ca: str | None = None
    #: The sentinels, for a C{redis+sentinel://} URL (then C{host} and C{port} are the first one's).
    sentinels: tuple[tuple[str, int], ...] = ()
    #: The master's name the sentinels monitor.
    master: str = ""

    @classmethod
    def parse(cls, url: str, ca: str | None = None) -> RedisAddress:
        """Parse C{url}; raise ValueError for anything but a redis://, rediss:// or redis+sentinel:// URL."""
        if url.startswith("redis+sentinel://"):
            return cls._parse_sentinel(url)
        parts = urlparse(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(f"{url!r} is not a redis://host[:port][/db] (or rediss://, redis+sentinel://) URL")
        path = parts.path.strip("/")
        db = int(path) if path else 0
        password = unquote(parts.password) if parts.password else None
        return cls(parts.hostname, parts.port or 6379, db, password, parts.scheme == "rediss", ca)

    @classmethod
    def _parse_sentinel(cls, url: str) -> RedisAddress:
        rest = url[len("redis+sentinel://") :]
        where, _, path = rest.partition("/")
        password = None
        if "@" in where:
            credentials, where = where.rsplit("@", 1)
            password = unquote(credentials.partition(":")[2]) or None
        sentinels = []
        for item in where.split(","):
            host, colon, port = item.strip().rpartition(":")
            if not colon:
                host, port = item.strip(), str(SENTINEL_PORT)
            if not host or not port.isdigit():
                raise ValueError(f"{url!r}: {item!r} is not a sentinel's host[:port]")
            sentinels.append((host.strip("[]"), int(port)))
        names = [p for p in path.split("/") if p]
        if not names or len(names) > 2 or (len(names) == 2 and not names[1].isdigit()):
            raise ValueError(f"{url!r} is not a redis+sentinel://host[:port],host[:port]/master[/db] URL")
        first = sentinels[0]
        return cls(first[0], first[1], int(names[1]) if len(names) == 2 else 0, password, sentinels=tuple(sentinels), master=unquote(names[0]))

    def endpoint(self, reactor: Any) -> Any:
        """A client endpoint to Redis (through TLS for C{rediss://})."""
        return self.endpoint_to(self.host, self.port, reactor)

    def endpoint_to(self, host: str, port: int, reactor: Any) -> Any:
        """A client endpoint to C{host}:C{port}, with this address's TLS settings."""
        endpoint: Any = TCP4ClientEndpoint(reactor, host, port, timeout=REPLY_TIMEOUT)
        if self.tls:
            from ocm.tls import client_options

            endpoint = wrapClientTLS(client_options(host, self.ca), endpoint)
        return endpoint

    def target(self, reactor: Any) -> Any:
        """Where the primary is (L{ocm.cluster.links.Target}): here, always; or where Sentinel says."""
        if self.sentinels:
            from ocm.cluster.sentinel import SentinelTarget

            return SentinelTarget(self, reactor)
        return StaticTarget(self, reactor)


class StaticTarget:
    """The primary of a C{redis://} address: the address itself (L{ocm.cluster.links.Target})."""

    def __init__(self, address: RedisAddress, reactor: Any) -> None:
        self.address = address
        self.reactor = reactor

    def start(self, moved: Any) -> None:
        """Nothing to watch."""

    def stop(self) -> None:
        """Nothing to stop."""

    def current(self) -> tuple[str, int] | None:
        """C{(host, port)} of the primary."""
        return self.address.host, self.address.port

    def endpoint(self, host: str, port: int) -> Any:
        """An endpoint to C{host}:C{port}."""
        return self.address.endpoint_to(host, port, self.reactor)

    def stale(self) -> None:
        """A connection failed: nothing else to ask."""

    def describe(self) -> str:
        """Where Redis is, for the logs."""
        return f"{self.address.host}:{self.address.port}"
