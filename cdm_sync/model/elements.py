"""The two kinds of element the model holds: compute nodes and instances.

Elements are immutable (named tuples: immutable, compact, and several times cheaper to build
than frozen dataclasses, which matters at tens of thousands of notifications a second). The
apply path replaces an element wholesale when it changes, so a reader holding a reference always
sees one consistent version of it, and change records can keep a reference instead of a copy.
"""

from __future__ import annotations

import sys
import uuid as uuidlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

# Nova's power state names (nova/compute/power_state.py), indexed by the API's integer code.
POWER_STATE_NAMES: Mapping[int, str] = MappingProxyType(
    {0: "pending", 1: "running", 3: "paused", 4: "shutdown", 6: "crashed", 7: "suspended"}
)
POWER_STATES = frozenset(POWER_STATE_NAMES.values())

# Namespace for the uuids of placeholder compute nodes: stable across restarts, so a
# placeholder created twice for the same host is the same element.
PLACEHOLDER_NAMESPACE = uuidlib.UUID("0b4b6c2e-3f1a-5d7e-9c1b-7a6f0e2d4c11")

EMPTY_METADATA: Mapping[str, str] = MappingProxyType({})

_intern = sys.intern


def intern_or_none(value: str | None) -> str | None:
    """Share repeated strings (hosts, states, project ids) between elements to save memory."""
    return _intern(value) if value is not None else None


def placeholder_uuid(hostname: str | None, hypervisor_hostname: str | None) -> str:
    """The uuid a placeholder node gets until a snapshot or audit gives the real one."""
    return str(
        uuidlib.uuid5(PLACEHOLDER_NAMESPACE, f"{hostname or ''}\0{hypervisor_hostname or ''}")
    )


class Flavor(NamedTuple):
    """What an instance was sized with; ``disk`` is the root disk as Nova's API names it."""

    name: str | None
    vcpus: int | None
    ram: int | None
    disk: int | None
    ephemeral: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "vcpus": self.vcpus, "ram": self.ram, "disk": self.disk}


class ComputeNode(NamedTuple):
    """A hypervisor and the nova-compute service that runs it.

    ``placeholder`` marks a node the model only inferred (an instance or a service named a host
    that no snapshot or audit has described yet); its uuid is synthetic until one does.
    """

    uuid: str
    hostname: str | None
    hypervisor_hostname: str | None
    status: str | None = None
    state: str | None = None
    disabled_reason: str | None = None
    vcpus: int | None = None
    memory_mb: int | None = None
    disk_gb: int | None = None
    placeholder: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "hostname": self.hostname,
            "hypervisor_hostname": self.hypervisor_hostname,
            "status": self.status,
            "state": self.state,
            "disabled_reason": self.disabled_reason,
            "vcpus": self.vcpus,
            "memory_mb": self.memory_mb,
            "disk_gb": self.disk_gb,
            "placeholder": self.placeholder,
        }


class Instance(NamedTuple):
    """A server as the model knows it (FORMATS.md §3).

    ``disk_gb`` is root plus ephemeral disk, what the instance takes from its host's local disk.
    """

    uuid: str
    name: str | None = None
    project_id: str | None = None
    user_id: str | None = None
    host: str | None = None
    node: str | None = None
    compute_node_uuid: str | None = None
    vm_state: str | None = None
    power_state: str | None = None
    task_state: str | None = None
    flavor: Flavor | None = None
    locked: bool | None = None
    metadata: Mapping[str, str] = EMPTY_METADATA

    @property
    def vcpus(self) -> int | None:
        return self.flavor.vcpus if self.flavor else None

    @property
    def memory_mb(self) -> int | None:
        return self.flavor.ram if self.flavor else None

    @property
    def disk_gb(self) -> int | None:
        if self.flavor is None or self.flavor.disk is None:
            return None
        return self.flavor.disk + (self.flavor.ephemeral or 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "name": self.name,
            "project_id": self.project_id,
            "user_id": self.user_id,
            "host": self.host,
            "node": self.node,
            "compute_node_uuid": self.compute_node_uuid,
            "vm_state": self.vm_state,
            "power_state": self.power_state,
            "task_state": self.task_state,
            "flavor": self.flavor.to_dict() if self.flavor else None,
            "vcpus": self.vcpus,
            "memory_mb": self.memory_mb,
            "disk_gb": self.disk_gb,
            "locked": self.locked,
            "metadata": dict(self.metadata),
        }


def export_value(value: Any) -> Any:
    """A field value as it appears in JSON (flavors and metadata become plain dicts)."""
    if value is None or type(value) in _SCALARS:
        return value
    if isinstance(value, Flavor):
        return value.to_dict()
    if isinstance(value, Mapping):
        return dict(value)
    return value


_SCALARS = frozenset({str, int, bool, float})
