"""Full audit: load a complete Nova listing into a shadow model, diff it with the live one, correct.

The listing (a :class:`~cdm_sync.nova.snapshot.Snapshot`, from a file or a live collector) is
first resolved in a *shadow* :class:`~cdm_sync.model.ComputeModel` that nobody reads and nothing
publishes from (:func:`build_shadow`). The shadow resolves what the listing means (which node
each server is on, placeholders, flavors) exactly as the live model would, so the diff is a
comparison of immutable element tuples, cheap enough for 200,000 instances: equal elements are
skipped at the cost of one tuple comparison. What differs becomes a correction:

- an element the shadow has and the live model lacks (a dropped create): ``missing``;
- an element the live model has and the listing lacks (a dropped delete): ``ghost``;
- an element both have with different fields (a dropped update): ``stale_field``.

A correction is the listing's own event for that element (not one rebuilt from the shadow), so
it carries the listing's per-element version (the server's ``updated`` stamp and the capture
time) and proves only the fields the listing read (a field the listing lacks stays UNKNOWN and
is never overwritten). Corrections go through :meth:`SyncService.submit` one at a time, with
``cause.source`` ``audit`` (``resync``, ``bootstrap``): the apply path's version check refuses
any that is older than what the live model learned after the listing started, so an audit never
undoes a newer notification, and no lock is held across the listing or the diff (notifications
keep flowing; each correction takes the writer lock only for its own apply).

Deletions are inferred from absence, so they are only made when the listing can be trusted
for them: see :func:`reconcile`'s ``untrusted`` and ``shrink_limit``. Drift is counted when a
correction actually changed the live model (a difference the model had already repaired by a
newer notification is not drift).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cdm_sync.model import (
    UNKNOWN,
    Cause,
    ComputeModel,
    ComputeNodeGone,
    Event,
    HypervisorObserved,
    Instance,
    InstanceDeleted,
    InstanceObserved,
    Outcome,
    ServiceObserved,
    Version,
)
from cdm_sync.model.events import Source
from cdm_sync.nova.snapshot import Snapshot, Translation, interned, snapshot_events
from cdm_sync.runtime import gc_paused
from cdm_sync.sync.service import SyncService

LOG = logging.getLogger(__name__)

MISSING = "missing"
GHOST = "ghost"
STALE_FIELD = "stale_field"
DRIFT_KINDS = (MISSING, GHOST, STALE_FIELD)
INSTANCE = "instance"
COMPUTE_NODE = "compute_node"

# How many drifted elements are named in the log per audit (the counts are always complete).
LOG_SAMPLE = 10


@dataclass
class AuditReport:
    """What one full audit found and did."""

    source: str
    # Outcome of every correction submitted (changed, unchanged, stale, tombstoned, ...).
    outcomes: Counter[str] = field(default_factory=Counter)
    # Change records the corrections produced.
    records: int = 0
    # Listing items that could not be read (their reasons).
    rejected: list[str] = field(default_factory=list)
    # Corrections that changed the live model, by (element, kind): ("instance", "ghost").
    drift: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Corrections refused because the live model knew something newer than the listing.
    newer_in_model: int = 0
    # Why deletions inferred from absence were not made (None: they were, if any were due).
    deletes_skipped: str | None = None
    listed_instances: int = 0
    listed_nodes: int = 0
    # Seconds spent building the shadow, diffing, applying corrections.
    timings: dict[str, float] = field(default_factory=dict)

    def drift_by_kind(self) -> dict[str, int]:
        """Drift totals by kind (instances and compute nodes together)."""
        totals = dict.fromkeys(DRIFT_KINDS, 0)
        for (_, kind), n in self.drift.items():
            totals[kind] += n
        return totals

    @property
    def corrections(self) -> int:
        return sum(self.drift.values())

    def line(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        drift = ", ".join(f"{k} {v}" for k, v in self.drift_by_kind().items())
        text = f"{self.source}: {parts or 'nothing to do'}; drift {drift}"
        text += f"; change records {self.records}"
        if self.deletes_skipped:
            text += f"; deletions skipped ({self.deletes_skipped})"
        return text


@dataclass
class Shadow:
    """A listing resolved as the live model would resolve it, with the event behind each element.

    ``model`` holds the listing's compute nodes (real ones and the placeholders its servers
    imply) and the instances that needed the full apply path to be resolved; ``instances``
    holds every listed instance as a model built from the listing alone would hold it.
    """

    model: ComputeModel
    source: Source
    captured_at: float
    instances: dict[str, Instance]
    instance_events: dict[str, InstanceObserved | InstanceDeleted]
    hypervisor_events: dict[str, HypervisorObserved]
    service_events: dict[str, ServiceObserved]
    rejected: list[str]


def build_shadow(snapshot: Snapshot, source: Source = "audit", *, consume: bool = False) -> Shadow:
    """Resolve a listing in a fresh model nobody reads; keep each element's latest event.

    The result is what applying every listing event to a fresh model gives, but most servers
    never enter that model: a server whose node the listing names (the normal case) is
    resolved by :meth:`ComputeModel.preview_new_instance`, which builds the same element
    without the graph edge, indexes and change record a full apply would make for nobody.
    Servers that need a placeholder node take the full apply path, in listing order. The
    previews are exact while no server is listed twice and no node follows a server (as
    :func:`snapshot_events` yields them); a listing breaking either is applied in full instead.

    Servers are read without interning their strings (the events are compared and dropped;
    :func:`reconcile` interns the few that become corrections). With ``consume``,
    ``snapshot``'s server items are released as they are read (see :func:`snapshot_events`):
    for a listing nothing else will read again.
    """
    translation = Translation()
    shadow = _fresh_shadow_model(snapshot.captured_at)
    events: list[Event] = []
    instances: dict[str, Instance] = {}
    instance_events: dict[str, InstanceObserved | InstanceDeleted] = {}
    hypervisors: dict[str, HypervisorObserved] = {}
    services: dict[str, ServiceObserved] = {}
    applied: list[str] = []
    exact = True
    servers_seen = False
    apply = shadow.apply_with_outcome
    preview = shadow.preview_new_instance
    listed = snapshot_events(snapshot, source, translation, consume=consume, intern=False)
    with gc_paused(freeze=False):
        for event in listed:
            events.append(event)
            kind = type(event)
            if kind is InstanceObserved or kind is InstanceDeleted:
                servers_seen = True
                key = event.uuid
                known: Any = instance_events.get(key)
                if known is not None:
                    exact = False  # listed twice
                    if event.version.older_than(known.version):
                        continue
                instance_events[key] = event
                if not exact:
                    continue
                if kind is InstanceObserved:
                    element = preview(event)
                    if element is not None:
                        instances[key] = element
                        continue
                apply(event)
                applied.append(key)
                continue
            if servers_seen:
                exact = False  # a node after a server: it could move a previewed server
            if kind is HypervisorObserved:
                hypervisors[event.uuid] = event
            elif kind is ServiceObserved:
                services[event.host] = event
            if exact:
                apply(event)
        if exact:
            for key in applied:
                element = shadow.instance(key)
                if element is not None:
                    instances[key] = element
        else:
            shadow = _fresh_shadow_model(snapshot.captured_at)
            for event in events:
                shadow.apply_with_outcome(event)
            instances = {element.uuid: element for element in shadow.instances()}
    return Shadow(
        shadow,
        source,
        snapshot.captured_at,
        instances,
        instance_events,
        hypervisors,
        services,
        translation.rejected,
    )


def _fresh_shadow_model(captured_at: float) -> ComputeModel:
    # No dedupe (listing events carry no message id) and a fixed clock: nothing here expires.
    return ComputeModel(dedupe_window=0, clock=lambda: captured_at)


def reconcile(
    service: SyncService,
    snapshot: Snapshot,
    source: Source = "audit",
    *,
    untrusted: Sequence[str] = (),
    shrink_limit: float | None = None,
    consume: bool = False,
) -> AuditReport:
    """Make the live model equal to a complete listing, where the listing is newer.

    Deletions inferred from absence are skipped (and ``deletes_skipped`` says why) when
    ``untrusted`` gives reasons (a cell was down, ...), when listing items were rejected, or
    when the listing has fewer instances or compute nodes than the live model by more than
    ``shrink_limit`` (a fraction; ``None``: no limit). Additions, updates and deletions the
    listing states explicitly (a server listed as DELETED) are applied in every case.
    ``consume`` as in :func:`build_shadow`.
    """
    # The cyclic GC stays paused until the shadow is freed: resumed earlier, its first pass
    # would scan the million young objects the shadow is made of, for nothing (no cycles).
    with gc_paused(freeze=False):
        return _reconcile(service, snapshot, source, untrusted, shrink_limit, consume)


def _reconcile(
    service: SyncService,
    snapshot: Snapshot,
    source: Source,
    untrusted: Sequence[str],
    shrink_limit: float | None,
    consume: bool,
) -> AuditReport:
    report = AuditReport(source)
    started = time.perf_counter()
    shadow = build_shadow(snapshot, source, consume=consume)
    report.rejected = shadow.rejected
    report.listed_instances = len(shadow.instances)
    report.listed_nodes = sum(1 for n in shadow.model.nodes() if not n.placeholder)
    report.timings["shadow"] = time.perf_counter() - started
    live = service.model
    reasons = list(untrusted)
    if shadow.rejected:
        reasons.append(f"{len(shadow.rejected)} listing items could not be read")
    if shrink_limit is not None:
        reasons += _shrinkage(live, report, shrink_limit)
    allow_deletes = not reasons
    if reasons:
        report.deletes_skipped = "; ".join(reasons)
        LOG.warning("%s: deletions skipped: %s", source.capitalize(), report.deletes_skipped)
    before = live.revision
    submit = _Submitter(service, report)

    # Nodes first, so that instances compare against (and move to) the right nodes.
    t0 = time.perf_counter()
    node_fixes = diff_nodes(live, shadow)
    report.timings["diff"] = time.perf_counter() - t0
    submit.all(node_fixes)
    t0 = time.perf_counter()
    instance_fixes = diff_instances(live, shadow, allow_deletes)
    report.timings["diff"] += time.perf_counter() - t0
    submit.all(instance_fixes)
    if allow_deletes:
        # After the instance corrections: a placeholder may have been emptied by them.
        submit.all(ghost_nodes(live, shadow))
    report.timings["apply"] = time.perf_counter() - started - sum(report.timings.values())
    report.records = live.revision - before
    _log_drift(report, submit.sample)
    return report


def full_audit(service: SyncService, snapshot: Snapshot, source: Source = "audit") -> AuditReport:
    """Make the model equal to a complete listing (where the listing is newer).

    The offline form (``cdm-sync replay --audit-snapshot``): no shrink limit; deletions are
    skipped only when listing items were rejected.
    """
    return reconcile(service, snapshot, source)


Correction = tuple[str, str, str, Event]
"""(element, drift kind, element uuid, the event that corrects it). Drift is counted once per
element even when it takes two events to correct (a node's hypervisor and service items)."""


def diff_nodes(live: ComputeModel, shadow: Shadow) -> list[Correction]:
    """Corrections for compute nodes the live model lacks or holds with other fields.

    A node's fields come from its hypervisor item and its host's service item, so both are
    resubmitted (hypervisors before services, as a bootstrap applies them). Placeholders the
    shadow made only because a server named an unlisted host are left to the instance
    corrections, which make the same placeholder in the live model.
    """
    have = {n.uuid: n for n in live.nodes()}
    hypervisor_fixes: list[Correction] = []
    service_fixes: dict[str, Correction] = {}
    for want in shadow.model.nodes():
        current = have.get(want.uuid)
        if current == want:
            continue
        kind = MISSING if current is None else STALE_FIELD
        hypervisor = shadow.hypervisor_events.get(want.uuid)
        if hypervisor is not None:
            hypervisor_fixes.append((COMPUTE_NODE, kind, want.uuid, hypervisor))
        host = want.hostname
        service = shadow.service_events.get(host) if host is not None else None
        if service is not None and host not in service_fixes:
            service_fixes[host] = (COMPUTE_NODE, kind, want.uuid, service)
    return hypervisor_fixes + list(service_fixes.values())


def diff_instances(live: ComputeModel, shadow: Shadow, allow_deletes: bool) -> list[Correction]:
    """Corrections for instances: missing, stale (proven fields differ) and ghosts.

    The fast path is one dict lookup and one tuple comparison per listed instance; only
    unequal pairs are looked at field by field, to tell a real difference from a field the
    listing did not read (which the correction would leave alone anyway).
    """
    have = {i.uuid: i for i in live.instances()}  # references only, under a brief lock
    want_of = shadow.instances.get
    fixes: list[Correction] = []
    for uuid, event in shadow.instance_events.items():
        current = have.get(uuid)
        if type(event) is InstanceDeleted:
            if current is not None:
                # Listed as deleted: a proof, not an absence, so applied in every case.
                fixes.append((INSTANCE, GHOST, uuid, event))
            continue
        if current is None:
            fixes.append((INSTANCE, MISSING, uuid, event))
            continue
        want = want_of(uuid)
        if want is None or current == want:
            continue
        if _proven_difference(current, want, event):
            fixes.append((INSTANCE, STALE_FIELD, uuid, event))
    if allow_deletes:
        listed = shadow.instance_events
        version = Version(None, shadow.captured_at)
        cause = Cause(shadow.source, None, None)
        for uuid in have:
            if uuid not in listed:
                gone = InstanceDeleted(uuid, version, cause, "absent from listing")
                fixes.append((INSTANCE, GHOST, uuid, gone))
    return fixes


def ghost_nodes(live: ComputeModel, shadow: Shadow) -> list[Correction]:
    """Compute nodes the live model has and a trusted listing does not.

    A real node absent from the listing is gone. A placeholder is gone when Nova lists no
    service or hypervisor for its host and no instance is on it; one a notification created
    after the listing started is newer than the listing and survives (the version check).
    """
    listed = {n.uuid for n in shadow.model.nodes()}
    listed_hosts = {n.hostname for n in shadow.model.nodes() if n.hostname is not None}
    version = Version(None, shadow.captured_at)
    cause = Cause(shadow.source, None, None)
    fixes: list[Correction] = []
    for node in live.nodes():
        if node.uuid in listed:
            continue
        if node.placeholder and (
            node.hostname in listed_hosts or live.instances_on_node(node.uuid)
        ):
            continue
        gone = ComputeNodeGone(node.uuid, version, cause)
        fixes.append((COMPUTE_NODE, GHOST, node.uuid, gone))
    return fixes


# Fields of an instance event and of the element that are the same thing under the same name.
_DIRECT_FIELDS = (
    "name", "project_id", "user_id", "host", "node", "vm_state", "power_state", "task_state",
    "flavor", "locked", "metadata",
)  # fmt: skip


def _proven_difference(current: Instance, want: Instance, event: InstanceObserved) -> bool:
    """Whether the listing proves a field value the live element does not have."""
    for name in _DIRECT_FIELDS:
        proven = getattr(event, name)
        if proven is not UNKNOWN and getattr(current, name) != proven:
            return True
    located = event.host is not UNKNOWN or event.node is not UNKNOWN
    return located and current.compute_node_uuid != want.compute_node_uuid


class _Submitter:
    """Applies corrections one at a time (the writer lock per event, never across the batch)
    and counts drift when a correction changed the model."""

    def __init__(self, service: SyncService, report: AuditReport) -> None:
        self.service = service
        self.report = report
        self.sample: list[str] = []
        self._counted: set[tuple[str, str]] = set()

    def all(self, fixes: list[Correction]) -> None:
        submit = self.service.submit
        report = self.report
        counted = self._counted
        for element, kind, uuid, event in fixes:
            # The shadow read the listing without interning; what enters the model is.
            outcome = submit(interned(event))
            report.outcomes[outcome.value] += 1
            if outcome is Outcome.CHANGED:
                if (element, uuid) not in counted:
                    counted.add((element, uuid))
                    report.drift[(element, kind)] += 1
                    if len(self.sample) < LOG_SAMPLE:
                        self.sample.append(f"{element} {uuid} {kind}")
            elif outcome in (Outcome.STALE, Outcome.TOMBSTONED):
                report.newer_in_model += 1


def _shrinkage(live: ComputeModel, report: AuditReport, limit: float) -> list[str]:
    """Reasons to distrust a listing that is much smaller than the live model."""
    reasons = []
    pairs = (
        ("instances", live.instance_count, report.listed_instances),
        ("compute nodes", sum(1 for n in live.nodes() if not n.placeholder), report.listed_nodes),
    )
    for what, have, listed in pairs:
        if have and (have - listed) / have > limit:
            reasons.append(
                f"listing has {listed} {what}, the model {have} (shrank by more than {limit:.0%})"
            )
    return reasons


def _log_drift(report: AuditReport, sample: list[str]) -> None:
    drift = report.drift_by_kind()
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in report.timings.items())
    if any(drift.values()):
        LOG.warning(
            "%s found drift: %s (e.g. %s); %d corrections refused as older than the model; %s",
            report.source.capitalize(),
            ", ".join(f"{k} {v}" for k, v in drift.items()),
            "; ".join(sample),
            report.newer_in_model,
            timings,
        )
    else:
        LOG.info("%s found no drift (%s)", report.source.capitalize(), timings)
    LOG.info("Audit finished: %s", report.line())


__all__ = [
    "DRIFT_KINDS",
    "GHOST",
    "MISSING",
    "STALE_FIELD",
    "AuditReport",
    "Outcome",
    "Shadow",
    "build_shadow",
    "diff_instances",
    "diff_nodes",
    "full_audit",
    "ghost_nodes",
    "reconcile",
]
