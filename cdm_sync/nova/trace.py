"""Notification traces (FORMATS.md §2): one notification per line, in delivery order.

A trace is untrusted input (recorded from a bus anything can publish to, or edited by hand), so
every line is checked before it is decoded: a line that is too long, not UTF-8, not JSON, nested
too deeply or not a JSON object is reported with its line number and the reason, and the rest of
the trace is read as usual.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The default of ``[notifications] max_message_bytes``: commands pass the configured value.
DEFAULT_MAX_LINE_BYTES = 1 << 20
# How much of a line over the limit is read at a time while it is skipped.
_SKIP_CHUNK = 1 << 16


class TraceError(ValueError):
    """A trace file that cannot be opened at all."""


def read_trace(
    path: str | Path, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[tuple[int, Any, str | None]]:
    """Yield ``(line number, decoded JSON object, None)`` for each line, or ``(line number, None,
    reason)`` for a line that cannot be used; blank lines are skipped. A bad line never stops
    the rest of the trace.

    A line longer than ``max_line_bytes`` (newline excluded) is skipped without being held in
    memory or decoded. Raises :class:`TraceError` if the file cannot be opened.
    """
    try:
        fh = open(path, "rb")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise TraceError(f"{path}: {exc.strerror or exc}") from None
    with fh:
        number = 0
        while True:
            # At most one byte over the limit: enough to tell that a line is too long.
            raw = fh.readline(max_line_bytes + 1)
            if not raw:
                return
            number += 1
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                size = len(raw) + _skip_line(fh)
                yield (
                    number,
                    None,
                    (
                        f"line {number} has {size} bytes, over the {max_line_bytes}-byte limit "
                        "(not decoded)"
                    ),
                )
                continue
            if raw.isspace():
                continue
            line, reason = _decode_line(raw)
            yield number, line, None if reason is None else f"line {number} {reason}"


def _skip_line(fh: Any) -> int:
    """Read to the end of the current line, a chunk at a time; returns the bytes skipped
    (the newline excluded)."""
    skipped = 0
    while True:
        chunk = fh.readline(_SKIP_CHUNK)
        if not chunk:
            return skipped
        if chunk.endswith(b"\n"):
            return skipped + len(chunk) - 1
        skipped += len(chunk)


def _decode_line(raw: bytes) -> tuple[Any, str | None]:
    """One line as a JSON object, or None and why it is not one (the reason completes the
    sentence ``line N ...``). Never raises for what the line holds."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"is not UTF-8 ({exc.reason} at byte {exc.start})"
    try:
        value = json.loads(text)
    except RecursionError:
        return None, "is nested too deeply to decode"
    except ValueError as exc:
        return None, f"is not JSON ({exc})"
    if not isinstance(value, dict):
        return None, f"is not a JSON object (a JSON {_json_type(value)})"
    return value, None


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type."""
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"
