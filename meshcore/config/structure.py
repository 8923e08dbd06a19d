"""Structure plain config data (from YAML, TOML or JSON) into frozen attrs classes.

Unlike a fail-fast converter, this walks the whole document and collects every problem
with its field path, so that ``meshcore validate`` reports all of them in one run. It is
driven by the attrs classes' type hints: ``str``, ``int``, ``float``, ``bool``, ``None``,
``Any``, ``T | None`` and unions, ``Literal``, enums, nested attrs classes, ``list[T]``,
``set[T]``, ``frozenset[T]``, ``tuple[T, ...]`` and ``tuple[A, B]``, ``Sequence[T]`` (a
tuple), ``dict[str, T]`` and ``Mapping[str, T]`` (read-only), ``Annotated[T, ...]``; a
type outside these is a problem at its field path, never a crash (and the registry
reports it for the plugin when it is built: :mod:`meshcore.config.typecheck`). And by
three conventions:

- a scalar type with a ``__meshcore_parse__`` classmethod parses itself (``Duration``);
- a :class:`PluginRef` field names a plugin (a filter, a load balancer) looked up in a
  :class:`Catalog`, whose config class structures the plugin's own section;
- a field with ``metadata={"ref": KIND}`` names another config object (a cluster, a route
  table); references are collected and checked once the whole document is known.
"""

from __future__ import annotations

import difflib
import enum
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol, TypeVar

import attrs

from meshcore.errors import ConfigProblem

__all__ = [
    "Catalog",
    "CertificateAuthorityRef",
    "HttpFilterRef",
    "LbPolicyRef",
    "NetworkFilterRef",
    "Path",
    "PluginRef",
    "Reference",
    "Structurer",
    "document_keys",
    "format_path",
]

Path = tuple[str | int, ...]
T = TypeVar("T")


def format_path(path: Path) -> str:
    """Render ``("listeners", 0, "name")`` as ``listeners[0].name``."""
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        else:
            out.append(f".{part}" if out else part)
    return "".join(out)


class Catalog(Protocol):
    """What the structurer needs to know about plugins: their names and config classes."""

    def config_type(self, kind: str, name: str) -> type | None:
        """The config class of plugin ``name`` of ``kind``, or None when there is none such."""

    def route_config_type(self, kind: str, name: str) -> type | None:
        """The per-route config class of plugin ``name`` of ``kind`` (None: same as config_type)."""

    def names(self, kind: str) -> Sequence[str]:
        """Every known plugin name of ``kind``."""

    def is_terminal(self, kind: str, name: str) -> bool:
        """Whether filter ``name`` of ``kind`` ends a chain (tcp_proxy, router, ...)."""


@attrs.frozen(kw_only=True)
class PluginRef:
    """A named plugin and its structured config, as written in config.

    Written either as the bare name (``router``) or as a mapping of one key, the name, to
    the plugin's config section (``{local_ratelimit: {rate: 10}}``).
    """

    kind: ClassVar[str] = ""
    name: str
    config: Any = None


class NetworkFilterRef(PluginRef):
    """An L4 (network) filter in a listener's filter chain."""

    kind: ClassVar[str] = "network_filter"


class HttpFilterRef(PluginRef):
    """An L7 (HTTP) filter in an HTTP connection manager's chain."""

    kind: ClassVar[str] = "http_filter"


class LbPolicyRef(PluginRef):
    """A cluster's load-balancing policy."""

    kind: ClassVar[str] = "lb_policy"


class CertificateAuthorityRef(PluginRef):
    """The certificate authority a control plane signs workload certificates with (its ``ca:``).

    Written ``ca: {meshcore: {directory: /var/lib/meshcore/ca}}``; the registry's
    ``certificate_authority`` of that name builds it: ``found.factory(ref.config)`` is a
    ``Signer``.
    """

    kind: ClassVar[str] = "certificate_authority"


@attrs.frozen(kw_only=True)
class Reference:
    """A name in the config that must name another config object of ``kind``."""

    kind: str
    name: str
    path: Path


# Collection types and what their items become: tuple and Sequence a tuple, the others their own.
_COLLECTIONS: Mapping[Any, Callable[[list[Any]], Any]] = {
    tuple: tuple,
    Sequence: tuple,
    list: list,
    set: set,
    frozenset: frozenset,
}
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _type_text(tp: Any) -> str:
    """A type as written in Python (``list[str]``, ``bytes``), for messages."""
    return (
        tp.__name__ if isinstance(tp, type) and not typing.get_args(tp) else repr(tp).replace("typing.", "")
    )


_KIND_WORDS = {
    "network_filter": "network filter",
    "http_filter": "HTTP filter",
    "lb_policy": "load-balancing policy",
    "certificate_authority": "certificate authority",
    "health_checker": "health checker",
}


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, bool):
        return "a boolean"
    return f"{value!r}" if isinstance(value, int | float | str) else type(value).__name__


def _reason(err: Exception) -> str:
    """The reason an error gives, without the extra arguments attrs' validators attach.

    ``attrs.validators.in_`` and friends raise ``ValueError(message, attribute, ...)``, whose
    ``str()`` is the repr of that whole tuple.
    """
    return str(err.args[0]) if len(err.args) > 1 else str(err)


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def document_keys(cls: type) -> dict[str, attrs.Attribute[Any]]:
    """The fields of attrs class ``cls`` by the key documents write them under.

    That is the field's name, unless its metadata gives ``key`` (for a name Python
    reserves: Istio's ``from`` is the field ``from_`` with ``metadata={"key": "from"}``).
    """
    return {field.metadata.get("key", field.name): field for field in attrs.fields(cls)}


class Structurer:
    """Turns plain data into attrs instances, collecting every problem on the way.

    Use one structurer per document: it accumulates :attr:`problems` and :attr:`references`.
    """

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.problems: list[ConfigProblem] = []
        self.references: list[Reference] = []
        self._hints: dict[type, dict[str, Any]] = {}

    # -- entry point ------------------------------------------------------------------------

    def structure(self, data: Any, cls: type[T], path: Path = ()) -> T | None:
        """Structure ``data`` as ``cls``; on failure record problems and return None."""
        return typing.cast("T | None", self._structure(data, cls, path))

    def problem(self, path: Path, message: str) -> None:
        """Record one problem at ``path``."""
        self.problems.append(ConfigProblem(path=format_path(path), message=message))

    # -- dispatch ---------------------------------------------------------------------------

    FAILED: ClassVar[object] = object()
    """Returned by the structuring steps when the value had problems (already recorded)."""

    def _structure(self, data: Any, tp: Any, path: Path) -> Any:  # noqa: PLR0911 - a flat dispatch on the kind of type
        origin = typing.get_origin(tp)
        if tp is Any:
            return data
        if origin is typing.Annotated:
            return self._structure(data, typing.get_args(tp)[0], path)
        if origin is typing.Union or origin is types.UnionType:
            return self._union(data, typing.get_args(tp), path)
        if origin is typing.Literal:
            return self._literal(data, typing.get_args(tp), path)
        if origin in _COLLECTIONS:
            return self._sequence(data, tp, path)
        if origin in (dict, Mapping):
            return self._mapping(data, tp, path)
        if isinstance(tp, type):
            return self._class(data, tp, path)
        return self._not_a_config_type(tp, path)

    def _class(self, data: Any, tp: type, path: Path) -> Any:  # noqa: PLR0911 - a flat dispatch on the kind of class
        if hasattr(tp, "__meshcore_structure__"):
            return tp.__meshcore_structure__(self, data, path)
        if issubclass(tp, PluginRef):
            return self._plugin_ref(data, tp, path)
        if hasattr(tp, "__meshcore_parse__"):
            return self._parse(data, tp, path)
        if attrs.has(tp):
            return self._attrs(data, tp, path)
        if issubclass(tp, enum.Enum):
            return self._enum(data, tp, path)
        if tp in _SCALARS:
            return self._scalar(data, tp, path)
        return self._not_a_config_type(tp, path)

    def _not_a_config_type(self, tp: Any, path: Path) -> Any:
        # A type no config value can be (bytes, a class of no known kind): the plugin's bug,
        # reported where it bites, as the registry reported it for the plugin.
        self.problem(path, f"cannot be structured: its type {_type_text(tp)} is not a config type")
        return self.FAILED

    # -- scalars ----------------------------------------------------------------------------

    def _scalar(self, data: Any, tp: type, path: Path) -> Any:
        ok: bool
        if tp is bool:
            ok = isinstance(data, bool)
        elif tp is int:
            ok = isinstance(data, int) and not isinstance(data, bool)
        elif tp is float:
            ok = isinstance(data, int | float) and not isinstance(data, bool)
            if ok:
                data = float(data)
        elif tp is type(None):
            ok = data is None
        else:
            ok = isinstance(data, tp)
        if not ok:
            expected = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
            want = expected.get(tp, "null" if tp is type(None) else tp.__name__)
            self.problem(path, f"must be {want}, got {_describe(data)}")
            return self.FAILED
        return data

    def _parse(self, data: Any, tp: Any, path: Path) -> Any:
        try:
            return tp.__meshcore_parse__(data)
        except (ValueError, TypeError) as err:
            self.problem(path, _reason(err))
            return self.FAILED

    def _enum(self, data: Any, tp: type[enum.Enum], path: Path) -> Any:
        """An enum member by its value (``"fast"``), or else by its name (``FAST``)."""
        if not isinstance(data, bool):  # True == 1: not a member of an IntEnum by accident
            try:
                return tp(data)
            except (ValueError, TypeError):
                if isinstance(data, str) and data in tp.__members__:
                    return tp.__members__[data]
        values = [m.value for m in tp]
        hint = _suggest(data, [str(v) for v in values]) if isinstance(data, str) else ""
        self.problem(path, f"must be one of {', '.join(map(repr, values))}, got {_describe(data)}{hint}")
        return self.FAILED

    def _literal(self, data: Any, values: tuple[Any, ...], path: Path) -> Any:
        if data in values and type(data) in {type(v) for v in values}:
            return data
        hint = _suggest(data, [str(v) for v in values]) if isinstance(data, str) else ""
        self.problem(path, f"must be one of {', '.join(map(repr, values))}, got {_describe(data)}{hint}")
        return self.FAILED

    def _union(self, data: Any, options: tuple[Any, ...], path: Path) -> Any:
        if data is None and type(None) in options:
            return None
        rest = [o for o in options if o is not type(None)]
        if len(rest) == 1:
            return self._structure(data, rest[0], path)
        # Try each option quietly; report the first option's problems if none fits.
        first: list[ConfigProblem] | None = None
        for option in rest:
            saved, saved_refs = self.problems, self.references
            self.problems, self.references = [], []
            value = self._structure(data, option, path)
            tried, refs = self.problems, self.references
            self.problems, self.references = saved, saved_refs
            if not tried:
                self.references.extend(refs)
                return value
            first = first if first is not None else tried
        self.problems.extend(first or ())
        return self.FAILED

    # -- containers -------------------------------------------------------------------------

    def _sequence(self, data: Any, tp: Any, path: Path) -> Any:
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        make = _COLLECTIONS[typing.get_origin(tp)]
        if not isinstance(data, list | tuple):
            self.problem(path, f"must be a list, got {_describe(data)}")
            return self.FAILED
        if len(args) > 1 and args[-1] is not Ellipsis:  # fixed length: tuple[str, str]
            if len(data) != len(args):
                self.problem(path, f"must be a list of {len(args)} items, got {len(data)}")
                return self.FAILED
            return self._fixed_tuple(data, args, path)
        items = [self._structure(item, item_tp, (*path, i)) for i, item in enumerate(data)]
        if isinstance(item_tp, type) and issubclass(item_tp, PluginRef) and item_tp.kind.endswith("_filter"):
            self._check_chain(items, path)
        if any(item is self.FAILED for item in items):
            return self.FAILED
        try:
            return make(items)
        except TypeError:  # set[T] of unhashable items (set[list[str]])
            self.problem(path, f"cannot be structured: the items of {_type_text(tp)} cannot be in a set")
            return self.FAILED

    def _fixed_tuple(self, data: Sequence[Any], item_tps: tuple[Any, ...], path: Path) -> Any:
        items = [
            self._structure(item, tp, (*path, i))
            for i, (item, tp) in enumerate(zip(data, item_tps, strict=True))
        ]
        return self.FAILED if any(item is self.FAILED for item in items) else tuple(items)

    def _check_chain(self, items: list[Any], path: Path) -> None:
        """A filter chain ends with exactly one terminal filter (tcp_proxy, router, ...)."""
        last = len(items) - 1
        for i, plugin in enumerate(items):
            if plugin is self.FAILED:
                continue
            terminal = self.catalog.is_terminal(plugin.kind, plugin.name)
            if terminal and i != last:
                self.problem((*path, i), f"{plugin.name!r} ends a chain and must be the last filter")
            elif not terminal and i == last:
                self.problem((*path, i), f"the last filter must end the chain, {plugin.name!r} does not")

    def _mapping(self, data: Any, tp: Any, path: Path) -> Any:
        args = typing.get_args(tp)
        value_tp = args[1] if len(args) == 2 else Any  # noqa: PLR2004 - Mapping[K, V]
        if not isinstance(data, Mapping):
            self.problem(path, f"must be a mapping, got {_describe(data)}")
            return self.FAILED
        out: dict[str, Any] = {}
        failed = False
        for key, value in data.items():
            if not isinstance(key, str):
                self.problem(path, f"keys must be strings, got {_describe(key)}")
                failed = True
                continue
            out[key] = self._structure(value, value_tp, (*path, key))
            failed = failed or out[key] is self.FAILED
        if failed:
            return self.FAILED
        return out if typing.get_origin(tp) is dict else types.MappingProxyType(out)

    # -- attrs classes ----------------------------------------------------------------------

    def _type_hints(self, cls: type) -> dict[str, Any] | None:
        hints = self._hints.get(cls)
        if hints is None:
            try:
                hints = self._hints[cls] = typing.get_type_hints(cls)
            except Exception:  # noqa: BLE001 - a forward reference that does not resolve: the plugin's bug
                return None
        return hints

    def structure_attrs(self, data: Any, cls: type, path: Path) -> Any:
        """Structure a mapping into attrs class ``cls`` field by field (FAILED on problems)."""
        return self._attrs(data, cls, path)

    def _attrs(self, data: Any, cls: type, path: Path) -> Any:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            self.problem(path, f"must be a mapping, got {_describe(data)}")
            return self.FAILED
        fields = document_keys(cls)
        hints = self._type_hints(cls)
        if hints is None:
            self.problem(path, f"cannot be structured: the field types of {cls.__qualname__} do not resolve")
            return self.FAILED
        self._check_unknown_fields(data, fields, path)
        kwargs: dict[str, Any] = {}
        failed = False
        for key, field in fields.items():
            name = field.name
            if not field.init:
                continue
            if key not in data:
                if field.default is attrs.NOTHING:
                    self.problem((*path, key), "is required")
                    failed = True
                continue
            value = self._structure(data[key], hints[name], (*path, key))
            if value is self.FAILED:
                failed = True
                continue
            if not self._validate_field(field, value, (*path, key)):
                failed = True
                continue
            ref_kind = field.metadata.get("ref")
            if ref_kind is not None:
                self._collect_refs(ref_kind, value, (*path, key))
            kwargs[name] = value
        if failed:
            return self.FAILED
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as err:
            self.problem(path, _reason(err))
            return self.FAILED

    def _check_unknown_fields(self, data: Mapping[Any, Any], fields: Mapping[str, Any], path: Path) -> None:
        for key in data:
            if key not in fields:
                known = sorted(name for name in fields if not name.startswith("_"))
                hint = _suggest(str(key), known) or f"; known fields: {', '.join(known)}"
                self.problem((*path, str(key)), f"unknown field{hint}")

    def _validate_field(self, field: attrs.Attribute[Any], value: Any, path: Path) -> bool:
        validator: Callable[[Any, attrs.Attribute[Any], Any], Any] | None = field.validator
        if validator is None:
            return True
        try:
            validator(None, field, value)
        except (ValueError, TypeError) as err:
            self.problem(path, _reason(err))
            return False
        return True

    def _collect_refs(self, kind: str, value: Any, path: Path) -> None:
        if isinstance(value, str):
            self.references.append(Reference(kind=kind, name=value, path=path))
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                self._collect_refs(kind, item, (*path, i))

    # -- plugins ----------------------------------------------------------------------------

    def _plugin_ref(self, data: Any, cls: type[PluginRef], path: Path) -> Any:
        kind = cls.kind
        if isinstance(data, str):
            name, section = data, None
        elif isinstance(data, Mapping) and len(data) == 1:
            ((name, section),) = data.items()
        else:
            word = _KIND_WORDS.get(kind, kind)
            self.problem(
                path, f"must be a {word} name or a mapping of one name to its config, got {_describe(data)}"
            )
            return self.FAILED
        known = self.catalog.names(kind)
        if name not in known:
            word = _KIND_WORDS.get(kind, kind)
            hint = _suggest(str(name), known)
            listing = ", ".join(sorted(known)) or "none"
            self.problem(path, f"unknown {word} {name!r}{hint} (known: {listing})")
            return self.FAILED
        config_tp = self.catalog.config_type(kind, name)
        if config_tp is None:
            if section not in (None, {}):
                self.problem((*path, name), f"{name!r} takes no config, got {_describe(section)}")
                return self.FAILED
            return cls(name=name, config=None)
        config = self._structure(section, config_tp, (*path, name))
        if config is self.FAILED:
            return self.FAILED
        return cls(name=name, config=config)

    def per_route_config(self, kind: str, name: str, data: Any, path: Path) -> Any:
        """Structure a per-route override of plugin ``name``'s config (FAILED when it failed)."""
        config_tp = self.catalog.route_config_type(kind, name) or self.catalog.config_type(kind, name)
        if config_tp is None:
            self.problem(path, f"{name!r} takes no per-route config")
            return self.FAILED
        return self._structure(data, config_tp, path)
