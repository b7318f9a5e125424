"""The Nova collector against a test Nova over HTTP, driven through python-novaclient.

Every test here goes through the real client stack (keystoneauth authenticating against the
fake Keystone, reading its catalog, novaclient negotiating and sending microversions, keystoneauth
retrying 5xx answers) over a socket to :mod:`tests.fakenova`. What is asserted is what the
engine relies on: the listing is complete (all pages, SOFT_DELETED included) or fails loudly
with what was read; a down cell makes it "incomplete"; and a listing, saved and read back,
bootstraps a model equal to what the cloud holds, at every microversion.
"""

from __future__ import annotations

import logging
import re
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from keystoneauth1 import loading
from keystoneauth1 import session as ks_session
from oslo_config import cfg

from cdm_sync.conf import nova_client as nova_client_conf
from cdm_sync.model import ComputeModel, HypervisorObserved, ServiceObserved
from cdm_sync.model.elements import POWER_STATE_NAMES
from cdm_sync.nova.auth import AuthConfigError, Retries
from cdm_sync.nova.collector import NovaCollector, collector_from_conf
from cdm_sync.nova.snapshot import Snapshot, read_snapshot, write_snapshot
from cdm_sync.replay import bootstrap
from cdm_sync.sync.ports import ListingError
from cdm_sync.sync.service import SyncService
from tests import fakenova
from tests.fakenova import COMPUTE, FakeCloud, FakeNova

SERVERS = f"{COMPUTE}/servers/detail"
PASSWORD = "secret"
FAST_RETRIES = Retries(connect_retry_delay=0.01, status_code_retry_delay=0.01)

fake_nova = fakenova.fake_nova


def make_session(nova: FakeNova, password: str = PASSWORD, timeout: float = 5.0) -> Any:
    auth = loading.get_plugin_loader("password").load_from_options(
        auth_url=nova.auth_url,
        username="admin",
        password=password,
        project_name="admin",
        user_domain_name="Default",
        project_domain_name="Default",
    )
    return ks_session.Session(auth=auth, timeout=timeout)


def make_collector(nova: FakeNova, **kwargs: Any) -> NovaCollector:
    kwargs.setdefault("retries", FAST_RETRIES)
    session = kwargs.pop("session", None) or make_session(nova)
    return NovaCollector(session, **kwargs)


def server_id(n: int) -> str:
    return f"5e7a0000-0000-4000-8000-{n:012d}"


def populate(cloud: FakeCloud) -> None:
    """Two hosts (one disabled), public and private flavors, servers in many states."""
    cloud.add_flavor("1", "m1.tiny", 1, 512, 1)
    cloud.add_flavor("2", "m1.small", 2, 2048, 20, ephemeral=5)
    cloud.add_flavor("42", "private.big", 8, 16384, 80, is_public=False)
    cloud.add_host("compute1", node_uuid="6a734c0e-0061-4234-a20a-621bc90dd69f", vcpus=32)
    cloud.add_host(
        "compute2",
        node_uuid="c2c2c2c2-0061-4234-a20a-621bc90dd69f",
        hypervisor_hostname="compute2.example",
        status="disabled",
        disabled_reason="maintenance",
        memory_mb=65536,
    )
    cloud.add_service("controller", "nova-scheduler")  # not a compute service: not listed
    cloud.add_server(server_id(1), host="compute1", flavor_id="1", name="web-1")
    cloud.add_server(
        server_id(2),
        host="compute2",
        node="compute2.example",
        flavor_id="2",
        vm_state="stopped",
        power_state=4,
        tenant_id="project-b",
        locked=True,
        metadata={"role": "db"},
        created="2026-11-22T00:01:00Z",
    )
    cloud.add_server(
        server_id(3),
        host="compute1",
        flavor_id="42",
        task_state="rebooting",
        created="2026-11-22T00:02:00Z",
    )
    cloud.add_server(
        server_id(4),
        host=None,
        flavor_id="1",
        vm_state="shelved_offloaded",
        power_state=4,
        created="2026-11-22T00:03:00Z",
    )
    cloud.add_server(server_id(5), host="compute1", flavor_id="2", created="2026-11-22T00:04:00Z")
    cloud.soft_delete(server_id(5), "2026-11-22T00:30:00Z")
    cloud.add_server(server_id(6), host="compute1", flavor_id="1", created="2026-11-22T00:05:00Z")
    cloud.delete_server(server_id(6), "2026-11-22T00:31:00Z")


def add_servers(cloud: FakeCloud, count: int, host: str = "compute1") -> None:
    """``count`` servers on ``host`` (created and added if missing), created a second apart."""
    if not any(f["id"] == "1" for f in cloud.flavors):
        cloud.add_flavor("1", "m1.tiny", 1, 512, 1)
    if not any(s["host"] == host for s in cloud.services):
        cloud.add_host(host)
    for n in range(count):
        created = f"2026-11-22T00:00:{n:02d}Z"
        cloud.add_server(server_id(n), host=host, flavor_id="1", created=created)


def expected_model(cloud: FakeCloud, microversion: str) -> dict[str, Any]:
    """The model dump (FORMATS §3, revision aside) that the cloud's truth implies at a
    microversion: node uuids are the hypervisors' integer ids before 2.53, ``locked`` is
    unknown before 2.9."""
    mv = fakenova.parse_version(microversion)
    nodes = []
    node_of = {}
    for hyp in cloud.hypervisors:
        service = hyp["service"]
        node_uuid = hyp["uuid"] if mv >= (2, 53) else str(hyp["int_id"])
        node_of[hyp["hypervisor_hostname"]] = node_uuid
        nodes.append(
            {
                "uuid": node_uuid,
                "hostname": service["host"],
                "hypervisor_hostname": hyp["hypervisor_hostname"],
                "status": service["status"],
                "state": service["state"],
                "disabled_reason": service["disabled_reason"],
                "vcpus": hyp["vcpus"],
                "memory_mb": hyp["memory_mb"],
                "disk_gb": hyp["local_gb"],
                "placeholder": False,
            }
        )
    flavors = {f["id"]: f for f in cloud.flavors}
    instances = []
    for server in cloud.servers:
        if server["deleted"]:
            continue
        flavor = flavors[server["flavor_id"]]
        instances.append(
            {
                "uuid": server["id"],
                "name": server["name"],
                "project_id": server["tenant_id"],
                "user_id": server["user_id"],
                "host": server["host"],
                "node": server["node"],
                "compute_node_uuid": node_of.get(server["node"]),
                "vm_state": server["vm_state"],
                "power_state": POWER_STATE_NAMES[server["power_state"]],
                "task_state": server["task_state"],
                "flavor": {
                    "name": flavor["name"],
                    "vcpus": flavor["vcpus"],
                    "ram": flavor["ram"],
                    "disk": flavor["disk"],
                },
                "vcpus": flavor["vcpus"],
                "memory_mb": flavor["ram"],
                "disk_gb": flavor["disk"] + flavor["ephemeral"],  # what it takes from the host
                "locked": server["locked"] if mv >= (2, 9) else None,
                "metadata": server["metadata"],
            }
        )
    return {
        "format": "cdm-sync/model/1",
        "compute_nodes": sorted(nodes, key=lambda n: n["uuid"]),
        "instances": sorted(instances, key=lambda i: i["uuid"]),
    }


def model_from(snap: Snapshot, tmp_path: Path) -> dict[str, Any]:
    """Save the listing as a snapshot file, read it back, bootstrap a model; its dump."""
    path = tmp_path / "snapshot.json"
    write_snapshot(snap, path)
    service = SyncService(ComputeModel())
    assert bootstrap(service, read_snapshot(path)) == []
    assert service.model.check_integrity() == []
    dump = service.model.to_dict()
    dump.pop("revision")
    return dump


# -- microversions ----------------------------------------------------------------------------


@pytest.mark.parametrize("microversion", ["2.1", "2.47", "2.53", "2.60", "2.88", "2.95"])
def test_listing_at_each_microversion_bootstraps_the_clouds_model(
    fake_nova: FakeNova, tmp_path: Path, microversion: str
) -> None:
    cloud = fake_nova.cloud
    populate(cloud)
    mv = fakenova.parse_version(microversion)

    snap, incomplete = make_collector(fake_nova, microversion=microversion).full_snapshot()

    assert snap.microversion == microversion
    assert incomplete == []
    server_requests = [r for r in cloud.requests if r.path == SERVERS]
    assert server_requests
    assert all(microversion in (r.microversion or "") for r in server_requests)
    # The API's own shapes at that microversion, unwrapped, as the snapshot format says.
    assert {s["binary"] for s in snap.services} == {"nova-compute"}
    id_type = str if mv >= (2, 53) else int
    assert all(type(h["id"]) is id_type for h in snap.hypervisors)
    assert all(("vcpus" in h) == (mv < (2, 88)) for h in snap.hypervisors)
    assert all(("original_name" in s["flavor"]) == (mv >= (2, 47)) for s in snap.servers)
    if mv < (2, 47):  # flavors listed, private ones too (is_public=None)
        assert {f["id"] for f in snap.flavors} == {"1", "2", "42"}
    else:
        assert snap.flavors == []
    if mv >= (2, 88):  # capacity from Placement, one inventory per compute node
        assert set(snap.inventories) == {h["uuid"] for h in cloud.hypervisors}
        assert snap.inventories["6a734c0e-0061-4234-a20a-621bc90dd69f"]["VCPU"]["total"] == 32
    else:
        assert snap.inventories == {}
    # Live and SOFT_DELETED servers, not the deleted one.
    assert sorted(s["id"] for s in snap.servers) == [server_id(n) for n in range(1, 6)]

    assert model_from(snap, tmp_path) == expected_model(cloud, microversion)


def test_auto_negotiates_the_highest_version_both_sides_support(fake_nova: FakeNova) -> None:
    populate(fake_nova.cloud)
    fake_nova.cloud.max_microversion = "2.60"
    collector = make_collector(fake_nova)
    assert collector.full_snapshot()[0].microversion == "2.60"

    import novaclient

    fake_nova.cloud.max_microversion = "2.104"  # newer than python-novaclient knows
    snap, _ = collector.full_snapshot()  # renegotiated at every full listing
    assert snap.microversion == novaclient.API_MAX_VERSION.get_string()
    assert collector.microversion == snap.microversion


def test_a_microversion_nova_does_not_offer_is_a_clear_error(fake_nova: FakeNova) -> None:
    populate(fake_nova.cloud)
    fake_nova.cloud.max_microversion = "2.60"
    with pytest.raises(ListingError) as caught:
        make_collector(fake_nova, microversion="2.88").full_listing()
    assert "2.88" in caught.value.reason
    assert "2.1" in caught.value.reason and "2.60" in caught.value.reason
    assert caught.value.partial is None


# -- pagination -------------------------------------------------------------------------------


def test_every_page_is_read_and_soft_deleted_servers_are_merged(fake_nova: FakeNova) -> None:
    cloud = fake_nova.cloud
    add_servers(cloud, 10)
    cloud.soft_delete(server_id(4), "2026-11-22T01:00:00Z")
    seen: list[tuple[str, int]] = []

    snap, _ = make_collector(fake_nova, page_size=3).full_snapshot(
        lambda what, n: seen.append((what, n))
    )

    ids = [s["id"] for s in snap.servers]
    assert sorted(ids) == [server_id(n) for n in range(10)]  # each exactly once
    soft = next(s for s in snap.servers if s["id"] == server_id(4))
    assert soft["status"] == "SOFT_DELETED"
    requests = [r for r in cloud.requests if r.path == SERVERS]
    default = [r for r in requests if "deleted" not in r.query]
    # 9 live servers at 3 per page: 3 full pages, then an empty one ends the list.
    assert len(default) == 4
    assert all(r.query["limit"] == ["3"] for r in requests)
    assert [r.query.get("marker") is not None for r in default] == [False, True, True, True]
    deleted = [r for r in requests if "deleted" in r.query]
    assert [r.query["status"] for r in deleted] == [["SOFT_DELETED"]]
    # Progress per page of servers, counting up to the total.
    counts = [n for what, n in seen if what == "servers"]
    assert counts == sorted(counts) and counts[-1] == 10 and len(counts) >= 4


def test_a_page_capped_by_novas_max_limit_is_not_taken_for_the_last(fake_nova: FakeNova) -> None:
    cloud = fake_nova.cloud
    cloud.max_limit = 2  # Nova's [api]max_limit below the collector's page size
    for h in range(5):
        cloud.add_host(f"compute{h}")
    add_servers(cloud, 7, host="compute0")

    snap, _ = make_collector(fake_nova, page_size=100, microversion="2.53").full_snapshot()

    assert len(snap.servers) == 7
    assert len(snap.hypervisors) == 5


def test_a_500_is_retried_and_the_listing_completes(fake_nova: FakeNova) -> None:
    cloud = fake_nova.cloud
    populate(cloud)
    cloud.fail_nth(SERVERS, 1, times=2)  # the first page fails twice, then answers

    snap, _ = make_collector(fake_nova).full_snapshot()

    assert len(snap.servers) == 5
    assert cloud.count(SERVERS) == 2 + 2  # two failed tries, then the page and the SOFT_DELETED


def test_a_page_that_always_fails_raises_with_what_was_read(fake_nova: FakeNova) -> None:
    cloud = fake_nova.cloud
    add_servers(cloud, 10)
    # Newest first: the third page starts after server 4.
    cloud.fail_when(SERVERS, marker=server_id(4))

    with pytest.raises(ListingError) as caught:
        make_collector(fake_nova, page_size=3).full_listing()

    error = caught.value
    assert "HTTP 500" in error.reason and "/servers/detail" in error.reason
    assert f"marker={server_id(4)}" in error.reason
    assert PASSWORD not in error.reason
    assert error.partial is not None
    read = list(error.partial.events("audit"))
    assert [type(e) for e in read[:2]] == [HypervisorObserved, ServiceObserved]
    assert sorted(e.uuid for e in read[2:]) == [server_id(n) for n in range(4, 10)]
    # Retried before giving up (3 retries), then not continued past the failing page.
    assert cloud.count(SERVERS) == 2 + 4


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("rewrite", "mentions"),
    [
        pytest.param(
            lambda body: body.replace(b'"metadata": {}', b'"metadata": ' + DEEP, 1),
            "the answer is nested too deeply to decode",
            id="deep",
        ),
        pytest.param(
            lambda body: body.replace(b'"name": "', b'"name": "caf\xe9 ', 1),
            "the answer is not UTF-8 (invalid continuation byte at byte ",
            id="not-utf8",
        ),
        pytest.param(lambda body: b"[" + body + b"]", "no 'servers' list", id="array"),
        pytest.param(lambda body: body[:-1], "the answer is not JSON", id="cut-short"),
    ],
)
def test_a_page_that_cannot_be_decoded_raises_with_what_was_read(
    fake_nova: FakeNova, rewrite: Any, mentions: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An answer Nova would never send (requests would let the decoder's RecursionError out,
    or silently replace bytes that are not UTF-8) fails the listing with the reason, keeping
    the pages read before it; nothing is retried (the answer was a 200)."""
    cloud = fake_nova.cloud
    add_servers(cloud, 10)
    cloud.rewrite_when(SERVERS, rewrite, marker=server_id(4))

    with pytest.raises(ListingError) as caught:
        make_collector(fake_nova, page_size=3).full_listing()

    error = caught.value
    assert mentions in error.reason
    assert (
        error.reason.startswith("GET /servers/detail?") and f"marker={server_id(4)}" in error.reason
    )
    assert error.partial is not None
    read = list(error.partial.events("audit"))
    assert sorted(e.uuid for e in read[2:]) == [server_id(n) for n in range(4, 10)]
    assert cloud.count(SERVERS) == 3
    assert not [r for r in caplog.records if r.exc_info]


@pytest.mark.parametrize(
    ("path", "mentions"),
    [
        (f"{COMPUTE}/os-services", "GET /os-services?binary=nova-compute: the answer is nested"),
        # Version discovery goes through python-novaclient's own managers.
        (COMPUTE, "an answer of the compute or placement API is nested too deeply to decode"),
    ],
)
def test_any_answer_nested_too_deeply_is_a_listing_error(
    fake_nova: FakeNova, path: str, mentions: str
) -> None:
    populate(fake_nova.cloud)
    fake_nova.cloud.rewrite_when(path, lambda body: DEEP)
    with pytest.raises(ListingError, match=re.escape(mentions)):
        make_collector(fake_nova).full_listing()


def test_a_service_item_that_is_not_an_object_is_rejected_alone(fake_nova: FakeNova) -> None:
    """The services answer is read like every page: an item that is not an object is rejected
    (with the reason) when translated, as a hypervisor item would be."""
    populate(fake_nova.cloud)
    fake_nova.cloud.rewrite_when(
        f"{COMPUTE}/os-services", lambda body: body.replace(b'"services": [', b'"services": [7, ')
    )
    listing = make_collector(fake_nova).full_listing()
    events = list(listing.events("audit"))
    assert listing.rejected == ["service None: not an object"]
    assert sum(isinstance(e, ServiceObserved) for e in events) == 2


def test_a_timeout_raises_a_listing_error(fake_nova: FakeNova) -> None:
    populate(fake_nova.cloud)
    fake_nova.cloud.delays[SERVERS] = 1.0
    collector = make_collector(
        fake_nova,
        session=make_session(fake_nova, timeout=0.2),
        retries=Retries(connect_retries=1, connect_retry_delay=0.01),
    )
    with pytest.raises(ListingError) as caught:
        collector.full_listing()
    assert "timed out" in caught.value.reason
    assert caught.value.partial is not None
    assert any(isinstance(e, HypervisorObserved) for e in caught.value.partial.events("audit"))


# -- down cells -------------------------------------------------------------------------------


def test_a_down_cell_makes_the_listing_incomplete(fake_nova: FakeNova) -> None:
    cloud = fake_nova.cloud
    populate(cloud)
    cloud.add_down_cell_server(server_id(90))
    cloud.down_cell_services.append("compute9")

    snap, incomplete = make_collector(fake_nova).full_snapshot()  # auto: >= 2.69

    assert server_id(90) not in {s["id"] for s in snap.servers}
    assert "compute9" not in {s["host"] for s in snap.services}
    assert len(snap.servers) == 5
    assert len(incomplete) == 2
    assert server_id(90) in incomplete[0] and "UNKNOWN" in incomplete[0]
    assert "compute9" in incomplete[1]


# -- credentials and endpoints ----------------------------------------------------------------


def test_a_bad_password_is_a_clear_credential_free_error(
    fake_nova: FakeNova, caplog: pytest.LogCaptureFixture
) -> None:
    populate(fake_nova.cloud)
    wrong = "not-the-password-7c1e"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ListingError) as caught:
        make_collector(fake_nova, session=make_session(fake_nova, password=wrong)).full_listing()
    reason = caught.value.reason
    assert reason.startswith("authentication failed for user 'admin' at auth_url ")
    assert fake_nova.auth_url in reason
    assert wrong not in reason and wrong not in caplog.text
    assert caught.value.partial is None


def test_no_secret_is_logged_during_a_listing(
    fake_nova: FakeNova, caplog: pytest.LogCaptureFixture
) -> None:
    populate(fake_nova.cloud)
    caplog.set_level(logging.DEBUG)
    make_collector(fake_nova).full_listing()
    assert fake_nova._tokens  # a token was issued and used
    for token in fake_nova._tokens:
        assert token not in caplog.text
    assert PASSWORD not in caplog.text


def test_no_compute_endpoint_is_a_clear_error(fake_nova: FakeNova) -> None:
    fake_nova.cloud.catalog_types.discard("compute")
    with pytest.raises(ListingError) as caught:
        make_collector(fake_nova).full_listing()
    assert caught.value.reason.startswith("no compute endpoint in the catalog")

    fake_nova.cloud.catalog_types.add("compute")
    with pytest.raises(ListingError) as caught:
        make_collector(fake_nova, region_name="Elsewhere").full_listing()
    assert "no compute endpoint" in caught.value.reason and "Elsewhere" in caught.value.reason


# -- timing and cheap audits ------------------------------------------------------------------


def test_captured_at_is_when_listing_started(fake_nova: FakeNova) -> None:
    populate(fake_nova.cloud)
    ticks = iter(range(1_800_000_000, 1_800_000_100))
    listing = make_collector(fake_nova, clock=lambda: float(next(ticks))).full_listing()
    assert listing.captured_at == 1_800_000_000.0


def test_changes_since_returns_changed_and_deleted_servers_only(
    fake_nova: FakeNova, tmp_path: Path
) -> None:
    cloud = fake_nova.cloud
    populate(cloud)
    collector = make_collector(fake_nova, page_size=2)
    service = SyncService(ComputeModel())
    bootstrap(service, collector.full_snapshot()[0])
    assert service.model.instance(server_id(2)) is not None

    # Sent floored to the second (Nova's updated_at has one-second resolution; >= is safe).
    since = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC).timestamp() + 0.75
    for server in cloud.servers:
        server["updated"] = "2026-11-01T00:00:00Z"
    cloud.update_server(server_id(1), "2026-11-23T00:00:00Z", name="web-1-renamed")
    cloud.delete_server(server_id(2), "2026-11-23T00:00:01Z")
    cloud.soft_delete(server_id(3), "2026-11-23T00:00:02Z")
    cloud.delete_server(server_id(6), "2026-11-23T00:00:03Z")  # deleted before bootstrap too

    listing = collector.changes_since(since)

    events = list(listing.events("audit"))
    states = {e.uuid: type(e).__name__ + getattr(e, "vm_state", "") for e in events}
    assert states == {
        server_id(1): "InstanceObservedactive",
        server_id(2): "InstanceDeleted",
        server_id(3): "InstanceObservedsoft-delete",
        server_id(6): "InstanceDeleted",
    }
    requests = [r for r in cloud.requests if r.path == SERVERS and "changes-since" in r.query]
    assert requests and all(r.query["changes-since"] == ["2026-11-22T12:00:00Z"] for r in requests)
    assert all("deleted" not in r.query for r in requests)
    assert len(requests) >= 2  # paginated (page_size 2)

    service.submit_all(events)
    assert service.model.instance(server_id(2)) is None
    renamed = service.model.instance(server_id(1))
    assert renamed is not None and renamed.name == "web-1-renamed"


# -- configuration ----------------------------------------------------------------------------


@pytest.fixture
def conf() -> Iterator[cfg.ConfigOpts]:
    conf = cfg.ConfigOpts()
    conf.register_opts(nova_client_conf.OPTS, group=nova_client_conf.GROUP)
    yield conf
    conf.reset()


def test_collector_from_conf_with_keystoneauth_options(
    fake_nova: FakeNova, conf: cfg.ConfigOpts, tmp_path: Path
) -> None:
    populate(fake_nova.cloud)
    config = tmp_path / "cdm-sync.conf"
    config.write_text(
        textwrap.dedent(
            f"""\
            [nova_client]
            auth_type = password
            auth_url = {fake_nova.auth_url}
            username = admin
            password = {PASSWORD}
            project_name = admin
            user_domain_name = Default
            project_domain_name = Default
            microversion = 2.53
            page_size = 2
            status_code_retry_delay = 0.01
            """
        )
    )
    conf(["--config-file", str(config)])
    snap, _ = collector_from_conf(conf).full_snapshot()
    assert snap.microversion == "2.53"
    assert len(snap.servers) == 5
    limits = {
        r.query.get("limit", [None])[0] for r in fake_nova.cloud.requests if r.path == SERVERS
    }
    assert limits == {"2"}


def test_collector_from_conf_with_a_clouds_yaml_cloud(
    fake_nova: FakeNova, conf: cfg.ConfigOpts, tmp_path: Path
) -> None:
    populate(fake_nova.cloud)
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(
        textwrap.dedent(
            f"""\
            clouds:
              fake:
                auth:
                  auth_url: {fake_nova.auth_url}
                  username: admin
                  project_name: admin
                  user_domain_name: Default
                  project_domain_name: Default
                region_name: RegionOne
                interface: internal
                api_timeout: 5
            """
        )
    )
    # The password lives in secure.yaml next to it, as the openstack CLI allows.
    (tmp_path / "secure.yaml").write_text(
        f"clouds:\n  fake:\n    auth:\n      password: {PASSWORD}\n"
    )
    conf.set_override("cloud", "fake", group="nova_client")
    conf.set_override("clouds_file", str(clouds), group="nova_client")
    assert len(collector_from_conf(conf).full_snapshot()[0].servers) == 5

    conf.set_override("cloud", "nope", group="nova_client")
    with pytest.raises(AuthConfigError, match=r"no cloud named 'nope' \(clouds: fake\)"):
        collector_from_conf(conf)
