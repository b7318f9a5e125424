"""oslo.messaging notification endpoints: Nova's notifications into the sync service.

The same endpoint objects serve the live listener and ``cdm-sync replay`` (through
:func:`deliver`, which dispatches a trace line the way oslo.messaging's dispatcher does), so a
replayed trace exercises exactly the code a live cloud does. An endpoint never raises: a
malformed notification is rejected, counted and logged; an event type it does not handle is
counted as ignored.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import oslo_messaging

from cdm_sync.nova.fields import PayloadError, parse_time
from cdm_sync.nova.payloads import (
    IGNORED_EVENTS,
    parse_legacy_instance,
    parse_versioned_instance,
    parse_versioned_service,
)
from cdm_sync.sync.service import REJECTED, SyncService

LOG = logging.getLogger(__name__)

UNHANDLED = "unhandled"
IRRELEVANT = "irrelevant"
SUPERSEDED = "superseded"
DEFAULT_SUPERSEDE_WINDOW = 300.0

# The event types some endpoint of ours handles; everything else is counted as unhandled.
_HANDLED = re.compile(r"^(instance\.|compute\.instance\.|service\.(create|update|delete)$)")


class FormatArbiter:
    """Decides whether a legacy notification adds anything.

    With ``notification_format=both`` Nova sends every transition twice, versioned and legacy,
    under different message ids. The versioned copy says strictly more (power state, lock,
    ``updated_at``), so while versioned traffic is flowing (any ``nova_object`` payload within
    ``window`` seconds of envelope time) the legacy copy is dropped as superseded and each
    transition yields one change. If Nova stops sending versioned notifications, legacy ones
    apply again once the window has passed.
    """

    def __init__(self, window: float | None = DEFAULT_SUPERSEDE_WINDOW) -> None:
        self.window = window  # None: never supersede (the legacy stream is the only one)
        self.last_versioned: float | None = None

    def saw(self, payload: Any, metadata: Any) -> None:
        if isinstance(payload, Mapping) and "nova_object.name" in payload:
            stamp = _timestamp(metadata)
            if stamp is not None and (self.last_versioned is None or stamp > self.last_versioned):
                self.last_versioned = stamp

    def legacy_superseded(self, metadata: Any) -> bool:
        if self.window is None or self.last_versioned is None:
            return False
        stamp = _timestamp(metadata)
        return stamp is None or abs(stamp - self.last_versioned) <= self.window


class _Endpoint:
    """Shared behaviour; subclasses set ``filter_rule`` and ``parse``."""

    filter_rule: oslo_messaging.NotificationFilter

    def __init__(self, service: SyncService) -> None:
        self.service = service

    def parse(self, event_type: str, payload: Any, metadata: Any) -> Any:
        raise NotImplementedError

    def info(
        self, ctxt: Any, publisher_id: str, event_type: str, payload: Any, metadata: Any
    ) -> None:
        stats = self.service.stats
        if event_type in IGNORED_EVENTS:
            stats.count(event_type, IRRELEVANT)
            return None
        try:
            event = self.parse(event_type, payload, metadata)
        except PayloadError as exc:
            stats.rejection(event_type, str(exc))
            LOG.warning(
                "Rejected %s from %s (message %s): %s",
                event_type,
                publisher_id,
                _message_id(metadata),
                exc,
            )
            return None
        except Exception:  # a parser bug must not take the listener down
            stats.rejection(event_type, "internal error while parsing")
            LOG.exception("Failed to parse %s (message %s)", event_type, _message_id(metadata))
            return None
        if event is None:
            stats.count(event_type, IRRELEVANT)
            return None
        self.service.submit(event)
        return None

    # Error notifications (instance.create.error, ...) carry the instance's state as well.
    warn = info
    error = info
    critical = info


class VersionedInstanceEndpoint(_Endpoint):
    filter_rule = oslo_messaging.NotificationFilter(event_type=r"^instance\.")

    def parse(self, event_type: str, payload: Any, metadata: Any) -> Any:
        return parse_versioned_instance(event_type, payload, metadata)


class VersionedServiceEndpoint(_Endpoint):
    filter_rule = oslo_messaging.NotificationFilter(event_type=r"^service\.(create|update|delete)$")

    def parse(self, event_type: str, payload: Any, metadata: Any) -> Any:
        return parse_versioned_service(event_type, payload, metadata)


class LegacyInstanceEndpoint(_Endpoint):
    filter_rule = oslo_messaging.NotificationFilter(event_type=r"^compute\.instance\.")

    def __init__(self, service: SyncService, arbiter: FormatArbiter) -> None:
        super().__init__(service)
        self.arbiter = arbiter

    def info(
        self, ctxt: Any, publisher_id: str, event_type: str, payload: Any, metadata: Any
    ) -> None:
        if self.arbiter.legacy_superseded(metadata):
            self.service.stats.count(event_type, SUPERSEDED)
            return None
        return super().info(ctxt, publisher_id, event_type, payload, metadata)

    warn = info
    error = info
    critical = info

    def parse(self, event_type: str, payload: Any, metadata: Any) -> Any:
        return parse_legacy_instance(event_type, payload, metadata)


class TrafficEndpoint:
    """Sees every notification: notes versioned traffic for the arbiter, counts the unhandled."""

    filter_rule = oslo_messaging.NotificationFilter(event_type=r".*")

    def __init__(self, service: SyncService, arbiter: FormatArbiter) -> None:
        self.service = service
        self.arbiter = arbiter

    def info(
        self, ctxt: Any, publisher_id: str, event_type: str, payload: Any, metadata: Any
    ) -> None:
        self.arbiter.saw(payload, metadata)
        if not isinstance(event_type, str) or not _HANDLED.match(event_type):
            self.service.stats.count(str(event_type), UNHANDLED)
        return None

    audit = debug = warn = error = critical = sample = info


NOVA_FORMATS = ("auto", "versioned", "unversioned", "both")


def make_endpoints(
    service: SyncService,
    nova_format: str = "auto",
    supersede_window: float = DEFAULT_SUPERSEDE_WINDOW,
) -> list[Any]:
    """The endpoints a listener (or a replay) uses, for Nova's ``notification_format``.

    ``versioned`` and ``both``: versioned endpoints only (with ``both`` the legacy stream repeats
    the versioned one with less in it). ``unversioned``: the legacy endpoint only. ``auto``:
    every endpoint, legacy notifications dropped as superseded while versioned ones flow (exact
    once the first versioned notification has been seen; set the real format to be exact from
    the first message). The traffic endpoint comes first so a versioned notification is noted
    before the legacy copy of the same transition is judged.
    """
    if nova_format not in NOVA_FORMATS:
        raise ValueError(f"nova_format must be one of {NOVA_FORMATS}, got {nova_format!r}")
    arbiter = FormatArbiter(supersede_window if nova_format == "auto" else None)
    endpoints: list[Any] = [TrafficEndpoint(service, arbiter)]
    if nova_format != "unversioned":
        endpoints += [VersionedInstanceEndpoint(service), VersionedServiceEndpoint(service)]
    if nova_format in ("auto", "unversioned"):
        endpoints.append(LegacyInstanceEndpoint(service, arbiter))
    return endpoints


_PRIORITIES = ("audit", "debug", "info", "warn", "error", "critical", "sample")


def deliver(endpoints: Sequence[Any], service: SyncService, line: Any) -> None:
    """Dispatch one trace line (FORMATS.md §2) as oslo.messaging's dispatcher would."""
    if not isinstance(line, Mapping):
        service.stats.rejection("(unparsable)", "trace line is not an object")
        return
    event_type = line.get("event_type")
    priority = str(line.get("priority", "info")).lower()
    if priority == "warning":
        priority = "warn"
    if not isinstance(event_type, str) or priority not in _PRIORITIES:
        service.stats.rejection(str(event_type)[:80], "trace line lacks event_type or priority")
        return
    ctxt = line.get("ctxt") or {}
    publisher_id = line.get("publisher_id")
    payload = line.get("payload")
    metadata = line.get("metadata") or {}
    for endpoint in endpoints:
        method = getattr(endpoint, priority, None)
        if method is None:
            continue
        if endpoint.filter_rule.match(ctxt, publisher_id, event_type, metadata, payload):
            method(ctxt, publisher_id, event_type, payload, metadata)


def _timestamp(metadata: Any) -> float | None:
    try:
        return (
            parse_time(metadata.get("timestamp"), "timestamp")
            if isinstance(metadata, Mapping)
            else None
        )
    except PayloadError:
        return None


def _message_id(metadata: Any) -> Any:
    return metadata.get("message_id") if isinstance(metadata, Mapping) else None


__all__ = [
    "NOVA_FORMATS",
    "REJECTED",
    "FormatArbiter",
    "LegacyInstanceEndpoint",
    "TrafficEndpoint",
    "VersionedInstanceEndpoint",
    "VersionedServiceEndpoint",
    "deliver",
    "make_endpoints",
]
