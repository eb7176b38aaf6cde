"""
Log observers for C{twistd --logger}.

C{twistd --logger=ocm.logs.json_lines -n ocm} writes one JSON object a line
(JSON Lines) to standard output. Every field an event carries (room, user,
reason, status, ...) is in it; message text, tokens and passwords are never
logged.
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver


def json_lines() -> ILogObserver:
    """A JSON Lines observer on standard output (no record separator)."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
