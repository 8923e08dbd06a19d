"""The configuration reference, generated from the config classes so that it cannot drift.

``python -m meshcore.docsgen > docs/reference/config.md`` writes docs/reference/config.md
(``--check FILE`` tells whether a file is current); a test fails when the committed page
and the code disagree. Everything on the page comes from code:

- the sections of a config file: the attrs classes reached from :class:`Snapshot` through
  the types of its fields;
- every first-party plugin type (network and HTTP filters, load-balancing policies, config
  sources): its description, its config class and the classes nested in it. The registry
  is built with plugin autoload off, so installed third-party plugins stay out;
- for every field: its name, its type in config terms ("duration", "list of string"), its
  default as written in config, the constraints its validators check, and its doc. attrs
  keeps no field docs, so they are read from the source with :mod:`ast`: the string
  literal right after the field, else the field's entry under ``Attributes:`` in the
  class docstring (Google style).

A plugin author can render the fields of their own config class with :func:`render_class`.
"""

from __future__ import annotations

import argparse
import ast
import enum
import inspect
import itertools
import json
import re
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from meshcore.config.model import Cluster, RouteConfiguration, Snapshot
from meshcore.config.structure import HttpFilterRef, LbPolicyRef, NetworkFilterRef, PluginRef
from meshcore.config.traffic import HealthCheckerRef
from meshcore.config.units import Address, ByteSize, Duration, SecretStr, format_duration
from meshcore.plugin import (
    CertificateAuthorityType,
    ConfigSourceType,
    HealthCheckerType,
    HttpFilterType,
    LbPolicyType,
    NetworkFilterType,
    PluginType,
)
from meshcore.registry import Registry, build_registry

__all__ = ["field_docs", "main", "render_class", "render_config_reference"]

REGENERATE = "python -m meshcore.docsgen > docs/reference/config.md"
"""The command that regenerates the committed reference."""

# Scalar types written in a human form, explained once in the "Values" section.
_UNITS: Mapping[type, str] = {Duration: "duration", ByteSize: "size", Address: "address", SecretStr: "secret"}
_SCALARS: Mapping[type, str] = {bool: "boolean", int: "integer", float: "number", str: "string"}
# (kind, section title, label, how the plugins of that kind are written in config)
_PLUGIN_KINDS: tuple[tuple[str, str, str, str], ...] = (
    (
        NetworkFilterType.kind,
        "Network filters",
        "config-network-filters",
        (
            "L4 filters, in a filter chain's `filters` (the last one ends the chain): "
            "`- tcp_proxy: {cluster: backend}`."
        ),
    ),
    (
        HttpFilterType.kind,
        "HTTP filters",
        "config-http-filters",
        (
            "L7 filters, in an `http_connection_manager`'s `http_filters` (the last one is the router): "
            "`- fault: {abort: {http_status: 503}}`, or the bare name for the defaults. A route may "
            "override a filter's config or turn it off with its `filters` field."
        ),
    ),
    (
        LbPolicyType.kind,
        "Load-balancing policies",
        "config-lb-policies",
        (
            "A cluster's `lb_policy`: the bare name (`lb_policy: least_request`) or the name with "
            "its config (`lb_policy: {least_request: {choice_count: 3}}`)."
        ),
    ),
    (
        HealthCheckerType.kind,
        "Health checkers",
        "config-health-checkers",
        (
            "An active health check of a cluster's `health_checks`: the checker's name as a key "
            "among the timing fields (`- http: {path: /healthz}` with `interval: 5s`)."
        ),
    ),
    (
        ConfigSourceType.kind,
        "Config sources",
        "config-sources",
        (
            "Where a proxy's Snapshots come from. `meshcore proxy -c FILE` runs the `file` source "
            "with `path: FILE`."
        ),
    ),
    (
        CertificateAuthorityType.kind,
        "Certificate authorities",
        "config-certificate-authorities",
        (
            "What signs workload certificates: the `ca:` section of the control plane's config, "
            "`ca: {meshcore: {directory: /var/lib/meshcore/ca, trust_domain: cluster.local}}`."
        ),
    ),
)
_PLUGIN_REFS: Mapping[type, tuple[str, str]] = {
    NetworkFilterRef: ("network filter", "config-network-filters"),
    HttpFilterRef: ("HTTP filter", "config-http-filters"),
    LbPolicyRef: ("load-balancing policy", "config-lb-policies"),
    HealthCheckerRef: ("health checker", "config-health-checkers"),
}
# ``ref(kind)`` fields name another config object; these are the classes of those objects.
_REF_TARGETS: Mapping[str, type] = {"cluster": Cluster, "route_config": RouteConfiguration}
_ROLE = re.compile(r":[a-z]+:`~?(?:[\w.]+\.)?([^`]+)`")  # :class:`~meshcore.X` -> X
_PLAIN = re.compile(r"[A-Za-z_][\w./*+-]*")  # strings YAML reads as themselves, unquoted
_YAML_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "null", "y", "n"})
_FIELD_ENTRY = re.compile(r"^(\w+)(?:\s*\([^)]*\))?:\s*(.*)$")  # "name: text" / "name (type): text"


# -- docs from the source ----------------------------------------------------------------------


def _paragraph(text: str) -> str:
    """Docstring text as one Markdown line: reST roles and double backticks made plain code."""
    text = _ROLE.sub(r"`\1`", inspect.cleandoc(text))
    return " ".join(text.replace("``", "`").split())


def _split_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """A class docstring's text, and its Google-style ``Attributes:`` entries by name."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    if "Attributes:" not in lines:
        return "\n".join(lines), {}
    start = lines.index("Attributes:")
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    end = len(lines)
    for i, line in enumerate(lines[start + 1 :], start + 1):
        if line and not line.startswith(" "):  # the next section, or text after it
            end = i
            break
        found = _FIELD_ENTRY.match(line.strip())
        if found and line.startswith("    ") and not line.startswith("     "):
            current = entries.setdefault(found[1], [])
            current.append(found[2])
        elif current is not None:
            current.append(line.strip())
    text = "\n".join(lines[:start] + lines[end:]).strip()
    return text, {name: " ".join(parts) for name, parts in entries.items()}


def _attribute_docstrings(cls: type) -> dict[str, str]:
    """The string literal right after each annotated field in ``cls``'s own source."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source: a class built at run time, a frozen app
        return {}
    body = next((node.body for node in ast.parse(source).body if isinstance(node, ast.ClassDef)), [])
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = after.value.value
    return docs


def field_docs(cls: type) -> dict[str, str]:
    """The doc of every field of attrs class ``cls`` that has one, inherited fields included.

    A field's doc is the string literal right after it in the class body; failing that,
    its entry under ``Attributes:`` in the docstring of the class that defines it.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not attrs.has(klass):
            continue
        _, entries = _split_docstring(klass.__doc__)
        docs.update({name: _paragraph(text) for name, text in entries.items()})
        docs.update({name: _paragraph(text) for name, text in _attribute_docstrings(klass).items()})
    return docs


# -- values, types and constraints ----------------------------------------------------------


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _size(value: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value and value % factor == 0:
            return f"{value // factor}{unit}"
    return f"{value}B" if value else "0"


def _string(value: str) -> str:
    """A string as YAML needs it: bare when it reads as that string, else quoted."""
    if _PLAIN.fullmatch(value) and value.lower() not in _YAML_WORDS:
        return value
    return json.dumps(value, ensure_ascii=False)


def _value(value: Any) -> str:  # noqa: PLR0911, PLR0912 - a flat dispatch on the kind of value
    """``value`` as it is written in a config file (YAML flow style)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Duration):
        return format_duration(value)
    if isinstance(value, ByteSize):
        return _size(value)
    if isinstance(value, enum.Enum):
        return _value(value.value)
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, PluginRef):
        return value.name if value.config is None else f"{{{value.name}: ...}}"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, frozenset):  # a set of names written as "a,b" (retry_on)
        return _string(",".join(sorted(value)))
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key}: {_value(item)}" for key, item in value.items()) + "}"
    if isinstance(value, Address):
        return str(value)
    if attrs.has(type(value)) and _all_defaults(value):
        return "{}"
    return repr(value)


def _all_defaults(value: Any) -> bool:
    try:
        return bool(type(value)() == value)
    except TypeError:  # a required field
        return False


def _default(field: attrs.Attribute[Any]) -> str:
    default = field.default
    if default is attrs.NOTHING:
        return "required"
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type] # attrs.Factory is a class at run time
        factory = typing.cast("Any", default)
        if factory.takes_self:
            return "computed"
        default = factory.factory()
    return f"`{_value(default)}`"


def _bounds(low: float | None, high: float | None) -> list[str]:
    if low is not None and high is not None:
        return [f"{_number(low)} to {_number(high)}"]
    if low is not None:
        return [f">= {_number(low)}"]
    return [] if high is None else [f"<= {_number(high)}"]


def _function_constraint(fn: Callable[..., Any]) -> tuple[str, Any]:
    """("at_least", 1), ("text", "not empty"), ... for one validator function."""
    if fn.__module__ == "meshcore.config.validators":
        outer = fn.__qualname__.split(".", 1)[0]
        free = inspect.getclosurevars(fn).nonlocals
        if outer == "at_least":
            return "at_least", free["minimum"]
        if outer == "at_most":
            return "at_most", free["maximum"]
        if outer == "unique":
            names = getattr(free["key"], "__code__", None)
            by = f" `{names.co_names[-1]}`" if names is not None and names.co_names else ""
            return "text", f"unique{by}"
        fixed = {
            "non_empty": "not empty",
            "regex": "a regular expression",
            "cidr": 'IP networks ("10.0.0.0/8")',
        }
        if outer in fixed:
            return "text", fixed[outer]
    # Anything else: the first line of its docstring ("Must be more than 0."), else its name.
    first_line = _paragraph((inspect.getdoc(fn) or "").partition("\n")[0].rstrip("."))
    if first_line:
        return "text", first_line[0].lower() + first_line[1:]
    return "text", fn.__name__.strip("_").replace("_", " ")


def _validators(validator: Any) -> Iterator[tuple[str, Any]]:
    """Every constraint of a field's validator, looking inside attrs' combinators."""
    if validator is None:
        return
    if isinstance(validator, tuple | list):
        for item in validator:
            yield from _validators(item)
    elif inspect.isfunction(validator):
        yield _function_constraint(validator)
    elif type(validator).__name__ == "_InValidator":
        options = getattr(validator, "options", ())
        yield "text", "one of " + ", ".join(f"`{_value(option)}`" for option in options)
    elif attrs.has(type(validator)):  # and_, optional, deep_iterable, ...: look inside
        for inner in attrs.fields(type(validator)):
            yield from _validators(getattr(validator, inner.name))


def constraints(field: attrs.Attribute[Any]) -> str:
    """The constraints that ``field``'s validators check, in words."""
    low: float | None = None
    high: float | None = None
    texts: list[str] = []
    for kind, value in _validators(field.validator):
        if kind == "at_least":
            low = value if low is None else max(low, value)
        elif kind == "at_most":
            high = value if high is None else min(high, value)
        elif value not in texts:
            texts.append(value)
    return ", ".join(_bounds(low, high) + texts)


def _label(cls: type) -> str:
    return f"config-{cls.__module__}.{cls.__qualname__}".lower()


def _link(text: str, label: str) -> str:
    return f"{{ref}}`{text} <{label}>`"


def _is_section(tp: Any) -> bool:
    """Whether ``tp`` gets a section of its own (a config class, or a value type of a plugin)."""
    if not isinstance(tp, type) or tp in _UNITS or issubclass(tp, PluginRef | enum.Enum):
        return False
    return attrs.has(tp) or hasattr(tp, "__meshcore_parse__")


def _is_table(cls: type) -> bool:
    """Keyword-only attrs classes are sections of fields; others are values with a syntax of their own."""
    return attrs.has(cls) and all(field.kw_only for field in attrs.fields(cls))


def type_text(tp: Any) -> str:  # noqa: PLR0911 - a flat dispatch on the kind of type
    """``tp`` in the words of a config file: "duration", "list of string", a link to a section."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return "any"
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin in (set, frozenset):
        return f"list of {type_text(args[0])} (a set: duplicates count once)" if args else "list"
    if origin is typing.Union or origin is types.UnionType:
        options = [type_text(arg) for arg in args if arg is not type(None)]
        return " or ".join(options) + (" or null" if type(None) in args else "")
    if origin is typing.Literal:
        if len(args) == 1:
            return f"`{_value(args[0])}`"
        return "one of " + ", ".join(f"`{_value(arg)}`" for arg in args)
    if origin in (tuple, Sequence, list):
        if origin is not tuple or (len(args) == 2 and args[1] is Ellipsis):  # noqa: PLR2004 - tuple[X, ...]
            return f"list of {type_text(args[0])}" if args else "list"
        return "[" + ", ".join(type_text(arg) for arg in args) + "]" if args else "list"
    if origin in (dict, Mapping):
        return f"mapping of {type_text(args[0])} to {type_text(args[1])}" if args else "mapping"
    return _class_text(tp) if isinstance(tp, type) else f"`{tp}`"


def _class_text(tp: type) -> str:  # noqa: PLR0911 - a flat dispatch on the kind of class
    if tp in _UNITS:
        return _link(_UNITS[tp], "config-values")
    if tp in _SCALARS:
        return _SCALARS[tp]
    if tp is type(None):
        return "null"
    if tp in _PLUGIN_REFS:
        return _link(*_PLUGIN_REFS[tp])
    if issubclass(tp, enum.Enum):
        return "one of " + ", ".join(f"`{_value(member.value)}`" for member in tp)
    if _is_section(tp):
        return _link(tp.__name__, _label(tp))
    return f"`{tp.__name__}`"


def _nested(cls: type) -> Iterator[type]:
    """The section classes that ``cls``'s field types name, in field order."""

    def walk(tp: Any) -> Iterator[type]:
        if _is_section(tp):
            yield tp
        for arg in typing.get_args(tp):
            yield from walk(arg)

    if not attrs.has(cls):
        return
    hints = typing.get_type_hints(cls)
    for field in attrs.fields(cls):
        yield from walk(hints[field.name])


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_class(cls: type, *, heading: str | None = None, level: int = 3) -> str:
    """A Markdown section for config class ``cls``: a target, a heading, its doc and its fields.

    Args:
        cls: an attrs config class (or a value type with ``__meshcore_parse__``).
        heading: the heading text (default: the class name); "" for no heading and no target.
        level: the heading level.
    """
    text, _ = _split_docstring(cls.__doc__)
    out = [f"({_label(cls)})=", f"{'#' * level} {heading or cls.__name__}", ""] if heading != "" else []
    if text:
        out += [_paragraph(text), ""]
    if not _is_table(cls):
        return "\n".join(out)
    fields = [field for field in attrs.fields(cls) if field.init and not field.name.startswith("_")]
    if not fields:
        return "\n".join([*out, "No fields: write `{}`.", ""])
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out += ["| field | type | default | constraints | description |", "| --- | --- | --- | --- | --- |"]
    for field in fields:
        kind = type_text(hints[field.name])
        target = field.metadata.get("ref")
        if target is not None:
            where = _REF_TARGETS.get(target)
            words = f"a {target.replace('_', ' ')}"
            named = _link(words, _label(where)) if where is not None else words
            kind = f"{kind}: the name of {named}"
        row = [f"`{field.name}`", kind, _default(field), constraints(field), docs.get(field.name, "")]
        out.append("| " + " | ".join(_cell(part) for part in row) + " |")
    return "\n".join([*out, ""])


# -- the page ------------------------------------------------------------------------------------


def _closure(roots: Sequence[type], done: set[type]) -> list[type]:
    """``roots`` and every section class reached from them not yet in ``done``, depth first.

    Depth first keeps a section next to the sections it is made of (Listener, FilterChain,
    FilterChainMatch, ..., then Cluster).
    """
    order: list[type] = []

    def visit(cls: type) -> None:
        if cls in done:
            return
        done.add(cls)
        order.append(cls)
        for nested in _nested(cls):
            visit(nested)

    for root in roots:
        visit(root)
    return order


def _plugin(kind: str, plugin: PluginType, done: set[type]) -> list[str]:
    out = [f"(config-{kind}-{plugin.name})=".replace("_", "-"), f"### `{plugin.name}`", ""]
    if plugin.description:
        out += [f"{plugin.description[0].upper()}{plugin.description[1:]}.", ""]
    if getattr(plugin, "ends_chain", False):
        out += ["It ends a filter chain: it must be the last filter.", ""]
    config = plugin.config
    if config is None:
        return [*out, f"Takes no config: write its name alone, `{plugin.name}`.", ""]
    route_config = getattr(plugin, "route_config", None)
    nested = _closure([config] + ([route_config] if route_config is not None else []), done)
    for i, cls in enumerate(nested):
        if i == 0:  # the plugin's config: its table under the plugin's heading
            out += [f"({_label(cls)})=", "", render_class(cls, heading="")]
        elif cls is route_config:
            out.append(render_class(cls, heading=f"Per-route override: {cls.__name__}", level=4))
        else:
            out.append(render_class(cls, level=4))
    return out


def _values() -> list[str]:
    out = [
        "(config-values)=",
        "## Values",
        "",
        "Config files are YAML, TOML or JSON. Some values have a human form:",
        "",
        "| type | written as |",
        "| --- | --- |",
    ]
    out += [f"| {word} | {_cell(_paragraph(cls.__doc__ or ''))} |" for cls, word in _UNITS.items()]
    out += [
        "",
        (
            "A field whose default is *required* must be given. `null` (YAML `~`) is accepted "
            "where the type says *or null*."
        ),
        "",
    ]
    return out


def render_config_reference(registry: Registry | None = None) -> str:
    """The whole configuration reference page (docs/reference/config.md), as Markdown.

    Args:
        registry: the plugins to document (default: meshcore's own, with autoload off, so
            that installed third-party plugins stay out).
    """
    registry = registry or build_registry(autoload=False)
    done: set[type] = set()
    out = [
        "# Configuration reference",
        "",
        (
            "Every section of a proxy's config file, and the config of every plugin that comes "
            "with meshcore. This page is generated from the config classes themselves by "
            f"`meshcore.docsgen` (`{REGENERATE}`), and a test fails when the two disagree."
        ),
        "A third-party plugin's config is documented by that plugin.",
        "",
        *_values(),
        "(config-snapshot)=",
        "## The proxy config",
        "",
        (
            "A config file is one Snapshot: the whole config of a proxy at one version. "
            "Its top-level keys are the fields of `Snapshot`."
        ),
        "",
    ]
    out += [render_class(cls) for cls in _closure([Snapshot], done)]
    for kind, title, label, how in _PLUGIN_KINDS:
        out += [f"({label})=", f"## {title}", "", how, ""]
        found = registry.types(kind)
        for name in sorted(found):
            out += _plugin(kind, found[name], done)
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m meshcore.docsgen``: print the reference, or ``--check FILE`` against it."""
    parser = argparse.ArgumentParser(prog="python -m meshcore.docsgen", description=main.__doc__)
    parser.add_argument("--check", metavar="FILE", help="exit 1 if FILE differs from the generated reference")
    args = parser.parse_args(argv)
    text = render_config_reference()
    if args.check is None:
        sys.stdout.write(text)
        return 0
    path = Path(args.check)
    current = path.read_text(encoding="utf-8") if path.is_file() else ""
    if current == text:
        return 0
    sys.stderr.write(f"{path} is out of date with the config classes; regenerate it: {REGENERATE}\n")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
