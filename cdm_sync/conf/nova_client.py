"""``[nova_client]``: how cdm-sync reaches Nova's compute API (and Placement).

Either ``cloud`` names a clouds.yaml entry (credentials, region, interface, TLS and timeout come
from there), or keystoneauth's standard options in this group configure it, as in Nova's own
``[placement]``/``[glance]`` sections: ``auth_type`` and the plugin's options (``auth_url``,
``username``, ``password``, ...; registered when loaded, listed in the sample for ``password``),
session options (``cafile``, ``insecure``, ``timeout``, ...) and the subset of adapter options
the collector honours (``valid_interfaces``, ``region_name``, ``endpoint_override`` and the
retry settings, which also apply with ``cloud``).
"""

from __future__ import annotations

from keystoneauth1 import loading
from oslo_config import cfg

GROUP = "nova_client"
# Per request (seconds), and retries of a request that timed out or could not connect.
TIMEOUT = 30
CONNECT_RETRIES = 2

_own_opts = [
    cfg.StrOpt(
        "cloud",
        help="Name of a cloud in clouds.yaml to take credentials, region, interface, TLS "
        "settings and api_timeout from. When unset, the keystoneauth options of this group "
        "are used.",
    ),
    cfg.StrOpt(
        "clouds_file",
        help="clouds.yaml to read (default: the first of ./clouds.yaml, "
        "~/.config/openstack/clouds.yaml, /etc/openstack/clouds.yaml). A secure.yaml next to "
        "it is merged in. Like every option, it can also be set in the environment "
        "(OS_NOVA_CLIENT__CLOUDS_FILE).",
    ),
    cfg.StrOpt(
        "microversion",
        default="auto",
        regex=r"^(auto|2\.\d{1,3})$",
        help="Compute API microversion: 'auto' negotiates the highest one both Nova and "
        "python-novaclient support; '2.N' forces one (the listing fails if Nova does not "
        "offer it). From 2.88 capacity is read from Placement inventories.",
    ),
    cfg.IntOpt(
        "page_size",
        default=1000,
        min=1,
        max=10000,
        help="Items requested per page (limit) when listing servers, hypervisors and flavors. "
        "Nova caps it at its [api]max_limit; listing continues page by page either way.",
    ),
]

_ADAPTER_OPTS = (
    "valid_interfaces",
    "region_name",
    "endpoint_override",
    "connect_retries",
    "connect_retry_delay",
    "status_code_retries",
    "status_code_retry_delay",
    "retriable_status_codes",
)


def _adapter_opts() -> list[cfg.Opt]:
    opts = [
        opt
        for opt in loading.get_adapter_conf_options(include_deprecated=False)
        if opt.dest in _ADAPTER_OPTS
    ]
    # keystoneauth's defaults are "no retries"; a listing of a large cloud runs for minutes and
    # should ride out a restarting API worker. A request that times out is retried too: with
    # the default timeout, a hung API fails a request within (1 + connect_retries) * timeout
    # = 90 s, inside the 120 s after which the default cheap audits count as overdue.
    cfg.set_defaults(
        opts,
        connect_retries=CONNECT_RETRIES,
        status_code_retries=3,
        retriable_status_codes=[500, 502, 503, 504],
    )
    return opts


def _session_opts() -> list[cfg.Opt]:
    opts = loading.get_session_conf_options()
    cfg.set_defaults(opts, timeout=TIMEOUT)
    return opts


OPTS: list[cfg.Opt] = (
    _own_opts + _adapter_opts() + _session_opts() + loading.get_auth_common_conf_options()
)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """For the sample file: the registered options plus the ``password`` plugin's, which
    keystoneauth registers only when it loads the plugin named by ``auth_type``."""
    plugin_opts = loading.get_auth_plugin_conf_options("password")
    registered = {opt.dest for opt in OPTS}
    return [(GROUP, OPTS + [opt for opt in plugin_opts if opt.dest not in registered])]
