"""Live benchmark rows: RabbitMQ into the model, bootstrap over HTTP, full audit.

``bench/run.py`` measures the core paths in one thread on prepared input. What a deployment
also needs to know is whether the live plumbing keeps up: the oslo.messaging listener draining
a real RabbitMQ queue into the model (next to a no-op oslo.messaging batch listener draining the
same queue, the best the broker and oslo.messaging allow on this box), the gap-free bootstrap
listing a 200,000-server cloud over HTTP through python-novaclient, and the full audit diffing
200,000 instances. This module measures those three with the product's own classes
(:class:`~cdm_sync.messaging.listener.NotificationListener`,
:class:`~cdm_sync.nova.collector.NovaCollector`, :class:`~cdm_sync.sync.engine.SyncEngine`)
against real peers (the RabbitMQ on 127.0.0.1 and the test Nova of ``tests/fakenova.py``).

``python -m bench.run`` runs these parts (each in a fresh process, ``--part``, internal) unless
``--no-live`` is given; see bench/README.md.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import importlib.util
import io
import json
import multiprocessing
import os
import pstats
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

from bench.run import (
    CAPTURED_US,
    DOMAIN,
    RESULT_PREFIX,
    ROOT,
    SIZES,
    CloudSim,
    Size,
    _api_time,
    _clock,
    _elapsed,
    _outcomes,
    _profile_text,
    _uuid,
)
from cdm_sync.messaging.endpoints import Dispatcher, make_endpoints
from cdm_sync.model import ComputeModel
from cdm_sync.model.graph import DEFAULT_DEDUPE_WINDOW
from cdm_sync.nova.event_types import NOVA_EVENT_TYPES
from cdm_sync.nova.snapshot import Snapshot, listing_of, read_snapshot
from cdm_sync.replay import bootstrap
from cdm_sync.runtime import settle_heap
from cdm_sync.sync.engine import RunReport, SyncEngine
from cdm_sync.sync.ports import Listing, ListingError, Progress
from cdm_sync.sync.service import SyncService

FAKENOVA_MODULE = ROOT / "tests" / "fakenova.py"

DEFAULT_RABBIT_URL = "rabbit://guest:guest@127.0.0.1:5672/"
# The listener's defaults ([notifications_listener] batch_size / batch_timeout).
BATCH_SIZE = 256
BATCH_TIMEOUT = 0.1
LIVE_NOTIFICATIONS = 20_000
# Drains per contender, alternating no-op, cdm-sync, cdm-sync, no-op, ...: an even count puts
# both contenders at the same mean position, so a drift over the run (later drains are slower
# for both) favours neither.
ROUNDS = 4
DRAIN_TIMEOUT_S = 300.0
# How often the drain of cdm-sync's listener checks its counters (the no-op one sets an event):
# rarely enough not to take the GIL from the threads being measured, the error <= 20 ms.
POLL_INTERVAL = 0.02

# Targets (see bench/README.md). The audit target is stated for 200,000 instances and scaled
# linearly for other sizes, like the bootstrap one in bench/run.py.
RATIO_TARGET = 0.90
AUDIT_TARGET_S = 3.0
AUDIT_TARGET_INSTANCES = 200_000
# Share of the listing changed behind the model's back for the audit with drift: a third
# missing (created, notification lost), a third ghosts (deleted), a third stale fields.
DRIFT_SHARE = 0.005

PARTS = ("rabbit", "nova", "audit", "backlog")
BACKLOG = 1_000_000


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _load_module(path: Path, name: str) -> ModuleType:
    """A test helper module loaded by path (an installed ``tests`` package cannot shadow it)."""
    found = sys.modules.get(name)
    if found is not None:
        return found
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@contextmanager
def _all_threads_profiled(profiles: list[tuple[str, cProfile.Profile]]) -> Iterator[None]:
    """Profile every thread started inside the block, one cProfile each, named after its
    thread (the listener applies in its own thread, the collector's Placement reads run in a
    thread pool: not in the caller's thread). The listener's receiving process is another
    process, not profiled here: its poll loop is oslo.messaging's, as the no-op's is."""

    def start(frame: Any, event: str, arg: Any) -> None:
        profile = cProfile.Profile()
        profiles.append((threading.current_thread().name, profile))
        profile.enable()  # replaces this hook for the rest of the thread

    threading.setprofile(start)
    try:
        yield
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]


def _profiles_text(profiles: list[cProfile.Profile], top: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(*profiles, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


_WAITING = ("<method 'acquire' of '_thread.lock' objects>", "<built-in method time.sleep>")


def _busy_profiles(
    profiles: list[tuple[str, cProfile.Profile]], top: int, least: float = 0.5
) -> dict[str, str]:
    """One text per thread that spent at least ``least`` seconds (profiled) running code
    rather than waiting for a lock or sleeping."""
    out = {}
    for name, profile in profiles:
        stats = pstats.Stats(profile)
        entries = stats.stats  # type: ignore[attr-defined]
        waiting = sum(v[2] for k, v in entries.items() if k[2] in _WAITING)
        if stats.total_tt - waiting >= least:  # type: ignore[attr-defined]
            out[f"thread {name}"] = _profiles_text([profile], top)
    return out


# -- 1. RabbitMQ -> model, next to a no-op batch listener -----------------------------------------


def _safe_url(url: str) -> str:
    """The broker's address without credentials, for messages."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5672}"


def _kombu_url(url: str) -> str:
    """oslo's ``rabbit://u:p@h:port/`` as kombu spells it (vhost ``/`` is ``//``)."""
    return "amqp://" + url.split("://", 1)[1].rstrip("/") + "//"


def _broker_reachable(url: str) -> str | None:
    """None when RabbitMQ answers an AMQP handshake, else why not (no credentials in it)."""
    import kombu

    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2):
            pass
        with kombu.Connection(_kombu_url(url), connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as exc:
        return f"RabbitMQ at {_safe_url(url)} unreachable: {type(exc).__name__}"
    return None


def _stat_cpu(stat: Path) -> float:
    """CPU seconds (user + system) in a /proc ``stat`` file, of a process or a thread."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds used so far by each thread of this process (Linux), by native thread id,
    with the thread's name: tells oslo.messaging's poll thread from the thread applying."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[int, tuple[str, float]] = {}
    for task in Path("/proc/self/task").iterdir():
        with suppress(OSError):
            tid = int(task.name)
            out[tid] = (names.get(tid, f"tid {tid}"), _stat_cpu(task / "stat"))
    return out


def _process_cpu(pid: int | None) -> float:
    """CPU seconds used so far by another process of ours (Linux)."""
    return _stat_cpu(Path(f"/proc/{pid}/stat"))


def _thread_cpu_since(before: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per thread since ``before`` (threads started since count from zero), the
    busiest first; threads that used less than 10 ms are left out."""
    after = _thread_cpu()
    used = {
        f"{name} ({tid})": cpu - before.get(tid, (name, 0.0))[1]
        for tid, (name, cpu) in after.items()
    }
    return dict(sorted(((k, v) for k, v in used.items() if v >= 0.01), key=lambda kv: -kv[1]))


class _GcTime:
    """CPU time the cyclic collector takes inside the block (thread CPU time: a shared VM's
    stolen time is not counted), and its full collections."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.longest = 0.0  # the longest single collection: a pause for everything in the process
        self.full = 0
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.thread_time()
            return
        took = time.thread_time() - self._started
        self.seconds += took
        self.longest = max(self.longest, took)
        self.full += info["generation"] == 2

    def __enter__(self) -> _GcTime:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


class _NoOpBatchEndpoint:
    """A batch notification endpoint that only counts: what draining costs oslo.messaging
    itself (poll thread, decoding, acknowledging) with nothing applied."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.expected = 0
        self.done = threading.Event()

    def expect(self, n: int) -> None:
        with self._lock:
            self.count = 0
            self.expected = n
            self.done.clear()

    def _count(self, messages: list[Any]) -> None:
        with self._lock:
            self.count += len(messages)
            if self.count >= self.expected:
                self.done.set()

    audit = debug = info = warn = error = critical = sample = _count


class _EnvelopeClock:
    """Stands in for ``timeutils`` in oslo.messaging's notifier module: the time to stamp."""

    def __init__(self) -> None:
        self.now = datetime(1970, 1, 1)

    def utcnow(self, with_timezone: bool = False) -> datetime:
        return self.now


class _Bus:
    """This run's corner of the broker: its exchange, its topic and the pool queues."""

    def __init__(self, url: str) -> None:
        import oslo_messaging
        from oslo_config import cfg

        self.url = url
        self.tag = uuid.uuid4().hex[:10]
        self.exchange = f"cdm-bench-{self.tag}"
        self.topic = f"bench-vn-{self.tag}"
        self.pools: list[str] = []
        self.conf = cfg.ConfigOpts()
        # The Notifier sends to the transport's control_exchange: point it at this run's
        # exchange (creating a transport once registers the option).
        oslo_messaging.get_notification_transport(self.conf, url=url).cleanup()
        self.conf.set_override("control_exchange", self.exchange)
        self.transport = oslo_messaging.get_notification_transport(self.conf, url=url)
        self.targets = [oslo_messaging.Target(topic=self.topic, exchange=self.exchange)]
        self.notifier = oslo_messaging.Notifier(
            self.transport, driver="messagingv2", topics=[self.topic]
        )
        self._prepared: dict[str, Any] = {}

    def pool(self, name: str) -> str:
        pool = f"bench-{name}-{self.tag}"
        self.pools.append(pool)
        return pool

    def publish(self, lines: list[dict[str, Any]]) -> None:
        """Publish trace lines in order, as Nova's Notifier does, with their envelope times.

        oslo.messaging's Notifier stamps ``timestamp`` with ``timeutils.utcnow()``; the clock
        the Notifier module reads is replaced (in that module only) by the simulated cloud's,
        so the stream is the one bench/run.py applies, every notification newer than the
        snapshot the model was loaded from.
        """
        from oslo_messaging.notify import notifier as notifier_module

        clock = _EnvelopeClock()
        with mock.patch.object(notifier_module, "timeutils", clock):
            for line in lines:
                publisher_id = line["publisher_id"]
                notifier = self._prepared.get(publisher_id)
                if notifier is None:
                    notifier = self.notifier.prepare(publisher_id=publisher_id)
                    self._prepared[publisher_id] = notifier
                clock.now = datetime.strptime(line["metadata"]["timestamp"], "%Y-%m-%d %H:%M:%S.%f")
                notifier.info({}, line["event_type"], line["payload"])

    def depth(self, queue: str) -> int:
        import kombu

        with kombu.Connection(_kombu_url(self.url), connect_timeout=3) as connection:
            _, messages, _ = connection.default_channel.queue_declare(queue, passive=True)
        return int(messages)

    def wait_depth(self, queues: list[str], n: int, timeout: float = 60.0) -> None:
        """Publishing is asynchronous: wait until RabbitMQ has queued all ``n`` everywhere."""
        deadline = time.monotonic() + timeout
        while True:
            depths = [self.depth(q) for q in queues]
            if all(d >= n for d in depths):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"queues {queues} hold {depths} messages, expected {n}")
            time.sleep(0.1)

    def cleanup(self) -> None:
        """Delete the pool queues, the queues the Notifier declared, and the exchange."""
        import kombu
        from oslo_messaging.notify.dispatcher import PRIORITIES

        with suppress(Exception):
            self.transport.cleanup()
        queues = self.pools + [f"{self.topic}.{p}" for p in PRIORITIES]
        with kombu.Connection(_kombu_url(self.url), connect_timeout=3) as connection:
            for queue in queues:
                try:
                    connection.default_channel.queue_delete(queue)
                except Exception:  # never declared: the channel was closed, reopen
                    connection.close()
                    connection.connect()
            with suppress(Exception):
                connection.default_channel.exchange_delete(self.exchange)


class _Contender:
    """One drain of one pre-filled pool queue: cdm-sync's listener applying to its own model,
    or oslo.messaging's stock batch listener with the no-op endpoint."""

    def __init__(self, bus: _Bus, kind: str, index: int, service: SyncService | None) -> None:
        self.kind = kind
        self.index = index
        self.bus = bus
        self.pool = bus.pool(f"{kind}{index}")
        self.service = service
        self.noop = _NoOpBatchEndpoint()
        self.listener: Any = None
        if service is not None:
            from cdm_sync.messaging.listener import NotificationListener

            self.listener = NotificationListener(
                bus.url,
                Dispatcher(make_endpoints(service), service),
                topics=[bus.topic],
                exchange=bus.exchange,
                pool=self.pool,
                batch_size=BATCH_SIZE,
                batch_timeout=BATCH_TIMEOUT,
            )

    def _noop_server(self) -> Any:
        import oslo_messaging

        return oslo_messaging.get_batch_notification_listener(
            self.bus.transport,
            self.bus.targets,
            [self.noop],
            executor="threading",
            pool=self.pool,
            batch_size=BATCH_SIZE,
            batch_timeout=BATCH_TIMEOUT,
        )

    def declare(self) -> None:
        """Declare the pool queue and its bindings (a listener's start does): from now on
        every notification published is queued there too."""
        if self.listener is not None:
            self.listener.start()
            self.listener.stop()
        else:
            server = self._noop_server()
            server.start()
            server.stop()
            server.wait()

    def drain(self, n: int) -> tuple[dict[str, float], dict[str, float], _GcTime]:
        """Start consuming and time until all ``n`` queued notifications were handled.

        The clock starts once the contender consumes (oslo.messaging's ``start()`` has
        returned; for cdm-sync, once its receiving process is ready): what is timed is the
        drain, not a process start. Returns the wall and CPU time (cdm-sync's includes its
        receiving process's), the CPU time of each busy thread (and of the receiving process),
        and this process's collector share. Every drain starts from a settled heap, as a
        service's listener does after a full audit (``cdm_sync.runtime.settle_heap``): what
        earlier drains left in the collector's view does not slow later ones down, whichever
        kind they are.
        """
        settle_heap()
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        threads = _thread_cpu()
        if self.listener is None:
            self.noop.expect(n)
            server = self._noop_server()
            with _GcTime() as in_gc:
                server.start()
                start = _clock()
                if not self.noop.done.wait(DRAIN_TIMEOUT_S):
                    raise RuntimeError(f"no-op listener drained {self.noop.count} of {n}")
                took = _elapsed(start)
            per_thread = _thread_cpu_since(threads)
            server.stop()
            server.wait()
            return took, per_thread, in_gc
        listener = self.listener
        target = listener.stats.applied + n
        with _GcTime() as in_gc:
            listener.start()
            start = _clock()
            pid = listener.receiver_pid
            receiver_before = _process_cpu(pid)
            while listener.stats.applied < target:  # the model has applied them all
                if time.monotonic() > deadline:
                    raise RuntimeError(f"listener applied {listener.stats.applied} of {target}")
                time.sleep(POLL_INTERVAL)
            took = _elapsed(start)
            receiver_cpu = _process_cpu(pid) - receiver_before
        per_thread = _thread_cpu_since(threads)
        per_thread[f"receiving process ({pid})"] = receiver_cpu
        took["cpu"] += receiver_cpu
        listener.stop()
        return took, per_thread, in_gc

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.stop()


def _warm_service(path: Path, warm_up: list[dict[str, Any]]) -> SyncService:
    """A model bootstrapped from the snapshot that has applied ``warm_up`` (in process): a
    running service has filled its window of remembered message ids (as in bench/run.py)."""
    snapshot = read_snapshot(path)
    service = SyncService(ComputeModel(), event_types=NOVA_EVENT_TYPES)
    bootstrap(service, snapshot)
    del snapshot
    dispatcher = Dispatcher(make_endpoints(service), service)
    for line in warm_up:
        dispatcher.deliver(line)
    return service


def rabbit_part(
    path: Path, size: Size, notifications: int, rounds: int, seed: int, url: str, profile: bool,
    top: int,
) -> dict[str, Any]:  # fmt: skip
    """Publish ``notifications`` once into ``2 * rounds`` pool queues (a pool gets a copy of
    every message), then drain them one at a time: half with cdm-sync's listener, each into
    its own identical model, half with a no-op oslo batch listener, alternating (ABBA...)."""
    result: dict[str, Any] = {"part": "rabbit", "size": size.name, "instances": size.instances}
    reason = _broker_reachable(url)
    if reason is not None:
        result["skipped"] = reason
        return result

    # Identical models: bootstrapped from the same snapshot, warmed up with the same stream.
    first = SyncService(ComputeModel(), event_types=NOVA_EVENT_TYPES)
    bootstrap(first, read_snapshot(path))
    sim = CloudSim(first.model, seed + 2)
    warm_up = sim.state_stream(DEFAULT_DEDUPE_WINDOW + 1000)
    del first
    cdm_runs = rounds + (1 if profile else 0)
    services = [_warm_service(path, warm_up) for _ in range(cdm_runs)]
    del warm_up
    half = notifications // 2
    lines = sim.state_stream(half) + sim.move_stream(notifications - half)
    gc.collect()

    bus = _Bus(url)
    contenders: list[_Contender] = []
    order: list[_Contender] = []
    try:
        cdm = [_Contender(bus, "cdm", i, s) for i, s in enumerate(services, 1)]
        noop = [_Contender(bus, "noop", i, None) for i in range(1, rounds + 1)]
        contenders = cdm + noop
        for contender in contenders:
            contender.declare()
        _log(f"[live/rabbit] publishing {len(lines):,} notifications into {len(contenders)} pools")
        t0 = time.perf_counter()
        bus.publish(lines)
        bus.wait_depth([c.pool for c in contenders], len(lines))
        published = time.perf_counter() - t0
        del lines
        gc.collect()
        for i in range(rounds):
            pair = (noop[i], cdm[i]) if i % 2 == 0 else (cdm[i], noop[i])
            order.extend(pair)
        drains = []
        for contender in order:
            before = Counter(contender.service.stats.by_type) if contender.service else None
            took, per_thread, in_gc = contender.drain(notifications)
            drain: dict[str, Any] = {
                "kind": contender.kind,
                "took": took,
                "threads": per_thread,
                "gc": {"seconds": in_gc.seconds, "longest": in_gc.longest, "full": in_gc.full},
            }
            if contender.service is not None:
                drain["outcomes"] = _outcomes(before or Counter(), contender.service.stats.by_type)
                drain["listener"] = {
                    k: getattr(contender.listener.stats, k)
                    for k in ("received", "applied", "batches", "failures", "requeued", "dropped")
                }
                drain["integrity_problems"] = contender.service.model.check_integrity()[:5]
            drains.append(drain)
            _log(f"[live/rabbit] {contender.pool}: drained in {took['wall']:.2f} s")
        result.update(
            notifications=notifications,
            batch_size=BATCH_SIZE,
            batch_timeout=BATCH_TIMEOUT,
            broker=_safe_url(url),
            publish_s=published,
            drains=drains,
        )
        if profile:
            profiles: list[tuple[str, cProfile.Profile]] = []
            with _all_threads_profiled(profiles):
                cdm[-1].drain(notifications)
            result["profiles"] = {
                f"RabbitMQ drain, {name}": text
                for name, text in _busy_profiles(profiles, top).items()
            }
    finally:
        for contender in contenders:
            with suppress(Exception):
                contender.stop()
        bus.cleanup()
    return result


# -- 2. bootstrap over HTTP from the test Nova (served by another process) ----------------------

_FLAVORS = (
    ("1", "m1.tiny", 1, 512, 1, 1),
    ("2", "m1.small", 1, 2048, 20, 4),
    ("3", "m1.medium", 2, 4096, 40, 4),
    ("4", "m1.large", 4, 8192, 80, 2),
    ("5", "m1.xlarge", 8, 16384, 160, 1),
)
# (vm_state, power state, share); shelved-offloaded and error servers have no host.
_STATES = (
    ("active", 1, 0.85),
    ("stopped", 4, 0.09),
    ("paused", 3, 0.02),
    ("suspended", 7, 0.01),
    ("shelved_offloaded", 4, 0.01),
    ("error", 0, 0.01),
    ("soft-delete", 4, 0.005),  # hidden by the default listing; the collector lists them too
    ("deleted", 0, 0.005),  # never listed by a full listing
)
_METADATA = ({}, {}, {"role": "web"}, {"role": "db", "backup": "daily"}, {"ha": "true"})


def _populate(fake: ModuleType, size: Size, seed: int) -> Any:
    """A FakeCloud of ``size``: flavors, hosts (service + hypervisor + Placement inventories)
    and servers in realistic states, created a second apart."""
    rng = random.Random(seed)
    cloud = fake.FakeCloud(max_limit=1000)
    for flavor_id, name, vcpus, ram, disk, _ in _FLAVORS:
        cloud.add_flavor(flavor_id, name, vcpus, ram, disk)
    hosts = []
    for i in range(size.hosts):
        host = f"compute{i:05d}"
        cloud.add_host(
            host,
            node_uuid=_uuid(rng),
            hypervisor_hostname=f"{host}.{DOMAIN}",
            vcpus=64,
            memory_mb=262144,
            local_gb=4096,
        )
        hosts.append(host)
    projects = [
        uuid.UUID(int=rng.getrandbits(128)).hex for _ in range(max(1, size.instances // 20))
    ]
    flavor_ids = [f[0] for f in _FLAVORS]
    flavor_weights = [f[5] for f in _FLAVORS]
    states = [s[:2] for s in _STATES]
    state_weights = [s[2] for s in _STATES]
    base = CAPTURED_US - size.instances * 1_000_000 - 86400 * 1_000_000
    for seq in range(size.instances):
        vm_state, power = rng.choices(states, state_weights)[0]
        host = None if vm_state in ("shelved_offloaded", "error") else rng.choice(hosts)
        project = rng.choice(projects)
        created = base + seq * 1_000_000
        updated = created + rng.randint(1, 86400) * 1_000_000
        server = cloud.add_server(
            _uuid(rng),
            host=host,
            node=f"{host}.{DOMAIN}" if host else None,
            flavor_id=rng.choices(flavor_ids, flavor_weights)[0],
            vm_state=vm_state,
            power_state=power,
            name=f"{project[:6]}-vm-{seq:06d}",
            tenant_id=project,
            user_id=f"user-{project[:8]}",
            metadata=rng.choice(_METADATA),
            created=_api_time(created),
            updated=_api_time(updated),
        )
        if vm_state == "deleted":
            # FakeCloud.delete_server looks the server up by id (linear): set what it sets.
            server.update(deleted=True, task_state=None, terminated_at=server["updated"])
    return cloud


def _fake_nova_main(conn: Any, size_name: str, seed: int) -> None:
    """The test Nova in its own process, so that its CPU time is not cdm-sync's.

    Answers ``"cpu"`` with this process's CPU time so far (every thread) and ``"stop"`` by
    stopping; sends its URLs once it is serving.
    """
    fake = _load_module(FAKENOVA_MODULE, "_cdm_bench_fakenova")
    size = SIZES[size_name]
    t0 = time.perf_counter()
    cloud = _populate(fake, size, seed)
    nova = fake.FakeNova(cloud).start()
    conn.send(
        {
            "auth_url": nova.auth_url,
            "built_s": time.perf_counter() - t0,
            "servers": len(cloud.servers),
            "listed_servers": sum(1 for s in cloud.servers if not s["deleted"]),
            "max_microversion": cloud.max_microversion,
        }
    )
    while True:
        message = conn.recv()
        if message == "cpu":
            with cloud.lock:
                requests = len(cloud.requests)
            conn.send({"cpu": time.process_time(), "requests": requests})
        elif message == "stop":
            nova.stop()
            conn.send("stopped")
            return


class _TimedCollector:
    """The Collector port around the real collector: times the listing it hands the engine
    (wall clock and this process's CPU) and when each kind of item was last reported."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.took: dict[str, float] | None = None
        self.marks: dict[str, float] = {}
        self._start = 0.0

    def _progress(self, what: str, count: int) -> None:
        self.marks[what] = time.perf_counter() - self._start

    def full_listing(self, progress: Progress | None = None) -> Listing:
        self.marks = {}
        start = _clock()
        self._start = start[0]
        listing = self.inner.full_listing(self._progress)
        self.took = _elapsed(start)
        return listing

    def changes_since(self, since: float, progress: Progress | None = None) -> Listing:
        return self.inner.changes_since(since, progress)


def nova_part(size: Size, seed: int, profile: bool, top: int) -> dict[str, Any]:
    """``SyncEngine.bootstrap`` (no gate) with the real NovaCollector, over HTTP, from the
    test Nova serving ``size`` in another process."""
    from keystoneauth1 import loading
    from keystoneauth1 import session as ks_session

    from cdm_sync.nova.collector import NovaCollector

    result: dict[str, Any] = {"part": "nova", "size": size.name, "instances": size.instances}
    result["hosts"] = size.hosts
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=_fake_nova_main, args=(theirs, size.name, seed + 3), daemon=True)
    child.start()
    try:
        if not ours.poll(600):
            raise RuntimeError("the test Nova did not start")
        info = ours.recv()
        result["fake"] = {k: v for k, v in info.items() if k != "auth_url"}

        def session() -> Any:
            auth = loading.get_plugin_loader("password").load_from_options(
                auth_url=info["auth_url"],
                username="admin",
                password="secret",  # the test Nova's fixed test user, not a real credential
                project_name="admin",
                user_domain_name="Default",
                project_domain_name="Default",
            )
            return ks_session.Session(auth=auth, timeout=120)

        def fake_cpu() -> dict[str, Any]:
            ours.send("cpu")
            return ours.recv()

        def run() -> tuple[RunReport, _TimedCollector, SyncService, dict[str, float]]:
            collector = _TimedCollector(NovaCollector(session(), page_size=1000))
            service = SyncService(ComputeModel(), event_types=NOVA_EVENT_TYPES)
            engine = SyncEngine(service, collector)
            start = _clock()
            report = engine.bootstrap()
            took = _elapsed(start)
            return report, collector, service, took

        gc.collect()
        fake_before = fake_cpu()
        report, collector, service, took = run()
        fake_after = fake_cpu()
        assert collector.took is not None
        model = service.model
        result.update(
            microversion=collector.inner.microversion,
            total=took,
            listing=collector.took,
            load={k: took[k] - collector.took[k] for k in took},
            fake_cpu=fake_after["cpu"] - fake_before["cpu"],
            requests=fake_after["requests"] - fake_before["requests"],
            marks=collector.marks,
            state=report.result,
            listed_servers=report.listed_servers,
            rejected=report.rejected,
            model_instances=model.instance_count,
            model_nodes=model.node_count,
            integrity_problems=model.check_integrity()[:5],
        )
        del report, collector, service, model
        gc.collect()
        if profile:
            caller = cProfile.Profile()
            profiles: list[tuple[str, cProfile.Profile]] = []
            with _all_threads_profiled(profiles):  # the Placement reads run in a thread pool
                caller.enable()
                run()
                caller.disable()
            result["profiles"] = {
                "bootstrap over HTTP, caller's thread": _profiles_text([caller], top),
                "bootstrap over HTTP, Placement reader threads together": _profiles_text(
                    [p for _, p in profiles], top
                ),
            }
    finally:
        with suppress(Exception):
            ours.send("stop")
            if ours.poll(30):
                ours.recv()
        child.join(30)
        if child.is_alive():
            child.terminate()
    return result


# -- 3. full audit against a listing in memory -----------------------------------------------------


class _PreparedCollector:
    """The Collector port over listings prepared in memory: each full listing hands the next
    one (Nova's answer time is not part of what is measured)."""

    def __init__(self) -> None:
        self.listings: list[Listing] = []

    def full_listing(self, progress: Progress | None = None) -> Listing:
        if not self.listings:
            raise ListingError("no prepared listing left")
        return self.listings.pop(0)

    def changes_since(self, since: float, progress: Progress | None = None) -> Listing:
        raise ListingError("the audit benchmark prepares full listings only")


def _drifted(items: list[dict[str, Any]], share: float, seed: int) -> tuple[list[Any], int]:
    """A copy of a listing where Nova changed ``share`` of the servers without the model
    hearing of it: new servers (missing), deleted ones (ghosts), changed states (stale)."""
    rng = random.Random(seed)
    each = max(1, int(len(items) * share / 3))
    picked = rng.sample(range(len(items)), 3 * each)
    ghosts = set(picked[:each])
    stale = set(picked[each : 2 * each])
    templates = picked[2 * each :]
    out: list[Any] = []
    recent = _api_time(CAPTURED_US - 5_000_000)
    for index, item in enumerate(items):
        if index in ghosts:
            continue
        if index in stale:
            item = dict(item)
            active = item.get("OS-EXT-STS:vm_state") == "active"
            item["OS-EXT-STS:vm_state"] = "stopped" if active else "active"
            item["OS-EXT-STS:power_state"] = 4 if active else 1
            item["status"] = "SHUTOFF" if active else "ACTIVE"
            item["updated"] = recent
        out.append(item)
    for index in templates:
        item = dict(items[index])
        item["id"] = _uuid(rng)
        item["created"] = item["updated"] = recent
        out.append(item)
    return out, each


def audit_part(path: Path, size: Size, seed: int, profile: bool, top: int) -> dict[str, Any]:
    """``SyncEngine.full_audit`` on a bootstrapped model: once with a listing equal to the
    model (the steady state), once with ``DRIFT_SHARE`` of it drifted."""
    result: dict[str, Any] = {"part": "audit", "size": size.name, "instances": size.instances}
    collector = _PreparedCollector()
    service = SyncService(ComputeModel(), event_types=NOVA_EVENT_TYPES)
    # No margin: the prepared listings race no Nova (what the model observed before an audit
    # began is older than that audit's listing).
    engine = SyncEngine(service, collector, deletion_margin=0.0)
    # The live model, bootstrapped by the engine from the snapshot file (as cdm-sync serve
    # does from a listing). Its objects are frozen out of the GC's view by the bootstrap.
    collector.listings.append(listing_of(read_snapshot(path)))
    engine.bootstrap()
    # The listings the audits get: Nova's JSON decoded as the collector decodes it (plain
    # dicts, nothing pre-translated), young objects under the GC as a fresh listing is.
    gc.disable()
    doc = json.loads(path.read_bytes())
    gc.enable()
    items = doc.pop("servers")
    drifted, each = _drifted(items, DRIFT_SHARE, seed + 4)

    def listing(servers: list[Any]) -> Listing:
        return listing_of(Snapshot.from_dict({**doc, "servers": list(servers)}, "bench listing"))

    collector.listings += [listing(items), listing(drifted)]
    del drifted
    # Out of the collector's view, as a service holds no listing but the one being audited:
    # the engine's heap settling after each audit (cdm_sync.runtime) would otherwise scan the
    # listings still waiting here, millions of objects a real audit does not have.
    gc.collect()
    gc.freeze()
    runs = []
    for name in ("no drift", f"drift {DRIFT_SHARE:.1%}"):
        start = _clock()
        report = engine.full_audit()
        took = _elapsed(start)
        assert report.audit is not None
        runs.append(
            {
                "name": name,
                "took": took,
                "timings": dict(report.audit.timings),
                "result": report.result,
                "reason": report.reason,
                "drift": report.drift_by_kind(),
                "outcomes": dict(report.outcomes),
                "records": report.records,
                "listed": report.listed_servers,
            }
        )
        _log(f"[live/audit] {size.name} {name}: {took['wall']:.2f} s, {report.line()}")
    result.update(runs=runs, drift_each=each, state=engine.state.value)
    result["integrity_problems"] = service.model.check_integrity()[:5]
    if profile:
        collector.listings.append(listing(items))
        gc.collect()
        prof = cProfile.Profile()
        prof.enable()
        engine.full_audit()
        prof.disable()
        result["profiles"] = {"full audit, no drift": _profile_text(prof, top)}
    return result


# -- parent: run the parts, make the rows -------------------------------------------------------


def run_parts(
    parts: list[str],
    size: str,
    snapshot: Path,
    *,
    notifications: int,
    rounds: int,
    seed: int,
    url: str,
    profile: bool,
    top: int,
    backlog: int = BACKLOG,
) -> list[dict[str, Any]]:
    """Run each part in a fresh process (memory and GC state of one never pollute another)."""
    results = []
    for part in parts:
        _log(f"[{size}] live part {part!r} in a fresh process")
        cmd = [
            sys.executable,
            "-m",
            "bench.live",
            "--part",
            part,
            "--size",
            size,
            "--snapshot",
            str(snapshot),
            "--notifications",
            str(notifications),
            "--rounds",
            str(rounds),
            "--seed",
            str(seed),
            "--rabbit-url",
            url,
            "--profile-top",
            str(top),
            "--backlog",
            str(backlog),
        ]
        if profile:
            cmd.append("--profile")
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False)
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
        if proc.returncode != 0 or not found:
            _log(proc.stdout)
            _log(f"[{size}] live part {part!r} failed with exit status {proc.returncode}")
            results.append({"part": part, "size": size, "error": f"exit {proc.returncode}"})
            continue
        results.append(json.loads(found[-1][len(RESULT_PREFIX) :]))
    return results


def _ok(flag: bool) -> str:
    return "yes" if flag else "NO"


def _secs(took: dict[str, float]) -> str:
    return f"{took['wall']:.2f} (CPU {took['cpu']:.2f})"


def _label(result: dict[str, Any]) -> str:
    size = SIZES[result["size"]]
    return f"{size.name} ({size.hosts:,} hosts / {size.instances:,} inst.)"


def _sum(drains: list[dict[str, Any]], kind: str) -> tuple[int, dict[str, float]]:
    """How many drains of ``kind`` and their summed wall and CPU times."""
    mine = [d["took"] for d in drains if d["kind"] == kind]
    return len(mine), {k: sum(t[k] for t in mine) for k in ("wall", "cpu")}


def rows(result: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """Table rows (metric, size, value, target, ok?) of one live part."""
    part, label = result["part"], _label(result)
    if "error" in result:
        return [(f"live {part}: worker failed", label, result["error"], "-", "NO")]
    if "skipped" in result:
        return [(f"live {part}: skipped", label, result["skipped"], "-", "-")]
    if part == "backlog":
        from bench.backlog import rows as backlog_rows

        return backlog_rows(result, label)
    if part == "rabbit":
        n = result["notifications"]
        runs, cdm = _sum(result["drains"], "cdm")
        noop_runs, noop = _sum(result["drains"], "noop")
        cdm_rate, noop_rate = n * runs / cdm["wall"], n * noop_runs / noop["wall"]
        ratio = cdm_rate / noop_rate
        label += f", {n:,} notif. x {runs}"
        return [
            (
                "live: RabbitMQ -> model, cdm-sync listener (notifications/s)",
                label,
                f"{cdm_rate:,.0f} (CPU {n * runs / cdm['cpu']:,.0f})",
                f">= {RATIO_TARGET:.0%} of no-op",
                _ok(ratio >= RATIO_TARGET),
            ),
            (
                "live: RabbitMQ, no-op oslo batch listener (notifications/s)",
                label,
                f"{noop_rate:,.0f} (CPU {n * noop_runs / noop['cpu']:,.0f})",
                "-",
                "-",
            ),
            (
                "live: cdm-sync rate / no-op batch rate",
                label,
                f"{ratio:.1%} (CPU {noop['cpu'] / noop_runs / (cdm['cpu'] / runs):.1%})",
                f">= {RATIO_TARGET:.0%}",
                _ok(ratio >= RATIO_TARGET),
            ),
        ]
    if part == "nova":
        return [
            (
                "live: bootstrap via NovaCollector over HTTP, total (s)",
                label,
                _secs(result["total"]),
                "-",
                "-",
            ),
            (
                "live: of which listing, wall (test Nova CPU) (s)",
                label,
                f"{result['listing']['wall']:.2f} (test Nova {result['fake_cpu']:.2f})",
                "-",
                "-",
            ),
            (
                "live: of which listing, cdm-sync CPU (s)",
                label,
                f"{result['listing']['cpu']:.2f}",
                "-",
                "-",
            ),
            ("live: of which model load (s)", label, _secs(result["load"]), "-", "-"),
        ]
    target = AUDIT_TARGET_S * result["instances"] / AUDIT_TARGET_INSTANCES
    scaled = "" if result["instances"] == AUDIT_TARGET_INSTANCES else " (scaled)"
    out = []
    for run in result["runs"]:
        t = run["timings"]
        out += [
            (
                f"live: full audit, {run['name']}, total excl. Nova (s)",
                label,
                _secs(run["took"]),
                f"< {target:.2f}{scaled}",
                _ok(run["took"]["wall"] < target),
            ),
            (
                f"live: full audit, {run['name']}, shadow / diff / apply (s)",
                label,
                f"{t.get('shadow', 0):.2f} / {t.get('diff', 0):.2f} / {t.get('apply', 0):.2f}",
                "-",
                "-",
            ),
        ]
    return out


def details(result: dict[str, Any]) -> str:
    """The lines under the table for one live part."""
    part, size = result["part"], result["size"]
    if "error" in result or "skipped" in result:
        return f"- live {part} ({size}): {result.get('error') or result.get('skipped')}"
    if part == "backlog":
        from bench.backlog import details as backlog_details

        return backlog_details(result)
    out = []
    if part == "rabbit":
        n = result["notifications"]
        out.append(
            f"- live rabbit ({size}): broker {result['broker']}; {n:,} notifications (state "
            f"changes and moves from bench/run.py's CloudSim) published once with an "
            f"oslo.messaging Notifier (messagingv2) in {result['publish_s']:.1f} s (not timed) "
            f"into {len(result['drains'])} pool queues, then drained one queue at a time in "
            f"this order; batch size {result['batch_size']}, batch timeout "
            f"{result['batch_timeout']} s"
        )
        for d in result["drains"]:
            threads = ", ".join(f"{k} {v:.2f}" for k, v in list(d["threads"].items())[:4])
            in_gc = d["gc"]
            line = (
                f"  - {d['kind']}: {n / d['took']['wall']:,.0f}/s ({_secs(d['took'])} s; GC CPU "
                f"{in_gc['seconds']:.2f} s in all, {in_gc['full']} full collections, longest "
                f"{in_gc['longest'] * 1000:.0f} ms; CPU s by thread: {threads})"
            )
            if "outcomes" in d:
                outcomes = ", ".join(f"{k} {v:,}" for k, v in sorted(d["outcomes"].items()))
                unexpected = "" if d["outcomes"] == {"changed": n} else " -- UNEXPECTED"
                line += f"; model outcomes: {outcomes}{unexpected}; listener {d['listener']}"
                if d["integrity_problems"]:
                    line += f"; INTEGRITY PROBLEMS: {d['integrity_problems']}"
            out.append(line)
    elif part == "nova":
        marks = ", ".join(f"{k} done at {v:.2f} s" for k, v in result["marks"].items())
        fake = result["fake"]
        out.append(
            f"- live nova ({size}): test Nova at microversion {result['microversion']} "
            f"(max {fake['max_microversion']}) in its own process, cloud built in "
            f"{fake['built_s']:.1f} s (not timed), {fake['servers']:,} servers of which "
            f"{fake['listed_servers']:,} listable; {result['requests']:,} HTTP requests; "
            f"listing: {marks}; engine result {result['state']}, {result['listed_servers']:,} "
            f"servers listed, {result['rejected']} rejected; model "
            f"{result['model_instances']:,} instances / {result['model_nodes']:,} nodes"
        )
    else:
        out.append(
            f"- live audit ({size}): listings decoded in memory (not timed); drift run changes "
            f"{result['drift_each']:,} servers of each kind; engine state after: "
            f"{result['state']}"
        )
        for run in result["runs"]:
            out.append(
                f"  - {run['name']}: {run['result']}{'; ' + run['reason'] if run['reason'] else ''}"
                f"; drift corrected {run['drift']}; outcomes {run['outcomes']}; change records "
                f"{run['records']:,}"
            )
    if result.get("integrity_problems"):
        out.append(f"  - INTEGRITY PROBLEMS: {result['integrity_problems']}")
    return "\n".join(out)


def failed(result: dict[str, Any]) -> bool:
    """A worker that crashed, an integrity problem, or a drain whose outcomes were off."""
    if "error" in result or result.get("integrity_problems"):
        return True
    drains = [d for d in result.get("drains", ()) if "outcomes" in d]
    return any(
        d["integrity_problems"] or d["outcomes"] != {"changed": result["notifications"]}
        for d in drains
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.live",
        description="One live benchmark part (internal: python -m bench.run runs them).",
    )
    parser.add_argument("--part", choices=PARTS, required=True)
    parser.add_argument("--size", choices=list(SIZES), required=True)
    parser.add_argument("--snapshot", type=Path, required=True)
    parser.add_argument("--notifications", type=int, default=LIVE_NOTIFICATIONS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--rabbit-url", default=DEFAULT_RABBIT_URL)
    parser.add_argument("--backlog", type=int, default=BACKLOG)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-top", type=int, default=25)
    args = parser.parse_args(argv)
    # Stopped by SIGTERM (a timeout, say), still delete this run's queues: their messages would
    # otherwise stay in RabbitMQ (hundreds of MB at the default sizes).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    size = SIZES[args.size]
    if args.part == "rabbit":
        result = rabbit_part(
            args.snapshot,
            size,
            args.notifications,
            args.rounds,
            args.seed,
            args.rabbit_url,
            args.profile,
            args.profile_top,
        )
    elif args.part == "nova":
        result = nova_part(size, args.seed, args.profile, args.profile_top)
    elif args.part == "backlog":
        from bench.backlog import backlog_part

        result = backlog_part(args.snapshot, size, args.backlog, args.seed, args.rabbit_url)
    else:
        result = audit_part(args.snapshot, size, args.seed, args.profile, args.profile_top)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
