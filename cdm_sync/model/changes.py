"""Change records: one per element changed, numbered by a gap-free model revision (FORMATS.md §4).

A record keeps a reference to the (immutable) element rather than a rendered copy, so yielding
200,000 records during a bootstrap costs little; ``to_dict()`` renders the contract format.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

from cdm_sync.model.elements import ComputeNode, Instance
from cdm_sync.model.events import Cause

CHANGE_FORMAT = "cdm-sync/change/1"

Kind = Literal["compute_node", "instance"]
Op = Literal["add", "update", "remove"]


def format_timestamp(posix: float) -> str:
    """RFC 3339 UTC with microseconds and a ``Z``, as every timestamp cdm-sync writes."""
    text = datetime.fromtimestamp(posix, tz=UTC).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z")


class ChangeRecord(NamedTuple):
    revision: int
    at: float
    kind: Kind
    op: Op
    uuid: str
    changed: dict[str, tuple[Any, Any]]
    element: ComputeNode | Instance
    """The element after the change; for a remove, the element as it was (rendered as null)."""
    cause: Cause

    @property
    def project_id(self) -> str | None:
        """The project an instance record concerns (for filtering); ``None`` for nodes."""
        return self.element.project_id if isinstance(self.element, Instance) else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CHANGE_FORMAT,
            "revision": self.revision,
            "at": format_timestamp(self.at),
            "kind": self.kind,
            "op": self.op,
            "uuid": self.uuid,
            "changed": {k: [old, new] for k, (old, new) in self.changed.items()},
            "object": None if self.op == "remove" else self.element.to_dict(),
            "cause": self.cause.to_dict(),
        }
