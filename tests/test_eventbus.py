"""The in-process event bus: filters, ordered asynchronous delivery, overflow, errors, shutdown.

Records are real: the basic_lifecycle snapshot and versioned trace applied to a ComputeModel
through the SyncService and the notification endpoints, or small hand-built InstanceObserved
events. Tests wait on events and conditions with timeouts, never on sleeps, and assert no timing.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cdm_sync.messaging.endpoints import Dispatcher, make_endpoints
from cdm_sync.model import Cause, ChangeRecord, ComputeModel, InstanceObserved, Version
from cdm_sync.nova.snapshot import read_snapshot, snapshot_events
from cdm_sync.sinks import EventBus, Filter
from cdm_sync.sinks.eventbus import LOG as BUS_LOG
from cdm_sync.sync.service import SyncService
from tests.samples import TRACE_DIR

WAIT = 10.0  # generous upper bound for any wait; tests never rely on it for correctness


def replay_lifecycle(*publishers: Callable[[list[ChangeRecord]], None]) -> list[ChangeRecord]:
    """Bootstrap from the basic_lifecycle snapshot and replay its versioned trace."""
    records: list[ChangeRecord] = []
    service = SyncService(ComputeModel(), [records.extend, *publishers])
    service.submit_all(snapshot_events(read_snapshot(TRACE_DIR / "snapshot.json")))
    dispatcher = Dispatcher(make_endpoints(service), service)
    with (TRACE_DIR / "trace-versioned.jsonl").open() as trace:
        for line in trace:
            dispatcher.deliver(json.loads(line))
    return records


@pytest.fixture(scope="module")
def records() -> list[ChangeRecord]:
    recs = replay_lifecycle()
    # The tests below need a varied stream: both kinds, all ops, updates, several sources.
    assert {r.kind for r in recs} == {"compute_node", "instance"}
    assert {r.op for r in recs} == {"add", "update", "remove"}
    assert [r.revision for r in recs] == list(range(recs[0].revision, recs[-1].revision + 1))
    return recs


def instance_records(count: int) -> list[ChangeRecord]:
    """``count`` records from hand-built events: three instances flipping vm_state."""
    model = ComputeModel()
    out: list[ChangeRecord] = []
    for i in range(count):
        event = InstanceObserved(
            uuid=f"00000000-0000-4000-8000-00000000000{i % 3}",
            version=Version(1000.0 + i, 1000.0 + i),
            cause=Cause("notification", "instance.update", f"msg-{i}"),
            project_id=f"project-{i % 3}",
            vm_state="active" if (i // 3) % 2 else "stopped",
        )
        out.extend(model.apply(event))
    assert len(out) == count
    return out


@pytest.fixture
def bus() -> Iterator[EventBus]:
    event_bus = EventBus()
    yield event_bus
    event_bus.close(WAIT)


class Collector:
    """A subscriber callback that remembers what it got and lets a test wait for it."""

    def __init__(self) -> None:
        self.received: list[ChangeRecord] = []
        self._cond = threading.Condition()

    def __call__(self, record: ChangeRecord) -> None:
        with self._cond:
            self.received.append(record)
            self._cond.notify_all()

    def wait_for_count(self, n: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.received) >= n, WAIT)

    @property
    def revisions(self) -> list[int]:
        with self._cond:
            return [r.revision for r in self.received]


def in_batches(recs: list[ChangeRecord], size: int) -> Iterator[list[ChangeRecord]]:
    for start in range(0, len(recs), size):
        yield recs[start : start + size]


# -- filters ---------------------------------------------------------------------------------

FIELD_CASES: list[tuple[dict[str, str], Callable[[ChangeRecord], bool]]] = [
    ({"kind": "compute_node"}, lambda r: r.kind == "compute_node"),
    ({"kind": "inst*"}, lambda r: r.kind == "instance"),
    ({"op": "?dd"}, lambda r: r.op == "add"),
    ({"op": "re[m]ove"}, lambda r: r.op == "remove"),
    ({"changed": "host"}, lambda r: "host" in r.changed),
    ({"changed": "*_state"}, lambda r: any(k.endswith("_state") for k in r.changed)),
    ({"event_type": "service.*"}, lambda r: (r.cause.event_type or "").startswith("service.")),
    ({"event_type": "*"}, lambda r: r.cause.event_type is not None),
    (
        {"project": "project-?"},
        lambda r: (
            r.project_id is not None
            and r.project_id.startswith("project-")
            and len(r.project_id) == len("project-x")
        ),
    ),
    ({"project": "*"}, lambda r: r.kind == "instance"),
    (
        {"kind": "instance", "op": "update", "changed": "host"},
        lambda r: r.kind == "instance" and r.op == "update" and "host" in r.changed,
    ),
]


@pytest.mark.parametrize(("spec", "expected"), FIELD_CASES, ids=[str(c[0]) for c in FIELD_CASES])
def test_filter_field_matches_its_record_attribute(
    records: list[ChangeRecord], spec: dict[str, str], expected: Callable[[ChangeRecord], bool]
) -> None:
    selected = [r for r in records if Filter(**spec).matches(r)]
    assert selected == [r for r in records if expected(r)]
    # The case must discriminate, or it would prove nothing.
    assert 0 < len(selected) < len(records)
    assert [r for r in records if Filter.from_dict(spec).matches(r)] == selected


def test_filter_on_uuid_exact_and_wildcard(records: list[ChangeRecord]) -> None:
    target = next(r.uuid for r in records if r.op == "update")
    exact = [r for r in records if Filter(uuid=target).matches(r)]
    assert exact == [r for r in records if r.uuid == target]
    prefix = [r for r in records if Filter(uuid=target[:8] + "*").matches(r)]
    assert prefix == [r for r in records if r.uuid.startswith(target[:8])]
    assert len(exact) > 1
    assert not [r for r in records if Filter(uuid=target.upper()).matches(r)]  # case-sensitive


def test_empty_filter_matches_everything(records: list[ChangeRecord]) -> None:
    assert all(Filter().matches(r) for r in records)
    assert all(Filter.from_dict({"kind": None}).matches(r) for r in records)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "instance"}, "unknown event filter key"),
        ({"kind": "instance", "host": "c1", "zone": "a"}, "'host', 'zone'"),
        ({"kind": 1}, "must be a string"),
        ({"changed": ["host", "node"]}, "must be a string"),
        ({"project": b"p1"}, "must be a string"),
        ({"kind": "instances"}, "matches none of"),
        ({"op": "delete"}, "matches none of"),
    ],
)
def test_invalid_filters_are_rejected(bus: EventBus, spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bus.subscribe(spec, lambda r: None)
    assert bus.stats() == {}


def test_invalid_subscribe_arguments(bus: EventBus) -> None:
    with pytest.raises(ValueError, match="queue size"):
        bus.subscribe(None, lambda r: None, queue_size=0)
    with pytest.raises(TypeError, match="callable"):
        bus.subscribe(None, "not a callback")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="queue size"):
        EventBus(queue_size=-1)
    assert bus.stats() == {}


# -- delivery --------------------------------------------------------------------------------


def test_subscribers_on_the_sync_service_get_their_records_in_revision_order() -> None:
    bus = EventBus()
    everything, nodes, moves = Collector(), Collector(), Collector()
    bus.subscribe(None, everything)
    bus.subscribe(Filter(kind="compute_node"), nodes)
    bus.subscribe({"kind": "instance", "changed": "host"}, moves)
    published = replay_lifecycle(bus.publish)
    assert bus.close(WAIT)

    assert everything.received == published
    assert nodes.received == [r for r in published if r.kind == "compute_node"]
    assert moves.received == [r for r in published if r.kind == "instance" and "host" in r.changed]
    assert moves.received  # the trace does move instances
    for sub_id, stats in bus.stats().items():
        assert stats.queued == stats.dropped == stats.errors == 0, sub_id
        assert stats.delivered == stats.matched > 0


def test_each_subscriber_sees_its_records_in_publish_order() -> None:
    recs = instance_records(600)
    bus = EventBus()
    collectors = {project: Collector() for project in ("project-0", "project-1", "project-*")}
    for project, collector in collectors.items():
        bus.subscribe({"project": project}, collector)
    for batch in in_batches(recs, 7):
        bus.publish(batch)
    assert bus.close(WAIT)
    for project, collector in collectors.items():
        want = [r.revision for r in recs if Filter(project=project).matches(r)]
        assert collector.revisions == want
        assert collector.revisions == sorted(set(collector.revisions))


def test_slow_subscriber_blocks_neither_publish_nor_other_subscribers(
    bus: EventBus, records: list[ChangeRecord]
) -> None:
    gate, entered = threading.Event(), threading.Event()

    def slow(record: ChangeRecord) -> None:
        entered.set()
        gate.wait(WAIT)

    fast = Collector()
    slow_id = bus.subscribe(None, slow)
    fast_id = bus.subscribe(None, fast)
    try:
        publisher = threading.Thread(
            target=lambda: [bus.publish(batch) for batch in in_batches(records, 5)]
        )
        publisher.start()
        publisher.join(WAIT)
        assert not publisher.is_alive(), "publish blocked behind a slow subscriber"

        assert fast.wait_for_count(len(records))
        assert fast.received == records
        assert entered.wait(WAIT)
        stats = bus.stats()
        # The slow one is still stuck in its first callback, holding everything else queued.
        assert not gate.is_set()
        assert stats[slow_id].delivered == 0
        assert stats[slow_id].queued == len(records)
        assert stats[fast_id].delivered == len(records)
    finally:
        gate.set()
    assert bus.close(WAIT)
    assert bus.stats()[slow_id].delivered == len(records)


def test_overflow_drops_newest_counts_and_reports_the_gap(records: list[ChangeRecord]) -> None:
    recs = records[:12]
    bus = EventBus(queue_size=3)
    log: list[tuple[Any, ...]] = []
    gate, entered, fourth = threading.Event(), threading.Event(), threading.Event()

    def callback(record: ChangeRecord) -> None:
        log.append(("record", record.revision))
        if record is recs[0]:
            entered.set()
            gate.wait(WAIT)
        if record is recs[3]:
            fourth.set()

    sub_id = bus.subscribe(
        None, callback, on_gap=lambda first, last: log.append(("gap", first, last))
    )
    try:
        bus.publish(recs[:1])
        assert entered.wait(WAIT)  # recs[0] is in the callback; the queue is empty
        bus.publish(recs[1:10])  # 3 fit, the 6 newest are dropped
        bus.publish(recs[10:11])  # still full: dropped too
        stats = bus.stats()[sub_id]
        assert (stats.matched, stats.delivered, stats.dropped, stats.queued) == (11, 0, 7, 4)
    finally:
        gate.set()
    assert fourth.wait(WAIT)  # recs[3] was taken off the queue: there is room again
    bus.publish(recs[11:])
    assert bus.close(WAIT)

    assert log == [
        *[("record", r.revision) for r in recs[:4]],
        ("gap", recs[4].revision, recs[10].revision),
        ("record", recs[11].revision),
    ]
    stats = bus.stats()[sub_id]
    assert (stats.matched, stats.delivered, stats.dropped, stats.queued) == (12, 5, 7, 0)
    assert stats.matched == stats.delivered + stats.dropped + stats.queued


def test_gap_spans_dropped_matching_records_and_is_reported_at_close(
    records: list[ChangeRecord],
) -> None:
    updates = [r for r in records if r.op == "update"]
    first_index = records.index(updates[0])
    bus = EventBus(queue_size=1)
    log: list[tuple[Any, ...]] = []
    gate, entered = threading.Event(), threading.Event()

    def callback(record: ChangeRecord) -> None:
        log.append(("record", record.revision))
        entered.set()
        gate.wait(WAIT)

    sub_id = bus.subscribe(
        {"op": "update"}, callback, on_gap=lambda first, last: log.append(("gap", first, last))
    )
    try:
        bus.publish(records[: first_index + 1])
        assert entered.wait(WAIT)
        bus.publish(records[first_index + 1 :])  # one more fits; every later update is dropped
    finally:
        gate.set()
    assert bus.close(WAIT)

    # Nothing followed the drops, so the gap comes after the drained records, not never.
    assert log == [
        ("record", updates[0].revision),
        ("record", updates[1].revision),
        ("gap", updates[2].revision, updates[-1].revision),
    ]
    assert bus.stats()[sub_id].dropped == len(updates) - 2


def test_raising_subscriber_is_logged_counted_and_keeps_receiving(
    bus: EventBus, records: list[ChangeRecord], caplog: pytest.LogCaptureFixture
) -> None:
    seen = Collector()

    def flaky(record: ChangeRecord) -> None:
        seen(record)
        if record.revision % 2:
            raise RuntimeError(f"subscriber bug at {record.revision}")

    sub_id = bus.subscribe(None, flaky)
    with caplog.at_level(logging.ERROR, logger=BUS_LOG.name):
        for batch in in_batches(records, 4):
            bus.publish(batch)
        assert bus.close(WAIT)

    odd = [r for r in records if r.revision % 2]
    assert seen.received == records
    stats = bus.stats()[sub_id]
    assert stats.errors == len(odd)
    assert stats.delivered == len(records)
    failures = [rec for rec in caplog.records if rec.name == BUS_LOG.name]
    assert len(failures) == len(odd)
    assert all(rec.levelno == logging.ERROR and rec.exc_info for rec in failures)
    assert str(failures[0].exc_info[1]) == f"subscriber bug at {odd[0].revision}"  # type: ignore[index]


def test_unsubscribe_stops_delivery(bus: EventBus, records: list[ChangeRecord]) -> None:
    gone, staying = Collector(), Collector()
    gone_id = bus.subscribe(None, gone)
    bus.subscribe(None, staying)
    half = len(records) // 2
    bus.publish(records[:half])
    assert gone.wait_for_count(half)

    assert bus.unsubscribe(gone_id)
    assert gone_id not in bus.stats()
    bus.publish(records[half:])
    assert bus.close(WAIT)
    assert staying.received == records
    assert gone.received == records[:half]
    assert not bus.unsubscribe(gone_id)


def test_unsubscribe_discards_queued_records_and_lets_the_current_callback_finish(
    bus: EventBus, records: list[ChangeRecord]
) -> None:
    gate, entered = threading.Event(), threading.Event()
    seen = Collector()

    def blocked(record: ChangeRecord) -> None:
        seen(record)
        entered.set()
        gate.wait(WAIT)

    sub_id = bus.subscribe(None, blocked)
    bus.publish(records[:5])
    assert entered.wait(WAIT)
    assert bus.unsubscribe(sub_id, timeout=0)  # returns at once, the callback still running
    gate.set()
    assert bus.close(WAIT)  # also waits for the unsubscribed worker
    assert seen.received == records[:1]


def test_callback_may_unsubscribe_itself(bus: EventBus, records: list[ChangeRecord]) -> None:
    seen = Collector()
    sub_id = ""
    done = threading.Event()

    def once(record: ChangeRecord) -> None:
        seen(record)
        assert bus.unsubscribe(sub_id)  # must not deadlock waiting for itself
        done.set()

    sub_id = bus.subscribe(None, once)
    bus.publish(records[:5])
    assert done.wait(WAIT)
    assert bus.close(WAIT)
    assert seen.received == records[:1]


def test_close_drains_queues_and_is_idempotent(records: list[ChangeRecord]) -> None:
    bus = EventBus()
    gate, entered = threading.Event(), threading.Event()
    seen = Collector()

    def slow(record: ChangeRecord) -> None:
        entered.set()
        gate.wait(WAIT)
        seen(record)

    sub_id = bus.subscribe(None, slow)
    bus.publish(records)
    assert entered.wait(WAIT)
    try:
        assert not bus.close(timeout=0)  # the worker is busy: not stopped yet, but closing
        assert bus.closed
        bus.publish(records[:3])  # refused after close, and counted
        with pytest.raises(RuntimeError, match="closed"):
            bus.subscribe(None, lambda r: None)
    finally:
        gate.set()
    assert bus.close(WAIT)
    assert bus.close(WAIT)
    assert seen.received == records
    stats = bus.stats()[sub_id]
    assert (stats.delivered, stats.dropped, stats.queued) == (len(records), 3, 0)


def test_publish_never_raises_on_bad_input(
    bus: EventBus, records: list[ChangeRecord], caplog: pytest.LogCaptureFixture
) -> None:
    seen = Collector()
    bus.subscribe(None, seen)
    with caplog.at_level(logging.ERROR, logger=BUS_LOG.name):
        bus.publish([None])  # type: ignore[list-item]
        bus.publish(42)  # type: ignore[arg-type]
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2
    bus.publish(records[:3])
    assert bus.close(WAIT)
    assert seen.received == records[:3]


def test_out_of_order_publish_is_warned_about(
    bus: EventBus, records: list[ChangeRecord], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=BUS_LOG.name):
        bus.publish(records[:3])
        assert not caplog.records
        bus.publish(records[1:2])
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "out of revision order" in caplog.records[0].getMessage()
