"""Full audit: compare the model with a complete Nova listing and correct every difference.

The listing (a :class:`~cdm_sync.nova.snapshot.Snapshot`, from a file or a live collector) is
turned into events with ``cause.source`` ``audit`` (or ``resync``), and what the model has but
the listing lacks becomes a delete. Versions protect newer state: an instance seen by a
notification after the listing was captured is neither overwritten nor deleted by it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from cdm_sync.model import (
    Cause,
    ComputeNodeGone,
    Event,
    HypervisorObserved,
    InstanceDeleted,
    InstanceObserved,
    Outcome,
    ServiceObserved,
    Version,
)
from cdm_sync.model.events import Source
from cdm_sync.nova.snapshot import Snapshot, Translation, snapshot_events
from cdm_sync.sync.service import SyncService

LOG = logging.getLogger(__name__)


@dataclass
class AuditReport:
    source: str
    outcomes: Counter[str] = field(default_factory=Counter)
    records: int = 0
    rejected: list[str] = field(default_factory=list)

    def line(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        return f"{self.source}: {parts or 'nothing to do'}; change records {self.records}"


def full_audit(service: SyncService, snapshot: Snapshot, source: Source = "audit") -> AuditReport:
    """Make the model equal to a complete listing (where the listing is newer)."""
    report = AuditReport(source)
    translation = Translation()
    before = service.model.revision
    for event in _audit_events(service, snapshot, source, translation):
        outcome = service.submit(event)
        report.outcomes[outcome.value] += 1
    report.rejected = translation.rejected
    report.records = service.model.revision - before
    LOG.info("Audit finished: %s", report.line())
    return report


def _audit_events(
    service: SyncService, snapshot: Snapshot, source: Source, translation: Translation
) -> Iterator[Event]:
    listed_instances: set[str] = set()
    listed_nodes: set[str] = set()
    listed_hosts: set[str] = set()
    for event in snapshot_events(snapshot, source, translation):
        if isinstance(event, (InstanceObserved, InstanceDeleted)):
            listed_instances.add(event.uuid)
        elif isinstance(event, HypervisorObserved):
            listed_nodes.add(event.uuid)
            if event.host is not None:
                listed_hosts.add(event.host)
        elif isinstance(event, ServiceObserved):
            listed_hosts.add(event.host)
        yield event
    if translation.rejected:
        # An item we could not read is not an item Nova lacks: deleting on a partial reading
        # would be silent data loss, so deletions wait for a clean listing.
        LOG.warning(
            "Audit skips deletions: %d listing items were rejected", len(translation.rejected)
        )
        return
    version = Version(None, snapshot.captured_at)
    cause = Cause(source, None, None)
    model = service.model
    for inst in model.instances():
        if inst.uuid not in listed_instances:
            yield InstanceDeleted(inst.uuid, version, cause, reason="absent from full listing")
    for node in model.nodes():
        if node.uuid in listed_nodes:
            continue
        if not node.placeholder:
            yield ComputeNodeGone(node.uuid, version, cause)
        elif node.hostname not in listed_hosts and not model.instances_on_node(node.uuid):
            # An empty placeholder for a host Nova does not list: nothing supports it any more.
            # One a notification created after the listing is newer and survives as stale.
            yield ComputeNodeGone(node.uuid, version, cause)


__all__ = ["AuditReport", "Outcome", "full_audit"]
