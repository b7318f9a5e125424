"""Options of the RabbitMQ notification listener (``[notifications_listener]``).

Where to connect is not here: the listener uses oslo.messaging's own notification transport
options (``[oslo_messaging_notifications] transport_url``, falling back to ``[DEFAULT]
transport_url``), exactly as Nova does, so one cdm-sync.conf reads like the rest of the cloud's
configuration. What Nova sends (versioned, legacy or both) is ``[notifications] format``.
"""

from __future__ import annotations

from oslo_config import cfg

GROUP = "notifications_listener"

OPTS = [
    cfg.ListOpt(
        "topics",
        default=["versioned_notifications"],
        help="Notification topics to consume. Nova sends versioned notifications on "
        "'versioned_notifications' ([notifications] versioned_notifications_topics) and legacy "
        "ones on 'notifications' ([oslo_messaging_notifications] topics); add 'notifications' "
        "when [notifications] format is unversioned, both or auto with a legacy-only Nova.",
    ),
    cfg.StrOpt(
        "exchange",
        default="nova",
        help="The exchange Nova publishes to (Nova's control_exchange, 'nova' by default). "
        "Empty: the transport's [DEFAULT] control_exchange.",
    ),
    cfg.StrOpt(
        "pool",
        default="cdm-sync",
        help="Listener pool name. With RabbitMQ it is the name of cdm-sync's own queue, bound to "
        "every topic and priority, so cdm-sync gets a copy of every notification without "
        "taking any from other consumers of the topic. Instances of cdm-sync sharing a pool "
        "share the messages; two deployments on one virtual host need two pool names. The "
        "queue outlives the listener, so notifications sent while cdm-sync is down are "
        "delivered when it comes back (bound it with a RabbitMQ max-length or TTL policy).",
    ),
    cfg.IntOpt(
        "batch_size",
        default=256,
        min=1,
        help="Most notifications per batch. oslo.messaging's batch listener receives them in "
        "a process of its own and forwards each batch; the service applies it, in arrival "
        "order, and only then are its messages acknowledged. At most 4 batches wait for "
        "their answer (also while the bootstrap holds notifications back), and RabbitMQ hands "
        "the receiver at most batch_size x 5 unacknowledged messages, unless "
        "[oslo_messaging_rabbit] rabbit_qos_prefetch_count sets another bound: a backlog "
        "waits in RabbitMQ.",
    ),
    cfg.FloatOpt(
        "batch_timeout",
        default=0.1,
        min=0.001,
        help="Seconds a batch waits to fill before it is applied: the most a notification is "
        "delayed when traffic is low.",
    ),
    cfg.IntOpt(
        "max_redeliveries",
        default=5,
        min=0,
        help="How many times a notification whose application failed unexpectedly (not a "
        "malformed one: those are rejected and counted) is requeued before it is dropped with "
        "an error in the log; the audits then repair what it would have changed.",
    ),
]
