"""The compute model: a networkx graph of instances and compute nodes, plus lookup indexes.

The graph is undirected (an instance's one neighbour is its compute node, a node's neighbours
are its instances): it answers the same questions as a directed one with one adjacency dict per
element instead of two, which matters at 200,000 instances.

Consistency for readers: the model has a single writer (``apply``), which holds the model's lock
for the whole of one event, and elements are immutable. Point reads (``instance``, ``node``) are a
single dict lookup, atomic under the interpreter lock, and need no lock. Reads that span several
elements take the lock only long enough to collect element references, then work outside it, so
a reader never sees half of an event's changes and never holds the writer up for longer than the
collection takes. The networkx graph never leaves this module: queries return elements.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import networkx as nx

from cdm_sync.model import apply as rules
from cdm_sync.model.apply import Outcome, Plan
from cdm_sync.model.changes import ChangeRecord
from cdm_sync.model.elements import ComputeNode, Instance
from cdm_sync.model.events import Event, InstanceObserved, Version
from cdm_sync.model.tombstones import Tombstones

MODEL_FORMAT = "cdm-sync/model/1"


class _NoAttributes(dict):
    """The one attribute dict every graph node and edge shares: the graph holds structure only
    (elements live in the indexes), and a dict per node and edge would cost memory per
    instance. Writing an attribute is a bug, so it raises."""

    def __setitem__(self, key: Any, value: Any) -> None:
        raise TypeError("the compute graph holds no attributes")

    def update(self, *args: Any, **kwargs: Any) -> None:
        if kwargs or (args and args[0]):
            raise TypeError("the compute graph holds no attributes")


_NO_ATTRIBUTES = _NoAttributes()


class _StructureGraph(nx.Graph):
    node_attr_dict_factory = staticmethod(lambda: _NO_ATTRIBUTES)
    edge_attr_dict_factory = staticmethod(lambda: _NO_ATTRIBUTES)


DEFAULT_TOMBSTONE_TTL = 600.0
DEFAULT_DEDUPE_WINDOW = 65536


@dataclass(frozen=True, slots=True)
class NodeUsage:
    """A compute node's capacity against what its instances are sized for."""

    node: ComputeNode
    instances: int
    vcpus_used: int
    memory_mb_used: int
    disk_gb_used: int

    @property
    def vcpus_free(self) -> int | None:
        return None if self.node.vcpus is None else self.node.vcpus - self.vcpus_used

    @property
    def memory_mb_free(self) -> int | None:
        return None if self.node.memory_mb is None else self.node.memory_mb - self.memory_mb_used

    @property
    def disk_gb_free(self) -> int | None:
        return None if self.node.disk_gb is None else self.node.disk_gb - self.disk_gb_used


class ComputeModel:
    """Hosts and the instances on them; mutated only through :meth:`apply`."""

    def __init__(
        self,
        *,
        tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
        dedupe_window: int = DEFAULT_DEDUPE_WINDOW,
        revision: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if dedupe_window < 0:
            raise ValueError(f"dedupe window must be >= 0, got {dedupe_window!r}")
        self._lock = threading.RLock()
        self._clock = clock
        self.revision = revision
        self._graph: nx.Graph = _StructureGraph()
        self._instances: dict[str, Instance] = {}
        self._nodes: dict[str, ComputeNode] = {}
        self._instance_versions: dict[str, Version] = {}
        self._node_versions: dict[str, Version] = {}
        self._nodes_by_host: dict[str, set[str]] = {}
        self._node_by_hypervisor: dict[str, str] = {}
        self._instances_by_project: dict[str | None, set[str]] = {}
        self.instance_tombstones = Tombstones(tombstone_ttl)
        self.host_tombstones = Tombstones(tombstone_ttl)
        # Insertion-ordered, evicted oldest first in O(1) (a plain dict's next(iter()) is not).
        self._seen_messages: OrderedDict[str, None] = OrderedDict()
        self._next_purge = 0.0
        self._dedupe_window = dedupe_window

    @property
    def clock(self) -> Callable[[], float]:
        """The model's clock: tombstone expiry and every element's ``seen_at`` use it."""
        return self._clock

    # -- writing -----------------------------------------------------------------------------

    def apply(self, event: Event) -> list[ChangeRecord]:
        """Apply one typed event; return the change records it produced (maybe none)."""
        return self.apply_with_outcome(event)[1]

    def apply_with_outcome(
        self, event: Event, *, overrule: bool = False
    ) -> tuple[Outcome, list[ChangeRecord]]:
        """Like :meth:`apply`, also saying why nothing changed (stale, duplicate, ...).

        All or nothing: the event's writes are planned first (:func:`cdm_sync.model.apply.plan`)
        and committed together; if planning raises, the model, its revision, tombstones and
        the remembered message ids are as before, so a redelivered message applies.
        ``overrule``: see :mod:`cdm_sync.model.apply` (audits only)."""
        with self._lock:
            now = self._clock()
            if now >= self._next_purge:  # expiry to the second is plenty for a TTL of minutes
                self.instance_tombstones.purge(now)
                self.host_tombstones.purge(now)
                self._next_purge = now + 1.0
            message_id = event.cause.message_id
            if message_id is not None and message_id in self._seen_messages:
                return Outcome.DUPLICATE, []
            plan = rules.plan(self, event, now, overrule)
            records = self._commit(plan, now, message_id)
        if plan.refusal is not None:
            return plan.refusal, records
        return (Outcome.CHANGED if records else Outcome.UNCHANGED), records

    def preview_new_instance(self, event: InstanceObserved) -> Instance | None:
        """The element :meth:`apply` would make of ``event`` for an instance this model has
        never held, when that takes no other write (its node is known, or it names none);
        None otherwise. Changes nothing: for a private model built in bulk (an audit's shadow),
        where applying each listed server would only produce records nobody reads."""
        return rules.first_sight(self, event)

    def _commit(self, plan: Plan, now: float, message_id: str | None) -> list[ChangeRecord]:
        """Take every write of ``plan``, in order (only in-memory writes that cannot fail)."""
        for write in plan.writes:
            op = write[0]
            if op == rules.PUT_INSTANCE:
                self._put_instance(write[1], write[2], now)
            elif op == rules.PUT_NODE:
                self._put_node(write[1], write[2], now)
            elif op == rules.DROP_INSTANCE:
                self._drop_instance(write[1])
            elif op == rules.DROP_NODE:
                self._drop_node(write[1])
            elif op == rules.BURY_INSTANCE:
                self.instance_tombstones.add(write[1], write[2], write[3], now)
            elif op == rules.LIFT_INSTANCE:
                self.instance_tombstones.discard(write[1])
            elif op == rules.BURY_HOST:
                self.host_tombstones.add(write[1], write[2], write[3], now)
            elif op == rules.LIFT_HOST:
                self.host_tombstones.discard(write[1])
            else:  # a bug in the rules: fail before anything else is taken
                raise AssertionError(f"unknown write {op!r}")
        if message_id is not None and self._dedupe_window:
            seen = self._seen_messages
            seen[message_id] = None
            if len(seen) > self._dedupe_window:
                seen.popitem(last=False)
        if not plan.changes:
            return []
        cause = plan.cause
        revision = self.revision
        records = []
        for kind, op, element, changed in plan.changes:
            revision += 1
            records.append(
                ChangeRecord(revision, now, kind, op, element.uuid, changed, element, cause)
            )
        self.revision = revision
        return records

    def _put_node(self, new: ComputeNode, version: Version | None, now: float) -> None:
        uuid = new.uuid
        if version is not None:
            self._node_versions[uuid] = Version(version.updated_at, version.timestamp, now)
        old = self._nodes.get(uuid)
        if old == new:
            return
        if old is None:
            self._graph.add_node(uuid)
        else:
            self._unindex_node(old)
        self._nodes[uuid] = new
        if new.hostname is not None:
            self._nodes_by_host.setdefault(new.hostname, set()).add(uuid)
        if new.hypervisor_hostname is not None:
            self._node_by_hypervisor[new.hypervisor_hostname] = uuid

    def _unindex_node(self, old: ComputeNode) -> None:
        if old.hostname is not None:
            _discard(self._nodes_by_host, old.hostname, old.uuid)
        hypervisor = old.hypervisor_hostname
        if hypervisor is not None and self._node_by_hypervisor.get(hypervisor) == old.uuid:
            del self._node_by_hypervisor[hypervisor]

    def _drop_node(self, uuid: str) -> None:
        old = self._nodes.pop(uuid, None)
        if old is None:
            return
        self._unindex_node(old)
        self._node_versions.pop(uuid, None)
        self._graph.remove_node(uuid)

    def _put_instance(self, new: Instance, version: Version | None, now: float) -> None:
        uuid = new.uuid
        if version is not None:
            self._instance_versions[uuid] = Version(version.updated_at, version.timestamp, now)
        old = self._instances.get(uuid)
        if old == new:
            return
        g = self._graph
        if old is None:
            g.add_node(uuid)
        if old is None or old.compute_node_uuid != new.compute_node_uuid:
            if old is not None and old.compute_node_uuid is not None:
                g.remove_edge(uuid, old.compute_node_uuid)
            if new.compute_node_uuid is not None:
                g.add_edge(uuid, new.compute_node_uuid)
        if old is None or old.project_id != new.project_id:
            if old is not None:
                _discard(self._instances_by_project, old.project_id, uuid)
            self._instances_by_project.setdefault(new.project_id, set()).add(uuid)
        self._instances[uuid] = new

    def _drop_instance(self, uuid: str) -> None:
        old = self._instances.pop(uuid, None)
        self._instance_versions.pop(uuid, None)
        if old is None:
            return
        self._graph.remove_node(uuid)
        _discard(self._instances_by_project, old.project_id, uuid)

    # -- point reads (lock-free) ---------------------------------------------------------------

    def instance(self, uuid: str) -> Instance | None:
        return self._instances.get(uuid)

    def node(self, uuid: str) -> ComputeNode | None:
        return self._nodes.get(uuid)

    def node_by_hypervisor_hostname(self, hypervisor_hostname: str) -> ComputeNode | None:
        uuid = self._node_by_hypervisor.get(hypervisor_hostname)
        return self._nodes.get(uuid) if uuid is not None else None

    def node_uuid_of_hypervisor(self, hypervisor_hostname: str) -> str | None:
        return self._node_by_hypervisor.get(hypervisor_hostname)

    def node_uuids_of_host(self, host: str) -> frozenset[str]:
        return frozenset(self._nodes_by_host.get(host, ()))

    def instance_uuids_on_node(self, node_uuid: str) -> list[str]:
        with self._lock:
            if node_uuid not in self._nodes:
                return []
            return list(self._graph.neighbors(node_uuid))

    def node_of_instance(self, uuid: str) -> ComputeNode | None:
        inst = self._instances.get(uuid)
        if inst is None or inst.compute_node_uuid is None:
            return None
        return self._nodes.get(inst.compute_node_uuid)

    def instance_version(self, uuid: str) -> Version | None:
        """The version of the observation the model holds, with its ``seen_at``."""
        return self._instance_versions.get(uuid)

    def node_version(self, uuid: str) -> Version | None:
        return self._node_versions.get(uuid)

    def seen_at(self, uuid: str) -> float | None:
        """When (the model's clock) the instance or node was last observed: its deletion, for
        an instance tombstoned since; None if the model holds nothing of it."""
        version = self._instance_versions.get(uuid) or self._node_versions.get(uuid)
        if version is not None:
            return version.seen_at
        stone = self.instance_tombstones.get(uuid)
        return stone.buried_at if stone is not None else None

    def __len__(self) -> int:
        return len(self._instances)

    @property
    def instance_count(self) -> int:
        return len(self._instances)

    @property
    def node_count(self) -> int:
        return len(self._nodes)

    # -- multi-element reads (brief lock to collect references) --------------------------------

    def nodes(self) -> list[ComputeNode]:
        with self._lock:
            return list(self._nodes.values())

    def nodes_by_host(self, host: str) -> list[ComputeNode]:
        with self._lock:
            return [self._nodes[u] for u in self._nodes_by_host.get(host, ())]

    def instances_on_node(self, node_uuid: str) -> list[Instance]:
        with self._lock:
            if node_uuid not in self._nodes:
                return []
            return [self._instances[u] for u in self._graph.neighbors(node_uuid)]

    def instances_on_host(self, host: str) -> list[Instance]:
        with self._lock:
            return [
                self._instances[i]
                for n in self._nodes_by_host.get(host, ())
                for i in self._graph.neighbors(n)
            ]

    def instances(
        self,
        *,
        vm_state: str | Iterable[str] | None = None,
        power_state: str | Iterable[str] | None = None,
        project_id: str | None = None,
    ) -> list[Instance]:
        """Instances matching every given filter (a filter may be one value or several)."""
        with self._lock:
            if project_id is not None:
                found = [self._instances[u] for u in self._instances_by_project.get(project_id, ())]
            else:
                found = list(self._instances.values())
        if vm_state is not None:
            wanted = {vm_state} if isinstance(vm_state, str) else set(vm_state)
            found = [i for i in found if i.vm_state in wanted]
        if power_state is not None:
            wanted = {power_state} if isinstance(power_state, str) else set(power_state)
            found = [i for i in found if i.power_state in wanted]
        return found

    def usage(self, node_uuid: str) -> NodeUsage | None:
        """Capacity of a node against the flavors of the instances on it."""
        with self._lock:
            node = self._nodes.get(node_uuid)
            if node is None:
                return None
            members = [self._instances[u] for u in self._graph.neighbors(node_uuid)]
        return _usage(node, members)

    def usages(self) -> list[NodeUsage]:
        with self._lock:
            pairs = [
                (node, [self._instances[u] for u in self._graph.neighbors(uuid)])
                for uuid, node in self._nodes.items()
            ]
        return [_usage(node, members) for node, members in pairs]

    def to_dict(self) -> dict[str, Any]:
        """The model dump, FORMATS.md §3 (lists sorted by uuid)."""
        with self._lock:
            revision = self.revision
            nodes = list(self._nodes.values())
            instances = list(self._instances.values())
        nodes.sort(key=_by_uuid)
        instances.sort(key=_by_uuid)
        return {
            "format": MODEL_FORMAT,
            "revision": revision,
            "compute_nodes": [n.to_dict() for n in nodes],
            "instances": [i.to_dict() for i in instances],
        }

    def check_integrity(self) -> list[str]:
        """Every invariant between elements, graph and indexes; returns what is broken."""
        problems: list[str] = []
        with self._lock:
            g = self._graph
            for uuid, inst in self._instances.items():
                if uuid not in g:
                    problems.append(f"instance {uuid} missing from graph")
                    continue
                targets = list(g.neighbors(uuid))
                expected = [inst.compute_node_uuid] if inst.compute_node_uuid else []
                if targets != expected:
                    problems.append(f"instance {uuid} edges {targets} != {expected}")
                if inst.compute_node_uuid and inst.compute_node_uuid not in self._nodes:
                    problems.append(f"instance {uuid} points at unknown node")
                if uuid not in self._instances_by_project.get(inst.project_id, ()):
                    problems.append(f"instance {uuid} missing from project index")
                if uuid in self.instance_tombstones:
                    problems.append(f"instance {uuid} is both live and tombstoned")
            for uuid, node in self._nodes.items():
                if uuid not in g:
                    problems.append(f"node {uuid} missing from graph")
                if node.hostname is not None and uuid not in self._nodes_by_host.get(
                    node.hostname, ()
                ):
                    problems.append(f"node {uuid} missing from host index")
                if (
                    node.hypervisor_hostname is not None
                    and self._node_by_hypervisor.get(node.hypervisor_hostname) != uuid
                ):
                    problems.append(f"node {uuid} missing from hypervisor index")
            if g.number_of_nodes() != len(self._instances) + len(self._nodes):
                problems.append("graph has elements the indexes do not")
            indexed = sum(len(s) for s in self._instances_by_project.values())
            if indexed != len(self._instances):
                problems.append("project index size differs from instance count")
        return problems


def _by_uuid(element: ComputeNode | Instance) -> str:
    return element.uuid


def _usage(node: ComputeNode, members: list[Instance]) -> NodeUsage:
    return NodeUsage(
        node=node,
        instances=len(members),
        vcpus_used=sum(i.vcpus or 0 for i in members),
        memory_mb_used=sum(i.memory_mb or 0 for i in members),
        disk_gb_used=sum(i.disk_gb or 0 for i in members),
    )


def _discard(index: dict[Any, set[str]], key: Any, uuid: str) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(uuid)
        if not members:
            del index[key]
