"""Live benchmark part: memory of cdm-sync's two processes while a large backlog waits in RabbitMQ.

A service that was down (an upgrade, a host reboot) comes back to a pool queue holding every
notification Nova sent meanwhile, and starts by holding them back while it lists Nova (the
gap-free bootstrap). What must not happen is that the backlog moves from RabbitMQ into its
memory. This part queues ``count`` real-shaped notifications (``instance.update`` from
``bench.run.CloudSim``, each unique) in a pool queue, then starts the listener held, as the
bootstrap does, twice:

1. with oslo.messaging's default ``rabbit_qos_prefetch_count = 0`` (no limit), for comparison;
2. with cdm-sync's default (``batch_size * (max_inflight + 1)``), then releases and drains it.

It samples the resident memory of the service process (this one) and of the receiving process
every ``SAMPLE_INTERVAL`` seconds and reports the peak of each phase, and how many messages the
broker has handed out unacknowledged while the listener holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from bench.run import CloudSim, Size
from cdm_sync.messaging.endpoints import Dispatcher, make_endpoints
from cdm_sync.messaging.listener import NotificationListener
from cdm_sync.model import ComputeModel
from cdm_sync.nova.event_types import NOVA_EVENT_TYPES
from cdm_sync.nova.snapshot import read_snapshot
from cdm_sync.replay import bootstrap
from cdm_sync.sync.service import SyncService

BATCH_SIZE = 256
BATCH_TIMEOUT = 0.1
SAMPLE_INTERVAL = 0.25
# How long the held phase is watched: long enough for an unlimited prefetch to pull the backlog.
HOLD_WATCH_S = 20.0
PUBLISH_CHUNK = 10_000
# What the receiving process may hold whatever the backlog (its own code and oslo.messaging
# are about 60 MB; a prefetch window of 1,280 notifications a few MB more).
RECEIVER_LIMIT_MB = 200
DRAIN_TIMEOUT_S = 1800.0


def _rss_mb(pid: int | None) -> float:
    """Resident memory of a process (0 if it is gone)."""
    if pid is None:
        return 0.0
    try:
        for row in Path(f"/proc/{pid}/status").read_text().splitlines():
            if row.startswith("VmRSS:"):
                return int(row.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


class _Peaks:
    """Peak RSS of the service and the receiving process over a phase."""

    def __init__(self) -> None:
        self.service = 0.0
        self.receiver = 0.0

    def sample(self, listener: NotificationListener) -> None:
        self.service = max(self.service, _rss_mb(os.getpid()))
        self.receiver = max(self.receiver, _rss_mb(listener.receiver_pid))

    def to_dict(self) -> dict[str, float]:
        return {"service_mb": round(self.service, 1), "receiver_mb": round(self.receiver, 1)}


def _envelope(line: dict[str, Any]) -> bytes:
    """A trace line as oslo.messaging's messagingv2 driver puts it on the wire."""
    message = {
        "message_id": line["metadata"]["message_id"],
        "publisher_id": line["publisher_id"],
        "event_type": line["event_type"],
        "priority": line["priority"].upper(),
        "payload": line["payload"],
        "timestamp": line["metadata"]["timestamp"],
    }
    return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(message)}).encode()


def _unacknowledged(queue: str) -> int:
    """Messages of ``queue`` the broker has handed a consumer and not had acknowledged."""
    listed = subprocess.run(
        ["rabbitmqctl", "list_queues", "-q", "--no-table-headers", "name",
         "messages_unacknowledged"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    for row in listed.splitlines():
        name, count = row.split()
        if name == queue:
            return int(count)
    return -1


def _listener(service: SyncService, bus: Any, pool: str, prefetch: int | None) -> Any:
    return NotificationListener(
        bus.url,
        Dispatcher(make_endpoints(service), service),
        topics=[bus.topic],
        exchange=bus.exchange,
        pool=pool,
        batch_size=BATCH_SIZE,
        batch_timeout=BATCH_TIMEOUT,
        prefetch=prefetch,
    )


def _watch_held(listener: NotificationListener, seconds: float) -> _Peaks:
    peaks = _Peaks()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peaks.sample(listener)
        time.sleep(SAMPLE_INTERVAL)
    return peaks


def backlog_part(path: Path, size: Size, count: int, seed: int, url: str) -> dict[str, Any]:
    """See the module docstring. ``count`` notifications; the model is ``size``'s snapshot."""
    import kombu

    from bench.live import _broker_reachable, _Bus, _kombu_url, _log, _safe_url

    result: dict[str, Any] = {"part": "backlog", "size": size.name, "instances": size.instances}
    reason = _broker_reachable(url)
    if reason is not None:
        result["skipped"] = reason
        return result
    service = SyncService(ComputeModel(), event_types=NOVA_EVENT_TYPES)
    bootstrap(service, read_snapshot(path))
    sim = CloudSim(service.model, seed + 7)
    bus = _Bus(url)
    pool = bus.pool("backlog")
    try:
        declaring = _listener(service, bus, pool, None)
        declaring.start()  # declares the pool queue and its bindings, as a first start does
        declaring.stop()
        _log(f"[live/backlog] publishing {count:,} notifications into {pool}")
        t0 = time.perf_counter()
        body_bytes = 0
        with kombu.Connection(_kombu_url(url)) as connection:
            producer = kombu.Producer(connection.default_channel)
            sent = 0
            while sent < count:
                for line in sim.state_stream(min(PUBLISH_CHUNK, count - sent)):
                    line["metadata"]["message_id"] = str(uuid.uuid4())
                    body = _envelope(line)
                    body_bytes += len(body)
                    producer.publish(
                        body,
                        exchange=bus.exchange,
                        routing_key=f"{bus.topic}.info",
                        content_type="application/json",
                        content_encoding="utf-8",
                        declare=[],
                    )
                sent += PUBLISH_CHUNK
        bus.wait_depth([pool], count, timeout=600)
        published = time.perf_counter() - t0
        _log(f"[live/backlog] queued in {published:.0f} s")
        base = _rss_mb(os.getpid())

        phases: dict[str, Any] = {}
        for name, prefetch in (("unlimited prefetch (oslo default)", 0), ("cdm-sync", None)):
            listener = _listener(service, bus, pool, prefetch)
            listener.hold()  # as the bootstrap does while it lists Nova
            listener.start()
            held = _watch_held(listener, HOLD_WATCH_S)
            phase: dict[str, Any] = {
                "prefetch": listener.prefetch,
                "held": held.to_dict(),
                "held_messages": listener.stats.buffered,
                "received": listener.stats.received,
                "unacknowledged": _unacknowledged(pool),
            }
            _log(f"[live/backlog] {name}: held phase {phase['held']}")
            if prefetch == 0:
                listener.stop()  # the receiver's unacknowledged messages go back to the queue
                bus.wait_depth([pool], count, timeout=600)
            else:
                drain = _Peaks()
                start = time.perf_counter()
                target = listener.stats.applied + count
                listener.release()
                deadline = time.monotonic() + DRAIN_TIMEOUT_S
                while listener.stats.applied < target:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"applied {listener.stats.applied} of {target}")
                    drain.sample(listener)
                    time.sleep(SAMPLE_INTERVAL)
                phase["drain"] = drain.to_dict()
                phase["drain_s"] = round(time.perf_counter() - start, 1)
                listener.stop()
                _log(f"[live/backlog] {name}: drained in {phase['drain_s']} s, {phase['drain']}")
            phases[name] = phase
        result.update(
            notifications=count,
            body_bytes=body_bytes,
            publish_s=round(published, 1),
            broker=_safe_url(url),
            service_before_mb=round(base, 1),
            phases=phases,
            integrity_problems=service.model.check_integrity()[:5],
        )
    finally:
        bus.cleanup()
    return result


def rows(result: dict[str, Any], label: str) -> list[tuple[str, str, str, str, str]]:
    """Table rows of the backlog part: peak RSS while held, and while draining."""
    n = result["notifications"]
    label += f", {n:,} queued"
    out = []
    for name, phase in result["phases"].items():
        held = phase["held"]
        ours = bool(phase["prefetch"])
        out.append(
            (
                f"backlog held at start, {name}: peak RSS service / receiver (MB)",
                label,
                f"{held['service_mb']:,.0f} / {held['receiver_mb']:,.0f}",
                f"receiver < {RECEIVER_LIMIT_MB}" if ours else "-",
                ("yes" if held["receiver_mb"] < RECEIVER_LIMIT_MB else "NO") if ours else "-",
            )
        )
        if "drain" in phase:
            drain = phase["drain"]
            out.append(
                (
                    f"backlog drained, {name}: peak RSS service / receiver (MB), rate",
                    label,
                    f"{drain['service_mb']:,.0f} / {drain['receiver_mb']:,.0f}, "
                    f"{n / phase['drain_s']:,.0f} notif./s",
                    f"receiver < {RECEIVER_LIMIT_MB}",
                    "yes" if drain["receiver_mb"] < RECEIVER_LIMIT_MB else "NO",
                )
            )
    return out


def details(result: dict[str, Any]) -> str:
    phases = "; ".join(
        f"{name}: prefetch {p['prefetch']}, held {p['held_messages']:,} in the service, "
        f"{p['unacknowledged']:,} handed out by the broker and unacknowledged"
        for name, p in result["phases"].items()
    )
    return (
        f"- live/backlog: {result['notifications']:,} notifications "
        f"({result['body_bytes'] / result['notifications']:,.0f} B each on the wire) queued in "
        f"{result['publish_s']} s; service RSS before starting the listener "
        f"{result['service_before_mb']} MB; {phases}"
    )
