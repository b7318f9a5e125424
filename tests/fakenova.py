"""A test Nova (+ Keystone + Placement) that python-novaclient talks to over real HTTP.

The collector's tests must exercise the real client stack: keystoneauth authenticating and
reading the service catalog, novaclient negotiating a microversion and sending its headers,
keystoneauth retrying 5xx answers, JSON decoding, pagination by marker/limit. So instead of
mocking any of that, this module serves the relevant slice of the compute API from an in-memory
cloud on 127.0.0.1, shaped the way Nova shapes it at the requested microversion (items as in
tests/fixtures/basic_lifecycle/snapshot.json; the rules per microversion from the compute API
reference and Nova's views):

- ids of services and hypervisors are integers before 2.53, UUIDs from 2.53;
- hypervisors lose vcpus/memory_mb/local_gb (and the other usage fields) at 2.88 and gain
  ``uptime``; capacity then lives in Placement inventories (also served here);
- servers embed their flavor from 2.47 (before: ``{"id": .., "links": ..}``), carry ``locked``
  from 2.9; servers and services of a cell that is down appear as minimal records with
  ``status: UNKNOWN`` from 2.69 and are silently missing before (as Nova does by default);
- ``GET /servers/detail`` hides deleted and SOFT_DELETED servers unless ``deleted`` is given
  (``deleted=true`` then means deleted or soft-deleted only), or ``changes-since`` is given
  (then deleted ones are included and ``updated >= changes-since``), as in Nova's DB API;
- lists are paginated with ``limit`` (capped at ``max_limit``, Nova's ``[api]max_limit``) and
  ``marker``, with ``*_links`` ``next`` links when a page is full, as Nova does.

The cloud is plain data the tests mutate (``cloud.add_server(..)``, ``cloud.servers[0][..] =``);
faults are injected with :meth:`FakeCloud.fail_nth`, :meth:`FakeCloud.fail_when` and
:attr:`FakeCloud.latency`, and answers Nova would never send (not UTF-8, nested too deeply, not
an object) with :meth:`FakeCloud.rewrite_when`. Every request is recorded in
:attr:`FakeCloud.requests`.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

COMPUTE = "/compute/v2.1"
PLACEMENT = "/placement"
IDENTITY = "/identity"

Version = tuple[int, int]

# Server status as Nova's API derives it from vm_state (nova/api/openstack/common.py).
STATUS_OF_VM_STATE = {
    "active": "ACTIVE",
    "building": "BUILD",
    "stopped": "SHUTOFF",
    "paused": "PAUSED",
    "suspended": "SUSPENDED",
    "rescued": "RESCUE",
    "resized": "VERIFY_RESIZE",
    "soft-delete": "SOFT_DELETED",
    "deleted": "DELETED",
    "shelved": "SHELVED",
    "shelved_offloaded": "SHELVED_OFFLOADED",
    "error": "ERROR",
}


def parse_version(text: str) -> Version:
    major, minor = text.split(".")
    return int(major), int(minor)


def _parse_iso(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _true(value: str | None) -> bool:
    """oslo's bool_from_string (the spellings Nova accepts as true)."""
    return (value or "").strip().lower() in ("1", "t", "true", "on", "y", "yes")


@dataclass
class Fault:
    """An injected failure: answer ``status`` instead of the real response."""

    path: str
    status: int = 500
    nth: int | None = None  # fail only the nth request to path (1-based) ...
    times: int = 1  # ... and the ``times - 1`` following ones
    query: dict[str, str] | None = None  # fail every request whose query has these values

    def matches(self, path: str, query: dict[str, list[str]], count: int) -> bool:
        if path != self.path:
            return False
        if self.nth is not None:
            return self.nth <= count < self.nth + self.times
        assert self.query is not None
        return all(query.get(k, [None])[-1] == v for k, v in self.query.items())


@dataclass
class Rewrite:
    """A broken answer: the body the fake would send for ``path``, passed through ``rewrite``
    (bytes to bytes) for every request whose query has the values in ``query``."""

    path: str
    rewrite: Callable[[bytes], bytes]
    query: dict[str, str]

    def matches(self, path: str, query: dict[str, list[str]]) -> bool:
        return path == self.path and all(
            query.get(k, [None])[-1] == v for k, v in self.query.items()
        )


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    microversion: str | None  # the compute microversion header as sent, if any


@dataclass
class FakeCloud:
    """The in-memory cloud behind the fake endpoints; canonical records, rendered per request.

    Records keep every field at its newest shape plus the legacy integer ids; the handlers
    render them for the requested microversion.
    """

    max_microversion: str = "2.96"
    min_microversion: str = "2.1"
    max_limit: int = 1000
    region: str = "RegionOne"
    # user name -> (password, project name); every user is admin.
    users: dict[str, tuple[str, str]] = field(
        default_factory=lambda: {"admin": ("secret", "admin")}
    )
    catalog_types: set[str] = field(default_factory=lambda: {"compute", "placement", "identity"})
    services: list[dict[str, Any]] = field(default_factory=list)
    hypervisors: list[dict[str, Any]] = field(default_factory=list)
    servers: list[dict[str, Any]] = field(default_factory=list)
    flavors: list[dict[str, Any]] = field(default_factory=list)
    inventories: dict[str, dict[str, Any]] = field(default_factory=dict)
    # A cell that does not answer: its servers' (id, tenant_id, created) and services' hosts.
    down_cell_servers: list[dict[str, Any]] = field(default_factory=list)
    down_cell_services: list[str] = field(default_factory=list)
    latency: float = 0.0  # seconds added to every request
    delays: dict[str, float] = field(default_factory=dict)  # path -> seconds added
    faults: list[Fault] = field(default_factory=list)
    rewrites: list[Rewrite] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    _counts: dict[str, int] = field(default_factory=dict)
    _next_id: int = 1
    # Bumped when servers are added (ids/created change order); tests that edit ``created``
    # in place must bump it too.
    generation: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)

    # -- building the cloud ------------------------------------------------------------------

    def _int_id(self) -> int:
        ident = self._next_id
        self._next_id += 1
        return ident

    def add_flavor(
        self,
        flavor_id: str,
        name: str,
        vcpus: int,
        ram: int,
        disk: int,
        *,
        ephemeral: int = 0,
        is_public: bool = True,
    ) -> dict[str, Any]:
        flavor = {
            "id": flavor_id,
            "name": name,
            "vcpus": vcpus,
            "ram": ram,
            "disk": disk,
            "ephemeral": ephemeral,
            "swap": 0,
            "is_public": is_public,
            "extra_specs": {},
        }
        self.flavors.append(flavor)
        return flavor

    def add_host(
        self,
        host: str,
        *,
        node_uuid: str | None = None,
        hypervisor_hostname: str | None = None,
        vcpus: int = 16,
        memory_mb: int = 32768,
        local_gb: int = 1024,
        status: str = "enabled",
        state: str = "up",
        disabled_reason: str | None = None,
        placement: bool = True,
    ) -> dict[str, Any]:
        """A nova-compute service and its hypervisor (compute node); Placement inventories of
        the node's resource provider too, unless ``placement`` is False."""
        node_uuid = node_uuid or str(uuidlib.uuid4())
        service = {
            "uuid": str(uuidlib.uuid4()),
            "int_id": self._int_id(),
            "binary": "nova-compute",
            "host": host,
            "zone": "nova",
            "status": status,
            "state": state,
            "updated_at": "2026-11-22T00:25:40.000000",
            "disabled_reason": disabled_reason,
            "forced_down": False,
        }
        self.services.append(service)
        hypervisor = {
            "uuid": node_uuid,
            "int_id": self._int_id(),
            "service": service,
            "hypervisor_hostname": hypervisor_hostname or host,
            "vcpus": vcpus,
            "memory_mb": memory_mb,
            "local_gb": local_gb,
        }
        self.hypervisors.append(hypervisor)
        if placement:
            self.inventories[node_uuid] = {
                "VCPU": _inventory(vcpus, allocation_ratio=16.0),
                "MEMORY_MB": _inventory(memory_mb, reserved=512, allocation_ratio=1.5),
                "DISK_GB": _inventory(local_gb, allocation_ratio=1.0),
            }
        return hypervisor

    def add_service(self, host: str, binary: str) -> dict[str, Any]:
        service = {
            "uuid": str(uuidlib.uuid4()),
            "int_id": self._int_id(),
            "binary": binary,
            "host": host,
            "zone": "internal",
            "status": "enabled",
            "state": "up",
            "updated_at": "2026-11-22T00:25:40.000000",
            "disabled_reason": None,
            "forced_down": False,
        }
        self.services.append(service)
        return service

    def add_server(
        self,
        server_id: str | None = None,
        *,
        host: str | None,
        node: str | None = None,
        flavor_id: str,
        vm_state: str = "active",
        power_state: int = 1,
        task_state: str | None = None,
        name: str = "vm",
        tenant_id: str = "project-a",
        user_id: str = "user-a",
        locked: bool = False,
        metadata: dict[str, str] | None = None,
        created: str = "2026-11-22T00:00:00Z",
        updated: str | None = None,
    ) -> dict[str, Any]:
        server = {
            "id": server_id or str(uuidlib.uuid4()),
            "name": name,
            "tenant_id": tenant_id,
            "user_id": user_id,
            "metadata": dict(metadata or {}),
            "created": created,
            "updated": updated or created,
            "flavor_id": flavor_id,
            "host": host,
            "node": node if node is not None or host is None else host,
            "vm_state": vm_state,
            "power_state": power_state,
            "task_state": task_state,
            "locked": locked,
            "deleted": False,
            "terminated_at": None,
        }
        self.servers.append(server)
        self.generation += 1
        return server

    def server(self, server_id: str) -> dict[str, Any]:
        return next(s for s in self.servers if s["id"] == server_id)

    def update_server(self, server_id: str, updated: str, **fields: Any) -> dict[str, Any]:
        """Change a server as Nova would: fields, then its ``updated`` stamp."""
        with self.lock:
            server = self.server(server_id)
            server.update(fields, updated=updated)
            return server

    def soft_delete(self, server_id: str, updated: str) -> dict[str, Any]:
        return self.update_server(server_id, updated, vm_state="soft-delete", power_state=4)

    def delete_server(self, server_id: str, updated: str) -> dict[str, Any]:
        """Hard delete: the row stays, marked deleted (what ``deleted=true`` lists)."""
        return self.update_server(
            server_id,
            updated,
            vm_state="deleted",
            power_state=0,
            task_state=None,
            deleted=True,
            terminated_at=updated,
        )

    def add_down_cell_server(
        self, server_id: str, tenant_id: str = "project-a", created: str = "2026-11-22T00:00:00Z"
    ) -> None:
        self.down_cell_servers.append({"id": server_id, "tenant_id": tenant_id, "created": created})
        self.generation += 1

    # -- fault injection ---------------------------------------------------------------------

    def fail_nth(self, path: str, nth: int = 1, *, times: int = 1, status: int = 500) -> None:
        """Answer ``status`` to the nth request to ``path`` (e.g. ``"/compute/v2.1/servers/
        detail"``, counted from now) and to the ``times - 1`` requests after it."""
        with self.lock:
            already = self._counts.get(path, 0)
            self.faults.append(Fault(path, status, nth=already + nth, times=times))

    def fail_when(self, path: str, status: int = 500, **query: str) -> None:
        """Answer ``status`` to every request to ``path`` whose query has these values
        (``fail_when(".../servers/detail", marker=some_id)``: that page always fails)."""
        with self.lock:
            self.faults.append(Fault(path, status, query=dict(query)))

    def rewrite_when(self, path: str, rewrite: Callable[[bytes], bytes], **query: str) -> None:
        """Send ``rewrite(body)`` instead of the JSON body of every successful answer to ``path``
        whose query has these values (``rewrite_when(".../servers/detail", lambda b: b"[" + b +
        b"]")``: that page is a JSON array, not an object). The bytes go out as they are."""
        with self.lock:
            self.rewrites.append(Rewrite(path, rewrite, dict(query)))

    def _rewrite_for(self, path: str, query: dict[str, list[str]]) -> Rewrite | None:
        with self.lock:
            return next((r for r in self.rewrites if r.matches(path, query)), None)

    def count(self, path: str) -> int:
        """Requests received for ``path`` so far."""
        with self.lock:
            return self._counts.get(path, 0)

    def _fault_for(self, path: str, query: dict[str, list[str]]) -> Fault | None:
        with self.lock:
            count = self._counts[path] = self._counts.get(path, 0) + 1
            return next((f for f in self.faults if f.matches(path, query, count)), None)


def _inventory(total: int, *, reserved: int = 0, allocation_ratio: float = 1.0) -> dict[str, Any]:
    return {
        "total": total,
        "reserved": reserved,
        "min_unit": 1,
        "max_unit": total,
        "step_size": 1,
        "allocation_ratio": allocation_ratio,
    }


class HTTPError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _compute_fault(status: int, message: str) -> HTTPError:
    # Nova's fault bodies: {"<kind>": {"code": .., "message": ..}}; novaclient reads them.
    kind = {
        400: "badRequest",
        401: "unauthorized",
        403: "forbidden",
        404: "itemNotFound",
        406: "notAcceptable",
    }.get(status, "computeFault")
    return HTTPError(status, {kind: {"code": status, "message": message}})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without TCP_NODELAY, Nagle + delayed ACK
        # add ~40 ms to every request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the cloud records requests itself

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        nova = self.server.nova
        cloud = nova.cloud
        parts = urlsplit(self.path)
        path = parts.path
        query = parse_qs(parts.query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        mv_header = self.headers.get("OpenStack-API-Version") or self.headers.get(
            "X-OpenStack-Nova-API-Version"
        )
        with cloud.lock:
            cloud.requests.append(Request(method, path, query, mv_header))
        delay = cloud.latency + cloud.delays.get(path.rstrip("/"), 0.0)
        if delay:
            time.sleep(delay)
        extra: dict[str, str] = {}
        rewrite = None
        try:
            fault = cloud._fault_for(path.rstrip("/") or "/", query)
            if fault is not None:
                raise _compute_fault(fault.status, "Injected fault.")
            status, payload, extra = nova.route(method, path, query, self.headers, body)
            rewrite = cloud._rewrite_for(path.rstrip("/") or "/", query)
        except HTTPError as exc:
            status, payload = exc.status, exc.body
        data = json.dumps(payload).encode()
        if rewrite is not None:
            data = rewrite.rewrite(data)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test): nothing to answer to


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    nova: FakeNova


class FakeNova:
    """The HTTP server over a :class:`FakeCloud`; a context manager (started on enter).

    ``auth_url`` is the Keystone v3 endpoint to authenticate against (user ``admin``, password
    ``secret``, project ``admin``, domain ``Default``); the catalog it returns points compute
    (``/compute/v2.1``) and placement (``/placement``) at this same server.
    """

    def __init__(self, cloud: FakeCloud | None = None) -> None:
        self.cloud = cloud or FakeCloud()
        self._httpd: _Server | None = None
        self._url: str | None = None  # kept after stop: late handler threads still render
        self._thread: threading.Thread | None = None
        self._tokens: dict[str, tuple[str, str]] = {}  # token -> (user, project)
        self._order_key: tuple[int, int, int] | None = None
        self._order: list[tuple[dict[str, Any], bool]] = []
        self._positions: dict[str, int] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeNova:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.nova = self
        host, port = self._httpd.server_address[:2]
        self._url = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeNova:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._url is not None, "not started"
        return self._url

    @property
    def auth_url(self) -> str:
        return f"{self.url}{IDENTITY}/v3"

    @property
    def compute_url(self) -> str:
        return f"{self.url}{COMPUTE}"

    # -- routing -----------------------------------------------------------------------------

    def route(
        self, method: str, path: str, query: dict[str, list[str]], headers: Any, body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        if path.startswith(IDENTITY):
            return self._identity(method, path[len(IDENTITY) :].rstrip("/"), body)
        if path.rstrip("/") == "/compute":
            return 200, {"versions": [self._compute_version()]}, {}
        if path.startswith(COMPUTE):
            rest = path[len(COMPUTE) :].rstrip("/")
            if rest == "":
                return 200, {"version": self._compute_version()}, {}
            self._check_token(headers)
            version = self._requested_version(headers)
            mv = f"{version[0]}.{version[1]}"
            extra = {
                "OpenStack-API-Version": f"compute {mv}",
                "X-OpenStack-Nova-API-Version": mv,
                "Vary": "OpenStack-API-Version, X-OpenStack-Nova-API-Version",
            }
            with self.cloud.lock:
                payload = self._compute(rest, query, version, headers)
            return 200, payload, extra
        if path.startswith(PLACEMENT):
            rest = path[len(PLACEMENT) :].rstrip("/")
            if rest == "":
                return 200, {"versions": [self._placement_version()]}, {}
            self._check_token(headers)
            matched = re.fullmatch(r"/resource_providers/([^/]+)/inventories", rest)
            if method == "GET" and matched:
                with self.cloud.lock:
                    inventories = self.cloud.inventories.get(matched.group(1))
                if inventories is None:
                    raise HTTPError(404, _placement_error(404, "No resource provider found."))
                return 200, {"resource_provider_generation": 1, "inventories": inventories}, {}
            raise HTTPError(404, _placement_error(404, "Not found."))
        raise _compute_fault(404, "Not found.")

    # -- Keystone ----------------------------------------------------------------------------

    def _identity_version(self) -> dict[str, Any]:
        return {
            "id": "v3.14",
            "status": "stable",
            "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": f"{self.auth_url}/"}],
            "media-types": [
                {"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}
            ],
        }

    def _identity(self, method: str, rest: str, body: bytes) -> tuple[int, Any, dict[str, str]]:
        if method == "GET" and rest == "":
            return 300, {"versions": {"values": [self._identity_version()]}}, {}
        if method == "GET" and rest == "/v3":
            return 200, {"version": self._identity_version()}, {}
        if method == "POST" and rest == "/v3/auth/tokens":
            return self._issue_token(body)
        raise HTTPError(404, {"error": {"code": 404, "title": "Not Found", "message": "?"}})

    def _issue_token(self, body: bytes) -> tuple[int, Any, dict[str, str]]:
        try:
            auth = json.loads(body)["auth"]
            user = auth["identity"]["password"]["user"]
            name, password = user["name"], user["password"]
            scope = auth.get("scope", {}).get("project", {})
        except (ValueError, KeyError, TypeError):
            raise HTTPError(400, {"error": {"code": 400, "title": "Bad Request"}}) from None
        expected = self.cloud.users.get(name)
        if expected is None or expected[0] != password or scope.get("name") != expected[1]:
            raise HTTPError(
                401,
                {
                    "error": {
                        "code": 401,
                        "title": "Unauthorized",
                        "message": "The request you have made requires authentication.",
                    }
                },
            )
        token = uuidlib.uuid4().hex
        project = expected[1]
        self._tokens[token] = (name, project)
        now = datetime.now(UTC)
        domain = {"id": "default", "name": "Default"}
        document = {
            "token": {
                "methods": ["password"],
                "user": {"id": f"id-{name}", "name": name, "domain": domain},
                "project": {"id": f"id-{project}", "name": project, "domain": domain},
                "roles": [{"id": "r-admin", "name": "admin"}, {"id": "r-reader", "name": "reader"}],
                "audit_ids": [uuidlib.uuid4().hex[:22]],
                "issued_at": now.isoformat().replace("+00:00", "Z"),
                "expires_at": (now + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
                "is_domain": False,
                "catalog": self._catalog(),
            }
        }
        return 201, document, {"X-Subject-Token": token}

    def _catalog(self) -> list[dict[str, Any]]:
        urls = {
            "compute": ("nova", self.compute_url),
            "placement": ("placement", f"{self.url}{PLACEMENT}"),
            "identity": ("keystone", f"{self.url}{IDENTITY}"),
        }
        catalog = []
        for kind, (name, url) in urls.items():
            if kind not in self.cloud.catalog_types:
                continue
            endpoints = [
                {
                    "id": f"{kind}-{interface}",
                    "interface": interface,
                    "region": self.cloud.region,
                    "region_id": self.cloud.region,
                    "url": url,
                }
                for interface in ("public", "internal", "admin")
            ]
            catalog.append({"id": kind, "type": kind, "name": name, "endpoints": endpoints})
        return catalog

    def _check_token(self, headers: Any) -> tuple[str, str]:
        found = self._tokens.get(headers.get("X-Auth-Token", ""))
        if found is None:
            raise _compute_fault(401, "The request you have made requires authentication.")
        return found

    # -- compute -----------------------------------------------------------------------------

    def _compute_version(self) -> dict[str, Any]:
        return {
            "id": "v2.1",
            "status": "CURRENT",
            "version": self.cloud.max_microversion,
            "min_version": self.cloud.min_microversion,
            "updated": "2013-07-23T11:33:21Z",
            "links": [{"rel": "self", "href": f"{self.compute_url}/"}],
            "media-types": [
                {
                    "base": "application/json",
                    "type": "application/vnd.openstack.compute+json;version=2.1",
                }
            ],
        }

    def _placement_version(self) -> dict[str, Any]:
        return {
            "id": "v1.0",
            "status": "CURRENT",
            "min_version": "1.0",
            "max_version": "1.39",
            "links": [{"rel": "self", "href": ""}],
        }

    def _requested_version(self, headers: Any) -> Version:
        text = None
        for part in (headers.get("OpenStack-API-Version") or "").split(","):
            words = part.split()
            if len(words) == 2 and words[0].lower() == "compute":
                text = words[1]
        if text is None:
            text = headers.get("X-OpenStack-Nova-API-Version") or self.cloud.min_microversion
        low = parse_version(self.cloud.min_microversion)
        high = parse_version(self.cloud.max_microversion)
        if text == "latest":
            return high
        try:
            version = parse_version(text)
        except ValueError:
            raise _compute_fault(400, f"API Version String {text} is of invalid format.") from None
        if not low <= version <= high:
            raise _compute_fault(
                406,
                f"Version {text} is not supported by the API. Minimum is "
                f"{self.cloud.min_microversion} and maximum is {self.cloud.max_microversion}.",
            )
        return version

    def _compute(
        self, rest: str, query: dict[str, list[str]], mv: Version, headers: Any
    ) -> dict[str, Any]:
        def one(name: str) -> str | None:
            values = query.get(name)
            return values[-1] if values else None

        if rest == "/os-services":
            return {"services": self._services(one("binary"), one("host"), mv)}
        if rest == "/os-hypervisors/detail":
            usage = self._usage() if mv < (2, 88) else {}
            items = [self._hypervisor(h, mv, usage) for h in self.cloud.hypervisors]
            if mv < (2, 33):
                return {"hypervisors": items}  # no pagination before 2.33
            return self._page("hypervisors", items, one("limit"), one("marker"), rest, query)
        if rest == "/flavors/detail":
            wanted = one("is_public")
            flavors = sorted(self.cloud.flavors, key=lambda f: f["id"])
            if wanted is None or _true(wanted):
                flavors = [f for f in flavors if f["is_public"]]
            elif wanted.lower() != "none":
                flavors = [f for f in flavors if not f["is_public"]]
            items = [self._flavor(f, mv) for f in flavors]
            return self._page("flavors", items, one("limit"), one("marker"), rest, query)
        if rest == "/servers/detail":
            _user, project = self._check_token(headers)
            return self._server_page(rest, query, mv, project)
        raise _compute_fault(404, "The resource could not be found.")

    def _limit(self, text: str | None) -> int:
        """Nova's common.get_limit_and_marker: the asked limit, capped at max_limit."""
        try:
            limit = min(int(text), self.cloud.max_limit) if text else self.cloud.max_limit
        except ValueError:
            raise _compute_fault(400, "limit param must be an integer") from None
        if limit < 0:
            raise _compute_fault(400, "limit param must be positive")
        return limit

    def _with_links(
        self, key: str, page: list[Any], limit: int, rest: str, query: dict[str, list[str]]
    ) -> dict[str, Any]:
        """Nova's _get_collection_links: a ``next`` link whenever the page is full."""
        body: dict[str, Any] = {key: page}
        if page and len(page) == limit:
            params = {k: v[-1] for k, v in query.items() if k != "marker"}
            params["marker"] = str(page[-1]["id"])
            href = f"{self.compute_url}{rest}?" + "&".join(f"{k}={v}" for k, v in params.items())
            body[f"{key}_links"] = [{"rel": "next", "href": href}]
        return body

    def _page(
        self,
        key: str,
        items: list[dict[str, Any]],
        limit_text: str | None,
        marker: str | None,
        rest: str,
        query: dict[str, list[str]],
    ) -> dict[str, Any]:
        limit = self._limit(limit_text)
        start = 0
        if marker is not None:
            index = next((i for i, it in enumerate(items) if str(it["id"]) == marker), None)
            if index is None:
                raise _compute_fault(400, f"marker [{marker}] not found")
            start = index + 1
        return self._with_links(key, items[start : start + limit], limit, rest, query)

    def _services(self, binary: str | None, host: str | None, mv: Version) -> list[Any]:
        out: list[Any] = []
        for service in self.cloud.services:
            if (binary and service["binary"] != binary) or (host and service["host"] != host):
                continue
            item = {
                "id": service["uuid"] if mv >= (2, 53) else service["int_id"],
                "binary": service["binary"],
                "host": service["host"],
                "zone": service["zone"],
                "status": service["status"],
                "state": service["state"],
                "updated_at": service["updated_at"],
                "disabled_reason": service["disabled_reason"],
            }
            if mv >= (2, 11):
                item["forced_down"] = service["forced_down"]
            out.append(item)
        if mv >= (2, 69):
            out.extend(
                {"binary": "nova-compute", "host": host_name, "status": "UNKNOWN"}
                for host_name in self.cloud.down_cell_services
                if (not binary or binary == "nova-compute") and (not host or host == host_name)
            )
        return out

    def _usage(self) -> dict[str, list[int]]:
        """Per hypervisor hostname: [vcpus, ram, disk, servers] used by live servers."""
        flavors = {f["id"]: f for f in self.cloud.flavors}
        usage: dict[str, list[int]] = {}
        for server in self.cloud.servers:
            if server["deleted"] or server["node"] is None:
                continue
            flavor = flavors[server["flavor_id"]]
            used = usage.setdefault(server["node"], [0, 0, 0, 0])
            used[0] += flavor["vcpus"]
            used[1] += flavor["ram"]
            used[2] += flavor["disk"]
            used[3] += 1
        return usage

    def _hypervisor(
        self, hyp: dict[str, Any], mv: Version, usage: dict[str, list[int]]
    ) -> dict[str, Any]:
        service = hyp["service"]
        new_ids = mv >= (2, 53)
        item: dict[str, Any] = {
            "id": hyp["uuid"] if new_ids else hyp["int_id"],
            "hypervisor_hostname": hyp["hypervisor_hostname"],
            "hypervisor_type": "fake",
            "hypervisor_version": 1000,
            "host_ip": "192.0.2.2",
            "state": service["state"],
            "status": service["status"],
            "service": {
                "host": service["host"],
                "id": service["uuid"] if new_ids else service["int_id"],
                "disabled_reason": service["disabled_reason"],
            },
        }
        if mv < (2, 88):
            vcpus_used, ram_used, disk_used, count = usage.get(
                hyp["hypervisor_hostname"], [0, 0, 0, 0]
            )
            ram_used += 512  # reserved_host_memory_mb
            item.update(
                vcpus=hyp["vcpus"],
                memory_mb=hyp["memory_mb"],
                local_gb=hyp["local_gb"],
                vcpus_used=vcpus_used,
                memory_mb_used=ram_used,
                local_gb_used=disk_used,
                free_ram_mb=hyp["memory_mb"] - ram_used,
                free_disk_gb=hyp["local_gb"] - disk_used,
                current_workload=0,
                running_vms=count,
                disk_available_least=hyp["local_gb"] - disk_used,
                cpu_info={"arch": "x86_64"} if mv >= (2, 28) else '{"arch": "x86_64"}',
            )
        else:
            item["uptime"] = " 08:32:11 up 93 days, 18:25, 12 users,  load average: 0.20"
        return item

    def _flavor(self, flavor: dict[str, Any], mv: Version) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": flavor["id"],
            "name": flavor["name"],
            "vcpus": flavor["vcpus"],
            "ram": flavor["ram"],
            "disk": flavor["disk"],
            "OS-FLV-EXT-DATA:ephemeral": flavor["ephemeral"],
            "OS-FLV-DISABLED:disabled": False,
            "os-flavor-access:is_public": flavor["is_public"],
            # Nova answers "" for no swap before 2.75, 0 from 2.75.
            "swap": flavor["swap"] if mv >= (2, 75) or flavor["swap"] else "",
            "links": [{"rel": "self", "href": f"{self.compute_url}/flavors/{flavor['id']}"}],
        }
        if mv < (2, 75):
            item["rxtx_factor"] = 1.0
        if mv >= (2, 55):
            item["description"] = None
        if mv >= (2, 61):
            item["extra_specs"] = dict(flavor["extra_specs"])
        return item

    def _server_order(self) -> tuple[list[tuple[dict[str, Any], bool]], dict[str, int]]:
        """All servers (and a down cell's), in Nova's default order: created_at desc, id desc;
        with each id's position for markers. Cached until servers are added."""
        cloud = self.cloud
        key = (cloud.generation, len(cloud.servers), len(cloud.down_cell_servers))
        if self._order_key != key:
            records = [(s, False) for s in cloud.servers]
            records += [(s, True) for s in cloud.down_cell_servers]
            records.sort(key=lambda r: (r[0]["created"], r[0]["id"]), reverse=True)
            self._order = records
            self._positions = {r[0]["id"]: i for i, r in enumerate(records)}
            self._order_key = key
        return self._order, self._positions

    def _server_page(
        self, rest: str, query: dict[str, list[str]], mv: Version, project: str
    ) -> dict[str, Any]:
        def one(name: str) -> str | None:
            values = query.get(name)
            return values[-1] if values else None

        all_tenants = "all_tenants" in query and (
            one("all_tenants") in ("", None) or _true(one("all_tenants"))
        )
        since: datetime | None = None
        if one("changes-since") is not None:
            try:
                since = _parse_iso(one("changes-since") or "")
            except ValueError:
                raise _compute_fault(
                    400, "Invalid input for field/attribute changes-since."
                ) from None
        deleted_text = one("deleted")
        statuses = query.get("status")
        # A down cell answers nothing; from 2.69 its servers are listed as minimal records.
        show_down = mv >= (2, 69) and deleted_text is None and since is None and not statuses
        limit = self._limit(one("limit"))
        order, positions = self._server_order()
        start = 0
        marker = one("marker")
        if marker is not None:
            if marker not in positions:
                raise _compute_fault(400, f"marker [{marker}] not found")
            start = positions[marker] + 1
        page: list[dict[str, Any]] = []
        for index in range(start, len(order)):
            if len(page) >= limit:
                break
            server, down = order[index]
            if not all_tenants and server["tenant_id"] != project:
                continue
            if down:
                if show_down:
                    page.append(
                        {
                            "id": server["id"],
                            "status": "UNKNOWN",
                            "tenant_id": server["tenant_id"],
                            "created": server["created"],
                            "links": [
                                {
                                    "rel": "self",
                                    "href": f"{self.compute_url}/servers/{server['id']}",
                                }
                            ],
                        }
                    )
                continue
            soft = server["vm_state"] == "soft-delete"
            if deleted_text is not None:
                # Nova's DB API: deleted=true -> deleted OR soft-deleted; false -> neither.
                if _true(deleted_text) != (server["deleted"] or soft):
                    continue
            elif since is None and (server["deleted"] or soft):
                continue
            if since is not None and _parse_iso(server["updated"]) < since:
                continue
            if statuses and STATUS_OF_VM_STATE.get(server["vm_state"], "UNKNOWN") not in statuses:
                continue
            page.append(self._server(server, mv))
        return self._with_links("servers", page, limit, rest, query)

    def _server(self, server: dict[str, Any], mv: Version) -> dict[str, Any]:
        flavor = next(f for f in self.cloud.flavors if f["id"] == server["flavor_id"])
        if mv >= (2, 47):
            flavor_view: dict[str, Any] = {
                "original_name": flavor["name"],
                "vcpus": flavor["vcpus"],
                "ram": flavor["ram"],
                "disk": flavor["disk"],
                "ephemeral": flavor["ephemeral"],
                "swap": flavor["swap"],
                "extra_specs": dict(flavor["extra_specs"]),
            }
        else:
            flavor_view = {
                "id": flavor["id"],
                "links": [{"rel": "bookmark", "href": f"{self.url}/flavors/{flavor['id']}"}],
            }
        sid = server["id"]
        item: dict[str, Any] = {
            "id": sid,
            "name": server["name"],
            "status": STATUS_OF_VM_STATE.get(server["vm_state"], "UNKNOWN"),
            "tenant_id": server["tenant_id"],
            "user_id": server["user_id"],
            "metadata": dict(server["metadata"]),
            "hostId": "3b0a7233609c840a4aff881afaf5bed8d9dc1a4096affa1bbab9f671"
            if server["host"]
            else "",
            "image": {"id": "155d900f-4e14-4e4c-a73d-069cbf4541e6"},
            "flavor": flavor_view,
            "created": server["created"],
            "updated": server["updated"],
            "addresses": {},
            "accessIPv4": "",
            "accessIPv6": "",
            "links": [{"rel": "self", "href": f"{self.compute_url}/servers/{sid}"}],
            "OS-DCF:diskConfig": "MANUAL",
            "progress": 0,
            "OS-EXT-AZ:availability_zone": "nova",
            "config_drive": "",
            "key_name": None,
            "OS-SRV-USG:launched_at": server["created"].rstrip("Z"),
            "OS-SRV-USG:terminated_at": server["terminated_at"],
            "OS-EXT-SRV-ATTR:host": server["host"],
            "OS-EXT-SRV-ATTR:hypervisor_hostname": server["node"],
            "OS-EXT-SRV-ATTR:instance_name": "instance-00000001",
            "OS-EXT-STS:vm_state": server["vm_state"],
            "OS-EXT-STS:power_state": server["power_state"],
            "OS-EXT-STS:task_state": server["task_state"],
            "os-extended-volumes:volumes_attached": [],
        }
        if mv >= (2, 3):
            item.update(
                {
                    "OS-EXT-SRV-ATTR:hostname": server["name"],
                    "OS-EXT-SRV-ATTR:launch_index": 0,
                    "OS-EXT-SRV-ATTR:reservation_id": "r-t4keb7iy",
                    "OS-EXT-SRV-ATTR:root_device_name": "/dev/sda",
                    "OS-EXT-SRV-ATTR:kernel_id": "",
                    "OS-EXT-SRV-ATTR:ramdisk_id": "",
                    "OS-EXT-SRV-ATTR:user_data": None,
                }
            )
        if mv >= (2, 9):
            item["locked"] = server["locked"]
        if mv >= (2, 16):
            item["host_status"] = "UP" if server["host"] else ""
        if mv >= (2, 19):
            item["description"] = None
        if mv >= (2, 26):
            item["tags"] = []
        if mv >= (2, 63):
            item["trusted_image_certificates"] = None
        if mv >= (2, 73):
            item["locked_reason"] = None
        if mv >= (2, 96):
            item["pinned_availability_zone"] = None
        return item


def _placement_error(status: int, detail: str) -> dict[str, Any]:
    return {"errors": [{"status": status, "title": "Not Found", "detail": detail}]}


@contextlib.contextmanager
def running(cloud: FakeCloud | None = None) -> Iterator[FakeNova]:
    """``with running(cloud) as nova:`` a started fake, stopped on exit."""
    with FakeNova(cloud) as nova:
        yield nova


@pytest.fixture
def fake_nova() -> Iterator[FakeNova]:
    """A started fake Nova over an empty cloud (``fake_nova.cloud``), stopped after the test.

    Use it in a test module with ``fake_nova = fakenova.fake_nova``.
    """
    with running() as nova:
        yield nova
