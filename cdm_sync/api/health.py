"""Health, metrics and admin endpoint of ``cdm-sync serve``.

``GET /metrics``: Prometheus text (prometheus_client), read from the live counters at scrape time
(no second set of books). ``GET /status``: the same as JSON, for ``cdm-sync status``.
``POST /resync``: start a full audit now (``cdm-sync resync``); its progress shows in /status.

It binds to 127.0.0.1 by default: /resync is an admin action, and callers are untrusted. Request
bodies are not read, nothing a caller sends is echoed, and errors are one-line JSON.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from cdm_sync.sync.service import SyncService

LOG = logging.getLogger(__name__)

StatusSource = Callable[[], dict[str, Any]]
ResyncStarter = Callable[[], bool]

MODEL_STATES = ("NOT_SYNCED", "SYNCING", "READY", "DEGRADED")


def service_status(service: SyncService, engine_status: StatusSource | None) -> dict[str, Any]:
    """Everything /status reports: model size and revision, counters, lag, engine state."""
    model, stats = service.model, service.stats
    summary = stats.summary()
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


class HealthServer:
    """The HTTP endpoint, on its own daemon threads."""

    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        *,
        start_resync: ResyncStarter | None = None,
        host: str = "127.0.0.1",
        port: int = 9658,
    ) -> None:
        self.status = status
        self.start_resync = start_resync
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StatusCollector(status))
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-http", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()
        LOG.info("Health endpoint on http://%s:%d (/metrics, /status)", *self.address)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "cdm-sync"

            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body = generate_latest(outer.registry)
                    self._send(200, body, "text/plain; version=0.0.4")
                elif self.path == "/status":
                    self._json(200, outer.status())
                else:
                    self._json(404, {"error": "not found"})

            def do_POST(self) -> None:
                if self.path != "/resync":
                    self._json(404, {"error": "not found"})
                elif outer.start_resync is None:
                    self._json(503, {"error": "resync is not available"})
                elif outer.start_resync():
                    self._json(202, {"started_at": time.time()})
                else:
                    self._json(409, {"error": "an audit is already running"})

            def _json(self, code: int, document: dict[str, Any]) -> None:
                self._send(code, json.dumps(document).encode(), "application/json")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                LOG.debug("health endpoint: " + format, *args)

        return Handler
