"""Notification traces (FORMATS.md §2): one notification per line, in delivery order."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class TraceError(ValueError):
    """A trace file that cannot be opened at all."""


def read_trace(path: str | Path) -> Iterator[tuple[int, Any, str | None]]:
    """Yield ``(line number, decoded line, None)``, or ``(line number, None, reason)`` for a line
    that is not JSON; blank lines are skipped. A bad line never stops the rest of the trace."""
    try:
        fh = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise TraceError(f"{path}: {exc.strerror or exc}") from None
    with fh:
        for number, text in enumerate(fh, 1):
            if not text.strip():
                continue
            try:
                yield number, json.loads(text), None
            except ValueError as exc:
                yield number, None, f"line {number} is not JSON ({exc})"
