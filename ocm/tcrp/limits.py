"""
Per-key token buckets for the TCRP abuse limits (answered 429).

Pure state: every method takes C{now}.
"""

from __future__ import annotations

from collections.abc import Hashable


class TokenBuckets:
    """
    One token bucket per key (a source IP, or an IP and a room): C{rate}
    tokens a second, at most C{burst} saved up.

    Memory is bounded: buckets that have refilled completely carry no
    information and are pruned once there are more than C{max_keys}.
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[Hashable, tuple[float, float]] = {}

    def _level(self, key: Hashable, now: float) -> float:
        level, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, level + (now - at) * self.rate)

    def allow(self, key: Hashable, now: float, cost: float = 1.0) -> bool:
        """Take C{cost} tokens from C{key}'s bucket if it has them."""
        level = self._level(key, now)
        if level < cost:
            self._buckets[key] = (level, now)
            return False
        self._buckets[key] = (level - cost, now)
        if len(self._buckets) > self.max_keys:
            self.prune(now)
        return True

    def charge(self, key: Hashable, now: float, cost: float = 1.0) -> None:
        """Take C{cost} tokens whether or not they are there (may go below zero)."""
        self._buckets[key] = (self._level(key, now) - cost, now)
        if len(self._buckets) > self.max_keys:
            self.prune(now)

    def blocked(self, key: Hashable, now: float) -> bool:
        """Whether C{key} has less than one token."""
        return self._level(key, now) < 1.0

    def prune(self, now: float) -> None:
        """Forget buckets that are full again."""
        full = [k for k in self._buckets if self._level(k, now) >= self.burst]
        for key in full:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)
