"""The service layer's front door: typed events in, model applied, changes published, all counted.

Every source (snapshot bootstrap, notification endpoints, audits) hands its events to one
:class:`SyncService`, so counting and publishing happen in one place and the model keeps its
single writer. Publishing happens in revision order, under the service's writer lock but
outside the model's lock (readers are never held up by it); a publisher must not block (the
event bus queues, sinks buffer).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cdm_sync.model import ChangeRecord, ComputeModel, Event, Outcome

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


class Stats:
    """Counters by (event type, outcome); outcomes are ``Outcome`` values plus the edge's own
    ``unhandled`` (event type not ours), ``irrelevant`` (ours, but proves nothing) and
    ``rejected`` (malformed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_type: Counter[tuple[str, str]] = Counter()
        self.records = 0
        self.last_rejections: list[str] = []
        # Notification lag: how long after Nova emitted it the last notification was applied.
        self.lag_seconds: float | None = None
        self.last_notification_at: float | None = None

    def count(self, event_type: str, outcome: str, records: int = 0) -> None:
        with self._lock:
            self.by_type[(_label(event_type), outcome)] += 1
            self.records += records

    def applied_notification(self, emitted_at: float, now: float) -> None:
        self.lag_seconds = now - emitted_at
        self.last_notification_at = now

    def merge(self, counts: Counter[tuple[str, str]], records: int) -> None:
        with self._lock:
            self.by_type.update(counts)
            self.records += records

    def rejection(self, event_type: str, reason: str) -> None:
        label = _label(event_type)
        with self._lock:
            self.by_type[(label, REJECTED)] += 1
            self.last_rejections.append(f"{label}: {reason[:500]}")
            del self.last_rejections[:-100]

    def summary(self) -> Summary:
        with self._lock:
            totals: Counter[str] = Counter()
            for (_, outcome), n in self.by_type.items():
                totals[_rollup(outcome)] += n
                if outcome == Outcome.CHANGED.value:
                    totals["changed"] += n
            return Summary(
                totals[APPLIED], totals["changed"], totals[IGNORED], totals[REJECTED], self.records
            )


_EVENT_TYPE = re.compile(r"[A-Za-z0-9_.:\-]{1,120}")
OTHER = "(other)"


def _label(event_type: str) -> str:
    """The counter key for an event type: notifications are untrusted input, so a type that
    does not look like one is counted under one key instead of growing the counters forever."""
    label = _labels.get(event_type)
    if label is None:
        label = event_type if _EVENT_TYPE.fullmatch(event_type) else OTHER
        if len(_labels) < 4096:
            _labels[event_type] = label
    return label


_labels: dict[str, str] = {}


def _rollup(outcome: str) -> str:
    if outcome == REJECTED:
        return REJECTED
    for member, group in _ROLLUP.items():
        if member.value == outcome:
            return group
    return IGNORED


class SyncService:
    def __init__(self, model: ComputeModel, publishers: Iterable[Publisher] = ()) -> None:
        self.model = model
        self.stats = Stats()
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
