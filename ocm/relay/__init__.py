"""
The datagram plane: everything a chat datagram meets between arriving and
being written.

 - L{ocm.relay.protocol}: L{Relay} (and L{SecureRelay}): every check of
   SPEC section 2, binding, notices, chat fan-out, the idle sweep;
 - L{ocm.relay.routes}: how a member is written to (UDP, sealed UDP, a
   connection, a sealed connection);
 - L{ocm.relay.fanout}: one datagram to a whole room, in C
   (C{_fanout.c}) or in Python;
 - L{ocm.relay.tunnel}: a member's datagrams through its TCP connection;
 - L{ocm.relay.port}: the UDP port's lean read loop;
 - L{ocm.relay.sending}: the UDP send path and which errors mean overload;
 - L{ocm.relay.lobby}: the stage-1 open lobby (SPEC section 4).
"""
