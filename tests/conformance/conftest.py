"""Fixtures of the conformance suite: a real Nova, a running ``cdm-sync serve``, and the check.

One Nova per session (tests/conformance/nova_harness.py in its own venv, notifications on the real
RabbitMQ) and one ``cdm-sync serve --dump-file`` started before the first action, so the service
sees the whole history the way it would in production. Scenarios share both and use unique server
names. After a scenario's actions, :meth:`Conformance.check` waits for quiescence (no task_state
anywhere, Nova's listings and the notification flow stable for a while) and then asserts that the
dump equals Nova's truth in every FORMATS.md §3 field the compute API shows, printing a readable
diff otherwise. Each scenario's actions and notifications are counted for the summary table.

The suite is opt-in (it builds a 400 MB venv on first use): it is collected when
``CDM_SYNC_CONFORMANCE=1`` or when the command line names this directory (``pytest
tests/conformance``, ``tox -e conformance``); a plain ``pytest`` skips collecting it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kombu
import pytest
import requests
from keystoneauth1 import loading
from keystoneauth1 import session as ks_session
from novaclient import client as nova_client
from novaclient import exceptions as nova_exc

from tests.conformance import build_venv
from tests.services import rabbit_url, unavailable
from tests.test_serve import Serve, cli, free_port, read_dump

HERE = Path(__file__).parent
HARNESS = HERE / "nova_harness.py"
KOMBU_URL = "amqp://guest:guest@127.0.0.1:5672//"
MICROVERSION = "2.96"
IMAGE = "155d900f-4e14-4e4c-a73d-069cbf4541e6"  # an image of Nova's GlanceFixture
# Nova's power_state numbers (nova/compute/power_state.py) and the names FORMATS.md §3 uses.
POWER_STATE_NAMES = {
    0: "pending", 1: "running", 3: "paused", 4: "shutdown", 6: "crashed", 7: "suspended",
}  # fmt: skip
NOTIFY_PRIORITIES = ("audit", "debug", "info", "warn", "error", "critical", "sample")
QUIET_SECONDS = 2.0


# -- opt-in collection ---------------------------------------------------------------------------


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if (
        not collection_path.name.startswith("test_")
        or os.environ.get("CDM_SYNC_CONFORMANCE") == "1"
    ):
        return None
    for arg in config.args:
        named = Path(arg.split("::")[0]).resolve()
        if named == HERE or HERE in named.parents:
            return None
    return True


# -- Nova ------------------------------------------------------------------------------------------


@dataclass
class NovaInfo:
    """What the harness wrote in its info file, plus where its log is."""

    doc: dict[str, Any]
    log: Path

    @property
    def auth_url(self) -> str:
        return str(self.doc["auth_url"])

    def harness(self, path: str) -> Any:
        method = "GET" if path == "computes" else "POST"
        response = requests.request(method, f"{self.doc['harness_url']}/{path}", timeout=60)
        response.raise_for_status()
        return response.json()


@pytest.fixture(scope="session")
def nova_venv() -> Path:
    try:
        return build_venv.ensure_venv()
    except (build_venv.BuildError, OSError) as exc:
        unavailable(f"the Nova venv could not be built: {exc}")
        raise  # unreachable: unavailable() fails or skips


@pytest.fixture(scope="session")
def nova(nova_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NovaInfo]:
    url = rabbit_url()
    work = tmp_path_factory.mktemp("nova")
    info_file, log, err = work / "info.json", work / "nova.log", work / "nova.stderr"
    proc = subprocess.Popen(
        [str(build_venv.python_of(nova_venv)), str(HARNESS), "--port", "0", "--computes", "2",
         "--rabbit", url, "--info-file", str(info_file), "--log-file", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=open(err, "w"),  # noqa: SIM115 (closed with the process)
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not info_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("Nova did not start:\n" + err.read_text()[-3000:])
            time.sleep(0.2)
        yield NovaInfo(json.loads(info_file.read_text()), log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def novaclient_for(info: NovaInfo) -> Any:
    auth = loading.get_plugin_loader("password").load_from_options(
        auth_url=info.auth_url,
        username=info.doc["username"],
        password=info.doc["password"],
        project_name=info.doc["project_name"],
        user_domain_name="Default",
        project_domain_name="Default",
    )
    return nova_client.Client(MICROVERSION, session=ks_session.Session(auth=auth))


# -- Nova's truth, in the dump's shape -------------------------------------------------------------


def _attr(item: Any, name: str) -> Any:
    return getattr(item, name, None)


def truth_instance(server: Any) -> dict[str, Any]:
    flavor = server.flavor
    return {
        "uuid": server.id,
        "name": server.name,
        "project_id": server.tenant_id,
        "user_id": server.user_id,
        "host": _attr(server, "OS-EXT-SRV-ATTR:host"),
        "node": _attr(server, "OS-EXT-SRV-ATTR:hypervisor_hostname"),
        "vm_state": _attr(server, "OS-EXT-STS:vm_state"),
        "power_state": POWER_STATE_NAMES.get(_attr(server, "OS-EXT-STS:power_state")),
        "task_state": _attr(server, "OS-EXT-STS:task_state"),
        "flavor": {
            "name": flavor["original_name"],
            "vcpus": flavor["vcpus"],
            "ram": flavor["ram"],
            "disk": flavor["disk"],
        },
        "locked": server.locked,
    }


INSTANCE_FIELDS = (
    "name", "project_id", "user_id", "host", "node", "vm_state", "power_state", "task_state",
    "flavor", "locked",
)  # fmt: skip
NODE_FIELDS = ("hostname", "hypervisor_hostname", "status", "state")


@dataclass
class Truth:
    """Nova's view, read over the API: what the dump must equal."""

    instances: dict[str, dict[str, Any]]
    nodes: dict[str, dict[str, Any]]
    busy: list[str]  # servers with a task_state or a transitional status

    def key(self) -> str:
        return json.dumps([self.instances, self.nodes], sort_keys=True)


def read_truth(nova: Any) -> Truth:
    search = {"all_tenants": 1}
    servers = list(nova.servers.list(detailed=True, search_opts=search))
    # deleted=True lists deleted and soft-deleted servers; the model keeps only the latter.
    gone = nova.servers.list(detailed=True, search_opts={**search, "deleted": True})
    servers += [s for s in gone if s.status == "SOFT_DELETED"]
    instances = {s.id: truth_instance(s) for s in servers}
    busy = [
        s.id
        for s in servers
        if _attr(s, "OS-EXT-STS:task_state") is not None or s.status in ("BUILD", "MIGRATING")
    ]
    nodes = {}
    for hv in nova.hypervisors.list(detailed=True):
        nodes[hv.id] = {
            "uuid": hv.id,
            "hostname": hv.service["host"],
            "hypervisor_hostname": hv.hypervisor_hostname,
            "status": hv.status,
            "state": hv.state,
        }
    return Truth(instances, nodes, busy)


def diff_model(truth: Truth, dump: dict[str, Any]) -> list[str]:
    """Every difference between Nova's truth and a cdm-sync dump, one readable line each."""
    problems: list[str] = []
    for kind, expected, listed, fields in (
        ("instance", truth.instances, dump.get("instances", []), INSTANCE_FIELDS),
        ("compute_node", truth.nodes, dump.get("compute_nodes", []), NODE_FIELDS),
    ):
        actual = {item["uuid"]: item for item in listed}
        for uuid_ in sorted(expected.keys() - actual.keys()):
            problems.append(f"{kind} {uuid_} ({_label(expected[uuid_])}) missing from the model")
        for uuid_ in sorted(actual.keys() - expected.keys()):
            problems.append(f"{kind} {uuid_} ({_label(actual[uuid_])}) in the model, not in Nova")
        for uuid_ in sorted(expected.keys() & actual.keys()):
            for name in fields:
                want = expected[uuid_][name]
                have = actual[uuid_].get(name)
                if name == "flavor" and isinstance(have, dict):
                    have = {k: have.get(k) for k in want}
                if want != have:
                    problems.append(
                        f"{kind} {uuid_} ({_label(expected[uuid_])}) {name}: "
                        f"nova={want!r} cdm-sync={have!r}"
                    )
    return problems


def _label(item: dict[str, Any]) -> str:
    return str(item.get("name") or item.get("hostname") or "?")


# -- notification counting -------------------------------------------------------------------------


class NotificationCounter:
    """Two queues of our own on Nova's exchange, one per topic: their depth is how many
    notifications Nova sent since the last :meth:`take` (they are purged there)."""

    def __init__(self, exchange: str = "nova") -> None:
        self.connection = kombu.Connection(KOMBU_URL, connect_timeout=5)
        self.channel = self.connection.channel()
        token = uuid.uuid4().hex[:8]
        self.queues: dict[str, str] = {}
        # Nova's (oslo.messaging's) exchange: topic, not durable.
        nova_exchange = kombu.Exchange(exchange, type="topic", durable=False)
        for topic in ("versioned_notifications", "notifications"):
            name = f"cdm-conformance-count-{topic}-{token}"
            queue = kombu.Queue(name, exchange=nova_exchange, routing_key=f"{topic}.*",
                                durable=False, auto_delete=False)  # fmt: skip
            queue(self.channel).declare()
            self.queues[topic] = name

    def depth(self) -> dict[str, int]:
        counts = {}
        for topic, name in self.queues.items():
            counts[topic] = self.channel.queue_declare(queue=name, passive=True).message_count
        return counts

    def take(self) -> dict[str, int]:
        counts = self.depth()
        for name in self.queues.values():
            self.channel.queue_purge(name)
        return counts

    def close(self) -> None:
        for name in self.queues.values():
            with contextlib.suppress(Exception):
                self.channel.queue_delete(name)
        self.connection.close()


# -- cdm-sync serve ------------------------------------------------------------------------------


def cdm_sync_config(
    work: Path, nova: NovaInfo, pool: str, *, health_port: int, full_interval: float = 3600
) -> Path:
    """A cdm-sync.conf for this Nova: credentials from a clouds.yaml, as operators write them."""
    clouds = work / "clouds.yaml"
    clouds.write_text(
        textwrap.dedent(
            f"""\
            clouds:
              conformance:
                auth_type: password
                auth:
                  auth_url: {nova.auth_url}
                  username: {nova.doc["username"]}
                  password: {nova.doc["password"]}
                  project_name: {nova.doc["project_name"]}
                  user_domain_name: Default
                  project_domain_name: Default
                region_name: RegionOne
                interface: public
            """
        )
    )
    config = work / f"{pool}.conf"
    config.write_text(
        textwrap.dedent(
            f"""\
            [oslo_messaging_notifications]
            transport_url = rabbit://guest:guest@127.0.0.1:5672/

            [notifications_listener]
            exchange = nova
            topics = versioned_notifications
            pool = {pool}
            batch_timeout = 0.05

            [notifications]
            format = both

            [nova_client]
            cloud = conformance
            clouds_file = {clouds}

            [health]
            port = {health_port}

            [sync]
            cheap_interval = 3600
            full_interval = {full_interval}
            """
        )
    )
    return config


def http_json(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


@pytest.fixture(scope="session")
def serve(nova: NovaInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    work = tmp_path_factory.mktemp("serve")
    pool = f"cdm-conformance-{uuid.uuid4().hex[:8]}"
    port = free_port()
    config = cdm_sync_config(work, nova, pool, health_port=port)
    running = Serve(config, work / "model.json", port, work / "serve.log")
    try:
        deadline = time.monotonic() + 60
        while (http_json(running.url + "/status") or {}).get("state") != "READY":
            if running.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("cdm-sync serve did not become READY:\n" + running.log.read_text())
            time.sleep(0.2)
        yield running
    finally:
        running.stop()
        with contextlib.suppress(Exception):
            from tests.services import delete_rabbit_objects

            delete_rabbit_objects(queues=[pool])


# -- scenarios -------------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    actions: int = 0
    versioned: int = 0
    legacy: int = 0
    checks: int = 0
    seconds: float = 0.0
    result: str = "FAIL"
    notes: list[str] = field(default_factory=list)


ROWS: list[Row] = []


class Conformance:
    """The test driver: novaclient actions (counted), quiescence, and the check."""

    def __init__(self, nova: NovaInfo, serve: Serve, counter: NotificationCounter) -> None:
        self.info = nova
        self.nova = novaclient_for(nova)
        self.serve = serve
        self.counter = counter
        self.row = Row("-")
        self.started = time.monotonic()

    # bookkeeping
    def begin(self, name: str) -> Row:
        self.quiesce()
        self.counter.take()  # what earlier scenarios sent is not this one's
        self.row = Row(name)
        self.started = time.monotonic()
        ROWS.append(self.row)
        return self.row

    def act(self, what: str, call: Callable[[], Any]) -> Any:
        """One API action; counted only when Nova accepted it."""
        result = call()
        self.row.actions += 1
        return result

    def unique(self, prefix: str) -> str:
        return f"{self.row.scenario}-{prefix}-{uuid.uuid4().hex[:6]}"

    # servers
    def server(self, server_id: str) -> Any:
        return self.nova.servers.get(server_id)

    def create(self, prefix: str, flavor: str = "1", host: str | None = None) -> str:
        zone = f"nova:{host}" if host else None
        server = self.act(
            "create",
            lambda: self.nova.servers.create(
                self.unique(prefix), IMAGE, flavor, nics="none", availability_zone=zone
            ),
        )
        return str(server.id)

    def wait(self, server_id: str, *statuses: str, timeout: float = 60) -> Any:
        """Until the server has one of ``statuses`` and no task_state; ERROR fails."""
        deadline = time.monotonic() + timeout
        while True:
            server = self.server(server_id)
            task = _attr(server, "OS-EXT-STS:task_state")
            if server.status in statuses and task is None:
                return server
            if server.status == "ERROR":
                pytest.fail(f"server {server.name} went to ERROR: {_attr(server, 'fault')}")
            if time.monotonic() > deadline:
                pytest.fail(f"server {server.name} is {server.status}/{task}, not {statuses}")
            time.sleep(0.1)

    def wait_moved(self, server_id: str, source: str | None, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.host_of(server_id) == source:
            if time.monotonic() > deadline:
                pytest.fail(f"server {server_id} did not leave {source}")
            time.sleep(0.1)

    def host_of(self, server_id: str) -> str | None:
        return _attr(self.server(server_id), "OS-EXT-SRV-ATTR:host")

    def compute_service(self, host: str) -> Any:
        return next(s for s in self.nova.services.list(binary="nova-compute") if s.host == host)

    # the check
    def quiesce(self, timeout: float = 120) -> Truth:
        """Nova's truth once nothing moves: no server busy, and the listings (incl. deleted and
        SOFT_DELETED) and the notification queues unchanged for QUIET_SECONDS."""
        deadline = time.monotonic() + timeout
        last: tuple[str, dict[str, int]] | None = None
        since = time.monotonic()
        while True:
            truth = read_truth(self.nova)
            state = (truth.key(), self.counter.depth())
            if truth.busy or state != last:
                last, since = state, time.monotonic()
            elif time.monotonic() - since >= QUIET_SECONDS:
                return truth
            if time.monotonic() > deadline:
                pytest.fail(f"Nova did not settle in {timeout}s (busy: {truth.busy})")
            time.sleep(0.25)

    def model(self) -> dict[str, Any]:
        return read_dump(self.serve.dump) or {}

    def check(self, dump: Callable[[], dict[str, Any]] | None = None, timeout: float = 30) -> Truth:
        """Quiesce, then require the dump to equal the truth (it may lag by a dump interval)."""
        truth = self.quiesce()
        read = dump or self.model
        deadline = time.monotonic() + timeout
        while True:
            problems = diff_model(truth, read())
            if not problems:
                break
            if time.monotonic() > deadline:
                self.row.notes.extend(problems)
                pytest.fail(
                    f"cdm-sync differs from Nova after {self.row.scenario} "
                    f"({len(problems)} differences):\n  " + "\n  ".join(problems)
                )
            time.sleep(0.25)
        self.row.checks += 1
        return truth

    def finish(self) -> None:
        self.check()
        counts = self.counter.take()
        self.row.versioned = counts["versioned_notifications"]
        self.row.legacy = counts["notifications"]
        self.row.seconds = time.monotonic() - self.started
        self.row.result = "pass"


@pytest.fixture(scope="session")
def counter(nova: NovaInfo) -> Iterator[NotificationCounter]:
    counting = NotificationCounter()
    yield counting
    counting.close()


@pytest.fixture(scope="session")
def conformance(nova: NovaInfo, serve: Serve, counter: NotificationCounter) -> Conformance:
    # The counter's queues exist before the first action (session fixtures are set up in order).
    return Conformance(nova, serve, counter)


@pytest.fixture
def scenario(conformance: Conformance, request: pytest.FixtureRequest) -> Iterator[Conformance]:
    """The driver, with a fresh row named after the test (``test_<name>``)."""
    conformance.begin(request.node.name.removeprefix("test_"))
    yield conformance
    row = conformance.row
    if row.result != "pass":
        row.seconds = time.monotonic() - conformance.started
        with contextlib.suppress(Exception):
            counts = conformance.counter.take()
            row.versioned = counts["versioned_notifications"]
            row.legacy = counts["notifications"]
        # Realign the shared cdm-sync with Nova (an admin resync), so the next scenario is
        # judged on its own events and not on this one's difference.
        resync = cli("resync", "--url", conformance.serve.url)
        row.notes.append(f"realigned by resync: {resync.stdout.strip()[:200]}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not ROWS:
        return
    write = terminalreporter.write_line
    write("")
    write("Conformance against a real Nova (notifications: versioned + legacy copies)")
    header = f"{'scenario':<22} {'actions':>7} {'versioned':>9} {'legacy':>7} {'checks':>6} {'time':>7}  result"  # noqa: E501
    write(header)
    write("-" * len(header))
    for row in ROWS:
        write(
            f"{row.scenario:<22} {row.actions:>7} {row.versioned:>9} {row.legacy:>7} "
            f"{row.checks:>6} {row.seconds:>6.1f}s  {row.result}"
        )
        for note in row.notes[:20]:
            write(f"    {note}")
    write(
        f"{'total':<22} {sum(r.actions for r in ROWS):>7} {sum(r.versioned for r in ROWS):>9} "
        f"{sum(r.legacy for r in ROWS):>7}"
    )
    report = os.environ.get("CDM_SYNC_CONFORMANCE_REPORT")
    if report:
        Path(report).write_text(json.dumps([row.__dict__ for row in ROWS], indent=1))


__all__ = ["Conformance", "NovaInfo", "Truth", "diff_model", "nova_exc", "read_truth"]
