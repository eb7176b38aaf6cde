"""
Prometheus metrics at C{/metrics}, served by C{twisted.web}.

The hot path keeps plain integer counts (L{ocm.stats.Stats}); a custom
collector turns them into metric families when Prometheus scrapes, so
counting costs a C{+= 1} and nothing else (a C{prometheus_client} counter's
C{inc()} costs about ten times that). The exposition is
C{prometheus_client}'s own C{generate_latest}, rendered on the reactor
thread (its C{MetricsResource} is a WSGI-in-a-thread shim).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.web.resource import Resource
from twisted.web.server import Request

from ocm.rooms import Rooms
from ocm.stats import Stats

OPERATIONS = {0: "connect", 1: "create", 2: "join", 3: "list", 4: "tunnel"}


class ClusterGauges(Protocol):
    """What the metrics read of a cluster node (L{ocm.cluster.links.RedisLinks})."""

    @property
    def outbox(self) -> Any:
        """The batches to other nodes (L{ocm.cluster.links.Outbox}), counted."""

    @property
    def ready(self) -> bool:
        """Whether the node takes room requests."""

    def dropped_records(self) -> dict[str, int]:
        """Records from other nodes dropped, by why (L{ocm.cluster.records.Inbound})."""


class ConnectionCounts(Protocol):
    """What the metrics read of the relay (L{ocm.relay.protocol.Relay})."""

    def connection_counts(self) -> dict[str, int]:
        """Members that chat through a connection, by kind."""


class OcmCollector:
    """Reads the server's counters at scrape time."""

    def __init__(
        self, stats: Stats, rooms: Rooms, lobby: Any = None, cluster: ClusterGauges | None = None, relay: ConnectionCounts | None = None
    ) -> None:
        self.stats = stats
        self.rooms = rooms
        self.lobby = lobby
        self.cluster = cluster
        self.relay = relay

    def collect(self) -> Iterator[Metric]:
        """The metric families, from the current counts."""
        s = self.stats
        yield CounterMetricFamily("ocm_datagrams_received", "Datagrams received on the room relay's UDP port.", value=s.received)
        yield CounterMetricFamily("ocm_datagrams_relayed", "Chat datagrams written to room members (one per recipient).", value=s.relayed)
        yield CounterMetricFamily("ocm_notices_sent", "Server notices written (welcome, join, leave, closed, ...).", value=s.notices)
        dropped = CounterMetricFamily("ocm_datagrams_dropped", "Datagrams dropped, by reason (room relay and lobby).", labels=["reason"])
        for reason, count in sorted(s.dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped
        errors = CounterMetricFamily("ocm_send_errors", "Failed sends: 'unreachable' counts against the member, 'overload' is a full local buffer.", labels=["kind"])
        errors.add_metric(["unreachable"], s.send_errors)
        errors.add_metric(["overload"], s.send_overload)
        yield errors
        requests = CounterMetricFamily("ocm_tcrp_requests", "TCRP requests answered, by operation and status.", labels=["operation", "status"])
        for (operation, status), count in sorted(s.requests.items()):
            requests.add_metric([OPERATIONS.get(operation, str(operation)), str(status)], count)
        yield requests
        removed = CounterMetricFamily("ocm_members_removed", "Members removed, by reason.", labels=["reason"])
        for reason, count in sorted(s.removed.items()):
            removed.add_metric([reason], count)
        yield removed
        rooms, members, bound = self.rooms.counts()
        yield GaugeMetricFamily("ocm_rooms", "Open rooms.", value=rooms)
        yield GaugeMetricFamily("ocm_members", "Members (issued tokens), bound or not.", value=members)
        yield GaugeMetricFamily("ocm_members_bound", "Members whose token is bound to a UDP address.", value=bound)
        if self.relay is not None:
            counts = self.relay.connection_counts()
            carried = GaugeMetricFamily("ocm_members_connected", "Members that chat through a connection, by kind (TCP tunnel, WebSocket).", labels=["kind"])
            for kind in ("tunnel", "web"):
                carried.add_metric([kind], counts.get(kind, 0))
            yield carried
        commands = CounterMetricFamily("ocm_room_commands", "Section 7 control messages given (ping, msg, kick, ...), by command.", labels=["command"])
        for command, count in sorted(s.commands.items()):
            commands.add_metric([command], count)
        yield commands
        refused = CounterMetricFamily("ocm_web_upgrades_refused", "WebSocket upgrades refused, by reason.", labels=["reason"])
        for reason in ("origin", "connections"):
            refused.add_metric([reason], s.web_refused[reason])
        yield refused
        cluster = self.cluster
        if cluster is not None:  # a cluster node (ocm.cluster)
            outbox = cluster.outbox
            batches = CounterMetricFamily(
                "ocm_cluster_batches", "Batches to other nodes: written, or dropped (Redis unreachable or behind).", labels=["outcome"]
            )
            batches.add_metric(["sent"], outbox.sent if outbox is not None else 0)
            batches.add_metric(["dropped"], outbox.dropped if outbox is not None else 0)
            yield batches
            dropped = CounterMetricFamily(
                "ocm_cluster_records_dropped",
                "Records from other nodes dropped: whole batches of a generation known dead (fenced), chat older than half the timeout (stale), RULE records that did not parse (bad).",
                labels=["reason"],
            )
            for reason, count in sorted(cluster.dropped_records().items()):
                dropped.add_metric([reason], count)
            yield dropped
            yield GaugeMetricFamily("ocm_cluster_ready", "1 while Redis is reachable and this node takes room requests.", value=1 if cluster.ready else 0)
        if self.lobby is not None:
            yield CounterMetricFamily("ocm_lobby_datagrams_received", "Datagrams received on the lobby port.", value=s.lobby_received)
            yield CounterMetricFamily("ocm_lobby_datagrams_relayed", "Datagrams written to lobby clients.", value=s.lobby_relayed)
            yield GaugeMetricFamily("ocm_lobby_clients", "Addresses heard from in the lobby within the timeout.", value=len(self.lobby.clients))


class MetricsResource(Resource):
    """C{GET /metrics}: the Prometheus text format."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        """Render every metric now."""
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.registry)  # type: ignore[no-any-return]


def metrics_site(
    stats: Stats, rooms: Rooms, lobby: Any = None, cluster: ClusterGauges | None = None, relay: ConnectionCounts | None = None
) -> Any:
    """A C{twisted.web} site serving C{/metrics} (and nothing else)."""
    from twisted.web.server import Site

    registry = CollectorRegistry(auto_describe=True)
    registry.register(OcmCollector(stats, rooms, lobby, cluster, relay))  # type: ignore[arg-type]
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry))
    site = Site(root)
    site.noisy = False
    return site
