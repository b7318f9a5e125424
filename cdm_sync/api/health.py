"""Health, metrics and admin endpoint of ``cdm-sync serve``.

``GET /metrics``: Prometheus text (prometheus_client), read from the live counters at scrape time
(no second set of books). ``GET /status``: the same as JSON, for ``cdm-sync status``.
``POST /resync``: start a full audit now (``cdm-sync resync``); its progress shows in /status.

It binds to 127.0.0.1 by default: /resync is an admin action, and callers are untrusted. Request
bodies are not read, nothing a caller sends is echoed, and errors are one-line JSON. Its cost is
bounded whatever callers do: a fixed pool of ``workers`` threads answers requests, a connection
waits for its request in one selector rather than in a thread, at most ``max_connections`` are
kept open, and a connection idle for ``timeout`` seconds, or whose request has taken that long,
is closed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import Any

from cheroot import server as cheroot_server
from cheroot import wsgi
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from cdm_sync.sync.service import SyncService

LOG = logging.getLogger(__name__)

StatusSource = Callable[[], dict[str, Any]]
ResyncStarter = Callable[[], bool]

MODEL_STATES = ("NOT_SYNCED", "SYNCING", "READY", "DEGRADED")


def service_status(service: SyncService, engine_status: StatusSource | None) -> dict[str, Any]:
    """Everything /status reports: model size and revision, counters, lag, engine state."""
    model, stats = service.model, service.stats.snapshot()
    summary = stats.summary
    by_type: dict[str, dict[str, int]] = {}
    for (event_type, outcome), count in sorted(stats.by_type.items()):
        by_type.setdefault(event_type, {})[outcome] = count
    status: dict[str, Any] = {
        "revision": model.revision,
        "instances": model.instance_count,
        "compute_nodes": model.node_count,
        "notifications": {
            "applied": summary.applied,
            "changed": summary.changed,
            "ignored": summary.ignored,
            "rejected": summary.rejected,
            "lag_seconds": stats.lag_seconds,
            "last_applied_at": stats.last_notification_at,
            "by_event_type": by_type,
        },
    }
    status.update(engine_status() if engine_status is not None else {"state": "not_synced"})
    status["state"] = str(status["state"]).upper()
    return status


class _StatusCollector:
    """A prometheus_client collector over :func:`service_status`."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        state = GaugeMetricFamily(
            "cdm_sync_model_state", "1 for the model's current state", labels=["state"]
        )
        for name in MODEL_STATES:
            state.add_metric([name], 1.0 if status.get("state") == name else 0.0)
        yield state
        yield GaugeMetricFamily(
            "cdm_sync_revision", "Last change revision", value=status["revision"]
        )
        yield GaugeMetricFamily(
            "cdm_sync_instances", "Instances in the model", value=status["instances"]
        )
        yield GaugeMetricFamily(
            "cdm_sync_compute_nodes", "Compute nodes in the model", value=status["compute_nodes"]
        )
        notifications = status["notifications"]
        outcomes = CounterMetricFamily(
            "cdm_sync_notifications",
            "Notifications (and bootstrap/audit events) by event type and outcome",
            labels=["event_type", "outcome"],
        )
        for event_type, counts in notifications["by_event_type"].items():
            for outcome, count in counts.items():
                outcomes.add_metric([event_type, outcome], count)
        yield outcomes
        if notifications["lag_seconds"] is not None:
            yield GaugeMetricFamily(
                "cdm_sync_notification_lag_seconds",
                "Time between Nova emitting the last applied notification and its apply",
                value=notifications["lag_seconds"],
            )
        for kind in ("full", "cheap"):
            audit = status.get(f"last_{kind}_audit")
            if audit:
                yield GaugeMetricFamily(
                    f"cdm_sync_last_{kind}_audit_timestamp_seconds",
                    f"When the last {kind} audit finished",
                    value=audit["started_at"] + audit["duration"],
                )
                yield GaugeMetricFamily(
                    f"cdm_sync_last_{kind}_audit_ok",
                    f"1 if the last {kind} audit completed and could be trusted",
                    value=1.0 if audit["result"] == "ok" else 0.0,
                )
        drift = CounterMetricFamily(
            "cdm_sync_drift", "Differences audits found and corrected", labels=["kind"]
        )
        for kind, count in (status.get("drift") or {}).items():
            drift.add_metric([kind], count)
        yield drift


# What each path answers to; any other path is 404, any other method 405.
_METHODS = {"/metrics": ("GET",), "/status": ("GET",), "/resync": ("POST",)}
# Request heads and bodies past these are refused (413) and the connection closed. Bodies are
# never read; a small one is discarded so that the connection can be kept alive.
_MAX_HEADER_BYTES = 16 * 1024
_MAX_BODY_BYTES = 16 * 1024
# Seconds stop() waits for a worker stuck on a stalled client before shutting its socket.
_STOP_TIMEOUT = 1.0
# Seconds between two warnings about refused connections (a flood would fill the log).
_REFUSALS_LOGGED_EVERY = 60.0


class HealthServer:
    """The HTTP endpoint: cheroot's WSGI server on its own threads, from :meth:`start` (which
    binds, raising ``OSError`` if the address is taken) to :meth:`stop`.

    ``workers``, ``timeout`` and ``max_connections`` are the ``[health]`` options of the same
    names. ``status`` is called on a worker thread for every /status and /metrics request."""

    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        *,
        start_resync: ResyncStarter | None = None,
        host: str = "127.0.0.1",
        port: int = 9658,
        workers: int = 4,
        timeout: float = 10.0,
        max_connections: int = 100,
    ) -> None:
        self.status = status
        self.start_resync = start_resync
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StatusCollector(status))
        self._metrics = make_wsgi_app(self.registry)
        self._server = _BoundedServer(
            (host, port),
            self._application,
            workers=workers,
            timeout=timeout,
            max_connections=max_connections,
        )
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens: the bound address once started (port 0 resolved)."""
        host, port = self._server.bind_addr[:2]
        return str(host), int(port)

    @property
    def open_connections(self) -> int:
        return self._server.open_connections

    def start(self) -> None:
        """Bind and serve. Raises OSError, saying where, if the address cannot be used."""
        try:
            self._server.prepare()
        except OSError as exc:
            host, port = self._server.bind_addr[:2]
            raise OSError(f"the health endpoint cannot listen on {host}:{port} ({exc})") from None
        self._thread = threading.Thread(target=self._server.serve, name="health-http", daemon=True)
        self._thread.start()
        LOG.info("Health endpoint on http://%s:%d (/metrics, /status)", *self.address)

    def stop(self) -> None:
        """Close every connection and join every thread; a no-op unless started."""
        if self._thread is None:
            return
        self._server.stop()
        self._thread.join()
        self._server.join()
        self._thread = None

    def _application(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """The WSGI application: routes, and maps any failure to a one-line JSON 500."""
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
        allowed = _METHODS.get(path)
        headers: list[tuple[str, str]] = []
        try:
            if allowed is None:
                code, body = 404, {"error": "not found"}
            elif method not in allowed:
                code, body = 405, {"error": "method not allowed"}
                headers.append(("Allow", ", ".join(allowed)))
            elif path == "/metrics":
                # prometheus_client's own: the text format, or OpenMetrics if asked for.
                return self._metrics(environ, start_response)
            elif path == "/status":
                code, body = 200, self.status()
            else:
                code, body = self._resync()
        except Exception:  # reported as a 500; the endpoint goes on
            LOG.exception("Health endpoint: %s %s failed", method, path)
            code, body = 500, {"error": "internal error"}
        data = json.dumps(body).encode()
        headers += [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        start_response(f"{code} {HTTPStatus(code).phrase}", headers)
        return [data]

    def _resync(self) -> tuple[int, dict[str, Any]]:
        if self.start_resync is None:
            return 503, {"error": "resync is not available"}
        if self.start_resync():
            return 202, {"started_at": time.time()}
        return 409, {"error": "an audit is already running"}


class _Connection(cheroot_server.HTTPConnection):
    """A connection that tells its server when it opens, when it is being served and, once,
    when it closes."""

    server: _BoundedServer

    def __init__(self, server: _BoundedServer, sock: socket.socket, *args: Any) -> None:
        super().__init__(server, sock, *args)
        self.waited = False  # has waited in the selector for its first request
        self.evicted = False  # shut down to make room; closed when the selector sees it
        self._counted = True
        server.opened()

    def communicate(self) -> bool:
        """Read one request and answer it, within the server's timeout in all."""
        self.server.serving(self)
        try:
            return bool(super().communicate())
        finally:
            self.server.served(self)

    def close(self) -> None:
        super().close()
        if self._counted:
            self._counted = False
            self.server.closed(self)


class _BoundedServer(wsgi.Server):
    """cheroot's WSGI server, changed so that idle or slow clients cost no thread for long and
    open connections are bounded.

    - cheroot hands a new connection to a worker at once, which then blocks reading its first
      request; here it first waits in the selector, as cheroot's kept-alive connections do,
      and reaches a worker only once it has sent something.
    - A new connection past ``max_connections`` shuts down the one idle longest (the selector
      then sees it readable and :meth:`process_conn` closes it); with none idle, the new one
      is refused.
    - cheroot's ``timeout`` bounds each read, which a client trickling bytes resets forever; a
      watchdog thread shuts down a connection whose request has taken ``timeout`` in all.

    cheroot calls :meth:`process_conn` from its selector thread (new and readable connections)
    and from workers (a kept-alive connection with its next request already buffered), and
    :meth:`put_conn` from workers; the bookkeeping is under ``_lock``.
    """

    ConnectionClass = _Connection

    def __init__(
        self,
        bind_addr: tuple[str, int],
        application: Callable[..., Iterable[bytes]],
        *,
        workers: int,
        timeout: float,
        max_connections: int,
    ) -> None:
        super().__init__(
            bind_addr,
            application,
            numthreads=workers,
            max=workers,
            server_name="cdm-sync",
            # The kernel's queue of connections not yet accepted (they cost no file descriptor
            # yet): as deep as the system allows, so that a burst is not met with dropped SYNs.
            request_queue_size=socket.SOMAXCONN,
            timeout=timeout,
            shutdown_timeout=_STOP_TIMEOUT,
        )
        self.max_connections = max_connections
        self.keep_alive_conn_limit = max_connections
        self.max_request_header_size = _MAX_HEADER_BYTES
        self.max_request_body_size = _MAX_BODY_BYTES
        self._lock = threading.Lock()
        self._open = 0
        self._evicting = 0
        self._refusals = 0
        self._refusals_logged_at = -_REFUSALS_LOGGED_EVERY
        # Connections waiting in the selector, the one idle longest first.
        self._idle: OrderedDict[_Connection, None] = OrderedDict()
        # Connections a worker is serving, with the monotonic time their request must end by.
        self._deadlines: dict[_Connection, float] = {}
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._refuser: threading.Thread | None = None
        self._refuser_started = threading.Event()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return self._open

    def prepare(self) -> None:
        """Bind and start the workers (cheroot's), and the watchdog."""
        super().prepare()
        self._stopping.clear()
        self._watchdog = threading.Thread(target=self._watch, name="health-watchdog", daemon=True)
        self._watchdog.start()

    def stop(self) -> None:
        super().stop()
        self._stopping.set()

    def join(self) -> None:
        """Once :meth:`serve` has returned after :meth:`stop`: join the threads cheroot's stop
        does not, the watchdog and the one serve() starts to answer 503."""
        if self._watchdog is not None:
            self._watchdog.join()
            self._watchdog = None
        if self._refuser_started.wait(_STOP_TIMEOUT) and self._refuser is not None:
            self._refuser.join()
            self._refuser = None

    def _serve_unservicable(self) -> None:
        """cheroot's, its thread remembered for :meth:`join`."""
        self._refuser = threading.current_thread()
        self._refuser_started.set()
        super()._serve_unservicable()

    def opened(self) -> None:
        with self._lock:
            self._open += 1

    def closed(self, conn: _Connection) -> None:
        with self._lock:
            self._open -= 1
            if conn.evicted:
                self._evicting -= 1
            self._idle.pop(conn, None)

    def serving(self, conn: _Connection) -> None:
        with self._lock:
            self._deadlines[conn] = time.monotonic() + self.timeout

    def served(self, conn: _Connection) -> None:
        with self._lock:
            self._deadlines.pop(conn, None)

    def process_conn(self, conn: _Connection) -> None:
        if conn.evicted:
            conn.close()
        elif not conn.waited:
            conn.waited = True
            if self._make_room():
                self.put_conn(conn)  # into the selector until the client sends something
            else:
                self._refused()
                conn.close()
        else:
            with self._lock:
                self._idle.pop(conn, None)
            super().process_conn(conn)

    def put_conn(self, conn: _Connection) -> None:
        with self._lock:
            self._idle[conn] = None
            self._idle.move_to_end(conn)
        super().put_conn(conn)

    def _make_room(self) -> bool:
        """True if a new connection (already counted) may stay: there is room, or the
        connection idle longest is being closed to make some."""
        with self._lock:
            if self._open - self._evicting <= self.max_connections:
                return True
            if not self._idle:
                return False
            victim, _ = self._idle.popitem(last=False)
            victim.evicted = True
            self._evicting += 1
        _shut(victim)
        return True

    def _refused(self) -> None:
        """Count a refused connection; warn about the refusals at most once a minute."""
        with self._lock:
            self._refusals += 1
            now = time.monotonic()
            if now - self._refusals_logged_at < _REFUSALS_LOGGED_EVERY:
                return
            refusals, self._refusals, self._refusals_logged_at = self._refusals, 0, now
        LOG.warning(
            "Health endpoint: %d connections busy (max_connections); refused %d new ones",
            self.max_connections,
            refusals,
        )

    def _watch(self) -> None:
        """Shut down each connection whose request is past its deadline: the worker's read
        or write then fails at once, and it closes the connection."""
        tick = min(self.timeout / 4, 0.5)
        while not self._stopping.wait(tick):
            now = time.monotonic()
            with self._lock:
                late = [conn for conn, deadline in self._deadlines.items() if deadline < now]
                for conn in late:
                    del self._deadlines[conn]
            for conn in late:
                LOG.debug("Health endpoint: closing a request that took %.1fs", self.timeout)
                _shut(conn)

    def error_log(self, msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
        """cheroot's log, into ours; what it reports below a warning (clients that went away,
        timeouts) only at debug level."""
        LOG.log(
            level if level >= logging.WARNING else logging.DEBUG,
            "Health endpoint: %s",
            msg,
            exc_info=traceback,
        )


def _shut(conn: _Connection) -> None:
    """Shut a connection's socket down in both directions (waking whoever waits on it); its
    owner closes it."""
    with contextlib.suppress(OSError):  # already closed: nothing left to wake
        conn.socket.shutdown(socket.SHUT_RDWR)
