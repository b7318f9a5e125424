"""Validation of the JSON values Nova sends, shared by the notification and API parsers.

Every check raises :class:`PayloadError` with a reason a person can act on; a missing optional
field is ``UNKNOWN`` (the observation does not prove it), never a guess.
"""

from __future__ import annotations

import functools
import operator
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from cdm_sync.model.elements import EMPTY_METADATA, Flavor, intern_or_none
from cdm_sync.model.events import UNKNOWN


def brief(value: Any, limit: int = 60) -> str:
    """A short, safe description of an untrusted value for an error message or a log line.

    Never recurses into containers (a value nested thousands deep must not blow the stack)
    and never echoes more than ``limit`` characters of a string (no megabyte log lines).
    """
    if isinstance(value, str):
        return repr(value[:limit]) + ("…" if len(value) > limit else "")
    if value is None or isinstance(value, (bool, float)):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if -(10**18) < value < 10**18 else "<huge int>"
    return f"<{type(value).__name__}>"


class PayloadError(ValueError):
    """A notification that cannot be understood; the message says why."""


def parse_time(value: Any, what: str, *, repeats: bool = True) -> float | None:
    """An ISO 8601 / oslo timestamp as POSIX seconds; naive times are UTC.

    ``repeats``: the value is likely seen again (``updated_at`` has one-second resolution), so
    results are cached; envelope timestamps are unique, and caching them would only cost.
    """
    if value is None or value == "":
        return None
    if type(value) is not str:
        raise PayloadError(f"{what} is {type(value).__name__}, expected a timestamp string")
    try:
        return _parse_time_cached(value) if repeats else _parse_time(value)
    except ValueError:
        raise PayloadError(f"{what} {brief(value, 40)} is not a timestamp") from None


def _parse_time(value: str) -> float:
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        return (parsed - _EPOCH).total_seconds()
    return parsed.timestamp()


_EPOCH = datetime(1970, 1, 1)
_parse_time_cached = functools.lru_cache(maxsize=8192)(_parse_time)


_flavors: dict[tuple[Any, ...], Flavor] = {}
_FLAVOR_CACHE_LIMIT = 4096


def make_flavor(name: Any, vcpus: Any, ram: Any, disk: Any, ephemeral: Any) -> Flavor:
    """A flavor, shared between the instances that have it (there are few distinct ones)."""
    key = (name, vcpus, ram, disk, ephemeral)
    flavor = _flavors.get(key)
    if flavor is None:
        flavor = Flavor(
            name=None if name is UNKNOWN else intern_or_none(name),
            vcpus=None if vcpus is UNKNOWN else vcpus,
            ram=None if ram is UNKNOWN else ram,
            disk=None if disk is UNKNOWN else disk,
            ephemeral=0 if ephemeral is UNKNOWN or ephemeral is None else ephemeral,
        )
        if len(_flavors) < _FLAVOR_CACHE_LIMIT:
            _flavors[key] = flavor
    return flavor


def flavor_from(data: Mapping[str, Any], keys: tuple[str, str, str, str, str]) -> Flavor:
    """The flavor ``data`` describes; ``keys`` name its name, vcpus, RAM, disk and ephemeral
    fields (the API and the notifications name them differently).

    Thousands of instances share a few flavors, so a flavor already validated is found by its
    raw values (exact types only: ``True`` is not a vcpu count) before any per-field check.
    """
    get = data.get
    name, vcpus, ram, disk, ephemeral = (
        get(keys[0], UNKNOWN),
        get(keys[1], UNKNOWN),
        get(keys[2], UNKNOWN),
        get(keys[3], UNKNOWN),
        get(keys[4], UNKNOWN),
    )
    exact = (
        type(name) is str
        and type(vcpus) is int
        and type(ram) is int
        and type(disk) is int
        and type(ephemeral) is int
    )
    if exact:
        raw = (keys, name, vcpus, ram, disk, ephemeral)
        found = _flavors_by_raw.get(raw)
        if found is not None:
            return found
    flavor = make_flavor(
        opt_str(data, keys[0], shared=True),
        opt_int(data, keys[1]),
        opt_int(data, keys[2]),
        opt_int(data, keys[3]),
        opt_int(data, keys[4]),
    )
    if exact and len(_flavors_by_raw) < _FLAVOR_CACHE_LIMIT:
        _flavors_by_raw[raw] = flavor
    return flavor


_flavors_by_raw: dict[tuple[Any, ...], Flavor] = {}


def required_str(data: Mapping[str, Any], key: str, *, shared: bool = False) -> str:
    """A non-empty string; ``shared`` interns it (for values many elements repeat: hosts,
    states, projects), saving memory on large models. Unique values (uuids, names) are not."""
    value = data.get(key)
    if not isinstance(value, str) or not value:
        if value is None:
            raise PayloadError(f"{key} is missing")
        raise PayloadError(f"{key} is {type(value).__name__}, expected a non-empty string")
    return _intern(value) if shared else value


def opt_str(data: Mapping[str, Any], key: str, *, shared: bool = False) -> Any:
    """A string or null if present, ``UNKNOWN`` if absent; ``shared`` as in :func:`required_str`."""
    if key not in data:
        return UNKNOWN
    value = data[key]
    if value is None:
        return None
    if isinstance(value, str):
        return _intern(value) if shared else value
    raise PayloadError(f"{key} is {type(value).__name__}, expected a string")


class StringFields:
    """:func:`opt_str` for several ``(key, shared)`` fields at once, compiled once per payload
    shape: the hot paths (every notification, every listed server) read six or seven such
    fields, and one C-level lookup of all keys costs less than a Python loop over them."""

    def __init__(self, *fields: tuple[str, bool]) -> None:
        if len(fields) < 2:
            raise ValueError("StringFields reads two fields or more")
        self.fields = fields
        self._lookup = operator.itemgetter(*(key for key, _ in fields))
        self._shared = tuple(shared for _, shared in fields)

    def read(self, data: Mapping[str, Any], *, intern: bool = True) -> Sequence[Any]:
        """The values in field order (``UNKNOWN`` where absent); ``intern=False`` leaves shared
        values uninterned, for events that are compared and dropped (an audit's listing)."""
        try:
            values = self._lookup(data)
        except KeyError:  # some field absent: the general path
            return self._read_each(data, intern)
        if not _STR_OR_NONE.issuperset(map(type, values)):
            return self._read_each(data, intern)  # raises, naming the field
        if not intern:
            return values
        return [
            _intern(value) if shared and value is not None else value
            for value, shared in zip(values, self._shared, strict=True)
        ]

    def _read_each(self, data: Mapping[str, Any], intern: bool) -> list[Any]:
        values: list[Any] = []
        get = data.get
        for key, shared in self.fields:
            value = get(key, UNKNOWN)
            if value is not UNKNOWN and value is not None:
                if type(value) is not str:
                    raise PayloadError(f"{key} is {type(value).__name__}, expected a string")
                if shared and intern:
                    value = _intern(value)
            values.append(value)
        return values


_STR_OR_NONE = frozenset((str, type(None)))


def opt_int(data: Mapping[str, Any], key: str) -> Any:
    if key not in data:
        return UNKNOWN
    value = data[key]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"{key} is {type(value).__name__}, expected an integer")
    if value < 0:
        raise PayloadError(f"{key} is negative ({value})")
    return value


def opt_bool(data: Mapping[str, Any], key: str) -> Any:
    if key not in data:
        return UNKNOWN
    value = data[key]
    if value is None or isinstance(value, bool):
        return value
    raise PayloadError(f"{key} is {type(value).__name__}, expected true or false")


def metadata_field(data: Mapping[str, Any]) -> Any:
    value = data.get("metadata", UNKNOWN)
    if value is UNKNOWN:
        return UNKNOWN
    if value is None or value == {}:
        return EMPTY_METADATA
    if type(value) is not dict and not isinstance(value, Mapping):
        raise PayloadError(f"metadata is {type(value).__name__}, expected an object")
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise PayloadError("metadata keys and values must be strings")
    return dict(value)


_intern = sys.intern
