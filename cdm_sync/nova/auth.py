"""Keystone sessions for the Nova collector: from a clouds.yaml cloud or ``[nova_client]`` options.

The collector only needs a keystoneauth1 :class:`~keystoneauth1.session.Session` (plus where to
find compute in the catalog); this module builds one the two ways operators configure OpenStack
clients, without depending on openstacksdk: a ``clouds.yaml`` entry (the same file the
``openstack`` CLI reads: ``auth_type``, ``auth``, ``region_name``, ``interface``, ``verify``,
``cacert``, ``cert``, ``key``, ``api_timeout``; ``secure.yaml`` merged in), or keystoneauth's
own oslo.config options (``auth_type`` + plugin options, ``cafile``, ``insecure``, ``timeout``,
... as registered by :mod:`cdm_sync.conf.nova_client`).

Retries use keystoneauth's own machinery (:class:`Retries` → adapter arguments: connection
failures and retriable status codes, exponential backoff from 0.5 s unless a fixed delay is set).

Nothing here puts a secret in a log line or an exception: :func:`describe_auth` names the user
and the auth URL only, and errors about a clouds.yaml entry name keys, never values; the
secrets of a clouds.yaml entry are handed to the process's redactor (:mod:`cdm_sync.redaction`)
for what other libraries may say.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from keystoneauth1 import loading
from keystoneauth1 import session as ks_session
from keystoneauth1.exceptions import MissingRequiredOptions, NoMatchingPlugin
from keystoneauth1.plugin import BaseAuthPlugin

from cdm_sync.redaction import REDACTOR

LOG = logging.getLogger(__name__)

# Where the openstack CLI (os-client-config / openstacksdk) looks for clouds.yaml, in order.
CONFIG_DIRS = (
    Path.cwd,
    lambda: Path.home() / ".config" / "openstack",
    lambda: Path("/etc/openstack"),
)


class AuthConfigError(ValueError):
    """Connection settings that cannot be used (unknown cloud, bad clouds.yaml, ...)."""


class Connection(NamedTuple):
    """An authenticated-on-demand session and where compute is to be found in the catalog."""

    session: ks_session.Session
    region_name: str | None = None
    interface: str | None = None


@dataclass(frozen=True)
class Retries:
    """keystoneauth retry settings for every compute/placement request.

    ``None`` delays mean keystoneauth's exponential backoff (0.5 s, doubling, at most 60 s).
    5xx answers are retried: a listing of a large cloud runs for minutes and one overloaded
    API worker must not fail it; a persistent failure still fails after ``status_code_retries``.
    """

    connect_retries: int = 2
    status_code_retries: int = 3
    retriable_status_codes: tuple[int, ...] = (500, 502, 503, 504)
    connect_retry_delay: float | None = None
    status_code_retry_delay: float | None = None

    def adapter_kwargs(self) -> dict[str, Any]:
        """Arguments for a keystoneauth Adapter (python-novaclient passes them through)."""
        return {
            "connect_retries": self.connect_retries,
            "status_code_retries": self.status_code_retries,
            "retriable_status_codes": list(self.retriable_status_codes),
            "connect_retry_delay": self.connect_retry_delay,
            "status_code_retry_delay": self.status_code_retry_delay,
        }


def describe_auth(auth: BaseAuthPlugin | None) -> str:
    """``user 'admin' at auth_url http://..`` for messages: who and where, never a secret."""
    if auth is None:
        return "no auth plugin"
    user = getattr(auth, "_username", None) or getattr(auth, "_user_id", None)
    if user is None:
        methods = getattr(auth, "auth_methods", None) or []
        for method in methods:
            user = getattr(method, "username", None) or getattr(method, "user_id", None)
            if user:
                break
    url = getattr(auth, "auth_url", None)
    who = f"user {user!r}" if user else f"{type(auth).__name__} credentials"
    return f"{who} at auth_url {url}" if url else who


# -- clouds.yaml ------------------------------------------------------------------------------

# clouds.yaml ``auth`` keys whose values are secrets (password, application_credential_secret,
# token, passcode, ...).
_SECRET_WORDS = ("password", "secret", "token", "passcode")


def find_clouds_file(explicit: str | None = None) -> Path:
    """The clouds.yaml to read: ``explicit`` (``[nova_client] clouds_file``), else the first of
    ./clouds.yaml, ~/.config/openstack/clouds.yaml, /etc/openstack/clouds.yaml."""
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit))
    else:
        candidates.extend(make() / "clouds.yaml" for make in CONFIG_DIRS)
    for path in candidates:
        if path.is_file():
            return path
    raise AuthConfigError(f"no clouds.yaml found (looked at {', '.join(map(str, candidates))})")


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AuthConfigError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        # The position only: a YAML error's text can quote the line (and a password on it).
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise AuthConfigError(f"{path}: not valid YAML{where}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise AuthConfigError(f"{path}: expected a mapping at the top level")
    return doc


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def cloud_entry(cloud: str, clouds_file: str | None = None) -> dict[str, Any]:
    """The ``clouds.<cloud>`` entry of clouds.yaml, with secure.yaml (next to it) merged in."""
    path = find_clouds_file(clouds_file)
    clouds = _load_yaml(path).get("clouds")
    if not isinstance(clouds, dict) or not isinstance(clouds.get(cloud), dict):
        names = sorted(clouds) if isinstance(clouds, dict) else []
        raise AuthConfigError(f"{path}: no cloud named {cloud!r} (clouds: {', '.join(names)})")
    entry = clouds[cloud]
    secure = path.with_name("secure.yaml")
    if secure.is_file():
        secret_clouds = _load_yaml(secure).get("clouds")
        if isinstance(secret_clouds, dict) and isinstance(secret_clouds.get(cloud), dict):
            entry = _merge(entry, secret_clouds[cloud])
    if "profile" in entry:
        raise AuthConfigError(
            f"{path}: cloud {cloud!r} uses a vendor 'profile', which cdm-sync does not expand; "
            "spell out auth_url and the other settings"
        )
    return entry


def session_from_cloud(cloud: str, clouds_file: str | None = None) -> Connection:
    """A session for a clouds.yaml cloud (password, token, application credential, ...)."""
    entry = cloud_entry(cloud, clouds_file)
    auth_type = str(entry.get("auth_type") or "password")
    try:
        loader = loading.get_plugin_loader(auth_type)
    except NoMatchingPlugin:
        raise AuthConfigError(f"cloud {cloud!r}: unknown auth_type {auth_type!r}") from None
    auth_options = entry.get("auth") or {}
    if not isinstance(auth_options, dict):
        raise AuthConfigError(f"cloud {cloud!r}: auth must be a mapping")
    for key, value in auth_options.items():
        if any(word in str(key) for word in _SECRET_WORDS):
            REDACTOR.protect(value)
        elif isinstance(value, str):
            REDACTOR.protect_url_passwords(value)
    known = {opt.dest for opt in loader.get_options()}
    unknown = sorted(set(auth_options) - known)
    if unknown:
        LOG.warning("clouds.yaml cloud %r: auth keys ignored by %s: %s", cloud, auth_type, unknown)
    try:
        auth = loader.load_from_options(**{k: v for k, v in auth_options.items() if k in known})
    except MissingRequiredOptions as exc:
        missing = ", ".join(opt.dest for opt in exc.options)
        raise AuthConfigError(f"cloud {cloud!r}: auth is missing {missing}") from None
    verify: bool | str = bool(entry.get("verify", True))
    if verify and entry.get("cacert"):
        verify = str(entry["cacert"])
    cert: str | tuple[str, str] | None = None
    if entry.get("cert"):
        cert = (str(entry["cert"]), str(entry["key"])) if entry.get("key") else str(entry["cert"])
    timeout = entry.get("api_timeout")
    session = ks_session.Session(
        auth=auth,
        verify=verify,
        cert=cert,
        timeout=float(timeout) if timeout is not None else None,
        user_agent="cdm-sync",
    )
    interface = entry.get("interface")
    return Connection(session, entry.get("region_name"), interface)


# -- oslo.config ------------------------------------------------------------------------------


def session_from_conf(conf: Any, group: str) -> ks_session.Session:
    """A session from keystoneauth's options in ``[group]`` (registered with
    ``register_auth_conf_options``/``register_session_conf_options``)."""
    auth = loading.load_auth_from_conf_options(conf, group)
    if auth is None:
        raise AuthConfigError(
            f"[{group}] has no auth_type: set auth_type (e.g. password) and its options, "
            f"or [{group}] cloud to use clouds.yaml"
        )
    return loading.load_session_from_conf_options(conf, group, auth=auth)


def first_interface(value: str | Sequence[str] | None) -> str | None:
    """keystoneauth's valid_interfaces is a list; novaclient takes one interface."""
    if value is None or isinstance(value, str):
        return value
    return value[0] if value else None


__all__ = [
    "AuthConfigError",
    "Connection",
    "Retries",
    "cloud_entry",
    "describe_auth",
    "find_clouds_file",
    "first_interface",
    "session_from_cloud",
    "session_from_conf",
]
