"""
The cluster plane: several ocm nodes sharing one set of rooms through Redis
(C{--redis}).

 - L{ocm.cluster.address}: where Redis is;
 - L{ocm.cluster.links}: the connections to Redis, the scripts' runner,
   the batches published to other nodes;
 - L{ocm.cluster.scripts}: the registry's Lua scripts;
 - L{ocm.cluster.wire}: the records between nodes, byte for byte;
 - L{ocm.cluster.records}: what this node tells the others, and what their
   records do here;
 - L{ocm.cluster.registry}: the room registry the TCRP side asks;
 - L{ocm.cluster.liveness}: heartbeats, reaping, rebuilding;
 - L{ocm.cluster.state}: the node's name and shared state;
 - L{ocm.cluster.service}: the node composed once, run as a service.
"""
