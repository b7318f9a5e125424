"""The service layer's view of the outside: what it needs from Nova and from the message bus.

The engine (bootstrap, audits, resync) is written against these small interfaces, not against
python-novaclient or oslo.messaging, so another client can replace an adapter without touching
the service layer, and tests can run the engine against a real local peer (a test Nova over
HTTP, the real RabbitMQ) through the real adapters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cdm_sync.nova.snapshot import Snapshot


class ListingError(Exception):
    """A listing could not be completed (timeout, failed page, auth, endpoint).

    ``partial`` is what was read before the failure, if anything: it may be applied as
    observations but never used to delete (an absent item is not proof of deletion).
    """

    def __init__(self, reason: str, partial: Snapshot | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.partial = partial


@dataclass
class Listing:
    """A complete listing and what the collector noticed about its completeness."""

    snapshot: Snapshot
    # Reasons the listing must not be trusted for deletions although every page was read
    # (a cell down: servers with status UNKNOWN, ...). Empty when it is complete.
    incomplete: list[str] = field(default_factory=list)


Progress = Callable[[str, int], None]
"""Told ``(what, count so far)`` while a listing runs, e.g. ``("servers", 12000)``."""


class Collector(Protocol):
    """Reads Nova's compute view (the adapter: cdm_sync.nova.collector.NovaCollector)."""

    def full_listing(self, progress: Progress | None = None) -> Listing:
        """Services (nova-compute), hypervisors with capacity, every server (all tenants, all
        pages, SOFT_DELETED included), flavors when servers do not embed them.
        Raises ListingError."""
        ...

    def nodes_listing(self, progress: Progress | None = None) -> Listing:
        """Services, hypervisors and (2.88+) inventories only, no servers: what the engine
        reads to give a node first heard of in a notification its real uuid and capacity.
        Raises ListingError."""
        ...

    def changes_since(self, since: float, progress: Progress | None = None) -> Listing:
        """Servers changed since ``since`` (POSIX seconds), deleted ones included
        (``GET /servers/detail?changes-since=...``: Nova includes deleted servers with
        changes-since on its own; adding ``deleted=true`` would return only deleted ones). The
        listing's services and hypervisors may be empty. Raises ListingError."""
        ...


class NotificationGate(Protocol):
    """Lets the engine bootstrap without a gap (the adapter: cdm_sync.messaging.listener).

    ``hold()``: from now on, notifications received are buffered (in order), not applied.
    ``release()``: apply everything buffered, in order, through the normal apply path, then
    go back to applying as notifications arrive; returns how many were buffered.
    """

    def hold(self) -> None: ...

    def release(self) -> int: ...
