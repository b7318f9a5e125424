"""The sync engine: gap-free bootstrap, two-speed audits, resync, and the model's sync state.

The engine is the service layer's clock and conscience. It knows nothing of Nova's HTTP API or
of RabbitMQ: it talks to a :class:`~cdm_sync.sync.ports.Collector` (listings) and a
:class:`~cdm_sync.sync.ports.NotificationGate` (the listener's buffer), and changes the model
only through :meth:`SyncService.submit` like every other source.

State (:class:`EngineState`)::

    NOT_SYNCED --bootstrap--> SYNCING --complete listing--> READY <--good full audit-- DEGRADED
                                  |                           |                          ^
                                  +--listing failed--> NOT_SYNCED   +--audit failed/untrusted--+

Nothing is READY before the first complete sync. DEGRADED means the model is served from
the last good knowledge plus notifications, but something is wrong, and ``reason`` says what
(each problem has a name, and the state is READY again when none is left):

- ``full``: a full audit could not complete or its listing could not be trusted for deletions
  (a failed page, a cell down, rejected items, a listing that shrank by more than
  ``full_shrink_limit``); the next good full audit clears it;
- ``cheap``: likewise for a cheap audit; a good cheap or full audit clears it (its window
  starts at the last good listing, so it covers the gap);
- ``overdue``: Nova has not answered any listing for twice the cheap interval (a hung API), or
  no full audit has completed for twice the full interval; the watchdog clears it;
- names the daemon reports (``listener``: the notification listener is down).

What is applied from an imperfect listing:

- a listing that raised :class:`ListingError` (timeout, failed page): nothing, not even the
  partial items (they may be a skewed sample; the next audit reads them properly);
- a listing read to the end but marked ``incomplete`` or with rejected items: additions,
  updates and the deletions it states explicitly (servers listed as DELETED), never deletions
  inferred from absence;
- a full listing that shrank by more than ``full_shrink_limit`` versus the live model: the same.

Concurrency: one engine lock serialises bootstrap, audits and resync (a resync waits for a
running audit; a scheduled cheap audit is skipped if another run is in progress). No model or
writer lock is held across a listing: notifications keep flowing while Nova is read, and the
apply path's version check keeps anything they taught the model from being undone.
"""

from __future__ import annotations

import datetime
import enum
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cdm_sync.model import (
    HypervisorObserved,
    InstanceDeleted,
    InstanceObserved,
    Outcome,
    ServiceObserved,
)
from cdm_sync.model.changes import format_timestamp
from cdm_sync.runtime import settle_heap
from cdm_sync.sync import bootstrap
from cdm_sync.sync.audit import (
    COMPUTE_NODE,
    DRIFT_KINDS,
    GHOST,
    INSTANCE,
    MISSING,
    STALE_FIELD,
    AuditReport,
    drift_by_kind,
    reconcile,
)
from cdm_sync.sync.ports import Collector, Listing, ListingError, NotificationGate, Progress
from cdm_sync.sync.service import SyncService

LOG = logging.getLogger(__name__)

DEFAULT_CHEAP_INTERVAL = 60.0
DEFAULT_FULL_INTERVAL = 3600.0
# How often a full audit's heap settling is deep (see cdm_sync.runtime.settle_heap): the deep
# pass reclaims cycles that died while frozen, a slow trickle, so once a day is enough.
DEEP_SETTLE_INTERVAL = 86400.0
# A compute node first heard of in a notification (service.create, an instance on an unknown
# host) is a placeholder until Nova's hypervisor listing gives its uuid and capacity. Nova
# creates the node record a moment after the service, so the refresh waits, then retries with
# doubling delays (2 + 4 + ... + 64 s) before leaving it to the next full audit.
DEFAULT_NODE_REFRESH_DELAY = 2.0
NODE_REFRESH_ATTEMPTS = 6
DEFAULT_CHANGE_SKEW = 120.0
DEFAULT_FULL_SHRINK_LIMIT = 0.1
# What the model observed less than this long before a full listing began is never deleted for
# being absent from it: Nova shows what it committed before a listing's query, but a lagging
# database replica or an API worker may not yet. Short, because a longer one delays repairing
# a lost delete of something observed just before the audit until the next full audit.
DEFAULT_DELETION_MARGIN = 5.0

# Results of one run (bootstrap, full audit, cheap audit).
OK = "ok"
DEGRADED_RESULT = "degraded"
FAILED = "failed"
SKIPPED = "skipped"

# Problems that keep a synced model from READY (see the module docstring).
_BY_FULL = "full"
_BY_CHEAP = "cheap"
OVERDUE = "overdue"
# An audit is overdue after this many of its intervals without a completed run (or, for a
# listing, without an answer from Nova).
OVERDUE_FACTOR = 2.0


class EngineState(enum.Enum):
    NOT_SYNCED = "not_synced"
    SYNCING = "syncing"
    READY = "ready"
    DEGRADED = "degraded"


@dataclass
class RunReport:
    """One bootstrap, full audit (``audit`` or ``resync``) or cheap audit."""

    kind: str  # "bootstrap", "full", "cheap"
    source: str  # the cause.source of what it applied
    started_at: float
    duration: float = 0.0
    result: str = OK
    reason: str | None = None
    # Corrections that changed the model, by (element, kind).
    drift: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Events submitted and their outcomes.
    outcomes: Counter[str] = field(default_factory=Counter)
    records: int = 0
    listed_servers: int = 0
    rejected: int = 0
    # Notifications the gate had buffered during a bootstrap.
    buffered: int = 0
    audit: AuditReport | None = None

    def drift_by_kind(self) -> dict[str, int]:
        return drift_by_kind(self.drift)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": self.source,
            "started_at": self.started_at,
            "duration": round(self.duration, 3),
            "result": self.result,
            "reason": self.reason,
            "drift": drift_by_kind(self.drift),
            "drift_by_element": _by_element(self.drift),
            "outcomes": dict(self.outcomes),
            "records": self.records,
            "listed_servers": self.listed_servers,
            "rejected": self.rejected,
            "buffered": self.buffered,
        }

    def line(self) -> str:
        drift = ", ".join(f"{k} {v}" for k, v in self.drift_by_kind().items())
        text = (
            f"{self.kind} ({self.source}) {self.result} in {self.duration:.2f}s: "
            f"{self.listed_servers} servers listed, drift corrected: {drift}, "
            f"change records {self.records}"
        )
        if self.buffered:
            text += f", {self.buffered} buffered notifications applied"
        if self.reason:
            text += f"; {self.reason}"
        return text


def _by_element(drift: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    return {
        element: {kind: drift[(element, kind)] for kind in DRIFT_KINDS}
        for element in (INSTANCE, COMPUTE_NODE)
    }


class SyncEngine:
    """Bootstrap, audits, resync and the sync state of one :class:`SyncService`'s model."""

    def __init__(
        self,
        service: SyncService,
        collector: Collector,
        gate: NotificationGate | None = None,
        *,
        full_shrink_limit: float = DEFAULT_FULL_SHRINK_LIMIT,
        change_skew: float = DEFAULT_CHANGE_SKEW,
        cheap_interval: float = DEFAULT_CHEAP_INTERVAL,
        full_interval: float = DEFAULT_FULL_INTERVAL,
        deletion_margin: float = DEFAULT_DELETION_MARGIN,
        clock: Callable[[], float] | None = None,
        node_refresh_delay: float = DEFAULT_NODE_REFRESH_DELAY,
    ) -> None:
        if not 0.0 <= full_shrink_limit <= 1.0:
            raise ValueError(f"full_shrink_limit must be in [0, 1], got {full_shrink_limit!r}")
        if change_skew < 0:
            raise ValueError(f"change_skew must be >= 0, got {change_skew!r}")
        if deletion_margin < 0:
            raise ValueError(f"deletion_margin must be >= 0, got {deletion_margin!r}")
        # One clock with the model: a listing's start is compared with the moments the model
        # observed elements (never with the stamps Nova's hosts write).
        clock = service.model.clock if clock is None else clock
        self.service = service
        self.collector = collector
        self.gate = gate
        self.full_shrink_limit = full_shrink_limit
        self.change_skew = change_skew
        self.cheap_interval = cheap_interval
        self.full_interval = full_interval
        self.deletion_margin = deletion_margin
        self._clock = clock
        # Serialises bootstrap, audits and resync; never held by the notification path.
        self._lock = threading.Lock()
        # Guards the state and the figures status() reports (held only for a few assignments).
        self._status_lock = threading.Lock()
        self._state = EngineState.NOT_SYNCED
        self._state_since = clock()
        self._reason: str | None = "no sync yet"
        self._synced = False
        self._problems: dict[str, str] = {}
        # When Nova last answered (a listing's page, or a run's end), and when a full audit
        # (or the bootstrap) last completed: the watchdog's evidence.
        self._last_answer = clock()
        self._last_full_end = clock()
        self._high_water: float | None = None
        self._deep_settled_at: float | None = None  # clock time of the last deep settle_heap
        self._last_full: RunReport | None = None
        self._last_cheap: RunReport | None = None
        self._drift: Counter[tuple[str, str]] = Counter()
        # Corrections the last full audit could not make (see sync.audit): the next one may.
        self._contested: dict[tuple[str, str], float] = {}
        self._counters: Counter[str] = Counter()
        self._scheduler: Any = None
        self.node_refresh_delay = node_refresh_delay
        self._nodes_wanted = threading.Event()
        self._stopping = threading.Event()
        self._node_refresher: threading.Thread | None = None
        service.add_publisher(self._watch_placeholders)

    # -- state ---------------------------------------------------------------------------------

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def high_water(self) -> float | None:
        """Capture time of the last listing read to the end (cheap audits start from it)."""
        return self._high_water

    def status(self) -> dict[str, Any]:
        """State, last audits, drift and counters, as plain JSON-able values."""
        with self._status_lock:
            return {
                "state": self._state.value,
                "since": self._state_since,
                "reason": self._reason,
                "high_water": self._high_water,
                "last_full_audit": self._last_full.to_dict() if self._last_full else None,
                "last_cheap_audit": self._last_cheap.to_dict() if self._last_cheap else None,
                "drift": drift_by_kind(self._drift),
                "drift_by_element": _by_element(self._drift),
                "counters": dict(self._counters),
                "problems": dict(self._problems),
                "scheduled": self._scheduler is not None,
            }

    def _set_state(self, state: EngineState, reason: str | None = None) -> None:
        with self._status_lock:
            previous, before = self._state, self._reason
            self._state = state
            self._reason = reason
            if state is not previous:
                self._state_since = self._clock()
        if state is previous:
            if state is EngineState.DEGRADED and reason != before:
                LOG.warning("Model still degraded: %s", reason)
            return
        if state is EngineState.DEGRADED or (state is EngineState.NOT_SYNCED and reason):
            LOG.warning("Model state %s -> %s: %s", previous.value, state.value, reason)
        else:
            LOG.info("Model state %s -> %s", previous.value, state.value)

    def report_problem(self, name: str, reason: str) -> None:
        """Something outside the engine keeps the model from READY (the daemon: ``listener``);
        shown as the reason while it lasts."""
        self._degrade(name, reason)

    def clear_problem(self, name: str) -> None:
        self._recovered(name)

    def _degrade(self, by: str, reason: str) -> None:
        """Note a problem (see the module docstring); DEGRADED once synced."""
        with self._status_lock:
            self._problems[by] = reason
        self._refresh_state()

    def _recovered(self, by: str) -> None:
        """A problem is over; a good full audit vouches for what a cheap one found too."""
        with self._status_lock:
            self._problems.pop(by, None)
            if by == _BY_FULL:
                self._problems.pop(_BY_CHEAP, None)
        self._refresh_state()

    def _refresh_state(self) -> None:
        if not self._synced:
            return
        with self._status_lock:
            reasons = "; ".join(self._problems.values())
        if reasons:
            self._set_state(EngineState.DEGRADED, reasons)
        else:
            self._set_state(EngineState.READY)

    def _count(self, name: str, n: int = 1) -> None:
        with self._status_lock:
            self._counters[name] += n

    def _listing_failed(self, report: RunReport, started: float, by: str, reason: str) -> RunReport:
        """A full (``by`` full) or cheap audit whose listing could not be read: count it,
        mark the model DEGRADED with the reason, and close the report."""
        report.result, report.reason = FAILED, reason
        self._count(f"{by}_audit_failures")
        self._degrade(by, f"{by} audit: {reason}")
        return self._finish(report, started)

    def _answered(self, progress: Progress | None) -> Progress:
        """``progress``, noting first that Nova answered (the watchdog's evidence)."""

        def tell(what: str, count: int) -> None:
            self._last_answer = self._clock()
            if progress is not None:
                progress(what, count)

        return tell

    def _finish(self, report: RunReport, started: float) -> RunReport:
        report.duration = time.monotonic() - started
        now = self._clock()
        self._last_answer = now
        if report.kind in ("full", "bootstrap"):  # both list Nova in full
            self._last_full_end = now
        with self._status_lock:
            self._drift.update(report.drift)
            self._counters["corrections"] += sum(report.drift.values())
            if report.kind == "cheap":
                self._last_cheap = report
            else:
                self._last_full = report
        log = LOG.warning if report.result in (FAILED, DEGRADED_RESULT) else LOG.info
        log("Sync %s", report.line())
        return report

    # -- bootstrap -----------------------------------------------------------------------------

    def bootstrap(self, progress: Progress | None = None) -> RunReport:
        """List Nova and build the model without missing a notification.

        The gate buffers notifications from before the listing starts until the listing is
        applied, then releases them through the apply path, where versions decide: a
        notification newer than the listing wins, an older one is dropped as stale.
        Raises :class:`ListingError` (the model stays NOT_SYNCED) if the listing fails.
        """
        with self._lock:
            return self._bootstrap(progress)

    def _bootstrap(self, progress: Progress | None) -> RunReport:
        started = time.monotonic()
        report = RunReport("bootstrap", "bootstrap", self._clock())
        self._count("bootstraps")
        self._set_state(EngineState.SYNCING)
        held = False
        try:
            if self.gate is not None:
                self.gate.hold()
                held = True
            listed_at = self._clock() - self.deletion_margin
            try:
                listing = self.collector.full_listing(self._answered(progress))
            except ListingError as exc:
                report.result, report.reason = FAILED, f"listing failed: {exc.reason}"
                raise
            report.listed_servers = listing.server_count
            if self.service.model.instance_count == 0 and self.service.model.node_count == 0:
                untrusted = self._load(listing, report)
                if held:
                    held = False
                    self._release(report)
            else:
                # A retry after a failed bootstrap: the notifications released then built part
                # of a model. Those held during this listing are released first, as during an
                # audit (observed since the listing began, they must not fall to its absences);
                # then the listing is reconciled (deletions included when trustworthy).
                if held:
                    held = False
                    self._release(report)
                untrusted = self._reconcile_bootstrap(listing, report, listed_at)
        except BaseException as exc:
            if held:
                held = False
                self._release(report)
            if report.reason is None:
                report.result, report.reason = FAILED, f"bootstrap failed: {exc!r}"
            self._count("bootstrap_failures")
            self._synced = False
            self._set_state(EngineState.NOT_SYNCED, report.reason)
            self._finish(report, started)
            raise
        self._high_water = listing.captured_at
        self._synced = True
        if untrusted:
            report.result, report.reason = DEGRADED_RESULT, "; ".join(untrusted)
            self._degrade(_BY_FULL, report.reason)
        else:
            self._recovered(_BY_FULL)
        del listing
        self._settle_heap()
        return self._finish(report, started)

    def _load(self, listing: Listing, report: RunReport) -> list[str]:
        """Load a bootstrap listing into the empty model; returns the reasons it cannot be
        trusted (if any)."""
        untrusted = list(listing.incomplete)
        before = self.service.model.revision
        rejected = bootstrap.load(self.service, listing)
        report.records = self.service.model.revision - before
        report.rejected = len(rejected)
        if rejected:
            untrusted.append(f"{len(rejected)} listing items could not be read")
        return untrusted

    def _reconcile_bootstrap(
        self, listing: Listing, report: RunReport, listed_at: float
    ) -> list[str]:
        """Reconcile a model a failed bootstrap left with a new listing; returns the reasons it
        cannot be trusted (if any)."""
        audit = reconcile(
            self.service,
            listing,
            "bootstrap",
            untrusted=listing.incomplete,
            shrink_limit=self.full_shrink_limit,
            listed_at=listed_at,
        )
        self._take_audit(report, audit)
        # The listing's incomplete reasons, if any, are among deletes_skipped's.
        return [audit.deletes_skipped] if audit.deletes_skipped else []

    def _release(self, report: RunReport) -> None:
        assert self.gate is not None
        report.buffered = self.gate.release()
        LOG.info("Bootstrap: %d notifications buffered during the listing applied", report.buffered)

    # -- full audit and resync -----------------------------------------------------------------

    def full_audit(self, progress: Progress | None = None) -> RunReport:
        """Relist everything, diff against the model, correct (cause ``audit``)."""
        with self._lock:
            return self._full("audit", progress)

    def resync(self, progress: Progress | None = None) -> RunReport:
        """A full audit now, with cause ``resync`` (or the bootstrap, if none succeeded yet).

        Waits for a running audit to finish first. Returns the report (``result`` ``failed``
        with the reason if the listing failed, rather than raising).
        """
        with self._lock:
            self._count("resyncs")
            if self._state is EngineState.NOT_SYNCED:
                try:
                    return self._bootstrap(progress)
                except ListingError:
                    assert self._last_full is not None
                    return self._last_full
            return self._full("resync", progress)

    def _full(self, source: str, progress: Progress | None) -> RunReport:
        started = time.monotonic()
        report = RunReport("full", source, self._clock())
        self._count("full_audits")
        listed_at = self._clock() - self.deletion_margin
        try:
            listing = self.collector.full_listing(self._answered(progress))
        except ListingError as exc:
            return self._listing_failed(report, started, _BY_FULL, f"listing failed: {exc.reason}")
        except Exception as exc:
            self._listing_failed(report, started, _BY_FULL, f"listing failed: {exc!r}")
            raise
        report.listed_servers = listing.server_count
        try:
            audit = reconcile(
                self.service,
                listing,
                "resync" if source == "resync" else "audit",
                untrusted=listing.incomplete,
                shrink_limit=self.full_shrink_limit,
                listed_at=listed_at,
                contested=self._contested,
            )
        except Exception as exc:
            report.result, report.reason = FAILED, f"audit failed: {exc!r}"
            self._count("full_audit_failures")
            self._degrade(_BY_FULL, f"full audit: {report.reason}")
            self._finish(report, started)
            raise
        self._take_audit(report, audit)
        self._contested = audit.contested
        self._high_water = max(self._high_water or 0.0, listing.captured_at)
        if audit.deletes_skipped:
            report.result, report.reason = DEGRADED_RESULT, audit.deletes_skipped
            self._degrade(_BY_FULL, f"full audit: {audit.deletes_skipped}")
        else:
            self._recovered(_BY_FULL)
        del listing, audit
        self._settle_heap()
        return self._finish(report, started)

    def _settle_heap(self) -> None:
        """After a bootstrap or full audit: take what notifications replaced since the last
        one, and what the listing left behind, out of the cyclic collector's view (see
        :mod:`cdm_sync.runtime`); deep at the first call and then once a day."""
        now = self._clock()
        deep = self._deep_settled_at is None or now - self._deep_settled_at >= DEEP_SETTLE_INTERVAL
        settle_heap(deep=deep)
        if deep:
            self._deep_settled_at = now

    @staticmethod
    def _take_audit(report: RunReport, audit: AuditReport) -> None:
        report.audit = audit
        report.drift.update(audit.drift)
        report.outcomes.update(audit.outcomes)
        report.records = audit.records
        report.rejected = len(audit.rejected)

    # -- cheap audit ---------------------------------------------------------------------------

    def cheap_audit(self, progress: Progress | None = None) -> RunReport:
        """Apply what Nova changed since the high water mark (less the skew), deletions
        included; skipped until the first sync has completed."""
        with self._lock:
            return self._cheap(progress)

    def _cheap(self, progress: Progress | None) -> RunReport:
        started = time.monotonic()
        report = RunReport("cheap", "audit", self._clock())
        high_water = self._high_water
        if self._state in (EngineState.NOT_SYNCED, EngineState.SYNCING) or high_water is None:
            report.result, report.reason = SKIPPED, "no complete sync yet"
            return report
        self._count("cheap_audits")
        since = high_water - self.change_skew
        try:
            listing = self.collector.changes_since(since, self._answered(progress))
        except ListingError as exc:
            reason = f"changes listing failed: {exc.reason}"
            return self._listing_failed(report, started, _BY_CHEAP, reason)
        except Exception as exc:
            self._listing_failed(report, started, _BY_CHEAP, f"changes listing failed: {exc!r}")
            raise
        report.listed_servers = listing.server_count
        before = self.service.model.revision
        for event in listing.events("audit"):
            element, kind = self._observation_kind(event)
            outcome = self.service.submit(event)
            report.outcomes[outcome.value] += 1
            if outcome is Outcome.CHANGED:
                report.drift[(element, kind)] += 1
        report.records = self.service.model.revision - before
        report.rejected = len(listing.rejected)
        self._high_water = max(high_water, listing.captured_at)
        untrusted = list(listing.incomplete)
        if listing.rejected:
            untrusted.append(f"{len(listing.rejected)} listing items could not be read")
        if untrusted:
            report.result, report.reason = DEGRADED_RESULT, "; ".join(untrusted)
            self._degrade(_BY_CHEAP, f"cheap audit: {report.reason}")
        else:
            self._recovered(_BY_CHEAP)
        return self._finish(report, started)

    def _observation_kind(self, event: Any) -> tuple[str, str]:
        """What a correction would be if it changes the model (looked up before applying)."""
        model = self.service.model
        kind = type(event)
        if kind is InstanceDeleted:
            return INSTANCE, GHOST
        if kind is InstanceObserved:
            return INSTANCE, MISSING if model.instance(event.uuid) is None else STALE_FIELD
        if kind is HypervisorObserved:
            return COMPUTE_NODE, MISSING if model.node(event.uuid) is None else STALE_FIELD
        if kind is ServiceObserved:
            return COMPUTE_NODE, STALE_FIELD if model.nodes_by_host(event.host) else MISSING
        return COMPUTE_NODE, GHOST

    # -- watchdog ------------------------------------------------------------------------------

    def check_overdue(self) -> str | None:
        """DEGRADED (problem ``overdue``) while Nova has not answered any listing for
        ``OVERDUE_FACTOR`` cheap intervals (a hung API: each audit in between was skipped or is
        stuck) or no full audit has completed for ``OVERDUE_FACTOR`` full intervals; cleared
        when that is over. Runs on the schedule; returns the reason, if any."""
        if not self._synced:
            return None
        now = self._clock()
        reason = None
        if now - self._last_answer > OVERDUE_FACTOR * self.cheap_interval:
            running = "a sync run is in progress" if self._lock.locked() else "no run is running"
            reason = (
                f"overdue: Nova has not answered a listing since "
                f"{format_timestamp(self._last_answer)} (cheap audits every "
                f"{self.cheap_interval:g}s; {running}): is the compute API hanging?"
            )
        elif now - self._last_full_end > OVERDUE_FACTOR * self.full_interval:
            reason = (
                f"overdue: no full audit has completed since "
                f"{format_timestamp(self._last_full_end)} (every {self.full_interval:g}s)"
            )
        if reason is None:
            self._recovered(OVERDUE)
        else:
            self._degrade(OVERDUE, reason)
        return reason

    # -- schedule ------------------------------------------------------------------------------

    def start_schedule(
        self, cheap_interval: float | None = None, full_interval: float | None = None
    ) -> None:
        """Run the cheap and the full audit periodically in a background scheduler.

        Each job runs at most once at a time and missed runs are coalesced. Until the first
        sync completes, the cheap job retries the bootstrap instead.
        """
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES
        from apscheduler.schedulers.background import BackgroundScheduler

        if self._scheduler is not None:
            raise RuntimeError("the schedule is already running")
        cheap = self.cheap_interval if cheap_interval is None else cheap_interval
        full = self.full_interval if full_interval is None else full_interval
        self.cheap_interval, self.full_interval = cheap, full
        scheduler = BackgroundScheduler(timezone=datetime.UTC)
        # The watchdog checks often enough to notice an overdue run within a fraction of it.
        watchdog = max(0.1, min(cheap / 4, 15.0))
        for job_id, func, seconds in (
            ("cdm-sync-cheap-audit", self._scheduled_cheap, cheap),
            ("cdm-sync-full-audit", self._scheduled_full, full),
            ("cdm-sync-watchdog", self._scheduled_watchdog, watchdog),
        ):
            scheduler.add_job(
                func,
                "interval",
                seconds=seconds,
                id=job_id,
                name=job_id,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
        # A run still going when its next is due is skipped by the scheduler: count it too.
        scheduler.add_listener(lambda event: self._count("skipped_busy"), EVENT_JOB_MAX_INSTANCES)
        scheduler.start()
        self._scheduler = scheduler
        self._stopping.clear()
        self._node_refresher = threading.Thread(
            target=self._refresh_nodes_when_wanted, name="node-refresh", daemon=True
        )
        self._node_refresher.start()
        LOG.info("Audits scheduled: cheap every %ss, full every %ss", cheap, full)

    # -- nodes first heard of in notifications -----------------------------------------------

    def _watch_placeholders(self, records: list[Any]) -> None:
        """A change publisher: notes a placeholder node that a notification created (only an
        Event is set: publishers must not block the writer)."""
        for record in records:
            if (
                record.kind == "compute_node"
                and record.op != "remove"
                and record.element.placeholder
                and record.cause.source == "notification"
            ):
                self._nodes_wanted.set()
                return

    def refresh_nodes(self, progress: Progress | None = None) -> int:
        """Read Nova's services and hypervisors (no servers) and apply them (cause ``audit``):
        placeholders get their real uuid and capacity. Returns how many placeholders remain.
        Deletes nothing. Raises ListingError."""
        with self._lock:
            listing = self.collector.nodes_listing(self._answered(progress))
            for event in listing.events("audit"):
                self.service.submit(event)
            self._count("node_refreshes")
        left = sum(1 for node in self.service.model.nodes() if node.placeholder)
        LOG.info("Compute nodes refreshed from Nova; %d placeholder node(s) left", left)
        return left

    def _refresh_nodes_when_wanted(self) -> None:
        while not self._stopping.is_set():
            self._nodes_wanted.wait()
            if self._stopping.is_set():
                return
            self._nodes_wanted.clear()
            delay = self.node_refresh_delay
            for _ in range(NODE_REFRESH_ATTEMPTS):
                if self._stopping.wait(delay):
                    return
                try:
                    if self.refresh_nodes() == 0:
                        break
                except ListingError as exc:
                    LOG.warning("Compute node refresh failed: %s", exc.reason)
                except Exception:
                    LOG.exception("Compute node refresh failed")
                delay *= 2

    def stop(self, wait: bool = True) -> None:
        """Stop the schedule; with ``wait``, let a running audit finish first."""
        self._stopping.set()
        self._nodes_wanted.set()  # wake the node refresher so it sees the stop
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.shutdown(wait=wait)
            LOG.info("Audit schedule stopped")
        refresher, self._node_refresher = self._node_refresher, None
        if refresher is not None and wait:
            refresher.join(timeout=30)

    def _scheduled_cheap(self) -> None:
        # A cheap audit is not worth waiting for: the next one covers the same window.
        if not self._lock.acquire(blocking=False):
            self._count("skipped_busy")
            LOG.info("Cheap audit skipped: another sync run is in progress")
            return
        try:
            if self._state is EngineState.NOT_SYNCED:
                self._bootstrap(None)
            else:
                self._cheap(None)
        except Exception:
            LOG.exception("Scheduled cheap audit failed")
        finally:
            self._lock.release()

    def _scheduled_watchdog(self) -> None:
        try:
            self.check_overdue()
        except Exception:
            LOG.exception("The audit watchdog failed")

    def _scheduled_full(self) -> None:
        # A full audit waits (a cheap audit is short); skipping it would cost a whole interval.
        with self._lock:
            try:
                if self._state is EngineState.NOT_SYNCED:
                    self._bootstrap(None)
                else:
                    self._full("audit", None)
            except Exception:
                LOG.exception("Scheduled full audit failed")


def engine_from_conf(
    conf: Any,
    service: SyncService,
    collector: Collector,
    gate: NotificationGate | None = None,
) -> SyncEngine:
    """The engine configured from ``[sync]`` (see :mod:`cdm_sync.conf.sync`)."""
    opts = conf.sync
    return SyncEngine(
        service,
        collector,
        gate,
        full_shrink_limit=opts.full_shrink_limit,
        change_skew=opts.change_skew,
        cheap_interval=opts.cheap_interval,
        full_interval=opts.full_interval,
        deletion_margin=opts.deletion_margin,
    )


__all__ = [
    "DEFAULT_CHANGE_SKEW",
    "DEFAULT_CHEAP_INTERVAL",
    "DEFAULT_DELETION_MARGIN",
    "DEFAULT_FULL_INTERVAL",
    "DEFAULT_FULL_SHRINK_LIMIT",
    "EngineState",
    "RunReport",
    "SyncEngine",
    "engine_from_conf",
]
