"""
A cluster node, composed once (L{ClusterParts}), and the service that runs
it for as long as the server runs (L{ClusterService}).

Each node keeps its own members in its in-memory L{Rooms} (the node that
issued a token holds that member, so a datagram is checked against local
state and fanned out to local members at once, never waiting for Redis).
Redis holds what the nodes share (L{ocm.cluster.scripts}): the room
registry, changed only by Lua scripts; node heartbeats; and one pub/sub
channel per node carrying batches of records (L{ocm.cluster.wire}).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from ocm.cluster import scripts
from ocm.cluster.address import RedisAddress
from ocm.cluster.guard import GuardedUDPServer, StallGuard
from ocm.cluster.links import RedisLinks
from ocm.cluster.liveness import Liveness
from ocm.cluster.records import Inbound, JoinWaits, Outbound
from ocm.cluster.registry import ClusterRegistry
from ocm.cluster.state import Incarnations, Node, RoomFields, StallWatch
from ocm.relay.protocol import Writer
from ocm.rooms import Rooms

log = Logger()


def default_node_name(tcp_port: int, udp_port: int) -> str:
    """The host name and ports: unique per process on one machine."""
    return f"{socket.gethostname()}:{tcp_port}:{udp_port}"


class ClusterLinks:
    """
    The first half of a node, made before its rooms (which tell the other
    nodes through L{outbound}): the node's state, its Redis links, and its
    outbound records.
    """

    def __init__(self, address: RedisAddress, clock: Any, node: str, heartbeat_ttl: float) -> None:
        self.node = Node(node, heartbeat_ttl)
        self.links = RedisLinks(address, clock, self.node)
        #: Every field of the rooms held here, for rebuilds.
        self.fields = RoomFields()
        self.outbound = Outbound(self.node, self.links, self.fields)
        #: Whether this process stalled: its UDP port, its sweep and its heartbeat ask it.
        self.guard = StallGuard(StallWatch(heartbeat_ttl / 2), clock)

    def udp_server(self, *args: Any, **kwargs: Any) -> GuardedUDPServer:
        """The node's UDP port service: L{ocm.relay.port.FastUDPServer}'s arguments, guarded against stalls."""
        return GuardedUDPServer(*args, guard=self.guard, **kwargs)


class NodeEvents:
    """What the links tell the node (L{ocm.cluster.links.LinkEvents}): batches to the inbound records, the rest to liveness."""

    def __init__(self, inbound: Inbound, liveness: Liveness) -> None:
        self.inbound = inbound
        self.liveness = liveness

    def received(self, data: bytes) -> None:
        """See L{ocm.cluster.links.LinkEvents.received}."""
        self.inbound.received(data)

    def command_connected(self) -> None:
        """See L{ocm.cluster.links.LinkEvents.command_connected}."""
        self.liveness.command_connected()

    def refused(self, verdict: str, generation: int) -> None:
        """See L{ocm.cluster.links.LinkEvents.refused}."""
        self.liveness.refused(verdict, generation)


class ClusterService(service.Service):
    """
    Runs a cluster node: the second half (inbound records, the registry,
    liveness) made here, over the node's rooms and relay.
    """

    def __init__(self, first: ClusterLinks, rooms: Rooms, writer: Writer, ports: Callable[[], tuple[int, int]]) -> None:
        self.node = first.node
        self.links = first.links
        fields = first.fields
        self.inbound = Inbound(self.node, rooms, writer, self.links, Incarnations(), JoinWaits(self.links.clock), fields)
        #: What the TCRP side asks (L{ocm.tcrp.registry.Registry}).
        self.registry = ClusterRegistry(self.node, rooms, self.links, first.outbound, self.inbound, writer, fields)
        self.liveness = Liveness(self.node, rooms, writer, self.links, self.inbound, first.guard, fields)
        self.events = NodeEvents(self.inbound, self.liveness)
        self.ports = ports

    @property
    def ready(self) -> bool:
        """Whether the node takes room requests: Redis reachable (L{RedisLinks.ready}), no rebuild running."""
        return self.links.ready and not self.node.rebuilding

    def dropped_records(self) -> dict[str, int]:
        """Records from other nodes dropped, by why (for the metrics)."""
        inbound = self.inbound
        return {"fenced": inbound.fenced_batches, "stale": inbound.stale_chat + inbound.rules.stale, "bad": inbound.rules.bad}

    @property
    def outbox(self) -> Any:
        """The batches to other nodes (for the metrics)."""
        return self.links.outbox

    def startService(self) -> None:
        """Name the node (host and ports unless --node), connect, beat."""
        super().startService()
        if not self.node.name:
            self.node.name = default_node_name(*self.ports())
        address = self.links.address
        log.info("cluster node {node} on Redis {host}:{port}/{db}", node=self.node.name, host=address.host, port=address.port, db=address.db)
        self.links.start(self.events)
        self.liveness.start()

    def stopService(self) -> defer.Deferred[Any]:
        """Runs after the shutdown notices: they leave in the last batches."""
        super().stopService()
        return defer.ensureDeferred(self.stop())

    async def stop(self) -> None:
        """
        Leave the cluster: flush the last batches (the shutdown notices), let
        the last scripts finish, take this node's members and rooms out of
        the registry, drop the connections.
        """
        links = self.links
        self.liveness.stop()
        self.inbound.joins.release()
        if links.outbox is not None:
            links.outbox.flush()
        if links.pending:
            await links.bounded(defer.DeferredList(list(links.pending), consumeErrors=True))
        if links.outbox is not None:
            links.outbox.flush()  # what those scripts' answers added (a close's other nodes)
        if links.ready:
            await links.bounded(links.eval(scripts.REAP_SELF, self.node.name, self.node.generation))
        await links.stop()
