"""Typed events: the only language between the edges (Nova API, notifications, files) and the core.

Events are named tuples: immutable and cheap to build on the notification hot path. Compare
versions with :meth:`Version.older_than`, never with ``<`` (tuple order is not version order).

Each event says what one observation proves about one element, and nothing more. Fields an
observation does not prove stay ``UNKNOWN`` and the apply path leaves them as they are, which is
how a legacy notification (no power state) or an evacuation's ``rebuild.end`` (names the dead
source host) update the model without corrupting it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from enum import Enum
from typing import Final, Literal, NamedTuple, TypeAlias

from cdm_sync.model.elements import EMPTY_METADATA, Flavor


class _Unknown(Enum):
    UNKNOWN = "UNKNOWN"

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Final = _Unknown.UNKNOWN
"""A field the observation does not prove. Distinct from ``None``, which Nova uses for 'no host'."""

Source = Literal["bootstrap", "notification", "audit", "resync"]


class Version(NamedTuple):
    """When an observation was true: the payload's ``updated_at`` and the envelope timestamp.

    Both are POSIX seconds or ``None``. Nova's ``updated_at`` has one-second resolution and is the
    stamp of the write *before* the one a notification reports, but it never decreases, so it
    orders observations from different publishers; the envelope timestamp breaks ties and orders
    observations that carry no ``updated_at`` (legacy payloads, service events). Both come from
    the clocks of Nova's hosts, which may disagree: see ``seen_at``.

    ``seen_at`` is when the model stored the observation, by cdm-sync's own clock: events carry
    ``None``, the model sets it. It is never compared with the other two (different clocks); it
    decides what a listing's absence may delete, and whether an audit may overrule.
    """

    updated_at: float | None
    timestamp: float | None
    seen_at: float | None = None

    def older_than(self, other: Version) -> bool:
        """True when this observation is known to predate ``other``."""
        mine, theirs = self.updated_at, other.updated_at
        if mine is not None and theirs is not None and mine != theirs:
            return mine < theirs
        if self.timestamp is not None and other.timestamp is not None:
            return self.timestamp < other.timestamp
        return False


NO_VERSION: Final = Version(None, None)


class Cause(NamedTuple):
    """Why the model changed; copied into every change record the event yields."""

    source: Source
    event_type: str | None = None
    message_id: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {"source": self.source, "event_type": self.event_type, "message_id": self.message_id}


MaybeStr: TypeAlias = "str | _Unknown | None"
MaybeBool: TypeAlias = "bool | _Unknown | None"
MaybeInt: TypeAlias = "int | _Unknown | None"


class InstanceObserved(NamedTuple):
    """An instance exists with (at least) these field values at ``version``."""

    uuid: str
    version: Version
    cause: Cause
    name: MaybeStr = UNKNOWN
    project_id: MaybeStr = UNKNOWN
    user_id: MaybeStr = UNKNOWN
    host: MaybeStr = UNKNOWN
    node: MaybeStr = UNKNOWN
    vm_state: MaybeStr = UNKNOWN
    power_state: MaybeStr = UNKNOWN
    task_state: MaybeStr = UNKNOWN
    flavor: Flavor | _Unknown | None = UNKNOWN
    locked: MaybeBool = UNKNOWN
    metadata: Mapping[str, str] | _Unknown = UNKNOWN


class InstanceDeleted(NamedTuple):
    """An instance is gone for good (hard delete, or absent from a complete audit listing)."""

    uuid: str
    version: Version
    cause: Cause
    reason: str = "deleted"


class ServiceObserved(NamedTuple):
    """A nova-compute service on ``host`` with this status; applies to every node of the host.

    ``state`` is 'up'/'down' when the source says so (the API does); a notification gives only
    ``forced_down``, from which the parser derives it.
    """

    host: str
    version: Version
    cause: Cause
    disabled: bool | _Unknown = UNKNOWN
    disabled_reason: MaybeStr = UNKNOWN
    state: MaybeStr = UNKNOWN


class ServiceDeleted(NamedTuple):
    """The nova-compute service on ``host`` was deleted; its compute nodes go with it."""

    host: str
    version: Version
    cause: Cause


class HypervisorObserved(NamedTuple):
    """A hypervisor as the compute API lists it: a compute node's real uuid and its capacity."""

    uuid: str
    hypervisor_hostname: str | None
    host: str | None
    version: Version
    cause: Cause
    vcpus: MaybeInt = UNKNOWN
    memory_mb: MaybeInt = UNKNOWN
    disk_gb: MaybeInt = UNKNOWN
    status: MaybeStr = UNKNOWN
    state: MaybeStr = UNKNOWN
    disabled_reason: MaybeStr = UNKNOWN


class InstanceAbsent(NamedTuple):
    """A complete listing that began at ``listed_at`` (cdm-sync's clock) lacks this instance.

    Absence is no proof for an instance the model has observed since then (it may have been
    created while the listing ran): that one is kept. Otherwise it is deleted and tombstoned.
    ``version``, for offline audits only (a snapshot file and a trace recorded on one clock):
    the listing's own version; what the model holds a newer version of is kept too.
    """

    uuid: str
    listed_at: float
    cause: Cause
    version: Version = NO_VERSION


class ComputeNodeAbsent(NamedTuple):
    """A complete listing that began at ``listed_at`` (cdm-sync's clock) lacks this compute
    node; kept, as for :class:`InstanceAbsent`, if observed since (or newer than ``version``)."""

    uuid: str
    listed_at: float
    cause: Cause
    version: Version = NO_VERSION


Event: TypeAlias = (
    InstanceObserved
    | InstanceDeleted
    | InstanceAbsent
    | ServiceObserved
    | ServiceDeleted
    | HypervisorObserved
    | ComputeNodeAbsent
)


def interned(event: Event) -> Event:
    """``event`` with the strings many instances repeat (project, user, host, node, task state)
    interned, so a model of 200,000 instances holds one copy of each; any other event as is.

    For events read without interning (an audit's listing is compared and mostly dropped)
    before one of them enters a model."""
    if type(event) is not InstanceObserved:
        return event
    return event._replace(
        project_id=_maybe_intern(event.project_id),
        user_id=_maybe_intern(event.user_id),
        host=_maybe_intern(event.host),
        node=_maybe_intern(event.node),
        task_state=_maybe_intern(event.task_state),
    )


def _maybe_intern(value: object) -> object:
    return sys.intern(value) if type(value) is str else value


__all__ = [
    "EMPTY_METADATA",
    "NO_VERSION",
    "UNKNOWN",
    "Cause",
    "ComputeNodeAbsent",
    "Event",
    "HypervisorObserved",
    "InstanceAbsent",
    "InstanceDeleted",
    "InstanceObserved",
    "ServiceDeleted",
    "ServiceObserved",
    "Source",
    "Version",
    "interned",
]
