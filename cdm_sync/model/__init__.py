"""The pure domain core: elements, typed events, the apply path, change records. No I/O here."""

from cdm_sync.model.apply import Outcome
from cdm_sync.model.changes import CHANGE_FORMAT, ChangeRecord
from cdm_sync.model.elements import POWER_STATE_NAMES, ComputeNode, Flavor, Instance
from cdm_sync.model.events import (
    NO_VERSION,
    UNKNOWN,
    Cause,
    ComputeNodeAbsent,
    Event,
    HypervisorObserved,
    InstanceAbsent,
    InstanceDeleted,
    InstanceObserved,
    ServiceDeleted,
    ServiceObserved,
    Version,
    interned,
)
from cdm_sync.model.graph import MODEL_FORMAT, ComputeModel, NodeUsage

__all__ = [
    "CHANGE_FORMAT",
    "MODEL_FORMAT",
    "NO_VERSION",
    "POWER_STATE_NAMES",
    "UNKNOWN",
    "Cause",
    "ChangeRecord",
    "ComputeModel",
    "ComputeNode",
    "ComputeNodeAbsent",
    "Event",
    "Flavor",
    "HypervisorObserved",
    "Instance",
    "InstanceAbsent",
    "InstanceDeleted",
    "InstanceObserved",
    "NodeUsage",
    "Outcome",
    "ServiceDeleted",
    "ServiceObserved",
    "Version",
    "interned",
]
