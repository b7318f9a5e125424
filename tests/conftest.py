"""Shared fixtures for the behaviour tests: an injectable clock, the live wiring, Nova listings.

The tests drive the code the way production does: typed events or trace lines go through the
same ``SyncService`` and oslo.messaging endpoints the listener uses, so every fixture here builds
real objects (no mocks of our own classes). ``NovaListing`` writes compute-API items in the
shape Nova returns at a given microversion, so snapshot tests and seeded models use data that
looks like what the collector really reads.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pytest

from cdm_sync.messaging.endpoints import Dispatcher, make_endpoints
from cdm_sync.model import ChangeRecord, ComputeModel
from cdm_sync.nova.event_types import NOVA_EVENT_TYPES
from cdm_sync.nova.snapshot import SNAPSHOT_FORMAT, Snapshot, snapshot_events
from cdm_sync.sync.service import SyncService
from tests.fakenova import STATUS_OF_VM_STATE
from tests.samples import TRACE_DIR


class FakeClock:
    """The model's injectable clock: time moves only when a test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Harness:
    """A model, the sync service over it and the live endpoints; every change record is kept."""

    def __init__(
        self, clock: FakeClock, *, legacy: bool = True, tombstone_ttl: float = 600.0
    ) -> None:
        self.clock = clock
        self.model = ComputeModel(clock=clock, tombstone_ttl=tombstone_ttl)
        self.service = SyncService(self.model, event_types=NOVA_EVENT_TYPES)
        self.records: list[ChangeRecord] = []
        self.service.add_publisher(self.records.extend)
        self.use_endpoints(make_endpoints(self.service, "auto" if legacy else "versioned"))

    def use_endpoints(self, endpoints: list[Any]) -> None:
        """Deliver through ``endpoints`` from now on (fresh ones have seen no traffic)."""
        self.endpoints = endpoints
        self.dispatcher = Dispatcher(endpoints, self.service)

    def bootstrap(self, snapshot: Snapshot) -> list[ChangeRecord]:
        """Load a snapshot as the bootstrap does; returns the records it produced."""
        start = len(self.records)
        self.service.submit_all(snapshot_events(snapshot))
        return self.records[start:]

    def deliver(self, line: Mapping[str, Any]) -> list[ChangeRecord]:
        """Dispatch one trace line through the endpoints; returns the records it produced."""
        start = len(self.records)
        self.dispatcher.deliver(line)
        return self.records[start:]

    def replay(self, lines: Iterable[Mapping[str, Any]]) -> list[ChangeRecord]:
        start = len(self.records)
        for line in lines:
            self.dispatcher.deliver(line)
        return self.records[start:]

    def outcomes(self, event_type: str) -> Counter[str]:
        """How the service counted notifications of one event type, by outcome."""
        return Counter(
            {o: n for (et, o), n in self.service.stats.by_type.items() if et == event_type}
        )


class NovaListing:
    """Compute-API list items shaped as Nova returns them at ``microversion``.

    Before 2.53 service and hypervisor ids are integers; hypervisors carry capacity until 2.88;
    servers carry ``locked`` from 2.9 and embed their flavor from 2.47 (before, ``{"id": ..}``
    to be looked up in the flavor list); services carry ``forced_down`` from 2.11.
    """

    def __init__(self, microversion: str = "2.53", captured_at: str = "2026-01-01T00:00:00Z"):
        major, minor = microversion.split(".")
        self.mv = (int(major), int(minor))
        self.microversion = microversion
        self.captured_at = captured_at
        self.services: list[Any] = []
        self.hypervisors: list[Any] = []
        self.servers: list[Any] = []
        self.flavors: list[Any] = []
        self._next_id = 1

    def _ident(self, uuid: str) -> int | str:
        if self.mv >= (2, 53):
            return uuid
        ident = self._next_id
        self._next_id += 1
        return ident

    def add_host(
        self,
        host: str,
        hypervisor_hostname: str | None = None,
        *,
        node_uuid: str,
        status: str = "enabled",
        state: str = "up",
        disabled_reason: str | None = None,
        forced_down: bool = False,
        vcpus: int = 16,
        memory_mb: int = 32768,
        local_gb: int = 1024,
    ) -> dict[str, Any]:
        """A nova-compute service and its one hypervisor; returns the hypervisor item."""
        service_id = self._ident(f"svc-{node_uuid}")
        service: dict[str, Any] = {
            "id": service_id,
            "binary": "nova-compute",
            "host": host,
            "zone": "nova",
            "status": status,
            "state": state,
            "updated_at": "2025-12-31T23:59:50.000000",
            "disabled_reason": disabled_reason,
        }
        if self.mv >= (2, 11):
            service["forced_down"] = forced_down
        self.services.append(service)
        hypervisor: dict[str, Any] = {
            "id": self._ident(node_uuid),
            "hypervisor_hostname": hypervisor_hostname or host,
            "hypervisor_type": "fake",
            "hypervisor_version": 1000,
            "host_ip": "192.0.2.10",
            "state": state,
            "status": status,
            "service": {"host": host, "id": service_id, "disabled_reason": disabled_reason},
        }
        if self.mv < (2, 88):
            hypervisor.update(
                vcpus=vcpus,
                memory_mb=memory_mb,
                local_gb=local_gb,
                vcpus_used=0,
                memory_mb_used=512,
                local_gb_used=0,
                free_ram_mb=memory_mb - 512,
                free_disk_gb=local_gb,
                current_workload=0,
                running_vms=0,
                disk_available_least=local_gb,
                cpu_info="{}",
            )
        else:
            hypervisor["uptime"] = " 08:32:11 up 93 days"
        self.hypervisors.append(hypervisor)
        return hypervisor

    def add_service(self, host: str, binary: str, **fields: Any) -> dict[str, Any]:
        service = {
            "id": self._ident(f"svc-{host}-{binary}"),
            "binary": binary,
            "host": host,
            "zone": "internal",
            "status": "enabled",
            "state": "up",
            "updated_at": None,
            "disabled_reason": None,
            **fields,
        }
        self.services.append(service)
        return service

    def add_flavor(
        self, flavor_id: str, name: str, vcpus: int, ram: int, disk: int, ephemeral: int = 0
    ) -> dict[str, Any]:
        flavor = {
            "id": flavor_id,
            "name": name,
            "vcpus": vcpus,
            "ram": ram,
            "disk": disk,
            "OS-FLV-EXT-DATA:ephemeral": ephemeral,
            "swap": "",
            "os-flavor-access:is_public": True,
        }
        self.flavors.append(flavor)
        return flavor

    def add_server(
        self,
        uuid: str,
        *,
        host: str | None,
        node: str | None,
        flavor_id: str,
        vm_state: str = "active",
        power_state: int = 1,
        task_state: str | None = None,
        name: str = "vm",
        tenant_id: str = "project-a",
        user_id: str = "user-a",
        locked: bool = False,
        metadata: Mapping[str, str] | None = None,
        updated: str = "2025-12-31T23:00:00Z",
    ) -> dict[str, Any]:
        flavor_item = next(f for f in self.flavors if f["id"] == flavor_id)
        if self.mv >= (2, 47):
            flavor: dict[str, Any] = {
                "original_name": flavor_item["name"],
                "vcpus": flavor_item["vcpus"],
                "ram": flavor_item["ram"],
                "disk": flavor_item["disk"],
                "ephemeral": flavor_item["OS-FLV-EXT-DATA:ephemeral"],
                "swap": 0,
                "extra_specs": {},
            }
        else:
            flavor = {"id": flavor_id, "links": [{"href": f"/flavors/{flavor_id}"}]}
        server: dict[str, Any] = {
            "id": uuid,
            "name": name,
            "status": STATUS_OF_VM_STATE.get(vm_state, "UNKNOWN"),
            "tenant_id": tenant_id,
            "user_id": user_id,
            "metadata": dict(metadata or {}),
            "created": "2025-12-31T22:00:00Z",
            "updated": updated,
            "flavor": flavor,
            "image": {"id": "155d900f-4e14-4e4c-a73d-069cbf4541e6"},
            "addresses": {},
            "OS-EXT-SRV-ATTR:host": host,
            "OS-EXT-SRV-ATTR:hypervisor_hostname": node,
            "OS-EXT-SRV-ATTR:instance_name": "instance-00000001",
            "OS-EXT-STS:vm_state": vm_state,
            "OS-EXT-STS:power_state": power_state,
            "OS-EXT-STS:task_state": task_state,
        }
        if self.mv >= (2, 9):
            server["locked"] = locked
        self.servers.append(server)
        return server

    def doc(self) -> dict[str, Any]:
        return {
            "format": SNAPSHOT_FORMAT,
            "captured_at": self.captured_at,
            "compute_api_microversion": self.microversion,
            "services": self.services,
            "hypervisors": self.hypervisors,
            "servers": self.servers,
            "flavors": self.flavors,
        }

    def snapshot(self) -> Snapshot:
        return Snapshot.from_dict(self.doc())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_harness(clock: FakeClock) -> Callable[..., Harness]:
    """Build a harness sharing the test's clock: ``make_harness(legacy=False)``."""

    def make(**kwargs: Any) -> Harness:
        return Harness(clock, **kwargs)

    return make


@pytest.fixture
def harness(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness()


@pytest.fixture
def load_trace() -> Callable[[str], list[dict[str, Any]]]:
    """The lines of a recorded trace, e.g. ``load_trace("trace-legacy.jsonl")``, as dicts."""

    def load(name: str) -> list[dict[str, Any]]:
        text = (TRACE_DIR / name).read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    return load


@pytest.fixture
def nova_listing() -> Callable[..., NovaListing]:
    """Build compute-API listings: ``nova_listing("2.1", captured_at=...)``."""
    return NovaListing
