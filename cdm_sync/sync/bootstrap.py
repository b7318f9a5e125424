"""Loading a whole listing into an empty model: the first sync, live or from a snapshot file.

One function for both, so ``serve``'s bootstrap and ``cdm-sync replay``/``dump`` build the model
the same way: every listed item through :meth:`SyncService.submit_all` (cause ``bootstrap``),
with the cyclic garbage collector paused and the loaded model frozen out of its view (see
:mod:`cdm_sync.runtime`), and progress in the log.
"""

from __future__ import annotations

import logging
import time

from cdm_sync.runtime import gc_paused
from cdm_sync.sync.ports import Listing
from cdm_sync.sync.service import SyncService

LOG = logging.getLogger(__name__)


def load(service: SyncService, listing: Listing) -> list[str]:
    """Apply every item of ``listing`` (cause ``bootstrap``); returns the reasons of the items
    that could not be read (each was logged)."""
    total = listing.server_count
    started = time.monotonic()

    def progress(n: int) -> None:
        LOG.info("Bootstrap: %d items applied (%d servers listed)", n, total)

    with gc_paused():
        service.submit_all(listing.events("bootstrap"), progress)
    LOG.info(
        "Bootstrap done in %.2fs: %d compute nodes, %d instances, %d items rejected",
        time.monotonic() - started,
        service.model.node_count,
        service.model.instance_count,
        len(listing.rejected),
    )
    return listing.rejected
