"""All of cdm-sync's configuration options, registered in one place.

Nothing else in the package reads files or environment variables for settings: commands call
:func:`load` once, and ``oslo-config-generator --namespace cdm_sync`` lists every option from
:func:`list_opts` into a sample file.
"""

from __future__ import annotations

from collections.abc import Sequence

from oslo_config import cfg
from oslo_log import _options as log_options
from oslo_log import log as logging

from cdm_sync.conf import listener, nova_client, sync

CONF = cfg.CONF

model_opts = [
    cfg.IntOpt(
        "tombstone_ttl",
        default=600,
        min=1,
        help="Seconds a deleted instance or compute service is remembered, so that a late or "
        "replayed notification cannot bring it back.",
    ),
    cfg.IntOpt(
        "dedupe_window",
        default=65536,
        min=0,
        help="How many recent notification message ids are remembered to drop redeliveries "
        "(0 disables; versions still protect the model).",
    ),
]

notification_opts = [
    cfg.StrOpt(
        "format",
        default="auto",
        choices=[
            ("auto", "handle both kinds; legacy copies are dropped while versioned ones flow"),
            ("versioned", "Nova's notification_format=versioned"),
            ("both", "Nova's notification_format=both: only the versioned copies are used"),
            ("unversioned", "Nova's notification_format=unversioned (legacy only)"),
        ],
        help="What Nova's [notifications] notification_format is. 'auto' suits traces of "
        "unknown origin; with 'both', a transition that arrives in legacy form before any "
        "versioned notification was seen can yield two change records, which setting the real "
        "format avoids.",
    ),
    cfg.IntOpt(
        "max_message_bytes",
        default=1 << 20,
        min=1024,
        help="Largest notification (or trace line) accepted, in bytes of JSON. Nova's are a "
        "few KB; a larger one is rejected (counted and logged with the reason) without being "
        "decoded, so a hostile or broken publisher cannot make cdm-sync hold megabytes per "
        "message.",
    ),
    cfg.FloatOpt(
        "supersede_window",
        default=300.0,
        min=0,
        help="With format=auto: seconds (of notification time) after the last versioned "
        "notification during which legacy notifications are dropped as copies of versioned ones.",
    ),
]

health_opts = [
    cfg.HostAddressOpt(
        "host",
        default="127.0.0.1",
        help="Address of the health endpoint of cdm-sync serve (/metrics, /status, and the "
        "admin action POST /resync: keep it on loopback or a management network).",
    ),
    cfg.PortOpt("port", default=9658, help="Port of the health endpoint (0: any free port)."),
    cfg.IntOpt(
        "workers",
        default=4,
        min=1,
        help="Threads that answer requests. A connection waits for its request without holding "
        "a thread; a client that sends part of a request and stalls holds one for at most "
        "'timeout' seconds.",
    ),
    cfg.FloatOpt(
        "timeout",
        default=10.0,
        min=0.1,
        help="Seconds a connection may stay idle, and a request may take in all (reading it "
        "and writing the answer), before the connection is closed.",
    ),
    cfg.IntOpt(
        "max_connections",
        default=100,
        min=1,
        help="Most connections kept open. A new connection beyond it closes the one idle "
        "longest; when none is idle, the new connection is refused. Keep it well below the "
        "process's open-file limit.",
    ),
]

_GROUPS: dict[str, list[cfg.Opt]] = {
    "model": model_opts,
    "notifications": notification_opts,
    "health": health_opts,
    nova_client.GROUP: nova_client.OPTS,
    listener.GROUP: listener.OPTS,
    sync.GROUP: sync.OPTS,
}


def set_defaults() -> None:
    """cdm-sync's own defaults for oslo.log's options. Applied on import, and by
    oslo-config-generator before it writes the sample (entry point
    ``oslo.config.opts.defaults: cdm_sync``), so the sample shows the defaults cdm-sync runs
    with. Idempotent."""
    # APScheduler logs every job run at INFO: noise in an operator's log.
    levels = logging.get_default_log_levels()
    if "apscheduler=WARN" not in levels:
        logging.set_defaults(default_log_levels=[*levels, "apscheduler=WARN"])
    # Logs go to stderr: stdout is for what a command outputs (a dump, a status), which
    # scripts read. oslo.log has no public setter for this default; its option list does.
    cfg.set_defaults(log_options.generic_log_opts, use_stderr=True)


for _group, _opts in _GROUPS.items():
    CONF.register_opts(_opts, group=_group)
logging.register_options(CONF)
set_defaults()


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """For oslo-config-generator (entry point ``oslo.config.opts: cdm_sync``)."""
    opts = [(group, list(opts)) for group, opts in _GROUPS.items() if group != nova_client.GROUP]
    return opts + nova_client.list_opts()


def load(config_files: Sequence[str] = (), project: str = "cdm-sync") -> cfg.ConfigOpts:
    """Parse configuration files (default search: /etc/cdm-sync/cdm-sync.conf, ~/.cdm-sync/...).

    Raises ``oslo_config.cfg.Error`` subclasses with a readable message on a bad file or value.
    """
    args: list[str] = []
    for path in config_files:
        args += ["--config-file", path]
    CONF(args, project=project, default_config_files=None if not config_files else [])
    # oslo.config checks values when they are read; read them all now, so a bad value is
    # reported at start-up with its option name instead of failing later mid-run.
    for group, opts in _GROUPS.items():
        for opt in opts:
            getattr(getattr(CONF, group), opt.dest)
    return CONF
