"""A real Nova for the conformance suite, run the way Nova's own functional tests run it.

Runs ONLY with the Nova venv's Python (tests/conformance/build_venv.py builds it); nothing in
cdm-sync imports this file. It starts nova-api, conductor, scheduler, the placement fixture, sqlite
databases and N nova-compute services on a fake virt driver, with RPC between Nova's services on
the in-process fake transport and **notifications on a real RabbitMQ** (driver messagingv2,
notification_format both, notify_on_state_change vm_and_task_state). The compute API, placement
and a minimal Keystone v3 (password auth, a token and a service catalog) are served on one real
loopback port, so cdm-sync and the test driver reach it as they reach production.

    <nova-venv>/bin/python nova_harness.py --port 0 --info-file F [--computes 2] [--rabbit URL]

When everything is up it writes F (JSON: port, auth_url, credentials, computes), then serves until
SIGTERM/SIGINT and shuts Nova down cleanly. ``/_harness/computes`` lists the compute services it
runs, and ``POST /_harness/computes/<host>/start|stop|restart`` starts a new one, stops one (before
a force-down or evacuation) or restarts one keeping its fake hypervisor's guests.

Fixture APIs used (check them when moving to another Nova release):
``integrated_helpers._IntegratedTestBase`` and its ``_setup_services``, ``nova.test.TestCase``'s
``setUp``/``flags``/``_start_compute``/``restart_compute_service``, ``func_fixtures.
PlacementFixture``, ``nova_fixtures.{Neutron,Cinder,Glance,RealPolicy,CastAsCall}Fixture``.
"""
# ruff: noqa: E402, I001 (import order is the point: see the first import)

from __future__ import annotations

import argparse
import json
import os
import sys
import time

T0 = time.monotonic()

# FIRST: nova/tests/functional/__init__.py applies Nova's eventlet monkey patching (or native
# threading with OS_NOVA_DISABLE_EVENTLET_PATCHING=1), exactly as the functional tests do. Any
# earlier import of socket users (urllib3, oslo_context, socketserver) would stay unpatched and
# block the whole hub. (nova/tests/__init__.py is empty: importing only nova.tests is not enough.)
import nova.tests.functional

import logging
import resource
import signal
import socketserver
import threading
import traceback
import uuid
from typing import Any
from unittest import mock
from wsgiref import simple_server

import nova.conf
from nova import rpc
from nova import utils as nova_utils
from nova.tests import fixtures as nova_fixtures
from nova.tests.functional import fixtures as func_fixtures
from nova.tests.functional import integrated_helpers
from nova.virt import fake as fake_virt
from placement import deploy as placement_deploy

CONF = nova.conf.CONF

PROJECT_ID = nova_fixtures.PROJECT_ID
ADMIN_USER = "admin"
ADMIN_PASSWORD = "secret"
DEFAULT_RABBIT = "rabbit://guest:guest@127.0.0.1:5672/"


class BigFakeDriver(fake_virt.FakeDriver):
    """The fake virt driver with room for dozens of small servers per host."""

    vcpus = 64
    memory_mb = 65536
    local_gb = 4096

    def get_host_uptime(self) -> str:
        # The base driver raises NotImplementedError: an ERROR traceback in Nova's log for every
        # hypervisor listing at microversion >= 2.88 (the API still answers).
        return " 08:32:11 up 93 days, 18:25, 12 users,  load average: 0.2"

    def post_live_migration(
        self, context: Any, instance: Any, block_device_info: Any, migrate_data: Any = None
    ) -> None:
        # FakeDriver keeps the guest on the source after a live migration, so a later move back
        # to that host fails with InstanceExists. Drop it, as FakeLiveMigrateDriver does.
        self.destroy(context, instance, network_info=None, block_device_info=block_device_info)


# load_compute_driver() resolves names inside nova.virt ('__main__.X' makes it sys.exit).
fake_virt.BigFakeDriver = BigFakeDriver


class NovaHarness(integrated_helpers._IntegratedTestBase):
    """_IntegratedTestBase without the in-memory notifier, with notifications on RabbitMQ.

    Built with a dummy test name, set up by calling setUp() directly (no test runner), torn
    down with doCleanups().
    """

    ADMIN_API = True
    microversion = "latest"
    CAST_AS_CALL = False  # casts really asynchronous, as in production
    NUM_COMPUTES = 2
    RABBIT_URL = DEFAULT_RABBIT

    def runTest(self) -> None:  # testtools needs a test method to instantiate the case
        pass

    def setUp(self) -> None:
        # nova.test.TestCase.setUp: config, sqlite databases and cells, the RPC fixture (fake
        # transport; notification driver 'test', replaced below), policy, logging capture.
        super(integrated_helpers._IntegratedTestBase, self).setUp()
        self.flags(
            driver=["messagingv2"],
            transport_url=self.RABBIT_URL,
            group="oslo_messaging_notifications",
        )
        self.flags(
            compute_driver="fake.BigFakeDriver",
            # soft delete needs a reclaim interval; long, so SOFT_DELETED servers stay
            reclaim_instance_interval=3600,
            # SHELVED stays until an explicit shelve-offload (0 offloads at once)
            shelved_offload_time=-1,
        )
        self.flags(instances=-1, cores=-1, ram=-1, group="quota")
        self.flags(
            notification_format="both",
            notify_on_state_change="vm_and_task_state",
            group="notifications",
        )
        # Rebuild the notifiers from the options above. RPC's TRANSPORT comes back from the RPC
        # fixture's patched create_transport (the same fake bus); only notifications go out.
        old_notification_transport = rpc.NOTIFICATION_TRANSPORT
        with mock.patch("nova.rpc.get_transport_url", return_value=None):
            rpc.init(CONF)
        old_notification_transport.cleanup()

        # The body of _IntegratedTestBase.setUp, minus NotificationFixture (it would replace
        # rpc.NOTIFIER with an in-memory fake).
        if self.CAST_AS_CALL:
            self.useFixture(nova_fixtures.CastAsCallFixture(self))
        self.placement_fixture = self.useFixture(func_fixtures.PlacementFixture())
        self.placement = self.placement_fixture.api
        self.neutron = self.useFixture(nova_fixtures.NeutronFixture(self))
        self.cinder = self.useFixture(nova_fixtures.CinderFixture(self))
        self.glance = self.useFixture(nova_fixtures.GlanceFixture(self))
        self.policy = self.useFixture(nova_fixtures.RealPolicyFixture())
        # The wheel installs api-paste.ini as data under <venv>/etc/nova.
        self.flags(
            api_paste_config=os.path.join(sys.prefix, "etc", "nova", "api-paste.ini"),
            group="wsgi",
        )
        self._setup_services()

    def _setup_compute_service(self) -> Any:
        services = [self._start_compute(f"compute{i}") for i in range(1, self.NUM_COMPUTES + 1)]
        return services[0]


# -- HTTP --------------------------------------------------------------------------------------


def _json(start_response: Any, status: str, body: Any, headers: Any = ()) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers],
    )
    return [data]


class Frontend:
    """One WSGI app on one port: /identity (a minimal Keystone v3), /compute (Nova's
    osapi_compute paste app), /placement, and /_harness (the test driver's control channel)."""

    def __init__(self, harness: NovaHarness, nova_app: Any, placement_app: Any) -> None:
        self.harness = harness
        self.nova_app = nova_app
        self.placement_app = placement_app
        self.base = ""
        self.tokens: dict[str, Any] = {}
        self.lock = threading.Lock()

    def catalog(self) -> list[dict[str, Any]]:
        def service(kind: str, name: str, url: str) -> dict[str, Any]:
            endpoints = [
                {
                    "id": uuid.uuid4().hex,
                    "interface": interface,
                    "region": "RegionOne",
                    "region_id": "RegionOne",
                    "url": url,
                }
                for interface in ("public", "internal", "admin")
            ]
            return {"type": kind, "name": name, "id": uuid.uuid4().hex, "endpoints": endpoints}

        return [
            service("identity", "keystone", self.base + "/identity/v3"),
            service("compute", "nova", self.base + "/compute/v2.1"),
            service("placement", "placement", self.base + "/placement"),
        ]

    def _v3(self) -> dict[str, Any]:
        return {
            "id": "v3.14",
            "status": "stable",
            "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": self.base + "/identity/v3/"}],
            "media-types": [
                {
                    "base": "application/json",
                    "type": "application/vnd.openstack.identity-v3+json",
                }
            ],
        }

    def keystone(self, env: dict[str, Any], start_response: Any, path: str) -> list[bytes]:
        method = env["REQUEST_METHOD"]
        if path in ("", "/"):
            return _json(
                start_response, "300 Multiple Choices", {"versions": {"values": [self._v3()]}}
            )
        if path in ("/v3", "/v3/"):
            return _json(start_response, "200 OK", {"version": self._v3()})
        if path == "/v3/auth/tokens" and method == "POST":
            length = int(env.get("CONTENT_LENGTH") or 0)
            request = json.loads(env["wsgi.input"].read(length) or b"{}")
            user = request.get("auth", {}).get("identity", {}).get("password", {}).get("user", {})
            if (
                ADMIN_USER not in (user.get("name"), user.get("id"))
                or user.get("password") != ADMIN_PASSWORD
            ):
                error = {
                    "error": {
                        "code": 401,
                        "message": "The request you have made requires authentication.",
                    }
                }
                return _json(start_response, "401 Unauthorized", error)
            token = uuid.uuid4().hex
            now = time.time()
            stamp = "%Y-%m-%dT%H:%M:%S.000000Z"
            domain = {"id": "default", "name": "Default"}
            body = {
                "token": {
                    "methods": ["password"],
                    "issued_at": time.strftime(stamp, time.gmtime(now)),
                    "expires_at": time.strftime(stamp, time.gmtime(now + 86400)),
                    "user": {"id": ADMIN_USER, "name": ADMIN_USER, "domain": domain},
                    "project": {"id": PROJECT_ID, "name": "admin", "domain": domain},
                    "roles": [{"id": r, "name": r} for r in ("admin", "member", "reader")],
                    "catalog": self.catalog(),
                }
            }
            with self.lock:
                self.tokens[token] = body
            return _json(start_response, "201 Created", body, [("X-Subject-Token", token)])
        if path == "/v3/auth/tokens" and method in ("GET", "HEAD"):
            token = env.get("HTTP_X_SUBJECT_TOKEN")
            if token in self.tokens:
                return _json(
                    start_response, "200 OK", self.tokens[token], [("X-Subject-Token", token)]
                )
            return _json(start_response, "404 Not Found", {})
        return _json(start_response, "404 Not Found", {"error": {"code": 404, "message": path}})

    def control(self, env: dict[str, Any], start_response: Any, path: str) -> list[bytes]:
        harness = self.harness
        parts = [p for p in path.split("/") if p]
        if parts == ["computes"]:
            return _json(start_response, "200 OK", {"computes": sorted(harness.computes)})
        if len(parts) == 3 and parts[0] == "computes" and env["REQUEST_METHOD"] == "POST":
            host, operation = parts[1], parts[2]
            if operation == "start":
                harness._start_compute(host)
            elif operation == "stop" and host in harness.computes:
                harness.computes[host].stop()
            elif operation == "restart" and host in harness.computes:
                harness.computes[host] = harness.restart_compute_service(harness.computes[host])
            else:
                return _json(start_response, "400 Bad Request", {"host": host, "op": operation})
            return _json(start_response, "200 OK", {"host": host, "op": operation})
        return _json(start_response, "404 Not Found", {"path": path})

    def __call__(self, env: dict[str, Any], start_response: Any) -> list[bytes]:
        path = env.get("PATH_INFO", "")
        if path.startswith("/_harness/"):
            try:
                return self.control(env, start_response, path[len("/_harness") :])
            except Exception as exc:  # the test driver gets the reason, Nova keeps running
                return _json(start_response, "500 Internal Server Error", {"error": repr(exc)})
        if path == "/identity" or path.startswith("/identity/"):
            return self.keystone(env, start_response, path[len("/identity") :])
        for prefix, app in (("/compute", self.nova_app), ("/placement", self.placement_app)):
            if path != prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix) :]
            # The version documents at a service's root need no token, as in a real cloud.
            if env.get("HTTP_X_AUTH_TOKEN") not in self.tokens and rest not in ("", "/"):
                return _json(start_response, "401 Unauthorized", {"error": "no or unknown token"})
            env = dict(env)
            env["SCRIPT_NAME"] = env.get("SCRIPT_NAME", "") + prefix
            env["PATH_INFO"] = rest
            if prefix == "/compute":
                # OSAPIFixture's app runs with a stubbed keystone context built from headers.
                env["HTTP_X_AUTH_USER"] = env["HTTP_X_USER_ID"] = ADMIN_USER
                env["HTTP_X_AUTH_PROJECT_ID"] = env["HTTP_X_PROJECT_ID"] = PROJECT_ID
                env["HTTP_X_ROLES"] = "reader,member,admin"
            else:
                env["HTTP_X_AUTH_TOKEN"] = "admin"  # placement's noauth2
            return app(env, start_response)
        return _json(start_response, "404 Not Found", {"error": path})


class QuietHandler(simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class ThreadingWSGIServer(socketserver.ThreadingMixIn, simple_server.WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


def serve_http(frontend: Frontend, port: int) -> tuple[int, Any]:
    """Serve ``frontend`` on 127.0.0.1:port; returns the port and a function that stops it."""
    if nova_utils.concurrency_mode_threading():
        httpd = simple_server.make_server(
            "127.0.0.1",
            port,
            frontend,
            server_class=ThreadingWSGIServer,
            handler_class=QuietHandler,
        )
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        return httpd.server_address[1], httpd.shutdown
    # eventlet mode: eventlet's own WSGI server in a greenthread (socketserver's selector may
    # be an unpatched one, which would block the hub).
    import eventlet
    import eventlet.wsgi

    sock = eventlet.listen(("127.0.0.1", port))
    thread = eventlet.spawn(eventlet.wsgi.server, sock, frontend, log_output=False)
    return sock.getsockname()[1], thread.kill


def main() -> int:
    parser = argparse.ArgumentParser(description="a real Nova for cdm-sync's conformance suite")
    parser.add_argument("--port", type=int, default=0, help="loopback port (0: any free one)")
    parser.add_argument("--computes", type=int, default=2, help="nova-compute services to start")
    parser.add_argument("--rabbit", default=DEFAULT_RABBIT, help="notification transport URL")
    parser.add_argument("--info-file", required=True, help="written once Nova is up")
    parser.add_argument("--log-file", help="Nova's log (INFO and above)")
    args = parser.parse_args()

    NovaHarness.NUM_COMPUTES = args.computes
    NovaHarness.RABBIT_URL = args.rabbit
    import_seconds = time.monotonic() - T0
    harness = NovaHarness("runTest")
    harness.setUp()
    # The fixtures set the root logger to DEBUG and keep INFO+ in memory; DEBUG formatting is
    # pure CPU cost here. Nova's log goes to --log-file for a human reading a failure.
    root = logging.getLogger()
    if os.environ.get("NOVA_HARNESS_DEBUG") != "1":
        root.setLevel(logging.INFO)
    if args.log_file:
        handler = logging.FileHandler(args.log_file)
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
        root.addHandler(handler)
    setup_seconds = time.monotonic() - T0

    placement_app = placement_deploy.loadapp(harness.placement_fixture.conf_fixture.conf)
    frontend = Frontend(harness, harness.api_fixture.app(), placement_app)
    port, stop_http = serve_http(frontend, args.port)
    frontend.base = f"http://127.0.0.1:{port}"

    info = {
        "pid": os.getpid(),
        "port": port,
        "auth_url": frontend.base + "/identity/v3",
        "compute_url": frontend.base + "/compute/v2.1",
        "harness_url": frontend.base + "/_harness",
        "username": ADMIN_USER,
        "password": ADMIN_PASSWORD,
        "project_id": PROJECT_ID,
        "project_name": "admin",
        "user_domain_name": "Default",
        "project_domain_name": "Default",
        "computes": sorted(harness.computes),
        "nova_version": nova_version(),
        "threading": nova_utils.concurrency_mode_threading(),
        "import_s": round(import_seconds, 2),
        "startup_s": round(setup_seconds, 2),
        "maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    }
    temporary = args.info_file + ".tmp"
    with open(temporary, "w") as out:
        json.dump(info, out, indent=1)
    os.rename(temporary, args.info_file)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.is_set():
        time.sleep(0.5)  # (eventlet: a green sleep, so Nova's greenthreads run)
    stop_http()
    try:
        harness.doCleanups()
    except Exception as exc:
        print(f"cleanup error: {exc!r}", file=sys.__stderr__)
    print("stopped", file=sys.__stderr__, flush=True)
    return 0


def nova_version() -> str:
    from importlib.metadata import version

    return version("nova")


if __name__ == "__main__":
    try:
        code = main()
    except BaseException:
        # The fixtures redirect stdio and logging: report on the real stderr, or nothing shows.
        traceback.print_exc(file=sys.__stderr__)
        sys.__stderr__.flush()
        os._exit(1)
    sys.exit(code)
