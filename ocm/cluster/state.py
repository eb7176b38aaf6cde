"""
This node as its cluster parts share it: its name, and where it stands with
the registry (L{Node}).
"""

from __future__ import annotations


class Node:
    """
    This node in the cluster: its name and the state its parts (links,
    registry, records, liveness) share.

    @ivar name: unique in the cluster; given with C{--node}, or named at
        start from the host and ports (L{ocm.cluster.service}).
    """

    def __init__(self, name: str, heartbeat_ttl: float) -> None:
        self.name = name
        #: The heartbeat key's TTL; a node silent that long is reaped.
        self.heartbeat_ttl = heartbeat_ttl
        #: How often the heartbeat is written (and dead nodes looked for).
        self.beat_interval = min(1.0, heartbeat_ttl / 4)
        #: This node's leftovers of a previous run are reaped.
        self.clean = False
        #: Its heartbeat was written once: other nodes can reap it.
        self.alive = False
        #: Its part of the registry must be put back (at the next beat).
        self.rebuild_wanted = True
        #: A rebuild is running: creates and joins wait (503) until it is done.
        self.rebuilding = False
        #: Creates and joins waiting for their script: a rebuild waits for them.
        self.in_flight = 0

    def want_rebuild(self) -> None:
        """Ask for a rebuild at the next beat."""
        self.rebuild_wanted = True
