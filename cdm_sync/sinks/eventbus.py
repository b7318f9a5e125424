"""In-process event bus: change records fanned out to filtered, asynchronous subscribers.

Why it exists: the sync service has one writer thread, and everything that wants to react to a
model change (sinks, the REST change feed, engines) must do so without ever slowing that writer
down. ``SyncService.add_publisher(bus.publish)`` hands every batch of change records to
:meth:`EventBus.publish` right after the apply; publish only filters the batch and appends it to
each subscriber's own bounded queue, then returns. It never blocks and never raises.

Subscribing (CloudStack's event bus style)::

    bus = EventBus()
    sub_id = bus.subscribe({"kind": "instance", "changed": "host"}, on_record)
    ...
    bus.unsubscribe(sub_id)
    bus.close()

A :class:`Filter` (or a dict of the same keys) selects records by ``kind``, ``op``, ``uuid``,
``changed`` (any changed field name), ``event_type`` (the cause's) and ``project`` (the record's
``project_id``). Each is an :mod:`fnmatch` pattern (``*``, ``?``, ``[seq]``, case-sensitive) or
``None`` for "any". A pattern only matches a value that is present: ``project="*"`` selects
instance records (nodes have no project), ``event_type="*"`` skips bootstrap records (no event
type), and ``changed=...`` never matches an ``add`` or ``remove`` (their ``changed`` is empty).

Delivery: each subscription has a daemon worker thread reading its own queue and calling the
callback with one :class:`~cdm_sync.model.ChangeRecord` at a time, in the order the records were
published, which is revision order because the single writer publishes in revision order. A slow
callback delays only its own subscription. A callback that raises is logged and counted in
``errors``, and the subscription carries on with the next record.

Overflow policy: each subscription's queue holds at most ``queue_size`` records. When it is full,
the *new* record is dropped for that subscriber only, and counted in ``dropped``; records already
queued are kept, so what the subscriber receives is always an ordered prefix plus later records,
never a reordering. Because revisions are gap-free over the model's life, a subscriber sees a
drop as a jump in ``record.revision`` (beyond the records its filter excludes). For an exact
report, pass ``on_gap=callable(first_missing_revision, last_missing_revision)`` to
:meth:`EventBus.subscribe`: the worker calls it, before delivering the next record, with the
revisions of the first and last record dropped in that run of drops (records in between that the
filter excludes were never due to the subscriber). A gap still pending when the bus closes is
reported after the drained records. Nothing is lost without being counted: for every
subscription ``matched == delivered + dropped + queued`` (see :class:`SubscriptionStats`).

Shutdown: :meth:`EventBus.unsubscribe` stops a subscription at once (records still queued for it
are discarded; the callback in progress, if any, finishes). :meth:`EventBus.close` stops accepting
records (anything published afterwards is counted as dropped), lets every worker drain its queue,
and waits for them; it is idempotent.
"""

from __future__ import annotations

import collections
import fnmatch
import logging
import re
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, get_args

from cdm_sync.model import ChangeRecord
from cdm_sync.model.changes import Kind, Op

LOG = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 10000

Callback = Callable[[ChangeRecord], object]
GapCallback = Callable[[int, int], object]

# The values ``kind`` and ``op`` can take; a pattern matching none of them is a typo.
_KINDS: tuple[str, ...] = get_args(Kind)
_OPS: tuple[str, ...] = get_args(Op)


@dataclass(frozen=True)
class Filter:
    """Which change records a subscription wants; every field is a fnmatch pattern or ``None``.

    All given fields must match (AND). ``changed`` matches when any field name in the record's
    ``changed`` matches. A pattern never matches an absent value (a node's project, a bootstrap
    record's event type).
    """

    kind: str | None = None
    op: str | None = None
    uuid: str | None = None
    changed: str | None = None
    event_type: str | None = None
    project: str | None = None
    _compiled: tuple[tuple[str, Callable[[str], Any]], ...] = field(
        init=False, repr=False, compare=False, default=()
    )

    def __post_init__(self) -> None:
        compiled = []
        for name in _FILTER_KEYS:
            pattern = getattr(self, name)
            if pattern is None:
                continue
            if not isinstance(pattern, str):
                raise ValueError(
                    f"event filter {name!r} must be a string pattern or None, "
                    f"got {type(pattern).__name__} {pattern!r}"
                )
            compiled.append((name, re.compile(fnmatch.translate(pattern)).match))
        for name, known in (("kind", _KINDS), ("op", _OPS)):
            pattern = getattr(self, name)
            if pattern is not None and not any(fnmatch.fnmatchcase(v, pattern) for v in known):
                raise ValueError(
                    f"event filter {name}={pattern!r} matches none of {', '.join(known)}"
                )
        # Frozen dataclass: the compiled matchers are derived state, set once here.
        object.__setattr__(self, "_compiled", tuple(compiled))

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> Filter:
        """A filter from a plain dict of the same keys; unknown keys are a ``ValueError``."""
        if not isinstance(spec, Mapping):
            raise ValueError(f"event filter must be a Filter or a dict, got {type(spec).__name__}")
        unknown = sorted(str(k) for k in spec if k not in _FILTER_KEYS)
        if unknown:
            raise ValueError(
                f"unknown event filter key(s) {', '.join(map(repr, unknown))}; "
                f"expected some of {', '.join(_FILTER_KEYS)}"
            )
        return cls(**spec)

    @property
    def matches_everything(self) -> bool:
        return not self._compiled

    def matches(self, record: ChangeRecord) -> bool:
        for name, match in self._compiled:
            if name == "changed":
                if not any(match(key) for key in record.changed):
                    return False
                continue
            value = _FIELD_OF[name](record)
            if value is None or not match(value):
                return False
        return True


_FILTER_KEYS: tuple[str, ...] = tuple(f.name for f in fields(Filter) if f.init)

# How each single-valued filter key reads its value off a record.
_FIELD_OF: dict[str, Callable[[ChangeRecord], str | None]] = {
    "kind": lambda r: r.kind,
    "op": lambda r: r.op,
    "uuid": lambda r: r.uuid,
    "event_type": lambda r: r.cause.event_type,
    "project": lambda r: r.project_id,
}


@dataclass(frozen=True)
class SubscriptionStats:
    """Counters of one subscription; ``matched == delivered + dropped + queued`` at all times.

    ``delivered`` counts records handed to the callback, whether or not it raised; ``errors``
    counts exceptions raised by the callback or the gap callback; ``queued`` includes the record
    being delivered.
    """

    matched: int
    delivered: int
    dropped: int
    errors: int
    queued: int


class _Subscription:
    """One subscriber: its filter, bounded queue, counters and worker thread."""

    def __init__(
        self,
        sub_id: str,
        record_filter: Filter,
        callback: Callback,
        on_gap: GapCallback | None,
        capacity: int,
    ) -> None:
        self.id = sub_id
        self.filter = record_filter
        self.callback = callback
        self.on_gap = on_gap
        self.capacity = capacity
        self._cond = threading.Condition(threading.Lock())
        # Items are (record, gap before it or None).
        self._items: collections.deque[tuple[ChangeRecord, tuple[int, int] | None]] = (
            collections.deque()
        )
        self._gap: tuple[int, int] | None = None  # drops not yet attached to a queued record
        self._closing = False  # drain, then stop
        self._cancelled = False  # stop now
        self._in_flight = False
        self.matched = self.delivered = self.dropped = self.errors = 0
        self.thread = threading.Thread(target=self._run, name=f"eventbus-{sub_id}", daemon=True)

    # -- publisher side (writer thread): short critical sections only ---------------------------

    def offer(self, records: list[ChangeRecord]) -> None:
        if self.filter.matches_everything:
            wanted = records
        else:
            wanted = [r for r in records if self.filter.matches(r)]
        if not wanted:
            return
        with self._cond:
            if self._cancelled:
                return
            self.matched += len(wanted)
            was_empty = not self._items
            space = 0 if self._closing else self.capacity - len(self._items)
            accepted, rejected = wanted[:space], wanted[space:]
            if accepted:
                # A pending gap travels with the first record accepted after it.
                self._items.append((accepted[0], self._gap))
                self._gap = None
                self._items.extend((record, None) for record in accepted[1:])
                if was_empty:  # the worker only ever waits on an empty queue
                    self._cond.notify()
            if rejected:  # drop the newest, count them, remember the run for on_gap
                self.dropped += len(rejected)
                first = self._gap[0] if self._gap is not None else rejected[0].revision
                self._gap = (first, rejected[-1].revision)

    def stats(self) -> SubscriptionStats:
        with self._cond:
            queued = len(self._items) + (1 if self._in_flight else 0)
            return SubscriptionStats(
                self.matched, self.delivered, self.dropped, self.errors, queued
            )

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._items.clear()
            self._gap = None
            self._cond.notify()

    # -- worker side ------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closing and not self._cancelled:
                    self._cond.wait()
                if self._cancelled:
                    return
                if not self._items:  # closing and drained: report a trailing gap, then stop
                    gap, self._gap = self._gap, None
                    record = None
                else:
                    record, gap = self._items.popleft()
                    self._in_flight = True
            if gap is not None:
                self._report_gap(*gap)
            if record is None:
                return
            self._deliver(record)

    def _report_gap(self, first: int, last: int) -> None:
        if self.on_gap is None:
            return
        try:
            self.on_gap(first, last)
        except Exception:
            LOG.exception("Event bus subscription %s: gap callback failed", self.id)
            with self._cond:
                self.errors += 1

    def _deliver(self, record: ChangeRecord) -> None:
        try:
            self.callback(record)
        except Exception:
            LOG.exception(
                "Event bus subscription %s: callback failed on revision %d",
                self.id,
                record.revision,
            )
            failed = True
        else:
            failed = False
        with self._cond:
            self._in_flight = False
            self.delivered += 1
            self.errors += int(failed)


class EventBus:
    """Fans change records out to subscribers; see the module docstring for the contract."""

    def __init__(self, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        _check_queue_size(queue_size)
        self.queue_size = queue_size
        self._lock = threading.Lock()
        # Replaced, never mutated, so publish reads it without taking the lock.
        self._subs: dict[str, _Subscription] = {}
        # Unsubscribed workers that may still be finishing a callback; close() waits for them.
        self._retiring: list[_Subscription] = []
        self._closed = False
        self._last_revision: int | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def subscribe(
        self,
        record_filter: Filter | Mapping[str, Any] | None,
        callback: Callback,
        *,
        on_gap: GapCallback | None = None,
        queue_size: int | None = None,
    ) -> str:
        """Start delivering matching records to ``callback``; return the subscription id.

        ``record_filter`` is a :class:`Filter`, a dict of its keys, or ``None`` for every record.
        ``queue_size`` overrides the bus default for this subscription.
        """
        if record_filter is None:
            record_filter = Filter()
        elif not isinstance(record_filter, Filter):
            record_filter = Filter.from_dict(record_filter)
        if not callable(callback):
            raise TypeError(f"event bus callback must be callable, got {callback!r}")
        if on_gap is not None and not callable(on_gap):
            raise TypeError(f"event bus on_gap must be callable, got {on_gap!r}")
        capacity = self.queue_size if queue_size is None else queue_size
        _check_queue_size(capacity)
        sub = _Subscription(str(uuidlib.uuid4()), record_filter, callback, on_gap, capacity)
        with self._lock:
            if self._closed:
                raise RuntimeError("event bus is closed")
            sub.thread.start()
            self._subs = {**self._subs, sub.id: sub}
        LOG.debug("Event bus subscription %s: %r", sub.id, record_filter)
        return sub.id

    def unsubscribe(self, sub_id: str, timeout: float | None = 5.0) -> bool:
        """Stop a subscription; False if there is no such subscription.

        Records still queued for it are discarded. Waits up to ``timeout`` seconds for a
        callback in progress to return (not when called from that callback itself).
        """
        with self._lock:
            sub = self._subs.get(sub_id)
            if sub is None:
                return False
            self._subs = {k: v for k, v in self._subs.items() if k != sub_id}
            self._retiring.append(sub)
        sub.cancel()
        if sub.thread is not threading.current_thread():
            sub.thread.join(timeout)
        return True

    def publish(self, records: Iterable[ChangeRecord]) -> None:
        """Queue ``records`` for every matching subscriber. Never blocks, never raises."""
        try:
            batch = records if isinstance(records, list) else list(records)
            if not batch:
                return
            self._check_order(batch)
            for sub in self._subs.values():
                sub.offer(batch)
        except Exception:  # the writer thread must never see a sink's problem
            LOG.exception("Event bus failed to publish a batch of change records")

    def stats(self) -> dict[str, SubscriptionStats]:
        """Counters per subscription id (subscriptions remain listed after :meth:`close`)."""
        return {sub_id: sub.stats() for sub_id, sub in self._subs.items()}

    def close(self, timeout: float | None = 10.0) -> bool:
        """Stop accepting records, let every worker drain its queue, wait for them.

        Returns True when all workers have stopped within ``timeout`` seconds (None: wait as
        long as it takes). Idempotent: a later call just waits again.
        """
        with self._lock:
            self._closed = True
            subs = list(self._subs.values())
            workers = subs + self._retiring
        for sub in subs:
            sub.close()
        deadline = None if timeout is None else time.monotonic() + timeout
        current = threading.current_thread()
        busy = []
        for sub in workers:
            if sub.thread is current:
                continue
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            sub.thread.join(remaining)
            if sub.thread.is_alive():
                busy.append(sub)
        if busy:
            LOG.warning(
                "Event bus closed with %d subscription(s) still delivering: %s",
                len(busy),
                ", ".join(f"{s.id} ({s.stats().queued} queued)" for s in busy),
            )
            return False
        return True

    def _check_order(self, batch: list[ChangeRecord]) -> None:
        # Per-subscriber order is publish order; warn if the publisher breaks revision order
        # (e.g. two threads applying and publishing concurrently).
        with self._lock:
            last = self._last_revision
            self._last_revision = (
                batch[-1].revision if last is None else max(last, batch[-1].revision)
            )
        if last is not None and batch[0].revision <= last:
            LOG.warning(
                "Event bus: revision %d published after revision %d; subscribers will see "
                "records out of revision order",
                batch[0].revision,
                last,
            )


def _check_queue_size(size: object) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"event bus queue size must be a positive integer, got {size!r}")
