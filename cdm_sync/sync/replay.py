"""Replay: bootstrap from a snapshot, feed a recorded trace through the live endpoints, audit.

This is the offline twin of the live service (``cdm-sync replay``, the bundled demo, the
end-to-end tests): the same endpoint objects and the same apply path, fed from files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cdm_sync.messaging.endpoints import Dispatcher, make_endpoints
from cdm_sync.model import ChangeRecord, ComputeModel
from cdm_sync.nova.snapshot import Snapshot, Translation, read_snapshot, snapshot_events
from cdm_sync.nova.trace import read_trace
from cdm_sync.runtime import gc_paused
from cdm_sync.sync.audit import AuditReport, full_audit
from cdm_sync.sync.service import SyncService

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


def bootstrap(service: SyncService, snapshot: Snapshot) -> Translation:
    """Load a snapshot into the model (cause ``bootstrap``), logging progress.

    Consumes ``snapshot.servers`` (see :func:`snapshot_events`).
    """
    translation = Translation()
    total = snapshot.server_count
    started = time.monotonic()

    def progress(n: int) -> None:
        LOG.info("Bootstrap: %d items applied (%d servers listed)", n, total)

    with gc_paused():
        events = snapshot_events(snapshot, "bootstrap", translation, consume=True)
        service.submit_all(events, progress)
    LOG.info(
        "Bootstrap done in %.2fs: %d compute nodes, %d instances, %d items rejected",
        time.monotonic() - started,
        service.model.node_count,
        service.model.instance_count,
        len(translation.rejected),
    )
    return translation


def replay(
    snapshot: Path | str,
    trace: Path | str,
    audit_snapshot: Path | str | None = None,
    *,
    model: ComputeModel | None = None,
    nova_format: str = "auto",
    supersede_window: float = 300.0,
    on_changes: Callable[[list[ChangeRecord]], None] | None = None,
) -> ReplayResult:
    """Bootstrap from ``snapshot``, deliver every line of ``trace``, then audit if asked.

    Raises SnapshotError/TraceError for files that cannot be used at all; bad lines or items
    are rejected, counted and logged, and the replay goes on.
    """
    first = read_snapshot(snapshot)
    final = read_snapshot(audit_snapshot) if audit_snapshot is not None else None
    service = SyncService(model if model is not None else ComputeModel())
    if on_changes is not None:
        service.add_publisher(on_changes)
    translation = bootstrap(service, first)
    dispatcher = Dispatcher(make_endpoints(service, nova_format, supersede_window), service)
    lines = 0
    for number, line, error in read_trace(trace):
        lines += 1
        if error is not None:
            service.stats.rejection("(unparsable)", error)
            LOG.warning("Trace %s: %s", trace, error)
            continue
        dispatcher.deliver(line)
        if lines % PROGRESS_EVERY == 0:
            LOG.info("Replay: %d trace lines delivered (line %d)", lines, number)
    LOG.info("Replay: %d trace lines delivered; %s", lines, service.stats.summary().line())
    report = full_audit(service, final) if final is not None else None
    return ReplayResult(service, translation.rejected, lines, report)
