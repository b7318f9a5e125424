"""All of cdm-sync's configuration options, registered in one place.

Nothing else in the package reads files or environment variables for settings: commands call
:func:`load` once, and ``oslo-config-generator --namespace cdm_sync`` lists every option from
:func:`list_opts` into a sample file.
"""

from __future__ import annotations

from collections.abc import Sequence

from oslo_config import cfg
from oslo_log import log as logging

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
    cfg.FloatOpt(
        "supersede_window",
        default=300.0,
        min=0,
        help="With format=auto: seconds (of notification time) after the last versioned "
        "notification during which legacy notifications are dropped as copies of versioned ones.",
    ),
]

_GROUPS: dict[str, list[cfg.Opt]] = {
    "model": model_opts,
    "notifications": notification_opts,
}

for _group, _opts in _GROUPS.items():
    CONF.register_opts(_opts, group=_group)
logging.register_options(CONF)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """For oslo-config-generator (entry point ``oslo.config.opts: cdm_sync``)."""
    return [(group, list(opts)) for group, opts in _GROUPS.items()]


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
