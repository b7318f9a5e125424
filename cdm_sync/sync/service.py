"""The service layer's front door: typed events in, model applied, changes published, all counted.

Every source (snapshot bootstrap, notification endpoints, audits) hands its events to one
:class:`SyncService`, so counting and publishing happen in one place and the model keeps its
single writer. Publishing happens in revision order, under the service's writer lock but
outside the model's lock (readers are never held up by it); a publisher must not block (the
event bus queues, sinks buffer). The counters (:class:`Stats`) have a bounded label set, given
by the composition root, and are read only as copies.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import get_args

from cdm_sync.model import ChangeRecord, ComputeModel, Event, Outcome
from cdm_sync.model.events import Source

LOG = logging.getLogger(__name__)

Publisher = Callable[[list[ChangeRecord]], None]

# How outcomes roll up into the one-line summary (applied / ignored / rejected).
APPLIED = "applied"
IGNORED = "ignored"
REJECTED = "rejected"
_ROLLUP = {
    Outcome.CHANGED: APPLIED,
    Outcome.UNCHANGED: APPLIED,
    Outcome.STALE: IGNORED,
    Outcome.DUPLICATE: IGNORED,
    Outcome.TOMBSTONED: IGNORED,
}


@dataclass(frozen=True)
class Summary:
    applied: int
    changed: int
    ignored: int
    rejected: int
    records: int

    def line(self) -> str:
        return (
            f"applied {self.applied} (changed the model: {self.changed}), "
            f"ignored {self.ignored}, rejected {self.rejected}, change records {self.records}"
        )


# Counter labels that are never event types: where an event came from when it has no event type
# (bootstrap, audits), and the edge's names for lines without a usable one.
SOURCES = frozenset(get_args(Source))
UNPARSABLE = "(unparsable)"
NOT_A_STRING = "(not a string)"
OTHER = "(other)"
_FIXED_LABELS = SOURCES | {UNPARSABLE, NOT_A_STRING, OTHER}


@dataclass(frozen=True)
class StatsSnapshot:
    """The counters at one moment, copied under the lock: safe to iterate while events apply."""

    by_type: Mapping[tuple[str, str], int]
    records: int
    last_rejections: tuple[str, ...]
    lag_seconds: float | None
    last_notification_at: float | None
    summary: Summary


class Stats:
    """Counters by (event type label, outcome); outcomes are ``Outcome`` values plus the edge's
    own ``unhandled`` (event type not ours), ``irrelevant`` (ours, but proves nothing) and
    ``rejected`` (malformed).

    Event types are untrusted input, so the label set is bounded: an event type counts under
    its own name only if it is in ``event_types`` (or is a source or one of the edge's fixed
    labels); every other one counts under :data:`OTHER`. Every method is thread-safe; readers
    get copies (:meth:`snapshot`, :attr:`by_type`), never the live counters."""

    def __init__(self, event_types: Collection[str] = ()) -> None:
        self._known = frozenset(event_types) | _FIXED_LABELS
        self._lock = threading.Lock()
        self._by_type: Counter[tuple[str, str]] = Counter()
        self._records = 0
        self._last_rejections: deque[str] = deque(maxlen=100)
        # Notification lag: how long after Nova emitted it the last notification was applied.
        self._lag_seconds: float | None = None
        self._last_notification_at: float | None = None

    def label(self, event_type: object) -> str:
        """The counter label of ``event_type``: itself if known, :data:`OTHER` if not,
        :data:`NOT_A_STRING` for what is not a string at all."""
        if not isinstance(event_type, str):
            return NOT_A_STRING
        return event_type if event_type in self._known else OTHER

    def count(self, event_type: str, outcome: str, records: int = 0) -> None:
        label = self.label(event_type)
        with self._lock:
            self._by_type[(label, outcome)] += 1
            self._records += records

    def applied_notification(self, emitted_at: float, now: float) -> None:
        with self._lock:
            self._lag_seconds = now - emitted_at
            self._last_notification_at = now

    def merge(self, counts: Mapping[tuple[str, str], int], records: int) -> None:
        labelled: Counter[tuple[str, str]] = Counter()
        for (event_type, outcome), n in counts.items():
            labelled[(self.label(event_type), outcome)] += n
        with self._lock:
            self._by_type.update(labelled)
            self._records += records

    def rejection(self, event_type: str, reason: str) -> None:
        label = self.label(event_type)
        with self._lock:
            self._by_type[(label, REJECTED)] += 1
            self._last_rejections.append(f"{label}: {reason[:500]}")

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            return StatsSnapshot(
                by_type=dict(self._by_type),
                records=self._records,
                last_rejections=tuple(self._last_rejections),
                lag_seconds=self._lag_seconds,
                last_notification_at=self._last_notification_at,
                summary=self._summary(),
            )

    def summary(self) -> Summary:
        with self._lock:
            return self._summary()

    @property
    def by_type(self) -> Counter[tuple[str, str]]:
        """A copy of the counters."""
        with self._lock:
            return Counter(self._by_type)

    @property
    def records(self) -> int:
        with self._lock:
            return self._records

    @property
    def last_rejections(self) -> list[str]:
        """The last 100 rejection reasons, oldest first (a copy)."""
        with self._lock:
            return list(self._last_rejections)

    @property
    def lag_seconds(self) -> float | None:
        with self._lock:
            return self._lag_seconds

    @property
    def last_notification_at(self) -> float | None:
        with self._lock:
            return self._last_notification_at

    def _summary(self) -> Summary:
        totals: Counter[str] = Counter()
        for (_, outcome), n in self._by_type.items():
            totals[_rollup(outcome)] += n
            if outcome == Outcome.CHANGED.value:
                totals["changed"] += n
        return Summary(
            totals[APPLIED], totals["changed"], totals[IGNORED], totals[REJECTED], self._records
        )


def _rollup(outcome: str) -> str:
    if outcome == REJECTED:
        return REJECTED
    for member, group in _ROLLUP.items():
        if member.value == outcome:
            return group
    return IGNORED


class SyncService:
    """``event_types``: the event types counted under their own names (the composition root
    passes Nova's, :data:`cdm_sync.nova.event_types.NOVA_EVENT_TYPES`); see :class:`Stats`."""

    def __init__(
        self,
        model: ComputeModel,
        publishers: Iterable[Publisher] = (),
        *,
        event_types: Collection[str] = (),
    ) -> None:
        self.model = model
        self.stats = Stats(event_types)
        self._publishers: list[Publisher] = list(publishers)
        self._writer = threading.Lock()

    def add_publisher(self, publisher: Publisher) -> None:
        self._publishers.append(publisher)

    def submit(self, event: Event, *, overrule: bool = False) -> Outcome:
        """Apply one event, publish its change records, count the outcome. ``overrule``: see
        :mod:`cdm_sync.model.apply` (the audit's, for corrections two listings agree on)."""
        # Apply and publish under one lock: two submitting threads (listener, audit) must not
        # hand publishers their batches out of revision order. Publishers never block.
        with self._writer:
            outcome, records = self.model.apply_with_outcome(event, overrule=overrule)
            if records:
                self._publish(records)
        cause = event.cause
        self.stats.count(cause.event_type or cause.source, outcome.value, len(records))
        if cause.source == "notification" and event.version.timestamp is not None:
            self.stats.applied_notification(event.version.timestamp, time.time())
        return outcome

    def submit_all(
        self,
        events: Iterable[Event],
        progress: Callable[[int], None] | None = None,
        every: int = 10000,
    ) -> int:
        """Apply many events (bootstrap, audit); ``progress`` is told the count every ``every``.

        Same as :meth:`submit` per event, with the counters merged once at the end.
        """
        counts: Counter[tuple[str, str]] = Counter()
        total_records = 0
        apply = self.model.apply_with_outcome
        n = 0
        for n, event in enumerate(events, 1):
            with self._writer:
                outcome, records = apply(event)
                if records:
                    self._publish(records)
            counts[(event.cause.event_type or event.cause.source, outcome.value)] += 1
            total_records += len(records)
            if progress is not None and n % every == 0:
                progress(n)
        self.stats.merge(counts, total_records)
        if progress is not None:
            progress(n)
        return n

    def _publish(self, records: list[ChangeRecord]) -> None:
        for publisher in self._publishers:
            try:
                publisher(records)
            except Exception:  # a broken publisher must not break the apply path
                LOG.exception("Change publisher %r failed", publisher)
