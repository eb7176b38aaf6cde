"""
The C{twistd ocm} command: its options and the service they build.
"""

from __future__ import annotations

from typing import Any

from twisted.application import internet, service
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python import usage

from ocm.relay.lobby import LobbyProtocol
from ocm.relay.port import FastUDPServer
from ocm.relay.protocol import LISTEN_SIZE, Relay, SecureRelay
from ocm.rooms import Rooms
from ocm.stats import Stats
from ocm.tcrp.protocol import TCRPFactory

log = Logger()


def positive_float(value: str) -> float:
    """Coerce a number of seconds greater than zero."""
    number = float(value)
    if not number > 0 or number == float("inf"):
        raise ValueError(f"{value} is not a positive number")
    return number


def positive_int(value: str) -> int:
    """Coerce a whole number of at least one."""
    number = int(value)
    if number < 1:
        raise ValueError(f"{value} is not a positive whole number")
    return number


positive_float.coerceDoc = "Must be a positive number."  # type: ignore[attr-defined]
positive_int.coerceDoc = "Must be a positive whole number."  # type: ignore[attr-defined]


class Options(usage.Options):
    """Options of C{twistd ocm}."""

    synopsis = "[options]"
    longdesc = (
        "Serve ocm chat rooms: TCRP room set-up over TCP and the chat relay "
        "over UDP (and, with --lobby, the stage-1 open relay).\n\n"
        "Secure mode (--tls-cert, --tls-key): the TCRP port speaks TLS only, "
        "each member gets its own key, every chat datagram is sealed "
        "(ChaCha20-Poly1305). For a test, make a self-signed certificate: "
        "openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=localhost "
        "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout server.key -out server.pem "
        "and give clients server.pem with --ca. In production use a certificate "
        "from a public CA for the server's name (e.g. Let's Encrypt's fullchain.pem "
        "and privkey.pem): clients then need no --ca."
    )

    optParameters: list[list[Any]] = [
        ["tcp", None, 9000, "TCP port for TCRP room requests.", usage.portCoerce],
        ["udp", None, 9001, "UDP port for room chat datagrams.", usage.portCoerce],
        ["interface", None, "", "Address to listen on (default: all IPv4; '::' for IPv6 and IPv4)."],
        ["timeout", None, 30.0, "Seconds of silence after which a member is removed.", positive_float],
        ["lobby", None, None, "UDP port for the stage-1 open lobby (off unless given).", usage.portCoerce],
        ["max-payload", None, 64 * 1024, "Largest TCRP payload accepted, in bytes (413 beyond).", positive_int],
        ["max-rooms", None, 10_000, "Most rooms open at once (503 beyond).", positive_int],
        ["max-members", None, 100_000, "Most members (tokens) at once, server-wide (503 beyond).", positive_int],
        ["rate", None, 50.0, "Chat messages per second one member may send.", positive_float],
        ["burst", None, 100, "Messages a member may send at once above --rate.", positive_int],
        ["request-timeout", None, 5.0, "Seconds a TCP connection has to deliver its request.", positive_float],
        ["request-rate", None, 200.0, "TCRP requests per second from one IP (429 beyond).", positive_float],
        ["request-burst", None, 400, "TCRP requests one IP may make at once above --request-rate.", positive_int],
        ["password-tries", None, 5, "Wrong passwords per minute from one IP for one room (429 beyond).", positive_int],
        ["metrics", None, None, "TCP port for Prometheus metrics at /metrics (off unless given).", usage.portCoerce],
        ["metrics-interface", None, "127.0.0.1", "Address the metrics port listens on."],
        ["max-connections-per-ip", None, 100, "Open TCRP connections one IP may hold (429 beyond).", positive_int],
        ["redis", None, None, "Share the rooms with other nodes through this Redis (redis://[:password@]host[:port][/db], rediss:// for TLS, or redis+sentinel://host[:port],.../master[/db]; off unless given)."],
        ["node", None, "", "This node's name in the cluster, unique (default: host name and ports)."],
        ["redis-ca", None, None, "With a rediss:// URL: trust Redis's certificate if this PEM CA signed it (default: the system's store)."],
        ["tls-cert", None, None, "Secure mode: PEM certificate (then any chain) for TLS on the TCRP port; chat datagrams are sealed."],
        ["tls-key", None, None, "Secure mode: the PEM private key of --tls-cert."],
        ["web", None, None, "TCP port for browsers: the chat page at / and its WebSocket at /ws (off unless given; HTTPS/WSS in secure mode).", usage.portCoerce],
        ["web-origin", None, "", "Other origins allowed to open the WebSocket (comma-separated, e.g. https://chat.example.org); the page's own always is."],
        ["web-trusted-proxy", None, "", "Addresses of reverse proxies whose X-Forwarded-For is trusted for a web member's IP (comma-separated)."],
        ["max-history", None, 0, "Recent history: the most messages a room may keep for newcomers (its create's 'history'; 0: off).", int],
    ]

    optFlags: list[list[Any]] = [
        ["tunnel", None, "Serve TCRP operation 4: chat through the TCP connection where UDP is blocked."],
    ]

    def postOptions(self) -> None:
        """Check the options against each other."""
        if self["lobby"] is not None and self["lobby"] == self["udp"] != 0:
            raise usage.UsageError("--lobby and --udp must be different ports")
        if self["web"] is not None and self["web"] == self["tcp"] != 0:
            raise usage.UsageError("--web and --tcp must be different ports")
        if (self["web-origin"] or self["web-trusted-proxy"]) and self["web"] is None:
            raise usage.UsageError("--web-origin and --web-trusted-proxy go with --web")
        if self["redis"] is not None:
            from ocm.cluster.address import RedisAddress

            try:
                self["redis-address"] = RedisAddress.parse(self["redis"], self["redis-ca"])
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
            if self["redis-ca"] and not self["redis-address"].tls:
                raise usage.UsageError("--redis-ca goes with a rediss:// URL")
        elif self["node"] or self["redis-ca"]:
            raise usage.UsageError("--node and --redis-ca are for a cluster node: give --redis too")
        if len(self["node"].encode("utf-8")) > 200:
            raise usage.UsageError("--node: at most 200 bytes")
        if not 0 <= self["max-history"] <= 1000:
            raise usage.UsageError("--max-history must be 0..1000")
        if (self["tls-cert"] is None) != (self["tls-key"] is None):
            raise usage.UsageError("secure mode needs both --tls-cert and --tls-key")
        self["tls"] = None
        if self["tls-cert"] is not None:
            from ocm.tls import server_options

            try:
                self["tls"] = server_options(self["tls-cert"], self["tls-key"])
            except ValueError as e:
                raise usage.UsageError(str(e)) from None


class ShutdownNotices(service.Service):
    """Sends C{closed}/C{shutdown} to every bound member when the server stops."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def stopService(self) -> None:
        """Runs before the UDP port closes (services stop in reverse order)."""
        super().stopService()
        try:
            self.relay.shutdown()
        except Exception:
            log.failure("sending shutdown notices failed")


class GuardedCall:
    """A timer body that logs its failure instead of stopping the timer."""

    def __init__(self, function: Any, what: str) -> None:
        self.function = function
        self.what = what

    def __call__(self) -> None:
        """Run the function once; log any exception."""
        try:
            self.function()
        except Exception:
            log.failure("{what} failed", what=self.what)


def sweep_interval(timeout: float) -> float:
    """How often to look for idle members: often enough to be on time."""
    return min(1.0, timeout / 4)


def makeService(config: Options, reactor: IReactorTime | None = None) -> service.MultiService:
    """
    Build the ocm service: UDP relay, TCRP server, optional lobby, the
    expiry timer and the shutdown notices, stopped in reverse order.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor  # type: ignore[assignment]
    assert reactor is not None
    stats = Stats()
    secure = config.get("tls") is not None
    first = None
    if config["redis"] is not None:
        from ocm.cluster.service import ClusterLinks

        # the half of a cluster node the rooms tell their changes to
        first = ClusterLinks(config["redis-address"], reactor, config["node"], heartbeat_ttl=config["timeout"])
    rooms = Rooms(
        timeout=config["timeout"],
        max_rooms=config["max-rooms"],
        max_members=config["max-members"],
        rate=config["rate"],
        burst=config["burst"],
        stats=stats,
        secure=secure,
        peers=first.outbound if first is not None else None,
    )
    # Secure mode is its own relay: every datagram opened and sealed.
    relay = (SecureRelay if secure else Relay)(rooms, reactor)
    cluster = None
    if first is not None:
        from ocm.cluster.service import ClusterService

        def ports() -> tuple[int, int]:
            return tcp._port.getHost().port, udp_port()  # type: ignore[attr-defined]

        cluster = ClusterService(first, rooms, relay, ports)
    top = service.MultiService()
    top.rooms = rooms  # type: ignore[attr-defined]
    top.relay = relay  # type: ignore[attr-defined]

    # a cluster node's port drains what waited during a stall of its process (ocm.cluster.guard)
    udp_server = first.udp_server if first is not None else FastUDPServer
    udp = udp_server(config["udp"], relay, interface=config["interface"], maxPacketSize=LISTEN_SIZE)
    udp.setName("udp")
    udp.setServiceParent(top)

    def udp_port() -> int:
        return relay.transport.getHost().port  # type: ignore[no-any-return,union-attr]

    factory = TCRPFactory(
        rooms,
        udp_port,
        reactor,
        max_payload=config["max-payload"],
        request_timeout=config["request-timeout"],
        request_rate=config["request-rate"],
        request_burst=config["request-burst"],
        password_tries=config["password-tries"],
        max_connections_per_ip=config["max-connections-per-ip"],
        registry=cluster.registry if cluster is not None else None,
        tunnels=relay if config["tunnel"] else None,
        max_history=config["max-history"],
    )
    top.tcrp = factory  # type: ignore[attr-defined]
    tcp: service.Service
    if config.get("tls") is not None:
        tcp = internet.SSLServer(config["tcp"], factory, config["tls"], interface=config["interface"])
        log.info("secure mode: TLS on the TCRP port, sealed chat datagrams")
    else:
        tcp = internet.TCPServer(config["tcp"], factory, interface=config["interface"])
    tcp.setName("tcp")
    tcp.setServiceParent(top)

    if config["web"] is not None:
        from ocm.web.gateway import GatewayFactory
        from ocm.web.site import WebService

        gateway = GatewayFactory(
            factory,
            relay,
            stats,
            max_payload=config["max-payload"],
            request_timeout=config["request-timeout"],
            secure=secure,
            origins=config["web-origin"].split(","),
            trusted_proxies=config["web-trusted-proxy"].split(","),
        )
        web = WebService(config["web"], gateway, config["interface"], config["tls"] if secure else None, reactor)
        web.setName("web")
        web.setServiceParent(top)

    timers = [GuardedCall(relay.sweep, "room expiry")]
    if first is not None:  # after a stall of this process, what waited in the UDP port counts before the sweep
        timers.insert(0, GuardedCall(first.guard.before_sweep, "stall check"))
    lobby = None
    if config["lobby"] is not None:
        lobby = LobbyProtocol(stats, reactor, timeout=config["timeout"])
        top.lobby = lobby  # type: ignore[attr-defined]
        lobby_service = FastUDPServer(
            config["lobby"], lobby, interface=config["interface"], maxPacketSize=LISTEN_SIZE
        )
        lobby_service.setName("lobby")
        lobby_service.setServiceParent(top)
        timers.append(GuardedCall(lobby.sweep, "lobby expiry"))

    if config["metrics"] is not None:
        from ocm.metrics import metrics_site

        metrics = internet.TCPServer(config["metrics"], metrics_site(stats, rooms, lobby, cluster, relay), interface=config["metrics-interface"])
        metrics.setName("metrics")
        metrics.setServiceParent(top)

    def sweep() -> None:
        for timer in timers:
            timer()

    timer = internet.TimerService(sweep_interval(config["timeout"]), sweep)
    timer.clock = reactor
    timer.setName("sweep")
    timer.setServiceParent(top)

    if cluster is not None:
        # Stops after the shutdown notices, so that they leave in its last batches.
        cluster.setName("cluster")
        cluster.setServiceParent(top)
        top.cluster = cluster  # type: ignore[attr-defined]

    ShutdownNotices(relay).setServiceParent(top)
    return top
