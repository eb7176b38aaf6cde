"""
Where Redis is: a C{redis://} or C{rediss://} URL, and the endpoint to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS

#: Seconds a Redis command (or a connection attempt) may take before the
#: node counts Redis as down.
REPLY_TIMEOUT = 3.0


@dataclass(frozen=True)
class RedisAddress:
    """
    Where Redis is, from a C{redis://[:password@]host[:port][/db]} URL
    (C{rediss://}: over TLS, the certificate checked for C{host} against
    C{ca}, a PEM file, or the system's trust store).
    """

    host: str
    port: int
    db: int
    password: str | None
    tls: bool = False
    ca: str | None = None

    @classmethod
    def parse(cls, url: str, ca: str | None = None) -> RedisAddress:
        """Parse C{url}; raise ValueError for anything but a redis:// or rediss:// URL."""
        parts = urlparse(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(f"{url!r} is not a redis://host[:port][/db] (or rediss://) URL")
        path = parts.path.strip("/")
        db = int(path) if path else 0
        password = unquote(parts.password) if parts.password else None
        return cls(parts.hostname, parts.port or 6379, db, password, parts.scheme == "rediss", ca)

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

    def target(self, reactor: Any) -> StaticTarget:
        """Where the primary is: here, always."""
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
