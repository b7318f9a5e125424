"""Nova notification payloads (versioned and legacy) → typed model events.

This is where raw dicts stop. Each parser decides what one notification *proves*:

- every versioned ``instance.*`` payload carries the instance's full state (InstancePayload
  family), so it becomes an ``InstanceObserved`` with every field, ordered by
  (``updated_at``, envelope timestamp);
- the source host's ``instance.live_migration_post.end`` arrives after the destination's
  ``live_migration_post_dest.end`` and still names the source: it proves nothing new and is
  ignored (legacy ``compute.instance.live_migration._post.end`` likewise);
- ``rebuild``/``evacuate`` payloads name the host the instance had *before* (the dead source on
  an evacuation), so they do not set host or node; the next ``instance.update`` does;
- legacy payloads carry no power state; a completed action whose outcome fixes it
  (``power_off.end`` → shutdown, …) sets it, every other legacy event leaves it alone;
- ``publisher_id`` is never used as a host: conductors and API hosts publish too.

Malformed input raises :class:`PayloadError` with the reason; an event type that proves nothing
about compute returns ``None``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cdm_sync.model.elements import Flavor
from cdm_sync.model.events import (
    UNKNOWN,
    Cause,
    Event,
    InstanceDeleted,
    InstanceObserved,
    ServiceDeleted,
    ServiceObserved,
    Version,
)
from cdm_sync.nova.fields import (
    PayloadError,
    StringFields,
    brief,
    flavor_from,
    make_flavor,
    metadata_field,
    opt_bool,
    opt_int,
    opt_str,
    parse_time,
    required_str,
)

# Versioned payload object names we understand, with the major version we were written for. A
# new minor version only adds fields (Nova's object versioning rules); a new major may change
# meaning, so it is rejected rather than guessed at.
INSTANCE_PAYLOADS: Mapping[str, int] = {
    "InstanceUpdatePayload": 2,
    "InstanceExistsPayload": 2,
    "InstancePayload": 1,
    "InstanceActionPayload": 1,
    "InstanceCreatePayload": 1,
    "InstanceActionRebuildPayload": 1,
    "InstanceActionRescuePayload": 1,
    "InstanceActionResizePrepPayload": 1,
    "InstanceActionSharePayload": 1,
    "InstanceActionSnapshotPayload": 1,
    "InstanceActionVolumePayload": 1,
    "InstanceActionVolumeSwapPayload": 1,
}
SERVICE_PAYLOADS: Mapping[str, int] = {"ServiceStatusPayload": 1}
FLAVOR_PAYLOADS: Mapping[str, int] = {"FlavorPayload": 1}

# Events whose payload proves nothing the model does not already have from a better source.
IGNORED_EVENTS = frozenset(
    {
        "instance.live_migration_post.end",
        "compute.instance.live_migration._post.end",
    }
)

# Events whose payload names the host the instance is leaving (evacuation) or may be leaving.
_NO_PLACEMENT_PREFIXES = (
    "instance.rebuild",
    "instance.evacuate",
    "compute.instance.rebuild",
    "compute.instance.evacuate",
)

# What a completed legacy action proves about the power state (legacy payloads carry none).
LEGACY_POWER_STATE: Mapping[str, str] = {
    "compute.instance.create.end": "running",
    "compute.instance.power_on.end": "running",
    "compute.instance.reboot.end": "running",
    "compute.instance.resume.end": "running",
    "compute.instance.unpause.end": "running",
    "compute.instance.unrescue.end": "running",
    "compute.instance.unshelve.end": "running",
    "compute.instance.power_off.end": "shutdown",
    "compute.instance.pause.end": "paused",
    "compute.instance.suspend.end": "suspended",
    "compute.instance.shelve.end": "shutdown",
    "compute.instance.shelve_offload.end": "shutdown",
}

COMPUTE_BINARY = "nova-compute"


# -- envelope ------------------------------------------------------------------------------------


def envelope_cause(
    event_type: str, metadata: Any, source: str = "notification"
) -> tuple[Cause, float | None]:
    if metadata is None:
        metadata = {}
    if type(metadata) is not dict and not isinstance(metadata, Mapping):
        raise PayloadError(f"metadata is {type(metadata).__name__}, expected an object")
    message_id = metadata.get("message_id")
    if message_id is not None and not isinstance(message_id, str):
        raise PayloadError("metadata.message_id is not a string")
    timestamp = parse_time(metadata.get("timestamp"), "metadata.timestamp", repeats=False)
    return Cause(source, event_type, message_id), timestamp  # type: ignore[arg-type]


# -- versioned ------------------------------------------------------------------------------------


def _object_data(payload: Any, known: Mapping[str, int], what: str) -> Mapping[str, Any]:
    if type(payload) is not dict and not isinstance(payload, Mapping):
        raise PayloadError(f"{what} is {type(payload).__name__}, expected a versioned object")
    name = payload.get("nova_object.name")
    version = payload.get("nova_object.version")
    if type(name) is not str or type(version) is not str:
        raise PayloadError(
            f"{what} has nova_object.name {brief(name)} and version {brief(version)}, "
            "expected strings"
        )
    key = (id(known), name, version)
    if key not in _accepted:
        _check_object_version(known, what, name, version)
        if len(_accepted) < 1024:
            _accepted.add(key)
    data = payload.get("nova_object.data")
    if type(data) is not dict and not isinstance(data, Mapping):
        raise PayloadError(f"{what} {name} has no nova_object.data object")
    return data


# (table, name, version) triples already checked: a handful in practice, so each is checked
# once. The table is part of the key: a name valid for instances is not valid for services.
_accepted: set[tuple[int, str, str]] = set()
_OBJECT_VERSION = re.compile(r"(\d{1,6})(?:\.\d{1,6})?", re.ASCII)


def _check_object_version(known: Mapping[str, int], what: str, name: str, version: str) -> None:
    if name not in known:
        raise PayloadError(f"{what} is {brief(name)}, expected one of {sorted(known)}")
    matched = _OBJECT_VERSION.fullmatch(version)
    if matched is None:
        raise PayloadError(f"{what} {name} has a malformed version {brief(version, 20)}")
    if int(matched.group(1)) != known[name]:
        raise PayloadError(
            f"{what} {name} version {version} is unsupported (major {known[name]} expected)"
        )


def parse_versioned_instance(event_type: str, payload: Any, metadata: Any) -> Event:
    data = _object_data(payload, INSTANCE_PAYLOADS, "payload")
    cause, timestamp = envelope_cause(event_type, metadata)
    uuid = required_str(data, "uuid")
    vm_state = required_str(data, "state", shared=True)
    version = Version(parse_time(data.get("updated_at"), "updated_at"), timestamp)
    if vm_state == "deleted":
        return InstanceDeleted(uuid, version, cause)
    # The string fields, read in one lookup (this is the notification hot path).
    name, project_id, user_id, host, node, power_state, task_state = _INSTANCE_STRINGS.read(data)
    if event_type.startswith(_NO_PLACEMENT_PREFIXES):
        host = node = UNKNOWN
    # Positional (the notification hot path): the fields in InstanceObserved's order.
    return InstanceObserved(
        uuid,
        version,
        cause,
        name,
        project_id,
        user_id,
        host,
        node,
        vm_state,
        power_state,
        task_state,
        _versioned_flavor(data.get("flavor", UNKNOWN)),
        opt_bool(data, "locked"),
        metadata_field(data),
    )


# InstancePayload's optional string fields, in the order parse_versioned_instance unpacks them,
# each with whether its values repeat across instances (and so are interned).
_INSTANCE_STRINGS = StringFields(
    ("display_name", False),
    ("tenant_id", True),
    ("user_id", True),
    ("host", True),
    ("node", True),
    ("power_state", True),
    ("task_state", True),
)


def _versioned_flavor(value: Any) -> Flavor | Any | None:
    if value is UNKNOWN or value is None:
        return value
    data = _object_data(value, FLAVOR_PAYLOADS, "flavor")
    return flavor_from(data, _FLAVOR_PAYLOAD_KEYS)


_FLAVOR_PAYLOAD_KEYS = ("name", "vcpus", "memory_mb", "root_gb", "ephemeral_gb")


def parse_versioned_service(event_type: str, payload: Any, metadata: Any) -> Event | None:
    data = _object_data(payload, SERVICE_PAYLOADS, "payload")
    cause, timestamp = envelope_cause(event_type, metadata)
    if opt_str(data, "binary", shared=True) != COMPUTE_BINARY:
        return None
    host = required_str(data, "host", shared=True)
    version = Version(None, timestamp)
    if event_type == "service.delete":
        return ServiceDeleted(host, version, cause)
    forced_down = opt_bool(data, "forced_down")
    disabled = opt_bool(data, "disabled")
    return ServiceObserved(
        host=host,
        version=version,
        cause=cause,
        disabled=UNKNOWN if disabled is UNKNOWN or disabled is None else disabled,
        disabled_reason=opt_str(data, "disabled_reason", shared=True),
        # A service that just sent a notification is up in Nova's eyes unless forced down; an
        # audit reading the API corrects a service that has since stopped reporting.
        state="down" if forced_down is True else "up",
    )


# -- legacy --------------------------------------------------------------------------------


def parse_legacy_instance(event_type: str, payload: Any, metadata: Any) -> Event:
    if not isinstance(payload, Mapping):
        raise PayloadError(f"payload is {type(payload).__name__}, expected an object")
    cause, timestamp = envelope_cause(event_type, metadata)
    uuid = required_str(payload, "instance_id")
    vm_state = required_str(payload, "state", shared=True)
    version = Version(None, timestamp)
    if vm_state == "deleted" or event_type == "compute.instance.delete.end":
        return InstanceDeleted(uuid, version, cause)
    placed = not event_type.startswith(_NO_PLACEMENT_PREFIXES)
    task_state = opt_str(payload, "state_description", shared=True)
    flavor: Any = UNKNOWN
    if "instance_type" in payload:
        flavor = make_flavor(
            opt_str(payload, "instance_type"),
            opt_int(payload, "vcpus"),
            opt_int(payload, "memory_mb"),
            opt_int(payload, "root_gb"),
            opt_int(payload, "ephemeral_gb"),
        )
    return InstanceObserved(
        uuid=uuid,
        version=version,
        cause=cause,
        name=opt_str(payload, "display_name"),
        project_id=opt_str(payload, "tenant_id", shared=True),
        user_id=opt_str(payload, "user_id", shared=True),
        host=opt_str(payload, "host", shared=True) if placed else UNKNOWN,
        node=opt_str(payload, "node", shared=True) if placed else UNKNOWN,
        vm_state=vm_state,
        power_state=LEGACY_POWER_STATE.get(event_type, UNKNOWN),
        task_state=UNKNOWN if task_state is UNKNOWN else (task_state or None),
        flavor=flavor,
        metadata=metadata_field(payload),
    )
