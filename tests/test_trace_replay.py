"""A real Nova trace replayed through the live endpoints must end at Nova's own API truth.

``basic_lifecycle`` was recorded from Nova 34: a snapshot before, the notifications in three
formats (versioned, legacy, both interleaved), a snapshot after and the model that equals the
API after. Replaying snapshot + trace must reach that model in every field the expected dump
lists, except where the sources cannot know a value, and there the dump must say ``null``
rather than invent one:

- compute-node capacity: the snapshots are at microversion 2.104, where hypervisors carry none;
- compute3, added mid-run by ``service.create``, has a placeholder uuid until an audit lists it;
- the legacy stream has no lock state (for a server created during the trace) and no service
  events (so nothing about compute3's service status).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from cdm_sync.model import CHANGE_FORMAT, ChangeRecord
from cdm_sync.nova.snapshot import listing_of, read_snapshot
from cdm_sync.nova.trace import TraceError, read_trace
from cdm_sync.replay import replay
from cdm_sync.sync.audit import full_audit
from cdm_sync.sync.ports import Listing
from tests.conftest import Harness
from tests.samples import TRACE_DIR

TRACES = ["trace-versioned.jsonl", "trace-legacy.jsonl", "trace-both.jsonl"]
CAPACITY = ("vcpus", "memory_mb", "disk_gb")
CHANGE_KEYS = {"format", "revision", "at", "kind", "op", "uuid", "changed", "object", "cause"}
CAUSE_KEYS = {"source", "event_type", "message_id"}

EXPECTED: dict[str, Any] = json.loads((TRACE_DIR / "expected-model.json").read_text())
BEFORE = read_snapshot(TRACE_DIR / "snapshot.json")


def after() -> Listing:
    """The final snapshot of the run, as a fresh listing (an audit reads a listing once)."""
    return listing_of(read_snapshot(TRACE_DIR / "snapshot-final.json"))


# Hosts whose service appears only during the trace, and servers created during it.
ADDED_HOSTS = {n["hostname"] for n in EXPECTED["compute_nodes"]} - {
    s["host"] for s in BEFORE.services
}
BEFORE_SERVERS = json.loads((TRACE_DIR / "snapshot.json").read_text())["servers"]
CREATED_SERVERS = {i["uuid"] for i in EXPECTED["instances"]} - {s["id"] for s in BEFORE_SERVERS}


@pytest.fixture
def replayed(
    make_harness: Callable[..., Harness], load_trace: Callable[[str], list[dict[str, Any]]]
) -> Callable[[str], Harness]:
    def replay(trace: str) -> Harness:
        harness = make_harness()
        harness.bootstrap(BEFORE)
        harness.replay(load_trace(trace))
        return harness

    return replay


def nodes_by_hostname(dump: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {n["hostname"]: n for n in dump["compute_nodes"]}
    assert len(found) == len(dump["compute_nodes"]), "two nodes share a hostname"
    return found


def check_nodes(dump: dict[str, Any], trace: str, audited: bool) -> dict[str, str]:
    """Compare nodes with the expected dump; returns expected uuid -> dumped uuid."""
    got = nodes_by_hostname(dump)
    assert set(got) == {n["hostname"] for n in EXPECTED["compute_nodes"]}
    uuid_map: dict[str, str] = {}
    for want in EXPECTED["compute_nodes"]:
        node = got[want["hostname"]]
        uuid_map[want["uuid"]] = node["uuid"]
        # Microversion 2.104 lists no capacity: unknown, so null.
        assert {k: node[k] for k in CAPACITY} == dict.fromkeys(CAPACITY)
        unknowable = set(CAPACITY)
        if want["hostname"] in ADDED_HOSTS and not audited:
            assert node["placeholder"] is True
            assert node["uuid"] != want["uuid"]
            unknowable.add("uuid")
            if trace == "trace-legacy.jsonl":
                # No service events in the legacy stream: status and state are not known.
                assert (node["status"], node["state"]) == (None, None)
                unknowable |= {"status", "state"}
        else:
            assert node["placeholder"] is False
        assert {k: node[k] for k in want if k not in unknowable} == {
            k: v for k, v in want.items() if k not in unknowable
        }
    return uuid_map


def check_instances(
    dump: dict[str, Any], trace: str, audited: bool, uuid_map: dict[str, str]
) -> None:
    got = {i["uuid"]: i for i in dump["instances"]}
    assert set(got) == {i["uuid"] for i in EXPECTED["instances"]}
    for want in EXPECTED["instances"]:
        inst = got[want["uuid"]]
        unknowable = set()
        if trace == "trace-legacy.jsonl" and want["uuid"] in CREATED_SERVERS and not audited:
            # Legacy payloads carry no lock state, and no snapshot listed this server.
            assert inst["locked"] is None
            unknowable.add("locked")
        expected = {k: v for k, v in want.items() if k not in unknowable}
        expected["compute_node_uuid"] = uuid_map.get(want["compute_node_uuid"])
        assert {k: inst[k] for k in expected} == expected


@pytest.mark.parametrize("trace", TRACES)
def test_replay_reaches_api_truth(trace: str, replayed: Callable[[str], Harness]) -> None:
    harness = replayed(trace)
    dump = harness.model.to_dict()
    assert dump["format"] == EXPECTED["format"]
    check_instances(dump, trace, False, check_nodes(dump, trace, audited=False))
    assert dump["revision"] == len(harness.records) == harness.records[-1].revision
    assert harness.model.check_integrity() == []
    summary = harness.service.stats.summary()
    assert summary.rejected == 0


@pytest.mark.parametrize("trace", TRACES)
def test_replay_then_audit_reaches_api_truth(
    trace: str, replayed: Callable[[str], Harness]
) -> None:
    harness = replayed(trace)
    placeholders = [n.uuid for n in harness.model.nodes() if n.placeholder]
    report = full_audit(harness.service, after())
    assert report.rejected == []
    dump = harness.model.to_dict()
    uuid_map = check_nodes(dump, trace, audited=True)
    assert uuid_map == {n["uuid"]: n["uuid"] for n in EXPECTED["compute_nodes"]}
    check_instances(dump, trace, True, uuid_map)
    # The placeholder was replaced, not left beside the real node.
    assert all(harness.model.node(u) is None for u in placeholders)
    assert harness.model.check_integrity() == []
    # A second audit against the same listing has nothing left to correct.
    revision = harness.model.revision
    full_audit(harness.service, after())
    assert harness.model.revision == revision


def transitions(records: list[ChangeRecord]) -> list[tuple[Any, ...]]:
    return [(r.kind, r.op, r.uuid, r.to_dict()["changed"]) for r in records]


def test_both_formats_yield_one_change_per_transition(
    make_harness: Callable[..., Harness], load_trace: Callable[[str], list[dict[str, Any]]]
) -> None:
    results = {}
    for trace in ("trace-versioned.jsonl", "trace-both.jsonl"):
        harness = make_harness()
        harness.bootstrap(BEFORE)
        results[trace] = transitions(harness.replay(load_trace(trace)))
    assert results["trace-versioned.jsonl"]
    assert results["trace-both.jsonl"] == results["trace-versioned.jsonl"]


@pytest.mark.parametrize("trace", TRACES)
def test_change_records_follow_the_contract(trace: str, replayed: Callable[[str], Harness]) -> None:
    harness = replayed(trace)
    full_audit(harness.service, after())
    records = harness.records
    assert [r.revision for r in records] == list(range(1, len(records) + 1))
    node_keys = set(EXPECTED["compute_nodes"][0]) | {"placeholder"}
    instance_keys = set(EXPECTED["instances"][0])
    sources = set()
    for record in records:
        doc = json.loads(json.dumps(record.to_dict()))  # JSON-serialisable as is
        assert set(doc) == CHANGE_KEYS
        assert doc["format"] == CHANGE_FORMAT
        assert set(doc["cause"]) == CAUSE_KEYS
        assert doc["kind"] in ("compute_node", "instance")
        assert doc["op"] in ("add", "update", "remove")
        assert doc["at"].endswith("Z")
        datetime.fromisoformat(doc["at"].replace("Z", "+00:00"))
        if doc["op"] == "remove":
            assert doc["object"] is None and doc["changed"] == {}
        else:
            keys = node_keys if doc["kind"] == "compute_node" else instance_keys
            assert set(doc["object"]) == keys
            assert doc["object"]["uuid"] == doc["uuid"]
        if doc["op"] == "add":
            assert doc["changed"] == {}
        if doc["op"] == "update":
            assert doc["changed"], "an update names what changed"
            for field, (old, new) in doc["changed"].items():
                assert old != new
                assert doc["object"][field] == new
        sources.add(doc["cause"]["source"])
        if doc["cause"]["source"] == "notification":
            assert doc["cause"]["event_type"] and doc["cause"]["message_id"]
    assert sources == {"bootstrap", "notification", "audit"}


def test_audit_drops_placeholder_nova_does_not_list(
    make_harness: Callable[..., Harness], load_trace: Callable[[str], list[dict[str, Any]]]
) -> None:
    """A placeholder for a host the clean listing lacks, holding no instance, is unsupported by
    Nova's truth and goes; one created by a notification after the listing was taken stays."""
    harness = make_harness()
    harness.bootstrap(BEFORE)
    lines = load_trace("trace-versioned.jsonl")
    moved = next(line for line in lines if line["event_type"] == "instance.update")
    ghost = json.loads(json.dumps(moved))
    ghost["payload"]["nova_object.data"].update(host="ghost", node="ghost")
    ghost["metadata"]["message_id"] += "-ghost"
    harness.replay([ghost, *lines])  # the instance is placed on "ghost", then moves on
    [placeholder] = [n for n in harness.model.nodes() if n.hostname == "ghost"]
    assert harness.model.instances_on_node(placeholder.uuid) == []
    late_service = next(line for line in lines if line["event_type"] == "service.create")
    late = json.loads(json.dumps(late_service))
    late["payload"]["nova_object.data"]["host"] = "compute9"
    late["metadata"].update(message_id="late-create", timestamp="2030-01-01 00:00:00.000000")
    harness.deliver(late)
    full_audit(harness.service, after())
    assert harness.model.node(placeholder.uuid) is None
    assert [n.placeholder for n in harness.model.nodes_by_host("compute9")] == [True]
    check_nodes(
        {
            "compute_nodes": [
                n for n in harness.model.to_dict()["compute_nodes"] if n["hostname"] != "compute9"
            ]
        },
        "trace-versioned.jsonl",
        audited=True,
    )


# -- reading a trace: every line checked before it is decoded -----------------------------------


def test_read_trace_reports_each_bad_line_with_its_number(tmp_path: Path) -> None:
    good = (TRACE_DIR / "trace-versioned.jsonl").read_bytes().splitlines()[:2]
    trace = tmp_path / "trace.jsonl"
    trace.write_bytes(
        b"\n".join(
            [
                good[0],
                b"   ",  # blank: skipped, but counted in the line numbers
                b"[" * 100_000 + b"]" * 100_000,
                b'{"event_type": "instance.update", "publisher_id": "caf\xe9"}',
                b'"a string"',
                b"{not json",
                b"x" * 400_000,
                good[1],
            ]
        )
        + b"\r\n"  # the last line ends as a Windows editor would end it
    )
    read = list(read_trace(trace, max_line_bytes=300_000))
    assert [number for number, _, _ in read] == [1, 3, 4, 5, 6, 7, 8]
    reasons = {number: reason for number, _, reason in read if reason is not None}
    assert reasons == {
        3: "line 3 is nested too deeply to decode",
        4: "line 4 is not UTF-8 (invalid continuation byte at byte 54)",
        5: "line 5 is not a JSON object (a JSON string)",
        6: reasons[6],
        7: "line 7 has 400000 bytes, over the 300000-byte limit (not decoded)",
    }
    assert reasons[6].startswith("line 6 is not JSON (")
    assert [line for _, line, _ in read if line is not None] == [json.loads(g) for g in good]


@pytest.mark.parametrize(
    ("content", "accepted"),
    [
        (b"x" * 1022, True),  # with its quotes, exactly at the limit
        (b"x" * 1023, False),
    ],
)
@pytest.mark.parametrize("newline", [b"\n", b""])
def test_the_line_limit_is_exact(
    tmp_path: Path, content: bytes, accepted: bool, newline: bytes
) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_bytes(b'{"a": 1}\n"' + content + b'"' + newline)
    [first, (number, _, reason)] = list(read_trace(trace, max_line_bytes=1024))
    assert first == (1, {"a": 1}, None) and number == 2
    if accepted:
        assert reason == "line 2 is not a JSON object (a JSON string)"
    else:
        assert reason == "line 2 has 1025 bytes, over the 1024-byte limit (not decoded)"


def test_a_missing_trace_is_a_trace_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"missing\.jsonl"):
        list(read_trace(tmp_path / "missing.jsonl"))


def test_replay_applies_the_size_limit_it_is_given(tmp_path: Path) -> None:
    """``max_message_bytes`` bounds the trace lines (and the snapshot's server items): a line
    of the recorded trace over it is rejected, counted and logged, the rest applies."""
    lines = (TRACE_DIR / "trace-versioned.jsonl").read_bytes().splitlines()
    trace = tmp_path / "trace.jsonl"
    trace.write_bytes(b"\n".join(lines) + b"\n")
    limit = max(len(line) for line in lines) - 1
    too_long = sum(len(line) > limit for line in lines)
    result = replay(TRACE_DIR / "snapshot.json", trace, max_message_bytes=limit)
    summary = result.service.stats.summary()
    assert summary.rejected == too_long == 1
    assert result.trace_lines == len(lines)
    assert "over the" in result.service.stats.last_rejections[-1]
    full = replay(TRACE_DIR / "snapshot.json", trace)
    assert full.service.stats.summary().rejected == 0
