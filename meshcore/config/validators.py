"""Field validators for config classes, with messages in the house style.

They follow attrs' validator signature ``(instance, attribute, value)`` and raise
``ValueError`` with the reason only ("must be >= 1, got 0"); the structurer adds the path.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sized
from typing import Any

import attrs

__all__ = ["at_least", "at_most", "cidr", "non_empty", "regex", "unique"]

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def at_least(minimum: float) -> Validator:
    """The value must be >= ``minimum``."""

    def check(_instance: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
        if value < minimum:
            msg = f"must be >= {minimum:g}, got {value!r}"
            raise ValueError(msg)

    return check


def at_most(maximum: float) -> Validator:
    """The value must be <= ``maximum``."""

    def check(_instance: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
        if value > maximum:
            msg = f"must be <= {maximum:g}, got {value!r}"
            raise ValueError(msg)

    return check


def non_empty(_instance: Any, _attribute: attrs.Attribute[Any], value: Sized) -> None:
    """The value (a string or a list) must not be empty."""
    if len(value) == 0:
        msg = "must not be empty"
        raise ValueError(msg)


def regex(_instance: Any, _attribute: attrs.Attribute[Any], value: str | None) -> None:
    """The value must be a valid regular expression (None passes)."""
    if value is None:
        return
    try:
        re.compile(value)
    except re.error as err:
        msg = f"is not a valid regular expression ({err}), got {value!r}"
        raise ValueError(msg) from None


def cidr(_instance: Any, _attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    """Every item must be an IP network such as "10.0.0.0/8" or "::1/128"."""
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            msg = f'must be IP networks such as "10.0.0.0/8", got {item!r}'
            raise ValueError(msg) from None


def unique(key: Callable[[Any], Any]) -> Validator:
    """The items of a tuple must have distinct ``key(item)``."""

    def check(_instance: Any, _attribute: attrs.Attribute[Any], value: tuple[Any, ...]) -> None:
        seen: dict[Any, int] = {}
        for i, item in enumerate(value):
            k = key(item)
            if k in seen:
                msg = f"[{i}] repeats {k!r} already used at [{seen[k]}]"
                raise ValueError(msg)
            seen[k] = i

    return check
