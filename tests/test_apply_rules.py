"""Each rule of the apply path (see model/apply.py's docstring), with small hand-built events.

Ordering (``updated_at`` decides, then the envelope timestamp), duplicates, tombstones and their
expiry (on the model's injectable clock), placeholder nodes made real by a hypervisor
observation, no-op events, gap-free revisions, service deletion, and readers on other threads
that must never see half of an event.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from cdm_sync.model import (
    Cause,
    ChangeRecord,
    ComputeModel,
    ComputeNodeAbsent,
    Flavor,
    HypervisorObserved,
    InstanceAbsent,
    InstanceDeleted,
    InstanceObserved,
    Outcome,
    ServiceDeleted,
    ServiceObserved,
    Version,
)
from tests.conftest import FakeClock

VM = "11111111-1111-4111-8111-111111111111"
VM2 = "22222222-2222-4222-8222-222222222222"
NODE_A = "aaaaaaaa-0000-4000-8000-000000000001"
NODE_B = "bbbbbbbb-0000-4000-8000-000000000002"
TINY = Flavor("m1.tiny", 1, 512, 1)

_ids = iter(range(1, 1_000_000))


def cause(event_type: str = "instance.update", message_id: str | None = None) -> Cause:
    return Cause("notification", event_type, message_id or f"msg-{next(_ids)}")


def seen(
    uuid: str = VM,
    *,
    updated_at: float | None = None,
    ts: float | None = None,
    message_id: str | None = None,
    **fields: Any,
) -> InstanceObserved:
    return InstanceObserved(uuid, Version(updated_at, ts), cause(message_id=message_id), **fields)


def hypervisor(
    uuid: str, name: str, host: str | None = None, ts: float = 1.0, **cap: Any
) -> HypervisorObserved:
    return HypervisorObserved(uuid, name, host or name, Version(None, ts), cause("audit"), **cap)


def ops(records: list[ChangeRecord]) -> list[tuple[str, str, str]]:
    return [(r.kind, r.op, r.uuid) for r in records]


@pytest.fixture
def model(clock: FakeClock) -> ComputeModel:
    return ComputeModel(clock=clock, tombstone_ttl=600)


# -- ordering -------------------------------------------------------------------------------------


def test_older_updated_at_never_overwrites_newer(model: ComputeModel) -> None:
    model.apply(seen(updated_at=100, ts=1000, vm_state="active"))
    # Delivered later (larger envelope timestamp) but describes an earlier write: stale.
    outcome, records = model.apply_with_outcome(seen(updated_at=90, ts=2000, vm_state="stopped"))
    assert (outcome, records) == (Outcome.STALE, [])
    assert model.instance(VM).vm_state == "active"  # type: ignore[union-attr]
    outcome, _ = model.apply_with_outcome(seen(updated_at=110, ts=500, vm_state="paused"))
    assert outcome is Outcome.CHANGED
    assert model.instance(VM).vm_state == "paused"  # type: ignore[union-attr]


def test_equal_updated_at_falls_back_to_timestamp(model: ComputeModel) -> None:
    model.apply(seen(updated_at=100, ts=1000, task_state="spawning"))
    assert (
        model.apply_with_outcome(seen(updated_at=100, ts=999, task_state="networking"))[0]
        is Outcome.STALE
    )
    assert model.instance(VM).task_state == "spawning"  # type: ignore[union-attr]
    assert (
        model.apply_with_outcome(seen(updated_at=100, ts=1001, task_state=None))[0]
        is Outcome.CHANGED
    )
    assert model.instance(VM).task_state is None  # type: ignore[union-attr]


def test_timestamp_decides_when_one_side_lacks_updated_at(model: ComputeModel) -> None:
    model.apply(seen(updated_at=100, ts=1000, vm_state="active"))
    # A legacy-style observation (no updated_at) older by envelope time is stale...
    assert model.apply_with_outcome(seen(ts=900, vm_state="stopped"))[0] is Outcome.STALE
    # ...and a newer one applies.
    assert model.apply_with_outcome(seen(ts=1100, vm_state="stopped"))[0] is Outcome.CHANGED
    assert model.instance(VM).vm_state == "stopped"  # type: ignore[union-attr]


def test_stale_observation_leaves_every_field(model: ComputeModel) -> None:
    model.apply(seen(updated_at=100, ts=1000, host="h1", node="n1", flavor=TINY, locked=True))
    before = model.instance(VM)
    revision = model.revision
    stale = seen(updated_at=50, ts=50, host="h2", node="n2", flavor=None, locked=False)
    assert model.apply_with_outcome(stale) == (Outcome.STALE, [])
    assert model.instance(VM) == before and model.revision == revision
    assert model.nodes_by_host("h2") == []


# -- duplicates -----------------------------------------------------------------------------------


def test_same_message_id_is_a_duplicate(model: ComputeModel) -> None:
    model.apply(seen(ts=1, message_id="m-1", vm_state="active"))
    # Same id, even with newer content: the broker redelivered it, nothing to do.
    outcome, records = model.apply_with_outcome(seen(ts=2, message_id="m-1", vm_state="stopped"))
    assert (outcome, records) == (Outcome.DUPLICATE, [])
    assert model.instance(VM).vm_state == "active"  # type: ignore[union-attr]


def test_dedupe_window_is_bounded(clock: FakeClock) -> None:
    model = ComputeModel(clock=clock, dedupe_window=2)
    model.apply(seen(ts=1, message_id="m-1", vm_state="active"))
    model.apply(seen(ts=2, message_id="m-2", vm_state="active"))
    assert model.apply_with_outcome(seen(ts=3, message_id="m-1"))[0] is Outcome.DUPLICATE
    model.apply(seen(ts=4, message_id="m-3"))
    model.apply(seen(ts=5, message_id="m-4"))
    # m-1 has left the window: judged on its version like any other observation.
    assert model.apply_with_outcome(seen(ts=6, message_id="m-1", vm_state="error"))[0] is (
        Outcome.CHANGED
    )


# -- tombstones -----------------------------------------------------------------------------------


def test_delete_leaves_tombstone_until_ttl(model: ComputeModel, clock: FakeClock) -> None:
    model.apply(seen(updated_at=100, ts=100, vm_state="active", host="h1", node="n1"))
    records = model.apply(InstanceDeleted(VM, Version(110, 110), cause("instance.delete.end")))
    assert ops(records) == [("instance", "remove", VM)]
    assert records[0].to_dict()["object"] is None
    assert model.instance(VM) is None and VM in model.instance_tombstones
    # Later observations of any version cannot bring it back while the tombstone lives...
    for version in ((90, 90), (110, 111), (500, 500), (None, None)):
        clock.advance(100)
        outcome, records = model.apply_with_outcome(
            seen(updated_at=version[0], ts=version[1], vm_state="active")
        )
        assert (outcome, records) == (Outcome.TOMBSTONED, [])
    assert model.apply_with_outcome(InstanceDeleted(VM, Version(None, 600), cause()))[0] is (
        Outcome.TOMBSTONED
    )
    assert model.instance(VM) is None
    clock.advance(199)  # 599 s after the delete
    assert model.apply_with_outcome(seen(updated_at=700, ts=700))[0] is Outcome.TOMBSTONED
    # ...and once it expires, the uuid is judged afresh.
    clock.advance(1)
    outcome, records = model.apply_with_outcome(seen(updated_at=701, ts=701, vm_state="active"))
    assert outcome is Outcome.CHANGED and ops(records)[-1] == ("instance", "add", VM)
    assert VM not in model.instance_tombstones
    assert model.check_integrity() == []


def test_delete_before_create_is_remembered(model: ComputeModel) -> None:
    """A delete that overtakes the instance's first notification still wins."""
    assert model.apply(InstanceDeleted(VM, Version(200, 200), cause())) == []
    assert (
        model.apply_with_outcome(seen(updated_at=100, ts=100, vm_state="building"))[0]
        is Outcome.TOMBSTONED
    )
    assert model.instance(VM) is None


# -- placeholders ---------------------------------------------------------------------------------


def test_unknown_host_gets_placeholder_then_real_node(model: ComputeModel) -> None:
    records = model.apply(seen(ts=1, host="h1", node="n1", vm_state="active", flavor=TINY))
    assert [(r.kind, r.op) for r in records] == [("compute_node", "add"), ("instance", "add")]
    placeholder = model.node(records[0].uuid)
    assert placeholder is not None and placeholder.placeholder is True
    assert (placeholder.hostname, placeholder.hypervisor_hostname) == ("h1", "n1")
    assert model.instance(VM).compute_node_uuid == placeholder.uuid  # type: ignore[union-attr]
    model.apply(seen(VM2, ts=2, host="h1", node="n1"))  # a second instance shares it
    assert len(model.nodes()) == 1

    records = model.apply(hypervisor(NODE_A, "n1", "h1", vcpus=8, memory_mb=4096, disk_gb=100))
    # The real node first (so the instances can move), each instance re-pointed, then the
    # placeholder removed: one record per element changed.
    assert ops(records[:1]) == [("compute_node", "add", NODE_A)]
    assert sorted(ops(records[1:3])) == [("instance", "update", VM), ("instance", "update", VM2)]
    assert ops(records[3:]) == [("compute_node", "remove", placeholder.uuid)]
    for record in records[1:3]:
        assert record.to_dict()["changed"] == {"compute_node_uuid": [placeholder.uuid, NODE_A]}
    real = model.node(NODE_A)
    assert real is not None and not real.placeholder and real.vcpus == 8
    assert model.node(placeholder.uuid) is None
    assert {i.uuid for i in model.instances_on_node(NODE_A)} == {VM, VM2}
    assert model.usage(NODE_A).vcpus_used == 1  # type: ignore[union-attr]
    assert model.check_integrity() == []


def test_placeholder_keeps_service_status_learned_before_the_hypervisor(
    model: ComputeModel,
) -> None:
    version = Version(None, 5)
    model.apply(
        ServiceObserved(
            "h1",
            version,
            cause("service.create"),
            disabled=True,
            disabled_reason="burn-in",
            state="up",
        )
    )
    [placeholder] = model.nodes()
    assert placeholder.placeholder and placeholder.hypervisor_hostname is None
    model.apply(seen(ts=6, host="h1", node="n1"))
    assert model.nodes() == [model.node(placeholder.uuid)]  # named, not duplicated
    model.apply(hypervisor(NODE_A, "n1", "h1", ts=7))
    [real] = model.nodes()
    assert real.uuid == NODE_A and not real.placeholder
    assert (real.status, real.disabled_reason, real.state) == ("disabled", "burn-in", "up")
    assert model.instance(VM).compute_node_uuid == NODE_A  # type: ignore[union-attr]


# -- no-ops and revisions -------------------------------------------------------------------------


def test_noop_event_yields_no_records(model: ComputeModel) -> None:
    model.apply(hypervisor(NODE_A, "n1", "h1"))
    model.apply(seen(ts=1, host="h1", node="n1", vm_state="active", power_state="running"))
    revision = model.revision
    outcome, records = model.apply_with_outcome(
        seen(ts=2, host="h1", node="n1", vm_state="active", power_state="running")
    )
    assert (outcome, records, model.revision) == (Outcome.UNCHANGED, [], revision)
    # An observation that proves nothing new (every field unknown) is a no-op too.
    assert model.apply_with_outcome(seen(ts=3)) == (Outcome.UNCHANGED, [])
    service = ServiceObserved("h1", Version(None, 4), cause("service.update"), disabled=False)
    assert len(model.apply(service)) == 1
    assert model.apply_with_outcome(
        ServiceObserved("h1", Version(None, 5), cause("service.update"), disabled=False)
    ) == (Outcome.UNCHANGED, [])
    assert model.apply_with_outcome(hypervisor(NODE_A, "n1", "h1", ts=6)) == (
        Outcome.UNCHANGED,
        [],
    )
    assert model.revision == revision + 1


def scenario() -> Iterator[Any]:
    yield hypervisor(NODE_A, "n1", "h1")
    yield seen(ts=1, host="h1", node="n1", vm_state="building")
    yield seen(ts=2, host="h1", node="n1", vm_state="active")
    yield seen(ts=2.5, host="h1", node="n1", vm_state="active")  # no-op
    yield seen(VM2, ts=3, host="h2", node="n2")  # placeholder + instance
    yield ServiceObserved("h1", Version(None, 4), cause("service.update"), disabled=True)
    yield hypervisor(NODE_B, "n2", "h2", ts=5)  # replaces the placeholder
    yield seen(ts=1.5, vm_state="error")  # stale
    yield InstanceDeleted(VM, Version(None, 6), cause())
    yield ServiceDeleted("h2", Version(None, 7), cause("service.delete"))


def test_revisions_are_gap_free_and_resume(clock: FakeClock) -> None:
    model = ComputeModel(clock=clock)
    records = [r for event in scenario() for r in model.apply(event)]
    assert [r.revision for r in records] == list(range(1, len(records) + 1))
    assert model.revision == len(records)
    # A model restored at revision N continues at N + 1 (subscribers resume across restarts).
    restarted = ComputeModel(clock=clock, revision=41)
    again = [r for event in scenario() for r in restarted.apply(event)]
    assert [r.revision for r in again] == list(range(42, 42 + len(records)))
    assert [(r.kind, r.op, r.uuid, r.changed) for r in again] == [
        (r.kind, r.op, r.uuid, r.changed) for r in records
    ]


# -- services -------------------------------------------------------------------------------------


def test_service_delete_removes_nodes_and_unplaces_instances(model: ComputeModel) -> None:
    model.apply(hypervisor(NODE_A, "n1", "h1"))
    model.apply(hypervisor(NODE_B, "n2", "h1"))  # two nodes behind one service (ironic-style)
    model.apply(seen(VM, ts=2, host="h1", node="n1"))
    model.apply(seen(VM2, ts=2, host="h1", node="n2"))
    records = model.apply(ServiceDeleted("h1", Version(None, 3), cause("service.delete")))
    assert sorted(ops(records)) == sorted(
        [
            ("instance", "update", VM),
            ("instance", "update", VM2),
            ("compute_node", "remove", NODE_A),
            ("compute_node", "remove", NODE_B),
        ]
    )
    assert model.nodes() == [] and model.nodes_by_host("h1") == []
    for uuid in (VM, VM2):
        inst = model.instance(uuid)
        assert inst is not None and inst.compute_node_uuid is None and inst.host == "h1"
    assert model.check_integrity() == []
    # A report from before the delete does not resurrect the service; a newer one (the service
    # was created again) does.
    old = ServiceObserved("h1", Version(None, 2.5), cause("service.update"), disabled=False)
    assert model.apply_with_outcome(old)[0] is Outcome.TOMBSTONED
    new = ServiceObserved("h1", Version(None, 9), cause("service.create"), disabled=False)
    assert model.apply_with_outcome(new)[0] is Outcome.CHANGED
    assert [n.hostname for n in model.nodes()] == ["h1"]


def test_late_instance_report_does_not_resurrect_deleted_host(model: ComputeModel) -> None:
    """An instance.update sent before a service.delete but delivered after it names the gone
    host: like a late service report, it must not bring the host back as a (placeholder) node,
    which no audit would ever remove."""
    model.apply(hypervisor(NODE_A, "n1", "h1"))
    model.apply(seen(ts=2, host="h1", node="n1", task_state=None))
    model.apply(ServiceDeleted("h1", Version(None, 3), cause("service.delete")))
    records = model.apply(seen(ts=2.5, host="h1", node="n1", task_state="deleting"))
    assert ops(records) == [("instance", "update", VM)]
    assert model.nodes() == []
    inst = model.instance(VM)
    assert inst is not None and inst.task_state == "deleting" and inst.compute_node_uuid is None
    assert model.check_integrity() == []


def test_service_delete_older_than_node_is_stale(model: ComputeModel) -> None:
    model.apply(hypervisor(NODE_A, "n1", "h1", ts=10))
    outcome, records = model.apply_with_outcome(
        ServiceDeleted("h1", Version(None, 5), cause("service.delete"))
    )
    assert (outcome, records) == (Outcome.STALE, [])
    assert model.node(NODE_A) is not None


def test_absent_compute_node_unplaces_instances(model: ComputeModel, clock: FakeClock) -> None:
    model.apply(hypervisor(NODE_A, "n1", "h1"))
    model.apply(seen(ts=2, host="h1", node="n1"))
    clock.advance(1)
    records = model.apply(ComputeNodeAbsent(NODE_A, clock(), cause("audit")))
    assert ops(records) == [("instance", "update", VM), ("compute_node", "remove", NODE_A)]
    assert model.instance(VM).compute_node_uuid is None  # type: ignore[union-attr]
    assert model.apply(ComputeNodeAbsent(NODE_A, clock(), cause("audit"))) == []


def test_absence_spares_what_was_observed_since_the_listing_began(
    model: ComputeModel, clock: FakeClock
) -> None:
    """Whatever the stamps of Nova's hosts say, an element the model observed at or after the
    listing's start (on the model's own clock) is not deleted for being absent from it."""
    began = clock()
    clock.advance(5)
    model.apply(hypervisor(NODE_A, "n1", "h1", ts=1.0))  # Nova's stamp: long before
    model.apply(seen(updated_at=1.0, ts=1.0, host="h1", node="n1"))
    listing = Cause("audit")  # listings carry no message id
    assert model.apply_with_outcome(InstanceAbsent(VM, began, listing)) == (Outcome.STALE, [])
    assert model.apply_with_outcome(ComputeNodeAbsent(NODE_A, began, listing)) == (
        Outcome.STALE,
        [],
    )
    clock.advance(5)
    records = model.apply(InstanceAbsent(VM, clock(), listing))
    assert ops(records) == [("instance", "remove", VM)]
    assert VM in model.instance_tombstones
    assert model.check_integrity() == []


# -- readers on other threads ---------------------------------------------------------------------


def churn(rounds: int) -> Iterator[Any]:
    """Events that rewire many edges at once: moves, placeholder swaps, service deletes."""
    ts = 10.0
    instances = [f"00000000-0000-4000-8000-{i:012d}" for i in range(30)]
    for r in range(rounds):
        host = f"h{r % 4}"
        ts += 1
        for i, uuid in enumerate(instances):
            target = f"h{(r + i) % 4}"
            yield seen(uuid, ts=ts, host=target, node=f"{target}-n", vm_state="active")
        ts += 1
        yield hypervisor(f"real-{r}", f"{host}-n", host, ts=ts)  # swap placeholder/old node
        ts += 1
        yield ServiceDeleted(host, Version(None, ts), cause("service.delete"))
        ts += 1
        yield ServiceObserved(host, Version(None, ts), cause("service.create"), disabled=False)
        if r % 5 == 4:
            ts += 1
            yield InstanceDeleted(instances.pop(), Version(None, ts), cause())


def test_readers_always_see_an_integral_model(clock: FakeClock) -> None:
    model = ComputeModel(clock=clock)
    done = threading.Event()
    problems: list[str] = []
    reads = [0]

    def reader() -> None:
        while True:
            finished = done.is_set()
            dump = model.to_dict()
            node_uuids = {n["uuid"] for n in dump["compute_nodes"]}
            for inst in dump["instances"]:
                if inst["compute_node_uuid"] is not None and (
                    inst["compute_node_uuid"] not in node_uuids
                ):
                    problems.append(f"rev {dump['revision']}: {inst['uuid']} on a missing node")
            problems.extend(model.check_integrity())
            for node in model.nodes():
                for inst in model.instances_on_node(node.uuid):
                    if inst.compute_node_uuid != node.uuid:
                        problems.append(f"{inst.uuid} listed on {node.uuid} but points elsewhere")
            reads[0] += 1
            if finished or problems:
                return

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, to interleave reads with applies
    try:
        readers = [threading.Thread(target=reader) for _ in range(3)]
        for thread in readers:
            thread.start()
        applied = 0
        for event in churn(60):
            model.apply(event)
            applied += 1
        done.set()
        for thread in readers:
            thread.join(timeout=120)
    finally:
        sys.setswitchinterval(previous)
    assert not any(t.is_alive() for t in readers)
    assert problems == []
    assert reads[0] >= len(readers)
    assert applied > 1000 and model.check_integrity() == []


def test_every_proven_field_lands_in_the_element_field_of_the_same_name(
    model: ComputeModel,
) -> None:
    """The merge builds elements by position (the hot path): each event field must end up in
    the element field of the same name, and an unproven one must keep the previous value."""
    model.apply(hypervisor(NODE_A, "node-a", "host-a"))
    fields = {
        "name": "vm",
        "project_id": "project",
        "user_id": "user",
        "host": "host-a",
        "node": "node-a",
        "vm_state": "active",
        "power_state": "running",
        "task_state": "spawning",
        "flavor": TINY,
        "locked": True,
        "metadata": {"k": "v"},
    }
    model.apply(seen(updated_at=1.0, **fields))
    element = model.instance(VM)
    assert element is not None
    assert {k: getattr(element, k) for k in fields} == fields
    assert element.compute_node_uuid == NODE_A
    assert model.preview_new_instance(seen(VM2, updated_at=1.0, **fields)) == element._replace(
        uuid=VM2
    )
    # Each field alone: proven ones change, the others keep what the element had.
    stamps = iter(range(2, 100))
    for key in fields:
        if key in ("host", "node", "flavor"):
            continue
        changed = {"locked": False, "metadata": {}}.get(key, f"{fields[key]}-2")
        model.apply(seen(updated_at=next(stamps), **{key: changed}))
        after = model.instance(VM)
        assert after is not None and getattr(after, key) == changed
        assert {k: getattr(after, k) for k in fields if k != key} == {
            k: v for k, v in fields.items() if k != key
        }
        model.apply(seen(updated_at=next(stamps), **{key: fields[key]}))
