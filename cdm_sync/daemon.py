"""``cdm-sync serve``: the composition root that wires the adapters around the sync service.

Order matters and is the point of this module: the health endpoint and dump file come up first
(an operator can see NOT_SYNCED while Nova is unreachable), the listener is held *before* it
starts consuming (so nothing received before the bootstrap listing is applied early or lost),
the bootstrap retries with backoff until Nova answers, and only then do the audits start. On
SIGTERM/SIGINT everything stops in reverse order and the dump file gets the final model.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from cdm_sync.api.health import HealthServer, service_status
from cdm_sync.messaging.listener import NotificationListener, listener_from_conf
from cdm_sync.model import ComputeModel
from cdm_sync.nova.collector import collector_from_conf
from cdm_sync.sinks.dumpfile import DumpFileWriter
from cdm_sync.sync.engine import SyncEngine, engine_from_conf
from cdm_sync.sync.ports import ListingError
from cdm_sync.sync.service import SyncService

LOG = logging.getLogger(__name__)

BOOTSTRAP_RETRY_MAX = 300.0


@dataclass
class ResyncProgress:
    """What /status shows of a resync started through the health endpoint."""

    running: bool = False
    started_at: float | None = None
    progress: dict[str, int] = field(default_factory=dict)
    report: dict[str, Any] | None = None
    error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "running": self.running,
                "started_at": self.started_at,
                "progress": dict(self.progress),
                "report": self.report,
                "error": self.error,
            }


class Daemon:
    def __init__(self, conf: Any, dump_file: str | None = None) -> None:
        self.conf = conf
        self.stopping = threading.Event()
        self.model = ComputeModel(
            tombstone_ttl=conf.model.tombstone_ttl, dedupe_window=conf.model.dedupe_window
        )
        self.service = SyncService(self.model)
        self.dump = DumpFileWriter(self.model, dump_file) if dump_file else None
        if self.dump is not None:
            self.service.add_publisher(self.dump.publish)
        self.listener: NotificationListener = listener_from_conf(conf, self.service)
        self.engine: SyncEngine = engine_from_conf(
            conf, self.service, collector_from_conf(conf), self.listener
        )
        self.resync_progress = ResyncProgress()
        self.health = HealthServer(
            self.status,
            start_resync=self.start_resync,
            host=conf.health.host,
            port=conf.health.port,
        )

    def status(self) -> dict[str, Any]:
        status = service_status(self.service, self.engine.status)
        listener = self.listener
        status["listener"] = {
            "held": listener.held,
            "running": listener.running,
            "receiver_pid": listener.receiver_pid,
            "receiver_restarts": listener.stats.restarts,
        }
        status["resync"] = self.resync_progress.to_dict()
        return status

    def start_resync(self) -> bool:
        """Run a full audit (cause ``resync``) in the background; False if one is running."""
        progress = self.resync_progress
        with progress._lock:
            if progress.running:
                return False
            progress.running = True
            progress.started_at = time.time()
            progress.progress = {}
            progress.report = progress.error = None

        def tell(what: str, count: int) -> None:
            with progress._lock:
                progress.progress[what] = count

        def run() -> None:
            try:
                report = self.engine.resync(tell)
                with progress._lock:
                    progress.report = report.to_dict()
            except Exception as exc:  # reported through /status; the daemon goes on
                LOG.exception("Resync failed")
                with progress._lock:
                    progress.error = str(exc)
            finally:
                with progress._lock:
                    progress.running = False

        threading.Thread(target=run, name="resync", daemon=True).start()
        return True

    def run(self) -> int:
        self.health.start()
        if self.dump is not None:
            self.dump.start()
        self.listener.hold()  # buffer from the first message until the listing is applied
        try:
            if self._start_listener() and self._bootstrap_until_done():
                self.engine.start_schedule()
                self.stopping.wait()
        finally:
            self.shutdown()
        return 0

    def _start_listener(self) -> bool:
        """Start consuming (declaring the pool queue) before anything is listed, so no
        notification falls between the listing and the listener. oslo.messaging retries an
        unreachable broker inside start(), so it runs on its own thread: SIGTERM still works."""
        started = threading.Event()
        failure: list[BaseException] = []

        def start() -> None:
            try:
                self.listener.start()
            except BaseException as exc:  # reported below, on the main thread
                failure.append(exc)
            finally:
                started.set()

        threading.Thread(target=start, name="listener-start", daemon=True).start()
        while not started.wait(1.0):
            if self.stopping.is_set():
                return False
        if failure:
            raise failure[0]
        return True

    def _bootstrap_until_done(self) -> bool:
        delay = 5.0
        while not self.stopping.is_set():
            try:
                self.engine.bootstrap()
                return True
            except ListingError as exc:
                LOG.error("Bootstrap failed, retrying in %.0fs: %s", delay, exc.reason)
            self.stopping.wait(delay)
            delay = min(delay * 2, BOOTSTRAP_RETRY_MAX)
        return False

    def shutdown(self) -> None:
        LOG.info("Shutting down")
        self.engine.stop()
        self.listener.stop()
        self.health.stop()
        if self.dump is not None:
            self.dump.stop()
