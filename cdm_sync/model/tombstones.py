"""Tombstones: the memory of deletions, so a late or replayed update cannot resurrect an element.

Expiry is lazy and ordered: entries expire in the order they were written, so purging costs
O(1) amortized per apply and never a scan of the whole table.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from cdm_sync.model.events import Version


@dataclass(frozen=True, slots=True)
class Tombstone:
    """A deletion: its version, why, and when (the model's clock) it was written and expires."""

    version: Version
    reason: str
    buried_at: float
    expires_at: float


class Tombstones:
    def __init__(self, ttl: float) -> None:
        if ttl <= 0:
            raise ValueError(f"tombstone TTL must be positive, got {ttl!r}")
        self.ttl = ttl
        self._by_key: dict[str, Tombstone] = {}
        self._expiry: deque[tuple[float, str]] = deque()

    def add(self, key: str, version: Version, reason: str, now: float) -> None:
        expires = now + self.ttl
        self._by_key[key] = Tombstone(version, reason, now, expires)
        self._expiry.append((expires, key))

    def get(self, key: str) -> Tombstone | None:
        return self._by_key.get(key)

    def discard(self, key: str) -> None:
        self._by_key.pop(key, None)

    def purge(self, now: float) -> int:
        """Forget tombstones older than the TTL; returns how many were dropped."""
        dropped = 0
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            expires, key = expiry.popleft()
            stone = self._by_key.get(key)
            # A key tombstoned again later has a later expiry: keep that one.
            if stone is not None and stone.expires_at == expires:
                del self._by_key[key]
                dropped += 1
        return dropped

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: str) -> bool:
        return key in self._by_key
