"""Replay: bootstrap from a snapshot file, feed a recorded trace through the live endpoints, audit.

The offline twin of ``serve`` (``cdm-sync replay``, ``dump``, the bundled demo, the end-to-end
tests), composed like the daemon from the same adapters and service layer: the same endpoint
objects and the same apply path, fed from files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cdm_sync.messaging.endpoints import Dispatcher, make_endpoints
from cdm_sync.model import ChangeRecord, ComputeModel
from cdm_sync.nova.event_types import NOVA_EVENT_TYPES
from cdm_sync.nova.snapshot import Snapshot, listing_of, read_snapshot
from cdm_sync.nova.trace import DEFAULT_MAX_LINE_BYTES, read_trace
from cdm_sync.sync import bootstrap as bootstrap_listing
from cdm_sync.sync.audit import AuditReport, full_audit
from cdm_sync.sync.service import UNPARSABLE, SyncService

LOG = logging.getLogger(__name__)

PROGRESS_EVERY = 10000


@dataclass
class ReplayResult:
    service: SyncService
    bootstrap_rejected: list[str]
    trace_lines: int
    audit: AuditReport | None

    @property
    def model(self) -> ComputeModel:
        return self.service.model


def bootstrap(service: SyncService, snapshot: Snapshot) -> list[str]:
    """Load a snapshot into the model (cause ``bootstrap``); returns the reasons of the items
    that could not be read. Consumes ``snapshot``."""
    return bootstrap_listing.load(service, listing_of(snapshot))


def replay(
    snapshot: Path | str,
    trace: Path | str,
    audit_snapshot: Path | str | None = None,
    *,
    model: ComputeModel | None = None,
    nova_format: str = "auto",
    supersede_window: float = 300.0,
    on_changes: Callable[[list[ChangeRecord]], None] | None = None,
    max_message_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> ReplayResult:
    """Bootstrap from ``snapshot``, deliver every line of ``trace``, then audit if asked.

    Raises SnapshotError/TraceError for files that cannot be used at all; bad lines or items
    are rejected, counted and logged once each, and the replay goes on. ``max_message_bytes``
    (``[notifications] max_message_bytes``) bounds each trace line and each server item of
    the snapshots.
    """
    first = read_snapshot(snapshot, max_message_bytes)
    final = read_snapshot(audit_snapshot, max_message_bytes) if audit_snapshot is not None else None
    model = model if model is not None else ComputeModel()
    service = SyncService(model, event_types=NOVA_EVENT_TYPES)
    if on_changes is not None:
        service.add_publisher(on_changes)
    rejected = bootstrap(service, first)
    dispatcher = Dispatcher(make_endpoints(service, nova_format, supersede_window), service)
    lines = 0
    for number, line, error in read_trace(trace, max_message_bytes):
        lines += 1
        if error is not None:
            service.stats.rejection(UNPARSABLE, error)
            LOG.warning("Trace %s: %s", trace, error)
            continue
        dispatcher.deliver(line)
        if lines % PROGRESS_EVERY == 0:
            LOG.info("Replay: %d trace lines delivered (line %d)", lines, number)
    LOG.info("Replay: %d trace lines delivered; %s", lines, service.stats.summary().line())
    report = full_audit(service, listing_of(final)) if final is not None else None
    return ReplayResult(service, rejected, lines, report)
