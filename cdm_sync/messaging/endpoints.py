"""oslo.messaging notification endpoints: Nova's notifications into the sync service.

The same endpoint objects serve the live listener and ``cdm-sync replay`` (through
:class:`Dispatcher`, which dispatches a trace line the way oslo.messaging's dispatcher does), so a
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
from oslo_messaging.notify.dispatcher import PRIORITIES

from cdm_sync.nova.fields import PayloadError, brief, parse_time
from cdm_sync.nova.payloads import (
    IGNORED_EVENTS,
    parse_legacy_instance,
    parse_versioned_instance,
    parse_versioned_service,
)
from cdm_sync.sync.service import NOT_A_STRING, REJECTED, UNPARSABLE, SyncService

LOG = logging.getLogger(__name__)

UNHANDLED = "unhandled"
IRRELEVANT = "irrelevant"
SUPERSEDED = "superseded"
DEFAULT_SUPERSEDE_WINDOW = 300.0
# How many (priority, event type) pairs the dispatcher and the traffic endpoint remember.
_ROUTES_REMEMBERED = 4096


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
        # The envelope timestamp of the last versioned notification, kept raw: it is read only
        # when a legacy notification arrives, so the versioned hot path does not parse it.
        self._last_versioned_raw: Any = None
        self._seen_versioned = False

    def saw(self, payload: Any, metadata: Any) -> None:
        if (
            self.window is not None
            and (type(payload) is dict or isinstance(payload, Mapping))
            and "nova_object.name" in payload
        ):
            self._seen_versioned = True
            if type(metadata) is dict or isinstance(metadata, Mapping):
                self._last_versioned_raw = metadata.get("timestamp")

    def legacy_superseded(self, metadata: Any) -> bool:
        if self.window is None or not self._seen_versioned:
            return False
        last = _timestamp({"timestamp": self._last_versioned_raw})
        stamp = _timestamp(metadata)
        if last is None or stamp is None:
            return True  # versioned traffic exists and times cannot tell otherwise
        return abs(stamp - last) <= self.window


class EventTypeFilter(oslo_messaging.NotificationFilter):
    """oslo.messaging's filter on event type alone, matched without the checks of the other
    four fields it would otherwise run for every notification (a measurable share of the
    notification hot path)."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__(event_type=pattern.pattern)
        self._pattern = pattern

    def match(
        self, context: Any, publisher_id: Any, event_type: Any, metadata: Any, payload: Any
    ) -> bool:
        return isinstance(event_type, str) and self._pattern.match(event_type) is not None


class _Endpoint:
    """Shared behaviour; subclasses set ``EVENT_TYPES``, ``filter_rule`` and ``parse``."""

    EVENT_TYPES: re.Pattern[str]
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
    EVENT_TYPES = re.compile(r"^instance\.")
    filter_rule = EventTypeFilter(EVENT_TYPES)

    def parse(self, event_type: str, payload: Any, metadata: Any) -> Any:
        return parse_versioned_instance(event_type, payload, metadata)


class VersionedServiceEndpoint(_Endpoint):
    EVENT_TYPES = re.compile(r"^service\.(create|update|delete)$")
    filter_rule = EventTypeFilter(EVENT_TYPES)

    def parse(self, event_type: str, payload: Any, metadata: Any) -> Any:
        return parse_versioned_service(event_type, payload, metadata)


class LegacyInstanceEndpoint(_Endpoint):
    EVENT_TYPES = re.compile(r"^compute\.instance\.")
    filter_rule = EventTypeFilter(EVENT_TYPES)

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
    """Sees every notification: notes versioned traffic for the arbiter, and counts as
    ``unhandled`` each one that no other installed endpoint takes (event type or priority), so
    that every notification is counted exactly once."""

    # No filter_rule: oslo.messaging then hands this endpoint every notification.

    def __init__(
        self, service: SyncService, arbiter: FormatArbiter, handlers: Sequence[_Endpoint] = ()
    ) -> None:
        self.service = service
        self.arbiter = arbiter
        self._handled = {
            priority: tuple(h.EVENT_TYPES for h in handlers if hasattr(h, priority))
            for priority in PRIORITIES
        }
        self._handled_seen: dict[tuple[str, str], bool] = {}  # bounded as the routes are

    def _see(self, priority: str, event_type: Any, payload: Any, metadata: Any) -> None:
        self.arbiter.saw(payload, metadata)
        if type(event_type) is not str:
            self.service.stats.count(NOT_A_STRING, UNHANDLED)
            return
        handled = self._handled_seen.get((priority, event_type))
        if handled is None:
            handled = any(p.match(event_type) for p in self._handled[priority])
            if len(self._handled_seen) < _ROUTES_REMEMBERED:
                self._handled_seen[(priority, event_type)] = handled
        if not handled:
            self.service.stats.count(event_type, UNHANDLED)

    def audit(self, ctxt: Any, publisher_id: Any, event_type: Any, payload: Any, md: Any) -> None:
        self._see("audit", event_type, payload, md)

    def debug(self, ctxt: Any, publisher_id: Any, event_type: Any, payload: Any, md: Any) -> None:
        self._see("debug", event_type, payload, md)

    def info(self, ctxt: Any, publisher_id: Any, event_type: Any, payload: Any, md: Any) -> None:
        self._see("info", event_type, payload, md)

    def warn(self, ctxt: Any, publisher_id: Any, event_type: Any, payload: Any, md: Any) -> None:
        self._see("warn", event_type, payload, md)

    def error(self, ctxt: Any, publisher_id: Any, event_type: Any, payload: Any, md: Any) -> None:
        self._see("error", event_type, payload, md)

    def critical(
        self, ctxt: Any, publisher_id: Any, event_type: Any, payload: Any, md: Any
    ) -> None:
        self._see("critical", event_type, payload, md)

    def sample(self, ctxt: Any, publisher_id: Any, event_type: Any, payload: Any, md: Any) -> None:
        self._see("sample", event_type, payload, md)


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
    handlers: list[_Endpoint] = []
    if nova_format != "unversioned":
        handlers += [VersionedInstanceEndpoint(service), VersionedServiceEndpoint(service)]
    if nova_format in ("auto", "unversioned"):
        handlers.append(LegacyInstanceEndpoint(service, arbiter))
    return [TrafficEndpoint(service, arbiter, handlers), *handlers]


class Dispatcher:
    """Dispatches trace lines (FORMATS.md §2) to endpoints as oslo.messaging's notification
    dispatcher does: per priority, each endpoint with that method whose ``filter_rule`` (if
    any) matches, resolved once up front."""

    def __init__(self, endpoints: Sequence[Any], service: SyncService) -> None:
        self.service = service
        self._callbacks = {
            priority: [
                (getattr(e, "filter_rule", None), getattr(e, priority))
                for e in endpoints
                if hasattr(e, priority)
            ]
            for priority in PRIORITIES
        }
        # When every filter looks at the event type alone (ours do), which endpoints a
        # (priority, event type) reaches is resolved once and remembered: the filters' regular
        # expressions would otherwise run for every notification. Bounded: event types are
        # untrusted input.
        by_type_only = all(
            rule is None or isinstance(rule, EventTypeFilter)
            for callbacks in self._callbacks.values()
            for rule, _ in callbacks
        )
        self._routes: dict[tuple[str, str], list[Any]] | None = {} if by_type_only else None

    def deliver(self, line: Any) -> None:
        service = self.service
        if type(line) is not dict and not isinstance(line, Mapping):
            reason = f"trace line is {brief(line)}, not a JSON object"
            service.stats.rejection(UNPARSABLE, reason)
            LOG.warning("Rejected a notification: %s", reason)
            return
        event_type = line.get("event_type")
        raw_priority = line.get("priority", "info")
        priority = raw_priority.lower() if isinstance(raw_priority, str) else None
        if priority == "warning":
            priority = "warn"
        callbacks = self._callbacks.get(priority) if priority is not None else None
        if type(event_type) is not str or callbacks is None:
            label = event_type if isinstance(event_type, str) else NOT_A_STRING
            reason = (
                f"trace line has event_type {brief(event_type)}, priority {brief(raw_priority)}"
            )
            service.stats.rejection(label, reason)
            LOG.warning("Rejected a notification: %s", reason)
            return
        ctxt = line.get("ctxt") or {}
        publisher_id = line.get("publisher_id")
        payload = line.get("payload")
        metadata = line.get("metadata") or {}
        routes = self._routes
        if routes is None:
            for rule, method in callbacks:
                if rule is None or rule.match(ctxt, publisher_id, event_type, metadata, payload):
                    method(ctxt, publisher_id, event_type, payload, metadata)
            return
        route = routes.get((priority, event_type))
        if route is None:
            route = [
                method
                for rule, method in callbacks
                if rule is None or rule.match(ctxt, publisher_id, event_type, metadata, payload)
            ]
            if len(routes) < _ROUTES_REMEMBERED:
                routes[(priority, event_type)] = route
        for method in route:
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
    "Dispatcher",
    "FormatArbiter",
    "LegacyInstanceEndpoint",
    "TrafficEndpoint",
    "VersionedInstanceEndpoint",
    "VersionedServiceEndpoint",
    "make_endpoints",
]
