"""Check a route table against expected routing, like Envoy's route table check tool.

Each case is a request and what should become of it: which route takes it, which cluster
it goes to, and the path, Host and headers the upstream receives. The answers come from the
real :class:`~meshcore.http.routing.RouteTable` and the same request rewriting the router
does, so a case that passes here routes the same way in a running proxy.

A cases file (YAML, JSON, or TOML with ``[[cases]]`` tables) is a list of::

    - name: API v2 goes to the new service      # optional
      request: {authority: api.example.com, path: /v2/users, method: GET, headers: {x-beta: "1"}}
      expect:
        route: api-v2           # the route's name ("<virtual host>/<index>" when unnamed)
        virtual_host: api
        cluster: users-v2       # for weighted clusters: any that can be picked
        path: /users            # after prefix_rewrite / regex_rewrite, query kept
        host: users.internal    # after host_rewrite
        headers: {x-api-version: "2", x-debug: null}   # null: must be absent
    - request: {authority: unknown.example.com, path: /}
      expect: {no_route: true}

In Python: ``check_routes(config, cases)`` returns the failures; ``assert_routes(config,
cases)`` raises an AssertionError listing them. On the command line: ``meshcore
check-routes --config proxy.yaml --tests routes.yaml``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs

from meshcore import (
    ConfigError,
    ConfigProblem,
    Headers,
    Registry,
    Request,
    Snapshot,
    build_registry,
    non_empty,
)
from meshcore.config import Structurer, parse_document
from meshcore.http.routing import RouteTable
from meshcore.testing.proxies import ConfigLike, to_snapshot

__all__ = [
    "CaseExpect",
    "CaseRequest",
    "Failure",
    "Mismatch",
    "RouteCase",
    "assert_routes",
    "check_routes",
    "load_cases",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_FORWARDED_FIELDS = ("cluster", "path", "host")


def _starts_with_slash(_instance: Any, _attribute: attrs.Attribute[Any], value: str) -> None:
    if not value.startswith("/"):
        msg = f'must start with "/", got {value!r}'
        raise ValueError(msg)


@attrs.frozen(kw_only=True)
class CaseRequest:
    """The request of a case, as a client sends it."""

    authority: str = attrs.field(validator=non_empty)
    """The Host (HTTP/1.1) or :authority (HTTP/2), port included if the client sends one."""
    path: str = attrs.field(validator=_starts_with_slash)
    """The request target: path and query string."""
    method: str = attrs.field(default="GET", validator=non_empty)
    headers: Mapping[str, str] = _EMPTY


@attrs.frozen(kw_only=True)
class CaseExpect:
    """What should become of the request. Only the fields given are checked."""

    route: str | None = None
    """The route's name (``"<virtual host>/<index>"`` when it has none)."""
    virtual_host: str | None = None
    cluster: str | None = None
    """The upstream cluster; for weighted clusters, any of those that can be picked."""
    path: str | None = None
    """The path sent upstream, after the route's rewrites (query string kept)."""
    host: str | None = None
    """The authority sent upstream, after ``host_rewrite``."""
    headers: Mapping[str, str | None] = _EMPTY
    """Headers the upstream receives: a value must be among the header's values; null: absent."""
    no_route: bool = False
    """No route takes the request (the proxy answers 404, flag NR)."""

    def __attrs_post_init__(self) -> None:
        given = [
            name for name in ("route", "virtual_host", *_FORWARDED_FIELDS) if getattr(self, name) is not None
        ]
        given += ["headers"] if self.headers else []
        if self.no_route and given:
            msg = f"no_route: true expects nothing else, got {', '.join(given)}"
            raise ValueError(msg)
        if not self.no_route and not given:
            msg = "expects nothing: give route, virtual_host, cluster, path, host, headers, or no_route: true"
            raise ValueError(msg)


@attrs.frozen(kw_only=True)
class RouteCase:
    """One request and what the route table should do with it.

    Attributes:
        name: what the case is about (optional).
        request: the request.
        expect: the expectations.
    """

    name: str = ""
    request: CaseRequest
    expect: CaseExpect
    _location: str | None = attrs.field(default=None, alias="location")

    @property
    def location(self) -> str | None:
        """Where the case was written (``file:line``), when it came from a file."""
        return self._location

    @property
    def label(self) -> str:
        """The case's name, or its request (``GET api.example.com/v2``) when it has none."""
        return self.name or f"{self.request.method} {self.request.authority}{self.request.path}"


@attrs.frozen
class Mismatch:
    """One expectation that did not hold.

    Attributes:
        field: what was expected (``route``, ``cluster``, ``headers.x-user``, ...).
        expected: the expected value, as it reads in a message.
        actual: what the route table does instead, as it reads in a message.
    """

    field: str
    expected: str
    actual: str

    def __str__(self) -> str:
        return f"{self.field}: expected {self.expected}, got {self.actual}"


@attrs.frozen
class Failure:
    """A case that failed, with every expectation that did not hold.

    Attributes:
        index: the case's position in the list (from 0).
        case: the case.
        mismatches: what did not hold.
    """

    index: int
    case: RouteCase
    mismatches: tuple[Mismatch, ...]

    @property
    def location(self) -> str | None:
        """``file:line`` of the case, when it came from a file."""
        return self.case.location

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        return f"{where}{self.case.label}: " + "; ".join(str(m) for m in self.mismatches)


# -- loading cases -----------------------------------------------------------------------------


def _structure_cases(
    data: Any, registry: Registry, file: str | None = None, lines: Any = None
) -> list[RouteCase]:
    """Cases from plain data (items already RouteCase pass through); ConfigError on problems."""
    structurer = Structurer(registry)
    items: Any = data
    prefix: tuple[str | int, ...] = ()
    if isinstance(data, Mapping) and set(data) == {"cases"}:
        items, prefix = data["cases"], ("cases",)
    cases: list[RouteCase] = []
    if not isinstance(items, list | tuple):
        message = "must be a list of cases, or a mapping with one key, cases, holding the list"
        structurer.problem(prefix, message)
    elif not items:
        structurer.problem(prefix, "has no cases")
    for i, item in enumerate(items if isinstance(items, list | tuple) else ()):
        if isinstance(item, RouteCase):
            cases.append(item)
            continue
        found = len(structurer.problems)
        case = structurer.structure(item, RouteCase, (*prefix, i))
        if len(structurer.problems) == found and isinstance(case, RouteCase):
            line = lines.line_for((*prefix, i)) if lines is not None else None
            location = f"{file}:{line}" if file is not None and line is not None else file
            cases.append(attrs.evolve(case, location=location))
    if structurer.problems:
        raise ConfigError(
            attrs.evolve(
                problem,
                file=file,
                line=lines.line_for(_parse_path(problem.path)) if lines is not None else None,
            )
            for problem in structurer.problems
        )
    return cases


def _parse_path(text: str) -> tuple[str | int, ...]:
    """The field path of a problem's path text (``[0].expect.cluster``), for the line lookup."""
    parts: list[str | int] = []
    for chunk in text.replace("[", ".[").split("."):
        if chunk.startswith("[") and chunk.endswith("]") and chunk[1:-1].isdigit():
            parts.append(int(chunk[1:-1]))
        elif chunk:
            parts.append(chunk)
    return tuple(parts)


def load_cases(source: str | os.PathLike[str], registry: Registry | None = None) -> list[RouteCase]:
    """Read a cases file (YAML, JSON or TOML; see the module's docs for the format).

    Raises:
        ConfigError: the file cannot be read or its cases are malformed; every problem is
            named with the file, the line (YAML) and the field path.
    """
    name = str(source)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "is not UTF-8 text"
        raise ConfigError([ConfigProblem(path="", message=f"cannot read: {reason}", file=name)]) from err
    data, lines = parse_document(text, name)
    return _structure_cases(data, registry or build_registry(), name, lines)


def _as_cases(
    cases: Sequence[RouteCase | Mapping[str, Any]] | str | os.PathLike[str], registry: Registry
) -> list[RouteCase]:
    if isinstance(cases, str | os.PathLike):
        return load_cases(cases, registry)
    return _structure_cases(list(cases), registry)


# -- checking ----------------------------------------------------------------------------------


def _route_table(snapshot: Snapshot, route_config: str | None) -> RouteTable:
    names = [rc.name for rc in snapshot.route_configs]
    if route_config is None:
        if len(names) != 1:
            listing = ", ".join(repr(n) for n in names) or "none"
            msg = f"the config has {len(names)} route configs ({listing}): name the one to check"
            raise LookupError(msg)
        route_config = names[0]
    found = snapshot.route_config(route_config)
    if found is None:
        msg = (
            f"no route config {route_config!r} (the config has {', '.join(repr(n) for n in names) or 'none'})"
        )
        raise LookupError(msg)
    return RouteTable.compile(found)


def _check_case(table: RouteTable, case: RouteCase) -> list[Mismatch]:  # noqa: PLR0912 - one flat pass over the expectations
    want = case.expect
    request = Request(
        case.request.method,
        case.request.path,
        authority=case.request.authority,
        headers=Headers(list(case.request.headers.items())),
    )
    vhost = table.select_virtual_host(request.authority)
    route = vhost.match(request) if vhost is not None else None
    if want.no_route:
        return [] if route is None else [Mismatch("no_route", "no route", f"route {route.name!r}")]
    if route is None:
        why = f"in virtual host {vhost.name!r}" if vhost is not None else "(no virtual host serves it)"
        return [Mismatch("route", repr(want.route) if want.route else "a route", f"no route {why}")]
    out: list[Mismatch] = []
    if want.virtual_host is not None and want.virtual_host != route.virtual_host:
        out.append(Mismatch("virtual_host", repr(want.virtual_host), repr(route.virtual_host)))
    if want.route is not None and want.route != route.name:
        out.append(Mismatch("route", repr(want.route), repr(route.name)))
    action = route.config
    local = None
    if action.direct_response is not None:
        local = f"a direct response {action.direct_response.status}, nothing sent upstream"
    elif action.redirect is not None:
        local = f"a redirect {action.redirect.status}, nothing sent upstream"
    if local is not None:
        expected = {name: getattr(want, name) for name in _FORWARDED_FIELDS}
        expected.update({f"headers.{n}": v for n, v in want.headers.items()})
        out.extend(
            Mismatch(name, repr(value), local) for name, value in expected.items() if value is not None
        )
        return out
    if want.cluster is not None:
        weighted = [w.name for w in action.weighted_clusters if w.weight > 0]
        possible = weighted if action.weighted_clusters else [action.cluster] if action.cluster else []
        if want.cluster not in possible:
            if not possible:
                actual = "no cluster (every weight is 0)"
            elif len(possible) == 1:
                actual = repr(possible[0])
            else:
                actual = "one of " + ", ".join(repr(p) for p in possible) + " (weighted)"
            out.append(Mismatch("cluster", repr(want.cluster), actual))
    route.rewrite_request(request)
    if want.path is not None and want.path != request.path:
        out.append(Mismatch("path", repr(want.path), repr(request.path)))
    if want.host is not None and want.host != request.authority:
        out.append(Mismatch("host", repr(want.host), repr(request.authority)))
    for name, value in want.headers.items():
        values = request.headers.get_all(name)
        shown = ", ".join(repr(v) for v in values) if values else "absent"
        if value is None and values:
            out.append(Mismatch(f"headers.{name}", "absent", shown))
        elif value is not None and value not in values:
            out.append(Mismatch(f"headers.{name}", repr(value), shown))
    return out


def check_routes(
    config: ConfigLike,
    cases: Sequence[RouteCase | Mapping[str, Any]] | str | os.PathLike[str],
    *,
    route_config: str | None = None,
    registry: Registry | None = None,
) -> list[Failure]:
    """Check what a route table does with each case's request; return the failed cases.

    Args:
        config: the proxy config: a Snapshot, a config dict, or a config file.
        cases: :class:`RouteCase` objects, mappings in the cases-file format, or the path
            of a cases file.
        route_config: the route configuration to check (default: the config's only one).
        registry: the plugin registry the config is built with (default: built-ins and
            installed plugins).

    Raises:
        ConfigError: the config or the cases are invalid (every problem named).
        LookupError: ``route_config`` names no route configuration, or none was named
            and the config has several.
    """
    registry = registry or build_registry()
    table = _route_table(to_snapshot(config, registry), route_config)
    failures = []
    for index, case in enumerate(_as_cases(cases, registry)):
        mismatches = _check_case(table, case)
        if mismatches:
            failures.append(Failure(index, case, tuple(mismatches)))
    return failures


def assert_routes(
    config: ConfigLike,
    cases: Sequence[RouteCase | Mapping[str, Any]] | str | os.PathLike[str],
    *,
    route_config: str | None = None,
    registry: Registry | None = None,
) -> None:
    """Like :func:`check_routes`, for tests: raise AssertionError listing every failed case.

    Raises:
        AssertionError: some cases failed; the message shows, per case, each expectation
            and what the route table does instead.
    """
    registry = registry or build_registry()
    loaded = _as_cases(cases, registry)
    failures = check_routes(config, loaded, route_config=route_config, registry=registry)
    if not failures:
        return
    lines = [f"{len(failures)} of {len(loaded)} route cases failed:"]
    for failure in failures:
        where = f" ({failure.location})" if failure.location else ""
        lines.append(f"  [{failure.index}] {failure.case.label}{where}:")
        width = max(len(m.field) for m in failure.mismatches) + 1
        for m in failure.mismatches:
            lines.append(f"    {m.field + ':':<{width}} expected {m.expected}")
            lines.append(f"    {'':<{width}} got      {m.actual}")
    raise AssertionError("\n".join(lines))
