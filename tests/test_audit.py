"""The full audit's diff: a listing loaded into a shadow model, compared with the live one.

Each test builds a live model the way production does (a listing bootstrapped, notifications
delivered through the endpoints), then audits it against a second listing in the compute API's
own shape (``NovaListing``), and checks the model, the change records and the drift counts.
The cloud helpers here are shared with ``tests/test_engine.py``.
"""

from __future__ import annotations

import copy
import json
import sys
import uuid as uuidlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdm_sync.model import Cause, ChangeRecord, ComputeModel, InstanceObserved, Version
from cdm_sync.nova.fields import parse_time
from cdm_sync.nova.snapshot import Snapshot, listing_of, snapshot_events
from cdm_sync.sync.audit import AuditReport, build_shadow, full_audit, reconcile
from cdm_sync.sync.ports import Listing
from tests.conftest import Harness, NovaListing
from tests.samples import load_sample

# Timeline: the first listing, Nova-side changes, the second listing, notifications after it.
UPDATED_0 = "2025-12-31T23:00:00Z"
CAPTURED_1 = "2026-01-01T00:00:00Z"
UPDATED_1 = "2026-01-01T00:30:00Z"
CAPTURED_2 = "2026-01-01T01:00:00Z"
AFTER_2 = "2026-01-01 01:00:05.000000"  # an envelope timestamp after the second capture began
HOSTS = ("compute1", "compute2")


def server_uuid(i: int) -> str:
    return f"00000000-0000-4000-8000-{i:012d}"


def node_uuid(host: str) -> str:
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, f"{host}.audit.test"))


def make_cloud(
    n: int = 20,
    *,
    captured_at: str = CAPTURED_1,
    skip: tuple[int, ...] = (),
    hosts: tuple[str, ...] = HOSTS,
) -> NovaListing:
    """``n`` active servers spread over ``hosts`` (one hypervisor each), minus ``skip``."""
    cloud = NovaListing("2.53", captured_at=captured_at)
    cloud.add_flavor("1", "m1.small", 1, 2048, 20)
    for host in hosts:
        cloud.add_host(host, node_uuid=node_uuid(host))
    for i in range(n):
        if i in skip:
            continue
        host = HOSTS[i % len(HOSTS)]
        cloud.add_server(
            server_uuid(i), host=host, node=host, flavor_id="1", name=f"vm-{i}", updated=UPDATED_0
        )
    return cloud


def snapshot_of(cloud: NovaListing) -> Snapshot:
    """A fresh snapshot of the listing (audits may consume what they are given)."""
    return Snapshot.from_dict(copy.deepcopy(cloud.doc()))


def listing_from(cloud: NovaListing, incomplete: tuple[str, ...] = ()) -> Listing:
    """The listing as the collector port gives it (events, read once)."""
    return listing_of(snapshot_of(cloud), incomplete)


def audit(
    harness: Harness,
    cloud: NovaListing,
    source: Any = "audit",
    *,
    began: float | None = None,
    **kwargs: Any,
) -> AuditReport:
    """Reconcile ``harness``'s model with ``cloud``, a listing that began at ``began`` on the
    model's clock (default: now, after everything the model observed so far)."""
    harness.clock.advance(1)
    listed_at = harness.clock() if began is None else began
    return reconcile(harness.service, listing_from(cloud), source, listed_at=listed_at, **kwargs)


def server(cloud: NovaListing, i: int) -> dict[str, Any]:
    return next(s for s in cloud.servers if s["id"] == server_uuid(i))


def stop(cloud: NovaListing, i: int, updated: str = UPDATED_1) -> None:
    """Nova stopped server ``i`` (as a later listing shows it)."""
    item = server(cloud, i)
    item.update(
        {"status": "SHUTOFF", "OS-EXT-STS:vm_state": "stopped", "OS-EXT-STS:power_state": 4}
    )
    item["updated"] = updated


def notification(
    sample: str, uuid: str, *, host: str, at: str = AFTER_2, updated_at: str = UPDATED_0
) -> dict[str, Any]:
    """A trace line from Nova's sample ``sample`` about ``uuid`` on ``host``."""
    line = copy.deepcopy(load_sample(sample))
    line["payload"]["nova_object.data"].update(
        uuid=uuid, host=host, node=host, updated_at=updated_at, tenant_id="project-a"
    )
    line["metadata"] = {"message_id": str(uuidlib.uuid4()), "timestamp": at}
    line["ctxt"] = {}
    return line


def dump(harness: Harness) -> dict[str, Any]:
    doc = harness.model.to_dict()
    del doc["revision"]
    return doc


def truth(cloud: NovaListing, harness: Harness) -> dict[str, Any]:
    """The model a fresh bootstrap of ``cloud`` builds."""
    fresh = Harness(harness.clock, legacy=False)
    fresh.bootstrap(snapshot_of(cloud))
    return dump(fresh)


def audited(harness: Harness, records_before: int) -> list[ChangeRecord]:
    return harness.records[records_before:]


@pytest.fixture
def live(make_harness: Any) -> Harness:
    harness = make_harness(legacy=False)
    harness.bootstrap(snapshot_of(make_cloud()))
    return harness


def test_repairs_dropped_create_delete_and_stale_field(live: Harness) -> None:
    later = make_cloud(21, captured_at=CAPTURED_2, skip=(1,))  # 20 created, 1 deleted
    stop(later, 0)
    start = len(live.records)
    report = audit(live, later, shrink_limit=0.1)
    records = audited(live, start)
    assert {(r.kind, r.op, r.uuid) for r in records} == {
        ("instance", "add", server_uuid(20)),
        ("instance", "remove", server_uuid(1)),
        ("instance", "update", server_uuid(0)),
    }
    [update] = [r for r in records if r.op == "update"]
    assert set(update.changed) == {"vm_state", "power_state"}
    assert {r.cause.source for r in records} == {"audit"}
    assert report.drift_by_kind() == {"missing": 1, "ghost": 1, "stale_field": 1}
    assert report.deletes_skipped is None
    assert dump(live) == truth(later, live)
    assert live.model.check_integrity() == []


def test_corrections_enter_the_model_with_shared_strings(live: Harness) -> None:
    """The shadow reads the listing without interning; a correction is interned on its way
    into the live model, as a bootstrap's elements are (one copy of each host name...)."""
    later = make_cloud(21, captured_at=CAPTURED_2)
    # Strings as a JSON decoder makes them: fresh objects, none of them interned.
    doc = json.loads(json.dumps(later.doc()))
    host = doc["servers"][20]["OS-EXT-SRV-ATTR:host"]
    assert host is not sys.intern(host)
    reconcile(live.service, listing_of(Snapshot.from_dict(doc)), listed_at=live.clock())
    added = live.model.instance(server_uuid(20))
    assert added is not None and added.host == host
    for value in (added.host, added.node, added.project_id, added.user_id):
        assert value is sys.intern(value)


def test_equal_listing_submits_nothing(live: Harness) -> None:
    revision = live.model.revision
    report = audit(live, make_cloud(captured_at=CAPTURED_2))
    assert report.outcomes == {}
    assert live.model.revision == revision
    assert report.listed_instances == 20 and report.listed_nodes == 2


def test_resync_cause(live: Harness) -> None:
    later = make_cloud(captured_at=CAPTURED_2)
    stop(later, 4)
    start = len(live.records)
    audit(live, later, "resync")
    assert [(r.uuid, r.cause.source) for r in audited(live, start)] == [(server_uuid(4), "resync")]


def test_newer_notification_is_not_undone(live: Harness) -> None:
    """What the model learned after the listing started wins over the listing."""
    began = live.clock()
    live.clock.advance(1)
    live.deliver(notification("instance-power_off-end", server_uuid(0), host="compute1"))
    live.deliver(notification("instance-create-end", server_uuid(99), host="compute2"))
    assert live.model.instance(server_uuid(0)).vm_state == "stopped"
    report = audit(live, make_cloud(captured_at=CAPTURED_2), began=began)
    assert live.model.instance(server_uuid(0)).vm_state == "stopped"
    assert live.model.instance(server_uuid(99)) is not None  # created after the capture began
    assert report.newer_in_model == 2
    assert report.drift_by_kind() == {"missing": 0, "ghost": 0, "stale_field": 0}


def test_a_service_deleted_while_the_listing_is_read_stays_deleted(live: Harness) -> None:
    """The listing began before compute2's service was deleted and still shows it, with its
    hypervisor: the deletion the model observed after the listing began wins (cdm-sync's
    own clock decides, not the stamps of Nova's hosts)."""
    began = live.clock()
    live.clock.advance(1)
    deleted = copy.deepcopy(load_sample("service-delete"))
    deleted["payload"]["nova_object.data"]["host"] = "compute2"
    deleted["metadata"] = {"message_id": "svc-del-2", "timestamp": AFTER_2}
    deleted["ctxt"] = {}
    live.deliver(deleted)
    assert live.model.nodes_by_host("compute2") == []
    report = audit(live, make_cloud(captured_at=CAPTURED_2), began=began)
    assert live.model.nodes_by_host("compute2") == []
    assert report.outcomes["tombstoned"] >= 1
    assert live.model.check_integrity() == []


def test_older_notification_is_corrected(live: Harness) -> None:
    """A change the model got before the listing started, which Nova has since undone."""
    before_capture = "2026-01-01 00:10:00.000000"
    live.deliver(
        notification("instance-power_off-end", server_uuid(0), host="compute1", at=before_capture)
    )
    start = len(live.records)
    report = audit(live, make_cloud(captured_at=CAPTURED_2))
    assert live.model.instance(server_uuid(0)).vm_state == "active"
    assert report.drift_by_kind()["stale_field"] == 1
    assert [r.cause.source for r in audited(live, start)] == ["audit"]


def test_field_the_listing_lacks_is_left_alone(live: Harness) -> None:
    """A listing that does not carry a field proves nothing about it: no correction."""
    seen = Version(parse_time(UPDATED_0, "t"), parse_time(CAPTURED_1, "t") + 60)
    cause = Cause("notification", "instance.lock", "lock-1")
    live.service.submit(InstanceObserved(server_uuid(2), seen, cause, locked=True))
    later = make_cloud(captured_at=CAPTURED_2)
    for item in later.servers:
        del item["locked"]
    revision = live.model.revision
    report = audit(live, later)
    assert live.model.instance(server_uuid(2)).locked is True
    assert live.model.revision == revision
    assert report.outcomes == {}


def test_untrusted_listing_adds_and_updates_but_infers_no_deletion(live: Harness) -> None:
    later = make_cloud(21, captured_at=CAPTURED_2, skip=(1,))
    stop(later, 0)
    deleted = server(later, 3)
    deleted.update({"status": "DELETED", "OS-EXT-STS:vm_state": "deleted", "updated": UPDATED_1})
    report = audit(live, later, untrusted=["cell1 is down"])
    model = live.model
    assert model.instance(server_uuid(20)) is not None
    assert model.instance(server_uuid(0)).vm_state == "stopped"
    assert model.instance(server_uuid(1)) is not None  # absent, but absence proves nothing here
    assert model.instance(server_uuid(3)) is None  # listed as deleted: that is a proof
    assert report.deletes_skipped == "cell1 is down"
    assert report.drift_by_kind() == {"missing": 1, "ghost": 1, "stale_field": 1}


def test_shrunken_listing_deletes_nothing(live: Harness) -> None:
    later = make_cloud(captured_at=CAPTURED_2, skip=(1, 2, 3))  # 15 % fewer
    report = audit(live, later, shrink_limit=0.1)
    assert live.model.instance_count == 20
    assert report.deletes_skipped and "17 instances" in report.deletes_skipped
    # Within the limit, the same listing deletes.
    report = audit(live, later, shrink_limit=0.2)
    assert live.model.instance_count == 17
    assert report.drift_by_kind()["ghost"] == 3


def test_listing_without_hypervisors_removes_no_node(live: Harness) -> None:
    later = make_cloud(captured_at=CAPTURED_2)
    later.hypervisors.clear()
    later.services.clear()
    report = audit(live, later, shrink_limit=0.1)
    assert report.deletes_skipped and "0 compute nodes" in report.deletes_skipped
    assert {n.uuid for n in live.model.nodes()} == {node_uuid(h) for h in HOSTS}


def test_rejected_items_block_deletions(live: Harness) -> None:
    later = make_cloud(captured_at=CAPTURED_2, skip=(5,))
    server(later, 6)["OS-EXT-STS:power_state"] = "on"  # not an integer: rejected
    report = full_audit(live.service, listing_from(later))
    assert len(report.rejected) == 1
    assert report.deletes_skipped == "1 listing items could not be read"
    assert live.model.instance(server_uuid(5)) is not None


def test_node_drift(make_harness: Any) -> None:
    harness = make_harness(legacy=False)
    harness.bootstrap(snapshot_of(make_cloud(hosts=(*HOSTS, "compute3"))))
    later = make_cloud(captured_at=CAPTURED_2, hosts=(*HOSTS, "compute4"))
    hypervisor = next(h for h in later.hypervisors if h["service"]["host"] == "compute2")
    hypervisor["status"] = "disabled"
    hypervisor["service"]["disabled_reason"] = "maintenance"
    service = next(s for s in later.services if s["host"] == "compute2")
    service.update(status="disabled", disabled_reason="maintenance")
    start = len(harness.records)
    report = audit(harness, later, shrink_limit=0.1)
    assert report.drift[("compute_node", "missing")] == 1
    assert report.drift[("compute_node", "ghost")] == 1
    assert report.drift[("compute_node", "stale_field")] == 1
    node = harness.model.node(node_uuid("compute2"))
    assert (node.status, node.disabled_reason) == ("disabled", "maintenance")
    assert harness.model.node(node_uuid("compute3")) is None
    assert harness.model.node(node_uuid("compute4")) is not None
    assert {r.cause.source for r in audited(harness, start)} == {"audit"}
    assert dump(harness) == truth(later, harness)


def test_shadow_keeps_the_listing_events(live: Harness) -> None:
    later = make_cloud(captured_at=CAPTURED_2)
    shadow = build_shadow(listing_from(later))
    assert len(shadow.instances) == 20
    assert set(shadow.instance_events) == {server_uuid(i) for i in range(20)}
    assert set(shadow.hypervisor_events) == {node_uuid(h) for h in HOSTS}
    assert set(shadow.service_events) == set(HOSTS)
    # The shadow published nothing into the live model.
    assert live.model.instance_count == 20 and live.model.revision == len(live.records)


def test_report_line_names_the_drift() -> None:
    report = AuditReport("audit")
    report.drift[("instance", "ghost")] = 2
    report.deletes_skipped = "cell1 is down"
    assert "ghost 2" in report.line() and "cell1 is down" in report.line()


# -- the shadow's shortcut is exact ------------------------------------------------------------

_PROPERTY_HOSTS = ("h0", "h1", "h2", "h3")
_STAMPS = ("2025-12-31T22:00:00Z", "2025-12-31T23:00:00Z", "2025-12-31T23:30:00Z")


@st.composite
def tricky_listings(draw: st.DrawFn) -> dict[str, Any]:
    """Listings with unlisted hosts, hosts of two nodes, servers naming no host or node or an
    unknown node, the same server listed twice (older and newer), and deleted servers."""
    cloud = NovaListing(draw(st.sampled_from(("2.1", "2.53"))), captured_at=CAPTURED_1)
    cloud.add_flavor("1", "m1.small", 1, 2048, 20)
    for host in draw(st.lists(st.sampled_from(_PROPERTY_HOSTS), unique=True)):
        for n in range(draw(st.integers(1, 2))):
            cloud.add_host(host, f"{host}-n{n}", node_uuid=node_uuid(f"{host}-n{n}"))
    hosts = st.sampled_from((*_PROPERTY_HOSTS, "unlisted", None))
    for _ in range(draw(st.integers(0, 12))):
        host = draw(hosts)
        node = draw(st.sampled_from((f"{host}-n0", f"{host}-n1", "elsewhere", None)))
        item = cloud.add_server(
            server_uuid(draw(st.integers(0, 6))),
            host=host,
            node=node,
            flavor_id="1",
            vm_state=draw(st.sampled_from(("active", "stopped", "deleted"))),
            updated=draw(st.sampled_from(_STAMPS)),
        )
        for key in ("OS-EXT-SRV-ATTR:host", "OS-EXT-SRV-ATTR:hypervisor_hostname"):
            if draw(st.booleans()) and draw(st.booleans()):
                del item[key]  # not proven by the listing (a non-admin view)
    return cloud.doc()


@given(tricky_listings())
@settings(max_examples=300, deadline=None)
def test_shadow_equals_applying_the_whole_listing(doc: dict[str, Any]) -> None:
    """The shadow resolves most servers without applying them; the result must be exactly what
    applying every listing event to a fresh model gives (nodes, placeholders, instances)."""
    shadow = build_shadow(listing_of(Snapshot.from_dict(copy.deepcopy(doc))))
    reference = ComputeModel(dedupe_window=0, clock=lambda: shadow.captured_at)
    for event in snapshot_events(Snapshot.from_dict(copy.deepcopy(doc)), "audit"):
        reference.apply(event)
    assert shadow.instances == {i.uuid: i for i in reference.instances()}
    assert sorted(shadow.model.nodes()) == sorted(reference.nodes())
