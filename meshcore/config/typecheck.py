"""Which annotations a plugin's config class may use: checked once, when the registry is built.

The structurer (:mod:`meshcore.config.structure`) turns config data into the field types
Python authors write without thinking: ``str``, ``int``, ``float``, ``bool``, ``None``,
``Any``, unions (``T | None``), ``Literal``, enums, nested attrs classes, ``list[T]``,
``set[T]``, ``frozenset[T]``, ``tuple[T, ...]``, ``tuple[A, B]``, ``Sequence[T]``,
``dict[str, T]``, ``Mapping[str, T]``, ``Annotated[T, ...]``, and any class with
``__meshcore_parse__`` or ``__meshcore_structure__`` (Duration, SecretStr, a plugin's
own). :func:`config_type_problems` finds a field of any other type (``bytes``,
``datetime``, a dict keyed by ``int``) or a forward reference that does not resolve,
in the class and every class nested in it, so that the registry reports the plugin,
the field and the type at once, rather than a user at the first config that sets it.
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

__all__ = ["config_type_problems"]

_SCALARS = frozenset({str, int, float, bool, type(None)})
_COLLECTIONS = frozenset({tuple, list, set, frozenset, Sequence})
_SUPPORTED = (
    "str, int, float, bool, None, an enum, an attrs class, a Literal, a union, list, set, "
    "frozenset, tuple or Sequence of those, dict or Mapping of str to those, or a class with "
    "__meshcore_parse__"
)


def config_type_problems(cls: type) -> list[str]:
    """Every field of ``cls`` (and of the classes nested in it) whose type config cannot hold.

    Returns one message per field, naming the class, the field and the type:
    ``field RuleConfig.since has type datetime, which config cannot hold``.
    """
    checker = _Checker()
    checker.check_root(cls)
    return checker.problems


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.seen: set[type] = set()

    def check_root(self, cls: Any) -> None:
        if not isinstance(cls, type):
            self.problems.append(f"the config class must be a class, got {cls!r}")
        elif _parses_itself(cls) or attrs.has(cls):
            self.check_class(cls)
        else:
            self.problems.append(f"the config class {cls.__qualname__} must be an attrs class ({_SUPPORTED})")

    def check_class(self, cls: type) -> None:
        if cls in self.seen or not attrs.has(cls) or _parses_itself(cls):
            return
        self.seen.add(cls)
        try:
            hints = typing.get_type_hints(cls)
        except Exception as err:  # noqa: BLE001 - whatever a bad annotation raises, it is reported
            self.problems.append(
                f"the field types of {cls.__qualname__} do not resolve: {type(err).__name__}: {err}"
            )
            return
        for field in attrs.fields(cls):
            if not field.init or field.name not in hints:
                continue
            tp = hints[field.name]
            why = self.why_not(tp)
            if why is not None:
                self.problems.append(
                    f"field {cls.__qualname__}.{field.name} has type {_text(tp)}, which config cannot hold: {why}"
                )

    def why_not(self, tp: Any) -> str | None:  # noqa: PLR0911 - a flat dispatch on the kind of type
        """Why ``tp`` is no config type (None: it is one), checking nested classes on the way."""
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if tp is Any or tp in _SCALARS:
            return None
        if origin is typing.Annotated:
            return self.why_not(args[0])
        if origin is typing.Literal:
            return None
        if origin is typing.Union or origin is types.UnionType or origin in _COLLECTIONS:
            return next((why for arg in args if arg is not Ellipsis and (why := self.why_not(arg))), None)
        if origin in (dict, Mapping):
            if args and args[0] not in (str, Any):
                return f"the keys of a mapping in config are strings, not {_text(args[0])}"
            return self.why_not(args[1]) if len(args) == 2 else None  # noqa: PLR2004 - dict[K, V]
        if isinstance(tp, type):
            if _parses_itself(tp) or issubclass(tp, enum.Enum):
                return None
            if attrs.has(tp):
                self.check_class(tp)
                return None
        return f"{_text(tp)} is not one of {_SUPPORTED}"


def _parses_itself(tp: type) -> bool:
    return hasattr(tp, "__meshcore_parse__") or hasattr(tp, "__meshcore_structure__")


def _text(tp: Any) -> str:
    """A type as written in Python: ``list[str]``, ``bytes``, ``dict[int, str]``."""
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__qualname__
    return repr(tp).replace("typing.", "").replace("collections.abc.", "")
