"""Nova's notification samples (tests/fixtures, Apache-2.0 data) with their ``$ref``s resolved."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLES = FIXTURES / "nova_notification_samples"
TRACE_DIR = FIXTURES / "basic_lifecycle"


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base.get(key), value) if key in base else value
        return merged
    return copy.deepcopy(override)


def _resolve(node: Any, here: Path) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = (here / node["$ref"].split("#")[0]).resolve()
            base = _resolve(json.loads(target.read_text()), target.parent)
            rest = {k: _resolve(v, here) for k, v in node.items() if k != "$ref"}
            return _merge(base, rest)
        return {k: _resolve(v, here) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, here) for v in node]
    return node


def load_sample(name: str) -> dict[str, Any]:
    """One sample notification, e.g. ``load_sample("instance-update")``, references resolved."""
    path = SAMPLES / f"{name}.json"
    return _resolve(json.loads(path.read_text()), path.parent)


def sample_names() -> list[str]:
    return sorted(p.stem for p in SAMPLES.glob("*.json"))
