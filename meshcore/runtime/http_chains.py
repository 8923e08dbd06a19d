"""What an HTTP connection manager runs requests through: its chains and its route table.

:class:`HttpChains` is built once per Snapshot: the main chain of HTTP filters, and the
compiled route table whose routes carry their own chain when they override filter
settings. The connection manager holds it through one attribute, read once per request,
so that applying a new route table is one assignment: the next request on every open
connection (HTTP/1.1 keep-alive, HTTP/2 streams) takes it, with nothing drained.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import attrs

from meshcore.chain import compose
from meshcore.config import FilterOverrides, Route, RouteConfiguration, Snapshot
from meshcore.config.structure import HttpFilterRef
from meshcore.errors import ConfigError, ProtocolError
from meshcore.http.messages import HttpHandler, Request, Response
from meshcore.http.routing import CompiledRoute, RouteTable
from meshcore.runtime.filterstate import Commit, blame, carry_over, prepare_snapshot, successors

if TYPE_CHECKING:
    from meshcore.runtime.context import FilterContext
    from meshcore.runtime.stats import Counter, Stats

__all__ = ["HttpChains", "HttpFilter", "RouteRuntime", "build_chain", "precompile", "precompiled"]

HttpFilter = Callable[[Request, HttpHandler], Awaitable[Response]]

Precompiled = dict[int, tuple[RouteConfiguration, RouteTable]]
"""Route tables compiled ahead of an apply, by the ``id`` of their config (kept beside it)."""

_PRECOMPILED: ContextVar[Precompiled | None] = ContextVar("meshcore_precompiled_routes", default=None)


def precompile(snapshot: Snapshot) -> Precompiled:
    """Compile every route table of ``snapshot`` that compiles; pure, so a worker thread may run it.

    Compiling is most of the cost of a large route table (10,000 routes), and it depends on
    nothing live: :meth:`Proxy.apply_async <meshcore.runtime.proxy.Proxy.apply_async>` does it
    off the event loop and hands the tables to the build with :func:`precompiled`. A table
    that does not compile is left out: the build compiles it again and reports it.
    """
    tables: Precompiled = {}
    for config in snapshot.route_configs:
        with contextlib.suppress(ConfigError):
            tables[id(config)] = (config, RouteTable.compile(config))
    return tables


@contextlib.contextmanager
def precompiled(tables: Precompiled) -> Iterator[None]:
    """Within this block (this task), building a route table takes it from ``tables`` if there.

    Each table is taken once: a second connection manager of the same route config compiles
    its own (a compiled table holds its manager's per-route chains).
    """
    token = _PRECOMPILED.set(tables)
    try:
        yield
    finally:
        _PRECOMPILED.reset(token)


async def _end_of_chain(request: Request) -> Response:
    """Behind the terminal filter: reached only if the chain has no terminal filter."""
    msg = f"the filter chain ended without a response for {request.method} {request.path}"
    raise ProtocolError(msg, status=500, remote=False)


def build_chain(filters: Sequence[HttpFilter]) -> HttpHandler:
    """Compose onion-shaped HTTP filters into one handler (once per Snapshot)."""
    return compose(filters, _end_of_chain)


class RouteRuntime:
    """Per-route parts compiled once: its chain (if it overrides filters) and its stats."""

    __slots__ = ("chain", "classes", "config", "filters", "names", "requests")

    def __init__(
        self, config: Route, names: list[str], filters: list[HttpFilter], stats: Stats, labels: dict[str, str]
    ) -> None:
        self.config = config
        self.names = names
        self.filters = filters
        self.chain = build_chain(filters) if filters else None
        self.requests = stats.counter("route_rq_total", **labels)
        self.classes = _ClassCounters(stats, labels)


class _ClassCounters:
    """A route's ``route_rq_xx`` counters by status class (index 0 for 1xx .. 4 for 5xx).

    Each is made on its first response: a Snapshot of 10,000 routes does not build 50,000
    counters up front (a route's ``route_rq_total`` is there from the start).
    """

    __slots__ = ("_counters", "_labels", "_stats")

    def __init__(self, stats: Stats, labels: dict[str, str]) -> None:
        self._stats = stats
        self._labels = labels
        self._counters: list[Counter | None] = [None] * 5

    def __getitem__(self, index: int) -> Counter:
        counter = self._counters[index]
        if counter is None:
            counter = self._counters[index] = self._stats.counter(
                "route_rq_xx", code_class=f"{index + 1}xx", **self._labels
            )
        return counter


class HttpChains:
    """The main HTTP filter chain and the route table (with per-route chains), for one Snapshot.

    Attributes:
        chain: the main chain, composed.
        routes: the compiled route table; each route's ``chain`` slot holds its RouteRuntime.
        names: the names of the main chain's filters, in order.
        filters: the main chain's filters, in order.
    """

    __slots__ = ("chain", "context", "filters", "names", "refs", "route_config", "routes")

    def __init__(self, refs: tuple[HttpFilterRef, ...], route_config: str, context: FilterContext) -> None:
        self.refs = refs
        self.route_config = route_config
        self.context = context
        self.names = [ref.name for ref in refs]
        self.filters = [
            self._build(ref.name, ref.config, f"http_filters[{i}].{ref.name}") for i, ref in enumerate(refs)
        ]
        self.chain = build_chain(self.filters)
        self.routes = self._compile(None)

    def _build(self, name: str, config: Any, where: str) -> HttpFilter:
        registry = self.context.registry
        found = registry.get("http_filter", name)
        if found is None:  # the Snapshot is checked first; this is a bug guard
            msg = f"unknown HTTP filter {name!r}"
            raise ValueError(msg)
        if config is None and found.config is not None:
            config = found.config()  # a default chain entry written in Python, not structured
        with blame(where, registry, "http_filter", name, "factory"):
            built: HttpFilter = found.factory(config, self.context)
        return built

    def _compile(self, previous: RouteTable | None) -> RouteTable:
        """The route table of the context's Snapshot, with per-route chains.

        A route whose config is unchanged since ``previous`` keeps its chain (and the state
        of its filters); a changed one gets new filters, each taking over from the one it
        replaces.
        """
        snapshot = self.context.snapshot
        at = next((i for i, r in enumerate(snapshot.route_configs) if r.name == self.route_config), None)
        if at is None:  # the Snapshot's references are checked first; this is a bug guard
            msg = f"unknown route config {self.route_config!r}"
            raise ValueError(msg)
        config = snapshot.route_configs[at]
        tables = _PRECOMPILED.get()
        ready = tables.pop(id(config), None) if tables is not None else None
        try:
            table = ready[1] if ready is not None and ready[0] is config else RouteTable.compile(config)
        except ConfigError as err:
            prefix = f"route_configs[{at}]."
            raise ConfigError([attrs.evolve(p, path=prefix + p.path) for p in err.problems]) from err
        kept: dict[str, RouteRuntime] = {}
        if previous is not None:
            kept = {
                r.name: r.chain for vh in previous.virtual_hosts for r in vh.routes if r.chain is not None
            }
        for vi, vhost in enumerate(table.virtual_hosts):
            for ri, route in enumerate(vhost.routes):
                old = kept.get(route.name)
                if old is not None and old.config == route.config:
                    route.chain = old
                    continue
                where = f"route_configs[{at}].virtual_hosts[{vi}].routes[{ri}].filters"
                route.chain = self._route_runtime(route, where)
                if old is not None:
                    self._carry_over(route.chain.names, route.chain.filters, old.names, old.filters, where)
        return table

    def _route_runtime(self, route: CompiledRoute, where: str) -> RouteRuntime:
        """A route's stats, and its own chain if it overrides filters."""
        overrides: FilterOverrides = route.config.filters
        names: list[str] = []
        filters: list[HttpFilter] = []
        for i, ref in enumerate(self.refs if overrides.by_filter else ()):
            override = overrides.by_filter.get(ref.name)
            if override == FilterOverrides.DISABLED:
                continue
            if override is None:
                filters.append(self._build(ref.name, ref.config, f"http_filters[{i}].{ref.name}"))
            else:
                filters.append(self._build(ref.name, override, f"{where}.{ref.name}"))
            names.append(ref.name)
        labels = {"route": route.name, "virtual_host": route.virtual_host}
        return RouteRuntime(route.config, names, filters, self.context.stats, labels)

    def _carry_over(
        self,
        names: Sequence[str],
        filters: Sequence[HttpFilter],
        previous_names: Sequence[str],
        previous: Sequence[HttpFilter],
        where: str = "http_filters",
    ) -> None:
        registry = self.context.registry
        for i, new, old in successors(names, filters, previous_names, previous):
            with blame(f"{where}[{i}].{names[i]}", registry, "http_filter", names[i], "carry_over"):
                carry_over(new, old)

    def _routes(self) -> list[CompiledRoute]:
        return [r for vh in self.routes.virtual_hosts for r in vh.routes]

    def carry_over(self, previous: HttpChains) -> None:
        """Hand each filter the one it replaces in ``previous``.

        The main chain's filters pair by name and place; a route's own filters with those
        of the route of the same name in ``previous``.
        """
        self._carry_over(self.names, self.filters, previous.names, previous.filters)
        old = {r.name: r.chain for r in previous._routes()}
        for route in self._routes():
            runtime, before = route.chain, old.get(route.name)
            if runtime is not None and before is not None and runtime is not before:
                where = f"routes[{route.name}].filters"
                self._carry_over(runtime.names, runtime.filters, before.names, before.filters, where)

    def prepare(self, snapshot: Snapshot, context: FilterContext) -> tuple[HttpChains, list[Commit]]:
        """These chains for a new Snapshot, without rebuilding what did not change.

        The main chain is kept; the route table is recompiled if its config changed (routes
        that did not change keep their chains). Kept filters that follow Snapshots
        (``prepare_snapshot``) are asked, and their commits returned.
        """
        chains = self
        if snapshot.route_config(self.route_config) != self.routes.config:
            chains = copy.copy(self)  # the same main chain
            chains.context = context
            chains.routes = chains._compile(self.routes)  # noqa: SLF001 - the same class
        named = [
            (n, f, f"http_filters[{i}].{n}")
            for i, (n, f) in enumerate(zip(self.names, self.filters, strict=True))
        ]
        for route in chains._routes():  # noqa: SLF001 - the same class
            if route.chain is not None:
                where = f"routes[{route.name}].filters"
                named += [
                    (n, f, f"{where}.{n}")
                    for n, f in zip(route.chain.names, route.chain.filters, strict=True)
                ]
        commits: list[Commit] = []
        for name, instance, where in named:
            with blame(where, context.registry, "http_filter", name, "prepare_snapshot"):
                commit = prepare_snapshot(instance, snapshot)
            if commit is not None:
                commits.append(commit)
        return chains, commits
