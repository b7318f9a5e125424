"""Process-level tuning for bulk loads (snapshot decoding, bootstrap, full audits).

A bulk load allocates millions of objects that all stay alive, which makes CPython's cyclic
garbage collector rescan a growing heap again and again for nothing (none of these objects form
cycles): with it paused, bootstrapping 200,000 servers is several times faster.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic collector for the block (reference counting still frees memory).

    On leaving, long-lived objects created in the block are moved out of the collector's view
    (``gc.freeze``), so later collections do not rescan the whole model either.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.freeze()
            gc.enable()
