"""``cdm-sync serve`` end to end, as an operator runs it.

A real ``cdm-sync serve`` process with its config file, talking to the test Nova over HTTP
(keystoneauth + python-novaclient) and consuming notifications from the real RabbitMQ; read
through the files and commands FORMATS.md §5 promises: the ``--dump-file``, ``cdm-sync status``
and ``cdm-sync resync``, and stopped with SIGTERM.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests import fakenova
from tests.fakenova import FakeNova
from tests.samples import load_sample
from tests.services import rabbit_url, wait_for
from tests.test_listener import Bus

fake_nova = fakenova.fake_nova


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdm_sync.cli", *args], capture_output=True, text=True, timeout=120
    )


def read_dump(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class Serve:
    """A running ``cdm-sync serve`` and what it writes."""

    def __init__(self, config: Path, dump: Path, port: int, log: Path) -> None:
        self.dump = dump
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cdm_sync.cli", "--config-file", str(config), "serve",
             "--dump-file", str(dump)],
            stdout=subprocess.DEVNULL,
            stderr=open(log, "w"),  # noqa: SIM115 (closed with the process)
        )  # fmt: skip

    def status(self) -> dict[str, Any] | None:
        """The status document; None while the endpoint does not answer (exit 2). Exit 0 is
        READY, 1 any other state, with the document printed either way."""
        proc = cli("status", "--url", self.url, "--json")
        if proc.returncode == 2:
            return None
        document = json.loads(proc.stdout)
        assert proc.returncode == (0 if document["state"] == "READY" else 1)
        return document

    def model(self) -> dict[str, Any]:
        return read_dump(self.dump) or {"instances": [], "compute_nodes": []}

    def instance(self, uuid: str) -> dict[str, Any] | None:
        return next((i for i in self.model()["instances"] if i["uuid"] == uuid), None)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture
def bus() -> Iterator[Bus]:
    bus = Bus(rabbit_url())
    yield bus
    bus.close()


@pytest.fixture
def serve(tmp_path: Path, fake_nova: FakeNova, bus: Bus) -> Iterator[Serve]:
    cloud = fake_nova.cloud
    cloud.add_flavor("1", "m1.tiny", 1, 512, 1)
    cloud.add_flavor("2", "m1.small", 2, 2048, 20)
    cloud.add_host("compute1")
    cloud.add_host("compute2")
    cloud.add_server(host="compute1", flavor_id="1", name="vm1", updated="2026-11-22T00:00:00Z")
    cloud.add_server(host="compute2", flavor_id="2", name="vm2", updated="2026-11-22T00:00:00Z")
    port = free_port()
    config = tmp_path / "cdm-sync.conf"
    config.write_text(
        textwrap.dedent(
            f"""\
            [oslo_messaging_notifications]
            transport_url = {bus.url}

            [notifications_listener]
            exchange = {bus.exchange}
            topics = {bus.topic}
            pool = {bus.pool("serve")}
            batch_timeout = 0.05

            [nova_client]
            auth_type = password
            auth_url = {fake_nova.auth_url}
            username = admin
            password = secret
            project_name = admin
            user_domain_name = Default
            project_domain_name = Default

            [health]
            port = {port}

            [sync]
            cheap_interval = 3600
            full_interval = 3600
            """
        )
    )
    running = Serve(config, tmp_path / "model.json", port, tmp_path / "serve.log")
    try:
        yield running
    finally:
        running.stop()


def moved(server: dict[str, Any], host: str, updated: str) -> dict[str, Any]:
    """A versioned instance.update that puts ``server`` on ``host`` (Nova's sample payload)."""
    sample = load_sample("instance-update")
    data = sample["payload"]["nova_object.data"]
    data.update(
        uuid=server["id"], host=host, node=host, state="active", power_state="running",
        task_state=None, display_name=server["name"], tenant_id=server["tenant_id"],
        user_id=server["user_id"], updated_at=updated, metadata={},
    )  # fmt: skip
    return {
        "priority": "info",
        "publisher_id": "nova-compute:" + host,
        "event_type": "instance.update",
        "payload": sample["payload"],
        "metadata": {
            "message_id": str(uuid.uuid4()),
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
        },
        "ctxt": {},
    }


def test_serve_bootstraps_listens_resyncs_and_stops_cleanly(
    serve: Serve, fake_nova: FakeNova, bus: Bus
) -> None:
    cloud = fake_nova.cloud
    vm1, vm2 = cloud.servers

    wait_for(lambda: (serve.status() or {}).get("state") == "READY", 60, "serve READY")
    wait_for(lambda: len(serve.model()["instances"]) == 2, 10, "the dump file")
    dump = serve.model()
    assert {i["uuid"] for i in dump["instances"]} == {vm1["id"], vm2["id"]}
    assert {n["hostname"] for n in dump["compute_nodes"]} == {"compute1", "compute2"}
    assert serve.instance(vm1["id"])["host"] == "compute1"

    # A live migration's notification through RabbitMQ moves vm1.
    bus.send(moved(vm1, "compute2", "2026-11-22T00:05:00Z"))
    wait_for(lambda: serve.instance(vm1["id"])["host"] == "compute2", 30, "vm1 moved")

    # A create Nova never notified: resync finds it and reports what it corrected.
    vm3 = cloud.add_server(host="compute1", flavor_id="1", name="vm3")
    resync = cli("resync", "--url", serve.url)
    assert resync.returncode == 0, resync.stderr
    assert "missing 1" in resync.stdout
    wait_for(lambda: serve.instance(vm3["id"]) is not None, 10, "vm3 in the dump")
    # The resync did not undo the newer notification (the listing still says compute1).
    assert serve.instance(vm1["id"])["host"] == "compute2"

    status = cli("status", "--url", serve.url)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "READY" in status.stdout and "3 instances" in status.stdout

    with urllib.request.urlopen(serve.url + "/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert 'cdm_sync_model_state{state="READY"} 1.0' in metrics
    assert 'cdm_sync_drift_total{kind="missing"} 1.0' in metrics

    running = serve.status()
    revision, receiver_pid = running["revision"], running["listener"]["receiver_pid"]
    cmdline = Path(f"/proc/{receiver_pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[1:3] == [b"-m", b"cdm_sync.messaging.receiver"]
    assert running["listener"]["receiver_restarts"] == 0
    assert serve.stop() == 0
    assert not Path(f"/proc/{receiver_pid}").exists()  # stopped with serve, and reaped
    final = read_dump(serve.dump)
    assert final is not None and final["revision"] == revision
    log = serve.log.read_text()
    assert "secret" not in log  # no credential in the service's log


def test_status_and_resync_say_clearly_when_no_service_runs() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for command in ("status", "resync"):
        proc = cli(command, "--url", url)
        assert proc.returncode == 2
        assert "cannot reach cdm-sync serve" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_serve_stays_not_synced_while_nova_refuses_and_stops_on_sigterm(
    tmp_path: Path, fake_nova: FakeNova, bus: Bus
) -> None:
    port = free_port()
    config = tmp_path / "cdm-sync.conf"
    config.write_text(
        f"[oslo_messaging_notifications]\ntransport_url = {bus.url}\n"
        f"[notifications_listener]\nexchange = {bus.exchange}\ntopics = {bus.topic}\n"
        f"pool = {bus.pool('refused')}\n"
        f"[nova_client]\nauth_type = password\nauth_url = {fake_nova.auth_url}\n"
        "username = admin\npassword = wrong-password\nproject_name = admin\n"
        "user_domain_name = Default\nproject_domain_name = Default\n"
        f"[health]\nport = {port}\n"
    )
    running = Serve(config, tmp_path / "model.json", port, tmp_path / "serve.log")
    try:
        wait_for(lambda: running.status() is not None, 60, "the health endpoint")
        status = cli("status", "--url", running.url)
        assert status.returncode == 1 and "NOT_SYNCED" in status.stdout
        wait_for(lambda: "Bootstrap failed" in running.log.read_text(), 30, "the error logged")
        started = time.monotonic()
        assert running.stop() == 0
        assert time.monotonic() - started < 30
        assert read_dump(running.dump) == {
            "format": "cdm-sync/model/1", "revision": 0, "compute_nodes": [], "instances": [],
        }  # fmt: skip
        assert "wrong-password" not in running.log.read_text()
    finally:
        running.stop()


def test_a_receiver_that_cannot_start_is_one_line_and_exit_2_whatever_the_option_order(
    tmp_path: Path, fake_nova: FakeNova
) -> None:
    """FORMATS §5 writes ``cdm-sync serve --config-file F``: global options work after the
    subcommand as before it. A transport the receiver cannot use ends serve at once with one
    line on stderr, no traceback, no password."""
    config = tmp_path / "cdm-sync.conf"
    config.write_text(
        "[oslo_messaging_notifications]\n"
        "transport_url = nosuchdriver://cdm:Receiver-Secret-77@127.0.0.1:5672/\n"
        f"[nova_client]\nauth_type = password\nauth_url = {fake_nova.auth_url}\n"
        "username = admin\npassword = secret\nproject_name = admin\n"
        "user_domain_name = Default\nproject_domain_name = Default\n"
        f"[health]\nport = {free_port()}\n"
    )
    for args in (("serve", "--config-file", str(config)), ("--config-file", str(config), "serve")):
        proc = cli(*args)
        assert proc.returncode == 2, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("cdm-sync: ")]
        assert errors == [
            "cdm-sync: error: the notification receiver could not start: DriverLoadFailure: "
            "Failed to load transport driver \"nosuchdriver\": No 'oslo.messaging.drivers' "
            "driver found, looking for 'nosuchdriver'"
        ]
        assert "Traceback" not in proc.stderr
        assert "Receiver-Secret-77" not in proc.stderr


def test_no_secret_reaches_the_log_or_the_status_when_connections_fail(
    tmp_path: Path, bus: Bus
) -> None:
    """The secrets of the configuration appear in what fails: the RabbitMQ transport URL's
    password, and a Keystone auth_url with credentials in it, which keystoneauth puts in the
    text of its connection error (cdm-sync logs it and shows it as the reason in status).
    Neither the log nor ``status`` nor ``status --json`` shows any of them."""
    user, password = f"cdm-test-{uuid.uuid4().hex[:8]}", f"Rabbit-{uuid.uuid4().hex}"
    keystone_secret, plain_secret = f"Url-{uuid.uuid4().hex}", f"Pw-{uuid.uuid4().hex}"
    subprocess.run(["rabbitmqctl", "add_user", user, password], check=True, capture_output=True)
    try:
        subprocess.run(
            ["rabbitmqctl", "set_permissions", "-p", "/", user, ".*", ".*", ".*"],
            check=True,
            capture_output=True,
        )
        port = free_port()
        config = tmp_path / "cdm-sync.conf"
        config.write_text(
            f"[oslo_messaging_notifications]\n"
            f"transport_url = rabbit://{user}:{password}@127.0.0.1:5672/\n"
            f"[notifications_listener]\nexchange = {bus.exchange}\ntopics = {bus.topic}\n"
            f"pool = {bus.pool('secrets')}\n"
            f"[nova_client]\nauth_type = password\n"
            f"auth_url = http://admin:{keystone_secret}@127.0.0.1:{free_port()}/identity\n"
            f"username = admin\npassword = {plain_secret}\nproject_name = admin\n"
            "user_domain_name = Default\nproject_domain_name = Default\n"
            f"[health]\nport = {port}\n"
        )
        running = Serve(config, tmp_path / "model.json", port, tmp_path / "serve.log")
        try:
            wait_for(
                lambda: "Bootstrap failed" in running.log.read_text(), 60, "the failed bootstrap"
            )
            status = running.status()
            assert status is not None and status["state"] == "NOT_SYNCED"
            assert "***" in status["reason"]  # the URL was there, its password is not
            shown = cli("status", "--url", running.url).stdout
            shown_json = cli("status", "--url", running.url, "--json").stdout
        finally:
            running.stop()
        log = running.log.read_text()
        # keystoneauth's error quotes the auth_url: there, with its password masked.
        assert "Unable to establish connection to http://admin:***@127.0.0.1" in log
        for secret in (password, keystone_secret, plain_secret):
            for text in (log, json.dumps(status), shown, shown_json):
                assert secret not in text
    finally:
        subprocess.run(["rabbitmqctl", "delete_user", user], capture_output=True)


def test_a_health_port_in_use_is_one_line_and_exit_2(tmp_path: Path, fake_nova: FakeNova) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "cdm-sync.conf"
        config.write_text(
            "[oslo_messaging_notifications]\ntransport_url = rabbit://guest:guest@127.0.0.1//\n"
            f"[nova_client]\nauth_type = password\nauth_url = {fake_nova.auth_url}\n"
            "username = admin\npassword = secret\nproject_name = admin\n"
            "user_domain_name = Default\nproject_domain_name = Default\n"
            f"[health]\nport = {port}\n"
        )
        proc = cli("serve", "--config-file", str(config))
    assert proc.returncode == 2
    [error] = [line for line in proc.stderr.splitlines() if line.startswith("cdm-sync:")]
    assert error.startswith(
        f"cdm-sync: error: the health endpoint cannot listen on 127.0.0.1:{port}"
    )
    assert "Address already in use" in error
    assert "Traceback" not in proc.stderr
