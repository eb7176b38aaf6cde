"""
The room set-up plane: requests that create, join and list rooms.

 - L{ocm.tcrp.flow}: L{RequestFlow}, one request frame answered, whatever
   carried it (TCP, a tunnel's first frame, a WebSocket);
 - L{ocm.tcrp.protocol}: the TCRP port (framing, timeouts, the tunnel
   request);
 - L{ocm.tcrp.registry}: L{Registry}, where rooms are created and found
   (the local rooms, or a cluster's);
 - L{ocm.tcrp.limits}: per-IP token buckets.
"""
