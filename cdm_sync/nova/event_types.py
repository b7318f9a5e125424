"""Every notification event type Nova 34 can emit, versioned and legacy (unversioned).

Event types arrive from the message bus and are untrusted: the counters and the Prometheus
series are labelled by event type only for the names listed here, every other one is counted
under one label (:class:`cdm_sync.sync.service.Stats`). The composition roots hand
:data:`NOVA_EVENT_TYPES` to the :class:`~cdm_sync.sync.service.SyncService`; the service layer
never imports this module.

Sources: the versioned names are those of Nova's notification samples
(``doc/notification_samples``, the ``@notification_sample`` of each payload class); the legacy
names are Nova's allow-list of legacy event types (``nova/rpc.py``,
``LegacyValidatingNotifier``) plus the few it emits without listing them (``force_delete``,
``servergroup.update``). Legacy exception notifications take the failed method's name as
their event type and are deliberately not listed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

START_END = ("start", "end")
START_END_ERROR = ("start", "end", "error")


def _expand(prefix: str, actions: Mapping[str, tuple[str, ...]]) -> Iterator[str]:
    """``prefix.action.phase`` for each phase of each action; ``prefix.action`` when the
    action has no phases."""
    for action, phases in actions.items():
        if not phases:
            yield f"{prefix}.{action}"
        for phase in phases:
            yield f"{prefix}.{action}.{phase}"


VERSIONED_EVENT_TYPES = frozenset(
    [
        *_expand(
            "instance",
            {
                "create": START_END_ERROR,
                "delete": START_END,
                "evacuate": (),
                "exists": (),
                "interface_attach": START_END_ERROR,
                "interface_detach": START_END,
                "live_migration_abort": START_END,
                "live_migration_force_complete": START_END,
                "live_migration_post": START_END,
                "live_migration_post_dest": START_END,
                "live_migration_pre": START_END,
                "live_migration_rollback": START_END,
                "live_migration_rollback_dest": START_END,
                "lock": (),
                "pause": START_END,
                "power_off": START_END,
                "power_on": START_END,
                "reboot": START_END_ERROR,
                "rebuild": START_END_ERROR,
                "rebuild_scheduled": (),
                "rescue": START_END,
                "resize": START_END_ERROR,
                "resize_confirm": START_END,
                "resize_finish": START_END,
                "resize_prep": START_END,
                "resize_revert": START_END,
                "restore": START_END,
                "resume": START_END,
                "share_attach": START_END_ERROR,
                "share_detach": START_END_ERROR,
                "shelve": START_END,
                "shelve_offload": START_END,
                "shutdown": START_END,
                "snapshot": START_END,
                "soft_delete": START_END,
                "suspend": START_END,
                "trigger_crash_dump": START_END,
                "unlock": (),
                "unpause": START_END,
                "unrescue": START_END,
                "unshelve": START_END,
                "update": (),
                "volume_attach": START_END_ERROR,
                "volume_detach": START_END,
                "volume_swap": START_END_ERROR,
            },
        ),
        *_expand(
            "aggregate",
            {
                "add_host": START_END,
                "cache_images": ("start", "progress", "end"),
                "create": START_END,
                "delete": START_END,
                "remove_host": START_END,
                "update_metadata": START_END,
                "update_prop": START_END,
            },
        ),
        *_expand(
            "compute_task",
            {
                "build_instances": ("error",),
                "migrate_server": ("error",),
                "rebuild_server": ("error",),
            },
        ),
        *_expand("flavor", {"create": (), "update": (), "delete": ()}),
        *_expand("keypair", {"create": START_END, "delete": START_END, "import": START_END}),
        *_expand("server_group", {"add_member": (), "create": (), "delete": ()}),
        *_expand("service", {"create": (), "update": (), "delete": ()}),
        *_expand("scheduler", {"select_destinations": START_END}),
        "compute.exception",
        "libvirt.connect.error",
        "metrics.update",
        "volume.usage",
    ]
)

LEGACY_EVENT_TYPES = frozenset(
    [
        *_expand(
            "compute.instance",
            {
                "create": START_END_ERROR,
                "create_ip": START_END,
                "delete": START_END,
                "delete_ip": START_END,
                "evacuate": (),
                "exists": (),
                "finish_resize": START_END,
                # Force-deleting an instance no compute host holds: emitted, though not on
                # Nova's allow-list.
                "force_delete": START_END,
                "live.migration.abort": START_END,
                "live.migration.force.complete": START_END,
                "live_migration._post": START_END,
                "live_migration._rollback": START_END,
                "live_migration.post.dest": START_END,
                "live_migration.pre": START_END,
                "live_migration.rollback.dest": START_END,
                "pause": START_END,
                "power_off": START_END,
                "power_on": START_END,
                "reboot": START_END_ERROR,
                "rebuild": START_END_ERROR,
                "rebuild.scheduled": (),
                "rescue": START_END,
                "resize": START_END_ERROR,
                "resize.confirm": START_END,
                "resize.prep": START_END,
                "resize.revert": START_END,
                "restore": START_END,
                "resume": START_END,
                "shelve": START_END,
                "shelve_offload": START_END,
                "shutdown": START_END,
                "snapshot": START_END,
                "soft_delete": START_END,
                "suspend": START_END,
                "trigger_crash_dump": START_END,
                "unpause": START_END,
                "unrescue": START_END,
                "unshelve": START_END,
                "update": (),
                "volume.attach": (),
                "volume.detach": (),
            },
        ),
        *_expand(
            "aggregate",
            {
                "addhost": START_END,
                "create": START_END,
                "delete": START_END,
                "removehost": START_END,
                "updatemetadata": START_END,
                "updateprop": START_END,
            },
        ),
        *_expand(
            "HostAPI",
            {"power_action": START_END, "set_enabled": START_END, "set_maintenance": START_END},
        ),
        *_expand("keypair", {"create": START_END, "delete": START_END, "import": START_END}),
        *_expand(
            "network.floating_ip",
            {"allocate": (), "associate": (), "deallocate": (), "disassociate": ()},
        ),
        # servergroup.update: emitted, though not on Nova's allow-list.
        *_expand("servergroup", {"addmember": (), "create": (), "delete": (), "update": ()}),
        *_expand(
            "compute_task", {"build_instances": (), "migrate_server": (), "rebuild_server": ()}
        ),
        *_expand("scheduler", {"select_destinations": START_END}),
        "compute.libvirt.error",
        "compute.metrics.update",
        "volume.usage",
    ]
)

NOVA_EVENT_TYPES = VERSIONED_EVENT_TYPES | LEGACY_EVENT_TYPES

__all__ = ["LEGACY_EVENT_TYPES", "NOVA_EVENT_TYPES", "VERSIONED_EVENT_TYPES"]
