"""Snapshots (FORMATS.md §1) at every shape of the compute API, loaded into a model.

The listings are built item by item in the shape Nova returns at each microversion (integer ids
before 2.53, capacity until 2.88, embedded flavors from 2.47, ``locked`` from 2.9), and the
model after the bootstrap must hold what the items say, ``null`` where they say nothing. A bad
item is rejected with its reason while the rest loads; a file that is not a snapshot at all is
refused outright.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cdm_sync.model import Cause, InstanceDeleted, InstanceObserved, Outcome, Version
from cdm_sync.nova.snapshot import (
    Snapshot,
    SnapshotError,
    Translation,
    read_snapshot,
    snapshot_events,
)
from tests.conftest import Harness, NovaListing
from tests.samples import TRACE_DIR

MICROVERSIONS = ["2.1", "2.11", "2.46", "2.47", "2.53", "2.87", "2.88", "2.104"]
# Nova's power states by API code (nova/compute/power_state.py).
POWER = {0: "pending", 1: "running", 3: "paused", 4: "shutdown", 6: "crashed", 7: "suspended"}

ACTIVE = "0a000000-0000-4000-8000-000000000001"
STOPPED = "0a000000-0000-4000-8000-000000000002"
SOFT_DELETED = "0a000000-0000-4000-8000-000000000003"
DELETED = "0a000000-0000-4000-8000-000000000004"
OFFLOADED = "0a000000-0000-4000-8000-000000000005"
UNKNOWN_FLAVOR = "0a000000-0000-4000-8000-000000000006"


def mv(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


def small_cloud(listing: NovaListing) -> NovaListing:
    """Two compute hosts (one disabled), a scheduler, and servers in every interesting state."""
    listing.add_host(
        "compute1",
        "compute1.example",
        node_uuid="6a734c0e-0061-4234-a20a-621bc90dd69f",
        vcpus=16,
        memory_mb=32768,
        local_gb=1024,
    )
    listing.add_host(
        "compute2",
        "compute2.example",
        node_uuid="9bd3fe44-45df-4132-9c53-bdc8f3526e4c",
        status="disabled",
        disabled_reason="maintenance",
        vcpus=8,
        memory_mb=16384,
        local_gb=500,
    )
    listing.add_service("controller", "nova-scheduler")
    listing.add_flavor("1", "m1.tiny", 1, 512, 1)
    listing.add_flavor("2", "m1.eph", 2, 2048, 20, ephemeral=5)
    listing.add_server(
        ACTIVE,
        host="compute1",
        node="compute1.example",
        flavor_id="1",
        name="vm-active",
        metadata={"role": "web"},
    )
    listing.add_server(
        STOPPED,
        host="compute2",
        node="compute2.example",
        flavor_id="2",
        vm_state="stopped",
        power_state=4,
        locked=True,
        tenant_id="project-b",
    )
    listing.add_server(
        SOFT_DELETED,
        host="compute1",
        node="compute1.example",
        flavor_id="1",
        vm_state="soft-delete",
        power_state=4,
    )
    listing.add_server(
        DELETED,
        host="compute1",
        node="compute1.example",
        flavor_id="1",
        vm_state="deleted",
        power_state=0,
    )
    listing.add_server(
        OFFLOADED,
        host=None,
        node=None,
        flavor_id="2",
        vm_state="shelved_offloaded",
        power_state=4,
        task_state=None,
    )
    return listing


@pytest.fixture(params=MICROVERSIONS)
def cloud(request: pytest.FixtureRequest, nova_listing: Callable[..., NovaListing]) -> NovaListing:
    return small_cloud(nova_listing(request.param))


def test_nodes_at_every_microversion(cloud: NovaListing, harness: Harness) -> None:
    harness.bootstrap(cloud.snapshot())
    model = harness.model
    services = {s["host"]: s for s in cloud.services}
    assert len(model.nodes()) == len(cloud.hypervisors)
    for item in cloud.hypervisors:
        # Before 2.53 the id is an integer; it is still the node's identity, as a string.
        assert isinstance(item["id"], int) == (cloud.mv < (2, 53))
        node = model.node(str(item["id"]))
        assert node is not None and not node.placeholder
        host = item["service"]["host"]
        assert (node.hostname, node.hypervisor_hostname) == (host, item["hypervisor_hostname"])
        assert node.status == services[host]["status"]
        assert node.state == services[host]["state"]
        assert node.disabled_reason == services[host]["disabled_reason"]
        capacity = (node.vcpus, node.memory_mb, node.disk_gb)
        if cloud.mv >= (2, 88):
            assert "vcpus" not in item
            assert capacity == (None, None, None)  # not listed any more: unknown, not zero
        else:
            assert capacity == (item["vcpus"], item["memory_mb"], item["local_gb"])
    assert model.nodes_by_host("controller") == []  # only nova-compute services are nodes
    assert model.check_integrity() == []


def test_servers_at_every_microversion(cloud: NovaListing, harness: Harness) -> None:
    harness.bootstrap(cloud.snapshot())
    model = harness.model
    flavors = {f["id"]: f for f in cloud.flavors}
    for item in cloud.servers:
        uuid = item["id"]
        if item["status"] == "DELETED":
            continue
        inst = model.instance(uuid)
        assert inst is not None
        dumped = inst.to_dict()
        assert dumped["vm_state"] == item["OS-EXT-STS:vm_state"]
        assert dumped["power_state"] == POWER[item["OS-EXT-STS:power_state"]]
        assert dumped["task_state"] == item["OS-EXT-STS:task_state"]
        assert (dumped["host"], dumped["node"]) == (
            item["OS-EXT-SRV-ATTR:host"],
            item["OS-EXT-SRV-ATTR:hypervisor_hostname"],
        )
        node = model.node_by_hypervisor_hostname(item["OS-EXT-SRV-ATTR:hypervisor_hostname"] or "")
        assert inst.compute_node_uuid == (node.uuid if node else None)
        assert (dumped["name"], dumped["project_id"], dumped["user_id"]) == (
            item["name"],
            item["tenant_id"],
            item["user_id"],
        )
        assert dumped["metadata"] == item["metadata"]
        # ``locked`` is listed from 2.9; before, the snapshot does not know it.
        assert dumped["locked"] == item.get("locked")
        if cloud.mv >= (2, 47):
            embedded = item["flavor"]
            want = (
                embedded["original_name"],
                embedded["vcpus"],
                embedded["ram"],
                embedded["disk"],
                embedded["ephemeral"],
            )
        else:
            listed = flavors[item["flavor"]["id"]]
            want = (
                listed["name"],
                listed["vcpus"],
                listed["ram"],
                listed["disk"],
                listed["OS-FLV-EXT-DATA:ephemeral"],
            )
        name, vcpus, ram, disk, ephemeral = want
        assert dumped["flavor"] == {"name": name, "vcpus": vcpus, "ram": ram, "disk": disk}
        assert (dumped["vcpus"], dumped["memory_mb"], dumped["disk_gb"]) == (
            vcpus,
            ram,
            disk + ephemeral,
        )
    assert model.check_integrity() == []


def test_soft_deleted_kept_and_deleted_tombstoned(cloud: NovaListing, harness: Harness) -> None:
    harness.bootstrap(cloud.snapshot())
    model = harness.model
    soft = model.instance(SOFT_DELETED)
    assert soft is not None and soft.vm_state == "soft-delete"
    assert soft.to_dict() in harness.model.to_dict()["instances"]
    assert model.instance(DELETED) is None
    assert DELETED in model.instance_tombstones
    assert DELETED not in {i["uuid"] for i in model.to_dict()["instances"]}
    # A late notification about the deleted server cannot resurrect it.
    late = InstanceObserved(
        DELETED,
        Version(None, 4_000_000_000.0),
        Cause("notification", "instance.update", "late-message"),
        vm_state="active",
        host="compute1",
        node="compute1.example",
    )
    assert model.apply_with_outcome(late)[0] is Outcome.TOMBSTONED
    offloaded = model.instance(OFFLOADED)
    assert offloaded is not None and offloaded.compute_node_uuid is None


def test_usage_from_snapshot_capacity(
    nova_listing: Callable[..., NovaListing], harness: Harness
) -> None:
    cloud = small_cloud(nova_listing("2.53"))
    harness.bootstrap(cloud.snapshot())
    node = harness.model.node_by_hypervisor_hostname("compute1.example")
    assert node is not None
    usage = harness.model.usage(node.uuid)
    assert usage is not None
    on_node = [
        s
        for s in cloud.servers
        if s["OS-EXT-SRV-ATTR:hypervisor_hostname"] == "compute1.example"
        and s["status"] != "DELETED"
    ]
    assert usage.instances == len(on_node)
    assert usage.vcpus_used == sum(s["flavor"]["vcpus"] for s in on_node)
    assert usage.vcpus_free == node.vcpus - usage.vcpus_used  # type: ignore[operator]


def test_old_microversion_flavor_not_listed_is_unknown(
    nova_listing: Callable[..., NovaListing], harness: Harness
) -> None:
    cloud = small_cloud(nova_listing("2.1"))
    cloud.add_flavor("3", "m1.private", 4, 4096, 40)
    cloud.add_server(UNKNOWN_FLAVOR, host="compute1", node="compute1.example", flavor_id="3")
    cloud.flavors.pop()  # the flavor was deleted (or is private) and the listing lacks it
    harness.bootstrap(cloud.snapshot())
    inst = harness.model.instance(UNKNOWN_FLAVOR)
    assert inst is not None and inst.flavor is None and inst.vcpus is None


def test_events_carry_the_source(cloud: NovaListing) -> None:
    events = list(snapshot_events(cloud.snapshot(), "audit"))
    assert events and {e.cause.source for e in events} == {"audit"}
    assert [e.uuid for e in events if isinstance(e, InstanceDeleted)] == [DELETED]


def test_file_round_trip(cloud: NovaListing, tmp_path: Path, harness: Harness) -> None:
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps(cloud.doc()))
    from_file = Harness(harness.clock)
    from_file.bootstrap(read_snapshot(path))
    harness.bootstrap(cloud.snapshot())
    assert from_file.model.to_dict() == harness.model.to_dict()


# -- malformed items -------------------------------------------------------------------------------


def malformed_cases() -> list[tuple[str, Callable[[NovaListing], None], str]]:
    """(id, how to spoil one item of a good listing, what the reason must mention)."""

    def server(listing: NovaListing, **fields: Any) -> None:
        item = listing.add_server(
            "0b000000-0000-4000-8000-00000000000f",
            host="compute1",
            node="compute1.example",
            flavor_id="1",
        )
        for key, value in fields.items():
            if value is _DROP:
                del item[key]
            else:
                item[key] = value

    return [
        ("service-not-object", lambda c: c.services.append("compute9"), "not an object"),
        ("service-no-host", lambda c: c.add_service(None, "nova-compute"), "host"),  # type: ignore[arg-type]
        ("hypervisor-no-id", lambda c: c.hypervisors.append({"hypervisor_hostname": "x"}), "id"),
        ("hypervisor-bool-id", lambda c: c.hypervisors.append({"id": True}), "id"),
        (
            "hypervisor-bad-vcpus",
            lambda c: c.hypervisors.append({"id": 99, "hypervisor_hostname": "x", "vcpus": "many"}),
            "vcpus",
        ),
        ("server-no-id", lambda c: server(c, id=_DROP), "id"),
        (
            "server-power-name",
            lambda c: server(c, **{"OS-EXT-STS:power_state": "running"}),
            "power_state",
        ),
        ("server-bad-metadata", lambda c: server(c, metadata={"size": 3}), "metadata"),
        ("server-flavor-string", lambda c: server(c, flavor="m1.tiny"), "flavor"),
        ("server-bad-updated", lambda c: server(c, updated="yesterday"), "updated"),
        ("server-not-object", lambda c: c.servers.append(["not", "a", "server"]), "not an object"),
        ("server-empty-id", lambda c: server(c, id=""), "id"),
        (
            "server-host-number",
            lambda c: server(c, **{"OS-EXT-SRV-ATTR:host": 7}),
            "OS-EXT-SRV-ATTR:host is int",
        ),
        ("server-tenant-list", lambda c: server(c, tenant_id=["p"]), "tenant_id is list"),
        (
            "server-power-bool",
            lambda c: server(c, **{"OS-EXT-STS:power_state": True}),
            "power_state",
        ),
        ("server-flavor-list", lambda c: server(c, flavor=[1]), "flavor"),
        ("server-metadata-list", lambda c: server(c, metadata=["a"]), "metadata"),
        ("server-locked-string", lambda c: server(c, locked="yes"), "locked"),
    ]


_DROP = object()


@pytest.mark.parametrize(
    ("spoil", "mentions"),
    [pytest.param(spoil, mentions, id=name) for name, spoil, mentions in malformed_cases()],
)
@pytest.mark.parametrize("microversion", ["2.1", "2.104"])
def test_malformed_item_rejected_rest_loads(
    spoil: Callable[[NovaListing], None],
    mentions: str,
    microversion: str,
    nova_listing: Callable[..., NovaListing],
    make_harness: Callable[..., Harness],
) -> None:
    good = make_harness()
    good.bootstrap(small_cloud(nova_listing(microversion)).snapshot())
    spoilt = small_cloud(nova_listing(microversion))
    spoil(spoilt)
    report = Translation()
    harness = make_harness()
    harness.service.submit_all(snapshot_events(spoilt.snapshot(), report=report))
    assert len(report.rejected) == 1, report.rejected
    assert mentions in report.rejected[0]
    # Everything else loaded exactly as from the good listing.
    assert harness.model.to_dict() == good.model.to_dict()


# -- not a snapshot at all -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "mentions"),
    [
        ({"format": "cdm-sync/nova-snapshot/2"}, "format"),
        ({"format": None}, "format"),
        ({"format": "cdm-sync/model/1"}, "format"),
        ({"captured_at": None}, "captured_at"),
        ({"captured_at": "last tuesday"}, "captured_at"),
        ({"compute_api_microversion": "latest"}, "microversion"),
        ({"servers": {"a": 1}}, "servers"),
        ({"hypervisors": None}, "hypervisors"),
    ],
)
def test_unusable_document_is_refused(
    change: dict[str, Any], mentions: str, nova_listing: Callable[..., NovaListing]
) -> None:
    doc = small_cloud(nova_listing("2.53")).doc() | change
    with pytest.raises(SnapshotError, match=mentions):
        Snapshot.from_dict(doc)


def test_unreadable_files_are_refused(
    tmp_path: Path, nova_listing: Callable[..., NovaListing]
) -> None:
    with pytest.raises(SnapshotError):
        read_snapshot(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(SnapshotError, match="JSON"):
        read_snapshot(broken)
    wrong = tmp_path / "model.json"
    wrong.write_text(json.dumps({"format": "cdm-sync/model/1", "revision": 1}))
    with pytest.raises(SnapshotError, match="format"):
        read_snapshot(wrong)
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps([small_cloud(nova_listing("2.53")).doc()]))
    with pytest.raises(SnapshotError):
        read_snapshot(listing)


def test_real_snapshot_loads_clean() -> None:
    for name in ("snapshot.json", "snapshot-final.json"):
        report = Translation()
        events = list(snapshot_events(read_snapshot(TRACE_DIR / name), report=report))
        assert report.rejected == [] and events


# -- server items that cannot be decoded -----------------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000
# Nested too deeply, with brackets, quotes and escapes inside its strings: skipping it must pair
# only the brackets outside strings.
DEEP_WITH_STRINGS = (
    b'{"id": "x", "a": ' * 50_000 + b'["]]}\\"{[", "\\\\", "\\u005d"]' + b"}" * 50_000
)


def file_with(doc: dict[str, Any], *, servers_first: bool, **raw: bytes) -> bytes:
    """``doc`` as a snapshot file, ``servers`` first (their translation waits for the whole
    file) or last (each is translated as decoded); each string value ``"@name"`` in it is
    replaced by ``raw[name]``, JSON text written as is."""
    rest = {k: v for k, v in doc.items() if k != "servers"}
    servers = {"servers": doc["servers"]}
    ordered = {**servers, **rest} if servers_first else {**rest, **servers}
    text = json.dumps(ordered).encode()
    for name, value in raw.items():
        text = text.replace(json.dumps(f"@{name}").encode(), value)
    return text


@pytest.mark.parametrize("servers_first", [True, False], ids=["servers-first", "servers-last"])
def test_server_items_that_cannot_be_decoded_are_rejected_one_by_one(
    servers_first: bool,
    tmp_path: Path,
    nova_listing: Callable[..., NovaListing],
    make_harness: Callable[..., Harness],
) -> None:
    cloud = small_cloud(nova_listing("2.53"))
    good = make_harness()
    good.bootstrap(cloud.snapshot())
    spoilt = copy.deepcopy(cloud.doc())
    extra = {**spoilt["servers"][0], "id": "0c000000-0000-4000-8000-000000000001"}
    spoilt["servers"][1:1] = ["@deep", "@strings", {**extra, "name": "@bad"}, "@big", [extra]]
    path = tmp_path / "snapshot.json"
    path.write_bytes(
        file_with(
            spoilt,
            servers_first=servers_first,
            deep=DEEP,
            strings=DEEP_WITH_STRINGS,
            bad=b'"caf\xe9 \xff"',
            big=json.dumps({**extra, "name": "x" * 5000}).encode(),
        )
    )
    snapshot = read_snapshot(path, max_item_bytes=4096)
    assert snapshot.server_count == len(spoilt["servers"])
    report = Translation()
    harness = make_harness()
    harness.service.submit_all(snapshot_events(snapshot, report=report))
    assert report.rejected == [
        "server item 1: nested too deeply to decode",
        "server item 2: nested too deeply to decode",
        f"server item 3 ('{extra['id']}'): not UTF-8 text",
        f"server item 4 ('{extra['id']}'): {len(json.dumps({**extra, 'name': 'x' * 5000}))} "
        "bytes of JSON, over the 4096-byte limit",
        "server None: not an object",
    ]
    assert harness.model.to_dict() == good.model.to_dict()


@pytest.mark.parametrize("servers_first", [True, False], ids=["servers-first", "servers-last"])
def test_the_item_limit_counts_bytes_not_characters(
    servers_first: bool, tmp_path: Path, nova_listing: Callable[..., NovaListing]
) -> None:
    """The limit is on the bytes an item has in the file, exactly, also where the text is not
    ASCII (where a character may be several bytes)."""
    cloud = small_cloud(nova_listing("2.53"))
    doc = cloud.doc()
    wide = doc["servers"][0]
    wide["name"] = "é" * 3000  # 2 bytes each in UTF-8
    path = tmp_path / "snapshot.json"
    text = json.dumps(
        doc if not servers_first else {"servers": doc["servers"], **doc}, ensure_ascii=False
    )
    path.write_text(text, encoding="utf-8")
    size = len(json.dumps(wide, ensure_ascii=False).encode())
    assert size > 6000
    for limit, rejected in (
        (size, []),
        (size - 1, [f"{size} bytes of JSON, over the {size - 1}-byte limit"]),
    ):
        report = Translation()
        list(snapshot_events(read_snapshot(path, max_item_bytes=limit), report=report))
        assert [r.partition(": ")[2] for r in report.rejected] == rejected


@pytest.mark.parametrize(
    ("spoil", "mentions"),
    [
        pytest.param(
            {"flavors": b"[" + DEEP + b"]"}, "'flavors' is nested too deeply", id="deep-flavors"
        ),
        pytest.param({"services": DEEP}, "'services' is nested too deeply", id="deep-services"),
        pytest.param(
            {"services": b'[{"host": "caf\xe9"}]'}, "not UTF-8 text in 'services'", id="utf8-value"
        ),
        pytest.param({"format": b'"\xff"'}, "not UTF-8 text in 'format'", id="utf8-format"),
        pytest.param({"key": b'"x", "k\xff": 1'}, "not UTF-8 text in the key", id="utf8-key"),
        pytest.param(
            {"key": b'"x", ' + DEEP + b": 1"}, "nested too deeply to decode", id="deep-key"
        ),
        pytest.param(
            {"key": b'"x", "k": 1\xff'}, "not UTF-8 either (invalid start byte", id="utf8-json"
        ),
    ],
)
def test_what_cannot_be_decoded_outside_the_server_items_is_refused(
    spoil: dict[str, bytes],
    mentions: str,
    tmp_path: Path,
    nova_listing: Callable[..., NovaListing],
) -> None:
    doc = small_cloud(nova_listing("2.53")).doc() | {"key": "@key"}
    doc |= {name: f"@{name}" for name in spoil}
    path = tmp_path / "snapshot.json"
    path.write_bytes(file_with(doc, servers_first=False, **spoil))
    with pytest.raises(SnapshotError, match=re.escape(mentions)) as caught:
        read_snapshot(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [DEEP, b"[" + DEEP + b"]", b'{"format": ' + DEEP + b"}"],
    ids=["array", "in-array", "tag"],
)
def test_a_document_nested_too_deeply_is_refused(text: bytes, tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    path.write_bytes(text)
    with pytest.raises(SnapshotError, match="nested too deeply"):
        read_snapshot(path)
