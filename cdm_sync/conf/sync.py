"""Options of the sync engine: how often the two audits run and how much a listing is trusted.

Read only by :func:`cdm_sync.sync.engine.engine_from_conf`; the engine itself takes plain
arguments.
"""

from __future__ import annotations

from oslo_config import cfg

GROUP = "sync"

OPTS = [
    cfg.FloatOpt(
        "cheap_interval",
        default=60.0,
        min=1.0,
        help="Seconds between cheap audits: GET /servers/detail?changes-since=<high water - "
        "change_skew> (deleted servers included), each result applied as an observation. "
        "Until the first sync has completed, this job retries the bootstrap instead.",
    ),
    cfg.FloatOpt(
        "full_interval",
        default=3600.0,
        min=1.0,
        help="Seconds between full audits: a complete relist of services, hypervisors and "
        "servers into a shadow model, diffed against the live one; differences are corrected "
        "with cause.source 'audit'.",
    ),
    cfg.FloatOpt(
        "change_skew",
        default=120.0,
        min=0.0,
        help="Seconds subtracted from the high water mark (the capture time of the last "
        "complete listing) when asking Nova for changes: covers clock skew between cdm-sync "
        "and Nova's database and transactions still in flight when a listing was taken.",
    ),
    cfg.FloatOpt(
        "deletion_margin",
        default=5.0,
        min=0.0,
        help="Seconds: an instance or compute node that cdm-sync observed (a notification, a "
        "listing) after a full listing began, or less than this long before, is not deleted "
        "for being absent from that listing (it may have been created while the listing ran, "
        "or Nova's API may lag behind its notifications). Measured on cdm-sync's own clock, so "
        "it does not depend on Nova's clocks agreeing with it. A longer margin delays the "
        "repair of a lost delete of something observed just before an audit.",
    ),
    cfg.FloatOpt(
        "full_shrink_limit",
        default=0.1,
        min=0.0,
        max=1.0,
        help="Partial-list guard: if a full listing has fewer instances (or compute nodes) "
        "than the live model by more than this fraction, the audit deletes nothing and the "
        "model is marked DEGRADED (a truncated or failed listing must not empty the model). "
        "Raise it, or run an admin resync, after a large intended clean-up.",
    ),
]
