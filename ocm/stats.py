"""
The server's statistics: plain integer counters, cheap to bump on the hot path.
"""

from __future__ import annotations

from collections import Counter

# Why a datagram was dropped (SPEC section 2 and 4).
DROP_REASONS = (
    "oversize",
    "malformed",
    "unknown_token",
    "wrong_room",
    "wrong_ip",
    "wrong_port",
    "bad_utf8",
    "bad_control",
    "rate_limited",
    "too_long",
    "muted",
    # secure mode (docs/secure.rst)
    "unsealed",
    "replayed",
    "bad_seal",
)

REMOVAL_REASONS = ("left", "timeout", "unreachable", "host_left", "shutdown", "kicked", "banned")


class Stats:
    """
    Counters shared by the TCRP server, the relay and the lobby.

    The hot path bumps plain attributes (C{stats.received += 1}); exporting
    them (metrics, logs) reads them at leisure.
    """

    def __init__(self) -> None:
        self.received = 0
        self.relayed = 0
        self.notices = 0
        self.send_errors = 0
        self.send_overload = 0
        #: Drops by reason: a plain dict with every reason present, so the
        #: relay's drop path is one C-level increment (a Counter's Python
        #: machinery cost 14% of the server under a junk flood).
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.removed: Counter[str] = Counter()
        self.requests: Counter[tuple[int, int]] = Counter()
        #: Section 7's control messages given, by word (C{ping}, C{kick}, ...).
        self.commands: Counter[str] = Counter()
        #: WebSocket upgrades refused, by reason (C{origin}, C{connections}).
        self.web_refused: Counter[str] = Counter()
        self.lobby_received = 0
        self.lobby_relayed = 0

    def drop(self, reason: str) -> None:
        """Count one dropped datagram."""
        self.dropped[reason] += 1
