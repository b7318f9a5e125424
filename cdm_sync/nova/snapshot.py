"""Nova snapshots (FORMATS.md §1): compute API listings → typed model events.

The same translation serves a snapshot file, a live bootstrap and an audit, so the compute API's
JSON is interpreted in exactly one place. Every microversion from 2.1 is accepted: hypervisor
ids are integers before 2.53 (then the id, as a string, is the node's uuid), capacity fields
vanish at 2.88 (then capacity stays unknown rather than invented), servers embed their flavor
from 2.47 (before, the flavor is looked up in the snapshot's ``flavors`` by id).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdm_sync.jsonfile import write_json_atomic
from cdm_sync.model.changes import format_timestamp
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
from cdm_sync.nova.payloads import COMPUTE_BINARY
from cdm_sync.runtime import gc_paused
from cdm_sync.sync.ports import Listing

LOG = logging.getLogger(__name__)

SNAPSHOT_FORMAT = "cdm-sync/nova-snapshot/1"
# The default of ``[notifications] max_message_bytes``, the largest server item read from a
# file; commands pass the configured value.
DEFAULT_MAX_ITEM_BYTES = 1 << 20


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
    # Set by read_snapshot when it could translate the servers while decoding the file
    # (then ``servers`` is empty): see TranslatedServers.
    server_events: TranslatedServers | None = None
    # Placement inventories by resource provider uuid (= compute node uuid), for microversions
    # whose hypervisors carry no capacity (2.88+): {"uuid": {"VCPU": {"total": 64, ...}, ...}}.
    inventories: dict[str, Any] = field(default_factory=dict)

    @property
    def server_count(self) -> int:
        """Server items listed (translated or not, readable or not)."""
        if self.server_events is not None:
            return len(self.server_events) + len(self.server_events.rejected)
        if isinstance(self.servers, UntranslatedServers):
            return len(self.servers) + len(self.servers.rejected)
        return len(self.servers)

    @classmethod
    def from_dict(cls, doc: Any, origin: str = "snapshot") -> Snapshot:
        if not isinstance(doc, Mapping):
            raise SnapshotError(f"{origin}: expected a JSON object")
        if doc.get("format") != SNAPSHOT_FORMAT:
            raise SnapshotError(
                f"{origin}: format is {brief(doc.get('format'))}, expected {SNAPSHOT_FORMAT!r}"
            )
        try:
            captured = parse_time(doc.get("captured_at"), "captured_at")
        except PayloadError as exc:
            raise SnapshotError(f"{origin}: {exc}") from None
        if captured is None:
            raise SnapshotError(f"{origin}: captured_at is missing")
        microversion = doc.get("compute_api_microversion")
        if not isinstance(microversion, str) or _parse_microversion(microversion) is None:
            raise SnapshotError(
                f"{origin}: compute_api_microversion {brief(microversion)} is not X.Y"
            )
        lists = {}
        for key in ("services", "hypervisors", "servers", "flavors"):
            value = doc.get(key, [] if key == "flavors" else None)
            if not isinstance(value, list):
                raise SnapshotError(f"{origin}: {key} must be a list")
            lists[key] = value
        inventories = doc.get("inventories", {})
        if not isinstance(inventories, dict):
            raise SnapshotError(f"{origin}: inventories must be an object")
        translated = lists["servers"]
        if isinstance(translated, TranslatedServers):
            lists["servers"] = []
            return cls(
                captured, microversion, **lists, server_events=translated, inventories=inventories
            )
        return cls(captured, microversion, **lists, inventories=inventories)

    def to_dict(self) -> dict[str, Any]:
        """The FORMATS.md §1 document (keys sorted, so a reader can translate servers while
        decoding: ``captured_at`` and ``flavors`` come before ``servers``)."""
        if self.server_events is not None:
            raise ValueError("a snapshot read with translated servers cannot be written back")
        doc: dict[str, Any] = {
            "captured_at": format_timestamp(self.captured_at),
            "compute_api_microversion": self.microversion,
            "flavors": self.flavors,
            "format": SNAPSHOT_FORMAT,
            "hypervisors": self.hypervisors,
            "servers": self.servers,
            "services": self.services,
        }
        if self.inventories:
            doc["inventories"] = self.inventories
        return dict(sorted(doc.items()))


def write_snapshot(snapshot: Snapshot, path: str | Path) -> None:
    """Write a snapshot file atomically (write, then rename): readers never see half of one."""
    write_json_atomic(path, snapshot.to_dict(), compact=True)


def read_snapshot(path: str | Path, max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES) -> Snapshot:
    """Read a snapshot file.

    The ``servers`` array (nearly all of a large file) is decoded one item at a time, and each
    item is translated into its event at once when the capture time (and, below microversion
    2.47, the flavor list) came earlier in the file, as in files written with sorted keys;
    otherwise items are kept reduced to the keys cdm-sync reads (:class:`ServerItem`). Either
    way the decoded dicts never accumulate, so what the model keeps is not scattered among
    freed objects, which would pin heap for the life of the process.

    Each server item is untrusted on its own: one over ``max_item_bytes`` bytes of JSON
    (``[notifications] max_message_bytes``), nested too deeply to decode, or holding bytes that
    are not UTF-8 is rejected with the reason, like an item that cannot be translated, and the
    rest is read. Anything else unusable (not JSON, not UTF-8 or nested too deeply outside the
    server items, a wrong format tag) raises :class:`SnapshotError` with one line saying why.
    """
    try:
        # Bytes, then one decode: text mode reads several times slower on a large file.
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise SnapshotError(f"{path}: {exc.strerror or exc}") from None
    not_utf8: UnicodeDecodeError | None = None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Undecodable bytes become lone surrogates (U+DC80..U+DCFF, which strict UTF-8 never
        # yields), so the server items holding them can be told apart and rejected one by one.
        not_utf8 = exc
        text = data.decode("utf-8", "surrogateescape")
    del data
    try:
        with gc_paused():
            doc = _decode_streaming(text, max_item_bytes, escaped=not_utf8 is not None)
    except SnapshotError as exc:
        raise SnapshotError(f"{path}: {exc}") from None
    except RecursionError:
        raise SnapshotError(f"{path}: nested too deeply to decode") from None
    except ValueError as exc:
        also = (
            ""
            if not_utf8 is None
            else f"; not UTF-8 either ({not_utf8.reason} at byte {not_utf8.start})"
        )
        raise SnapshotError(f"{path}: not valid JSON ({exc}){also}") from None
    finally:
        del text
    return Snapshot.from_dict(doc, str(path))


_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
# A byte that was not UTF-8, as ``surrogateescape`` decodes it.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def _decode_streaming(
    text: str, max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES, escaped: bool = False
) -> Any:
    """Decode a top-level JSON object, its ``servers`` as TranslatedServers or
    UntranslatedServers (see :func:`_decode_items`).

    Only the top level is walked by hand; every value is decoded by the standard decoder.
    ``escaped``: ``text`` was decoded with ``surrogateescape``; bytes that were not UTF-8 are
    then refused (SnapshotError) anywhere but inside a server item. Raises ValueError (not
    JSON), SnapshotError (what is wrong outside the server items) or RecursionError.
    """
    decode, skip = _DECODER.raw_decode, _WS.match
    pos = skip(text, 0).end()
    if text[pos : pos + 1] != "{":
        return _DECODER.decode(text)  # not an object: let from_dict report it
    doc: dict[str, Any] = {}
    pos = skip(text, pos + 1).end()
    if text[pos : pos + 1] == "}":
        _expect_end(text, pos + 1)
        return doc
    while True:
        start = pos
        key, pos = decode(text, pos)
        if not isinstance(key, str):
            raise ValueError(f"object key expected at char {start}")
        if escaped and _ESCAPED_BYTE.search(text, start, pos):
            raise SnapshotError(f"not UTF-8 text in the key {brief(key)}")
        pos = skip(text, pos).end()
        if text[pos : pos + 1] != ":":
            raise ValueError(f"':' expected at char {pos}")
        pos = skip(text, pos + 1).end()
        start = pos
        if key == "servers" and text[pos : pos + 1] == "[":
            doc[key], pos = _decode_items(
                text, pos + 1, _early_translator(doc), max_item_bytes, escaped
            )
        else:
            try:
                doc[key], pos = decode(text, pos)
            except RecursionError:
                raise SnapshotError(f"{brief(key)} is nested too deeply to decode") from None
            if escaped and _ESCAPED_BYTE.search(text, start, pos):
                raise SnapshotError(f"not UTF-8 text in {brief(key)}")
        pos = skip(text, pos).end()
        sep = text[pos : pos + 1]
        if sep == "}":
            _expect_end(text, pos + 1)
            return doc
        if sep != ",":
            raise ValueError(f"',' or '}}' expected at char {pos}")
        pos = skip(text, pos + 1).end()


class TranslatedServers(list):  # type: ignore[type-arg]
    """Server items already translated into events while the file was decoded.

    Holds events (with a provisional bootstrap cause) and, in ``rejected``, the reasons for the
    items that could not be decoded or translated. Far smaller than the decoded items, and
    nothing of the items is kept, which is what keeps the model's heap compact after a large
    bootstrap.
    """

    rejected: list[str]


class UntranslatedServers(list):  # type: ignore[type-arg]
    """Server items decoded from a file, to be translated later (each a :class:`ServerItem`,
    or the raw value if it is not an object), and, in ``rejected``, the reasons for the items
    that could not be decoded (:func:`snapshot_events` reports them)."""

    rejected: list[str]


_PROVISIONAL_CAUSE = Cause("bootstrap", None, None)


def _early_translator(doc: dict[str, Any]) -> Any:
    """A function translating one server item, if what it needs was already read: the
    capture time, and the flavor list when servers do not embed their flavor (< 2.47)."""
    try:
        captured = parse_time(doc.get("captured_at"), "captured_at")
    except PayloadError:
        return None
    microversion = doc.get("compute_api_microversion")
    parsed = _parse_microversion(microversion) if isinstance(microversion, str) else None
    if captured is None or parsed is None:
        return None
    raw_flavors = doc.get("flavors")
    if parsed < (2, 47) and not isinstance(raw_flavors, list):
        return None
    flavors = _flavor_index(raw_flavors if isinstance(raw_flavors, list) else [])

    def translate(item: Any, out: TranslatedServers) -> None:
        try:
            out.append(server_event(item, captured, _PROVISIONAL_CAUSE, flavors))
        except PayloadError as exc:
            ident = item.get("id") if isinstance(item, Mapping) else None
            out.rejected.append(f"server {brief(ident)}: {exc}")

    return translate


def _decode_items(
    text: str,
    pos: int,
    translate: Any = None,
    max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES,
    escaped: bool = False,
) -> tuple[TranslatedServers | UntranslatedServers, int]:
    """The items of the array whose ``[`` precedes ``pos``, translated by ``translate`` if
    given, and the position after its ``]``.

    An item over ``max_item_bytes`` bytes of JSON, nested too deeply to decode or (when
    ``escaped``, see :func:`_decode_streaming`) holding bytes that were not UTF-8 is rejected
    with the reason and the next item is read. Raises ValueError if the array is not JSON.
    """
    decode, skip = _DECODER.raw_decode, _WS.match
    items: TranslatedServers | UntranslatedServers
    items = TranslatedServers() if translate is not None else UntranslatedServers()
    items.rejected = []
    # Only an item longer than this many characters can be over the limit (a character is at
    # most 4 bytes of UTF-8, 1 in an ASCII text): shorter ones, nearly all, are not measured.
    unmeasured = max_item_bytes if text.isascii() else max_item_bytes // 4
    pos = skip(text, pos).end()
    if text[pos : pos + 1] == "]":
        return items, pos + 1
    while True:
        start = pos
        try:
            item, pos = decode(text, pos)
        except RecursionError:
            pos = _skip_nested(text, pos)
            items.rejected.append(_unreadable(items, None, "nested too deeply to decode"))
        else:
            reason = None
            if pos - start > unmeasured:
                # The bytes the item had in the file (surrogateescape gives back bad ones).
                size = len(text[start:pos].encode("utf-8", "surrogateescape"))
                if size > max_item_bytes:
                    reason = f"{size} bytes of JSON, over the {max_item_bytes}-byte limit"
            if reason is None and escaped and _ESCAPED_BYTE.search(text, start, pos):
                reason = "not UTF-8 text"
            if reason is not None:
                items.rejected.append(_unreadable(items, item, reason))
            elif translate is not None:
                translate(item, items)
            else:
                items.append(ServerItem.compact(item))
            del item
        pos = skip(text, pos).end()
        sep = text[pos : pos + 1]
        if sep == "]":
            return items, pos + 1
        if sep != ",":
            raise ValueError(f"',' or ']' expected at char {pos}")
        pos = skip(text, pos + 1).end()


def _unreadable(items: TranslatedServers | UntranslatedServers, item: Any, reason: str) -> str:
    """The rejection of the server item about to be added to ``items`` (its index in the
    array, and its id if it was decoded)."""
    index = len(items) + len(items.rejected)
    ident = item.get("id") if isinstance(item, Mapping) else None
    return f"server item {index}{'' if ident is None else f' ({brief(ident)})'}: {reason}"


# Where the end of a value nested too deeply may be: a run of opening or of closing brackets,
# or a string (whose brackets do not count); and the rest of a string after its opening quote.
_BRACKETS_OR_STRING = re.compile(r'[\[{]+|[\]}]+|"')
_STRING_REST = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_CLOSING = str.maketrans("[{", "]}")


def _skip_nested(text: str, pos: int) -> int:
    """The position after the array or object starting at ``pos``, found without recursion
    (the decoder's limit) by pairing its brackets outside strings; nothing else is checked.
    Raises ValueError if the value does not end."""
    if text[pos : pos + 1] not in ("[", "{"):
        raise ValueError(f"array or object expected at char {pos}")
    expected: list[str] = []  # the closing brackets due, innermost last
    find, string_rest = _BRACKETS_OR_STRING.search, _STRING_REST.match
    at = pos
    while True:
        found = find(text, at)
        if found is None:
            raise ValueError(f"the array or object at char {pos} does not end")
        run, at = found.group(), found.end()
        if run == '"':
            rest = string_rest(text, at)
            if rest is None:
                raise ValueError(f"unterminated string at char {at - 1}")
            at = rest.end()
        elif run[0] in "[{":
            expected.extend(run.translate(_CLOSING))
        else:
            # The run may go on past the value's end (the brackets of what encloses it).
            closes = min(len(run), len(expected))
            if "".join(reversed(expected[-closes:])) != run[:closes]:
                raise ValueError(f"mismatched brackets at char {found.start()}")
            del expected[-closes:]
            if not expected:
                return found.start() + closes


# The keys of a server item that cdm-sync reads; the rest (addresses, links, image, ...) are
# dropped as soon as an item is decoded.
SERVER_KEYS = (
    "id", "name", "tenant_id", "user_id", "status", "updated", "flavor", "locked", "metadata",
    "OS-EXT-SRV-ATTR:host", "OS-EXT-SRV-ATTR:hypervisor_hostname", "OS-EXT-STS:vm_state",
    "OS-EXT-STS:power_state", "OS-EXT-STS:task_state",
)  # fmt: skip


class ServerItem(dict):  # type: ignore[type-arg]
    """A server item reduced to :data:`SERVER_KEYS`, its embedded flavor already shared."""

    __slots__ = ()

    @classmethod
    def compact(cls, item: Any) -> Any:
        if not isinstance(item, dict):
            return item  # rejected later, with the reason, by server_event
        small = cls({k: item[k] for k in SERVER_KEYS if k in item})
        flavor = small.get("flavor")
        if isinstance(flavor, Mapping) and ("original_name" in flavor or "vcpus" in flavor):
            # A bad flavor stays raw: server_event rejects the item with the reason.
            with contextlib.suppress(PayloadError):
                small["flavor"] = _embedded_flavor(flavor)
        return small


def _expect_end(text: str, pos: int) -> None:
    if _WS.match(text, pos).end() != len(text):
        raise ValueError(f"extra data at char {pos}")


@dataclass
class Translation:
    """What translating a snapshot found: items rejected with the reason (logged as well)."""

    rejected: list[str] = field(default_factory=list)


def listing_of(snapshot: Snapshot, incomplete: Sequence[str] = ()) -> Listing:
    """``snapshot`` as the collector port's :class:`~cdm_sync.sync.ports.Listing`: its items
    are translated into events as they are read, and released (the snapshot is consumed)."""
    translation = Translation()

    def events(source: Source, intern: bool) -> Iterator[Event]:
        return snapshot_events(snapshot, source, translation, consume=True, intern=intern)

    return Listing(
        snapshot.captured_at,
        events,
        server_count=snapshot.server_count,
        incomplete=incomplete,
        rejected=translation.rejected,
    )


def snapshot_events(
    snapshot: Snapshot,
    source: Source = "bootstrap",
    report: Translation | None = None,
    *,
    consume: bool = False,
    intern: bool = True,
) -> Iterator[Event]:
    """Hypervisors, services, then servers, as events.

    Hypervisors come first so that services and servers find the real nodes (not placeholders).
    With ``consume``, each server item is released from ``snapshot.servers`` once translated
    (the list is empty afterwards): on a large snapshot the memory the items held is then
    reused for the model being built instead of being left as holes in the heap.
    ``intern`` as in :func:`server_event`.
    """
    report = report if report is not None else Translation()
    version = Version(None, snapshot.captured_at)
    cause = Cause(source, None, None)
    capacity = _capacity_from(snapshot.inventories)
    for kind, items, translate in (
        ("hypervisor", snapshot.hypervisors, _hypervisor),
        ("service", snapshot.services, _service),
    ):
        for item in items:
            try:
                event = translate(item, version, cause)
                if kind == "hypervisor" and event.uuid in capacity:
                    event = _with_capacity(event, capacity[event.uuid])
            except PayloadError as exc:
                _reject(report, kind, item, exc)
                continue
            if event is not None:
                yield event
    if snapshot.server_events is not None:
        yield from _translated(snapshot.server_events, cause, report, consume)
        return
    servers = snapshot.servers
    if isinstance(servers, UntranslatedServers):
        for reason in servers.rejected:
            report.rejected.append(reason)
            LOG.warning("Snapshot item rejected: %s", reason)
    flavors = _flavor_index(snapshot.flavors)
    for index in range(len(servers)):
        item = servers[index]
        if consume:
            servers[index] = None
        try:
            event = server_event(item, snapshot.captured_at, cause, flavors, intern=intern)
        except PayloadError as exc:
            _reject(report, "server", item, exc)
            continue
        del item
        yield event
    if consume:
        servers.clear()


def _translated(
    servers: TranslatedServers, cause: Cause, report: Translation, consume: bool
) -> Iterator[Event]:
    for reason in servers.rejected:
        report.rejected.append(reason)
        LOG.warning("Snapshot item rejected: %s", reason)
    for index in range(len(servers)):
        event = servers[index]
        if consume:
            servers[index] = None
        yield event if cause == _PROVISIONAL_CAUSE else event._replace(cause=cause)
    if consume:
        servers.clear()


# Placement resource classes → the node's capacity fields (DISK_GB is local disk, like the
# hypervisor's local_gb). Capacity is the inventory's ``total``, as the hypervisor API reported.
_RESOURCE_CLASSES = (("VCPU", "vcpus"), ("MEMORY_MB", "memory_mb"), ("DISK_GB", "disk_gb"))


def _capacity_from(inventories: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    capacity: dict[str, dict[str, int]] = {}
    for provider, classes in inventories.items():
        if not isinstance(classes, Mapping):
            LOG.warning("Snapshot inventories of %s ignored: not an object", brief(provider))
            continue
        found: dict[str, int] = {}
        for resource_class, field_name in _RESOURCE_CLASSES:
            record = classes.get(resource_class)
            total = record.get("total") if isinstance(record, Mapping) else None
            if type(total) is int and total >= 0:
                found[field_name] = total
        capacity[provider] = found
    return capacity


def _with_capacity(event: HypervisorObserved, capacity: Mapping[str, int]) -> HypervisorObserved:
    """Placement capacity for what the hypervisor item did not say (microversion 2.88+)."""
    return event._replace(
        **{name: value for name, value in capacity.items() if getattr(event, name) is UNKNOWN}
    )


def _reject(report: Translation, kind: str, item: Any, exc: Exception) -> None:
    ident = item.get("id") if isinstance(item, Mapping) else None
    reason = f"{kind} {brief(ident)}: {exc}"
    report.rejected.append(reason)
    LOG.warning("Snapshot item rejected: %s", reason)


def _service(item: Any, version: Version, cause: Cause) -> ServiceObserved | None:
    if not isinstance(item, Mapping):
        raise PayloadError("not an object")
    if item.get("binary") != COMPUTE_BINARY:
        return None
    status = opt_str(item, "status", shared=True)
    state = opt_str(item, "state", shared=True)
    return ServiceObserved(
        host=required_str(item, "host", shared=True),
        version=version,
        cause=cause,
        disabled=UNKNOWN if status in (UNKNOWN, None) else status == "disabled",
        disabled_reason=opt_str(item, "disabled_reason", shared=True),
        state=state,
    )


def _hypervisor(item: Any, version: Version, cause: Cause) -> HypervisorObserved:
    if not isinstance(item, Mapping):
        raise PayloadError("not an object")
    ident = item.get("id")
    if isinstance(ident, bool) or not isinstance(ident, (str, int)) or ident == "":
        raise PayloadError("id is missing or not a string/integer")
    if isinstance(ident, int) and not 0 <= ident < 10**18:
        raise PayloadError(f"id {brief(ident)} is out of range")
    service = item.get("service")
    host: Any = None
    disabled_reason: Any = UNKNOWN
    if service is not None:
        if not isinstance(service, Mapping):
            raise PayloadError("service is not an object")
        host = opt_str(service, "host", shared=True)
        disabled_reason = opt_str(service, "disabled_reason", shared=True)
    hostname = opt_str(item, "hypervisor_hostname", shared=True)
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
        status=opt_str(item, "status", shared=True),
        state=opt_str(item, "state", shared=True),
        disabled_reason=disabled_reason,
    )


def server_event(
    item: Any,
    captured_at: float,
    cause: Cause,
    flavors: Mapping[str, Flavor],
    *,
    intern: bool = True,
) -> InstanceObserved | InstanceDeleted:
    """One item of ``GET /servers/detail`` as an event, versioned by its ``updated`` stamp.

    The strings many instances repeat (project, user, host, node, task state) are interned,
    so a model of 200,000 instances holds one copy of each. Interning costs far more than
    the rest of the translation on a large listing (every lookup misses the CPU cache), so
    ``intern=False`` skips it for events that are compared and dropped (an audit's listing);
    :func:`cdm_sync.model.interned` gives such an event its shared strings before it enters a
    model.
    """
    if type(item) is not dict and not isinstance(item, Mapping):
        raise PayloadError("not an object")
    uuid = item.get("id")
    if type(uuid) is not str or not uuid:
        uuid = required_str(item, "id")  # raises, saying what is wrong
    # A listing's `updated` stamps are nearly all distinct: caching them would only cost.
    version = Version(parse_time(item.get("updated"), "updated", repeats=False), captured_at)
    vm_state = opt_str(item, "OS-EXT-STS:vm_state", shared=True)
    if vm_state == "deleted" or item.get("status") == "DELETED":
        return InstanceDeleted(uuid, version, cause, reason="deleted in Nova")
    power = item.get("OS-EXT-STS:power_state", UNKNOWN)
    if power is not UNKNOWN and power is not None:
        if type(power) is not int:
            raise PayloadError("OS-EXT-STS:power_state is not an integer")
        power = POWER_STATE_NAMES.get(power)
    name, project_id, user_id, host, node, task_state = _SERVER_STRINGS.read(item, intern=intern)
    # Positional: this runs for every listed server.
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
        power,
        task_state,
        _server_flavor(item.get("flavor"), flavors),
        opt_bool(item, "locked"),
        metadata_field(item),
    )


# A server item's optional string fields, in the order server_event unpacks them, each with
# whether its values repeat across servers (and so are interned).
_SERVER_STRINGS = StringFields(
    ("name", False),
    ("tenant_id", True),
    ("user_id", True),
    ("OS-EXT-SRV-ATTR:host", True),
    ("OS-EXT-SRV-ATTR:hypervisor_hostname", True),
    ("OS-EXT-STS:task_state", True),
)


def _server_flavor(value: Any, flavors: Mapping[str, Flavor]) -> Flavor | Any | None:
    if type(value) is dict and "original_name" in value:  # the common case, checked first
        return flavor_from(value, _EMBEDDED_FLAVOR_KEYS)
    if value is None or isinstance(value, Flavor):
        return value
    if not isinstance(value, Mapping):
        raise PayloadError("flavor is not an object")
    if "original_name" in value or "vcpus" in value:  # embedded, microversion >= 2.47
        return _embedded_flavor(value)
    ident = value.get("id")
    found = flavors.get(_flavor_id(ident))
    return found if found is not None else UNKNOWN


def _embedded_flavor(value: Mapping[str, Any]) -> Flavor:
    return flavor_from(value, _EMBEDDED_FLAVOR_KEYS)


_EMBEDDED_FLAVOR_KEYS = ("original_name", "vcpus", "ram", "disk", "ephemeral")


def _flavor_index(items: list[Any]) -> dict[str, Flavor]:
    index: dict[str, Flavor] = {}
    for item in items:
        ident = _flavor_id(item.get("id")) if isinstance(item, Mapping) else None
        if ident is None:
            continue
        try:
            index[ident] = make_flavor(
                opt_str(item, "name"),
                opt_int(item, "vcpus"),
                opt_int(item, "ram"),
                opt_int(item, "disk"),
                opt_int(item, "OS-FLV-EXT-DATA:ephemeral"),
            )
        except PayloadError as exc:
            LOG.warning("Snapshot flavor %s ignored: %s", brief(ident), exc)
    return index


def _flavor_id(value: Any) -> str | None:
    """Flavor ids are strings (integers in very old clouds); anything else matches nothing."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value) if -(10**18) < value < 10**18 else None
    return None


_MICROVERSION = re.compile(r"(\d{1,4})\.(\d{1,4})", re.ASCII)


def _parse_microversion(text: str) -> tuple[int, int] | None:
    matched = _MICROVERSION.fullmatch(text)
    return (int(matched.group(1)), int(matched.group(2))) if matched else None


__all__ = [
    "SNAPSHOT_FORMAT",
    "Snapshot",
    "SnapshotError",
    "Translation",
    "listing_of",
    "read_snapshot",
    "server_event",
    "snapshot_events",
]
