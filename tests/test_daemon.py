"""The daemon keeps running in a state that says what is wrong, and mends what it can.

In process (the faults are injected where no operator can reach): a bug that kills the
listener's applying thread, and a bug in the bootstrap. Both against the real peers ``serve``
uses, the test Nova over HTTP and the real RabbitMQ, through a configuration as an operator
writes it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from oslo_config import cfg

import cdm_sync.conf
from cdm_sync.daemon import Daemon
from cdm_sync.messaging.endpoints import Dispatcher
from cdm_sync.sync.ports import Listing, Progress
from tests import fakenova
from tests.fakenova import FakeNova
from tests.services import rabbit_url, wait_for
from tests.test_listener import Bus
from tests.test_serve import free_port, moved

fake_nova = fakenova.fake_nova


class _Bug(BaseException):
    """What no endpoint catches: a bug escaping the apply path entirely."""


class _BuggyEndpoint:
    """An oslo.messaging endpoint beside ours whose every call is a bug."""

    def info(self, ctxt: Any, publisher_id: Any, event_type: Any, payload: Any, md: Any) -> None:
        raise _Bug("the applying thread hit a bug")


class _BuggyCollector:
    """The Collector port with a bug in front of the real one (until ``fixed``)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.fixed = False
        self.calls = 0

    def full_listing(self, progress: Progress | None = None) -> Listing:
        self.calls += 1
        if not self.fixed:
            raise TypeError("'NoneType' object is not subscriptable")
        return self.real.full_listing(progress)

    def nodes_listing(self, progress: Progress | None = None) -> Listing:
        return self.real.nodes_listing(progress)

    def changes_since(self, since: float, progress: Progress | None = None) -> Listing:
        return self.real.changes_since(since, progress)


@pytest.fixture
def bus() -> Iterator[Bus]:
    bus = Bus(rabbit_url())
    yield bus
    bus.close()


def daemon_conf(tmp_path: Path, nova: FakeNova, bus: Bus) -> cfg.ConfigOpts:
    config = tmp_path / "cdm-sync.conf"
    config.write_text(
        f"[oslo_messaging_notifications]\ntransport_url = {bus.url}\n"
        f"[notifications_listener]\nexchange = {bus.exchange}\ntopics = {bus.topic}\n"
        f"pool = {bus.pool('daemon')}\nbatch_timeout = 0.05\n"
        f"[nova_client]\nauth_type = password\nauth_url = {nova.auth_url}\n"
        "username = admin\npassword = secret\nproject_name = admin\n"
        "user_domain_name = Default\nproject_domain_name = Default\n"
        f"[health]\nport = {free_port()}\n"
        "[sync]\ncheap_interval = 3600\nfull_interval = 3600\n"
    )
    conf = cfg.ConfigOpts()
    for group, opts in cdm_sync.conf.list_opts():
        conf.register_opts(opts, group=group)
    conf(["--config-file", str(config)], project="cdm-sync-test", default_config_files=[])
    return conf


@pytest.fixture
def cloud(fake_nova: FakeNova) -> fakenova.FakeCloud:
    cloud = fake_nova.cloud
    cloud.add_flavor("1", "m1.tiny", 1, 512, 1)
    cloud.add_host("compute1")
    cloud.add_host("compute2")
    cloud.add_server(host="compute1", flavor_id="1", name="vm1", updated="2026-11-22T00:00:00Z")
    return cloud


def running(daemon: Daemon) -> threading.Thread:
    thread = threading.Thread(target=daemon.run, name="daemon", daemon=True)
    thread.start()
    return thread


def test_a_listener_that_dies_degrades_the_model_and_is_started_again(
    tmp_path: Path, fake_nova: FakeNova, cloud: fakenova.FakeCloud, bus: Bus
) -> None:
    daemon = Daemon(daemon_conf(tmp_path, fake_nova, bus))
    thread = running(daemon)
    try:
        wait_for(lambda: daemon.status()["state"] == "READY", 60, "READY")
        listener = daemon.listener
        working = listener.dispatcher
        service = working.service
        listener.dispatcher = Dispatcher([_BuggyEndpoint()], service)
        [vm1] = cloud.servers
        bus.send(moved(vm1, "compute2", "2026-11-22T00:05:00Z"))
        wait_for(lambda: daemon.status()["state"] == "DEGRADED", 20, "DEGRADED")
        status = daemon.status()
        assert status["reason"].startswith("notifications: the notification listener failed")
        assert "_Bug: the applying thread hit a bug" in status["reason"]
        assert status["problems"]["listener"] == status["reason"]
        # The supervisor keeps starting it; once the bug is gone, it stays up, and the
        # notification it died on (never acknowledged) comes again and applies.
        listener.dispatcher = working
        wait_for(lambda: daemon.status()["state"] == "READY", 60, "READY again")
        assert daemon.status()["listener"]["running"]
        assert daemon.status()["listener"]["restarts"] >= 1
        wait_for(
            lambda: (service.model.instance(vm1["id"]) or vm1).host == "compute2",
            30,
            "the notification applied after all",
        )
    finally:
        daemon.stopping.set()
        thread.join(60)
    assert not thread.is_alive()


def test_a_bug_in_the_bootstrap_keeps_the_service_up_not_synced_with_the_reason(
    tmp_path: Path,
    fake_nova: FakeNova,
    cloud: fakenova.FakeCloud,
    bus: Bus,
    caplog: pytest.LogCaptureFixture,
) -> None:
    daemon = Daemon(daemon_conf(tmp_path, fake_nova, bus))
    buggy = _BuggyCollector(daemon.engine.collector)
    daemon.engine.collector = buggy
    with caplog.at_level(logging.INFO):
        thread = running(daemon)
        try:
            wait_for(lambda: buggy.calls >= 2, 30, "a second try")
            status = daemon.status()
            assert status["state"] == "NOT_SYNCED"
            assert "TypeError" in status["reason"] and "not subscriptable" in status["reason"]
            assert thread.is_alive()
            buggy.fixed = True
            wait_for(lambda: daemon.status()["state"] == "READY", 60, "READY once fixed")
        finally:
            daemon.stopping.set()
            thread.join(60)
    failures = [r for r in caplog.records if "Bootstrap failed" in r.getMessage()]
    assert len(failures) >= 2
    # The traceback of a bug is logged once, not at every retry.
    assert sum(r.exc_info is not None for r in failures) == 1
