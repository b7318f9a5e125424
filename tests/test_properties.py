"""Property tests: delivery order and duplication do not change the model where versions decide.

A message bus redelivers and reorders; Nova publishes the same transition from several hosts and,
with ``notification_format=both``, in two formats. The model must end up the same however the
notifications arrive, wherever their versions say which came first. Hypothesis generates
histories of real Nova notifications (built from Nova's own samples and our recorded trace) and
delivers them in order, shuffled, with duplicates, and with legacy copies mixed in.

How the generator makes every pair of notifications for one instance ordered by version:

- envelope timestamps strictly increase over the whole history (one clock, microseconds);
- ``updated_at`` follows Nova's rule, seen in ``basic_lifecycle/trace-versioned.jsonl``: a
  notification carries the stamp (one-second resolution) of the *previous* write of its instance
  — ``null`` before the first write — so it never decreases along the history, and two
  notifications for an instance differ in ``updated_at`` or, when equal, in timestamp;
- so ``(updated_at, timestamp)`` orders any two notifications exactly as they were emitted, and
  a legacy copy (no ``updated_at``; emitted a few milliseconds before its versioned twin, as in
  ``trace-both.jsonl``) is ordered by timestamp against every other notification;
- every placement names a host and hypervisor the bootstrap snapshot lists (or no host at all),
  so no placeholder node depends on which stale notification happened to be applied first;
- no ``rebuild``/``evacuate`` events: they do not prove the host, so the host after them depends
  on what was applied before, which no version decides;
- nothing follows an instance's delete (Nova never reuses a uuid).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import uuid as uuidlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdm_sync.model import ComputeModel
from cdm_sync.nova.snapshot import read_snapshot
from tests.conftest import FakeClock, Harness
from tests.samples import TRACE_DIR, load_sample

PROPERTY_SETTINGS = settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# The cloud the histories run in: three hosts, each with one hypervisor named like its host.
SNAPSHOT = read_snapshot(TRACE_DIR / "snapshot-final.json")
NODE_UUID_BY_HYPERVISOR = {h["hypervisor_hostname"]: h["id"] for h in SNAPSHOT.hypervisors}
PLACEMENTS: list[tuple[str | None, str | None]] = [
    (h["service"]["host"], h["hypervisor_hostname"]) for h in SNAPSHOT.hypervisors
] + [(None, None)]  # shelved-offloaded / not yet scheduled

# (name, vcpus, memory_mb, root_gb, ephemeral_gb): the snapshot's flavors and one with ephemeral.
FLAVORS: list[tuple[str, int, int, int, int]] = [
    (f["name"], f["vcpus"], f["ram"], f["disk"], f["OS-FLV-EXT-DATA:ephemeral"])
    for f in SNAPSHOT.flavors
] + [("m1.ephemeral", 2, 2048, 10, 5)]

VM_STATES = [
    "building",
    "active",
    "stopped",
    "paused",
    "suspended",
    "rescued",
    "resized",
    "shelved",
    "shelved_offloaded",
    "soft-delete",
    "error",
]
POWER_STATES = ["pending", "running", "paused", "shutdown", "crashed", "suspended"]
TASK_STATES = [None, None, "spawning", "powering-off", "migrating", "resize_finish", "deleting"]

# Versioned actions a step can emit, by sample name. ``instance.live_migration_post.end`` is in
# on purpose: Nova sends it after the destination's post_dest.end and the model ignores it.
ACTIONS = [
    "instance-update",
    "instance-update",
    "instance-power_off-end",
    "instance-power_on-end",
    "instance-pause-end",
    "instance-live_migration_post_dest-end",
    "instance-live_migration_post-end",
    "instance-shelve_offload-end",
    "instance-unshelve-end",
    "instance-resize_finish-end",
    "instance-exists",
    "instance-lock",
    "instance-soft_delete-end",
    "delete",
]
IGNORED_ACTIONS = frozenset({"instance-live_migration_post-end"})

MAX_INSTANCES = 4
INSTANCE_UUIDS = [str(uuidlib.UUID(int=0xC0FFEE << 64 | i)) for i in range(MAX_INSTANCES)]
START_US = 1_795_000_000 * 1_000_000  # 2026-11-19, after the snapshot was captured
FIXED_NOW = START_US / 1e6  # the model's clock


def _legacy_template() -> dict[str, Any]:
    """The first ``compute.instance.update`` of the recorded legacy trace."""
    with open(TRACE_DIR / "trace-legacy.jsonl") as fh:
        for raw in fh:
            line = json.loads(raw)
            if line["event_type"] == "compute.instance.update":
                return line
    raise AssertionError("trace-legacy.jsonl has no compute.instance.update")


LEGACY_TEMPLATE = _legacy_template()
SAMPLES = {name: load_sample(name) for name in set(ACTIONS) - {"delete"} | {"instance-delete-end"}}


def _envelope_time(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _payload_time(seconds: int | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Fields:
    """What one notification says about its instance."""

    name: str
    project_id: str
    user_id: str
    host: str | None
    node: str | None
    vm_state: str
    power_state: str
    task_state: str | None
    flavor: tuple[str, int, int, int, int]
    locked: bool
    metadata: tuple[tuple[str, str], ...]

    def expected_dump(self, uuid: str) -> dict[str, Any]:
        """The instance as FORMATS.md §3 should show it when this is its latest notification."""
        name, vcpus, ram, root, ephemeral = self.flavor
        return {
            "uuid": uuid,
            "name": self.name,
            "project_id": self.project_id,
            "user_id": self.user_id,
            "host": self.host,
            "node": self.node,
            "compute_node_uuid": NODE_UUID_BY_HYPERVISOR.get(self.node) if self.node else None,
            "vm_state": self.vm_state,
            "power_state": self.power_state,
            "task_state": self.task_state,
            "flavor": {"name": name, "vcpus": vcpus, "ram": ram, "disk": root},
            "vcpus": vcpus,
            "memory_mb": ram,
            "disk_gb": root + ephemeral,
            "locked": self.locked,
            "metadata": dict(self.metadata),
        }


@dataclass(frozen=True)
class Notice:
    """One generated notification and what the oracle needs to know about it."""

    line: dict[str, Any]
    uuid: str
    fields: Fields
    deletes: bool
    legacy: bool = False
    ignored: bool = False

    def __repr__(self) -> str:  # compact, for Hypothesis' falsifying examples
        f, data = self.fields, self.line["payload"].get("nova_object.data", {})
        return (
            f"<{self.line['event_type']} {self.uuid[-4:]} at {self.line['metadata']['timestamp']}"
            f" updated_at={data.get('updated_at')} {f.vm_state}/{f.power_state}/{f.task_state}"
            f" on {f.host} {f.flavor[0]} locked={f.locked} meta={dict(f.metadata)}>"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


@dataclass
class History:
    versioned: list[Notice] = field(default_factory=list)  # emission order, versioned only
    both: list[Notice] = field(default_factory=list)  # emission order, legacy copies included

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("History(emission order:\n  " + "\n  ".join(map(repr, self.both)) + ")")

    def expected_instances(self) -> dict[str, dict[str, Any] | None]:
        """Per instance, the dump of its latest proving notification, or None once deleted."""
        expected: dict[str, dict[str, Any] | None] = {}
        for notice in self.versioned:
            if notice.ignored:
                continue
            expected[notice.uuid] = (
                None if notice.deletes else notice.fields.expected_dump(notice.uuid)
            )
        return expected


def _versioned_line(
    sample: str, uuid: str, f: Fields, updated_at: int | None, stamp_us: int, message_id: str
) -> dict[str, Any]:
    base = SAMPLES[sample]
    payload = copy.deepcopy(base["payload"])
    data = payload["nova_object.data"]
    name, vcpus, ram, root, ephemeral = f.flavor
    data.update(
        uuid=uuid,
        display_name=f.name,
        tenant_id=f.project_id,
        user_id=f.user_id,
        host=f.host,
        node=f.node,
        state=f.vm_state,
        power_state=f.power_state,
        task_state=f.task_state,
        locked=f.locked,
        metadata=dict(f.metadata),
        updated_at=_payload_time(updated_at),
    )
    data["flavor"]["nova_object.data"].update(
        name=name, vcpus=vcpus, memory_mb=ram, root_gb=root, ephemeral_gb=ephemeral
    )
    return {
        "priority": "info",
        "publisher_id": f"nova-compute:{f.host or 'controller'}",
        "event_type": base["event_type"],
        "payload": payload,
        "metadata": {"message_id": message_id, "timestamp": _envelope_time(stamp_us)},
        "ctxt": {},
    }


def _legacy_line(uuid: str, f: Fields, stamp_us: int, message_id: str) -> dict[str, Any]:
    line = copy.deepcopy(LEGACY_TEMPLATE)
    name, vcpus, ram, root, ephemeral = f.flavor
    line["payload"].update(
        instance_id=uuid,
        display_name=f.name,
        tenant_id=f.project_id,
        user_id=f.user_id,
        host=f.host,
        node=f.node,
        state=f.vm_state,
        state_description=f.task_state or "",
        instance_type=name,
        vcpus=vcpus,
        memory_mb=ram,
        root_gb=root,
        ephemeral_gb=ephemeral,
        disk_gb=root + ephemeral,
        metadata=dict(f.metadata),
    )
    line["publisher_id"] = f"compute.{f.host or 'controller'}"
    line["metadata"] = {"message_id": message_id, "timestamp": _envelope_time(stamp_us)}
    return line


fields_strategy = st.builds(
    Fields,
    name=st.sampled_from(["vm-a", "vm-b", "vm-renamed"]),
    project_id=st.sampled_from(["6f70656e737461636b20342065766572", "project-b"]),
    user_id=st.sampled_from(["admin", "demo"]),
    host=st.just(None),  # replaced from the placement below, so host and node agree
    node=st.just(None),
    vm_state=st.sampled_from(VM_STATES),
    power_state=st.sampled_from(POWER_STATES),
    task_state=st.sampled_from(TASK_STATES),
    flavor=st.sampled_from(FLAVORS),
    locked=st.booleans(),
    metadata=st.sampled_from([(), (("k", "v"),), (("role", "db"), ("tier", "1"))]),
)

step_strategy = st.fixed_dictionaries(
    {
        "instance": st.integers(0, MAX_INSTANCES - 1),
        "action": st.sampled_from(ACTIONS),
        "fields": fields_strategy,
        "placement": st.sampled_from(PLACEMENTS),
        # Whether this notification reports a DB write (instance.update always does).
        "writes": st.booleans(),
        # Microseconds since the previous notification: often within the same second, sometimes
        # across it, rarely a pause longer than the legacy-supersede window (300 s).
        "gap_us": st.one_of(
            st.integers(1, 2_500_000), st.sampled_from([999_999, 1_000_000, 400_000_000])
        ),
        "legacy_copy": st.booleans(),
        "legacy_lead_us": st.integers(1, 20_000),
    }
)


@st.composite
def histories(draw: st.DrawFn, *, legacy: bool = False, force_delete: bool = False) -> History:
    """An emission-ordered history; see the module docstring for how versions order it."""
    n_instances = draw(st.integers(1, MAX_INSTANCES))
    steps = draw(st.lists(step_strategy, min_size=1, max_size=25))
    if force_delete:
        steps.append(dict(draw(step_strategy), action="delete"))
    history = History()
    clock = START_US
    last_write: dict[str, int] = {}  # uuid -> whole second of its latest write
    deleted: set[str] = set()
    ids = (str(uuidlib.UUID(int=n)) for n in itertools.count(1))

    def emit(sample: str, uuid: str, f: Fields, step: dict[str, Any], gap: int) -> None:
        nonlocal clock
        clock += gap
        deletes = f.vm_state == "deleted"
        if legacy and sample == "instance-update" and step["legacy_copy"]:
            # Nova emits the legacy copy a few milliseconds before the versioned one.
            notice = Notice(_legacy_line(uuid, f, clock, next(ids)), uuid, f, deletes, legacy=True)
            history.both.append(notice)
            clock += step["legacy_lead_us"]
        line = _versioned_line(sample, uuid, f, last_write.get(uuid), clock, next(ids))
        notice = Notice(line, uuid, f, deletes, ignored=sample in IGNORED_ACTIONS)
        history.versioned.append(notice)
        history.both.append(notice)
        if sample == "instance-update" or step["writes"]:
            last_write[uuid] = clock // 1_000_000

    for step in steps:
        uuid = INSTANCE_UUIDS[step["instance"] % n_instances]
        if uuid in deleted:
            continue
        host, node = step["placement"]
        f = dataclasses.replace(step["fields"], host=host, node=node)
        if step["action"] == "delete":
            # As Nova does: an instance.update reporting the deleted state, then delete.end.
            gone = dataclasses.replace(f, vm_state="deleted", task_state=None)
            emit("instance-update", uuid, gone, step, step["gap_us"])
            emit("instance-delete-end", uuid, gone, step, step["legacy_lead_us"])
            deleted.add(uuid)
        else:
            emit(step["action"], uuid, f, step, step["gap_us"])
    return history


@st.composite
def redeliveries(draw: st.DrawFn, notices: list[Notice]) -> list[Notice]:
    """The same notifications shuffled, some delivered again (same message id) anywhere."""
    order = list(draw(st.permutations(notices)))
    extra = draw(st.lists(st.tuples(st.sampled_from(notices), st.integers(0, 10**6)), max_size=10))
    for notice, where in extra:
        order.insert(where % (len(order) + 1), notice)
    return order


def replay(notices: list[Notice]) -> ComputeModel:
    """Deliver through the live endpoints, checking the model's invariants after each one."""
    harness = Harness(FakeClock(FIXED_NOW))  # the clock stands still: no tombstone expires
    harness.bootstrap(SNAPSHOT)
    model = harness.model
    deleted: set[str] = set()
    for n, notice in enumerate(notices):
        harness.deliver(notice.line)
        assert model.check_integrity() == [], f"after delivery {n}: {notice.line['event_type']}"
        if notice.deletes and not notice.legacy:
            deleted.add(notice.uuid)
        # Deletes are final: nothing delivered later, older or newer, brings an instance back.
        # (A legacy copy may be dropped as superseded; its versioned twin is the delete.)
        for uuid in deleted:
            assert model.instance(uuid) is None, f"{uuid} back after delivery {n}"
    return model


def dump(model: ComputeModel) -> dict[str, Any]:
    doc = model.to_dict()
    del doc["revision"]
    return doc


@PROPERTY_SETTINGS
@given(histories())
def test_in_order_delivery_matches_the_latest_notification(history: History) -> None:
    """Delivered in order, each instance ends as its latest notification says (or absent)."""
    model = replay(history.versioned)
    for uuid, expected in history.expected_instances().items():
        got = model.instance(uuid)
        assert (got.to_dict() if got is not None else None) == expected
    # Instance notifications naming known hosts never add, drop or alter compute nodes.
    assert dump(model)["compute_nodes"] == dump(replay([]))["compute_nodes"]


@PROPERTY_SETTINGS
@given(st.data(), histories())
def test_reordered_and_duplicated_delivery_gives_the_in_order_model(
    data: st.DataObject, history: History
) -> None:
    in_order = dump(replay(history.versioned))
    shuffled = data.draw(redeliveries(history.versioned), label="delivery order")
    assert dump(replay(shuffled)) == in_order


@PROPERTY_SETTINGS
@given(st.data(), histories(force_delete=True))
def test_deletes_are_final_under_any_reordering(data: st.DataObject, history: History) -> None:
    """``replay`` asserts after every delivery that no deleted instance is present."""
    shuffled = data.draw(redeliveries(history.versioned), label="delivery order")
    model = replay(shuffled)
    deleted = {n.uuid for n in history.versioned if n.deletes}
    assert deleted, "the generator was asked for a delete"
    assert all(model.instance(uuid) is None for uuid in deleted)
    assert {i["uuid"] for i in dump(model)["instances"]}.isdisjoint(deleted)


@PROPERTY_SETTINGS
@given(st.data(), histories(legacy=True))
def test_both_formats_give_the_versioned_only_model(data: st.DataObject, history: History) -> None:
    """Legacy ``compute.instance.update`` copies of the same transitions change nothing in the
    end, whether delivered in emission order or shuffled with duplicates."""
    versioned_only = dump(replay(history.versioned))
    assert dump(replay(history.both)) == versioned_only
    shuffled = data.draw(redeliveries(history.both), label="delivery order")
    assert dump(replay(shuffled)) == versioned_only
