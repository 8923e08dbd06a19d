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
import functools
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import attrs
import trio

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

__all__ = [
    "HttpChains",
    "HttpFilter",
    "RouteRuntime",
    "build_chain",
    "precompile",
    "precompiled",
    "prepare_runtimes",
    "release",
]

HttpFilter = Callable[[Request, HttpHandler], Awaitable[Response]]


@attrs.define
class Precompiled:
    """What the route tables of a Snapshot need, found ahead of an apply (in a worker thread).

    Attributes:
        tables: compiled tables, by the ``id`` of their config (kept beside it).
        same: by the ``id`` of a config, the live config found equal to it: no table needed.
    """

    tables: dict[int, tuple[RouteConfiguration, RouteTable]] = attrs.Factory(dict)
    same: dict[int, RouteConfiguration] = attrs.Factory(dict)


_PRECOMPILED: ContextVar[Precompiled | None] = ContextVar("meshcore_precompiled_routes", default=None)
_RETIRED: ContextVar[list[HttpChains] | None] = ContextVar("meshcore_retired_chains", default=None)


def precompile(snapshot: Snapshot, live: Snapshot | None = None) -> Precompiled:
    """Compare ``snapshot``'s route tables with ``live``'s and compile those that changed.

    Comparing 10,000 routes and compiling them are most of what a large route table costs,
    and neither changes anything: :meth:`Proxy.apply_async
    <meshcore.runtime.proxy.Proxy.apply_async>` does both in a worker thread and hands the
    result to the build with :func:`precompiled` (Snapshots and their configs are frozen,
    so reading the live one from a thread is safe). A table that does not compile is left
    out: the build compiles it again and reports it.
    """
    found = Precompiled()
    current = {rc.name: rc for rc in live.route_configs} if live is not None else {}
    for config in snapshot.route_configs:
        before = current.get(config.name)
        if before is not None and (before is config or before == config):
            found.same[id(config)] = before
            continue
        with contextlib.suppress(ConfigError):
            found.tables[id(config)] = (config, RouteTable.compile(config))
    return found


def _unchanged(config: RouteConfiguration | None, live: RouteConfiguration) -> bool:
    """Whether ``config`` equals ``live``, the comparison made ahead if it was (:func:`precompile`)."""
    if config is live:
        return True
    ahead = _PRECOMPILED.get()
    if ahead is not None and config is not None and ahead.same.get(id(config)) is live:
        return True
    return config == live


async def prepare_runtimes(tables: Precompiled, stats: Stats, *, chunk: int = 500) -> None:
    """Give the routes of ``tables`` their runtimes (stats) ahead of the build, yielding between chunks.

    Only routes that override no filter (their runtime is their stats alone, and cannot
    fail): a route with its own filters gets them from its manager, as it is built. A
    route the build keeps from the live table keeps its runtime instead.
    """
    done = 0
    for _config, table in tables.tables.values():
        for vhost in table.virtual_hosts:
            for route in vhost.routes:
                if not route.config.filters.by_filter:
                    labels = {"route": route.name, "virtual_host": route.virtual_host}
                    route.chain = RouteRuntime(route.config, [], [], stats, labels)
                done += 1
                if done % chunk == 0:
                    await trio.lowlevel.checkpoint()


@contextlib.contextmanager
def precompiled(tables: Precompiled, retired: list[HttpChains] | None = None) -> Iterator[None]:
    """Within this block (this task), building a route table takes it from ``tables`` if there.

    Each table is taken once: a second connection manager of the same route config compiles
    its own (a compiled table holds its manager's per-route chains). The chains a commit
    replaces are appended to ``retired`` (if given) instead of being freed in the swap: see
    :func:`release`.
    """
    token = _PRECOMPILED.set(tables)
    retiring = _RETIRED.set(retired)
    try:
        yield
    finally:
        _RETIRED.reset(retiring)
        _PRECOMPILED.reset(token)


async def release(retired: list[HttpChains], *, chunk: int = 500) -> None:
    """Free the chains a Snapshot replaced, ``chunk`` routes at a time, yielding between.

    Freeing a table of 10,000 routes (their runtimes, and the old Snapshot's route configs
    with them) takes tens of milliseconds, a stall if done at once in the swap. Requests in
    flight that hold the old table keep what they use: it goes when they end.
    """
    routes = [route for chains in retired for vhost in chains.routes.virtual_hosts for route in vhost.routes]
    retired.clear()  # the tables and their hosts go; the routes are held here
    while routes:
        await trio.lowlevel.checkpoint()
        del routes[-chunk:]


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
        ahead = _PRECOMPILED.get()
        ready = ahead.tables.pop(id(config), None) if ahead is not None else None
        try:
            table = ready[1] if ready is not None and ready[0] is config else RouteTable.compile(config)
        except ConfigError as err:
            prefix = f"route_configs[{at}]."
            raise ConfigError([attrs.evolve(p, path=prefix + p.path) for p in err.problems]) from err
        kept: dict[str, RouteRuntime] | None = None  # made when first needed: most routes are made ahead
        for vi, vhost in enumerate(table.virtual_hosts):
            for ri, route in enumerate(vhost.routes):
                if route.chain is not None:
                    # Made ahead (prepare_runtimes): no filters of its own, so nothing to keep or
                    # carry over from the route it replaces (its stats are the same counters, by name).
                    continue
                if kept is None:
                    kept = {}
                    if previous is not None:
                        kept = {
                            r.name: r.chain
                            for vh in previous.virtual_hosts
                            for r in vh.routes
                            if r.chain is not None
                        }
                old = kept.get(route.name)
                if old is not None and old.config == route.config:
                    route.chain = old
                    continue
                where = f"route_configs[{at}].virtual_hosts[{vi}].routes[{ri}].filters"
                if route.chain is None:
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
        commits: list[Commit] = []
        if not _unchanged(snapshot.route_config(self.route_config), self.routes.config):
            chains = copy.copy(self)  # the same main chain
            chains.context = context
            chains.routes = chains._compile(self.routes)  # noqa: SLF001 - the same class
            retired = _RETIRED.get()
            if retired is not None:
                commits.append(functools.partial(retired.append, self))
        named = [
            (n, f, f"http_filters[{i}].{n}")
            for i, (n, f) in enumerate(zip(self.names, self.filters, strict=True))
        ]
        for route in chains._routes():  # noqa: SLF001 - the same class
            if route.chain is not None and route.chain.filters:  # most routes have no filters of their own
                where = f"routes[{route.name}].filters"
                named += [
                    (n, f, f"{where}.{n}")
                    for n, f in zip(route.chain.names, route.chain.filters, strict=True)
                ]
        for name, instance, where in named:
            with blame(where, context.registry, "http_filter", name, "prepare_snapshot"):
                commit = prepare_snapshot(instance, snapshot)
            if commit is not None:
                commits.append(commit)
        return chains, commits
