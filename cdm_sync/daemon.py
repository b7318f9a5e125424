"""``cdm-sync serve``: the composition root that wires the adapters around the sync service.

Order matters and is the point of this module: the health endpoint and dump file come up first
(an operator can see NOT_SYNCED while Nova is unreachable), the listener is held *before* it
starts consuming (so nothing received before the bootstrap listing is applied early or lost),
the bootstrap retries with backoff until it succeeds, and only then do the audits start. Then
the daemon watches its listener: one that stops is reported (DEGRADED, the reason in
``status``) and started again. On SIGTERM/SIGINT everything stops in reverse order and the dump
file gets the final model. A receiver that cannot start at all (a bad transport URL) ends the
process with :class:`StartupError`; every other failure leaves it running in a state that says
what is wrong.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from cdm_sync.api.health import HealthServer, service_status
from cdm_sync.messaging.listener import NotificationListener, ReceiverFailed, listener_from_conf
from cdm_sync.model import ComputeModel
from cdm_sync.nova.collector import collector_from_conf
from cdm_sync.nova.event_types import NOVA_EVENT_TYPES
from cdm_sync.redaction import REDACTOR
from cdm_sync.sinks.dumpfile import DumpFileWriter
from cdm_sync.sync.engine import OVERDUE_FACTOR, SyncEngine, engine_from_conf
from cdm_sync.sync.ports import ListingError
from cdm_sync.sync.service import SyncService

LOG = logging.getLogger(__name__)

BOOTSTRAP_RETRY_MAX = 300.0
LISTENER_PROBLEM = "listener"
# How often the daemon looks at its listener, and the backoff of its restarts.
SUPERVISE_INTERVAL = 1.0
LISTENER_RETRY_MAX = 60.0


class StartupError(RuntimeError):
    """``serve`` cannot run with this configuration (the reason, one line)."""


def _warn_if_requests_outlast_the_watchdog(conf: Any) -> None:
    """A hung compute API is noticed (DEGRADED) after OVERDUE_FACTOR cheap intervals; say so
    at start-up if one Nova request may take longer than that to fail."""
    client = conf.nova_client
    timeout = client.timeout or 0
    attempts = 1 + (client.connect_retries if client.connect_retries is not None else 0)
    overdue = OVERDUE_FACTOR * conf.sync.cheap_interval
    if timeout * attempts > overdue:
        LOG.warning(
            "[nova_client] timeout (%ss) x %d attempts may outlast [sync] cheap_interval x %g "
            "(%ss): a hung compute API turns the model DEGRADED before one request fails",
            timeout,
            attempts,
            OVERDUE_FACTOR,
            overdue,
        )


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
        self.service = SyncService(self.model, event_types=NOVA_EVENT_TYPES)
        self.dump = DumpFileWriter(self.model, dump_file) if dump_file else None
        if self.dump is not None:
            self.service.add_publisher(self.dump.publish)
        self.listener: NotificationListener = listener_from_conf(conf, self.service)
        self.engine: SyncEngine = engine_from_conf(
            conf, self.service, collector_from_conf(conf), self.listener
        )
        _warn_if_requests_outlast_the_watchdog(conf)
        self.resync_progress = ResyncProgress()
        self._listener_restarts = 0
        self._listener_down = False
        self._listener_starting: threading.Thread | None = None
        self._listener_retry_at = 0.0
        self._listener_delay = SUPERVISE_INTERVAL
        self.health = HealthServer(
            self.status,
            start_resync=self.start_resync,
            host=conf.health.host,
            port=conf.health.port,
            workers=conf.health.workers,
            timeout=conf.health.timeout,
            max_connections=conf.health.max_connections,
        )

    def status(self) -> dict[str, Any]:
        """What ``/status`` shows (reasons come from libraries' errors: scrubbed of secrets)."""
        status = service_status(self.service, self.engine.status)
        listener = self.listener
        status["listener"] = {
            "held": listener.held,
            "running": listener.running,
            "failure": listener.failure,
            "receiver_pid": listener.receiver_pid,
            "receiver_restarts": listener.stats.restarts,
            "restarts": self._listener_restarts,
            "unreadable": listener.stats.unreadable,
        }
        status["resync"] = self.resync_progress.to_dict()
        return REDACTOR.document(status)

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
        """Serve until SIGTERM/SIGINT. Raises StartupError if the receiver cannot start."""
        self.health.start()
        if self.dump is not None:
            self.dump.start()
        self.listener.hold()  # hold from the first message until the listing is applied
        try:
            if self._start_listener() and self._bootstrap_until_done():
                self.engine.start_schedule()
                while not self.stopping.wait(SUPERVISE_INTERVAL):
                    self.supervise()
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
            if isinstance(failure[0], ReceiverFailed):
                raise StartupError(
                    f"the notification receiver could not start: {failure[0]}"
                ) from None
            raise failure[0]
        return True

    def _bootstrap_until_done(self) -> bool:
        """Bootstrap, retrying with backoff: a listing that fails (Nova down) and an
        unexpected error (logged with its traceback the first time) alike keep the model
        NOT_SYNCED with the reason in ``status``, never end the process."""
        delay = 5.0
        seen: set[str] = set()
        while not self.stopping.is_set():
            try:
                self.engine.bootstrap()
                return True
            except ListingError as exc:
                LOG.error("Bootstrap failed, retrying in %.0fs: %s", delay, exc.reason)
            except Exception as exc:
                what = f"{type(exc).__name__}: {exc}"
                if what in seen:
                    LOG.error("Bootstrap failed again, retrying in %.0fs: %s", delay, what)
                else:
                    seen.add(what)
                    LOG.exception("Bootstrap failed unexpectedly, retrying in %.0fs", delay)
            self.stopping.wait(delay)
            delay = min(delay * 2, BOOTSTRAP_RETRY_MAX)
        return False

    def supervise(self) -> None:
        """One look at the listener: a listener that stopped is reported (DEGRADED, with the
        reason) and started again after a backoff; once it runs again, the problem clears
        (what it had not acknowledged is delivered again by RabbitMQ: nothing to audit)."""
        listener = self.listener
        if listener.running:
            if self._listener_down:
                self._listener_down = False
                self._listener_delay = SUPERVISE_INTERVAL
                self.engine.clear_problem(LISTENER_PROBLEM)
                LOG.info("The notification listener runs again")
            return
        starting = self._listener_starting
        if starting is not None and starting.is_alive():
            return
        reason = listener.failure or "the notification listener is not running"
        if not self._listener_down:
            self._listener_down = True
            LOG.error("Notification listener down: %s", reason)
        self.engine.report_problem(LISTENER_PROBLEM, f"notifications: {reason}")
        now = time.monotonic()
        if now < self._listener_retry_at:
            return
        self._listener_retry_at = now + self._listener_delay
        self._listener_delay = min(self._listener_delay * 2, LISTENER_RETRY_MAX)
        self._listener_restarts += 1

        def restart() -> None:
            try:
                listener.start()
            except Exception as exc:
                LOG.error("Restarting the notification listener failed: %s", exc)

        self._listener_starting = threading.Thread(
            target=restart, name="listener-restart", daemon=True
        )
        self._listener_starting.start()

    def shutdown(self) -> None:
        LOG.info("Shutting down")
        self.engine.stop()
        self.listener.stop()
        self.health.stop()
        if self.dump is not None:
            self.dump.stop()
