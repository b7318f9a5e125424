"""Full audit: load a complete Nova listing into a shadow model, diff it with the live one, correct.

The listing (a :class:`~cdm_sync.sync.ports.Listing` of typed events, from a file or a live
collector) is first resolved in a *shadow* :class:`~cdm_sync.model.ComputeModel` that nobody
reads and nothing publishes from (:func:`build_shadow`). The shadow resolves what the listing
means (which node each server is on, placeholders, flavors) exactly as the live model would,
so the diff is a comparison of immutable element tuples, cheap enough for 200,000 instances:
equal elements are skipped at the cost of one tuple comparison. What differs becomes a
correction:

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
for them (see :func:`reconcile`'s ``untrusted`` and ``shrink_limit``), and never of an element
the live model observed after the listing began (``listed_at``, on the model's own clock:
an instance created while the listing ran is absent from it, not gone).

Clocks: versions come from the clocks of Nova's hosts, which may disagree, so a host whose clock
runs ahead can make a correction look older than what the model holds for as long as that host
is silent. A correction refused that way is *contested*; when the next full audit finds the same
disagreement and nothing observed the element in between, it is applied whatever the versions
say (``overrule``). Drift is counted when a correction actually changed the live model (a
difference the model had already repaired by a newer notification is not drift).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cdm_sync.model import (
    UNKNOWN,
    Cause,
    ComputeModel,
    ComputeNodeAbsent,
    Event,
    HypervisorObserved,
    Instance,
    InstanceAbsent,
    InstanceDeleted,
    InstanceObserved,
    Outcome,
    ServiceObserved,
    Version,
    interned,
)
from cdm_sync.model.events import NO_VERSION, Source
from cdm_sync.runtime import gc_paused
from cdm_sync.sync.ports import Listing
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


def drift_by_kind(drift: Mapping[tuple[str, str], int]) -> dict[str, int]:
    """Drift counted by (element, kind), totalled by kind."""
    totals = dict.fromkeys(DRIFT_KINDS, 0)
    for (_, kind), n in drift.items():
        totals[kind] += n
    return totals


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
    # Refused corrections, (element, uuid) -> this listing's ``listed_at``: the next full audit
    # overrules them if it finds the same disagreement and nothing observed the element since.
    contested: dict[tuple[str, str], float] = field(default_factory=dict)
    # Corrections applied over the versions the model held (see the module docstring).
    overruled: int = 0
    # Why deletions inferred from absence were not made (None: they were, if any were due).
    deletes_skipped: str | None = None
    listed_instances: int = 0
    listed_nodes: int = 0
    # Seconds spent building the shadow, diffing, applying corrections.
    timings: dict[str, float] = field(default_factory=dict)

    def drift_by_kind(self) -> dict[str, int]:
        """Drift totals by kind (instances and compute nodes together)."""
        return drift_by_kind(self.drift)

    @property
    def corrections(self) -> int:
        return sum(self.drift.values())

    def line(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        drift = ", ".join(f"{k} {v}" for k, v in self.drift_by_kind().items())
        text = f"{self.source}: {parts or 'nothing to do'}; drift {drift}"
        text += f"; change records {self.records}"
        if self.overruled:
            text += f"; {self.overruled} applied over newer-looking versions"
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


def build_shadow(listing: Listing, source: Source = "audit") -> Shadow:
    """Resolve a listing in a fresh model nobody reads; keep each element's latest event.

    The result is what applying every listing event to a fresh model gives, but most servers
    never enter that model: a server whose node the listing names (the normal case) is
    resolved by :meth:`ComputeModel.preview_new_instance`, which builds the same element
    without the graph edge, indexes and change record a full apply would make for nobody.
    Servers that need a placeholder node take the full apply path, in listing order. The
    previews are exact while no server is listed twice and no node follows a server (as
    a listing yields them); a listing breaking either is applied in full instead.

    Servers are read without interning their strings (the events are compared and dropped;
    :func:`reconcile` interns the few that become corrections). Reads ``listing``'s events.
    """
    shadow = _fresh_shadow_model(listing.captured_at)
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
    listed = listing.events(source, intern=False)
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
            shadow = _fresh_shadow_model(listing.captured_at)
            for event in events:
                shadow.apply_with_outcome(event)
            instances = {element.uuid: element for element in shadow.instances()}
    return Shadow(
        shadow,
        source,
        listing.captured_at,
        instances,
        instance_events,
        hypervisors,
        services,
        listing.rejected,
    )


def _fresh_shadow_model(captured_at: float) -> ComputeModel:
    # No dedupe (listing events carry no message id) and a fixed clock: nothing here expires.
    return ComputeModel(dedupe_window=0, clock=lambda: captured_at)


def reconcile(
    service: SyncService,
    listing: Listing,
    source: Source = "audit",
    *,
    untrusted: Sequence[str] = (),
    shrink_limit: float | None = None,
    listed_at: float | None,
    contested: Mapping[tuple[str, str], float] | None = None,
) -> AuditReport:
    """Make the live model equal to a complete listing, where the listing is newer.

    Deletions inferred from absence are skipped (and ``deletes_skipped`` says why) when
    ``untrusted`` gives reasons (a cell was down, ...), when listing items were rejected, or
    when the listing has fewer instances or compute nodes than the live model by more than
    ``shrink_limit`` (a fraction; ``None``: no limit). Additions, updates and deletions the
    listing states explicitly (a server listed as DELETED) are applied in every case.

    ``listed_at``: the moment, on the live model's clock, from which an observation counts as
    newer than the listing (the listing's start, less a margin): what the model observed since
    is never deleted for being absent, and a contested correction is overruled only if nothing
    observed its element since the previous audit's ``listed_at``. ``None``, offline (a
    snapshot file audited after a replayed trace, both recorded on one clock): absence is
    judged by the listing's ``captured_at`` against the versions the model holds instead.
    ``contested``: the previous full audit's :attr:`AuditReport.contested`. Reads
    ``listing``'s events.
    """
    # The cyclic GC stays paused until the shadow is freed: resumed earlier, its first pass
    # would scan the million young objects the shadow is made of, for nothing (no cycles).
    with gc_paused(freeze=False):
        return _reconcile(
            service, listing, source, untrusted, shrink_limit, listed_at, contested or {}
        )


def _absence(listed_at: float | None, captured_at: float) -> tuple[float, Version]:
    """(listed_at, version) of the absence events of a listing (see :func:`reconcile`)."""
    if listed_at is None:
        return math.inf, Version(None, captured_at)
    return listed_at, NO_VERSION


def _reconcile(
    service: SyncService,
    listing: Listing,
    source: Source,
    untrusted: Sequence[str],
    shrink_limit: float | None,
    listed_at: float | None,
    contested: Mapping[tuple[str, str], float],
) -> AuditReport:
    report = AuditReport(source)
    started = time.perf_counter()
    shadow = build_shadow(listing, source)
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
    absence = _absence(listed_at, listing.captured_at)
    submit = _Submitter(service, report, absence[0], contested)

    # Nodes first, so that instances compare against (and move to) the right nodes.
    t0 = time.perf_counter()
    node_fixes = diff_nodes(live, shadow)
    report.timings["diff"] = time.perf_counter() - t0
    submit.all(node_fixes)
    t0 = time.perf_counter()
    instance_fixes = diff_instances(live, shadow, allow_deletes, absence)
    report.timings["diff"] += time.perf_counter() - t0
    submit.all(instance_fixes)
    if allow_deletes:
        # After the instance corrections: a placeholder may have been emptied by them.
        submit.all(ghost_nodes(live, shadow, absence))
    report.timings["apply"] = time.perf_counter() - started - sum(report.timings.values())
    report.records = live.revision - before
    _log_drift(report, submit.sample)
    return report


def full_audit(service: SyncService, listing: Listing, source: Source = "audit") -> AuditReport:
    """Make the model equal to a complete listing (where the listing is newer).

    The offline form (``cdm-sync replay --audit-snapshot``): absence is judged by the
    listing's capture stamp (see :func:`reconcile`), no shrink limit; deletions are skipped
    only when listing items were rejected.
    """
    return reconcile(service, listing, source, listed_at=None)


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


def diff_instances(
    live: ComputeModel, shadow: Shadow, allow_deletes: bool, absence: tuple[float, Version]
) -> list[Correction]:
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
        cause = Cause(shadow.source, None, None)
        for uuid in have:
            if uuid not in listed:
                gone = InstanceAbsent(uuid, absence[0], cause, absence[1])
                fixes.append((INSTANCE, GHOST, uuid, gone))
    return fixes


def ghost_nodes(
    live: ComputeModel, shadow: Shadow, absence: tuple[float, Version]
) -> list[Correction]:
    """Compute nodes the live model has and a trusted listing does not.

    A real node absent from the listing is gone. A placeholder is gone when Nova lists no
    service or hypervisor for its host and no instance is on it; one a notification created
    after the listing began survives (the apply path's check).
    """
    listed = {n.uuid for n in shadow.model.nodes()}
    listed_hosts = {n.hostname for n in shadow.model.nodes() if n.hostname is not None}
    cause = Cause(shadow.source, None, None)
    fixes: list[Correction] = []
    for node in live.nodes():
        if node.uuid in listed:
            continue
        if node.placeholder and (
            node.hostname in listed_hosts or live.instances_on_node(node.uuid)
        ):
            continue
        gone = ComputeNodeAbsent(node.uuid, absence[0], cause, absence[1])
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
    """Applies corrections one at a time (the writer lock per event, never across the batch),
    counts drift when a correction changed the model, and settles contested ones."""

    def __init__(
        self,
        service: SyncService,
        report: AuditReport,
        listed_at: float,
        contested: Mapping[tuple[str, str], float],
    ) -> None:
        self.service = service
        self.report = report
        self.listed_at = listed_at
        self.contested = contested
        self.sample: list[str] = []
        self._counted: set[tuple[str, str]] = set()

    def all(self, fixes: list[Correction]) -> None:
        submit = self.service.submit
        seen_at = self.service.model.seen_at
        report = self.report
        counted = self._counted
        for element, kind, uuid, event in fixes:
            key = (element, uuid)
            first = self.contested.get(key)
            absence = type(event) in _ABSENCES
            # Two listings in a row disagree and nothing observed the element in between: the
            # listing wins, whatever the (clock-dependent) versions say.
            overrule = False
            if first is not None and not absence:
                seen = seen_at(uuid)
                overrule = seen is None or seen < first
            # The shadow read the listing without interning; what enters the model is.
            outcome = submit(interned(event), overrule=overrule)
            report.outcomes[outcome.value] += 1
            if outcome is Outcome.CHANGED:
                if overrule:
                    report.overruled += 1
                if key not in counted:
                    counted.add(key)
                    report.drift[key[0], kind] += 1
                    if len(self.sample) < LOG_SAMPLE:
                        self.sample.append(f"{element} {uuid} {kind}")
            elif outcome in (Outcome.STALE, Outcome.TOMBSTONED):
                report.newer_in_model += 1
                if not absence:
                    report.contested.setdefault(key, self.listed_at)


_ABSENCES = (InstanceAbsent, ComputeNodeAbsent)


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
    if report.overruled:
        LOG.warning(
            "%s applied %d corrections over versions the model held although older-looking: "
            "the previous audit found the same differences and nothing was observed since "
            "(clocks of Nova hosts that disagree cause this)",
            report.source.capitalize(),
            report.overruled,
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
    "drift_by_kind",
    "full_audit",
    "ghost_nodes",
    "reconcile",
]
