"""Conformance: after every scenario driven through a real Nova's API, cdm-sync equals Nova.

The scenarios are the issue's list: the server lifecycle, every kind of move, compute service
changes, a seeded random mix, and lost notifications repaired by the next audit. Nova decides
where servers land (its scheduler breaks ties unpredictably), so nothing here predicts a host:
the check compares cdm-sync's dump with Nova's own listings read after the fact.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kombu
import pytest

from tests.conformance.conftest import (
    KOMBU_URL,
    NOTIFY_PRIORITIES,
    Conformance,
    NovaInfo,
    cdm_sync_config,
    diff_model,
    free_port,
    nova_exc,
)


def test_lifecycle(scenario: Conformance) -> None:
    d, servers = scenario, scenario.nova.servers
    a, b, c = d.create("a"), d.create("b", flavor="2"), d.create("c")
    for server in (a, b, c):
        d.wait(server, "ACTIVE")
    d.check()
    for call, status in (
        (servers.stop, "SHUTOFF"),
        (servers.start, "ACTIVE"),
        (lambda s: servers.reboot(s, "SOFT"), "ACTIVE"),
        (lambda s: servers.reboot(s, "HARD"), "ACTIVE"),
        (servers.pause, "PAUSED"),
        (servers.unpause, "ACTIVE"),
        (servers.suspend, "SUSPENDED"),
        (servers.resume, "ACTIVE"),
        (servers.rescue, "RESCUE"),
        (servers.unrescue, "ACTIVE"),
        (servers.shelve, "SHELVED"),
    ):
        d.act(str(call), lambda call=call: call(a))
        d.wait(a, status)
    d.check()  # shelved, still on its host
    d.act("shelve_offload", lambda: servers.shelve_offload(a))
    d.wait(a, "SHELVED_OFFLOADED")
    d.check()  # no host, no node
    d.act("unshelve", lambda: servers.unshelve(a))
    d.wait(a, "ACTIVE")
    d.act("lock", lambda: servers.lock(b))
    d.check()
    d.act("unlock", lambda: servers.unlock(b))
    d.act("soft delete", lambda: servers.delete(b))
    d.wait(b, "SOFT_DELETED")
    d.check()  # soft-deleted servers stay in the model
    d.act("restore", lambda: servers.restore(b))
    d.wait(b, "ACTIVE")
    d.act("soft delete", lambda: servers.delete(c))
    d.wait(c, "SOFT_DELETED")
    d.act("force delete", lambda: servers.force_delete(c))
    d.act("lock", lambda: servers.lock(a))
    d.finish()


def test_moves(scenario: Conformance) -> None:
    d, servers = scenario, scenario.nova.servers
    m, r = d.create("m"), d.create("r")
    d.wait(m, "ACTIVE")
    d.wait(r, "ACTIVE")
    for confirm in (True, False):  # cold migration
        d.act("migrate", lambda: servers.migrate(m))
        d.wait(m, "VERIFY_RESIZE")
        d.check()  # between the move and its confirmation
        finish = servers.confirm_resize if confirm else servers.revert_resize
        d.act("confirm/revert", lambda finish=finish: finish(m))
        d.wait(m, "ACTIVE")
    for confirm, flavor in ((True, "2"), (False, "3")):  # resize
        d.act("resize", lambda flavor=flavor: servers.resize(r, flavor))
        d.wait(r, "VERIFY_RESIZE")
        d.check()
        finish = servers.confirm_resize if confirm else servers.revert_resize
        d.act("confirm/revert", lambda finish=finish: finish(r))
        d.wait(r, "ACTIVE")
    # live migration: targeted, then scheduled
    source = d.host_of(m)
    target = next(h for h in d.info.harness("computes")["computes"] if h != source)
    d.act("live migrate", lambda: servers.live_migrate(m, target, "auto"))
    d.wait_moved(m, source)
    d.wait(m, "ACTIVE")
    source = d.host_of(m)
    d.act("live migrate", lambda: servers.live_migrate(m, None, "auto"))
    d.wait_moved(m, source)
    d.wait(m, "ACTIVE")
    d.act("rebuild", lambda: servers.rebuild(r, scenario_image()))
    d.wait(r, "ACTIVE")
    d.check()
    # evacuation from a forced-down host (from 2.95 the evacuated server ends SHUTOFF)
    source = d.host_of(m)
    service = d.compute_service(source)
    d.info.harness(f"computes/{source}/stop")
    d.act("force down", lambda: d.nova.services.force_down(service.id, True))
    d.act("evacuate", lambda: servers.evacuate(m))
    d.wait_moved(m, source)
    d.wait(m, "SHUTOFF")
    d.check()  # the source node is down, the server on its new host
    d.info.harness(f"computes/{source}/restart")
    d.act("unforce down", lambda: d.nova.services.force_down(service.id, False))
    d.finish()


def scenario_image() -> str:
    from tests.conformance.conftest import IMAGE

    return IMAGE


def test_services(scenario: Conformance) -> None:
    d, services = scenario, scenario.nova.services
    first = d.compute_service("compute1")
    d.act("disable", lambda: services.disable_log_reason(first.id, "maintenance"))
    d.check()
    d.act("enable", lambda: services.enable(first.id))
    second = d.compute_service("compute2")
    d.act("force down", lambda: services.force_down(second.id, True))
    d.check()
    d.act("unforce down", lambda: services.force_down(second.id, False))
    d.finish()


def test_compute_added_mid_run(scenario: Conformance) -> None:
    """A nova-compute service started mid-run, a server on it, then the service deleted."""
    d, services = scenario, scenario.nova.services
    host = f"compute-x{uuid.uuid4().hex[:4]}"
    d.info.harness(f"computes/{host}/start")
    d.row.actions += 1
    server = d.create("on-new", host=host)
    d.wait(server, "ACTIVE")
    d.check()
    d.act("soft delete", lambda: d.nova.servers.delete(server))
    d.wait(server, "SOFT_DELETED")
    d.act("force delete", lambda: d.nova.servers.force_delete(server))
    d.quiesce()
    d.info.harness(f"computes/{host}/stop")
    added = d.compute_service(host)
    d.act("delete service", lambda: services.delete(added.id))
    d.finish()


# -- the seeded random mix -----------------------------------------------------------------------

# status -> (action, the statuses it ends in); chosen only for an idle server in that status.
ACTIONS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "ACTIVE": [
        ("stop", ("SHUTOFF",)), ("reboot", ("ACTIVE",)), ("reboot_hard", ("ACTIVE",)),
        ("pause", ("PAUSED",)), ("suspend", ("SUSPENDED",)), ("rescue", ("RESCUE",)),
        ("shelve", ("SHELVED",)), ("migrate", ("VERIFY_RESIZE",)), ("resize", ("VERIFY_RESIZE",)),
        ("live_migrate", ("ACTIVE",)), ("rebuild", ("ACTIVE",)), ("lock", ("ACTIVE",)),
        ("delete", ("SOFT_DELETED",)),
    ],
    "SHUTOFF": [
        ("start", ("ACTIVE",)), ("resize", ("VERIFY_RESIZE",)), ("migrate", ("VERIFY_RESIZE",)),
        ("shelve", ("SHELVED",)), ("lock", ("SHUTOFF",)), ("delete", ("SOFT_DELETED",)),
    ],
    "PAUSED": [("unpause", ("ACTIVE",))],
    "SUSPENDED": [("resume", ("ACTIVE",))],
    "RESCUE": [("unrescue", ("ACTIVE",))],
    "SHELVED": [("shelve_offload", ("SHELVED_OFFLOADED",)), ("unshelve", ("ACTIVE",))],
    "SHELVED_OFFLOADED": [("unshelve", ("ACTIVE",))],
    "VERIFY_RESIZE": [("confirm_resize", ("ACTIVE", "SHUTOFF")),
                      ("revert_resize", ("ACTIVE", "SHUTOFF"))],
    "SOFT_DELETED": [("restore", ("ACTIVE", "SHUTOFF")), ("force_delete", ("DELETED",))],
}  # fmt: skip
FLAVORS = {"m1.tiny": "1", "m1.small": "2", "m1.medium": "3"}


def random_action(d: Conformance, rng: random.Random, server: Any, name: str) -> None:
    servers = d.nova.servers
    if server.locked and name != "delete":
        servers.unlock(server.id)  # a locked server refuses most actions; unlocking is one
    if name == "reboot_hard":
        servers.reboot(server.id, "HARD")
    elif name == "resize":
        current = FLAVORS.get(server.flavor["original_name"])
        servers.resize(server.id, rng.choice([f for f in FLAVORS.values() if f != current]))
    elif name == "live_migrate":
        servers.live_migrate(server.id, None, "auto")
    elif name == "rebuild":
        servers.rebuild(server.id, scenario_image())
    else:
        getattr(servers, name)(server.id)


def test_random_mix(scenario: Conformance) -> None:
    """20+ servers, 100+ actions chosen at random (seeded) among those valid for each server's
    status, issued without waiting: many servers move at once, as in a busy cloud."""
    d = scenario
    seed = int(os.environ.get("CDM_SYNC_CONFORMANCE_SEED", "20261122"))
    rng = random.Random(seed)
    d.row.notes.append(f"seed {seed}")
    target_actions = int(os.environ.get("CDM_SYNC_CONFORMANCE_ACTIONS", "120"))
    ids = [d.create(f"r{i}", flavor=rng.choice(["1", "2"])) for i in range(22)]
    # server id -> (statuses that end its last action, when it was issued)
    pending: dict[str, tuple[tuple[str, ...], float]] = {
        i: (("ACTIVE",), time.monotonic()) for i in ids
    }
    gone: set[str] = set()
    refused = 0
    deadline = time.monotonic() + 300
    while d.row.actions - len(ids) < target_actions:
        if time.monotonic() > deadline:
            pytest.fail(f"random mix stuck after {d.row.actions} actions: {pending}")
        listed = {s.id: s for s in d.nova.servers.list(search_opts={"all_tenants": 1})}
        deleted = d.nova.servers.list(search_opts={"all_tenants": 1, "deleted": True})
        listed.update({s.id: s for s in deleted if s.status == "SOFT_DELETED" and s.id in pending})
        idle = []
        for sid in pending:
            if sid in gone:
                continue
            server = listed.get(sid)
            if server is None:
                gone.add(sid)  # force-deleted
                continue
            if server.status == "ERROR":
                pytest.fail(f"server {server.name} went to ERROR: {getattr(server, 'fault', None)}")
            statuses, issued = pending[sid]
            if getattr(server, "OS-EXT-STS:task_state") is None and (
                server.status in statuses or time.monotonic() - issued > 30
            ):
                idle.append(server)
        if len(pending) - len(gone) < 20:  # keep 20+ servers alive
            new = d.create(f"r{len(pending)}", flavor=rng.choice(["1", "2"]))
            pending[new] = (("ACTIVE",), time.monotonic())
            continue
        if not idle:
            time.sleep(0.2)
            continue
        for server in rng.sample(idle, min(len(idle), 4)):
            name, ends = rng.choice(ACTIONS.get(server.status, [("lock", (server.status,))]))
            try:
                d.act(name, lambda server=server, name=name: random_action(d, rng, server, name))
            except nova_exc.NotFound:
                # Force-deleted a moment ago and still in the last listing: nothing changes.
                gone.add(server.id)
                refused += 1
                continue
            except (nova_exc.Conflict, nova_exc.BadRequest) as exc:
                refused += 1  # e.g. no other host fits a resize: Nova refuses, nothing changes
                d.row.notes.append(f"refused {name} on {server.name}: {exc}"[:160])
                continue
            pending[server.id] = (ends, time.monotonic())
        time.sleep(0.05)
    d.row.notes.append(f"{len(pending)} servers, {len(gone)} force-deleted, {refused} refused")
    d.finish()


# -- lost notifications --------------------------------------------------------------------------


class InProcessServe:
    """cdm-sync serve's composition root (:class:`cdm_sync.daemon.Daemon`) in this process, so
    the change records it publishes can be read: the audit's corrections must be there."""

    def __init__(self, config: Path, dump: Path) -> None:
        from cdm_sync import conf
        from cdm_sync.daemon import Daemon

        conf.load([str(config)])
        self.daemon = Daemon(conf.CONF, str(dump))
        self.records: list[Any] = []
        self.daemon.service.add_publisher(self.records.extend)
        self.thread = threading.Thread(target=self.daemon.run, name="serve", daemon=True)
        self.thread.start()

    def state(self) -> str:
        return str(self.daemon.status()["state"])

    def model(self) -> dict[str, Any]:
        return self.daemon.model.to_dict()

    def stop(self) -> None:
        self.daemon.stopping.set()
        self.thread.join(60)


def set_bindings(pool: str, bound: bool, exchange: str = "nova") -> None:
    """Bind or unbind cdm-sync's pool queue: while unbound, RabbitMQ routes nothing to it, so
    every notification Nova sends is lost to this cdm-sync (and to no one else)."""
    with kombu.Connection(KOMBU_URL, connect_timeout=5) as connection:
        channel = connection.channel()
        for priority in NOTIFY_PRIORITIES:
            key = f"versioned_notifications.{priority}"
            if bound:
                channel.queue_bind(queue=pool, exchange=exchange, routing_key=key)
            else:
                channel.queue_unbind(queue=pool, exchange=exchange, routing_key=key)


def test_lost_notifications(scenario: Conformance, nova: NovaInfo, tmp_path: Path) -> None:
    d, servers = scenario, scenario.nova.servers
    pool = f"cdm-conformance-lost-{uuid.uuid4().hex[:8]}"
    config = cdm_sync_config(tmp_path, nova, pool, health_port=free_port())
    second = InProcessServe(config, tmp_path / "model.json")
    try:
        wait(lambda: second.state() == "READY", 60, "the second cdm-sync READY")
        ids = [d.create(f"l{i}") for i in range(4)]
        for sid in ids:
            d.wait(sid, "ACTIVE")
        d.check(second.model)
        d.check()  # and the session's cdm-sync, for the record

        set_bindings(pool, bound=False)
        d.act("stop", lambda: servers.stop(ids[0]))
        d.act("migrate", lambda: servers.migrate(ids[1]))
        d.wait(ids[1], "VERIFY_RESIZE")
        d.act("confirm", lambda: servers.confirm_resize(ids[1]))
        d.act("lock", lambda: servers.lock(ids[2]))
        d.act("delete", lambda: servers.delete(ids[3]))
        d.wait(ids[3], "SOFT_DELETED")
        d.act("force delete", lambda: servers.force_delete(ids[3]))
        created = d.create("l-unseen")
        d.wait(created, "ACTIVE")
        compute1 = d.compute_service("compute1")
        d.act("disable", lambda: d.nova.services.disable(compute1.id))
        truth = d.quiesce()
        set_bindings(pool, bound=True)

        lost = diff_model(truth, second.model())
        d.row.notes.append(f"{len(lost)} differences before the audit")
        assert lost, "the unbound pool lost nothing: the scenario proves nothing"
        revision = second.model()["revision"]
        report = second.daemon.engine.full_audit()  # what the scheduled full audit runs
        d.row.notes.append(f"audit: {report.line()}")
        d.check(second.model)
        corrections = [r for r in second.records if r.revision > revision]
        assert corrections, "the audit corrected nothing"
        assert {r.cause.source for r in corrections} == {"audit"}
        corrected = {r.uuid for r in corrections}
        differing = {line.split()[1] for line in lost}
        assert differing <= corrected, differing - corrected
        d.act("enable", lambda: d.nova.services.enable(compute1.id))
        d.act("unlock", lambda: servers.unlock(ids[2]))
        d.finish()  # the session's cdm-sync saw every notification and needed no audit
    finally:
        second.stop()
        from tests.services import delete_rabbit_objects

        delete_rabbit_objects(queues=[pool])


def wait(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)
