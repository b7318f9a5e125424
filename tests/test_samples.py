"""Nova's own notification samples, and legacy payloads from a real trace, through the live path.

Every ``instance.*`` and ``service.*`` sample Nova publishes is delivered through the endpoints
the listener uses into a model seeded from a snapshot, and the model afterwards must say what
the payload says (expectations are read from the payload, never copied by hand). The semantic
cases are the ones where believing a notification blindly corrupts the model: the source's late
``live_migration_post.end``, an evacuation's ``rebuild.end`` naming the dead host, a shelved
offloaded instance, a forced-down service, and conductors publishing under their own host name.
"""

from __future__ import annotations

import copy
import json
import uuid as uuidlib
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import oslo_messaging
import pytest

from cdm_sync.messaging.endpoints import Dispatcher, make_endpoints
from cdm_sync.model import ComputeModel, Instance
from cdm_sync.nova.event_types import NOVA_EVENT_TYPES
from cdm_sync.sync.service import SyncService
from tests.conftest import Harness, NovaListing
from tests.samples import TRACE_DIR, load_sample, sample_names

# Timeline of the sample scenarios: the seed snapshot predates every sample's ``updated_at``
# (2012-10-29T13:42:11Z) and delivery comes after it.
SEED_CAPTURED = "2012-10-29T13:00:00Z"
SEED_UPDATED = "2012-10-29T12:00:00Z"
DELIVERED = datetime(2012, 10, 29, 13, 42, 12, tzinfo=UTC)

ORIGIN_HOST, ORIGIN_NODE = "origin", "origin-node"

_ALL = {name: load_sample(name) for name in sample_names()}
INSTANCE_SAMPLES = sorted(n for n, s in _ALL.items() if s["event_type"].startswith("instance."))
SERVICE_SAMPLES = sorted(n for n, s in _ALL.items() if s["event_type"].startswith("service."))
OTHER_SAMPLES = sorted(set(_ALL) - set(INSTANCE_SAMPLES) - set(SERVICE_SAMPLES))

# Payloads of these name the host the instance had before the operation (the dead source on an
# evacuation), so they must not move the instance.
NOT_PLACING = ("instance.rebuild", "instance.evacuate")

# Power state names Nova reports, in an order used to pick "some other" value for a seed.
POWER_CODES = {"pending": 0, "running": 1, "paused": 3, "shutdown": 4, "crashed": 6}


def node_uuid(hypervisor_hostname: str) -> str:
    """A stable, real-looking compute node uuid per hypervisor name, for seeded clouds."""
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, f"{hypervisor_hostname}.test"))


def oslo_time(when: datetime) -> str:
    """An envelope timestamp as oslo.messaging writes it."""
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")


def iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def data_of(sample: Mapping[str, Any]) -> dict[str, Any]:
    return sample["payload"]["nova_object.data"]


def trace_line(
    sample: Mapping[str, Any],
    *,
    at: datetime = DELIVERED,
    message_id: str | None = None,
    publisher_id: str | None = None,
    **data: Any,
) -> dict[str, Any]:
    """A FORMATS §2 trace line from a sample, with payload data fields overridden."""
    line = copy.deepcopy(dict(sample))
    line["payload"]["nova_object.data"].update(data)
    if publisher_id is not None:
        line["publisher_id"] = publisher_id
    line["metadata"] = {
        "message_id": message_id or str(uuidlib.uuid4()),
        "timestamp": oslo_time(at),
    }
    line["ctxt"] = {}
    return line


def other(value: Any, choices: list[Any]) -> Any:
    """The first of ``choices`` that differs from ``value`` (seed values the sample must change)."""
    return next(c for c in choices if c != value)


def seed_cloud(
    listing: NovaListing, hosts: list[tuple[str, str]], **service: Any
) -> dict[str, str]:
    """Add ``(host, hypervisor)`` pairs plus the origin host; returns hypervisor -> node uuid."""
    nodes: dict[str, str] = {}
    for host, hypervisor in [(ORIGIN_HOST, ORIGIN_NODE), *hosts]:
        if hypervisor in nodes:
            continue
        nodes[hypervisor] = node_uuid(hypervisor)
        listing.add_host(host, hypervisor, node_uuid=nodes[hypervisor], **service)
    return nodes


def seed_instance_unlike(listing: NovaListing, data: Mapping[str, Any]) -> None:
    """The sample's instance on the origin host, every field different from the payload's."""
    flavor = data["flavor"]["nova_object.data"]
    listing.add_flavor("seed", "m1.seed", flavor["vcpus"] + 3, flavor["memory_mb"] + 1024, 77, 5)
    listing.add_server(
        data["uuid"],
        host=ORIGIN_HOST,
        node=ORIGIN_NODE,
        flavor_id="seed",
        vm_state=other(data["state"], ["error", "active"]),
        power_state=POWER_CODES[other(data["power_state"], ["crashed", "running"])],
        task_state=other(data["task_state"], ["image_uploading", None]),
        name="seed-name",
        tenant_id="seed-project",
        user_id="seed-user",
        locked=not data["locked"],
        metadata={"seeded": "yes"},
        updated=SEED_UPDATED,
    )


def assert_instance_as_payload(inst: Instance | None, data: Mapping[str, Any]) -> None:
    """Every field a versioned InstancePayload carries, as the payload says."""
    assert inst is not None
    flavor = data["flavor"]["nova_object.data"]
    dumped = inst.to_dict()
    assert dumped["vm_state"] == data["state"]
    assert dumped["power_state"] == data["power_state"]
    assert dumped["task_state"] == data["task_state"]
    assert dumped["locked"] is data["locked"]
    assert dumped["name"] == data["display_name"]
    assert dumped["project_id"] == data["tenant_id"]
    assert dumped["user_id"] == data["user_id"]
    assert dumped["metadata"] == data["metadata"]
    assert dumped["flavor"] == {
        "name": flavor["name"],
        "vcpus": flavor["vcpus"],
        "ram": flavor["memory_mb"],
        "disk": flavor["root_gb"],
    }
    assert dumped["vcpus"] == flavor["vcpus"]
    assert dumped["memory_mb"] == flavor["memory_mb"]
    assert dumped["disk_gb"] == flavor["root_gb"] + flavor["ephemeral_gb"]


# -- every versioned instance sample ---------------------------------------------------------------


@pytest.mark.parametrize("name", INSTANCE_SAMPLES)
def test_instance_sample(
    name: str, harness: Harness, nova_listing: Callable[..., NovaListing]
) -> None:
    sample = _ALL[name]
    event_type, data = sample["event_type"], data_of(sample)
    listing = nova_listing("2.104", captured_at=SEED_CAPTURED)
    placed = [(data["host"], data["node"])] if data["host"] else []
    nodes = seed_cloud(listing, placed)
    seed_instance_unlike(listing, data)
    harness.bootstrap(listing.snapshot())
    model = harness.model
    before = model.instance(data["uuid"])
    assert before is not None and before.compute_node_uuid == nodes[ORIGIN_NODE]

    records = harness.deliver(trace_line(sample))

    if event_type == "instance.live_migration_post.end":
        # The source's late report of a finished migration proves nothing new.
        assert records == []
        assert model.instance(data["uuid"]) == before
        assert harness.outcomes(event_type) == {"irrelevant": 1}
    elif data["state"] == "deleted":
        assert model.instance(data["uuid"]) is None
        assert data["uuid"] in model.instance_tombstones
        assert [(r.kind, r.op, r.uuid) for r in records] == [("instance", "remove", data["uuid"])]
        assert model.node(nodes[ORIGIN_NODE]) is not None  # the node outlives its instance
        # A later observation of the deleted instance cannot bring it back.
        late = trace_line(
            _ALL["instance-update"],
            at=DELIVERED + timedelta(seconds=5),
            uuid=data["uuid"],
            state="active",
            updated_at=iso(DELIVERED + timedelta(seconds=4)),
        )
        assert harness.deliver(late) == []
        assert model.instance(data["uuid"]) is None
        assert harness.outcomes("instance.update") == {"tombstoned": 1}
    else:
        inst = model.instance(data["uuid"])
        assert_instance_as_payload(inst, data)
        assert inst is not None
        if event_type.startswith(NOT_PLACING):
            assert (inst.host, inst.node, inst.compute_node_uuid) == (
                before.host,
                before.node,
                before.compute_node_uuid,
            )
        else:
            assert (inst.host, inst.node) == (data["host"], data["node"])
            expected_node = nodes[data["node"]] if data["node"] else None
            assert inst.compute_node_uuid == expected_node
        assert [(r.kind, r.op) for r in records] == [("instance", "update")]
        assert harness.outcomes(event_type) == {"changed": 1}
    assert model.check_integrity() == []
    # Nothing the payload names becomes a node: every node is one the snapshot described.
    assert {n.uuid for n in model.nodes()} == set(nodes.values())


@pytest.mark.parametrize("name", INSTANCE_SAMPLES)
def test_instance_sample_creates_unknown_instance(name: str, harness: Harness) -> None:
    """Into an empty model: the instance appears (or, for a delete, a tombstone does)."""
    sample = _ALL[name]
    event_type, data = sample["event_type"], data_of(sample)
    records = harness.deliver(trace_line(sample))
    model = harness.model
    if event_type == "instance.live_migration_post.end":
        assert records == [] and model.instance(data["uuid"]) is None
    elif data["state"] == "deleted":
        assert records == [] and model.instance(data["uuid"]) is None
        assert data["uuid"] in model.instance_tombstones
    else:
        inst = model.instance(data["uuid"])
        assert_instance_as_payload(inst, data)
        assert inst is not None
        placed = not event_type.startswith(NOT_PLACING) and data["host"] is not None
        if placed:
            # No snapshot described the host: a placeholder node stands in for it.
            node = model.node_of_instance(data["uuid"])
            assert node is not None and node.placeholder
            assert (node.hostname, node.hypervisor_hostname) == (data["host"], data["node"])
        else:
            assert inst.compute_node_uuid is None
            assert model.nodes() == []
    assert model.check_integrity() == []


# -- every versioned service sample ----------------------------------------------------------------


@pytest.mark.parametrize("name", SERVICE_SAMPLES)
def test_service_sample(
    name: str, harness: Harness, nova_listing: Callable[..., NovaListing]
) -> None:
    sample = _ALL[name]
    event_type, data = sample["event_type"], data_of(sample)
    host = data["host"]
    listing = nova_listing("2.104", captured_at=SEED_CAPTURED)
    # Seeded opposite to what the payload says, so the notification has to change it.
    nodes = seed_cloud(
        listing,
        [(host, host), ("bystander", "bystander")],
        status="enabled" if data["disabled"] else "disabled",
        state="up" if data["forced_down"] else "down",
        disabled_reason="seeded reason",
    )
    listing.add_flavor("1", "m1.tiny", 1, 512, 1)
    server = str(uuidlib.uuid4())
    listing.add_server(server, host=host, node=host, flavor_id="1")
    harness.bootstrap(listing.snapshot())
    model = harness.model
    bystander = model.node(nodes["bystander"])

    records = harness.deliver(trace_line(sample))

    assert model.node(nodes["bystander"]) == bystander
    if event_type == "service.delete":
        assert model.nodes_by_host(host) == []
        assert model.node(nodes[host]) is None
        assert host in model.host_tombstones
        inst = model.instance(server)
        assert inst is not None and inst.compute_node_uuid is None and inst.host == host
        assert [(r.kind, r.op, r.uuid) for r in records] == [
            ("instance", "update", server),
            ("compute_node", "remove", nodes[host]),
        ]
    else:
        [node] = model.nodes_by_host(host)
        assert node.uuid == nodes[host] and not node.placeholder
        assert node.status == ("disabled" if data["disabled"] else "enabled")
        assert node.state == ("down" if data["forced_down"] else "up")
        assert node.disabled_reason == data["disabled_reason"]
        assert [(r.kind, r.op, r.uuid) for r in records] == [
            ("compute_node", "update", nodes[host])
        ]
        assert model.node_of_instance(server) == node
    assert harness.outcomes(event_type) == {"changed": 1}
    assert model.check_integrity() == []


@pytest.mark.parametrize("name", ["service-create", "service-update"])
def test_service_sample_for_unknown_host_makes_placeholder(name: str, harness: Harness) -> None:
    sample = _ALL[name]
    data = data_of(sample)
    harness.deliver(trace_line(sample, disabled=True, disabled_reason="new rack"))
    [node] = harness.model.nodes_by_host(data["host"])
    assert node.placeholder
    assert (node.status, node.disabled_reason, node.state) == ("disabled", "new rack", "up")


def test_service_of_other_binary_changes_nothing(harness: Harness) -> None:
    sample = _ALL["service-update"]
    records = harness.deliver(trace_line(sample, binary="nova-conductor"))
    assert records == [] and harness.model.nodes() == []
    assert harness.outcomes("service.update") == {"irrelevant": 1}


# -- notifications we do not handle ----------------------------------------------------------------


@pytest.mark.parametrize("name", OTHER_SAMPLES)
def test_other_samples_are_counted_unhandled(
    name: str, harness: Harness, nova_listing: Callable[..., NovaListing]
) -> None:
    sample = _ALL[name]
    listing = nova_listing("2.104", captured_at=SEED_CAPTURED)
    seed_cloud(listing, [("compute", "fake-mini")])
    harness.bootstrap(listing.snapshot())
    before = harness.model.to_dict()
    assert harness.deliver(trace_line(sample)) == []
    assert harness.model.to_dict() == before
    assert harness.outcomes(sample["event_type"]) == {"unhandled": 1}


def _line_of(event_type: str, publisher_id: str = "x:y", payload: Any = None) -> dict[str, Any]:
    """A minimal trace line (no sample behind it): for event types no endpoint handles."""
    return {
        "priority": "info",
        "publisher_id": publisher_id,
        "event_type": event_type,
        "payload": payload,
        "metadata": {"message_id": str(uuidlib.uuid4())},
    }


@pytest.mark.parametrize(
    "event_type", ["aggregate.create.end", "scheduler.select_destinations.end"]
)
def test_unknown_event_type_with_odd_payload_never_raises(
    event_type: str, harness: Harness
) -> None:
    for payload in (None, "text", [], {"nova_object.name": "Mystery", "nova_object.data": {}}):
        assert harness.deliver(_line_of(event_type, payload=payload)) == []
    assert harness.outcomes(event_type) == {"unhandled": 4}


# -- the semantic cases ----------------------------------------------------------------------------


@pytest.fixture
def two_hosts(harness: Harness, nova_listing: Callable[..., NovaListing]) -> dict[str, str]:
    """The sample instance on ``compute``/``fake-mini``, with ``host2`` ready to receive it."""
    listing = nova_listing("2.104", captured_at=SEED_CAPTURED)
    nodes = seed_cloud(listing, [("compute", "fake-mini"), ("host2", "host2")])
    listing.add_flavor("1", "m1.tiny", 1, 512, 1)
    data = data_of(_ALL["instance-update"])
    listing.add_server(
        data["uuid"], host="compute", node="fake-mini", flavor_id="1", updated=SEED_UPDATED
    )
    harness.bootstrap(listing.snapshot())
    return nodes


def step(n: float) -> datetime:
    return DELIVERED + timedelta(seconds=n)


def test_live_migration_source_post_end_after_dest(
    harness: Harness, two_hosts: dict[str, str]
) -> None:
    post_dest = _ALL["instance-live_migration_post_dest-end"]
    post_src = _ALL["instance-live_migration_post-end"]
    uuid = data_of(post_dest)["uuid"]
    harness.deliver(trace_line(_ALL["instance-live_migration_pre-start"], at=step(0)))
    harness.deliver(trace_line(post_dest, at=step(2), updated_at=iso(step(1))))
    moved = harness.model.instance(uuid)
    assert moved is not None
    assert (moved.host, moved.node) == (data_of(post_dest)["host"], data_of(post_dest)["node"])
    assert moved.compute_node_uuid == two_hosts["host2"]
    # The source's notification comes later, is newer by every stamp, and still names the source.
    assert data_of(post_src)["host"] != moved.host
    late = trace_line(post_src, at=step(4), updated_at=iso(step(3)))
    assert harness.deliver(late) == []
    assert harness.model.instance(uuid) == moved
    assert harness.model.instances_on_node(two_hosts["fake-mini"]) == []


@pytest.mark.parametrize("update_first", [False, True], ids=["rebuild-then-update", "update-first"])
def test_evacuation_rebuild_end_names_dead_source(
    update_first: bool, harness: Harness, two_hosts: dict[str, str]
) -> None:
    update = _ALL["instance-update"]
    uuid = data_of(update)["uuid"]
    source = {"host": "compute", "node": "fake-mini"}
    evacuate = trace_line(_ALL["instance-evacuate"], at=step(0), **source)
    rebuild_start = trace_line(_ALL["instance-rebuild-start"], at=step(1), **source)
    rebuild_end = trace_line(
        _ALL["instance-rebuild-end"],
        at=step(5 if update_first else 3),
        updated_at=iso(step(2)),
        **source,
    )
    arrived = trace_line(
        update,
        at=step(4),
        host="host2",
        node="host2",
        state="active",
        power_state="running",
        task_state=None,
        updated_at=iso(step(2)),
    )
    harness.replay([evacuate, rebuild_start])
    if update_first:
        harness.replay([arrived, rebuild_end])
    else:
        harness.deliver(rebuild_end)
        still = harness.model.instance(uuid)
        assert still is not None
        assert (still.host, still.vm_state, still.task_state) == (
            "compute",
            data_of(_ALL["instance-rebuild-end"])["state"],
            None,
        )
        assert still.compute_node_uuid == two_hosts["fake-mini"]
        harness.deliver(arrived)
    inst = harness.model.instance(uuid)
    assert inst is not None
    assert (inst.host, inst.node, inst.compute_node_uuid) == ("host2", "host2", two_hosts["host2"])
    assert inst.vm_state == "active" and inst.task_state is None
    assert harness.model.instances_on_node(two_hosts["fake-mini"]) == []


def test_shelve_offload_leaves_no_host(harness: Harness, two_hosts: dict[str, str]) -> None:
    offload = _ALL["instance-shelve_offload-end"]
    data = data_of(offload)
    assert data["host"] is None and data["node"] is None
    harness.deliver(trace_line(_ALL["instance-shelve-end"], at=step(0)))
    assert harness.model.node_of_instance(data["uuid"]) == harness.model.node(
        two_hosts["fake-mini"]
    )
    records = harness.deliver(trace_line(offload, at=step(1), updated_at=iso(step(1))))
    inst = harness.model.instance(data["uuid"])
    assert inst is not None
    assert (inst.host, inst.node, inst.compute_node_uuid) == (None, None, None)
    assert inst.vm_state == data["state"]
    assert harness.model.instances_on_host("compute") == []
    [record] = records
    assert record.to_dict()["changed"]["host"] == ["compute", None]
    # Unshelving elsewhere places it again.
    unshelve = trace_line(
        _ALL["instance-unshelve-end"],
        at=step(3),
        updated_at=iso(step(2)),
        host="host2",
        node="host2",
    )
    harness.deliver(unshelve)
    assert harness.model.node_of_instance(data["uuid"]) == harness.model.node(two_hosts["host2"])


def test_forced_down_service_is_down(harness: Harness, two_hosts: dict[str, str]) -> None:
    sample = _ALL["service-update"]
    harness.deliver(trace_line(sample, at=step(0), host="host2", forced_down=True))
    assert harness.model.node(two_hosts["host2"]).state == "down"  # type: ignore[union-attr]
    harness.deliver(trace_line(sample, at=step(1), host="host2", forced_down=False))
    assert harness.model.node(two_hosts["host2"]).state == "up"  # type: ignore[union-attr]
    # An older report of the forced-down state, delivered late, does not win.
    harness.deliver(trace_line(sample, at=step(0.5), host="host2", forced_down=True))
    assert harness.model.node(two_hosts["host2"]).state == "up"  # type: ignore[union-attr]
    assert harness.outcomes("service.update") == {"changed": 2, "stale": 1}


def test_conductor_publisher_is_not_a_host(harness: Harness, two_hosts: dict[str, str]) -> None:
    update = _ALL["instance-update"]
    fresh = str(uuidlib.uuid4())
    scheduling = trace_line(
        update,
        at=step(0),
        publisher_id="nova-conductor:controller",
        uuid=fresh,
        host=None,
        node=None,
        state="building",
        task_state="scheduling",
    )
    harness.deliver(scheduling)
    inst = harness.model.instance(fresh)
    assert inst is not None and (inst.host, inst.node, inst.compute_node_uuid) == (None, None, None)
    assert harness.model.nodes_by_host("controller") == []
    placed = trace_line(
        update,
        at=step(1),
        publisher_id="nova-compute:controller",
        uuid=fresh,
        state="building",
        task_state="spawning",
        updated_at=iso(step(1)),
    )
    harness.deliver(placed)
    assert harness.model.node_of_instance(fresh) == harness.model.node(two_hosts["fake-mini"])
    assert harness.model.nodes_by_host("controller") == []
    assert {n.uuid for n in harness.model.nodes()} == set(two_hosts.values())


# -- legacy compute.instance.* payloads ------------------------------------------------------------


def _trace(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (TRACE_DIR / name).read_text().splitlines() if line]


LEGACY_LINES = _trace("trace-legacy.jsonl")
BOTH_LINES = _trace("trace-both.jsonl")
# The first line of every legacy instance event type the real trace has.
LEGACY_FIRST: dict[str, dict[str, Any]] = {}
for line_ in LEGACY_LINES:
    if line_["event_type"].startswith("compute.instance."):
        LEGACY_FIRST.setdefault(line_["event_type"], line_)

# Completed actions whose outcome fixes the power state in Nova (the versioned twin says which).
POWER_FIXING_ENDS = {
    "compute.instance.create.end",
    "compute.instance.power_off.end",
    "compute.instance.power_on.end",
    "compute.instance.pause.end",
    "compute.instance.unpause.end",
    "compute.instance.suspend.end",
    "compute.instance.resume.end",
    "compute.instance.reboot.end",
}


def versioned_twin(legacy: Mapping[str, Any]) -> dict[str, Any]:
    """The versioned notification of the same transition, from the interleaved trace."""
    position = next(
        i
        for i, line in enumerate(BOTH_LINES)
        if line["metadata"]["message_id"] == legacy["metadata"]["message_id"]
    )
    wanted = legacy["event_type"].removeprefix("compute.")
    uuid = legacy["payload"]["instance_id"]
    return next(
        line
        for line in BOTH_LINES[position + 1 :]
        if line["event_type"] == wanted and data_of(line)["uuid"] == uuid
    )


@pytest.fixture
def legacy_cloud(nova_listing: Callable[..., NovaListing]) -> NovaListing:
    """The trace's three hosts plus the origin, as listed before the trace started."""
    listing = nova_listing("2.53", captured_at="2026-11-22T00:00:00Z")
    seed_cloud(listing, [(h, h) for h in ("compute1", "compute2", "compute3")])
    return listing


def seed_legacy_instance(
    harness: Harness, listing: NovaListing, payload: Mapping[str, Any]
) -> Instance:
    listing.add_flavor("seed", "m1.seed", 9, 9999, 99)
    listing.add_server(
        payload["instance_id"],
        host=ORIGIN_HOST,
        node=ORIGIN_NODE,
        flavor_id="seed",
        vm_state=other(payload["state"], ["error", "active"]),
        power_state=POWER_CODES["crashed"],
        task_state="image_uploading",
        name="seed",
        tenant_id="seed-project",
        user_id="seed-user",
        locked=True,
        updated="2026-11-21T23:00:00Z",
    )
    harness.bootstrap(listing.snapshot())
    seeded = harness.model.instance(payload["instance_id"])
    assert seeded is not None
    return seeded


@pytest.mark.parametrize("event_type", sorted(LEGACY_FIRST))
def test_legacy_event_from_trace(
    event_type: str, harness: Harness, legacy_cloud: NovaListing
) -> None:
    line = LEGACY_FIRST[event_type]
    payload = line["payload"]
    seeded = seed_legacy_instance(harness, legacy_cloud, payload)
    model = harness.model
    records = harness.deliver(line)
    uuid = payload["instance_id"]
    if event_type == "compute.instance.delete.end":
        assert model.instance(uuid) is None and uuid in model.instance_tombstones
        assert [(r.kind, r.op) for r in records] == [("instance", "remove")]
        return
    inst = model.instance(uuid)
    assert inst is not None
    dumped = inst.to_dict()
    assert dumped["vm_state"] == payload["state"]
    assert dumped["task_state"] == (payload["state_description"] or None)
    assert (dumped["host"], dumped["node"]) == (payload["host"], payload["node"])
    assert dumped["compute_node_uuid"] == (node_uuid(payload["node"]) if payload["node"] else None)
    assert dumped["name"] == payload["display_name"]
    assert dumped["project_id"] == payload["tenant_id"]
    assert dumped["user_id"] == payload["user_id"]
    assert dumped["metadata"] == payload["metadata"]
    assert dumped["flavor"] == {
        "name": payload["instance_type"],
        "vcpus": payload["vcpus"],
        "ram": payload["memory_mb"],
        "disk": payload["root_gb"],
    }
    assert dumped["disk_gb"] == payload["root_gb"] + payload["ephemeral_gb"]
    # Legacy payloads carry no lock and no power state: the lock stays as known, and the power
    # state either stays or becomes what the versioned twin of the same transition reports.
    assert inst.locked is seeded.locked
    twin_power = data_of(versioned_twin(line))["power_state"]
    if event_type in POWER_FIXING_ENDS:
        assert inst.power_state == twin_power
    else:
        assert inst.power_state in (seeded.power_state, twin_power)
    assert [(r.kind, r.op) for r in records] == [("instance", "update")]
    assert harness.model.check_integrity() == []


def legacy_base() -> dict[str, Any]:
    """A placed legacy payload from the trace (the shape every legacy instance event has)."""
    return next(
        copy.deepcopy(line["payload"])
        for line in LEGACY_LINES
        if line["event_type"] == "compute.instance.update" and line["payload"]["host"]
    )


def legacy_line(event_type: str, at: datetime, **payload: Any) -> dict[str, Any]:
    body = legacy_base()
    body.update(payload)
    return {
        "priority": "info",
        "publisher_id": f"compute.{body['host'] or 'controller'}",
        "event_type": event_type,
        "payload": body,
        "metadata": {"message_id": str(uuidlib.uuid4()), "timestamp": oslo_time(at)},
        "ctxt": {},
    }


LEGACY_T0 = datetime(2026, 11, 22, 1, 0, 0, tzinfo=UTC)


def legacy_at(n: float) -> datetime:
    return LEGACY_T0 + timedelta(seconds=n)


@pytest.fixture
def legacy_uuid(harness: Harness, legacy_cloud: NovaListing) -> str:
    """A legacy-shaped instance placed on compute1, mid-rebuild, by a first notification."""
    uuid = legacy_base()["instance_id"]
    harness.bootstrap(legacy_cloud.snapshot())
    harness.deliver(
        legacy_line(
            "compute.instance.update",
            legacy_at(0),
            host="compute1",
            node="compute1",
            state="active",
            state_description="rebuilding",
        )
    )
    assert harness.model.instance(uuid).compute_node_uuid == node_uuid("compute1")  # type: ignore[union-attr]
    return uuid


@pytest.mark.parametrize("update_first", [False, True], ids=["rebuild-then-update", "update-first"])
def test_legacy_rebuild_end_does_not_move(
    update_first: bool, harness: Harness, legacy_uuid: str
) -> None:
    rebuild_end = legacy_line(
        "compute.instance.rebuild.end",
        legacy_at(3 if update_first else 1),
        host="compute1",
        node="compute1",
        state="active",
        state_description="",
    )
    update = legacy_line(
        "compute.instance.update",
        legacy_at(2),
        host="compute2",
        node="compute2",
        state="active",
        state_description="",
    )
    if update_first:
        harness.replay([update, rebuild_end])
    else:
        assert len(harness.deliver(rebuild_end)) == 1
        after_rebuild = harness.model.instance(legacy_uuid)
        assert after_rebuild is not None and after_rebuild.task_state is None
        assert after_rebuild.compute_node_uuid == node_uuid("compute1")
        harness.deliver(update)
    inst = harness.model.instance(legacy_uuid)
    assert inst is not None and (inst.host, inst.node) == ("compute2", "compute2")
    assert inst.compute_node_uuid == node_uuid("compute2")
    assert harness.model.instances_on_host("compute1") == []


def test_legacy_resize_confirm_end(harness: Harness, legacy_uuid: str) -> None:
    confirm = legacy_line(
        "compute.instance.resize.confirm.end",
        legacy_at(1),
        host="compute2",
        node="compute2",
        state="active",
        state_description="",
        instance_type="m1.large",
        vcpus=4,
        memory_mb=8192,
        root_gb=80,
        ephemeral_gb=10,
        disk_gb=90,
    )
    harness.deliver(confirm)
    inst = harness.model.instance(legacy_uuid)
    assert inst is not None and inst.compute_node_uuid == node_uuid("compute2")
    body = confirm["payload"]
    assert inst.to_dict()["flavor"] == {
        "name": body["instance_type"],
        "vcpus": body["vcpus"],
        "ram": body["memory_mb"],
        "disk": body["root_gb"],
    }
    assert inst.disk_gb == body["root_gb"] + body["ephemeral_gb"]
    assert (inst.vm_state, inst.task_state) == ("active", None)


def test_legacy_live_migration_post_dest_then_source_post(
    harness: Harness, legacy_uuid: str
) -> None:
    post_dest = legacy_line(
        "compute.instance.live_migration.post.dest.end",
        legacy_at(1),
        host="compute2",
        node="compute2",
        state="active",
        state_description="",
    )
    harness.deliver(post_dest)
    moved = harness.model.instance(legacy_uuid)
    assert moved is not None and moved.compute_node_uuid == node_uuid("compute2")
    source_post = legacy_line(
        "compute.instance.live_migration._post.end",
        legacy_at(2),
        host="compute1",
        node="compute1",
        state="active",
        state_description="migrating",
    )
    assert harness.deliver(source_post) == []
    assert harness.model.instance(legacy_uuid) == moved
    assert harness.outcomes("compute.instance.live_migration._post.end") == {"irrelevant": 1}


def test_legacy_superseded_while_versioned_flows(
    make_harness: Callable[..., Harness],
) -> None:
    """With both formats flowing, the legacy copy of a transition adds no second change."""
    harness = make_harness()
    versioned = trace_line(_ALL["instance-update"], at=legacy_at(0))
    legacy = legacy_line(
        "compute.instance.update",
        legacy_at(0.01),
        host="compute1",
        node="compute1",
        state="active",
        state_description="",
    )
    harness.deliver(versioned)
    assert harness.deliver(legacy) == []
    assert harness.outcomes("compute.instance.update") == {"superseded": 1}


# -- dispatch: routes resolved once per (priority, event type) -----------------------------------


def test_unknown_event_types_share_one_label_and_the_route_memory_stays_bounded() -> None:
    service = SyncService(ComputeModel(), event_types=NOVA_EVENT_TYPES)
    dispatcher = Dispatcher(make_endpoints(service), service)
    types = [f"custom{i}.update" for i in range(5000)]
    for event_type in types + types[:10]:  # some seen twice: the remembered route is reused
        dispatcher.deliver(_line_of(event_type))
    dispatcher.deliver(_line_of("aggregate.create.end"))  # a known one keeps its own label
    assert service.stats.by_type == Counter(
        {("(other)", "unhandled"): 5010, ("aggregate.create.end", "unhandled"): 1}
    )
    assert len(dispatcher._routes or {}) <= 4096


def test_a_filter_on_more_than_the_event_type_is_matched_for_every_notification() -> None:
    """Routes are remembered only when every filter looks at the event type alone."""

    class FromCompute1:
        filter_rule = oslo_messaging.NotificationFilter(publisher_id=r"^nova-compute:compute1$")

        def __init__(self) -> None:
            self.seen: list[str] = []

        def info(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any, md: Any):
            self.seen.append(publisher_id)

    service = SyncService(ComputeModel())
    endpoint = FromCompute1()
    dispatcher = Dispatcher([*make_endpoints(service), endpoint], service)
    for host in ("compute1", "compute2", "compute1"):
        dispatcher.deliver(_line_of("aggregate.create.end", f"nova-compute:{host}"))
    assert endpoint.seen == ["nova-compute:compute1"] * 2
