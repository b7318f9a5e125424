"""The service layer's view of the outside: what it needs from Nova and from the message bus.

The engine (bootstrap, audits, resync) is written against these small interfaces, in domain
types only: a listing reaches it as typed events, never as the compute API's JSON. Adapters
(``cdm_sync.nova``, ``cdm_sync.messaging``) implement them; tests run the engine against real
local peers (a test Nova over HTTP, the real RabbitMQ) through those same adapters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from cdm_sync.model import Event
from cdm_sync.model.events import Source

EventSource = Callable[[Source, bool], Iterator[Event]]
"""``(source, intern)`` -> the events of a listing; see :meth:`Listing.events`."""


class Listing:
    """A listing of Nova's compute view, read to the end, as typed events.

    ``captured_at``: when the listing began (POSIX seconds, by the clock of the process that
    read it). ``incomplete``: reasons it must not be trusted for deletions although every page
    was read (a cell down, ...). ``rejected``: the items that could not be translated, with the
    reason; it fills while :meth:`events` is read.
    """

    def __init__(
        self,
        captured_at: float,
        events: EventSource,
        *,
        server_count: int,
        incomplete: Sequence[str] = (),
        rejected: list[str] | None = None,
    ) -> None:
        self.captured_at = captured_at
        self.server_count = server_count
        self.incomplete = list(incomplete)
        self.rejected: list[str] = rejected if rejected is not None else []
        self._events: EventSource | None = events

    def events(self, source: Source, *, intern: bool = True) -> Iterator[Event]:
        """Hypervisors, services, then servers, each with cause ``source``; readable once (the
        items behind them are released as they are read). ``intern=False`` leaves repeated
        strings unshared, for events that are compared and mostly dropped (an audit); see
        :func:`cdm_sync.model.interned`. Raises RuntimeError if read twice."""
        events, self._events = self._events, None
        if events is None:
            raise RuntimeError("a listing's events can be read only once")
        return events(source, intern)


class ListingError(Exception):
    """A listing could not be completed (timeout, failed page, auth, endpoint).

    ``partial`` is what was read before the failure, if anything: it may be applied as
    observations but never used to delete (an absent item is not proof of deletion).
    """

    def __init__(self, reason: str, partial: Listing | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.partial = partial


Progress = Callable[[str, int], None]
"""Told ``(what, count so far)`` while a listing runs, e.g. ``("servers", 12000)``."""


class Collector(Protocol):
    """Reads Nova's compute view (the adapter: cdm_sync.nova.collector.NovaCollector)."""

    def full_listing(self, progress: Progress | None = None) -> Listing:
        """Services (nova-compute), hypervisors with capacity, every server (all tenants, all
        pages, SOFT_DELETED included). Raises ListingError."""
        ...

    def nodes_listing(self, progress: Progress | None = None) -> Listing:
        """Services, hypervisors and capacity only, no servers: what the engine reads to give
        a node first heard of in a notification its real uuid and capacity.
        Raises ListingError."""
        ...

    def changes_since(self, since: float, progress: Progress | None = None) -> Listing:
        """Servers changed since ``since`` (POSIX seconds), deleted ones included. Raises
        ListingError."""
        ...


class NotificationGate(Protocol):
    """Lets the engine bootstrap without a gap (the adapter: cdm_sync.messaging.listener).

    ``hold()``: from now on, notifications received are held back (in order), not applied.
    ``release()``: apply everything held, in order, through the normal apply path, then go
    back to applying as notifications arrive; returns how many were held.
    """

    def hold(self) -> None: ...

    def release(self) -> int: ...
