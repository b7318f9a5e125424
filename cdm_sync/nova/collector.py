"""The Nova collector: reads a live cloud's compute view into a :class:`Snapshot`.

This is the adapter behind :class:`cdm_sync.sync.ports.Collector`, built on python-novaclient
over a keystoneauth1 session (another client could replace it without touching the engine).
What it guarantees, because the engine deletes from the model what a complete listing lacks:

- every page is read: servers, hypervisors (from 2.33) and flavors are listed with explicit
  ``limit``/``marker`` until Nova says there is no next page (Nova caps ``limit`` at its
  ``[api]max_limit`` and then still announces the next page, so a capped page is never taken
  for the last one); a failed page, a timeout, bad credentials or a missing endpoint raise
  :class:`ListingError` with what was read so far, never a silently short listing;
- SOFT_DELETED servers, which the default listing hides although they still occupy their host,
  are fetched too (``deleted=true&status=SOFT_DELETED``) and merged, de-duplicated by id;
- servers of a cell that is down (Nova >= 2.69 lists them as minimal records with status
  ``UNKNOWN``) are left out and reported in :attr:`Listing.incomplete`, so the engine knows the
  listing cannot prove any deletion (before 2.69 Nova silently omits them: nothing to detect);
- ``captured_at`` is the clock when listing started, so the versions derived from it never
  claim more than was seen.

The microversion is negotiated (the highest both Nova and python-novaclient support, or the
configured one, checked against what Nova offers). Capacity comes from hypervisors below 2.88
and from Placement inventories through the same session from 2.88. Below 2.47 servers do not
embed their flavor, so flavors are listed as well.

Lists are read with the client's raw ``GET`` (python-novaclient's SessionClient: its
microversion headers, error mapping and keystoneauth retries) rather than through its managers:
the managers drop the ``*_links`` that say whether another page exists, and wrapping 200,000
server dicts in Resource objects only to ``to_dict()`` them again costs seconds. The items in
the snapshot are exactly the API's dicts (what ``resource.to_dict()`` would return). An answer
that cannot be decoded as sent (not UTF-8, not JSON, nested too deeply) fails the listing.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from keystoneauth1 import adapter as ks_adapter
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import session as ks_session
from novaclient import api_versions
from novaclient import client as nova_client
from novaclient import exceptions as nova_exc

from cdm_sync.nova.auth import (
    Connection,
    Retries,
    describe_auth,
    first_interface,
    session_from_cloud,
    session_from_conf,
)
from cdm_sync.nova.payloads import COMPUTE_BINARY
from cdm_sync.nova.snapshot import Snapshot, listing_of
from cdm_sync.runtime import gc_paused
from cdm_sync.sync.ports import Listing, ListingError, Progress

LOG = logging.getLogger(__name__)

# Microversion thresholds that change what must be listed.
HYPERVISOR_PAGINATION = api_versions.APIVersion("2.33")
EMBEDDED_FLAVOR = api_versions.APIVersion("2.47")
NO_HYPERVISOR_CAPACITY = api_versions.APIVersion("2.88")

INVENTORY_WORKERS = 8  # concurrent Placement requests (one per compute node)


@dataclass
class _Read:
    """What a listing has read so far: the snapshot it becomes, or the partial one on failure."""

    captured_at: float
    microversion: str | None = None
    services: list[Any] = field(default_factory=list)
    hypervisors: list[Any] = field(default_factory=list)
    servers: dict[str, Any] = field(default_factory=dict)
    flavors: list[Any] = field(default_factory=list)
    inventories: dict[str, Any] = field(default_factory=dict)
    down_servers: list[str] = field(default_factory=list)
    down_services: list[str] = field(default_factory=list)

    def add_servers(self, items: list[Any]) -> None:
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                raise ValueError("a server item without a string id")
            if item.get("status") == "UNKNOWN" or "OS-EXT-STS:vm_state" not in item:
                # A down cell's minimal record: its real state is unknown.
                self.down_servers.append(item["id"])
                continue
            known = self.servers.get(item["id"])
            # Listed twice (by the two listings, or a page boundary moving): the newer wins.
            if known is None or str(item.get("updated") or "") >= str(known.get("updated") or ""):
                self.servers[item["id"]] = item

    def snapshot(self) -> Snapshot:
        return Snapshot(
            captured_at=self.captured_at,
            microversion=self.microversion or "2.1",
            services=self.services,
            hypervisors=self.hypervisors,
            servers=list(self.servers.values()),
            flavors=self.flavors,
            inventories=self.inventories,
        )

    def partial(self) -> Listing | None:
        if self.microversion is None:
            return None  # nothing was read
        return listing_of(self.snapshot())

    def incomplete(self) -> list[str]:
        reasons = []
        if self.down_servers:
            reasons.append(
                f"{len(self.down_servers)} servers listed with status UNKNOWN (a cell is down), "
                f"e.g. {', '.join(self.down_servers[:3])}"
            )
        if self.down_services:
            reasons.append(
                f"{len(self.down_services)} nova-compute services listed with status UNKNOWN "
                f"(a cell is down): {', '.join(self.down_services[:5])}"
            )
        return reasons


class NovaCollector:
    """Lists Nova's compute view with python-novaclient over a keystoneauth1 session.

    ``interface``/``region_name`` select the compute (and placement) endpoints in the catalog;
    ``endpoint_override`` replaces the compute one. ``microversion`` is ``"auto"`` or ``"2.N"``.
    ``page_size`` is the ``limit`` asked per page. ``clock`` stamps ``captured_at``.
    """

    def __init__(
        self,
        session: ks_session.Session,
        *,
        region_name: str | None = None,
        interface: str | None = None,
        endpoint_override: str | None = None,
        microversion: str = "auto",
        page_size: int = 1000,
        retries: Retries | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        if microversion != "auto":
            requested = api_versions.APIVersion(microversion)  # raises on a malformed one
            if requested < api_versions.APIVersion("2.1"):
                raise ValueError("microversion must be 2.1 or later")
        self._session = session
        self._region_name = region_name
        self._interface = interface
        self._endpoint_override = endpoint_override
        self._requested = microversion
        self._page_size = page_size
        self._retries = retries or Retries()
        self._clock = clock
        self._nova: Any = None
        self._placement: ks_adapter.Adapter | None = None
        self._version: api_versions.APIVersion | None = None

    @property
    def microversion(self) -> str | None:
        """The microversion the last listing used (None before the first one)."""
        return self._version.get_string() if self._version is not None else None

    # -- the Collector port ------------------------------------------------------------------

    def full_listing(self, progress: Progress | None = None) -> Listing:
        snapshot, incomplete = self.full_snapshot(progress)
        return listing_of(snapshot, incomplete)

    def full_snapshot(self, progress: Progress | None = None) -> tuple[Snapshot, list[str]]:
        """What :meth:`full_listing` reads, as the compute API's items (FORMATS.md §1, for
        ``cdm-sync snapshot``), with the reasons it is incomplete. Raises ListingError."""
        read = _Read(captured_at=self._clock())
        # Pages of decoded servers pile up (acyclic data): without the pause, the cyclic GC
        # rescans them after every page, a large share of a big listing's time.
        with gc_paused(freeze=False), self._failures(read):
            nova = self._connect()
            read.microversion = self._negotiate(nova).get_string()
            self._list_services(nova, read, progress)
            self._list_hypervisors(nova, read, progress)
            query = {"all_tenants": "1"}
            self._list_servers(nova, read, query, progress)
            # The default listing hides SOFT_DELETED servers; they still hold their host.
            soft = {"all_tenants": "1", "deleted": "True", "status": "SOFT_DELETED"}
            self._list_servers(nova, read, soft, progress)
            if self._version < EMBEDDED_FLAVOR:
                self._list_flavors(nova, read, progress)
            if self._version >= NO_HYPERVISOR_CAPACITY:
                self._read_inventories(read, progress)
        incomplete = read.incomplete()
        LOG.info(
            "Nova listing at %s: %d services, %d hypervisors, %d servers%s",
            read.microversion,
            len(read.services),
            len(read.hypervisors),
            len(read.servers),
            f"; incomplete: {'; '.join(incomplete)}" if incomplete else "",
        )
        return read.snapshot(), incomplete

    def nodes_listing(self, progress: Progress | None = None) -> Listing:
        read = _Read(captured_at=self._clock())
        with self._failures(read):
            nova = self._connect()
            read.microversion = self._negotiate(nova).get_string()
            self._list_services(nova, read, progress)
            self._list_hypervisors(nova, read, progress)
            if self._version >= NO_HYPERVISOR_CAPACITY:
                self._read_inventories(read, progress)
        return listing_of(read.snapshot(), read.incomplete())

    def changes_since(self, since: float, progress: Progress | None = None) -> Listing:
        """Servers whose ``updated`` is at or after ``since`` (floored to the second), deleted
        and soft-deleted ones included.

        Only ``changes-since`` is sent, not ``deleted=true``: Nova already includes deleted
        servers when ``changes-since`` is given, and ``deleted=true`` would restrict the answer
        to deleted (and soft-deleted) servers only, hiding every changed live one.
        """
        read = _Read(captured_at=self._clock())
        stamp = datetime.fromtimestamp(int(since // 1), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with self._failures(read):
            nova = self._connect()
            version = self._version or self._negotiate(nova)
            read.microversion = version.get_string()
            self._list_servers(nova, read, {"all_tenants": "1", "changes-since": stamp}, progress)
            if version < EMBEDDED_FLAVOR:
                self._list_flavors(nova, read, progress)
        return listing_of(read.snapshot(), read.incomplete())

    # -- connecting --------------------------------------------------------------------------

    def _connect(self) -> Any:
        """Authenticate, find compute in the catalog, build the client (once)."""
        who = describe_auth(self._session.auth)
        try:
            self._session.get_auth_headers()
        except ks_exc.Unauthorized:
            raise ListingError(
                f"authentication failed for {who}: Keystone rejected the credentials (HTTP 401)"
            ) from None
        except ks_exc.ConnectionError as exc:
            raise ListingError(f"cannot reach Keystone for {who}: {exc}") from None
        except ks_exc.ClientException as exc:
            raise ListingError(f"authentication failed for {who}: {exc}") from None
        if self._endpoint_override is None:
            try:
                endpoint = self._session.get_endpoint(
                    service_type="compute",
                    interface=self._interface or "public",
                    region_name=self._region_name,
                )
            except ks_exc.EndpointNotFound:
                endpoint = None
            if not endpoint:
                raise ListingError(
                    f"no compute endpoint in the catalog (interface "
                    f"{self._interface or 'public'}, region {self._region_name or 'any'}) "
                    f"for {who}"
                )
        if self._nova is None:
            kwargs: dict[str, Any] = dict(self._retries.adapter_kwargs())
            if self._interface:
                kwargs["endpoint_type"] = self._interface
            self._nova = nova_client.Client(
                "2.1",
                session=self._session,
                region_name=self._region_name,
                endpoint_override=self._endpoint_override,
                **kwargs,
            )
        return self._nova

    def _negotiate(self, nova: Any) -> api_versions.APIVersion:
        """The microversion to use, set on the client; re-checked at every full listing (the
        cloud may have been upgraded)."""
        wanted = api_versions.APIVersion(
            "2.latest" if self._requested == "auto" else self._requested
        )
        try:
            version = api_versions.discover_version(nova, wanted)
        except nova_exc.UnsupportedVersion as exc:
            raise ListingError(f"compute API microversion {self._requested}: {exc}") from None
        if version < api_versions.APIVersion("2.1"):
            raise ListingError(
                "the compute API offers no microversions (v2.0 only); cdm-sync needs 2.1+"
            )
        nova.api_version = version
        if self._version is None or version != self._version:
            LOG.info("Compute API microversion %s", version.get_string())
        self._version = version
        return version

    @contextlib.contextmanager
    def _failures(self, read: _Read) -> Iterator[None]:
        """Turn every way a listing can fail into a ListingError carrying the partial read."""
        who = describe_auth(self._session.auth)
        try:
            yield
        except ListingError as exc:
            if exc.partial is None:
                exc.partial = read.partial()
            raise
        except nova_exc.ClientException as exc:
            reason = _http_reason(exc, who)
            raise ListingError(reason, read.partial()) from None
        except ks_exc.Unauthorized:
            raise ListingError(
                f"authentication failed for {who}: Keystone rejected the credentials (HTTP 401)",
                read.partial(),
            ) from None
        except ks_exc.EndpointNotFound as exc:
            raise ListingError(f"endpoint not found for {who}: {exc}", read.partial()) from None
        except ks_exc.ConnectionError as exc:
            raise ListingError(
                f"{_what(exc)} after {self._retries.connect_retries} retries: {exc}",
                read.partial(),
            ) from None
        except ks_exc.ClientException as exc:
            raise ListingError(f"{type(exc).__name__}: {exc}", read.partial()) from None
        except RecursionError:
            # Any other answer (version discovery, Placement) nested deeper than a decoder goes.
            raise ListingError(
                "an answer of the compute or placement API is nested too deeply to decode",
                read.partial(),
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ListingError(
                f"unexpected answer from the compute API: {type(exc).__name__}: {exc}",
                read.partial(),
            ) from None

    # -- lists -------------------------------------------------------------------------------

    def _pages(
        self, nova: Any, path: str, key: str, params: dict[str, str], paginate: bool = True
    ) -> Iterator[list[Any]]:
        """The pages of a list, in order, until Nova announces no next page.

        A page continues the list when Nova sent a ``next`` link (it does whenever a page is
        full at its effective limit, which may be lower than ours) or when the page is as long
        as we asked; an empty page always ends it. A marker seen twice is an error, not a loop.
        A page that cannot be used (see :func:`_answer`) raises ListingError saying why.
        """
        marker: str | None = None
        seen: set[str] = set()
        while True:
            query = dict(params)
            if paginate:
                query["limit"] = str(self._page_size)
                if marker is not None:
                    query["marker"] = marker
            url = f"{path}?{urlencode(sorted(query.items()))}" if query else path
            body = _answer(nova, url, key)
            items = body[key]
            yield items
            if not paginate or not items:
                return
            links = body.get(f"{key}_links") or []
            announced = any(isinstance(lk, dict) and lk.get("rel") == "next" for lk in links)
            if not announced and len(items) < self._page_size:
                return
            last = items[-1]
            if not isinstance(last, dict) or last.get("id") is None:
                raise ListingError(f"GET {url}: last item has no id to continue from")
            marker = str(last["id"])
            if marker in seen:
                raise ListingError(f"GET {url}: pagination returned marker {marker} twice")
            seen.add(marker)

    def _list_services(self, nova: Any, read: _Read, progress: Progress | None) -> None:
        # One page, read like the others (novaclient's manager would deep-copy every item).
        query = {"binary": COMPUTE_BINARY}
        for item in next(self._pages(nova, "/os-services", "services", query, paginate=False)):
            if isinstance(item, dict) and item.get("status") == "UNKNOWN":
                read.down_services.append(str(item.get("host")))
            else:
                read.services.append(item)
        _tell(progress, "services", len(read.services))

    def _list_hypervisors(self, nova: Any, read: _Read, progress: Progress | None) -> None:
        paginate = self._version is not None and self._version >= HYPERVISOR_PAGINATION
        for page in self._pages(nova, "/os-hypervisors/detail", "hypervisors", {}, paginate):
            read.hypervisors.extend(page)
            _tell(progress, "hypervisors", len(read.hypervisors))

    def _list_servers(
        self, nova: Any, read: _Read, params: dict[str, str], progress: Progress | None
    ) -> None:
        for page in self._pages(nova, "/servers/detail", "servers", params):
            read.add_servers(page)
            _tell(progress, "servers", len(read.servers))

    def _list_flavors(self, nova: Any, read: _Read, progress: Progress | None) -> None:
        # is_public=None: every flavor (private ones too), as an admin may see them.
        for page in self._pages(nova, "/flavors/detail", "flavors", {"is_public": "None"}):
            read.flavors.extend(page)
        _tell(progress, "flavors", len(read.flavors))

    def _read_inventories(self, read: _Read, progress: Progress | None) -> None:
        """Placement inventories of each compute node (resource provider uuid = hypervisor id
        from 2.53), read concurrently through the same session."""
        placement = self._placement_adapter()
        providers = [str(h["id"]) for h in read.hypervisors if isinstance(h, dict) and "id" in h]

        def fetch(provider: str) -> tuple[str, Any]:
            resp = placement.get(f"/resource_providers/{provider}/inventories", raise_exc=False)
            if resp.status_code == 404:
                return provider, None
            if resp.status_code >= 400:
                raise ListingError(
                    f"GET placement /resource_providers/{provider}/inventories failed: "
                    f"HTTP {resp.status_code}"
                )
            return provider, resp.json()["inventories"]

        with ThreadPoolExecutor(max_workers=min(INVENTORY_WORKERS, len(providers) or 1)) as pool:
            for provider, inventories in pool.map(fetch, providers):
                if inventories is None:
                    LOG.warning("No Placement resource provider %s: capacity unknown", provider)
                    continue
                read.inventories[provider] = inventories
        _tell(progress, "inventories", len(read.inventories))

    def _placement_adapter(self) -> ks_adapter.Adapter:
        if self._placement is None:
            self._placement = ks_adapter.Adapter(
                self._session,
                service_type="placement",
                interface=self._interface or "public",
                region_name=self._region_name,
                **self._retries.adapter_kwargs(),
            )
        return self._placement


def _answer(nova: Any, url: str, key: str) -> dict[str, Any]:
    """The answer to ``GET url``: a JSON object holding a ``key`` list.

    python-novaclient decodes the body with requests, which replaces bytes that are not UTF-8
    and lets the decoder's RecursionError out; an answer that cannot be decoded as sent is
    refused here, so the listing fails with the reason (ListingError) instead of going on
    mangled or ending in a traceback. Raises novaclient's errors for HTTP errors, as the
    client does.
    """
    try:
        resp, body = nova.client.get(url)
    except RecursionError:
        raise ListingError(f"GET {url}: the answer is nested too deeply to decode") from None
    content = resp.content
    if not content.isascii():  # Nova's JSON is ASCII: the check costs nothing then
        try:
            content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ListingError(
                f"GET {url}: the answer is not UTF-8 ({exc.reason} at byte {exc.start})"
            ) from None
    if body is None:
        raise ListingError(f"GET {url}: the answer is not JSON")
    if not isinstance(body, dict) or not isinstance(body.get(key), list):
        raise ListingError(f"GET {url}: no {key!r} list in the answer")
    return body


def _tell(progress: Progress | None, what: str, count: int) -> None:
    if progress is not None:
        progress(what, count)


def _what(exc: Exception) -> str:
    if isinstance(exc, ks_exc.ConnectTimeout):
        return "timed out"
    if isinstance(exc, ks_exc.SSLError):
        return "TLS failure"
    return "connection failed"


def _http_reason(exc: nova_exc.ClientException, who: str) -> str:
    """A failed compute request, after keystoneauth's retries, as a reason a person can act on."""
    request = f"{getattr(exc, 'method', None) or 'GET'} {getattr(exc, 'url', None) or '?'}"
    detail = f"HTTP {exc.code}: {exc.message}"
    if getattr(exc, "request_id", None):
        detail += f" (request {exc.request_id})"
    if exc.code == 401:
        return f"compute API rejected the token of {who}: {request}: {detail}"
    if exc.code == 403:
        return f"{who} may not list this (admin role needed): {request}: {detail}"
    return f"{request} failed: {detail}"


def collector_from_conf(conf: Any = None, **overrides: Any) -> NovaCollector:
    """A collector configured by ``[nova_client]`` (see :mod:`cdm_sync.conf.nova_client`).

    ``overrides`` are passed to :class:`NovaCollector` (e.g. ``clock=``). Raises
    :class:`cdm_sync.nova.auth.AuthConfigError` for unusable connection settings.
    """
    from cdm_sync.conf.nova_client import GROUP
    from cdm_sync.conf.secrets import protect_secrets

    if conf is None:
        from cdm_sync.conf import CONF

        conf = CONF
    group = conf[GROUP]
    if group.cloud:
        connection = session_from_cloud(group.cloud, group.clouds_file)
    else:
        connection = Connection(session_from_conf(conf, GROUP))
        protect_secrets(conf)  # the auth plugin's options are registered now
    codes = group.retriable_status_codes
    default = Retries()
    retries = Retries(
        connect_retries=_default(group.connect_retries, default.connect_retries),
        status_code_retries=_default(group.status_code_retries, default.status_code_retries),
        retriable_status_codes=(
            tuple(int(c) for c in codes) if codes else default.retriable_status_codes
        ),
        connect_retry_delay=group.connect_retry_delay,
        status_code_retry_delay=group.status_code_retry_delay,
    )
    kwargs: dict[str, Any] = {
        "region_name": group.region_name or connection.region_name,
        "interface": first_interface(group.valid_interfaces) or connection.interface,
        "endpoint_override": group.endpoint_override,
        "microversion": group.microversion,
        "page_size": group.page_size,
        "retries": retries,
    }
    kwargs.update(overrides)
    return NovaCollector(connection.session, **kwargs)


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


__all__ = ["NovaCollector", "collector_from_conf"]
