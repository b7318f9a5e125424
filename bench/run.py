"""Performance benchmark: notification throughput, snapshot bootstrap, memory and dump time.

cdm-sync must keep up with a large cloud's notification bus on one thread and bootstrap a large
cloud quickly from one compute API listing. This module measures exactly those paths with the
real code (snapshot reader, ``SyncService``, the oslo.messaging endpoints and ``deliver``) on
realistic input built from the real Nova data in ``tests/fixtures``, so a regression or an
optimisation shows up as a number against a target.

Run ``python -m bench.run`` from the repository root (``--help`` for options). Each model size is
measured in a fresh subprocess so that memory figures of one size do not pollute another; the
parent generates the snapshot file first (not timed), then collects and prints the results.
Unless ``--no-live`` (or ``--quick``) is given, the live rows of ``bench/live.py`` (RabbitMQ into
the model, bootstrap over HTTP, full audit) are measured too, also in fresh subprocesses.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import importlib.util
import io
import json
import os
import platform
import pstats
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from cdm_sync.messaging.endpoints import Dispatcher, make_endpoints
from cdm_sync.model import ComputeModel, Flavor
from cdm_sync.model.graph import DEFAULT_DEDUPE_WINDOW
from cdm_sync.nova.event_types import NOVA_EVENT_TYPES
from cdm_sync.nova.snapshot import SNAPSHOT_FORMAT, read_snapshot
from cdm_sync.replay import bootstrap
from cdm_sync.sync.service import SyncService

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_SNAPSHOT = ROOT / "tests" / "fixtures" / "basic_lifecycle" / "snapshot.json"
SAMPLES_MODULE = ROOT / "tests" / "samples.py"

# Marks the one stdout line of a worker that carries its results to the parent.
RESULT_PREFIX = "BENCH-RESULT "

# Targets (see bench/README.md). The bootstrap target is stated for 200,000 instances and scaled
# linearly for other sizes.
APPLY_TARGET_PER_S = 30_000.0
BOOTSTRAP_TARGET_S = 8.0
BOOTSTRAP_TARGET_INSTANCES = 200_000
RSS_TARGET_BYTES_PER_INSTANCE = 1.5 * 1024

# The simulated cloud: when the snapshot was taken, and how fast its notifications arrive.
CAPTURED_US = 1_795_341_600_000_000  # 2026-11-22T10:00:00Z in microseconds
MICROVERSION = "2.104"
DOMAIN = "cloud.example.org"
API = "http://controller.cloud.example.org:8774"
MEAN_GAP_US = 500  # ~2,000 notifications/s of cloud time between envelope timestamps


@dataclass(frozen=True)
class Size:
    name: str
    hosts: int
    instances: int
    notifications: int  # per stream, unless --notifications says otherwise


SIZES: dict[str, Size] = {
    "quick": Size("quick", 50, 1_000, 1_000),
    "small": Size("small", 1_000, 20_000, 40_000),
    "large": Size("large", 10_000, 200_000, 40_000),
}


# -- time stamps ---------------------------------------------------------------------------------


def _api_time(us: int) -> str:
    """Compute API / versioned payload style: one-second resolution, ``Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(us // 1_000_000))


def _oslo_time(us: int) -> str:
    """oslo.messaging envelope style: ``str(utcnow())``, microseconds, no zone."""
    seconds, micro = divmod(us, 1_000_000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)) + f".{micro:06d}"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


# -- snapshot generation (parent, not timed) ----------------------------------------------------

# (vm_state, API status, power state code, share of servers). A few servers have no host.
_SERVER_STATES = (
    ("active", "ACTIVE", 1, 0.86),
    ("stopped", "SHUTOFF", 4, 0.09),
    ("paused", "PAUSED", 3, 0.02),
    ("suspended", "SUSPENDED", 7, 0.01),
    ("shelved_offloaded", "SHELVED_OFFLOADED", 4, 0.01),
    ("error", "ERROR", 0, 0.01),
)
_FLAVOR_WEIGHTS = (1, 4, 4, 2, 1, 1)  # m1.tiny .. m1.xlarge, m1.tiny.specs
_METADATA_CHOICES = (
    {},
    {},
    {"role": "web"},
    {"role": "db", "backup": "daily"},
    {"ha": "true"},
)


def write_snapshot(size: Size, path: Path, seed: int) -> dict[str, Any]:
    """A FORMATS §1 snapshot of ``size`` at microversion 2.104, items shaped like the fixture's.

    Servers copy every key of the real Nova 34 server in tests/fixtures and fill addresses,
    security groups, volumes, metadata and tags the way a production cloud does (~2.5 KB each).
    """
    rng = random.Random(seed)
    fixture = json.loads(FIXTURE_SNAPSHOT.read_text())
    server_t = fixture["servers"][0]
    hyper_t = fixture["hypervisors"][0]
    service_t = fixture["services"][0]
    flavors = fixture["flavors"]
    embedded = [
        {
            "disk": f["disk"],
            "ephemeral": f["OS-FLV-EXT-DATA:ephemeral"],
            "extra_specs": {"hw:mem_page_size": "any", "quota:disk_total_iops_sec": "2000"},
            "original_name": f["name"],
            "ram": f["ram"],
            "swap": f["swap"] or 0,
            "vcpus": f["vcpus"],
        }
        for f in flavors
    ]
    weights = list(_FLAVOR_WEIGHTS[: len(embedded)]) + [1] * (len(embedded) - len(_FLAVOR_WEIGHTS))

    hosts = [f"compute{i:05d}" for i in range(size.hosts)]
    services = []
    hypervisors = []
    for i, host in enumerate(hosts):
        service_id = _uuid(rng)
        services.append(
            {
                **service_t,
                "host": host,
                "id": service_id,
                "zone": f"az{i % 3 + 1}",
                "updated_at": _api_time(CAPTURED_US - rng.randint(1, 10) * 1_000_000)[:-1]
                + ".000000",
            }
        )
        hypervisors.append(
            {
                **hyper_t,
                "host_ip": f"192.168.{i // 250}.{i % 250 + 1}",
                "hypervisor_hostname": f"{host}.{DOMAIN}",
                "id": _uuid(rng),
                "service": {"disabled_reason": None, "host": host, "id": service_id},
            }
        )

    projects = [
        uuid.UUID(int=rng.getrandbits(128)).hex for _ in range(max(1, size.instances // 20))
    ]
    users = {p: [uuid.UUID(int=rng.getrandbits(128)).hex for _ in range(3)] for p in projects}
    images = [_uuid(rng) for _ in range(12)]
    state_cum = []
    acc = 0.0
    for state in _SERVER_STATES:
        acc += state[3]
        state_cum.append((acc, state))

    def server(seq: int) -> dict[str, Any]:
        ident = _uuid(rng)
        project = rng.choice(projects)
        host_i = rng.randrange(size.hosts)
        roll = rng.random() * acc
        vm_state, status, power, _ = next(s for c, s in state_cum if roll <= c)
        hosted = vm_state not in ("shelved_offloaded", "error")
        host = hosts[host_i] if hosted else None
        updated_us = CAPTURED_US - rng.randint(60, 30 * 86400) * 1_000_000
        created_us = updated_us - rng.randint(60, 300 * 86400) * 1_000_000
        image = rng.choice(images)
        name = f"{project[:6]}-vm-{seq:06d}"
        mac = "fa:16:3e:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(3))
        ip4 = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(2, 254)}"
        ports = [
            {"OS-EXT-IPS-MAC:mac_addr": mac, "OS-EXT-IPS:type": "fixed", "addr": ip4, "version": 4},
            {
                "OS-EXT-IPS-MAC:mac_addr": mac,
                "OS-EXT-IPS:type": "fixed",
                "addr": f"fd00:{rng.randrange(65536):x}::f816:3eff:fe{rng.randrange(65536):x}",
                "version": 6,
            },
        ]
        if rng.random() < 0.3:
            ports.append(
                {
                    "OS-EXT-IPS-MAC:mac_addr": mac,
                    "OS-EXT-IPS:type": "floating",
                    "addr": f"203.0.113.{rng.randrange(1, 255)}",
                    "version": 4,
                }
            )
        volumes = [
            {"delete_on_termination": False, "id": _uuid(rng)}
            for _ in range(rng.choice((0, 0, 1, 2)))
        ]
        item = dict(server_t)
        item.update(
            {
                "OS-EXT-AZ:availability_zone": f"az{host_i % 3 + 1}",
                "OS-EXT-SRV-ATTR:host": host,
                "OS-EXT-SRV-ATTR:hostname": name,
                "OS-EXT-SRV-ATTR:hypervisor_hostname": f"{host}.{DOMAIN}" if host else None,
                "OS-EXT-SRV-ATTR:instance_name": f"instance-{seq:08x}",
                "OS-EXT-SRV-ATTR:reservation_id": f"r-{rng.getrandbits(40):010x}",
                "OS-EXT-SRV-ATTR:root_device_name": "/dev/vda",
                "OS-EXT-STS:power_state": power,
                "OS-EXT-STS:task_state": None,
                "OS-EXT-STS:vm_state": vm_state,
                "OS-SRV-USG:launched_at": _oslo_time(created_us + 9_123_456).replace(" ", "T"),
                "addresses": {f"{project[:8]}-net": ports},
                "created": _api_time(created_us),
                "flavor": rng.choices(embedded, weights)[0],
                "hostId": hashlib.sha224((project + (host or "")).encode()).hexdigest()
                if host
                else "",
                "host_status": "UP" if host else "",
                "id": ident,
                "image": {
                    "id": image,
                    "links": [{"href": f"{API}/images/{image}", "rel": "bookmark"}],
                    "properties": {"architecture": "x86_64", "os_distro": "ubuntu"},
                },
                "key_name": f"key-{project[:6]}",
                "links": [
                    {"href": f"{API}/v2.1/servers/{ident}", "rel": "self"},
                    {"href": f"{API}/servers/{ident}", "rel": "bookmark"},
                ],
                "metadata": rng.choice(_METADATA_CHOICES),
                "name": name,
                "os-extended-volumes:volumes_attached": volumes,
                "security_groups": [{"name": "default"}],
                "status": status,
                "tags": rng.choice(([], [], ["prod"], ["team-a", "prod"])),
                "tenant_id": project,
                "updated": _api_time(updated_us),
                "user_id": rng.choice(users[project]),
            }
        )
        return item

    head = {
        "format": SNAPSHOT_FORMAT,
        "captured_at": _oslo_time(CAPTURED_US).replace(" ", "T") + "Z",
        "compute_api_microversion": MICROVERSION,
        "services": services,
        "hypervisors": hypervisors,
        "flavors": flavors,
    }
    server_bytes = 0
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(head)[:-1] + ', "servers": [')
        for start in range(0, size.instances, 1000):
            chunk = [
                json.dumps(server(seq)) for seq in range(start, min(start + 1000, size.instances))
            ]
            server_bytes += sum(len(c) for c in chunk)
            fh.write((", " if start else "") + ", ".join(chunk))
        fh.write("]}")
    return {"bytes": path.stat().st_size, "server_item_bytes": server_bytes / size.instances}


# -- notification streams (worker, built before timing) ---------------------------------------


def _load_samples() -> ModuleType:
    """tests/samples.py, loaded by path: an installed ``tests`` package cannot shadow it."""
    spec = importlib.util.spec_from_file_location("_cdm_bench_samples", SAMPLES_MODULE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Inst:
    """What the simulated Nova knows of one instance, kept in step with what it notifies."""

    __slots__ = (
        "flavor",
        "host",
        "last_write_us",
        "locked",
        "metadata",
        "name",
        "node",
        "power_state",
        "project_id",
        "task_state",
        "user_id",
        "uuid",
        "vm_state",
    )

    def __init__(self, **fields: Any) -> None:
        for key, value in fields.items():
            setattr(self, key, value)


@dataclass
class _Template:
    """A real Nova sample: its versioned envelope and the ``nova_object.data`` to copy."""

    name: str
    namespace: str
    version: str
    data: dict[str, Any]


# Actions the state stream performs: from a vm_state, (action, task_state while running, final
# (vm_state, power_state)). Each emits instance.update (task set), later instance.<action>.end.
_ACTIONS: dict[str, list[tuple[str, str, tuple[str, str]]]] = {
    "active": [
        ("power_off", "powering-off", ("stopped", "shutdown")),
        ("pause", "pausing", ("paused", "paused")),
        ("suspend", "suspending", ("suspended", "suspended")),
    ],
    "stopped": [("power_on", "powering-on", ("active", "running"))],
    "paused": [("unpause", "unpausing", ("active", "running"))],
    "suspended": [("resume", "resuming", ("active", "running"))],
}
_IN_FLIGHT_MAX = 64  # actions running at once across the cloud


class CloudSim:
    """Generates the notifications Nova would send for changes to a bootstrapped model.

    Every notification has a fresh message id, an envelope timestamp after the previous one and
    an ``updated_at`` equal to the instance's previous write (as Nova's payloads do), so each one
    is newer than what the model holds and is expected to change it.
    """

    def __init__(self, model: ComputeModel, seed: int) -> None:
        samples = _load_samples()
        self.rng = random.Random(seed)
        self.now_us = CAPTURED_US + 1_000_000
        self.ctxt = {"request_id": "req-bench", "project_id": None, "user_id": None}
        self.templates: dict[str, _Template] = {}
        for event_type in (
            "instance.update",
            "instance.live_migration_post_dest.end",
            "instance.resize_finish.end",
        ):
            self._template(samples, event_type)
        for actions in _ACTIONS.values():
            for action, _, _ in actions:
                self._template(samples, f"instance.{action}.end")
        flavor_sample = samples.load_sample("instance-update")["payload"]["nova_object.data"]
        self.flavor_template = flavor_sample["flavor"]
        self._flavor_payloads: dict[Flavor, dict[str, Any]] = {}
        self.hosts = sorted(
            (n.hostname, n.hypervisor_hostname)
            for n in model.nodes()
            if n.hostname is not None and n.hypervisor_hostname is not None
        )
        self.instances: list[_Inst] = []
        flavors: set[Flavor] = set()
        for inst in sorted(model.instances(), key=lambda i: i.uuid):
            version = model.instance_version(inst.uuid)
            updated = version.updated_at if version and version.updated_at else CAPTURED_US / 1e6
            if inst.flavor is not None:
                flavors.add(inst.flavor)
            self.instances.append(
                _Inst(
                    uuid=inst.uuid,
                    name=inst.name,
                    project_id=inst.project_id,
                    user_id=inst.user_id,
                    host=inst.host,
                    node=inst.node,
                    vm_state=inst.vm_state,
                    power_state=inst.power_state,
                    task_state=inst.task_state,
                    flavor=inst.flavor,
                    locked=inst.locked,
                    metadata=dict(inst.metadata),
                    last_write_us=int(updated * 1_000_000),
                )
            )
        self.flavors = sorted(flavors, key=lambda f: (f.name or "", f.vcpus or 0, f.ram or 0))

    def _template(self, samples: ModuleType, event_type: str) -> None:
        name = event_type.removeprefix("instance.").replace(".", "-")
        payload = samples.load_sample(f"instance-{name}")["payload"]
        self.templates[event_type] = _Template(
            payload["nova_object.name"],
            payload["nova_object.namespace"],
            payload["nova_object.version"],
            payload["nova_object.data"],
        )

    def _flavor_payload(self, flavor: Flavor | None) -> dict[str, Any] | None:
        if flavor is None:
            return None
        found = self._flavor_payloads.get(flavor)
        if found is None:
            data = dict(self.flavor_template["nova_object.data"])
            data.update(
                name=flavor.name,
                vcpus=flavor.vcpus,
                memory_mb=flavor.ram,
                root_gb=flavor.disk,
                ephemeral_gb=flavor.ephemeral,
                flavorid=str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{flavor.name}.flavor.{DOMAIN}")),
            )
            found = {**self.flavor_template, "nova_object.data": data}
            self._flavor_payloads[flavor] = found
        return found

    def _pick(self, eligible: Callable[[_Inst], bool]) -> _Inst:
        for _ in range(100_000):
            inst = self.rng.choice(self.instances)
            if eligible(inst):
                return inst
        raise RuntimeError("no eligible instance left: the stream is too long for this model")

    def _other_host(self, inst: _Inst) -> tuple[str, str]:
        while True:
            host = self.rng.choice(self.hosts)
            if host[0] != inst.host:
                return host

    def _emit(self, event_type: str, inst: _Inst, **extra: Any) -> dict[str, Any]:
        """One trace line (FORMATS §2) stating ``inst`` as it is now."""
        self.now_us += self.rng.randint(1, 2 * MEAN_GAP_US)
        tmpl = self.templates[event_type]
        data = dict(tmpl.data)
        data.update(
            uuid=inst.uuid,
            display_name=inst.name,
            host_name=inst.name,
            tenant_id=inst.project_id,
            user_id=inst.user_id,
            action_initiator_project=inst.project_id,
            action_initiator_user=inst.user_id,
            host=inst.host,
            node=inst.node,
            state=inst.vm_state,
            power_state=inst.power_state,
            task_state=inst.task_state,
            flavor=self._flavor_payload(inst.flavor),
            locked=inst.locked,
            metadata=dict(inst.metadata),
            updated_at=_api_time(inst.last_write_us),
            request_id=f"req-{_uuid(self.rng)}",
            **extra,
        )
        inst.last_write_us = self.now_us
        return {
            "priority": "INFO",
            "publisher_id": f"nova-compute:{inst.host}",
            "event_type": event_type,
            "payload": {
                "nova_object.name": tmpl.name,
                "nova_object.namespace": tmpl.namespace,
                "nova_object.version": tmpl.version,
                "nova_object.data": data,
            },
            "metadata": {"message_id": _uuid(self.rng), "timestamp": _oslo_time(self.now_us)},
            "ctxt": self.ctxt,
        }

    def state_stream(self, count: int) -> list[dict[str, Any]]:
        """Power and pause/suspend actions on random instances, interleaved across the cloud."""
        rng = self.rng
        lines: list[dict[str, Any]] = []
        in_flight: deque[tuple[_Inst, str, tuple[str, str]]] = deque()
        while len(lines) < count:
            if in_flight and (len(in_flight) >= _IN_FLIGHT_MAX or rng.random() < 0.5):
                inst, action, (vm_state, power_state) = in_flight.popleft()
                inst.vm_state, inst.power_state, inst.task_state = vm_state, power_state, None
                lines.append(self._emit(f"instance.{action}.end", inst))
                continue
            inst = self._pick(
                lambda i: i.vm_state in _ACTIONS and i.host is not None and i.task_state is None
            )
            action, task_state, final = rng.choice(_ACTIONS[inst.vm_state])
            inst.task_state = task_state
            state_update = {
                **self.templates["instance.update"].data["state_update"],
                "nova_object.data": {
                    "old_state": inst.vm_state,
                    "state": inst.vm_state,
                    "old_task_state": None,
                    "new_task_state": task_state,
                },
            }
            lines.append(self._emit("instance.update", inst, state_update=state_update))
            in_flight.append((inst, action, final))
        # Actions still running keep their task state; later streams leave those instances be.
        return lines

    def move_stream(self, count: int) -> list[dict[str, Any]]:
        """Live migrations (3 in 4) and resizes to another host, each changing host and node."""
        rng = self.rng
        lines: list[dict[str, Any]] = []
        resizes_left = len(self.instances) // 4
        while len(lines) < count:
            if resizes_left and rng.random() < 0.25:
                resizes_left -= 1
                inst = self._pick(
                    lambda i: (
                        i.vm_state in ("active", "stopped")
                        and i.host is not None
                        and i.task_state is None
                    )
                )
                inst.host, inst.node = self._other_host(inst)
                inst.power_state = "running" if inst.vm_state == "active" else "shutdown"
                inst.vm_state = "resized"
                inst.flavor = rng.choice([f for f in self.flavors if f != inst.flavor])
                lines.append(self._emit("instance.resize_finish.end", inst))
            else:
                inst = self._pick(
                    lambda i: i.vm_state == "active" and i.host is not None and i.task_state is None
                )
                inst.host, inst.node = self._other_host(inst)
                lines.append(self._emit("instance.live_migration_post_dest.end", inst))
        return lines


# -- worker (one fresh process per size) ----------------------------------------------------------


def _clock() -> tuple[float, float]:
    """Wall clock and this process's CPU time. Both are reported: on a shared box, neighbours
    stretch the wall clock while CPU time still says what the code itself costs."""
    return time.perf_counter(), time.process_time()


def _elapsed(start: tuple[float, float]) -> dict[str, float]:
    wall, cpu = _clock()
    return {"wall": wall - start[0], "cpu": cpu - start[1]}


def _deliver_all(
    endpoints: list[Any], service: SyncService, lines: list[dict[str, Any]]
) -> dict[str, float]:
    dispatcher = Dispatcher(endpoints, service)  # what replay and a listener's dispatch do
    start = _clock()
    for line in lines:
        dispatcher.deliver(line)
    return _elapsed(start)


def _profile_text(profile: cProfile.Profile, top: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def _outcomes(before: Counter[tuple[str, str]], after: Counter[tuple[str, str]]) -> dict[str, int]:
    delta: Counter[str] = Counter()
    for key, n in after.items():
        if n > before.get(key, 0):
            delta[key[1]] += n - before.get(key, 0)
    return dict(delta)


def run_worker(
    path: Path, size: Size, notifications: int, seed: int, profile: bool, top: int
) -> dict[str, Any]:
    """Bootstrap, memory, dump and apply measurements for one size, in this (fresh) process."""
    gc.collect()
    rss_base = _rss_bytes()

    # 2. Bootstrap from the snapshot file: JSON decoding + translation + apply.
    start = _clock()
    snapshot = read_snapshot(path)
    read = _elapsed(start)
    model = ComputeModel()
    service = SyncService(model, event_types=NOVA_EVENT_TYPES)
    events = len(snapshot.hypervisors) + len(snapshot.services) + snapshot.server_count
    rejected = bootstrap(service, snapshot)  # the product's own bootstrap path
    total = _elapsed(start)
    peak = _peak_rss_bytes()
    del snapshot
    gc.collect()
    rss_after = _rss_bytes()
    result: dict[str, Any] = {
        "size": size.name,
        "hosts": size.hosts,
        "instances": size.instances,
        "bootstrap": {
            "read": read,
            "apply": {k: total[k] - read[k] for k in total},
            "total": total,
            "events": events,
            "rejected": len(rejected),
            "model_instances": model.instance_count,
            "model_nodes": model.node_count,
            "rss_base": rss_base,
            "rss_after": rss_after,
            "rss_per_instance": (rss_after - rss_base) / size.instances,
            "peak_rss": peak,
        },
    }

    # 3. Dump.
    start = _clock()
    doc = model.to_dict()
    to_dict = _elapsed(start)
    text = json.dumps(doc)
    total = _elapsed(start)
    result["dump"] = {"to_dict": to_dict, "total": total, "bytes": len(text)}
    del doc, text
    gc.collect()

    # 1. Apply throughput through the real endpoints, payloads built before the clock starts.
    # A running service has long filled its window of remembered message ids, so a warm-up
    # (not timed) fills it first and the timed streams see the steady state.
    sim = CloudSim(model, seed + 1)
    endpoints = make_endpoints(service)
    warm_up = sim.state_stream(DEFAULT_DEDUPE_WINDOW + 1000)
    _deliver_all(endpoints, service, warm_up)
    del warm_up
    gc.collect()
    streams = {
        "state changes": sim.state_stream(notifications),
        "moves": sim.move_stream(notifications),
    }
    result["apply"] = []
    for name, lines in streams.items():
        before = Counter(service.stats.by_type)
        took = _deliver_all(endpoints, service, lines)
        result["apply"].append(
            {
                "stream": name,
                "count": len(lines),
                "took": took,
                "rate": {k: len(lines) / v for k, v in took.items()},
                "outcomes": _outcomes(before, service.stats.by_type),
            }
        )
    del streams
    result["integrity_problems"] = model.check_integrity()[:5]

    if profile:
        # Profiled runs are separate from the measured ones: cProfile slows everything down.
        lines = sim.state_stream(notifications // 2) + sim.move_stream(notifications // 2)
        prof = cProfile.Profile()
        prof.enable()
        dispatcher = Dispatcher(endpoints, service)
        for line in lines:
            dispatcher.deliver(line)
        prof.disable()
        del lines, sim
        apply_text = _profile_text(prof, top)
        del model, service, endpoints
        gc.collect()
        prof = cProfile.Profile()
        prof.enable()
        fresh = SyncService(ComputeModel(), event_types=NOVA_EVENT_TYPES)
        bootstrap(fresh, read_snapshot(path))
        prof.disable()
        result["profiles"] = {"apply": apply_text, "bootstrap": _profile_text(prof, top)}
    return result


# -- parent: generate, run workers, report ------------------------------------------------------


def _fmt_int(n: float) -> str:
    return f"{n:,.0f}"


def _rows(result: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """Table rows for one size; ``ok?`` is judged on the wall clock, CPU time is shown beside."""
    size = f"{result['size']} ({result['hosts']:,} hosts / {result['instances']:,} inst.)"
    rows: list[tuple[str, str, str, str, str]] = []

    def ok(flag: bool) -> str:
        return "yes" if flag else "NO"

    def seconds(took: dict[str, float]) -> str:
        return f"{took['wall']:.2f} (CPU {took['cpu']:.2f})"

    for stream in result["apply"]:
        rate = stream["rate"]
        rows.append(
            (
                f"apply: {stream['stream']} (notifications/s)",
                size,
                f"{_fmt_int(rate['wall'])} (CPU {_fmt_int(rate['cpu'])})",
                f">= {_fmt_int(APPLY_TARGET_PER_S)}",
                ok(rate["wall"] >= APPLY_TARGET_PER_S),
            )
        )
    boot = result["bootstrap"]
    target = BOOTSTRAP_TARGET_S * result["instances"] / BOOTSTRAP_TARGET_INSTANCES
    scaled = "" if result["instances"] == BOOTSTRAP_TARGET_INSTANCES else " (scaled)"
    rows += [
        (
            "bootstrap: read_snapshot + bootstrap (s)",
            size,
            seconds(boot["total"]),
            f"< {target:.2f}{scaled}",
            ok(boot["total"]["wall"] < target),
        ),
        ("bootstrap: of which read_snapshot (s)", size, seconds(boot["read"]), "-", "-"),
        ("bootstrap: of which bootstrap() (s)", size, seconds(boot["apply"]), "-", "-"),
        (
            "bootstrap: RSS per instance, JSON freed (KB)",
            size,
            f"{boot['rss_per_instance'] / 1024:.2f}",
            f"< {RSS_TARGET_BYTES_PER_INSTANCE / 1024:.1f}",
            ok(boot["rss_per_instance"] < RSS_TARGET_BYTES_PER_INSTANCE),
        ),
        (
            "bootstrap: peak RSS, ru_maxrss (MB)",
            size,
            f"{boot['peak_rss'] / 2**20:,.0f}",
            "-",
            "-",
        ),
        ("dump: to_dict + json.dumps (s)", size, seconds(result["dump"]["total"]), "-", "-"),
    ]
    return rows


def _table(rows: Iterable[tuple[str, ...]]) -> str:
    header = ("metric", "size", "value", "target", "ok?")
    body = [header, *rows]
    widths = [max(len(r[i]) for r in body) for i in range(len(header))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in body
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _details(results: list[dict[str, Any]], files: dict[str, dict[str, Any]]) -> str:
    out = []
    for r in results:
        boot, dump = r["bootstrap"], r["dump"]
        info = files[r["size"]]
        out.append(
            f"- {r['size']}: snapshot file {info['bytes'] / 2**20:,.0f} MB "
            f"({info['server_item_bytes']:,.0f} B per server item), generated in "
            f"{info['seconds']:.1f} s (not timed); {boot['events']:,} bootstrap events, "
            f"{boot['rejected']} rejected; model {boot['model_instances']:,} instances / "
            f"{boot['model_nodes']:,} nodes; RSS with imports done {boot['rss_base'] / 2**20:,.0f}"
            f" MB, after bootstrap {boot['rss_after'] / 2**20:,.0f} MB; dump "
            f"{dump['bytes'] / 2**20:,.0f} MB, of which to_dict {dump['to_dict']['wall']:.2f} s"
        )
        for s in r["apply"]:
            outcomes = ", ".join(f"{k} {v:,}" for k, v in sorted(s["outcomes"].items()))
            unexpected = (
                ""
                if s["outcomes"] == {"changed": s["count"]}
                else (" -- UNEXPECTED: every notification should change the model")
            )
            out.append(
                f"  - apply {s['stream']}: {s['count']:,} notifications in "
                f"{s['took']['wall']:.2f} s (CPU {s['took']['cpu']:.2f} s); "
                f"outcomes: {outcomes}{unexpected}"
            )
        if r["integrity_problems"]:
            out.append(f"  - INTEGRITY PROBLEMS after the streams: {r['integrity_problems']}")
    return "\n".join(out)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes",
        default="small,large",
        help=f"comma-separated sizes among {', '.join(SIZES)} (default small,large)",
    )
    parser.add_argument("--quick", action="store_true", help="only the tiny smoke size")
    parser.add_argument("--markdown", type=Path, help="also write the results as Markdown here")
    parser.add_argument(
        "--notifications",
        type=int,
        help="notifications per apply stream (default depends on the size)",
    )
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print cProfile top functions for the apply and bootstrap paths",
    )
    parser.add_argument("--profile-top", type=int, default=25)
    parser.add_argument(
        "--live",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run the live rows (bench/live.py: RabbitMQ -> model, bootstrap over HTTP "
        "from the test Nova, full audit); default: on, off with --quick",
    )
    parser.add_argument(
        "--live-notifications",
        type=int,
        help="notifications per RabbitMQ drain (default 20,000; 2,000 at the quick size)",
    )
    parser.add_argument(
        "--live-rounds",
        type=int,
        default=4,
        help="RabbitMQ drains per contender (cdm-sync listener, no-op listener; default 4)",
    )
    parser.add_argument(
        "--rabbit-url",
        default="rabbit://guest:guest@127.0.0.1:5672/",
        help="the broker for the RabbitMQ row (oslo.messaging transport URL)",
    )
    parser.add_argument(
        "--backlog",
        type=int,
        help="notifications queued for the live backlog row (default 1,000,000; 20,000 at the "
        "quick size; 0: no backlog row)",
    )
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        size = SIZES[args.size]
        result = run_worker(
            args.worker,
            size,
            args.notifications or size.notifications,
            args.seed,
            args.profile,
            args.profile_top,
        )
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0

    names = ["quick"] if args.quick else [n.strip() for n in args.sizes.split(",") if n.strip()]
    unknown = [n for n in names if n not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {unknown}; choose among {list(SIZES)}")

    live = (not args.quick) if args.live is None else args.live
    # The RabbitMQ row needs one model size only: small when it is measured.
    rabbit_size = "small" if "small" in names else names[0]
    live_results: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    files: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="cdm-bench-") as tmp:
        for name in names:
            size = SIZES[name]
            path = Path(tmp) / f"snapshot-{name}.json"
            _log(f"[{name}] generating snapshot: {size.hosts:,} hosts, {size.instances:,} servers")
            t0 = time.perf_counter()
            info = write_snapshot(size, path, args.seed)
            info["seconds"] = time.perf_counter() - t0
            # Flush the new file to disk first: a real bootstrap reads a snapshot at rest, not
            # one the kernel is still writing back while it is being read.
            os.sync()
            files[name] = info
            _log(
                f"[{name}] {info['bytes'] / 2**20:,.0f} MB in {info['seconds']:.1f} s; "
                "measuring in a fresh process"
            )
            cmd = [
                sys.executable,
                "-m",
                "bench.run",
                "--worker",
                str(path),
                "--size",
                name,
                "--seed",
                str(args.seed),
                "--profile-top",
                str(args.profile_top),
            ]
            if args.notifications:
                cmd += ["--notifications", str(args.notifications)]
            if args.profile:
                cmd.append("--profile")
            proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False)
            found = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
            if proc.returncode != 0 or not found:
                _log(proc.stdout)
                _log(f"[{name}] worker failed with exit status {proc.returncode}")
                return 1
            results.append(json.loads(found[-1][len(RESULT_PREFIX) :]))
            if live:
                from bench import live as live_bench  # imports this module: import it late

                backlog = args.backlog
                if backlog is None:
                    backlog = 20_000 if name == "quick" else live_bench.BACKLOG
                rabbit = ["rabbit"] + (["backlog"] if backlog else [])
                parts = ["audit", "nova"] + (rabbit if name == rabbit_size else [])
                live_results += live_bench.run_parts(
                    parts,
                    name,
                    path,
                    notifications=args.live_notifications
                    or (2_000 if name == "quick" else live_bench.LIVE_NOTIFICATIONS),
                    rounds=args.live_rounds,
                    seed=args.seed,
                    url=args.rabbit_url,
                    profile=args.profile,
                    top=args.profile_top,
                    backlog=backlog,
                )
            path.unlink()

    rows = [row for r in results for row in _rows(r)]
    details = _details(results, files)
    if live_results:
        from bench import live as live_bench

        rows += [row for r in live_results for row in live_bench.rows(r)]
        details += "\n" + "\n".join(live_bench.details(r) for r in live_results)
    table = _table(rows)
    env = (
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
        f"single thread{' (live rows: every thread of the measuring process)' if live else ''}; "
        f"whole run {time.perf_counter() - started:.0f} s; 1-minute load average "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after (other work on the box "
        "stretches wall-clock figures; CPU figures are this process's own time)"
    )
    print(table)
    print()
    print(details)
    print(env)
    profiles = ""
    for r in results:
        for path_name, text in r.get("profiles", {}).items():
            profiles += f"\n### cProfile, {path_name} path, size {r['size']}\n\n```\n{text}```\n"
    for r in live_results:
        for path_name, text in r.get("profiles", {}).items():
            profiles += f"\n### cProfile, live: {path_name}, size {r['size']}\n\n```\n{text}```\n"
    if profiles:
        print(profiles)
    if args.markdown is not None:
        args.markdown.write_text(
            "# cdm-sync benchmark\n\n" + table + "\n\n" + details + "\n\n" + env + "\n" + profiles
        )
        _log(f"Markdown written to {args.markdown}")
    failed = [r for r in results if r["integrity_problems"]]
    if live_results:
        from bench import live as live_bench

        failed += [r for r in live_results if live_bench.failed(r)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
