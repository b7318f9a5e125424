"""Process-level tuning of CPython's cyclic garbage collector around a long-lived model.

The model is hundreds of thousands of long-lived objects that never form cycles; left in the
collector's view, every full collection rescans them all while holding the GIL (a pause for the
listener and every reader). :func:`gc_paused` keeps the collector out of bulk loads, and
:func:`settle_heap`, run after the bootstrap and each full audit, takes the survivors out of its
view. What each saves is measured in ``bench/`` (doc/source/benchmarks.rst).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

LOG = logging.getLogger(__name__)


@contextmanager
def gc_paused(*, freeze: bool = True) -> Iterator[None]:
    """Pause the cyclic collector for the block (reference counting still frees memory).

    With ``freeze``, every object alive on leaving, those created in the block included, is
    moved out of the collector's view (``gc.freeze``, without collecting first: cheap after a
    bulk load), so later collections do not rescan a long-lived model either; a block whose
    objects are thrown away soon (an audit's shadow model) passes ``freeze=False`` so they stay
    collectable. :func:`settle_heap` is the variant that collects before freezing.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            if freeze:
                gc.freeze()
            gc.enable()


def settle_heap(*, deep: bool = False) -> float:
    """Collect the garbage in the collector's view, then freeze what survives (the model's
    elements replaced since the last call, mostly): later collections skip it. Returns the
    seconds it took (the collection holds the GIL).

    The plain pass only scans what is not frozen yet, so it costs what changed since the last
    one. A cycle that became garbage after being frozen (an old broker connection after a
    reconnect) is out of its reach: ``deep`` unfreezes everything first so the collection finds
    those too, at the price of scanning the whole heap.
    """
    started = time.monotonic()
    if deep:
        gc.unfreeze()
    collected = gc.collect()
    gc.freeze()
    took = time.monotonic() - started
    # Not gc.get_freeze_count(): it walks every frozen object, a cost per audit.
    LOG.debug(
        "Heap settled%s in %.2fs: %d unreachable objects collected",
        " (deep)" if deep else "",
        took,
        collected,
    )
    return took
