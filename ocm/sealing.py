"""
Sealed chat datagrams (secure mode; docs/secure.rst gives every byte).

Each member has its own 32-byte key, sent to it over TLS in the create/join
answer.  Every datagram between that member and the server, both ways, is
sealed with ChaCha20-Poly1305 (RFC 8439) under that key:

    client -> server:  R | T | RoomName | Token | Counter (8) | Ciphertext | Tag (16)
    server -> client:                             Counter (8) | Ciphertext | Tag (16)

The nonce is a direction (4 bytes: 0 towards the server, 1 towards the
client) and the sender's counter (8 bytes, big-endian), which starts at 0
and grows by one a datagram; the associated data is the member's clear
header, C{R | T | RoomName | Token}, in both directions.  The receiver keeps
a replay window of L{WINDOW} counters and marks a counter seen only once its
datagram has opened, so forged datagrams cannot move the window.

Pure: no I/O.  One implementation for the server and the client.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

KEY_SIZE = 32
COUNTER_SIZE = 8
TAG_SIZE = 16
#: Bytes a seal adds to a message.
OVERHEAD = COUNTER_SIZE + TAG_SIZE
#: Counters the replay window remembers below the highest one seen.
WINDOW = 1024
TO_SERVER = b"\x00\x00\x00\x00"
TO_CLIENT = b"\x00\x00\x00\x01"
#: The algorithm's name in the create/join answer (C{"seal"}).
ALGORITHM = "chacha20-poly1305"

_COUNTER = struct.Struct(">Q")
_MASK = (1 << WINDOW) - 1
_LAST_COUNTER = (1 << 64) - 1


def new_key() -> bytes:
    """A fresh member key from the CSPRNG."""
    return os.urandom(KEY_SIZE)


class ReplayWindow:
    """
    The counters seen from one sender: the highest, and a bitmap of the
    L{WINDOW} below it (bit I{d} is counter C{top - d}).  Reordering within
    the window is accepted; repeats and older counters are not.
    """

    __slots__ = ("top", "bits")

    def __init__(self) -> None:
        self.top = -1
        self.bits = 0

    def fresh(self, counter: int) -> bool:
        """Whether C{counter} may be accepted (not seen, not too old)."""
        if counter > self.top:
            return True
        behind = self.top - counter
        return behind < WINDOW and not (self.bits >> behind) & 1

    def mark(self, counter: int) -> None:
        """C{counter}'s datagram opened: remember it."""
        if counter > self.top:
            shift = counter - self.top
            self.bits = ((self.bits << shift) | 1) & _MASK if shift < WINDOW else 1
            self.top = counter
        else:
            self.bits |= 1 << (self.top - counter)


class Channel:
    """
    One member's sealed datagrams, from one end (the server's or the
    client's): sealing what this end sends, opening what it receives.
    """

    __slots__ = ("aead", "aad", "outgoing", "incoming", "counter", "window")

    def __init__(self, key: bytes, header: bytes, server_end: bool) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError("a member key is 32 bytes")
        self.aead = ChaCha20Poly1305(key)
        #: The member's clear header, C{R | T | RoomName | Token}: associated data.
        self.aad = header
        self.outgoing = TO_CLIENT if server_end else TO_SERVER
        self.incoming = TO_SERVER if server_end else TO_CLIENT
        #: The next counter this end sends.
        self.counter = 0
        self.window = ReplayWindow()

    def seal(self, plaintext: bytes) -> bytes:
        """C{Counter | Ciphertext | Tag} of C{plaintext}, with the next counter."""
        counter = self.counter
        if counter > _LAST_COUNTER:  # pragma: no cover - 2**64 datagrams
            raise OverflowError("this member's key is used up")
        self.counter = counter + 1
        packed = _COUNTER.pack(counter)
        return packed + self.aead.encrypt(self.outgoing + packed, plaintext, self.aad)

    def open(self, sealed: bytes) -> tuple[bytes | None, str]:
        """
        The plaintext of C{Counter | Ciphertext | Tag} and C{""}; or None and
        why (C{unsealed}: too short, C{replayed}: seen or too old,
        C{bad_seal}: does not open), and then nothing changes.
        """
        if len(sealed) < OVERHEAD:
            return None, "unsealed"
        (counter,) = _COUNTER.unpack_from(sealed)
        if not self.window.fresh(counter):
            return None, "replayed"
        try:
            plaintext = self.aead.decrypt(self.incoming + sealed[:COUNTER_SIZE], sealed[COUNTER_SIZE:], self.aad)
        except InvalidTag:
            return None, "bad_seal"
        self.window.mark(counter)
        return plaintext, ""
