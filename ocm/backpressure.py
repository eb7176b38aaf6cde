"""
Back-pressure for writers that would rather drop than queue: a TCP
transport pauses its producer when its buffer is full.
"""

from __future__ import annotations


class PausedFlag:
    """
    A streaming producer that only remembers whether its consumer (a TCP
    transport) asked it to pause: the writer drops what it would have
    queued while C{paused}, so that a slow peer costs data, never memory.
    """

    paused = False

    def pauseProducing(self) -> None:
        """The transport's buffer is past its high-water mark."""
        self.paused = True

    def resumeProducing(self) -> None:
        """The buffer drained."""
        self.paused = False

    def stopProducing(self) -> None:
        """The connection is going."""
        self.paused = True
