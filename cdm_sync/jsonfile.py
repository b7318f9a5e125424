"""Atomic JSON file writes, shared by everything that writes a file others read while it runs
(the model dump, snapshot files, ``replay --dump``): write a temporary file beside the target,
then rename it over the target, so a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json_atomic(path: str | Path, document: Any, *, compact: bool = False) -> None:
    """Write ``document`` to ``path`` atomically; ``compact``: no indentation, keys sorted.

    The temporary file is removed if anything fails, and the error is raised.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            if compact:
                json.dump(document, fh, separators=(",", ":"), sort_keys=True)
            else:
                json.dump(document, fh, indent=1)
            fh.write("\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
