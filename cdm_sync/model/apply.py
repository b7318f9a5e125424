"""The rules of the one mutation path: what one typed event changes, planned without changing it.

:func:`plan` reads the model and returns every write the event makes (elements, versions,
tombstones and the change records); :meth:`ComputeModel.apply` commits the whole plan. Planning
changes nothing, so an event whose planning raises leaves the model exactly as it was. Rules
(each has tests):

- an observation older than what the model holds is refused (``STALE``); a message id whose
  event was committed before is refused (``DUPLICATE``, checked by the model);
- a delete leaves a tombstone; while it lives, nothing brings that instance back (Nova never
  reuses an instance uuid);
- absence from a listing removes only what the model has not observed since the listing began,
  by cdm-sync's own clock (never compared with the stamps of Nova's hosts);
- an instance on a host or node the model does not know gets a placeholder compute node, made
  real later by a hypervisor observation (snapshot or audit) — never a Nova call from here;
- an event that changes nothing yields nothing; every change yields one record per element;
- ``overrule`` (an audit's correction that two listings in a row agreed on, with nothing
  observed in between) skips the version check and an instance tombstone: the clocks of
  Nova's hosts disagree, and one running ahead must not make an element unrepairable.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from typing import Any, Protocol

from cdm_sync.model.changes import Kind, Op
from cdm_sync.model.elements import ComputeNode, Instance, export_value, placeholder_uuid
from cdm_sync.model.events import (
    NO_VERSION,
    UNKNOWN,
    Cause,
    ComputeNodeAbsent,
    HypervisorObserved,
    InstanceAbsent,
    InstanceDeleted,
    InstanceObserved,
    ServiceDeleted,
    ServiceObserved,
    Version,
)
from cdm_sync.model.tombstones import Tombstone, Tombstones

_FLAVOR_DERIVED = ("vcpus", "memory_mb", "disk_gb")
_NO_INSTANCE = Instance(uuid="")


class Outcome(enum.Enum):
    """What applying one event did: it changed the model, or it was accepted and changed
    nothing, or it was refused (and why)."""

    CHANGED = "changed"
    UNCHANGED = "unchanged"
    STALE = "stale"
    DUPLICATE = "duplicate"
    TOMBSTONED = "tombstoned"


class ModelView(Protocol):
    """The reads planning needs (:class:`~cdm_sync.model.graph.ComputeModel` provides them)."""

    instance_tombstones: Tombstones
    host_tombstones: Tombstones

    def instance(self, uuid: str) -> Instance | None: ...

    def node(self, uuid: str) -> ComputeNode | None: ...

    def instance_version(self, uuid: str) -> Version | None: ...

    def node_version(self, uuid: str) -> Version | None: ...

    def node_uuids_of_host(self, host: str) -> Collection[str]: ...

    def node_uuid_of_hypervisor(self, hypervisor_hostname: str) -> str | None: ...

    def instance_uuids_on_node(self, node_uuid: str) -> list[str]: ...


# Write operations of a plan, committed in order by ComputeModel.
PUT_NODE = "put_node"  # (PUT_NODE, node, version or None: keep)
DROP_NODE = "drop_node"  # (DROP_NODE, uuid)
PUT_INSTANCE = "put_instance"  # (PUT_INSTANCE, instance, version or None: keep)
DROP_INSTANCE = "drop_instance"  # (DROP_INSTANCE, uuid)
BURY_INSTANCE = "bury_instance"  # (BURY_INSTANCE, uuid, version, reason): tombstone
LIFT_INSTANCE = "lift_instance"  # (LIFT_INSTANCE, uuid): tombstone removed
BURY_HOST = "bury_host"  # (BURY_HOST, host, version, reason)
LIFT_HOST = "lift_host"  # (LIFT_HOST, host)


class Plan:
    """Every write one event makes, in the order they must be committed, and its records.

    ``changes`` are the change records without their revision: (kind, op, element, changed);
    the commit numbers them. ``refusal`` is set when the event is refused (no writes then).
    """

    __slots__ = ("cause", "changes", "m", "refusal", "writes")

    def __init__(self, model: ModelView, cause: Cause) -> None:
        self.m = model
        self.cause = cause
        self.writes: list[tuple[Any, ...]] = []
        self.changes: list[tuple[Kind, Op, ComputeNode | Instance, dict[str, tuple[Any, Any]]]] = []
        self.refusal: Outcome | None = None

    # -- compute nodes -------------------------------------------------------------------------

    def put_node(self, new: ComputeNode, version: Version | None = None) -> None:
        old = self.m.node(new.uuid)
        if old == new:
            if version is not None:
                self.writes.append((PUT_NODE, new, version))
            return
        self.writes.append((PUT_NODE, new, version))
        if old is None:
            self.changes.append(("compute_node", "add", new, {}))
        else:
            self.changes.append(("compute_node", "update", new, _diff(old, new)))

    def drop_node(self, uuid: str, replacement: str | None = None) -> None:
        """Remove a node; its instances move to ``replacement`` (or to no node)."""
        old = self.m.node(uuid)
        if old is None:
            return
        instance = self.m.instance
        for inst_uuid in self.m.instance_uuids_on_node(uuid):
            inst = instance(inst_uuid)
            assert inst is not None
            self.put_instance(inst._replace(compute_node_uuid=replacement))
        self.writes.append((DROP_NODE, uuid))
        self.changes.append(("compute_node", "remove", old, {}))

    def resolve_node(self, host: str | None, node: str | None) -> str | None:
        """The node uuid an instance on (host, node) belongs to, creating a placeholder if none."""
        m = self.m
        found = known_node(m, host, node)
        if found is not NEEDS_WRITE:
            return found
        on_host = m.node_uuids_of_host(host) if host is not None else ()
        if node is not None:
            # A node the service announced before its hypervisor was seen: name it now.
            for uuid in sorted(on_host):
                candidate = m.node(uuid)
                assert candidate is not None
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
        if m.node(placeholder.uuid) is not None:
            return placeholder.uuid
        self.put_node(placeholder, NO_VERSION)
        return placeholder.uuid

    # -- instances -----------------------------------------------------------------------------

    def put_instance(self, new: Instance, version: Version | None = None) -> None:
        old = self.m.instance(new.uuid)
        if old == new:
            if version is not None:
                self.writes.append((PUT_INSTANCE, new, version))
            return
        self.writes.append((PUT_INSTANCE, new, version))
        if old is None:
            self.changes.append(("instance", "add", new, {}))
        else:
            self.changes.append(("instance", "update", new, _diff(old, new)))

    def bury_instance(self, uuid: str, version: Version, reason: str) -> None:
        """Delete an instance and leave its tombstone."""
        self.writes.append((BURY_INSTANCE, uuid, version, reason))
        self.drop_instance(uuid)

    def drop_instance(self, uuid: str) -> None:
        old = self.m.instance(uuid)
        if old is None:
            return
        self.writes.append((DROP_INSTANCE, uuid))
        self.changes.append(("instance", "remove", old, {}))


NEEDS_WRITE: Any = object()
"""What :func:`known_node` returns when the node can only be found by writing (a placeholder)."""


def known_node(m: ModelView, host: str | None, node: str | None) -> Any:
    """The node uuid an instance on (host, node) belongs to, or None, when finding it takes no
    write; :data:`NEEDS_WRITE` when only :meth:`Plan.resolve_node` can (placeholders)."""
    if host is None and node is None:
        return None
    if node is not None:
        found = m.node_uuid_of_hypervisor(node)
        if found is not None:
            return found
        return NEEDS_WRITE
    on_host = m.node_uuids_of_host(host) if host is not None else ()
    if len(on_host) == 1:
        return next(iter(on_host))
    if on_host:
        return None  # several nodes on the host and no node named: do not guess
    return NEEDS_WRITE


def merged_instance(
    base: Instance, ev: InstanceObserved, host: Any, node: Any, node_uuid: str | None
) -> Instance:
    """``base`` with the fields ``ev`` proves (host and node already merged by the caller)."""
    u = UNKNOWN
    return Instance(
        uuid=ev.uuid,
        name=base.name if ev.name is u else ev.name,
        project_id=base.project_id if ev.project_id is u else ev.project_id,
        user_id=base.user_id if ev.user_id is u else ev.user_id,
        host=host,
        node=node,
        compute_node_uuid=node_uuid,
        vm_state=base.vm_state if ev.vm_state is u else ev.vm_state,
        power_state=base.power_state if ev.power_state is u else ev.power_state,
        task_state=base.task_state if ev.task_state is u else ev.task_state,
        flavor=base.flavor if ev.flavor is u else ev.flavor,
        locked=base.locked if ev.locked is u else ev.locked,
        metadata=base.metadata if ev.metadata is u else ev.metadata,
    )


def first_sight(m: ModelView, ev: InstanceObserved) -> Instance | None:
    """The element applying ``ev`` would create for an instance ``m`` has never held, when that
    takes no other write (its node is known, or it names none); None otherwise."""
    if m.instance(ev.uuid) is not None or ev.uuid in m.instance_tombstones:
        return None
    host = None if ev.host is UNKNOWN else ev.host
    node = None if ev.node is UNKNOWN else ev.node
    node_uuid = None if ev.host is UNKNOWN and ev.node is UNKNOWN else known_node(m, host, node)
    if node_uuid is NEEDS_WRITE:
        return None
    return merged_instance(_NO_INSTANCE, ev, host, node, node_uuid)


def plan(model: ModelView, event: Any, now: float, overrule: bool = False) -> Plan:
    """The writes ``event`` makes to ``model`` (read, never changed), or its refusal.

    ``now`` is the model's clock (tombstones are written with it); ``overrule`` as in the
    module docstring. Raises TypeError for an object that is not a model event."""
    handler = _HANDLERS.get(type(event))
    if handler is None:
        raise TypeError(f"not a model event: {type(event).__name__}")
    p = Plan(model, event.cause)
    p.refusal = handler(p, event, now, overrule)
    return p


def _instance_observed(p: Plan, ev: InstanceObserved, now: float, overrule: bool) -> Outcome | None:
    m = p.m
    uuid = ev.uuid
    if uuid in m.instance_tombstones:
        if not overrule:
            return Outcome.TOMBSTONED
        p.writes.append((LIFT_INSTANCE, uuid))
    old = m.instance(uuid)
    if (
        old is not None and not overrule and ev.version.older_than(m.instance_version(uuid))  # type: ignore[arg-type]
    ):
        return Outcome.STALE
    base = old if old is not None else _NO_INSTANCE
    host = base.host if ev.host is UNKNOWN else ev.host
    node = base.node if ev.node is UNKNOWN else ev.node
    if ev.host is UNKNOWN and ev.node is UNKNOWN:
        node_uuid = base.compute_node_uuid
    elif old is not None and host == old.host and node == old.node and old.compute_node_uuid:
        node_uuid = old.compute_node_uuid
    else:
        node_uuid = p.resolve_node(host, node)
    p.put_instance(merged_instance(base, ev, host, node, node_uuid), ev.version)
    return None


def _instance_deleted(p: Plan, ev: InstanceDeleted, now: float, overrule: bool) -> Outcome | None:
    m = p.m
    if ev.uuid in m.instance_tombstones:
        return Outcome.TOMBSTONED
    current = m.instance_version(ev.uuid)
    if current is not None and not overrule and ev.version.older_than(current):
        # Only a listing can be older than what we hold: the instance was (re)seen after the
        # listing was taken, so the listing's word is out of date.
        return Outcome.STALE
    p.bury_instance(ev.uuid, ev.version, ev.reason)
    return None


def _instance_absent(p: Plan, ev: InstanceAbsent, now: float, overrule: bool) -> Outcome | None:
    m = p.m
    if ev.uuid in m.instance_tombstones:
        return Outcome.TOMBSTONED
    current = m.instance_version(ev.uuid)
    if current is None:
        return None
    if _seen_since(current, ev.listed_at) or ev.version.older_than(current):
        return Outcome.STALE
    p.bury_instance(ev.uuid, ev.version, "absent from a listing")
    return None


def _seen_since(stored: Version | None, moment: float) -> bool:
    """Whether the model stored an observation of the element at or after ``moment``."""
    return stored is not None and stored.seen_at is not None and stored.seen_at >= moment


def _buried(stone: Tombstone, ev: ServiceObserved | HypervisorObserved) -> bool:
    """Whether a host tombstone outranks an observation of that host. A notification is
    judged by Nova's stamps (the delete's and its own); a listing by cdm-sync's clock: it lost
    if it began before the model observed the delete (its version's timestamp is the listing's
    capture, on the clock the tombstone was written with)."""
    if ev.cause.source == "notification":
        return not stone.version.older_than(ev.version)
    began = ev.version.timestamp
    return began is None or began <= stone.buried_at


def _service_observed(p: Plan, ev: ServiceObserved, now: float, overrule: bool) -> Outcome | None:
    m = p.m
    stone = m.host_tombstones.get(ev.host)
    if stone is not None:
        if _buried(stone, ev):
            return Outcome.TOMBSTONED
        p.writes.append((LIFT_HOST, ev.host))  # the service was created again since
    members = m.node_uuids_of_host(ev.host)
    if not members:
        placeholder = ComputeNode(
            uuid=placeholder_uuid(ev.host, None),
            hostname=ev.host,
            hypervisor_hostname=None,
            placeholder=True,
        )
        p.put_node(_with_service(placeholder, ev), ev.version)
        return None
    applied = False
    for uuid in sorted(members):
        if not overrule and ev.version.older_than(m.node_version(uuid) or NO_VERSION):
            continue
        applied = True
        node = m.node(uuid)
        assert node is not None
        p.put_node(_with_service(node, ev), ev.version)
    return None if applied else Outcome.STALE


def _service_deleted(p: Plan, ev: ServiceDeleted, now: float, overrule: bool) -> Outcome | None:
    m = p.m
    members = sorted(m.node_uuids_of_host(ev.host))
    if not overrule and any(
        ev.version.older_than(m.node_version(u) or NO_VERSION) for u in members
    ):
        return Outcome.STALE
    p.writes.append((BURY_HOST, ev.host, ev.version, "service deleted"))
    for uuid in members:
        p.drop_node(uuid)
    return None


def _hypervisor_observed(
    p: Plan, ev: HypervisorObserved, now: float, overrule: bool
) -> Outcome | None:
    m = p.m
    current = m.node(ev.uuid)
    previous: str | None = None
    stone = m.host_tombstones.get(ev.host) if ev.host is not None and current is None else None
    if stone is not None and _buried(stone, ev):
        return Outcome.TOMBSTONED  # a listing read before its service was deleted
    if current is not None:
        if not overrule and ev.version.older_than(m.node_version(ev.uuid) or NO_VERSION):
            return Outcome.STALE
        base = current
    else:
        # Whatever held this hypervisor's name before (a placeholder, or a node Nova has since
        # re-created under a new uuid) is replaced, passing on the service status it learned.
        previous = _occupant(m, ev)
        previous_node = m.node(previous) if previous is not None else None
        base = (
            previous_node
            if previous_node is not None
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
    p.put_node(new, ev.version)  # the real node first, so the instances can move to it
    if previous is not None:
        p.drop_node(previous, replacement=ev.uuid)
    return None


def _compute_node_absent(
    p: Plan, ev: ComputeNodeAbsent, now: float, overrule: bool
) -> Outcome | None:
    m = p.m
    if m.node(ev.uuid) is None:
        return None
    current = m.node_version(ev.uuid) or NO_VERSION
    if _seen_since(current, ev.listed_at) or ev.version.older_than(current):
        return Outcome.STALE
    p.drop_node(ev.uuid)
    return None


def _occupant(m: ModelView, ev: HypervisorObserved) -> str | None:
    if ev.hypervisor_hostname is not None:
        found = m.node_uuid_of_hypervisor(ev.hypervisor_hostname)
        if found is not None and found != ev.uuid:
            return found
    if ev.host is not None:
        for uuid in sorted(m.node_uuids_of_host(ev.host)):
            node = m.node(uuid)
            if node is not None and node.placeholder and node.hypervisor_hostname is None:
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


_HANDLERS: dict[type, Any] = {
    InstanceObserved: _instance_observed,
    InstanceDeleted: _instance_deleted,
    InstanceAbsent: _instance_absent,
    ServiceObserved: _service_observed,
    ServiceDeleted: _service_deleted,
    HypervisorObserved: _hypervisor_observed,
    ComputeNodeAbsent: _compute_node_absent,
}
