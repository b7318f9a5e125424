"""Clock skew must not make drift unrepairable: the acceptance test of that issue.

Why this file exists: versions come from ``updated_at`` and envelope timestamps, which Nova's
hosts (the controller, each nova-compute) write with their own clocks. A host whose clock runs
ahead makes every later observation of its instances look stale, so version checks alone can
leave the model wrong for ever; and a deletion judged by cdm-sync's clock against Nova's stamps
can remove an instance created while the listing was read. The live engine answers with
``seen_at`` (absence deletes only what the model has not observed since the listing began, less
a margin) and with the overrule (a correction two full listings in a row agree on, with nothing
observed in between, wins whatever the versions say). This file checks both against a simulated
Nova whose hosts' clocks are ten minutes ahead and behind, through the live engine
(``SyncEngine.bootstrap``/``full_audit``), the real notification endpoints and the compute
API's listing shape.

The simulation (``Nova``) keeps Nova's semantics that matter here:

- each operation is performed by one host, which writes the instance record (``updated_at``,
  one-second resolution, on its clock) and emits the versioned notification (Nova's own sample
  payload, ``updated_at`` of that write, envelope ``timestamp`` on the emitter's clock, a fresh
  message id): create, stop and start, live migration (written and announced by the
  destination), delete by the compute host; lock and unlock by the controller (nova-api);
  a compute service auto-disabled by its own host, enabled or disabled by the controller;
- a full listing is what Nova holds when it begins, at microversion 2.53, each server's
  ``updated`` its record's ``updated_at``, ``captured_at`` cdm-sync's clock; Nova keeps changing
  while it is read (``SimCollector.while_listing``), and the read takes time;
- notifications may be lost (the drift audits must repair).
"""

from __future__ import annotations

import copy
import functools
import math
import uuid as uuidlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cdm_sync.messaging.endpoints import Dispatcher
from cdm_sync.model import ChangeRecord
from cdm_sync.model.changes import format_timestamp
from cdm_sync.nova.snapshot import Snapshot, listing_of
from cdm_sync.sync import engine as engine_module
from cdm_sync.sync.audit import AuditReport
from cdm_sync.sync.engine import DEFAULT_DELETION_MARGIN, SyncEngine
from cdm_sync.sync.ports import Listing, ListingError, Progress
from tests.conftest import FakeClock, Harness, NovaListing
from tests.samples import load_sample
from tests.test_engine import BufferGate

T0 = 1_800_000_000.0  # true time when a scenario starts
TEN_MINUTES = 600.0
CONTROLLER = "controller"  # nova-api and nova-conductor
COMPUTES = ("compute1", "compute2", "compute3")
MARGIN = DEFAULT_DELETION_MARGIN  # the engine's default, kept: it is part of what is tested
LISTING_TAKES = 20.0  # seconds of true time a full listing takes to read
AUDIT_INTERVAL = 3600.0  # the default full audit interval
# (vcpus, ram, disk, ephemeral) by flavor name; the flavor id is the name.
FLAVORS: Mapping[str, tuple[int, int, int, int]] = {
    "m1.small": (1, 2048, 20, 0),
    "m1.large": (4, 8192, 40, 10),
}
POWER_STATE = {1: "running", 4: "shutdown"}  # the API's code -> the notification's name


def node_uuid(host: str) -> str:
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, f"{host}.skew.test"))


def db_stamp(posix: float) -> str:
    """A DB ``updated_at`` as the API and the payloads show it (one-second resolution)."""
    return datetime.fromtimestamp(posix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def envelope_stamp(posix: float) -> str:
    """An envelope ``timestamp`` as oslo.messaging writes it (str(utcnow()))."""
    return datetime.fromtimestamp(posix, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


@functools.cache
def _sample(name: str) -> dict[str, Any]:
    return load_sample(name)


def sample(name: str) -> dict[str, Any]:
    """A fresh copy of Nova's notification sample ``name`` (resolved once, copied each time)."""
    return copy.deepcopy(_sample(name))


class SkewedClock(FakeClock):
    """A clock ``offset`` seconds off true time; advancing it advances true time."""

    def __init__(self, true: FakeClock, offset: float) -> None:
        self.true = true
        self.offset = offset

    @property  # type: ignore[override]
    def now(self) -> float:
        return self.true.now + self.offset

    @now.setter
    def now(self, value: float) -> None:
        self.true.now = value - self.offset


@pytest.fixture(autouse=True, scope="module")
def _no_heap_settling() -> Iterator[None]:
    """The engine settles the heap after each bootstrap and full audit (a whole-heap garbage
    collection for a new engine, tested in test_engine.py): here, hundreds of small engines
    would spend nearly all their time in it, for nothing this file checks."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine_module, "settle_heap", lambda deep=False: 0.0)
        yield


# -- Nova ----------------------------------------------------------------------------------------


@dataclass
class Server:
    """An instance record of Nova's cell database."""

    uuid: str
    name: str
    host: str
    flavor: str
    updated_at: float  # written by the host that saved the record last, on its clock
    vm_state: str = "active"
    power_state: int = 1
    locked: bool = False


@dataclass
class Service:
    """A nova-compute service record."""

    host: str
    disabled: bool = False
    disabled_reason: str | None = None


class Nova:
    """Nova's truth, written and announced by hosts whose clocks disagree.

    Every operation returns the notification it emits, for the test to deliver or lose.
    ``offsets``: each host's clock minus true time.
    """

    def __init__(self, time: FakeClock, offsets: Mapping[str, float]) -> None:
        self.time = time
        self.offsets = dict(offsets)
        self.servers: dict[str, Server] = {}
        self.services = {host: Service(host) for host in COMPUTES}
        self._uuids = 0
        self._messages = 0

    def clock_of(self, host: str) -> float:
        return self.time() + self.offsets[host]

    def _saved(self, server: Server, writer: str) -> None:
        server.updated_at = math.floor(self.clock_of(writer))

    def _message_id(self) -> str:
        self._messages += 1
        return str(uuidlib.UUID(int=self._messages))

    def _instance_note(
        self, sample_name: str, server: Server, emitter: str, *, deleted: bool = False
    ) -> dict[str, Any]:
        """Nova's sample ``sample_name`` about ``server`` as it is now, emitted by ``emitter``."""
        line = sample(sample_name)
        data = line["payload"]["nova_object.data"]
        vcpus, ram, disk, ephemeral = FLAVORS[server.flavor]
        data.update(
            uuid=server.uuid,
            display_name=server.name,
            tenant_id="project-a",
            user_id="user-a",
            host=server.host,
            node=server.host,
            state="deleted" if deleted else server.vm_state,
            power_state=POWER_STATE[server.power_state],
            task_state=None,
            locked=server.locked,
            metadata={},
            updated_at=db_stamp(server.updated_at),
        )
        data["flavor"]["nova_object.data"].update(
            name=server.flavor, vcpus=vcpus, memory_mb=ram, root_gb=disk, ephemeral_gb=ephemeral
        )
        binary = "nova-api" if emitter == CONTROLLER else "nova-compute"
        line["publisher_id"] = f"{binary}:{emitter}"
        line["metadata"] = {
            "message_id": self._message_id(),
            "timestamp": envelope_stamp(self.clock_of(emitter)),
        }
        line["ctxt"] = {}
        return line

    def _service_note(self, service: Service, emitter: str) -> dict[str, Any]:
        """service.update: the payload names the service; the process that saved it (the
        controller, or the compute itself) stamps the envelope with its clock."""
        line = sample("service-update")
        line["payload"]["nova_object.data"].update(
            host=service.host,
            disabled=service.disabled,
            disabled_reason=service.disabled_reason,
            forced_down=False,
        )
        line["publisher_id"] = f"nova-compute:{service.host}"
        line["metadata"] = {
            "message_id": self._message_id(),
            "timestamp": envelope_stamp(self.clock_of(emitter)),
        }
        line["ctxt"] = {}
        return line

    # -- operations ------------------------------------------------------------------------------

    def create(self, host: str, flavor: str = "m1.small") -> tuple[str, dict[str, Any]]:
        """Boot a server on ``host``; the compute host's last save makes it active."""
        self._uuids += 1
        uuid = f"5ce0c10c-0000-4000-8000-{self._uuids:012d}"
        server = Server(uuid, f"vm-{self._uuids}", host, flavor, 0.0)
        self._saved(server, host)
        self.servers[uuid] = server
        return uuid, self._instance_note("instance-create-end", server, host)

    def stop(self, uuid: str) -> dict[str, Any]:
        server = self.servers[uuid]
        server.vm_state, server.power_state = "stopped", 4
        self._saved(server, server.host)
        return self._instance_note("instance-power_off-end", server, server.host)

    def start(self, uuid: str) -> dict[str, Any]:
        server = self.servers[uuid]
        server.vm_state, server.power_state = "active", 1
        self._saved(server, server.host)
        return self._instance_note("instance-power_on-end", server, server.host)

    def lock(self, uuid: str, locked: bool = True) -> dict[str, Any]:
        """nova-api saves the lock and announces it."""
        server = self.servers[uuid]
        server.locked = locked
        self._saved(server, CONTROLLER)
        return self._instance_note(
            "instance-lock" if locked else "instance-unlock", server, CONTROLLER
        )

    def migrate(self, uuid: str, dest: str) -> dict[str, Any]:
        """Live migration: the destination saves the new host and announces it (the source's
        ``live_migration_post.end`` proves nothing more and is left out)."""
        server = self.servers[uuid]
        server.host = dest
        self._saved(server, dest)
        return self._instance_note("instance-live_migration_post_dest-end", server, dest)

    def delete(self, uuid: str) -> dict[str, Any]:
        """The compute host saves the deleted state, then soft-deletes the row (which keeps
        ``updated_at``): the server is gone from listings."""
        server = self.servers.pop(uuid)
        self._saved(server, server.host)
        return self._instance_note("instance-delete-end", server, server.host, deleted=True)

    def set_service(self, host: str, disabled: bool, *, by: str = CONTROLLER) -> dict[str, Any]:
        """An operator (through the controller) or the compute itself (auto-disabled after
        repeated build failures) changes the service's status."""
        service = self.services[host]
        service.disabled = disabled
        service.disabled_reason = (
            None if not disabled else "auto-disabled" if by == host else "maintenance"
        )
        return self._service_note(service, by)

    # -- the compute API -------------------------------------------------------------------------

    def listing(self, captured_at: float) -> NovaListing:
        """What ``GET /os-services``, ``/os-hypervisors/detail`` and ``/servers/detail`` return
        now, at microversion 2.53; ``captured_at`` is the reader's clock."""
        cloud = NovaListing("2.53", captured_at=format_timestamp(captured_at))
        for name, (vcpus, ram, disk, ephemeral) in FLAVORS.items():
            cloud.add_flavor(name, name, vcpus, ram, disk, ephemeral)
        for host in COMPUTES:
            service = self.services[host]
            cloud.add_host(
                host,
                node_uuid=node_uuid(host),
                status="disabled" if service.disabled else "enabled",
                disabled_reason=service.disabled_reason,
            )
        for server in self.servers.values():
            cloud.add_server(
                server.uuid,
                host=server.host,
                node=server.host,
                flavor_id=server.flavor,
                vm_state=server.vm_state,
                power_state=server.power_state,
                name=server.name,
                locked=server.locked,
                updated=db_stamp(server.updated_at),
            )
        return cloud


# -- cdm-sync wired to it --------------------------------------------------------------------------


class SimCollector:
    """The ``Collector`` port over ``Nova``: a full listing holds what Nova held when it began
    (``captured_at``: cdm-sync's clock then); the ``while_listing`` steps (used once) run after
    that moment and before the listing is handed back, as Nova changes while it is read."""

    def __init__(self, nova: Nova, clock: FakeClock) -> None:
        self.nova = nova
        self.clock = clock
        self.while_listing: list[Callable[[], None]] = []

    def full_listing(self, progress: Progress | None = None) -> Listing:
        doc = self.nova.listing(self.clock()).doc()
        steps, self.while_listing = self.while_listing, []
        for step in steps:
            step()
        self.clock.advance(LISTING_TAKES)
        return listing_of(Snapshot.from_dict(doc))

    def nodes_listing(self, progress: Progress | None = None) -> Listing:
        doc = self.nova.listing(self.clock()).doc()
        doc["servers"] = []
        return listing_of(Snapshot.from_dict(doc))

    def changes_since(self, since: float, progress: Progress | None = None) -> Listing:
        # Cheap audits are not what this file tests (and Nova's changes-since filter compares
        # skewed updated_at stamps: a different question).
        raise ListingError("changes-since is not simulated")


def dump_of(harness: Harness) -> dict[str, Any]:
    doc = harness.model.to_dict()
    del doc["revision"]
    return doc


class World:
    """cdm-sync (model, endpoints, gate, engine) on its own clock, and the Nova it follows.

    ``offsets``: Nova's hosts' clocks minus true time; ``cdm_offset``: cdm-sync's. Time moves
    only when the scenario says so (``wait``), as it would between the steps it stands for.
    """

    def __init__(self, offsets: Mapping[str, float], cdm_offset: float = 0.0) -> None:
        self.time = FakeClock(T0)  # true time
        self.nova = Nova(self.time, offsets)
        self.clock = SkewedClock(self.time, cdm_offset)  # the model's and the engine's
        self.harness = Harness(self.clock, legacy=False)
        self.gate = BufferGate(Dispatcher(self.harness.endpoints, self.harness.service))
        self.collector = SimCollector(self.nova, self.clock)
        # No shrink guard: a listing much smaller than a model full of ghosts is what lost
        # deletes look like here, and the guard is tested elsewhere.
        self.engine = SyncEngine(
            self.harness.service, self.collector, self.gate, full_shrink_limit=1.0
        )
        self.lost: list[dict[str, Any]] = []

    def wait(self, seconds: float) -> None:
        self.time.advance(seconds)

    def send(self, line: dict[str, Any], *, lost: bool = False) -> None:
        """Nova's notification reaches the listener (through the gate), or is lost."""
        if lost:
            self.lost.append(line)
        else:
            self.gate.deliver(line)

    def while_listing(self, *steps: Callable[[], None]) -> None:
        """Run ``steps`` while the next full listing is read."""
        self.collector.while_listing = list(steps)

    def bootstrap(self) -> None:
        report = self.engine.bootstrap()
        assert report.result == "ok", report.line()

    def audit(self) -> AuditReport:
        report = self.engine.full_audit()
        assert report.result == "ok" and report.audit is not None, report.line()
        assert self.harness.model.check_integrity() == []
        return report.audit

    def dump(self) -> dict[str, Any]:
        return dump_of(self.harness)

    def truth(self) -> dict[str, Any]:
        """The model a fresh bootstrap of a listing of Nova now builds."""
        fresh = Harness(FakeClock(), legacy=False)
        fresh.bootstrap(self.nova.listing(self.clock()).snapshot())
        return dump_of(fresh)

    def instance(self, uuid: str) -> Any:
        return self.harness.model.instance(uuid)

    def removed(self, uuid: str) -> bool:
        """Whether the model ever removed ``uuid`` or tombstoned it."""
        model = self.harness.model
        return uuid in model.instance_tombstones or any(
            r.uuid == uuid and r.op == "remove" for r in self.harness.records
        )


def outcomes(world: World, event_type: str) -> dict[str, int]:
    return dict(world.harness.outcomes(event_type))


def differs(world: World, uuid: str) -> bool:
    """Whether the model's dump of instance ``uuid`` differs from Nova's truth."""

    def entry(doc: dict[str, Any]) -> Any:
        return next((i for i in doc["instances"] if i["uuid"] == uuid), None)

    return entry(world.dump()) != entry(world.truth())


# -- explicit scenarios -------------------------------------------------------------------------

CDM_OFFSETS = pytest.mark.parametrize(
    "cdm_offset", [-TEN_MINUTES, 0.0, TEN_MINUTES], ids=["cdm-behind", "cdm-on-time", "cdm-ahead"]
)


@CDM_OFFSETS
def test_a_host_ahead_makes_the_first_audit_contest_and_the_second_repair(
    cdm_offset: float,
) -> None:
    """The issue's case: a server born on a host ten minutes ahead moves to a host ten minutes
    behind. Every later notification about it, and the first audit's correction, look older
    than its birth, so versions alone never repair it; the second audit does."""
    world = World({CONTROLLER: 0.0, "compute1": TEN_MINUTES, "compute2": -TEN_MINUTES}, cdm_offset)
    world.nova.create("compute2")
    world.wait(60)
    world.bootstrap()
    world.wait(60)
    uuid, line = world.nova.create("compute1")
    world.send(line)
    world.wait(120)
    world.send(world.nova.migrate(uuid, "compute2"))
    world.wait(120)
    world.send(world.nova.stop(uuid))
    # Delivered, and refused as stale: the skew, not a lost message, is the drift here.
    assert outcomes(world, "instance.live_migration_post_dest.end") == {"stale": 1}
    assert outcomes(world, "instance.power_off.end") == {"stale": 1}
    assert world.instance(uuid).host == "compute1" and differs(world, uuid)
    world.wait(300)

    first = world.audit()

    assert first.contested.keys() == {("instance", uuid)}
    assert first.overruled == 0 and first.newer_in_model == 1
    assert world.instance(uuid).host == "compute1" and differs(world, uuid)
    world.wait(AUDIT_INTERVAL)

    second = world.audit()

    assert second.overruled == 1 and second.contested == {}
    assert second.drift[("instance", "stale_field")] == 1
    assert world.dump() == world.truth()
    assert world.instance(uuid).host == "compute2"
    assert world.instance(uuid).vm_state == "stopped"


@CDM_OFFSETS
def test_a_service_status_from_a_host_ahead_is_repaired_by_the_second_audit(
    cdm_offset: float,
) -> None:
    """A compute ten minutes ahead auto-disables itself; the operator enables it again through
    the controller, on time: that notification looks older and is refused, and so is the first
    audit's correction of the compute node; the second audit's is not."""
    world = World({CONTROLLER: 0.0, "compute1": TEN_MINUTES}, cdm_offset)
    world.nova.create("compute1")
    world.bootstrap()
    world.wait(60)
    world.send(world.nova.set_service("compute1", True, by="compute1"))
    world.wait(120)
    world.send(world.nova.set_service("compute1", False))
    assert outcomes(world, "service.update") == {"changed": 1, "stale": 1}
    assert world.harness.model.node(node_uuid("compute1")).status == "disabled"
    world.wait(120)

    first = world.audit()

    node = world.harness.model.node(node_uuid("compute1"))
    if cdm_offset < TEN_MINUTES:
        # The listing's capture (cdm-sync's clock) looks older than the compute's stamp.
        assert first.contested.keys() == {("compute_node", node_uuid("compute1"))}
        assert node.status == "disabled" and world.dump() != world.truth()
    else:
        # cdm-sync's clock is as far ahead as the compute's: the listing wins at once.
        assert first.contested == {} and node.status == "enabled"
    world.wait(AUDIT_INTERVAL)

    second = world.audit()

    assert second.overruled == (1 if cdm_offset < TEN_MINUTES else 0)
    assert world.dump() == world.truth()


HOST_OFFSETS = pytest.mark.parametrize(
    "host_offset",
    [-TEN_MINUTES, 0.0, TEN_MINUTES],
    ids=["host-behind", "host-on-time", "host-ahead"],
)


@CDM_OFFSETS
@HOST_OFFSETS
def test_an_instance_created_while_the_listing_is_read_is_not_deleted_by_it(
    host_offset: float, cdm_offset: float
) -> None:
    """Absent from the listing (it did not exist when the listing began) but observed since:
    the audit neither removes nor tombstones it, whatever the clocks say."""
    world = World({CONTROLLER: 0.0, "compute1": host_offset}, cdm_offset)
    world.nova.create("compute1")
    world.bootstrap()
    world.wait(AUDIT_INTERVAL)
    created: list[str] = []

    def boot_one() -> None:
        world.wait(5)  # the listing began before Nova made the server
        uuid, line = world.nova.create("compute1")
        created.append(uuid)
        world.send(line)

    world.while_listing(boot_one)

    report = world.audit()

    [uuid] = created
    assert world.instance(uuid) is not None and not world.removed(uuid)
    assert report.drift_by_kind()["ghost"] == 0
    world.wait(AUDIT_INTERVAL)
    world.audit()  # the next listing shows it: nothing to correct
    assert world.instance(uuid) is not None and not world.removed(uuid)
    assert world.dump() == world.truth()


@pytest.mark.parametrize(
    ("touched", "overruled_by"),
    [("between-the-audits", 3), ("while-the-second-listing-is-read", 4)],
)
def test_a_notification_after_the_first_listing_defers_the_overrule(
    touched: str, overruled_by: int
) -> None:
    """An observation of the element after a listing began means that listing and the next
    cannot be trusted to agree over it: no overrule until two listings in a row disagree with
    the model and nothing observed the element since the first of them began. Touched between
    the first two audits, the second and third listings qualify; touched while the second
    listing is read (which misses the change), only the third and the fourth."""
    world = World({CONTROLLER: TEN_MINUTES, "compute1": TEN_MINUTES, "compute2": -TEN_MINUTES})
    world.nova.create("compute2")
    world.bootstrap()
    world.wait(60)
    uuid, line = world.nova.create("compute1")
    world.send(line)
    world.wait(120)
    world.send(world.nova.migrate(uuid, "compute2"))  # stale: compute2 is behind
    world.wait(300)
    first = world.audit()
    assert first.contested.keys() == {("instance", uuid)} and differs(world, uuid)
    world.wait(AUDIT_INTERVAL)

    def touch() -> None:
        world.wait(5)
        # The controller (ahead) locks it: applied, it brings the model up to date...
        world.send(world.nova.lock(uuid))
        assert outcomes(world, "instance.lock") == {"changed": 1}
        world.wait(5)
        # ...then compute2 (behind) stops it: refused as stale, so the model differs again.
        world.send(world.nova.stop(uuid))
        assert outcomes(world, "instance.power_off.end") == {"stale": 1}

    if touched == "between-the-audits":
        touch()
        world.wait(300)
    else:
        world.while_listing(touch)

    for audit in range(2, overruled_by):
        report = world.audit()
        assert report.overruled == 0, f"audit {audit} overruled"
        assert ("instance", uuid) in report.contested
        assert differs(world, uuid) and world.instance(uuid).vm_state == "active"
        world.wait(AUDIT_INTERVAL)

    last = world.audit()

    assert last.overruled == 1
    assert world.dump() == world.truth()


@pytest.mark.parametrize("contested_by", ["a-controller-behind", "a-change-during-the-listing"])
def test_an_instance_deleted_while_the_second_listing_is_read_stays_deleted(
    contested_by: str,
) -> None:
    """A deletion is a notification touching the element too. The first audit could not make a
    correction (a stale-looking lock from a controller behind, or a listing older than a stop
    applied while it was read, clocks agreeing); the second listing was read before Nova
    deleted the server and still shows it, and the delete notification was applied (the model
    removed and tombstoned the server) before the correction. The overrule must not bring the
    server back: Nova never reuses a uuid, and the notification is newer than the listing."""
    skewed = contested_by == "a-controller-behind"
    world = World({CONTROLLER: -TEN_MINUTES if skewed else 0.0, "compute1": 0.0})
    world.nova.create("compute1")
    world.bootstrap()
    world.wait(60)
    uuid, line = world.nova.create("compute1")
    world.send(line)
    world.wait(60)
    if skewed:
        world.send(world.nova.lock(uuid))
        assert outcomes(world, "instance.lock") == {"stale": 1}
        world.wait(300)
    else:
        world.wait(300)

        def stop() -> None:
            world.wait(5)
            world.send(world.nova.stop(uuid))  # applied: the listing misses it

        world.while_listing(stop)
    first = world.audit()
    assert first.contested.keys() == {("instance", uuid)}
    world.wait(AUDIT_INTERVAL)

    def delete() -> None:
        world.wait(5)
        world.send(world.nova.delete(uuid))

    world.while_listing(delete)

    second = world.audit()

    assert outcomes(world, "instance.delete.end") == {"changed": 1}
    assert world.instance(uuid) is None, (
        f"deleted by a notification while the listing was read, brought back by the audit "
        f"(overruled {second.overruled})"
    )
    assert uuid in world.harness.model.instance_tombstones
    assert world.dump() == world.truth()


def test_an_observation_within_the_margin_before_a_listing_counts_as_after_it() -> None:
    """The deletion margin also bounds the overrule: what the model observed less than
    ``deletion_margin`` before a listing began may be newer than that listing (Nova may not
    show it yet), so that listing's disagreement does not count as the first of two. Here the
    model is updated within the margin before the first audit: the second audit does not
    overrule, the third does. (The property below starts its audits past the margin for that
    reason.)"""
    world = World({CONTROLLER: TEN_MINUTES, "compute1": TEN_MINUTES, "compute2": -TEN_MINUTES})
    world.nova.create("compute2")
    world.bootstrap()
    world.wait(60)
    uuid, line = world.nova.create("compute1")
    world.send(line)
    world.wait(120)
    world.send(world.nova.migrate(uuid, "compute2"))  # stale: compute2 is behind
    world.wait(300)
    world.send(world.nova.lock(uuid))  # applied: the controller is ahead
    world.wait(MARGIN / 5)
    world.send(world.nova.stop(uuid))  # stale
    assert outcomes(world, "instance.lock") == {"changed": 1}
    world.wait(MARGIN / 5)
    first = world.audit()
    assert first.contested.keys() == {("instance", uuid)}
    world.wait(AUDIT_INTERVAL)
    second = world.audit()
    assert second.overruled == 0 and differs(world, uuid)
    world.wait(AUDIT_INTERVAL)
    third = world.audit()
    assert third.overruled == 1
    assert world.dump() == world.truth()


# -- property: random histories on skewed clocks -----------------------------------------------

OFFSET = st.sampled_from((-TEN_MINUTES, 0.0, TEN_MINUTES)) | st.floats(-TEN_MINUTES, TEN_MINUTES)
KINDS = ("create", "power", "lock", "migrate", "delete", "service")


@dataclass(frozen=True)
class Step:
    """One operation in Nova: ``kind``; ``target`` picks the server (modulo the live ones) or
    who changes a service; ``host`` picks a compute; ``gap``: seconds before it; ``lost``: its
    notification never arrives."""

    kind: str
    target: int = 0
    host: int = 0
    gap: float = 10.0
    lost: bool = False


@dataclass(frozen=True)
class History:
    offsets: tuple[float, float, float, float]  # the controller's, then each compute's
    cdm_offset: float
    initial: int  # servers Nova has before cdm-sync starts
    during_bootstrap: tuple[Step, ...]  # while the bootstrap listing is read
    steps: tuple[Step, ...]
    quiet: float  # seconds from the last notification to the first audit
    # Servers created while the first audit's listing is read: (compute, notification lost).
    created_while_listing: tuple[tuple[int, bool], ...]


STEPS = st.builds(
    Step,
    kind=st.sampled_from(KINDS),
    target=st.integers(0, 7),
    host=st.integers(0, 5),
    gap=st.floats(1.0, 300.0),
    lost=st.booleans(),
)

HISTORIES = st.builds(
    History,
    offsets=st.tuples(OFFSET, OFFSET, OFFSET, OFFSET),
    cdm_offset=OFFSET,
    initial=st.integers(0, 4),
    during_bootstrap=st.lists(STEPS, max_size=3).map(tuple),
    steps=st.lists(STEPS, max_size=14).map(tuple),
    # Past the deletion margin: a notification within it before the first listing counts as
    # observed after that listing began (see test_an_observation_within_the_margin_...).
    quiet=st.floats(MARGIN + 1.0, 2 * TEN_MINUTES),
    created_while_listing=st.lists(st.tuples(st.integers(0, 2), st.booleans()), max_size=2).map(
        tuple
    ),
)

PROPERTY_SETTINGS = settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def perform(nova: Nova, step: Step) -> dict[str, Any] | None:
    """Carry ``step`` out in ``nova``; the notification it emits (None: not applicable)."""
    compute = COMPUTES[step.host % len(COMPUTES)]
    if step.kind == "create":
        return nova.create(compute, "m1.large" if step.target % 2 else "m1.small")[1]
    if step.kind == "service":
        service = nova.services[compute]
        # A compute only ever disables itself; the operator toggles through the controller.
        by = compute if step.target % 2 and not service.disabled else CONTROLLER
        return nova.set_service(compute, not service.disabled, by=by)
    live = sorted(nova.servers)
    if not live:
        return None
    server = nova.servers[live[step.target % len(live)]]
    if step.kind == "power":
        return nova.start(server.uuid) if server.vm_state == "stopped" else nova.stop(server.uuid)
    if step.kind == "lock":
        return nova.lock(server.uuid, not server.locked)
    if step.kind == "migrate":
        others = [h for h in COMPUTES if h != server.host]
        return nova.migrate(server.uuid, others[step.host % len(others)])
    assert step.kind == "delete"
    return nova.delete(server.uuid)


def play(world: World, steps: Iterable[Step]) -> None:
    for step in steps:
        world.wait(step.gap)
        line = perform(world.nova, step)
        if line is not None:
            world.send(line, lost=step.lost)


def world_of(history: History) -> World:
    """The history's Nova and a bootstrapped cdm-sync, after every step."""
    offsets = dict(zip((CONTROLLER, *COMPUTES), history.offsets, strict=True))
    world = World(offsets, history.cdm_offset)
    for i in range(history.initial):
        world.nova.create(COMPUTES[i % len(COMPUTES)])  # before cdm-sync listens
        world.wait(30)
    world.while_listing(lambda: play(world, history.during_bootstrap))
    world.bootstrap()
    play(world, history.steps)
    return world


# The issue's case, in the generator's terms: a server created on a compute ahead, moved to one
# behind, stopped there; a compute auto-disabling itself and enabled again by the controller.
ISSUE_HISTORY = History(
    offsets=(0.0, TEN_MINUTES, -TEN_MINUTES, 0.0),
    cdm_offset=-TEN_MINUTES,
    initial=1,
    during_bootstrap=(),
    steps=(
        Step("create", host=0),
        Step("migrate", target=1, host=0, gap=60.0),
        Step("power", target=1, gap=60.0),
        Step("service", target=1, host=0),
        Step("service", target=0, host=0, gap=60.0),
    ),
    quiet=MARGIN + 1.0,
    created_while_listing=((1, False),),
)


@given(HISTORIES)
@example(ISSUE_HISTORY)
@PROPERTY_SETTINGS
def test_after_the_notifications_two_full_audits_make_the_model_equal_nova(
    history: History,
) -> None:
    """Whatever the clocks of Nova's hosts and of cdm-sync (ten minutes either way and between)
    and whichever notifications are lost: once the notifications are in, at most two full
    audits make the model what a fresh bootstrap of Nova builds; and a server created while the
    first audit's listing was read, whose notification arrived, is not removed by that audit."""
    world = world_of(history)
    world.wait(history.quiet)
    created: list[tuple[str, bool]] = []

    def boot() -> None:
        for host, lost in history.created_while_listing:
            world.wait(3)
            uuid, line = world.nova.create(COMPUTES[host])
            created.append((uuid, lost))
            world.send(line, lost=lost)

    world.while_listing(boot)

    world.audit()

    for uuid, lost in created:
        assert world.removed(uuid) is False
        assert (world.instance(uuid) is not None) is not lost
    world.wait(AUDIT_INTERVAL)

    world.audit()

    assert world.dump() == world.truth()
    assert not any(world.removed(uuid) for uuid, _ in created)


def test_the_issue_history_needs_the_second_audit() -> None:
    """The example the property always runs is one the first audit alone cannot repair (so the
    property exercises the overrule, not only versions that happen to agree)."""
    world = world_of(ISSUE_HISTORY)
    world.wait(ISSUE_HISTORY.quiet)
    first = world.audit()
    assert len(first.contested) == 2  # the moved server and compute1's node
    assert world.dump() != world.truth()
    world.wait(AUDIT_INTERVAL)
    second = world.audit()
    assert second.overruled == 2
    assert world.dump() == world.truth()


# -- property: Nova keeps changing while it is listed ------------------------------------------

# What happens while a listing is read: a few operations, seconds apart (a listing of 200,000
# servers takes about 25 s; tombstones last 600 s, longer than any listing here).
CHURN_STEPS = st.builds(
    Step,
    kind=st.sampled_from(KINDS),
    target=st.integers(0, 7),
    host=st.integers(0, 5),
    gap=st.floats(1.0, 20.0),
    lost=st.booleans(),
)
CHURN = st.lists(st.lists(CHURN_STEPS, max_size=4).map(tuple), min_size=1, max_size=3).map(tuple)

# Found by this property with every clock agreeing: a server stopped while the first audit's
# listing is read (contested: that listing is older), then deleted while the second is read.
AGREEING_CLOCKS = History(
    offsets=(0.0, 0.0, 0.0, 0.0),
    cdm_offset=0.0,
    initial=0,
    during_bootstrap=(),
    steps=(Step("create"),),
    quiet=MARGIN + 1.0,
    created_while_listing=(),
)
STOP_THEN_DELETE = ((Step("power", gap=1.0),), (Step("create", gap=1.0), Step("delete", gap=1.0)))


def notification_records(world: World, since: int) -> list[ChangeRecord]:
    return [r for r in world.harness.records[since:] if r.cause.source == "notification"]


def audit_while(world: World, steps: Iterable[Step]) -> tuple[set[str], list[ChangeRecord]]:
    """A full audit while ``steps`` happen in Nova as its listing is read. Returns the
    instances the model observed from notifications meanwhile, and the audit's corrections."""
    observed: set[str] = set()
    before = len(world.harness.records)

    def change() -> None:
        start = len(world.harness.records)
        play(world, steps)
        observed.update(
            r.uuid
            for r in notification_records(world, start)
            if r.kind == "instance" and r.op != "remove"
        )

    world.while_listing(change)
    world.audit()
    records = world.harness.records[before:]
    return observed, [r for r in records if r.cause.source == "audit"]


@given(HISTORIES, CHURN)
@example(AGREEING_CLOCKS, STOP_THEN_DELETE)
@PROPERTY_SETTINGS
def test_audits_while_nova_changes_never_undo_what_was_observed_during_their_listing(
    history: History, churn: tuple[tuple[Step, ...], ...]
) -> None:
    """Full audits whose listings Nova changes under (``churn``: what happens while each is
    read), on skewed clocks. Each audit: removes nothing the model observed while its listing
    was read, and never brings back a server a notification deleted (Nova never reuses a
    uuid). Once Nova is quiet, two more full audits make the model equal Nova."""
    world = world_of(history)
    for steps in churn:
        world.wait(history.quiet)

        observed, corrections = audit_while(world, steps)

        assert not [r.uuid for r in corrections if r.op == "remove" and r.uuid in observed]
        deleted = {r.uuid for r in notification_records(world, 0) if r.op == "remove"}
        assert not [r.uuid for r in corrections if r.op == "add" and r.uuid in deleted], (
            "an audit brought back a server a notification deleted"
        )
        world.wait(AUDIT_INTERVAL)
    world.wait(history.quiet)
    world.audit()
    world.wait(AUDIT_INTERVAL)
    world.audit()
    assert world.dump() == world.truth()
