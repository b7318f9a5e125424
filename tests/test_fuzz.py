"""Fuzz tests: malformed notifications and snapshots are rejected, never crash or corrupt the model.

A listener lives for months on a bus that anything can publish to, and a bootstrap reads files
people edit by hand. Hypothesis starts from real inputs (our recorded Nova trace, Nova's own
notification samples, our recorded snapshots) and breaks them the ways real inputs break: keys
dropped, values of the wrong JSON type, megabyte strings, deep nesting, unknown object names or
versions, payloads and metadata that are not objects, garbage timestamps, truncation. Whatever
arrives, an endpoint must not raise, must count the notification exactly once, and must leave
the model consistent and untouched outside the one element the notification is about. The
decoders in front of them (trace lines, snapshot files, listing pages) meet poison of their own:
nesting 100,000 deep, 50 MB values, bytes that are not UTF-8, JSON that is not an object.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import json
import logging
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cdm_sync.messaging.endpoints import NOVA_FORMATS, make_endpoints
from cdm_sync.model import ComputeModel, InstanceDeleted, InstanceObserved
from cdm_sync.nova.fields import PayloadError, brief
from cdm_sync.nova.payloads import (
    FLAVOR_PAYLOADS,
    IGNORED_EVENTS,
    INSTANCE_PAYLOADS,
    SERVICE_PAYLOADS,
    parse_legacy_instance,
    parse_versioned_instance,
    parse_versioned_service,
)
from cdm_sync.nova.snapshot import (
    Snapshot,
    SnapshotError,
    Translation,
    listing_of,
    read_snapshot,
    snapshot_events,
)
from cdm_sync.replay import ReplayResult, bootstrap, replay
from cdm_sync.sync.audit import full_audit
from cdm_sync.sync.engine import EngineState, SyncEngine
from cdm_sync.sync.service import REJECTED, SyncService
from tests import fakenova
from tests.conftest import FakeClock, Harness
from tests.samples import TRACE_DIR, load_sample, sample_names
from tests.test_collector import SERVERS, make_collector, populate, server_id


def parse_notification(event_type: Any, payload: Any, metadata: Any) -> Any:
    """The parser the endpoints route ``event_type`` to, called directly (``None`` for a type
    no endpoint of ours parses)."""
    if not isinstance(event_type, str):
        raise PayloadError("event_type is not a string")
    if event_type in IGNORED_EVENTS:
        return None
    if event_type.startswith("instance."):
        return parse_versioned_instance(event_type, payload, metadata)
    if event_type.startswith("compute.instance."):
        return parse_legacy_instance(event_type, payload, metadata)
    if event_type in ("service.create", "service.update", "service.delete"):
        return parse_versioned_service(event_type, payload, metadata)
    return None


FUZZ_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ONE_MEGABYTE = 1 << 20
# Deeper than the recursion limit: whatever repr()s or walks such a value recursively fails, and
# an endpoint must survive it (json.loads itself accepts up to about 990 levels, which already
# breaks a repr() made a few dozen frames further down the stack).
NESTING_DEPTH = 10_000
MAX_PATH_DEPTH = 6  # how deep into a document mutations reach
OSLO_PRIORITIES = ["audit", "debug", "info", "warn", "warning", "error", "critical", "sample"]


# -- real inputs to start from -------------------------------------------------------------------


def _jsonl(name: str) -> list[dict[str, Any]]:
    with open(TRACE_DIR / name) as fh:
        return [json.loads(raw) for raw in fh]


VALID_TRACE = _jsonl("trace-versioned.jsonl")


def _sample_line(name: str) -> dict[str, Any]:
    """A Nova sample as a trace line: samples carry no envelope metadata, so give them one."""
    sample = load_sample(name)
    return {
        "priority": sample.get("priority", "INFO").lower(),
        "publisher_id": sample.get("publisher_id", "nova-compute:compute1"),
        "event_type": sample["event_type"],
        "payload": sample["payload"],
        "metadata": {"message_id": "sample", "timestamp": "2026-11-22 00:30:00.000000"},
        "ctxt": {},
    }


BASE_LINES: list[dict[str, Any]] = _jsonl("trace-both.jsonl") + [
    _sample_line(name) for name in sample_names() if name.startswith(("instance-", "service-"))
]
BASE_SNAPSHOTS: list[dict[str, Any]] = [
    json.loads((TRACE_DIR / name).read_text()) for name in ("snapshot.json", "snapshot-final.json")
]
SNAPSHOT = read_snapshot(TRACE_DIR / "snapshot.json")

EVENT_TYPES = sorted({line["event_type"] for line in BASE_LINES})
OBJECT_NAMES = sorted(
    set(INSTANCE_PAYLOADS) | set(SERVICE_PAYLOADS) | {"FlavorPayload", "RequestSpecPayload"}
)


# -- strategies for bad values -------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities too: Python's json module reads them
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)
non_objects = json_values.filter(lambda v: not isinstance(v, dict))

# Version strings as Nova writes them, broken ones, and numbers written with characters that
# str.isdigit() accepts but int() may not (superscripts, other scripts' digits).
_NOT_DECIMAL_DIGITS = "".join(
    c for c in map(chr, range(0x3000)) if c.isdigit() and not c.isdecimal()
)
_digit_like = (
    st.sampled_from("0123456789")
    | st.characters(categories=("Nd",))
    | st.sampled_from(_NOT_DECIMAL_DIGITS)
)
_numbers = st.text(_digit_like, min_size=1, max_size=3)
version_strings = st.one_of(
    st.sampled_from(["1.0", "1.9", "2.1", "3.0", "0.1", "1", "2", "1.", ".1", "", "1.0.0", "v1.0"]),
    st.sampled_from(["2.1", "2.53", "2.104", "2", "2.", "x.y", "2.1000000000000000000000"]),
    st.builds("{}.{}".format, _numbers, _numbers),
    st.builds("{}.{}".format, _numbers, _numbers),  # twice: the branch most likely to find bugs
    st.text(alphabet=st.sampled_from("0123456789.-+ x"), max_size=8),
    json_values,
)

garbage_times = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "nan",
            "now",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-22T24:00:00Z",
            "2026-11-22T00:25:52.1234567Z",
            "2026-11-22 00:25:52,123",
            "20261122T002552",
            "2026-W47-7",
            "0001-01-01T00:00:00+23:59",
            "9999-12-31T23:59:59-23:59",
            "1970-01-01T00:00:00Z",
            "2026-11-22T00:25:52+99:00",
        ]
    ),
    st.datetimes().map(lambda d: d.isoformat()),
    st.text(max_size=30),
    json_values,
)


def _huge_string(char: str) -> str:
    return char * ONE_MEGABYTE


def _deeply_nested(kind: str) -> Any:
    value: Any = "bottom"
    for _ in range(NESTING_DEPTH):
        value = [value] if kind == "list" else {"k": value}
    return value


# -- mutating a document in place ------------------------------------------------------------------

Path = tuple[Any, ...]
TIME_KEYS = frozenset({"timestamp", "updated_at", "captured_at", "updated", "created"})


def _paths(node: Any, prefix: Path = (), depth: int = 0) -> Iterator[Path]:
    """Every key/index path in the document, down to ``MAX_PATH_DEPTH`` (not into deep values)."""
    if depth >= MAX_PATH_DEPTH:
        return
    if isinstance(node, dict):
        items: Any = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return
    for key, value in items:
        path = (*prefix, key)
        yield path
        yield from _paths(value, path, depth + 1)


def _parent(doc: Any, path: Path) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


def _show(value: Any) -> str:
    if isinstance(value, str) and len(value) >= ONE_MEGABYTE:
        return f"<{len(value)} x {value[0]!r}>"
    if isinstance(value, (list, dict)) and value and _nesting_depth(value) > 50:
        return f"<{type(value).__name__} nested {NESTING_DEPTH} deep>"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _nesting_depth(value: Any) -> int:
    depth = 0
    while isinstance(value, (list, dict)) and value and depth <= 50:
        value = value[0] if isinstance(value, list) else next(iter(value.values()))
        depth += 1
    return depth


def _dotted(path: Path) -> str:
    return ".".join(map(str, path)) or "<root>"


@st.composite
def _mutate(draw: st.DrawFn, doc: dict[str, Any], envelope: bool) -> str:
    """Apply one mutation to ``doc`` in place; returns what it did, for failure reports."""
    paths = list(_paths(doc))
    # The targeted mutations (object version and name, timestamps) twice as often as the rest.
    ops = ["drop", "retype", "huge", "deep", "truncate", *["version", "name", "time"] * 2]
    if envelope:
        ops += ["envelope", "envelope"]
    op = draw(st.sampled_from(ops), label="op")

    def pick(candidates: list[Path]) -> Path | None:
        return draw(st.sampled_from(candidates), label="path") if candidates else None

    def put(path: Path, value: Any) -> str:
        _parent(doc, path)[path[-1]] = value
        return f"{op} {_dotted(path)} = {_show(value)}"

    if op == "envelope":
        key = draw(
            st.sampled_from(
                ["payload", "metadata", "ctxt", "priority", "event_type", "publisher_id"]
            )
        )
        value: Any = {
            "payload": non_objects,
            "metadata": non_objects,
            "ctxt": json_values,
            "priority": st.sampled_from([*OSLO_PRIORITIES, "INFO", "Warning", "bogus"])
            | json_values,
            "event_type": st.sampled_from(EVENT_TYPES).flatmap(
                lambda t: st.sampled_from([t, t + ".x", t.upper(), t + "\n", " " + t])
            )
            | json_values,
            "publisher_id": json_values,
        }[key]
        return put((key,), draw(value))
    if op == "version":
        path = pick([p for p in paths if str(p[-1]).endswith("version")])
        return put(path, draw(version_strings)) if path else "version: no target"
    if op == "name":
        path = pick([p for p in paths if p[-1] in ("nova_object.name", "binary", "format")])
        names = st.sampled_from([*OBJECT_NAMES, "nova-compute", "nova-conductor"]) | json_values
        return put(path, draw(names)) if path else "name: no target"
    if op == "time":
        path = pick([p for p in paths if p[-1] in TIME_KEYS])
        return put(path, draw(garbage_times)) if path else "time: no target"
    if op == "truncate":
        path = pick([(), *paths])
        target = _parent(doc, path)[path[-1]] if path else doc
        if not isinstance(target, (str, list, dict)):
            return f"truncate {_dotted(path)}: not truncatable"
        keep = draw(st.integers(0, max(len(target) - 1, 0)), label="keep")
        if isinstance(target, dict):
            for key in list(target)[keep:]:
                del target[key]
            return f"truncate {_dotted(path)} to its first {keep} keys"
        if isinstance(target, list):
            del target[keep:]
            return f"truncate {_dotted(path)} to {keep} items"
        return put(path, target[:keep])
    path = pick(paths)
    if path is None:
        return f"{op}: empty document"
    if op == "drop":
        del _parent(doc, path)[path[-1]]
        return f"drop {_dotted(path)}"
    if op == "retype":
        return put(path, draw(json_values))
    if op == "huge":
        return put(path, _huge_string(draw(st.sampled_from(["x", "9", "é", "\x00", "{"]))))
    return put(path, _deeply_nested(draw(st.sampled_from(["list", "dict"]))))


@dataclass
class Fuzzed:
    """A mutated document and how it was made (Hypothesis prints this, not the document)."""

    origin: str
    mutations: list[str]
    doc: Any

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"Fuzzed({self.origin}: {'; '.join(self.mutations) or 'as recorded'})")


_message_ids = (f"fuzz-{n}" for n in itertools.count())


def _edited(base: str, *edits: tuple[Path, Any]) -> Fuzzed:
    """Hand-made mutations of a base document: ``base`` is an event type or ``"snapshot"``."""
    if base == "snapshot":
        doc = copy.deepcopy(BASE_SNAPSHOTS[0])
    else:
        doc = copy.deepcopy(next(line for line in BASE_LINES if line["event_type"] == base))
        doc["metadata"]["message_id"] = f"edited-{next(_message_ids)}"
    for path, value in edits:
        _parent(doc, path)[path[-1]] = value
    return Fuzzed(base, [f"set {_dotted(path)} = {_show(value)}" for path, value in edits], doc)


_NAME, _VERSION = ("payload", "nova_object.name"), ("payload", "nova_object.version")
_FLAVOR = ("payload", "nova_object.data", "flavor")

# Inputs found to break the code (by these fuzzers, or by reading the code they exercise), kept
# as explicit examples so every run tries them (there is no local example database to keep them).
FOUND_LINES = [
    _edited("instance.update", (_NAME, [])),
    _edited("instance.update", (_VERSION, [])),
    _edited("instance.update", (_VERSION, "².0")),
    _edited("instance.update", (_VERSION, "9" * 5000 + ".0")),
    _edited("instance.update", (("priority",), _deeply_nested("list"))),
    _edited("compute.instance.update", (("priority",), "audit")),
    _edited("instance.update", (("priority",), "sample")),
    # Object names and versions valid for another kind of payload.
    _edited("service.update", (_NAME, "InstanceActionPayload"), (_VERSION, "1.9")),
    _edited(
        "instance.power_off.end",
        ((*_FLAVOR, "nova_object.name"), "InstanceActionPayload"),
        ((*_FLAVOR, "nova_object.version"), "1.9"),
    ),
]
FOUND_SNAPSHOTS = [
    _edited("snapshot", (("compute_api_microversion",), "2.²")),
    _edited("snapshot", (("compute_api_microversion",), _deeply_nested("list"))),
    _edited("snapshot", (("flavors", 0, "id"), _deeply_nested("dict"))),
]


def with_examples(argument: str, found: list[Fuzzed], **fixed: Any) -> Any:
    """Decorate a Hypothesis test with one explicit example per found input."""

    def decorate(test: Any) -> Any:
        for fuzzed in reversed(found):
            value: Any = [fuzzed] if argument == "lines" else fuzzed
            test = example(**{argument: value}, **fixed)(test)
        return test

    return decorate


@st.composite
def fuzzed_lines(draw: st.DrawFn) -> Fuzzed:
    index = draw(st.integers(0, len(BASE_LINES) - 1), label="base line")
    line = copy.deepcopy(BASE_LINES[index])
    # A fresh message id, so a mutated copy of a replayed line is not dropped as a duplicate
    # before it reaches the apply path (mutations may still break or remove it).
    if isinstance(line.get("metadata"), dict):
        line["metadata"]["message_id"] = next(_message_ids)
    n = draw(st.integers(1, 4), label="mutations")
    mutations = [draw(_mutate(line, envelope=True)) for _ in range(n)]
    return Fuzzed(f"line {index} {BASE_LINES[index]['event_type']}", mutations, line)


@st.composite
def fuzzed_snapshots(draw: st.DrawFn) -> Fuzzed:
    index = draw(st.sampled_from(range(len(BASE_SNAPSHOTS))), label="base snapshot")
    doc = copy.deepcopy(BASE_SNAPSHOTS[index])
    n = draw(st.integers(1, 4), label="mutations")
    mutations = [draw(_mutate(doc, envelope=False)) for _ in range(n)]
    if draw(st.booleans(), label="replace whole items"):
        key = draw(st.sampled_from(["services", "hypervisors", "servers", "flavors"]))
        items = doc.get(key)
        if isinstance(items, list) and items:
            where = draw(st.integers(0, len(items) - 1))
            items[where] = draw(json_values)
            mutations.append(f"replace {key}.{where} with {_show(items[where])}")
    return Fuzzed(f"snapshot {index}", mutations, doc)


# -- the system under test ---------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _quiet_rejection_logs() -> Iterator[None]:
    """Every rejection is logged with its (megabyte) reason; keep that out of pytest's capture."""
    logger = logging.getLogger("cdm_sync")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def valid_harness() -> Harness:
    """The live wiring over a model bootstrapped from the recorded snapshot and brought up to
    date by its trace: the valid model the fuzzed lines then hit."""
    harness = Harness(FakeClock())
    harness.bootstrap(SNAPSHOT)
    harness.replay(VALID_TRACE)
    assert harness.model.check_integrity() == []
    assert harness.service.stats.summary().rejected == 0
    return harness


def _object_data(line: Mapping[str, Any]) -> Mapping[str, Any]:
    payload = line.get("payload")
    if not isinstance(payload, Mapping):
        return {}
    data = payload.get("nova_object.data", payload)
    return data if isinstance(data, Mapping) else {}


def _subject(line: Mapping[str, Any]) -> tuple[str, Any]:
    """What a notification is about, as the parsers read it: ('instance', uuid), ('service',
    host), or ('other', None)."""
    event_type = line.get("event_type")
    if not isinstance(event_type, str):
        return "other", None
    if event_type.startswith("instance."):
        return "instance", _object_data(line).get("uuid")
    if event_type.startswith("compute.instance."):
        payload = line.get("payload")
        return "instance", payload.get("instance_id") if isinstance(payload, Mapping) else None
    if event_type.startswith("service."):
        return "service", _object_data(line).get("host")
    return "other", None


def check_confined(line: Mapping[str, Any], records: list[Any]) -> None:
    """The change records of one notification touch only what that notification is about."""
    kind, subject = _subject(line)
    for record in records:
        changed = set(record.changed)
        if record.kind == "instance":
            if kind == "instance":
                assert record.uuid == subject, f"touched instance {record.uuid}"
            else:  # a service going away takes its nodes, and so moves their instances off
                assert kind == "service" and record.op == "update", record.to_dict()
                assert changed == {"compute_node_uuid"}, record.to_dict()
        elif kind == "instance":
            # Placing an instance may add a placeholder node or name one the service announced.
            assert record.op != "remove", record.to_dict()
            if record.op == "add":
                assert record.element.placeholder, record.to_dict()
            else:
                assert changed == {"hypervisor_hostname"}, record.to_dict()
                assert record.changed["hypervisor_hostname"][0] is None, record.to_dict()
        else:
            assert kind == "service" and record.element.hostname == subject, record.to_dict()


def deliver_checked(harness: Harness, fuzzed: Fuzzed) -> None:
    model, stats = harness.model, harness.service.stats
    before = model.to_dict()
    counted = sum(stats.by_type.values())
    rejected = sum(n for (_, outcome), n in stats.by_type.items() if outcome == REJECTED)
    records = harness.deliver(fuzzed.doc)  # must not raise, whatever the line holds
    assert model.check_integrity() == []
    assert sum(stats.by_type.values()) == counted + 1, "not counted exactly once"
    now_rejected = sum(n for (_, outcome), n in stats.by_type.items() if outcome == REJECTED)
    if now_rejected > rejected:
        reason = stats.last_rejections[-1]
        assert "internal error" not in reason, f"a parser raised other than PayloadError: {reason}"
    assert model.revision == before["revision"] + len(records)
    if not records:
        assert model.to_dict() == before, "the model changed without a change record"
    check_confined(fuzzed.doc, records)


# -- tests ---------------------------------------------------------------------------------------


@FUZZ_SETTINGS
@given(
    lines=st.lists(fuzzed_lines(), min_size=1, max_size=4),
    fresh_endpoints=st.sampled_from([None, *NOVA_FORMATS]),
)
@with_examples("lines", FOUND_LINES, fresh_endpoints=None)
@example(lines=[_edited("compute.instance.update")], fresh_endpoints="both")
@example(lines=[_edited("instance.update")], fresh_endpoints="unversioned")
def test_mutated_notifications_are_counted_and_confined(
    lines: list[Fuzzed], fresh_endpoints: str | None
) -> None:
    """Through ``deliver``: no exception, counted once, model consistent, nothing else touched.

    ``fresh_endpoints`` (a Nova notification format) replaces the endpoints that replayed the
    valid trace with new ones, which have seen no versioned traffic yet: in ``auto`` legacy
    lines are then parsed and applied instead of being dropped as superseded.
    """
    harness = valid_harness()
    if fresh_endpoints is not None:
        harness.use_endpoints(make_endpoints(harness.service, fresh_endpoints))
    for fuzzed in lines:
        deliver_checked(harness, fuzzed)


@FUZZ_SETTINGS
@given(fuzzed=fuzzed_lines(), method=st.sampled_from(["info", "warn", "error", "critical"]))
@with_examples("fuzzed", FOUND_LINES, method="info")
def test_endpoint_methods_never_raise(fuzzed: Fuzzed, method: str) -> None:
    """Called as oslo.messaging's dispatcher calls them, without ``deliver`` normalising the
    line first (metadata or ctxt may be any value)."""
    harness = valid_harness()
    line = fuzzed.doc
    if not isinstance(line, Mapping) or not isinstance(line.get("event_type"), str):
        return  # oslo hands a filtered endpoint only string event types
    ctxt, publisher_id, event_type = line.get("ctxt"), line.get("publisher_id"), line["event_type"]
    payload, metadata = line.get("payload"), line.get("metadata")
    for endpoint in harness.endpoints:
        rule = getattr(endpoint, "filter_rule", None)
        if rule is None or rule.match(ctxt, publisher_id, event_type, metadata, payload):
            getattr(endpoint, method)(ctxt, publisher_id, event_type, payload, metadata)
    assert harness.model.check_integrity() == []
    assert not any("internal error" in r for r in harness.service.stats.last_rejections)


def _accepts(known: Mapping[str, int], obj: Any) -> bool:
    """Whether a versioned object is one ``known`` lists, at the major version it lists."""
    name, version = obj.get("nova_object.name"), obj.get("nova_object.version")
    if name not in known or not isinstance(version, str):
        return False
    return version.partition(".")[0] == str(known[name])


@FUZZ_SETTINGS
@given(fuzzed=fuzzed_lines())
@with_examples("fuzzed", FOUND_LINES)
def test_parsers_raise_only_payload_error(fuzzed: Fuzzed) -> None:
    """The parser contract: an event, None, or PayloadError with a reason — nothing else; and
    what it accepts does not depend on what it parsed before: a versioned payload (or embedded
    flavor) is accepted only under a name and major version its event type's parser knows."""
    for line in VALID_TRACE:  # real traffic first, as in a listener that has been running
        parse_notification(line["event_type"], line["payload"], line["metadata"])
    line = fuzzed.doc
    if not isinstance(line, Mapping):
        return
    event_type, payload = line.get("event_type"), line.get("payload")
    try:
        event = parse_notification(event_type, payload, line.get("metadata"))
    except PayloadError as exc:
        assert str(exc)
        return
    if event is None:
        return
    if event_type.startswith("instance."):
        assert _accepts(INSTANCE_PAYLOADS, payload), "accepted an unknown instance payload"
        flavor = payload["nova_object.data"].get("flavor")
        if isinstance(event, InstanceObserved) and flavor is not None:
            assert _accepts(FLAVOR_PAYLOADS, flavor), "accepted an unknown flavor payload"
    elif event_type.startswith("service."):
        assert _accepts(SERVICE_PAYLOADS, payload), "accepted an unknown service payload"


@FUZZ_SETTINGS
@given(fuzzed=fuzzed_snapshots())
@with_examples("fuzzed", FOUND_SNAPSHOTS)
def test_mutated_snapshots_are_rejected_item_by_item(fuzzed: Fuzzed) -> None:
    """A broken snapshot is refused whole (SnapshotError) or item by item (rejections); every
    server item becomes exactly one event or one rejection; bootstrap and audit never raise."""
    try:
        snapshot = Snapshot.from_dict(fuzzed.doc)
    except SnapshotError:
        return
    report = Translation()
    events = list(snapshot_events(snapshot, report=report))
    servers_read = sum(isinstance(e, (InstanceObserved, InstanceDeleted)) for e in events)
    servers_rejected = sum(r.startswith("server ") for r in report.rejected)
    assert servers_read + servers_rejected == len(snapshot.servers)

    bootstrapped = Harness(FakeClock())
    bootstrapped.service.submit_all(events)
    assert bootstrapped.model.check_integrity() == []

    harness = valid_harness()
    before = {i.uuid for i in harness.model.instances()}
    audit = full_audit(harness.service, listing_of(snapshot))
    assert harness.model.check_integrity() == []
    if audit.rejected:
        # A partial reading deletes nothing it did not read as deleted.
        listed_deleted = {e.uuid for e in events if isinstance(e, InstanceDeleted)}
        assert before - {i.uuid for i in harness.model.instances()} <= listed_deleted


# -- poison: input no decoder may choke on, on every path that decodes untrusted JSON ----------
#
# Each path (trace lines through ``replay``, server items of a snapshot file, pages of a live
# listing, lines handed to the dispatcher) meets the same four ways input breaks decoders: nesting
# far deeper than the recursion limit, a value of 50 MB, bytes that are not UTF-8, and JSON that
# is not an object. Each must end as exactly one counted rejection and one log line saying why,
# no traceback anywhere in the log, and the rest of the input applied as if the bad part were
# absent. The 50 MB cases run once each, as explicit examples.

POISON_DEPTH = 100_000
FIFTY_MEGABYTES = 50 << 20
POISON_SETTINGS = settings(FUZZ_SETTINGS, max_examples=25)
DEEP, HUGE, NOT_UTF8, NOT_OBJECT = "deep", "huge", "not UTF-8", "not an object"
# What the rejection of each kind says, on the paths that read files.
TRACE_REASONS = {
    DEEP: "nested too deeply to decode",
    HUGE: "over the 1048576-byte limit",
    NOT_UTF8: "is not UTF-8",
    NOT_OBJECT: "is not a JSON object",
}
SNAPSHOT_REASONS = {
    DEEP: "nested too deeply to decode",
    HUGE: "over the 1048576-byte limit",
    NOT_UTF8: "not UTF-8 text",
    NOT_OBJECT: "not an object",
}
# Invalid UTF-8 as it is met: stray bytes, a truncated sequence, an overlong encoding, an
# encoded surrogate, a code point past U+10FFFF, Latin-1 text.
BAD_UTF8 = [
    b"\xff",
    b"\x80",
    b"\xc3(",
    b"\xe2\x82",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"caf\xe9",
]

# A placeholder value, unique in any document, replaced by the poison once the document is JSON.
_HOLE = "\x00poison\x00"
_HOLE_JSON = json.dumps(_HOLE).encode()


@dataclass
class Poison:
    """A JSON document with one part broken, built only when used (the 50 MB ones must not be
    built at import, nor for every example)."""

    kind: str
    how: str
    build: Callable[[], bytes]

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"Poison({self.kind}: {self.how})")


def _with_hole(doc: Any, path: Path) -> bytes:
    """``doc`` as JSON, the value at ``path`` (the whole document for ``()``) left as a hole."""
    if not path:
        return _HOLE_JSON
    doc = copy.deepcopy(doc)
    _parent(doc, path)[path[-1]] = _HOLE
    return json.dumps(doc).encode()


def _deep_json(kind: str) -> bytes:
    if kind == "list":
        return b"[" * POISON_DEPTH + b"]" * POISON_DEPTH
    return b'{"k":' * POISON_DEPTH + b"null" + b"}" * POISON_DEPTH


@st.composite
def poisoned(draw: st.DrawFn, doc: Any) -> Poison:
    """``doc`` (a real trace line or server item) broken one way (50 MB values: see
    :func:`huge`)."""
    kind = draw(st.sampled_from([DEEP, NOT_UTF8, NOT_OBJECT]), label="kind")
    paths = [(), *_paths(doc)]
    if kind == DEEP:
        path = draw(st.sampled_from(paths), label="path")
        shape = draw(st.sampled_from(["list", "dict"]), label="shape")
        text = _with_hole(doc, path)
        return Poison(
            kind,
            f"{_dotted(path)} nested {POISON_DEPTH} deep ({shape}s)",
            lambda: text.replace(_HOLE_JSON, _deep_json(shape)),
        )
    if kind == NOT_UTF8:
        path = draw(st.sampled_from(paths[1:]), label="path")
        bad = draw(st.sampled_from(BAD_UTF8), label="bytes")
        # Printable ASCII before the bad bytes (a raw control character is not JSON at all).
        printable = st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\')
        before = draw(st.text(printable, max_size=8), label="before")
        text = _with_hole(doc, path)
        value = b'"' + before.encode() + bad + b'"'
        return Poison(
            kind, f"{_dotted(path)} holds {bad!r}", lambda: text.replace(_HOLE_JSON, value)
        )
    value = draw(
        st.one_of(
            non_objects.map(json.dumps),
            st.just(json.dumps([doc])),  # the document wrapped in an array
            st.just(json.dumps(json.dumps(doc))),  # the document as a JSON string
        ),
        label="value",
    )
    return Poison(kind, brief(value), lambda: value.encode())


def huge(doc: Any, path: Path) -> Poison:
    """``doc`` with a 50 MB string at ``path``."""
    text = _with_hole(doc, path)
    return Poison(
        HUGE,
        f"{_dotted(path)} is a {FIFTY_MEGABYTES}-byte string",
        lambda: text.replace(_HOLE_JSON, b'"' + b"x" * FIFTY_MEGABYTES + b'"'),
    )


@contextlib.contextmanager
def logged() -> Iterator[list[logging.LogRecord]]:
    """Every log record of WARNING and above inside the block, whichever logger made it (the
    autouse fixture's quieting of cdm_sync is lifted for the block)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.WARNING)
    ours, root = logging.getLogger("cdm_sync"), logging.getLogger()
    level = ours.level
    ours.setLevel(logging.WARNING)
    root.addHandler(handler)
    try:
        yield records
    finally:
        root.removeHandler(handler)
        ours.setLevel(level)


def check_logged_once(records: list[logging.LogRecord], *phrases: str) -> logging.LogRecord:
    """No traceback in the log, and exactly one record saying all of ``phrases``."""
    assert [r.getMessage() for r in records if r.exc_info or r.stack_info] == []
    assert not any("Traceback" in r.getMessage() for r in records)
    saying = [r for r in records if all(p in r.getMessage() for p in phrases)]
    assert len(saying) == 1, [r.getMessage()[:200] for r in records]
    return saying[0]


# -- trace lines, through ``replay`` --------------------------------------------------------------

GOOD_TRACE = (TRACE_DIR / "trace-versioned.jsonl").read_bytes().splitlines()


def replay_lines(lines: list[bytes]) -> tuple[ReplayResult, list[logging.LogRecord]]:
    """``replay`` of the recorded snapshot and these trace lines; what it logged."""
    with tempfile.TemporaryDirectory() as tmp, logged() as records:
        trace = FilePath(tmp) / "trace.jsonl"
        trace.write_bytes(b"\n".join(lines) + b"\n")
        result = replay(TRACE_DIR / "snapshot.json", trace, model=ComputeModel(clock=FakeClock()))
    return result, records


@functools.cache
def clean_replay() -> tuple[dict[str, Any], int]:
    """The model dump and the count of warnings of the recorded trace replayed as it is."""
    result, records = replay_lines(GOOD_TRACE)
    assert result.service.stats.summary().rejected == 0
    return result.model.to_dict(), len(records)


@POISON_SETTINGS
@given(
    poison=st.sampled_from(VALID_TRACE).flatmap(poisoned),
    where=st.integers(0, len(GOOD_TRACE)),
)
@example(poison=huge(VALID_TRACE[5], ("payload", "nova_object.data", "display_name")), where=5)
@example(poison=huge(VALID_TRACE[0], ("publisher_id",)), where=len(GOOD_TRACE))
def test_a_poisoned_trace_line_is_one_logged_rejection(poison: Poison, where: int) -> None:
    """``cdm-sync replay``'s path: the bad line is counted under ``(unparsable)`` and logged
    with its number and the reason; every other line applies as if it were absent."""
    result, records = replay_lines([*GOOD_TRACE[:where], poison.build(), *GOOD_TRACE[where:]])
    stats = result.service.stats
    reason = TRACE_REASONS[poison.kind]
    assert stats.summary().rejected == 1
    assert stats.by_type[("(unparsable)", REJECTED)] == 1
    assert reason in stats.last_rejections[-1] and f"line {where + 1} " in stats.last_rejections[-1]
    check_logged_once(records, reason, f"line {where + 1} ")
    dump, warnings = clean_replay()
    assert len(records) == warnings + 1
    assert result.trace_lines == len(GOOD_TRACE) + 1
    assert result.model.to_dict() == dump


@POISON_SETTINGS
@given(line=non_objects | st.sampled_from(VALID_TRACE).map(lambda line: [line]))
def test_a_line_that_is_not_an_object_is_one_logged_rejection(line: Any) -> None:
    """What the receiving process hands the dispatcher is an object, but a caller of
    ``Dispatcher.deliver`` may pass anything: counted once, logged once, model untouched."""
    harness = valid_harness()
    before = harness.model.to_dict()
    with logged() as records:
        assert harness.deliver(line) == []
    assert harness.service.stats.summary().rejected == 1
    check_logged_once(records, "not a JSON object")
    assert harness.model.to_dict() == before


# -- server items of a snapshot file ------------------------------------------------------------

SNAPSHOT_DOC = BASE_SNAPSHOTS[0]
# A server the recorded snapshot does not list: were its poisoned copy read, the model would show.
EXTRA_SERVER = {**SNAPSHOT_DOC["servers"][0], "id": "0f000000-0000-4000-8000-00000000dead"}


def snapshot_with(item: bytes, where: int, servers_first: bool) -> bytes:
    """The recorded snapshot with ``item`` (JSON text) among its servers. With
    ``servers_first`` the servers come before the capture time, so they are kept as items and
    translated after the file is read; otherwise (sorted keys, as cdm-sync writes) each is
    translated as soon as it is decoded: both of read_snapshot's ways must reject alike."""
    servers = list(SNAPSHOT_DOC["servers"])
    servers.insert(where, _HOLE)
    rest = {k: v for k, v in SNAPSHOT_DOC.items() if k != "servers"}
    doc = (
        {"servers": servers, **rest}
        if servers_first
        else dict(sorted({**rest, "servers": servers}.items()))
    )
    return json.dumps(doc).encode().replace(_HOLE_JSON, item)


def bootstrap_file(data: bytes) -> tuple[SyncService, list[str], list[logging.LogRecord]]:
    """read_snapshot + bootstrap of a snapshot file holding ``data``; what was logged."""
    with tempfile.TemporaryDirectory() as tmp, logged() as records:
        path = FilePath(tmp) / "snapshot.json"
        path.write_bytes(data)
        service = SyncService(ComputeModel(clock=FakeClock()))
        rejected = bootstrap(service, read_snapshot(path))
    return service, rejected, records


@functools.cache
def clean_bootstrap() -> dict[str, Any]:
    service, rejected, records = bootstrap_file(json.dumps(SNAPSHOT_DOC).encode())
    assert rejected == [] and records == []
    return service.model.to_dict()


@POISON_SETTINGS
@given(
    poison=poisoned(EXTRA_SERVER),
    where=st.integers(0, len(SNAPSHOT_DOC["servers"])),
    servers_first=st.booleans(),
)
@example(poison=huge(EXTRA_SERVER, ("name",)), where=1, servers_first=False)
@example(poison=huge(EXTRA_SERVER, ("metadata",)), where=3, servers_first=True)
def test_a_poisoned_snapshot_item_is_one_logged_rejection(
    poison: Poison, where: int, servers_first: bool
) -> None:
    """Only the bad server item is rejected, with the reason, reported through the listing's
    ``rejected`` as any item that cannot be translated; the rest of the file loads."""
    service, rejected, records = bootstrap_file(snapshot_with(poison.build(), where, servers_first))
    reason = SNAPSHOT_REASONS[poison.kind]
    assert len(rejected) == 1 and reason in rejected[0], rejected
    assert rejected[0].startswith("server ")
    check_logged_once(records, "Snapshot item rejected", reason)
    assert len(records) == 1
    assert service.model.to_dict() == clean_bootstrap()


# -- pages of a live listing (the test Nova over HTTP) -------------------------------------------

# A server whose metadata marks where a listing's answer is broken. A page that cannot be
# decoded fails the whole listing (which pages it spoils is drawn through the page size). There
# is no 50 MB case here: the items of a live listing are not size-limited (python-novaclient
# decodes a whole page before the collector sees it; the limit applies to trace lines and to
# snapshot files' server items).
POISON_MARK = {"poison": "here"}
POISON_MARK_JSON = json.dumps(POISON_MARK).encode()
LISTING_REASONS = {
    DEEP: "the answer is nested too deeply to decode",
    NOT_UTF8: "the answer is not UTF-8",
    NOT_OBJECT: "no 'servers' list in the answer",
    "not JSON": "the answer is not JSON",
}


def spoil(kind: str, bad: bytes) -> Callable[[bytes], bytes]:
    """A rewrite of the answers holding the marked server: broken as ``kind`` says."""

    def rewrite(body: bytes) -> bytes:
        if POISON_MARK_JSON not in body:
            return body
        if kind == DEEP:
            return body.replace(POISON_MARK_JSON, _deep_json("list"))
        if kind == NOT_UTF8:
            return body.replace(POISON_MARK_JSON, b'{"poison": "' + bad + b'"}')
        if kind == NOT_OBJECT:
            return b"[" + body + b"]"
        return body[: len(body) // 2]  # not JSON: cut short

    return rewrite


@settings(POISON_SETTINGS, max_examples=8)
@given(
    kind=st.sampled_from(sorted(LISTING_REASONS)),
    page_size=st.sampled_from([1, 2, 3, 1000]),
    bad=st.sampled_from(BAD_UTF8),
)
@example(kind=DEEP, page_size=2, bad=b"\xff")
@example(kind=NOT_UTF8, page_size=1000, bad=b"\xc3(")
@example(kind=NOT_OBJECT, page_size=3, bad=b"\xff")
@example(kind="not JSON", page_size=1, bad=b"\xff")
def test_a_listing_page_that_cannot_be_decoded_fails_the_audit_once(
    kind: str, page_size: int, bad: bytes
) -> None:
    """A compute API page that cannot be decoded as sent fails the listing with the reason
    (ListingError: nothing is deleted on the strength of a partial read); the engine counts
    the failed audit once and reports it once, without a traceback, and the next audit, once
    Nova answers properly again, succeeds."""
    cloud = fakenova.FakeCloud()
    populate(cloud)
    cloud.add_server(server_id(7), host="compute1", flavor_id="1", metadata=POISON_MARK)
    with fakenova.running(cloud) as nova:
        service = SyncService(ComputeModel())
        engine = SyncEngine(service, make_collector(nova, page_size=page_size))
        assert engine.bootstrap().result == "ok"
        before = service.model.to_dict()
        cloud.rewrite_when(SERVERS, spoil(kind, bad))
        with logged() as records:
            report = engine.full_audit()
        reason = LISTING_REASONS[kind]
        assert report.result == "failed" and reason in (report.reason or "")
        assert "/servers/detail" in (report.reason or "")
        assert engine.status()["counters"]["full_audit_failures"] == 1
        check_logged_once(records, "Sync full", reason)
        assert not [r for r in records if r.name == "cdm_sync.nova.collector"]
        assert service.model.to_dict() == before
        cloud.rewrites.clear()
        assert engine.full_audit().result == "ok"
        assert engine.state is EngineState.READY
