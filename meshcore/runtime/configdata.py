"""Config as plain data, for ``/config_dump``: JSON-able, declared secrets redacted."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from typing import Any

import attrs

from meshcore.config import Address, PluginRef, SecretStr

__all__ = ["REDACTED", "to_data"]

REDACTED = "[redacted]"


def _field_data(value: Any, field: attrs.Attribute[Any]) -> Any:
    """The data of one attrs field's value: REDACTED if the field is declared secret and set."""
    if value is not None and field.metadata.get("secret"):
        return REDACTED
    return to_data(value)


def to_data(value: Any) -> Any:  # noqa: PLR0911 - a flat dispatch on the kind of value
    """Plain JSON-able data for a config value, declared secrets redacted.

    A :class:`~meshcore.SecretStr` becomes REDACTED wherever it is (a field, a list item, a
    mapping value), as does the value of an attrs field declared with ``metadata={"secret":
    True}``; an unset secret (None) stays None: "no key configured" reveals nothing. Names
    are not guessed from: ``max_tokens`` is shown, a ``SecretStr`` called ``key`` is not.
    attrs classes become objects; a plugin reference becomes ``{name: config}``; Address
    the string "host:port"; Duration seconds; ByteSize bytes. A type nothing here knows (a
    plugin's own) is rendered with ``str``: a dump never fails.
    """
    if isinstance(value, SecretStr):
        return REDACTED
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, Address):
        return str(value)
    if isinstance(value, int):  # ByteSize too
        return int(value)
    if isinstance(value, float):  # Duration too
        return float(value) if math.isfinite(value) else str(value)
    if isinstance(value, enum.Enum):
        return to_data(value.value)
    if isinstance(value, PluginRef):
        return {value.name: to_data(value.config)}
    if attrs.has(type(value)):
        return {f.name: _field_data(getattr(value, f.name), f) for f in attrs.fields(type(value))}
    if isinstance(value, Mapping):
        return {str(k): to_data(v) for k, v in value.items()}
    if isinstance(value, tuple | list | set | frozenset):
        return [to_data(item) for item in value]
    return str(value)
