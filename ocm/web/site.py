"""
The web port (C{--web}): the chat page's static files at C{/} and the
gateway's WebSocket at C{/ws}, every response with headers that keep the
page to its own scripts and out of frames.
"""

from __future__ import annotations

import os
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.application import internet, service
from twisted.web import resource, server, static

from ocm.web.gateway import PING_INTERVAL, GatewayFactory

#: Where the page's files are (shipped in the package).
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

#: Sent with every response of the web port.
HEADERS = {
    b"Content-Security-Policy": b"default-src 'self'; frame-ancestors 'none'",
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
}


class StaticFiles(static.File):
    """The page's files: no directory listings, JavaScript modules typed as such."""

    contentTypes = {**static.File.contentTypes, ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css"}

    def directoryListing(self) -> resource.Resource:
        """No listings: a directory without index.html is not found."""
        return resource.NoResource()


class Root(resource.Resource):
    """C{/ws}: the WebSocket; anything else: a static file (C{/}: index.html)."""

    def __init__(self, gateway: Any, path: str = STATIC) -> None:
        super().__init__()
        self.files = StaticFiles(path)
        self.websocket = WebSocketResource(gateway)

    def getChildWithDefault(self, name: bytes, request: Any) -> Any:
        """Every response gets L{HEADERS}."""
        for key, value in HEADERS.items():
            request.setHeader(key, value)
        if name == b"ws" and not request.postpath:
            return self.websocket
        return self.files.getChildWithDefault(name, request)


class QuietSite(server.Site):
    """A site that writes no access log (it would hold every visitor's address)."""

    noisy = False

    def log(self, request: Any) -> None:
        """No access log."""


def web_site(gateway: Any, path: str = STATIC) -> server.Site:
    """The web port's site: the page and the gateway."""
    return QuietSite(Root(gateway, path))


class WebService(service.MultiService):
    """
    The web port and the gateway's keepalive pings; stopping, it closes
    every WebSocket (after the shutdown notices: it stops after them).
    """

    def __init__(self, port: int, gateway: GatewayFactory, interface: str = "", tls: Any = None, clock: Any = None) -> None:
        super().__init__()
        self.gateway = gateway
        site = web_site(gateway)
        server_: service.Service
        if tls is not None:
            server_ = internet.SSLServer(port, site, tls, interface=interface)
        else:
            server_ = internet.TCPServer(port, site, interface=interface)
        server_.setName("port")
        server_.setServiceParent(self)
        pings = internet.TimerService(PING_INTERVAL, gateway.ping)
        if clock is not None:
            pings.clock = clock
        pings.setServiceParent(self)

    @property
    def _port(self) -> Any:
        """The listening port (as C{internet.TCPServer} has it)."""
        return self.getServiceNamed("port")._port  # type: ignore[attr-defined]

    def stopService(self) -> Any:
        """Close the WebSockets, then stop listening."""
        self.gateway.close_all()
        return super().stopService()
