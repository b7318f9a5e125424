"""The sync engine: state, gap-free bootstrap, full and cheap audits, the guard, the schedule.

The engine runs against a scripted collector implementing the ``Collector`` port (listings
in the compute API's shape, or the real Nova 34 snapshots of ``basic_lifecycle``) and a gate
implementing ``NotificationGate`` in front of the real ``Dispatcher`` and endpoints, so the
notifications "arriving while Nova is being listed" go through the same path the listener
uses. No class of ours is mocked.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from oslo_config import cfg

from cdm_sync.conf import sync as sync_conf
from cdm_sync.messaging.endpoints import Dispatcher
from cdm_sync.model import Event, InstanceDeleted, InstanceObserved
from cdm_sync.nova.auth import Retries
from cdm_sync.nova.fields import parse_time
from cdm_sync.nova.snapshot import listing_of, read_snapshot
from cdm_sync.sync.engine import (
    DEEP_SETTLE_INTERVAL,
    EngineState,
    SyncEngine,
    engine_from_conf,
)
from cdm_sync.sync.ports import Listing, ListingError, Progress
from tests import fakenova
from tests.conftest import FakeClock, Harness, NovaListing
from tests.fakenova import FakeNova
from tests.samples import TRACE_DIR, load_sample
from tests.services import wait_for
from tests.test_audit import (
    CAPTURED_1,
    CAPTURED_2,
    HOSTS,
    UPDATED_1,
    dump,
    make_cloud,
    node_uuid,
    notification,
    server,
    server_uuid,
    snapshot_of,
    stop,
    truth,
)
from tests.test_collector import SERVERS, make_collector, make_session, populate

fake_nova = fakenova.fake_nova

Answer = Callable[[], Listing]
"""Builds one collector answer (a fresh Listing each call), or raises ListingError."""


def answer(cloud: NovaListing, incomplete: Iterable[str] = ()) -> Answer:
    return lambda: listing_of(snapshot_of(cloud), tuple(incomplete))


def failing(reason: str, partial: NovaListing | None = None) -> Answer:
    def fail() -> Listing:
        raise ListingError(
            reason, listing_of(snapshot_of(partial)) if partial is not None else None
        )

    return fail


def from_file(name: str) -> Answer:
    return lambda: listing_of(read_snapshot(TRACE_DIR / name))


class ScriptedCollector:
    """The ``Collector`` port, answering from scripts (the last answer of each repeats).

    ``during_listing`` runs inside ``full_listing`` before it returns, as notifications that
    arrive while Nova is being read. Calls are counted under a condition tests can wait on.
    """

    def __init__(self, full: Iterable[Answer] = (), changes: Iterable[Answer] = ()) -> None:
        self.full = list(full)
        self.changes = list(changes)
        self.since: list[float] = []
        self.during_listing: Callable[[], None] | None = None
        self.calls: Counter[str] = Counter()
        self.active = 0
        self.max_active = 0
        self.cond = threading.Condition()
        self.pause = 0.0

    def nodes_listing(self, progress: Progress | None = None) -> Listing:
        """What the last scripted full listing says of services and hypervisors."""
        with self.cond:
            self.calls["nodes"] += 1
            self.cond.notify_all()
        full = self.full[-1]()

        def nodes_only(source: Any, intern: bool) -> Iterator[Event]:
            for event in full.events(source, intern=intern):
                if not isinstance(event, InstanceObserved | InstanceDeleted):
                    yield event

        return Listing(full.captured_at, nodes_only, server_count=0)

    def _run(self, kind: str, script: list[Answer]) -> Listing:
        with self.cond:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.pause:
                time.sleep(self.pause)  # widen the window in which runs could overlap
            next_answer = script.pop(0) if len(script) > 1 else script[0]
            if kind == "full" and self.during_listing is not None:
                self.during_listing()
            return next_answer()
        finally:
            with self.cond:
                self.active -= 1
                self.calls[kind] += 1
                self.cond.notify_all()

    def full_listing(self, progress: Progress | None = None) -> Listing:
        return self._run("full", self.full)

    def changes_since(self, since: float, progress: Progress | None = None) -> Listing:
        self.since.append(since)
        return self._run("changes", self.changes)

    def wait_for(self, predicate: Callable[[Counter[str]], bool]) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.calls), timeout=20)


class BufferGate:
    """The ``NotificationGate`` port in front of the real dispatcher: while held, delivered
    notifications are buffered in order; release applies them, then lets them through."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.held = False
        self.buffer: list[dict[str, Any]] = []
        self.holds = 0
        self._lock = threading.Lock()

    def deliver(self, line: dict[str, Any]) -> None:
        with self._lock:
            if self.held:
                self.buffer.append(line)
                return
            self.dispatcher.deliver(line)

    def hold(self) -> None:
        with self._lock:
            self.held = True
            self.holds += 1

    def release(self) -> int:
        with self._lock:
            buffered, self.buffer = self.buffer, []
            for line in buffered:
                self.dispatcher.deliver(line)
            self.held = False
            return len(buffered)


class TickingClock(FakeClock):
    """A clock that moves a millisecond at every reading, as time passes between a listing's
    start and the moments the model observes things: the engine compares the two."""

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return TickingClock()


@pytest.fixture
def harness(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness(legacy=False)


@pytest.fixture
def gate(harness: Harness) -> BufferGate:
    return BufferGate(Dispatcher(harness.endpoints, harness.service))


def engine_for(
    harness: Harness, collector: ScriptedCollector, gate: BufferGate | None = None, **kw: Any
) -> SyncEngine:
    kw.setdefault("deletion_margin", 0.0)
    return SyncEngine(harness.service, collector, gate, **kw)


def sources(records: Iterable[Any]) -> set[str]:
    return {r.cause.source for r in records}


# -- state and bootstrap -----------------------------------------------------------------------


def test_state_transitions_through_bootstrap(harness: Harness, gate: BufferGate) -> None:
    collector = ScriptedCollector([answer(make_cloud())])
    engine = engine_for(harness, collector, gate)
    seen: list[tuple[EngineState, bool]] = []
    collector.during_listing = lambda: seen.append((engine.state, gate.held))
    assert engine.state is EngineState.NOT_SYNCED
    assert engine.status()["state"] == "not_synced"
    report = engine.bootstrap()
    assert seen == [(EngineState.SYNCING, True)]  # listing while syncing, notifications held
    assert engine.state is EngineState.READY and not gate.held
    assert report.result == "ok" and report.listed_servers == 20
    assert harness.model.instance_count == 20
    assert sources(harness.records) == {"bootstrap"}
    status = engine.status()
    assert status["state"] == "ready" and status["reason"] is None
    assert status["high_water"] == parse_time(CAPTURED_1, "t")
    assert status["last_full_audit"]["kind"] == "bootstrap"
    assert status["counters"]["bootstraps"] == 1


def test_failed_bootstrap_listing_stays_not_synced(harness: Harness, gate: BufferGate) -> None:
    collector = ScriptedCollector([failing("servers page 3: HTTP 500"), answer(make_cloud())])
    engine = engine_for(harness, collector, gate)
    collector.during_listing = lambda: gate.deliver(
        notification("instance-create-end", server_uuid(50), host="compute1")
    )
    with pytest.raises(ListingError, match="servers page 3"):
        engine.bootstrap()
    assert engine.state is EngineState.NOT_SYNCED
    assert "servers page 3" in engine.status()["reason"]
    assert engine.status()["last_full_audit"]["result"] == "failed"
    # The gate was released: what arrived meanwhile was applied, not stranded in a buffer.
    assert not gate.held and harness.model.instance(server_uuid(50)) is not None
    engine.bootstrap()  # the retry reconciles with what notifications built
    assert engine.state is EngineState.READY
    assert harness.model.instance_count == 21
    assert dump(harness) != truth(make_cloud(), harness)  # the newer create is kept
    assert harness.model.check_integrity() == []


def test_incomplete_bootstrap_is_not_ready(harness: Harness) -> None:
    collector = ScriptedCollector([answer(make_cloud(), ["cell2 is down"])])
    engine = engine_for(harness, collector)
    report = engine.bootstrap()
    assert engine.state is EngineState.DEGRADED
    assert report.result == "degraded" and "cell2 is down" in engine.status()["reason"]


@pytest.mark.parametrize("held_lines", [0, 40, 121])
def test_gap_free_bootstrap_on_the_real_trace(
    held_lines: int,
    harness: Harness,
    gate: BufferGate,
    make_harness: Callable[..., Harness],
    load_trace: Callable[[str], list[dict[str, Any]]],
) -> None:
    """Notifications sent while Nova is being listed are neither lost nor allowed to regress
    the listing: the result equals listing first, then every notification."""
    lines = load_trace("trace-versioned.jsonl")
    collector = ScriptedCollector([from_file("snapshot.json")])
    collector.during_listing = lambda: [gate.deliver(line) for line in lines[:held_lines]]
    engine = engine_for(harness, collector, gate)
    report = engine.bootstrap()
    assert report.buffered == held_lines
    for line in lines[held_lines:]:
        gate.deliver(line)
    reference = make_harness(legacy=False)
    reference.bootstrap(read_snapshot(TRACE_DIR / "snapshot.json"))
    reference.replay(lines)
    assert dump(harness) == dump(reference)
    assert engine.state is EngineState.READY


def test_buffered_older_notifications_do_not_regress_the_listing(
    harness: Harness,
    gate: BufferGate,
    make_harness: Callable[..., Harness],
    load_trace: Callable[[str], list[dict[str, Any]]],
) -> None:
    """Listing taken after the whole scenario; the scenario's notifications arrive during it
    (a slow queue): every one is older than the listing and changes nothing."""
    lines = load_trace("trace-versioned.jsonl")
    collector = ScriptedCollector([from_file("snapshot-final.json")])
    collector.during_listing = lambda: [gate.deliver(line) for line in lines]
    engine = engine_for(harness, collector, gate)
    assert engine.bootstrap().buffered == len(lines)
    reference = make_harness(legacy=False)
    reference.bootstrap(read_snapshot(TRACE_DIR / "snapshot-final.json"))
    assert dump(harness) == dump(reference)
    # Nothing the listing holds was touched by a notification (servers deleted before the
    # listing appear and go again as their own notifications replay, which versions allow).
    listed = {r.uuid for r in reference.records}
    touched = {r.uuid for r in harness.records if r.cause.source == "notification"}
    assert touched and not touched & listed


# -- full audit --------------------------------------------------------------------------------

# Uuids in basic_lifecycle: created during the trace, hard-deleted at its end, unshelved onto
# another host.
CREATED = "24f8485b-a3bd-486e-befc-ded067008ec0"
DELETED = "680defff-49ba-4a6f-b4a4-3cfb230e9b0e"
UNSHELVED = "de43e3e9-82a7-40e2-b49f-7a43dd0f69cd"


def _about(line: dict[str, Any]) -> str | None:
    data = line["payload"].get("nova_object.data", {})
    return data.get("uuid") if isinstance(data, dict) else None


def test_full_audit_repairs_dropped_notifications_of_a_real_trace(
    harness: Harness,
    gate: BufferGate,
    make_harness: Callable[..., Harness],
    load_trace: Callable[[str], list[dict[str, Any]]],
) -> None:
    """Lose the create of one server, the delete of another and the unshelve of a third; the
    full audit against Nova's listing after the scenario repairs all three."""
    lines = load_trace("trace-versioned.jsonl")
    dropped_delete = [i for i, line in enumerate(lines) if _about(line) == DELETED][-6:]
    assert [lines[i]["event_type"] for i in dropped_delete][-1] == "instance.delete.end"
    dropped_unshelve = [i for i, line in enumerate(lines) if _about(line) == UNSHELVED][-3:]
    kept = [
        line
        for i, line in enumerate(lines)
        if _about(line) != CREATED and i not in dropped_delete and i not in dropped_unshelve
    ]
    collector = ScriptedCollector([from_file("snapshot.json"), from_file("snapshot-final.json")])
    engine = engine_for(harness, collector, gate, full_shrink_limit=0.5)
    engine.bootstrap()
    for line in kept:
        gate.deliver(line)
    assert harness.model.instance(CREATED) is None
    assert harness.model.instance(DELETED) is not None
    assert harness.model.instance(UNSHELVED).host is None
    start = len(harness.records)

    report = engine.full_audit()

    records = harness.records[start:]
    assert sources(records) == {"audit"}
    assert ("instance", "add", CREATED) in {(r.kind, r.op, r.uuid) for r in records}
    assert ("instance", "remove", DELETED) in {(r.kind, r.op, r.uuid) for r in records}
    [unshelved] = [r for r in records if r.uuid == UNSHELVED]
    assert unshelved.changed["host"] == (None, "compute2")
    assert report.drift[("instance", "missing")] == 1
    assert report.drift[("instance", "ghost")] == 1
    assert report.drift[("instance", "stale_field")] == 1
    assert engine.status()["drift"]["missing"] >= 1
    # The model now equals one that saw everything and was audited against the same listing.
    reference = make_harness(legacy=False)
    reference_engine = engine_for(
        reference, ScriptedCollector([from_file("snapshot.json"), from_file("snapshot-final.json")])
    )
    reference_engine.bootstrap()
    reference.replay(lines)
    reference_engine.full_audit()
    assert dump(harness) == dump(reference)
    assert engine.state is EngineState.READY


def test_audit_keeps_notifications_flowing_and_never_undoes_them(
    harness: Harness, gate: BufferGate
) -> None:
    """Notifications delivered from another thread while the audit lists Nova are applied at
    once (no lock is held across the listing) and the audit does not undo them."""
    collector = ScriptedCollector(
        [answer(make_cloud()), answer(make_cloud(captured_at=CAPTURED_2))]
    )
    engine = engine_for(harness, collector, gate)
    engine.bootstrap()
    applied_during_listing: list[bool] = []

    def deliver_concurrently() -> None:
        lines = [
            notification("instance-power_off-end", server_uuid(0), host="compute1"),
            notification("instance-create-end", server_uuid(99), host="compute2"),
        ]
        worker = threading.Thread(target=lambda: [gate.deliver(line) for line in lines])
        worker.start()
        worker.join(timeout=20)
        applied_during_listing.append(
            not worker.is_alive() and harness.model.instance(server_uuid(99)) is not None
        )

    collector.during_listing = deliver_concurrently
    report = engine.full_audit()
    assert applied_during_listing == [True]
    assert harness.model.instance(server_uuid(0)).vm_state == "stopped"
    assert harness.model.instance(server_uuid(99)) is not None
    assert report.audit is not None and report.audit.newer_in_model == 2
    assert report.drift_by_kind() == {"missing": 0, "ghost": 0, "stale_field": 0}
    assert engine.state is EngineState.READY


GUARDED = [
    pytest.param(lambda later: failing("servers: read timed out", later), "timed out", id="error"),
    pytest.param(lambda later: answer(later, ["cell1 is down"]), "cell1 is down", id="incomplete"),
    pytest.param(
        lambda later: answer(make_cloud(captured_at=CAPTURED_2, skip=(1, 2, 3, 4))),
        "shrank",
        id="shrunk",
    ),
]


@pytest.mark.parametrize(("bad", "why"), GUARDED)
def test_partial_list_guard(
    bad: Callable[[NovaListing], Answer], why: str, harness: Harness
) -> None:
    later = make_cloud(21, captured_at=CAPTURED_2, skip=(1,))
    stop(later, 0)
    good = answer(later)
    collector = ScriptedCollector([answer(make_cloud()), bad(later), good])
    engine = engine_for(harness, collector)
    engine.bootstrap()
    start = len(harness.records)

    report = engine.full_audit()

    assert engine.state is EngineState.DEGRADED
    assert why in engine.status()["reason"]
    assert why in engine.status()["last_full_audit"]["reason"]
    assert report.result in ("failed", "degraded")
    assert all(r.op != "remove" for r in harness.records[start:])
    assert harness.model.instance(server_uuid(1)) is not None
    if why == "timed out":
        assert harness.records[start:] == []  # nothing at all from a failed listing
    if why == "cell1 is down":
        assert harness.model.instance(server_uuid(20)) is not None  # additions still made

    report = engine.full_audit()
    assert engine.state is EngineState.READY and report.result == "ok"
    assert engine.status()["reason"] is None
    assert harness.model.instance(server_uuid(1)) is None
    assert dump(harness) == truth(later, harness)


def test_resync_reports_corrections_with_their_cause(harness: Harness) -> None:
    later = make_cloud(21, captured_at=CAPTURED_2, skip=(1,))
    stop(later, 0)
    collector = ScriptedCollector([answer(make_cloud()), answer(later)])
    engine = engine_for(harness, collector)
    engine.bootstrap()
    start = len(harness.records)
    report = engine.resync()
    assert report.source == "resync" and report.result == "ok"
    assert report.drift_by_kind() == {"missing": 1, "ghost": 1, "stale_field": 1}
    assert sources(harness.records[start:]) == {"resync"}
    assert "ghost 1" in report.line()
    status = engine.status()
    assert status["counters"]["resyncs"] == 1
    assert status["drift"] == {"missing": 1, "ghost": 1, "stale_field": 1}
    assert status["drift_by_element"]["instance"]["ghost"] == 1


def _in_collectors_view(obj: object) -> bool:
    """True unless ``obj`` is frozen (gc.get_objects lists the three generations only)."""
    assert gc.is_tracked(obj)
    return any(o is obj for o in gc.get_objects())


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_full_audit_settles_the_heap(harness: Harness) -> None:
    """After a full audit the model, corrections included, is out of the cyclic collector's
    view; a cycle that became garbage while frozen is freed by the daily deep pass."""
    later = make_cloud(captured_at=CAPTURED_2)
    stop(later, 0)
    answers = [answer(make_cloud()), answer(later), answer(later)]
    engine = engine_for(harness, ScriptedCollector(answers))
    engine.bootstrap()
    assert not _in_collectors_view(harness.model.instance(server_uuid(1)))
    cycle = _Cycle()
    gone = weakref.ref(cycle)
    gc.freeze()
    del cycle
    before = harness.model.instance(server_uuid(0))
    assert before is not None

    engine.full_audit()

    corrected = harness.model.instance(server_uuid(0))
    assert corrected is not before and corrected.vm_state == "stopped"
    assert not _in_collectors_view(corrected)
    assert gone() is not None  # the plain pass leaves what is frozen alone...
    harness.clock.advance(DEEP_SETTLE_INTERVAL)
    engine.full_audit()
    assert gone() is None  # ...the deep one, a day after the last, frees it


def test_resync_before_any_sync_bootstraps(harness: Harness) -> None:
    collector = ScriptedCollector([failing("keystone unreachable"), answer(make_cloud())])
    engine = engine_for(harness, collector)
    report = engine.resync()
    assert report.result == "failed" and "keystone" in (report.reason or "")
    assert engine.state is EngineState.NOT_SYNCED
    report = engine.resync()
    assert report.kind == "bootstrap" and engine.state is EngineState.READY


# -- cheap audit -------------------------------------------------------------------------------


def test_cheap_audit_applies_changes_and_deletions(harness: Harness) -> None:
    changes = make_cloud(21, captured_at=CAPTURED_2)
    changes.hypervisors.clear()
    changes.services.clear()
    keep = {server_uuid(0), server_uuid(3), server_uuid(20)}
    changes.servers[:] = [s for s in changes.servers if s["id"] in keep]
    stop(changes, 0)
    server(changes, 3).update(
        {"status": "DELETED", "OS-EXT-STS:vm_state": "deleted", "updated": UPDATED_1}
    )
    collector = ScriptedCollector([answer(make_cloud())], [answer(changes)])
    engine = engine_for(harness, collector, change_skew=30.0)
    assert engine.cheap_audit().result == "skipped"  # nothing before the first sync
    assert collector.since == []
    engine.bootstrap()
    start = len(harness.records)

    report = engine.cheap_audit()

    assert collector.since == [parse_time(CAPTURED_1, "t") - 30.0]
    assert report.result == "ok"
    assert harness.model.instance(server_uuid(0)).vm_state == "stopped"
    assert harness.model.instance(server_uuid(3)) is None
    assert harness.model.instance(server_uuid(20)) is not None
    assert harness.model.instance_count == 20  # absence from a changes listing deletes nothing
    assert sources(harness.records[start:]) == {"audit"}
    assert report.drift_by_kind() == {"missing": 1, "ghost": 1, "stale_field": 1}
    assert engine.high_water == parse_time(CAPTURED_2, "t")
    engine.cheap_audit()
    assert collector.since[-1] == parse_time(CAPTURED_2, "t") - 30.0
    status = engine.status()
    assert status["last_cheap_audit"]["result"] == "ok"
    assert status["drift"] == {"missing": 1, "ghost": 1, "stale_field": 1}


def test_cheap_audit_failure_degrades_until_a_good_run(harness: Harness) -> None:
    quiet = make_cloud(0, captured_at=CAPTURED_2)
    collector = ScriptedCollector(
        [answer(make_cloud()), failing("listing timed out"), answer(make_cloud())],
        [failing("HTTP 503"), answer(quiet), failing("HTTP 503"), answer(quiet)],
    )
    engine = engine_for(harness, collector)
    engine.bootstrap()
    engine.cheap_audit()
    assert engine.state is EngineState.DEGRADED and "HTTP 503" in engine.status()["reason"]
    high_water = engine.high_water
    engine.cheap_audit()  # same window again, since the failed run did not advance it
    assert collector.since[0] == collector.since[1]
    assert engine.state is EngineState.READY and engine.high_water > high_water
    # A full audit's failure is not cleared by a cheap audit, only by a good full audit.
    engine.full_audit()
    assert engine.state is EngineState.DEGRADED
    engine.cheap_audit()
    engine.cheap_audit()
    assert engine.state is EngineState.DEGRADED
    engine.full_audit()
    assert engine.state is EngineState.READY
    counters = engine.status()["counters"]
    assert counters["cheap_audit_failures"] == 2 and counters["full_audit_failures"] == 1


def test_a_hung_nova_turns_the_model_degraded_until_it_answers(harness: Harness) -> None:
    """A compute API that accepts connections and never answers: each scheduled cheap audit
    is skipped while the first one hangs. After twice the cheap interval without an answer
    the model is DEGRADED (problem ``overdue``, saying so); it is READY again once Nova
    answers."""
    hang = threading.Event()

    def hanging() -> Listing:
        hang.wait(30)
        return listing_of(snapshot_of(make_cloud(0, captured_at=CAPTURED_2)))

    collector = ScriptedCollector([answer(make_cloud())], [hanging])
    engine = engine_for(harness, collector, clock=time.time)
    engine.bootstrap()
    assert engine.state is EngineState.READY
    engine.start_schedule(cheap_interval=0.3, full_interval=3600)
    try:
        wait_for(lambda: engine.state is EngineState.DEGRADED, 10, "the overdue state")
        status = engine.status()
        assert "overdue" in status["problems"]
        assert "has not answered a listing" in status["reason"]
        assert "a sync run is in progress" in status["reason"]
        hang.set()
        wait_for(lambda: engine.state is EngineState.READY, 10, "READY once Nova answers")
        assert "overdue" not in engine.status()["problems"]
        assert engine.status()["counters"]["skipped_busy"] >= 1
    finally:
        hang.set()
        engine.stop()


def test_a_compute_api_that_never_answers_degrades_the_model_over_real_http(
    harness: Harness, fake_nova: FakeNova
) -> None:
    """The test Nova accepts the changes-since request and never answers (within the client's
    timeout); the real collector's retries outlast two cheap intervals: DEGRADED with the
    reason well before any request fails, and the failure itself keeps it so."""
    populate(fake_nova.cloud)
    collector = make_collector(
        fake_nova,
        session=make_session(fake_nova, timeout=1.0),
        retries=Retries(connect_retries=2, connect_retry_delay=0.01),
    )
    engine = engine_for(harness, collector, clock=time.time)  # type: ignore[arg-type]
    engine.bootstrap()
    assert engine.state is EngineState.READY
    fake_nova.cloud.delays[SERVERS] = 10.0  # every servers page: longer than the timeout
    engine.start_schedule(cheap_interval=0.5, full_interval=3600)
    try:
        wait_for(lambda: engine.state is EngineState.DEGRADED, 10, "DEGRADED")
        assert "is the compute API hanging?" in engine.status()["reason"]
        wait_for(lambda: "cheap" in engine.status()["problems"], 20, "the request failing")
        assert "timed out" in engine.status()["problems"]["cheap"]
        assert engine.state is EngineState.DEGRADED
    finally:
        fake_nova.cloud.delays.clear()
        engine.stop()


def test_no_full_audit_for_two_intervals_is_overdue(harness: Harness, clock: FakeClock) -> None:
    collector = ScriptedCollector([answer(make_cloud())], [answer(make_cloud(0))])
    engine = engine_for(harness, collector, cheap_interval=60.0, full_interval=3600.0)
    engine.bootstrap()
    for _ in range(130):  # cheap audits keep answering, every minute of two hours and more
        clock.advance(60)
        engine.cheap_audit()
        engine.check_overdue()
    assert engine.state is EngineState.DEGRADED
    assert "no full audit has completed since" in engine.status()["reason"]
    engine.full_audit()
    assert engine.check_overdue() is None and engine.state is EngineState.READY


def test_problems_reported_from_outside_degrade_until_cleared(harness: Harness) -> None:
    """The daemon reports what the engine cannot see (its listener down); each problem stays
    in the reason until it is cleared, whatever the audits do meanwhile."""
    collector = ScriptedCollector([answer(make_cloud())], [failing("HTTP 503")])
    engine = engine_for(harness, collector)
    engine.report_problem("listener", "notifications: the listener stopped")
    assert engine.state is EngineState.NOT_SYNCED  # not synced yet: that says more
    engine.bootstrap()
    assert engine.state is EngineState.DEGRADED
    assert engine.status()["reason"] == "notifications: the listener stopped"
    engine.cheap_audit()
    assert set(engine.status()["problems"]) == {"listener", "cheap"}
    engine.full_audit()  # a good full audit vouches for the cheap one, not for the listener
    assert engine.status()["problems"] == {"listener": "notifications: the listener stopped"}
    engine.clear_problem("listener")
    assert engine.state is EngineState.READY and engine.status()["reason"] is None


# -- schedule and configuration ----------------------------------------------------------------


def test_schedule_runs_both_audits_and_retries_the_bootstrap(harness: Harness) -> None:
    later = make_cloud(captured_at=CAPTURED_2)
    stop(later, 7)
    collector = ScriptedCollector(
        [failing("nova is starting"), answer(make_cloud()), answer(later)],
        [answer(make_cloud(0, captured_at=CAPTURED_2))],
    )
    collector.pause = 0.01
    engine = engine_for(harness, collector, cheap_interval=0.05, full_interval=0.2)
    with pytest.raises(ListingError):
        engine.bootstrap()
    engine.start_schedule()
    try:
        assert engine.status()["scheduled"] is True
        with pytest.raises(RuntimeError):
            engine.start_schedule()
        assert collector.wait_for(lambda calls: calls["changes"] >= 3 and calls["full"] >= 4)
        resync = engine.resync()  # while the schedule runs: waits its turn
        assert resync.source == "resync"
    finally:
        engine.stop()
    assert engine.status()["scheduled"] is False
    assert engine.state is EngineState.READY
    assert harness.model.instance(server_uuid(7)).vm_state == "stopped"
    assert collector.max_active == 1  # no two runs ever listed at once
    counters = engine.status()["counters"]
    assert counters["bootstraps"] == 2 and counters["cheap_audits"] >= 3
    assert counters["full_audits"] >= 2


def test_engine_from_conf(harness: Harness) -> None:
    conf = cfg.ConfigOpts()
    conf.register_opts(sync_conf.OPTS, group=sync_conf.GROUP)
    conf([], project="cdm-sync-test", default_config_files=[])
    conf.set_override("cheap_interval", 15.0, group="sync")
    conf.set_override("full_shrink_limit", 0.25, group="sync")
    collector = ScriptedCollector([answer(make_cloud())])
    engine = engine_from_conf(conf, harness.service, collector, None)
    assert engine.cheap_interval == 15.0 and engine.full_shrink_limit == 0.25
    assert engine.full_interval == 3600.0 and engine.change_skew == 120.0


def test_bad_settings_are_refused(harness: Harness) -> None:
    with pytest.raises(ValueError, match="full_shrink_limit"):
        engine_for(harness, ScriptedCollector(), full_shrink_limit=1.5)


# -- nodes first heard of in notifications -------------------------------------------------------


def test_a_compute_added_while_running_gets_its_real_node_without_waiting_for_an_audit(
    harness: Harness, gate: BufferGate
) -> None:
    """service.create of a new host makes a placeholder; the engine reads the hypervisors
    (services and hypervisors only) and the placeholder becomes Nova's real node."""
    first = make_cloud(hosts=HOSTS)
    collector = ScriptedCollector([answer(first)])
    engine = engine_for(harness, collector, gate, node_refresh_delay=0.01)
    engine.bootstrap()
    engine.start_schedule(cheap_interval=3600, full_interval=3600)
    try:
        # Nova now has the new host; the engine's later listings say so.
        grown = make_cloud(hosts=(*HOSTS, "compute9"))
        collector.full.append(answer(grown))
        created = load_sample("service-create")
        created["payload"]["nova_object.data"]["host"] = "compute9"
        records = harness.deliver(
            {
                "priority": "info",
                "publisher_id": "nova-compute:compute9",
                "event_type": "service.create",
                "payload": created["payload"],
                "metadata": {"message_id": "svc-9", "timestamp": "2026-11-22 10:30:00.000000"},
                "ctxt": {},
            }
        )
        assert [r.element.placeholder for r in records] == [True]
        wait_for(
            lambda: (
                (node := harness.model.node(node_uuid("compute9"))) is not None
                and not node.placeholder
            ),
            10,
            "the real node of compute9",
        )
        assert not any(n.placeholder for n in harness.model.nodes())
        assert collector.calls["nodes"] >= 1 and collector.calls["full"] == 1
        assert harness.model.check_integrity() == []
    finally:
        engine.stop()
