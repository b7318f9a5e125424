"""The one path that mutates the model: a typed event in, change records out.

Rules (each has tests):

- an observation older than what the model holds is dropped (``STALE``); a message seen before
  (same ``message_id``) is dropped (``DUPLICATE``);
- a delete leaves a tombstone; while it lives, nothing brings that instance back (Nova never
  reuses an instance uuid);
- an instance on a host or node the model does not know gets a placeholder compute node, made
  real later by a hypervisor observation (snapshot or audit) — never a Nova call from here;
- an event that changes nothing yields nothing; every change yields one record per element, with
  gap-free revisions.

Called by :meth:`ComputeModel.apply` with the model's lock held.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from cdm_sync.model.changes import ChangeRecord, Kind, Op
from cdm_sync.model.elements import (
    ComputeNode,
    Instance,
    export_value,
    placeholder_uuid,
)
from cdm_sync.model.events import (
    NO_VERSION,
    UNKNOWN,
    Cause,
    ComputeNodeGone,
    HypervisorObserved,
    InstanceDeleted,
    InstanceObserved,
    ServiceDeleted,
    ServiceObserved,
    Version,
)

if TYPE_CHECKING:
    from cdm_sync.model.graph import ComputeModel


_FLAVOR_DERIVED = ("vcpus", "memory_mb", "disk_gb")
_NO_INSTANCE = Instance(uuid="")


class Outcome(enum.Enum):
    CHANGED = "changed"
    UNCHANGED = "unchanged"
    STALE = "stale"
    DUPLICATE = "duplicate"
    TOMBSTONED = "tombstoned"


class _Writer:
    """Collects the records of one event while it mutates the model's structures."""

    __slots__ = ("cause", "m", "now", "records")

    def __init__(self, model: ComputeModel, now: float, cause: Cause) -> None:
        self.m = model
        self.now = now
        self.cause = cause
        self.records: list[ChangeRecord] = []

    def record(
        self,
        kind: Kind,
        op: Op,
        element: Instance | ComputeNode,
        changed: dict[str, tuple[Any, Any]],
    ) -> None:
        self.m.revision += 1
        self.records.append(
            ChangeRecord(
                self.m.revision, self.now, kind, op, element.uuid, changed, element, self.cause
            )
        )

    # -- compute nodes -------------------------------------------------------------------------

    def put_node(self, new: ComputeNode, version: Version | None = None) -> None:
        m = self.m
        old = m._nodes.get(new.uuid)
        if version is not None:
            m._node_versions[new.uuid] = version
        if old == new:
            return
        if old is None:
            m._graph.add_node(new.uuid)
        else:
            self._unindex_node(old)
        m._nodes[new.uuid] = new
        if new.hostname is not None:
            m._nodes_by_host.setdefault(new.hostname, set()).add(new.uuid)
        if new.hypervisor_hostname is not None:
            m._node_by_hypervisor[new.hypervisor_hostname] = new.uuid
        if old is None:
            self.record("compute_node", "add", new, {})
        else:
            self.record("compute_node", "update", new, _diff(old, new))

    def _unindex_node(self, old: ComputeNode) -> None:
        m = self.m
        if old.hostname is not None:
            members = m._nodes_by_host.get(old.hostname)
            if members is not None:
                members.discard(old.uuid)
                if not members:
                    del m._nodes_by_host[old.hostname]
        hypervisor = old.hypervisor_hostname
        if hypervisor is not None and m._node_by_hypervisor.get(hypervisor) == old.uuid:
            del m._node_by_hypervisor[hypervisor]

    def drop_node(self, uuid: str, replacement: str | None = None) -> None:
        """Remove a node; its instances move to ``replacement`` (or to no node)."""
        m = self.m
        old = m._nodes.get(uuid)
        if old is None:
            return
        for inst_uuid in list(m._graph.neighbors(uuid)):
            inst = m._instances[inst_uuid]
            self.put_instance(inst._replace(compute_node_uuid=replacement))
        self._unindex_node(old)
        del m._nodes[uuid]
        m._node_versions.pop(uuid, None)
        m._graph.remove_node(uuid)
        self.record("compute_node", "remove", old, {})

    def resolve_node(self, host: str | None, node: str | None) -> str | None:
        """The node uuid an instance on (host, node) belongs to, creating a placeholder if none."""
        m = self.m
        found = known_node(m, host, node)
        if found is not NEEDS_WRITE:
            return found
        on_host = m._nodes_by_host.get(host, ()) if host is not None else ()
        if node is not None:
            # A node the service announced before its hypervisor was seen: name it now.
            for uuid in on_host:
                candidate = m._nodes[uuid]
                if candidate.hypervisor_hostname is None:
                    self.put_node(candidate._replace(hypervisor_hostname=node))
                    return uuid
        if host is not None and host in m.host_tombstones:
            # The host's service was deleted: a late report naming it must not bring it back as
            # a placeholder (no audit removes placeholders); the instance stays on no node.
            return None
        # A host's first node gets the uuid its service's placeholder would have had, so the
        # model does not depend on whether the service or an instance was heard of first.
        placeholder = ComputeNode(
            uuid=placeholder_uuid(host, node if host is None or on_host else None),
            hostname=host,
            hypervisor_hostname=node,
            placeholder=True,
        )
        existing = m._nodes.get(placeholder.uuid)
        if existing is not None:
            return existing.uuid
        self.put_node(placeholder, NO_VERSION)
        return placeholder.uuid

    # -- instances -----------------------------------------------------------------------------

    def put_instance(self, new: Instance, version: Version | None = None) -> None:
        m = self.m
        uuid = new.uuid
        old = m._instances.get(uuid)
        if version is not None:
            m._instance_versions[uuid] = version
        if old == new:
            return
        g = m._graph
        if old is None:
            g.add_node(uuid)
        if old is None or old.compute_node_uuid != new.compute_node_uuid:
            if old is not None and old.compute_node_uuid is not None:
                g.remove_edge(uuid, old.compute_node_uuid)
            if new.compute_node_uuid is not None:
                g.add_edge(uuid, new.compute_node_uuid)
        if old is None or old.project_id != new.project_id:
            if old is not None:
                _discard(m._instances_by_project, old.project_id, uuid)
            m._instances_by_project.setdefault(new.project_id, set()).add(uuid)
        m._instances[uuid] = new
        if old is None:
            self.record("instance", "add", new, {})
        else:
            self.record("instance", "update", new, _diff(old, new))

    def drop_instance(self, uuid: str) -> None:
        m = self.m
        old = m._instances.pop(uuid, None)
        m._instance_versions.pop(uuid, None)
        if old is None:
            return
        m._graph.remove_node(uuid)
        _discard(m._instances_by_project, old.project_id, uuid)
        self.record("instance", "remove", old, {})


NEEDS_WRITE: Any = object()
"""What :func:`known_node` returns when the node can only be found by writing (a placeholder)."""


def known_node(m: ComputeModel, host: str | None, node: str | None) -> Any:
    """The node uuid an instance on (host, node) belongs to, or None, when finding it takes no
    write; :data:`NEEDS_WRITE` when only :meth:`_Writer.resolve_node` can (placeholders)."""
    if host is None and node is None:
        return None
    if node is not None:
        found = m._node_by_hypervisor.get(node)
        if found is not None:
            return found
        return NEEDS_WRITE
    on_host = m._nodes_by_host.get(host, ()) if host is not None else ()
    if len(on_host) == 1:
        return next(iter(on_host))
    if on_host:
        return None  # several nodes on the host and no node named: do not guess
    return NEEDS_WRITE


def merged_instance(
    base: Instance, ev: InstanceObserved, host: Any, node: Any, node_uuid: str | None
) -> Instance:
    """``base`` with the fields ``ev`` proves (host and node already merged by the caller)."""
    # Unpacked by position and built with tuple.__new__ (what a NamedTuple's __new__ does,
    # minus the argument binding): this runs for every instance notification and listed server.
    (uuid, _, _, name, project, user, _, _, vm_state, power, task, flavor, locked, metadata) = ev
    u = UNKNOWN
    return _new_tuple(
        Instance,
        (
            uuid,
            base.name if name is u else name,
            base.project_id if project is u else project,
            base.user_id if user is u else user,
            host,
            node,
            node_uuid,
            base.vm_state if vm_state is u else vm_state,
            base.power_state if power is u else power,
            base.task_state if task is u else task,
            base.flavor if flavor is u else flavor,
            base.locked if locked is u else locked,
            base.metadata if metadata is u else metadata,
        ),
    )


_new_tuple = tuple.__new__


def first_sight(m: ComputeModel, ev: InstanceObserved) -> Instance | None:
    """The element applying ``ev`` would create for an instance ``m`` has never held, when that
    takes no other write (its node is known, or it names none); None otherwise."""
    if ev.uuid in m._instances or ev.uuid in m.instance_tombstones:
        return None
    host = None if ev.host is UNKNOWN else ev.host
    node = None if ev.node is UNKNOWN else ev.node
    node_uuid = None if ev.host is UNKNOWN and ev.node is UNKNOWN else known_node(m, host, node)
    if node_uuid is NEEDS_WRITE:
        return None
    return merged_instance(_NO_INSTANCE, ev, host, node, node_uuid)


def apply_event(model: ComputeModel, event: Any, now: float) -> tuple[Outcome, list[ChangeRecord]]:
    if now >= model._next_purge:  # expiry to the second is plenty for a TTL of minutes
        model.instance_tombstones.purge(now)
        model.host_tombstones.purge(now)
        model._next_purge = now + 1.0
    message_id = event.cause.message_id
    if message_id is not None:
        seen = model._seen_messages
        if message_id in seen:
            return Outcome.DUPLICATE, []
        if model._dedupe_window:
            seen[message_id] = None
            if len(seen) > model._dedupe_window:
                seen.popitem(last=False)
    handler = _HANDLERS.get(type(event))
    if handler is None:
        raise TypeError(f"not a model event: {type(event).__name__}")
    w = _Writer(model, now, event.cause)
    outcome = handler(w, event)
    if outcome is Outcome.UNCHANGED and w.records:
        outcome = Outcome.CHANGED
    return outcome, w.records


def _instance_observed(w: _Writer, ev: InstanceObserved) -> Outcome:
    m = w.m
    uuid = ev.uuid
    if uuid in m.instance_tombstones:
        return Outcome.TOMBSTONED
    old = m._instances.get(uuid)
    if old is not None and ev.version.older_than(m._instance_versions[uuid]):
        return Outcome.STALE
    base = old if old is not None else _NO_INSTANCE
    host = base.host if ev.host is UNKNOWN else ev.host
    node = base.node if ev.node is UNKNOWN else ev.node
    if ev.host is UNKNOWN and ev.node is UNKNOWN:
        node_uuid = base.compute_node_uuid
    elif old is not None and host == old.host and node == old.node and old.compute_node_uuid:
        node_uuid = old.compute_node_uuid
    else:
        node_uuid = w.resolve_node(host, node)
    new = merged_instance(base, ev, host, node, node_uuid)
    w.put_instance(new, ev.version)
    return Outcome.UNCHANGED


def _instance_deleted(w: _Writer, ev: InstanceDeleted) -> Outcome:
    m = w.m
    if ev.uuid in m.instance_tombstones:
        return Outcome.TOMBSTONED
    current = m._instance_versions.get(ev.uuid)
    if current is not None and ev.version.older_than(current):
        # Only an audit can be older than what we hold: the instance was (re)seen after the
        # listing was taken, so its absence from the listing proves nothing.
        return Outcome.STALE
    m.instance_tombstones.add(ev.uuid, ev.version, ev.reason, w.now)
    w.drop_instance(ev.uuid)
    return Outcome.UNCHANGED


def _service_observed(w: _Writer, ev: ServiceObserved) -> Outcome:
    m = w.m
    stone = m.host_tombstones.get(ev.host)
    if stone is not None:
        if not stone.version.older_than(ev.version):
            return Outcome.TOMBSTONED
        m.host_tombstones.discard(ev.host)  # the service was created again since
    members = m._nodes_by_host.get(ev.host)
    if not members:
        w.put_node(
            _with_service(
                ComputeNode(
                    uuid=placeholder_uuid(ev.host, None),
                    hostname=ev.host,
                    hypervisor_hostname=None,
                    placeholder=True,
                ),
                ev,
            ),
            ev.version,
        )
        return Outcome.UNCHANGED
    applied = False
    for uuid in sorted(members):
        if ev.version.older_than(m._node_versions.get(uuid, NO_VERSION)):
            continue
        applied = True
        w.put_node(_with_service(m._nodes[uuid], ev), ev.version)
    return Outcome.UNCHANGED if applied else Outcome.STALE


def _service_deleted(w: _Writer, ev: ServiceDeleted) -> Outcome:
    m = w.m
    members = sorted(m._nodes_by_host.get(ev.host, ()))
    if any(ev.version.older_than(m._node_versions.get(u, NO_VERSION)) for u in members):
        return Outcome.STALE
    m.host_tombstones.add(ev.host, ev.version, "service deleted", w.now)
    for uuid in members:
        w.drop_node(uuid)
    return Outcome.UNCHANGED


def _hypervisor_observed(w: _Writer, ev: HypervisorObserved) -> Outcome:
    m = w.m
    current = m._nodes.get(ev.uuid)
    previous: str | None = None
    if current is not None:
        if ev.version.older_than(m._node_versions.get(ev.uuid, NO_VERSION)):
            return Outcome.STALE
        base = current
    else:
        # Whatever held this hypervisor's name before (a placeholder, or a node Nova has since
        # re-created under a new uuid) is replaced, passing on the service status it learned.
        previous = _occupant(m, ev)
        base = (
            m._nodes[previous]
            if previous is not None
            else ComputeNode(uuid=ev.uuid, hostname=None, hypervisor_hostname=None)
        )
    new = base._replace(
        uuid=ev.uuid,
        hostname=ev.host if ev.host is not None else base.hostname,
        hypervisor_hostname=ev.hypervisor_hostname,
        vcpus=base.vcpus if ev.vcpus is UNKNOWN else ev.vcpus,
        memory_mb=base.memory_mb if ev.memory_mb is UNKNOWN else ev.memory_mb,
        disk_gb=base.disk_gb if ev.disk_gb is UNKNOWN else ev.disk_gb,
        status=base.status if ev.status is UNKNOWN else ev.status,
        state=base.state if ev.state is UNKNOWN else ev.state,
        disabled_reason=base.disabled_reason
        if ev.disabled_reason is UNKNOWN
        else ev.disabled_reason,
        placeholder=False,
    )
    w.put_node(new, ev.version)  # the real node first, so the instances can move to it
    if previous is not None:
        w.drop_node(previous, replacement=ev.uuid)
    return Outcome.UNCHANGED


def _compute_node_gone(w: _Writer, ev: ComputeNodeGone) -> Outcome:
    m = w.m
    if ev.uuid not in m._nodes:
        return Outcome.UNCHANGED
    if ev.version.older_than(m._node_versions.get(ev.uuid, NO_VERSION)):
        return Outcome.STALE
    w.drop_node(ev.uuid)
    return Outcome.UNCHANGED


def _occupant(m: ComputeModel, ev: HypervisorObserved) -> str | None:
    if ev.hypervisor_hostname is not None:
        found = m._node_by_hypervisor.get(ev.hypervisor_hostname)
        if found is not None and found != ev.uuid:
            return found
    if ev.host is not None:
        for uuid in sorted(m._nodes_by_host.get(ev.host, ())):
            node = m._nodes[uuid]
            if node.placeholder and node.hypervisor_hostname is None:
                return uuid
    return None


def _with_service(node: ComputeNode, ev: ServiceObserved) -> ComputeNode:
    status = node.status
    if ev.disabled is not UNKNOWN:
        status = "disabled" if ev.disabled else "enabled"
    return node._replace(
        status=status,
        disabled_reason=node.disabled_reason
        if ev.disabled_reason is UNKNOWN
        else ev.disabled_reason,
        state=node.state if ev.state is UNKNOWN else ev.state,
    )


def _diff(old: ComputeNode | Instance, new: ComputeNode | Instance) -> dict[str, tuple[Any, Any]]:
    """The fields that differ, as (old, new) in their JSON form."""
    changed: dict[str, tuple[Any, Any]] = {}
    for name, before, after in zip(old._fields, old, new, strict=True):
        if before is not after and before != after:
            changed[name] = (export_value(before), export_value(after))
    if "flavor" in changed:
        # Dump fields derived from the flavor are reported too, so subscribers need not
        # recompute them.
        for name in _FLAVOR_DERIVED:
            before, after = getattr(old, name), getattr(new, name)
            if before != after:
                changed[name] = (before, after)
    return changed


def _discard(index: dict[Any, set[str]], key: Any, uuid: str) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(uuid)
        if not members:
            del index[key]


_HANDLERS: dict[type, Any] = {
    InstanceObserved: _instance_observed,
    InstanceDeleted: _instance_deleted,
    ServiceObserved: _service_observed,
    ServiceDeleted: _service_deleted,
    HypervisorObserved: _hypervisor_observed,
    ComputeNodeGone: _compute_node_gone,
}
