"""Nova snapshots (FORMATS.md §1): compute API listings → typed model events.

The same translation serves a snapshot file, a live bootstrap and an audit, so the compute API's
JSON is interpreted in exactly one place. Every microversion from 2.1 is accepted: hypervisor
ids are integers before 2.53 (then the id, as a string, is the node's uuid), capacity fields
vanish at 2.88 (then capacity stays unknown rather than invented), servers embed their flavor
from 2.47 (before, the flavor is looked up in the snapshot's ``flavors`` by id).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdm_sync.model.elements import POWER_STATE_NAMES, Flavor
from cdm_sync.model.events import (
    UNKNOWN,
    Cause,
    Event,
    HypervisorObserved,
    InstanceDeleted,
    InstanceObserved,
    ServiceObserved,
    Source,
    Version,
)
from cdm_sync.nova.fields import (
    PayloadError,
    make_flavor,
    metadata_field,
    opt_bool,
    opt_int,
    opt_str,
    parse_time,
    required_str,
)
from cdm_sync.nova.payloads import COMPUTE_BINARY

LOG = logging.getLogger(__name__)

SNAPSHOT_FORMAT = "cdm-sync/nova-snapshot/1"


class SnapshotError(ValueError):
    """A snapshot file that cannot be used at all (wrong format tag, not JSON, ...)."""


@dataclass
class Snapshot:
    captured_at: float
    microversion: str
    services: list[Any]
    hypervisors: list[Any]
    servers: list[Any]
    flavors: list[Any] = field(default_factory=list)

    @classmethod
    def from_dict(cls, doc: Any, origin: str = "snapshot") -> Snapshot:
        if not isinstance(doc, Mapping):
            raise SnapshotError(f"{origin}: expected a JSON object")
        if doc.get("format") != SNAPSHOT_FORMAT:
            raise SnapshotError(
                f"{origin}: format is {doc.get('format')!r}, expected {SNAPSHOT_FORMAT!r}"
            )
        try:
            captured = parse_time(doc.get("captured_at"), "captured_at")
        except PayloadError as exc:
            raise SnapshotError(f"{origin}: {exc}") from None
        if captured is None:
            raise SnapshotError(f"{origin}: captured_at is missing")
        microversion = doc.get("compute_api_microversion")
        if not isinstance(microversion, str) or _parse_microversion(microversion) is None:
            raise SnapshotError(f"{origin}: compute_api_microversion {microversion!r} is not X.Y")
        lists = {}
        for key in ("services", "hypervisors", "servers", "flavors"):
            value = doc.get(key, [] if key == "flavors" else None)
            if not isinstance(value, list):
                raise SnapshotError(f"{origin}: {key} must be a list")
            lists[key] = value
        return cls(captured, microversion, **lists)


def read_snapshot(path: str | Path) -> Snapshot:
    try:
        with open(path, "rb") as fh:
            doc = json.load(fh)
    except OSError as exc:
        raise SnapshotError(f"{path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise SnapshotError(f"{path}: not valid JSON ({exc})") from None
    return Snapshot.from_dict(doc, str(path))


@dataclass
class Translation:
    """What translating a snapshot found: items rejected with the reason (logged as well)."""

    rejected: list[str] = field(default_factory=list)


def snapshot_events(
    snapshot: Snapshot, source: Source = "bootstrap", report: Translation | None = None
) -> Iterator[Event]:
    """Hypervisors, services, then servers, as events.

    Hypervisors come first so that services and servers find the real nodes (not placeholders).
    """
    report = report if report is not None else Translation()
    version = Version(None, snapshot.captured_at)
    cause = Cause(source, None, None)
    for kind, items, translate in (
        ("hypervisor", snapshot.hypervisors, _hypervisor),
        ("service", snapshot.services, _service),
    ):
        for item in items:
            try:
                event = translate(item, version, cause)
            except PayloadError as exc:
                _reject(report, kind, item, exc)
                continue
            if event is not None:
                yield event
    flavors = _flavor_index(snapshot.flavors)
    for item in snapshot.servers:
        try:
            yield server_event(item, snapshot.captured_at, cause, flavors)
        except PayloadError as exc:
            _reject(report, "server", item, exc)


def _reject(report: Translation, kind: str, item: Any, exc: Exception) -> None:
    ident = item.get("id") if isinstance(item, Mapping) else None
    reason = f"{kind} {ident!r}: {exc}"
    report.rejected.append(reason)
    LOG.warning("Snapshot item rejected: %s", reason)


def _service(item: Any, version: Version, cause: Cause) -> ServiceObserved | None:
    if not isinstance(item, Mapping):
        raise PayloadError("not an object")
    if item.get("binary") != COMPUTE_BINARY:
        return None
    status = opt_str(item, "status")
    state = opt_str(item, "state")
    return ServiceObserved(
        host=required_str(item, "host"),
        version=version,
        cause=cause,
        disabled=UNKNOWN if status in (UNKNOWN, None) else status == "disabled",
        disabled_reason=opt_str(item, "disabled_reason"),
        state=state,
    )


def _hypervisor(item: Any, version: Version, cause: Cause) -> HypervisorObserved:
    if not isinstance(item, Mapping):
        raise PayloadError("not an object")
    ident = item.get("id")
    if isinstance(ident, bool) or not isinstance(ident, (str, int)) or ident == "":
        raise PayloadError("id is missing or not a string/integer")
    service = item.get("service")
    host: Any = None
    disabled_reason: Any = UNKNOWN
    if service is not None:
        if not isinstance(service, Mapping):
            raise PayloadError("service is not an object")
        host = opt_str(service, "host")
        disabled_reason = opt_str(service, "disabled_reason")
    hostname = opt_str(item, "hypervisor_hostname")
    return HypervisorObserved(
        uuid=str(ident),
        hypervisor_hostname=None if hostname is UNKNOWN else hostname,
        host=None if host is UNKNOWN else host,
        version=version,
        cause=cause,
        vcpus=opt_int(item, "vcpus"),
        memory_mb=opt_int(item, "memory_mb"),
        disk_gb=opt_int(item, "local_gb"),
        # The item carries its service's status (2.1+) and disabled reason (2.53+ in ``service``).
        status=opt_str(item, "status"),
        state=opt_str(item, "state"),
        disabled_reason=disabled_reason,
    )


def server_event(
    item: Any, captured_at: float, cause: Cause, flavors: Mapping[str, Flavor]
) -> InstanceObserved | InstanceDeleted:
    """One item of ``GET /servers/detail`` as an event, versioned by its ``updated`` stamp."""
    if not isinstance(item, Mapping):
        raise PayloadError("not an object")
    uuid = required_str(item, "id")
    version = Version(parse_time(item.get("updated"), "updated"), captured_at)
    vm_state = opt_str(item, "OS-EXT-STS:vm_state")
    if vm_state == "deleted" or item.get("status") == "DELETED":
        return InstanceDeleted(uuid, version, cause, reason="deleted in Nova")
    power = item.get("OS-EXT-STS:power_state", UNKNOWN)
    if power is not UNKNOWN and power is not None:
        if isinstance(power, bool) or not isinstance(power, int):
            raise PayloadError("OS-EXT-STS:power_state is not an integer")
        power = POWER_STATE_NAMES.get(power)
    return InstanceObserved(
        uuid=uuid,
        version=version,
        cause=cause,
        name=opt_str(item, "name"),
        project_id=opt_str(item, "tenant_id"),
        user_id=opt_str(item, "user_id"),
        host=opt_str(item, "OS-EXT-SRV-ATTR:host"),
        node=opt_str(item, "OS-EXT-SRV-ATTR:hypervisor_hostname"),
        vm_state=vm_state,
        power_state=power,
        task_state=opt_str(item, "OS-EXT-STS:task_state"),
        flavor=_server_flavor(item.get("flavor"), flavors),
        locked=opt_bool(item, "locked"),
        metadata=metadata_field(item),
    )


def _server_flavor(value: Any, flavors: Mapping[str, Flavor]) -> Flavor | Any | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise PayloadError("flavor is not an object")
    if "original_name" in value or "vcpus" in value:  # embedded, microversion >= 2.47
        return make_flavor(
            opt_str(value, "original_name"),
            opt_int(value, "vcpus"),
            opt_int(value, "ram"),
            opt_int(value, "disk"),
            opt_int(value, "ephemeral"),
        )
    ident = value.get("id")
    found = flavors.get(str(ident)) if ident is not None else None
    return found if found is not None else UNKNOWN


def _flavor_index(items: list[Any]) -> dict[str, Flavor]:
    index: dict[str, Flavor] = {}
    for item in items:
        if not isinstance(item, Mapping) or item.get("id") is None:
            continue
        try:
            index[str(item["id"])] = make_flavor(
                opt_str(item, "name"),
                opt_int(item, "vcpus"),
                opt_int(item, "ram"),
                opt_int(item, "disk"),
                opt_int(item, "OS-FLV-EXT-DATA:ephemeral"),
            )
        except PayloadError as exc:
            LOG.warning("Snapshot flavor %r ignored: %s", item.get("id"), exc)
    return index


def _parse_microversion(text: str) -> tuple[int, int] | None:
    major, _, minor = text.partition(".")
    if major.isdigit() and minor.isdigit():
        return int(major), int(minor)
    return None


__all__ = [
    "SNAPSHOT_FORMAT",
    "Snapshot",
    "SnapshotError",
    "Translation",
    "read_snapshot",
    "server_event",
    "snapshot_events",
]
