"""
The rooms plane: rooms, members and tokens as pure state (no I/O; time is
passed in as C{now}).

 - L{ocm.rooms.model}: L{Member}, L{Room}, L{Route} (what a member is
   written through), L{RoomError};
 - L{ocm.rooms.service}: L{Rooms}, every state change, returning the
   notices to send, addressed to members;
 - L{ocm.rooms.peers}: L{Peers}, what the rooms tell other nodes (nothing,
   on one node).
"""

from ocm.rooms.model import (
    MAX_HISTORY_BYTES,
    MAX_SEND_FAILURES,
    Member,
    Room,
    RoomError,
    Route,
    Sends,
    new_token,
    normalise_ip,
    normalise_ip_cached,
)
from ocm.rooms.peers import Peers
from ocm.rooms.service import Rooms

__all__ = [
    "MAX_HISTORY_BYTES",
    "MAX_SEND_FAILURES",
    "Member",
    "Peers",
    "Room",
    "RoomError",
    "Rooms",
    "Route",
    "Sends",
    "new_token",
    "normalise_ip",
    "normalise_ip_cached",
]
