"""The route table: compiled once per Snapshot, matched once per request.

Envoy's semantics. A request's authority picks a virtual host (exact domain, then suffix
wildcards ``*.example.com``, then prefix wildcards ``api.*``, longest first, then ``*``);
within it, routes are tried in order and the first whose every criterion matches wins.

What it costs as the config grows: a virtual host is one dictionary look-up (a cache of
authorities in front), whatever their number. Within a virtual host of more than a few
routes, case-sensitive ``path`` and ``prefix`` routes are found through an index (a
dictionary of paths, and one of prefixes probed once per distinct prefix length), so
their number does not matter; ``regex`` routes and ``case_sensitive: false`` ones are
tried one by one. The index only narrows the candidates: they are still tried in config
order, and the first whose every criterion holds wins, exactly as a scan would find it.

Everything that can be done per Snapshot is done in :meth:`RouteTable.compile`: domains
and header names are lower-cased, header values encoded to bytes, regular expressions
compiled, weights accumulated. Matching a request lower-cases nothing from config,
compiles nothing, and parses the query string only when a route asks about it.
"""

from __future__ import annotations

import random
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from itertools import accumulate, chain
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import unquote_plus

from meshcore.config.consistency import route_config_problems
from meshcore.config.model import HeaderMatch, QueryParamMatch, Route, RouteConfiguration, VirtualHost
from meshcore.errors import ConfigError
from meshcore.http.messages import Request

__all__ = ["INDEX_FROM", "CompiledRoute", "CompiledVirtualHost", "RouteTable", "parse_query"]

# Kinds of criteria (path and header/query values); small ints compare fastest.
_EXACT: Final = 0
_PREFIX: Final = 1
_REGEX: Final = 2
_PRESENT: Final = 3

# Header names that are not in Request.headers but in attributes of the Request.
_PSEUDO_HEADERS: Final[Mapping[str, str]] = {
    ":authority": "authority",
    "host": "authority",
    ":method": "method",
    ":path": "path",
    ":scheme": "scheme",
}
_NO_PARAMS: Final[Mapping[str, str]] = MappingProxyType({})
_CACHE_LIMIT: Final = 4096  # distinct authorities remembered before the cache starts over
# From this many routes on, a virtual host looks its path and prefix routes up in an index;
# below, a scan is as fast (it usually stops at the first route).
INDEX_FROM: Final = 8


def parse_query(query: str) -> dict[str, str]:
    """Query parameters as Envoy's route matcher sees them: first value wins.

    Args:
        query: the query string, without "?".

    Returns:
        Each name (percent- and plus-decoded) mapped to its first value, "" if it has none.
    """
    params: dict[str, str] = {}
    if query:
        for part in query.split("&"):
            if part:
                name, _, value = part.partition("=")
                params.setdefault(unquote_plus(name), unquote_plus(value))
    return params


def _header_value(request: Request, name: bytes) -> bytes | None:
    """Every value of lower-case ``name`` joined by "," (as Envoy does), or None if absent."""
    found: bytes | None = None
    more: list[bytes] | None = None
    for n, v in request.headers.raw:
        if n == name:
            if found is None:
                found = v
            elif more is None:
                more = [found, v]
            else:
                more.append(v)
    return found if more is None else b",".join(more)


class _HeaderMatcher:
    """One compiled :class:`HeaderMatch`.

    Envoy's rules: a missing header satisfies only a presence test (``present: false``, or
    an inverted ``present: true``); ``invert`` negates the test on a header that is there.
    """

    __slots__ = ("attribute", "invert", "kind", "name", "pattern", "present", "value")

    def __init__(self, config: HeaderMatch) -> None:
        lowered = config.name.lower()
        self.name = lowered.encode("latin-1")
        self.attribute = _PSEUDO_HEADERS.get(lowered)
        self.invert = config.invert
        self.present = config.present is not False
        self.value = b""
        self.pattern: re.Pattern[str] | None = None
        if config.exact is not None:
            self.kind, self.value = _EXACT, config.exact.encode("latin-1")
        elif config.prefix is not None:
            self.kind, self.value = _PREFIX, config.prefix.encode("latin-1")
        elif config.regex is not None:
            self.kind, self.pattern = _REGEX, re.compile(config.regex)
        else:
            self.kind = _PRESENT

    def matches(self, request: Request) -> bool:
        """Whether ``request`` satisfies this criterion."""
        if self.attribute is None:
            value = _header_value(request, self.name)
        else:
            text: str = getattr(request, self.attribute)
            value = text.encode("latin-1", "replace") if text else None
        if value is None:
            return self.kind == _PRESENT and self.present == self.invert
        kind = self.kind
        if kind == _EXACT:
            ok = value == self.value
        elif kind == _PREFIX:
            ok = value.startswith(self.value)
        elif kind == _REGEX:
            assert self.pattern is not None  # noqa: S101 - set with _REGEX
            ok = self.pattern.fullmatch(value.decode("latin-1")) is not None
        else:
            ok = self.present
        return ok != self.invert


class _QueryMatcher:
    """One compiled :class:`QueryParamMatch`; ``present: false`` means "absent"."""

    __slots__ = ("kind", "name", "pattern", "present", "value")

    def __init__(self, config: QueryParamMatch) -> None:
        self.name = config.name
        self.present = config.present is not False
        self.value = config.exact or ""
        self.pattern = re.compile(config.regex) if config.regex is not None else None
        if config.exact is not None:
            self.kind = _EXACT
        elif self.pattern is not None:
            self.kind = _REGEX
        else:
            self.kind = _PRESENT

    def matches(self, params: Mapping[str, str]) -> bool:
        """Whether the parsed query ``params`` satisfy this criterion."""
        value = params.get(self.name)
        if value is None:
            return self.kind == _PRESENT and not self.present
        if self.kind == _EXACT:
            return value == self.value
        if self.pattern is not None:
            return self.pattern.fullmatch(value) is not None
        return self.present


class CompiledRoute:
    """A route ready to match requests, with its action precomputed.

    Attributes:
        name: the route's name, or ``"<virtual host>/<index>"`` if it has none.
        virtual_host: the name of its virtual host.
        config: the route's config.
        needs_query: whether matching looks at the query string.
        chain: a slot for the connection manager's per-route filter chain (None until set).
    """

    __slots__ = (
        "_cluster",
        "_cumulative",
        "_headers",
        "_kind",
        "_methods",
        "_names",
        "_pattern",
        "_prefix_rewrite",
        "_query",
        "_randrange",
        "_regex_rewrite",
        "_total",
        "_value",
        "chain",
        "config",
        "name",
        "needs_query",
        "virtual_host",
    )

    def __init__(self, config: Route, *, name: str, virtual_host: str, rng: random.Random) -> None:
        self.name = name
        self.virtual_host = virtual_host
        self.config = config
        self.chain: Any = None
        match = config.match
        self._value = ""
        self._pattern: re.Pattern[str] | None = None
        if match.regex is not None:
            self._kind, self._pattern = _REGEX, re.compile(match.regex)
        else:
            self._kind = _EXACT if match.path is not None else _PREFIX
            self._value = match.path if match.path is not None else match.prefix or ""
            if not match.case_sensitive:
                # re.IGNORECASE compares without lower-casing the request's path.
                self._pattern = re.compile(re.escape(self._value), re.IGNORECASE)
        self._methods = frozenset(match.methods) if match.methods else None
        self._headers = tuple(_HeaderMatcher(h) for h in match.headers)
        self._query = tuple(_QueryMatcher(q) for q in match.query_params)
        self.needs_query = bool(self._query)
        self._prefix_rewrite = config.prefix_rewrite
        self._regex_rewrite: tuple[re.Pattern[str], str] | None = None
        if config.regex_rewrite is not None:
            pattern, substitution = config.regex_rewrite
            self._regex_rewrite = (re.compile(pattern), substitution)
        weighted = [w for w in config.weighted_clusters if w.weight > 0]
        self._cluster = config.cluster if not weighted else weighted[0].name if len(weighted) == 1 else None
        self._cumulative = list(accumulate(w.weight for w in weighted)) if len(weighted) > 1 else None
        self._names = tuple(w.name for w in weighted)
        self._total = self._cumulative[-1] if self._cumulative else 0
        self._randrange: Callable[[int], int] = rng.randrange

    def matches(
        self, request: Request, path: str | None = None, params: Mapping[str, str] | None = None
    ) -> bool:
        """Whether every criterion of this route holds for ``request``.

        Args:
            request: the request.
            path: the request's path without its query, if already split off.
            params: the request's parsed query (see :func:`parse_query`), if already parsed.
        """
        if path is None:
            path = request.path.partition("?")[0]
        pattern = self._pattern
        if pattern is None:
            if not (path.startswith(self._value) if self._kind == _PREFIX else path == self._value):
                return False
        elif (pattern.match(path) if self._kind == _PREFIX else pattern.fullmatch(path)) is None:
            return False
        # The path is the most selective criterion: most routes stop above, before this call.
        return self._rest_matches(request, params)

    def _rest_matches(self, request: Request, params: Mapping[str, str] | None) -> bool:
        """Whether the method, headers and query of ``request`` match (the path did)."""
        if self._methods is not None and request.method not in self._methods:
            return False
        for header in self._headers:
            if not header.matches(request):
                return False
        if self._query:
            if params is None:
                params = parse_query(request.path.partition("?")[2])
            for param in self._query:
                if not param.matches(params):
                    return False
        return True

    def index_key(self) -> tuple[bool, str] | None:
        """What a path index files this route under, or None if it is tried by scan.

        (True, path) for a case-sensitive path route, (False, prefix) for a case-sensitive
        prefix route, None for the others (regex, case-insensitive).
        """
        if self._pattern is not None:
            return None
        return self._kind == _EXACT, self._value

    def rewrite_path(self, path: str) -> str:
        """The upstream path for ``path`` (a path this route matched), query string kept.

        ``prefix_rewrite`` replaces the matched prefix of a prefix route, or the whole path of
        a path or regex route (as Envoy does); ``regex_rewrite`` substitutes every match of its
        pattern in the path. Without either, ``path`` is returned as is.
        """
        if self._prefix_rewrite is None and self._regex_rewrite is None:
            return path
        cut = path.find("?")
        head, tail = (path, "") if cut < 0 else (path[:cut], path[cut:])
        if self._prefix_rewrite is not None:
            rest = head[len(self._value) :] if self._kind == _PREFIX else ""
            return self._prefix_rewrite + rest + tail
        assert self._regex_rewrite is not None  # noqa: S101 - checked above
        pattern, substitution = self._regex_rewrite
        return pattern.sub(substitution, head) + tail

    def rewrite_request(self, request: Request) -> None:
        """Make ``request`` (a request this route matched) the one sent upstream.

        In this order: the path rewrite (:meth:`rewrite_path`), ``host_rewrite``, then
        ``request_headers_to_remove`` and ``request_headers_to_add``. The router calls this
        before forwarding, and ``meshcore check-routes`` to predict what the upstream sees.
        """
        action = self.config
        request.path = self.rewrite_path(request.path)
        if action.host_rewrite is not None:
            request.authority = action.host_rewrite
        headers = request.headers
        for header in action.request_headers_to_remove:
            headers.remove(header)
        for header, value in action.request_headers_to_add.items():
            headers.add(header, value)

    def pick_cluster(self) -> str | None:
        """The upstream cluster: ``cluster``, or a weighted random pick of ``weighted_clusters``.

        A cluster of weight 0 is never picked; None if every weight is 0 or the route's action
        is not a cluster (direct response, redirect).
        """
        if self._cumulative is None:
            return self._cluster
        return self._names[bisect_right(self._cumulative, self._randrange(self._total))]

    def __repr__(self) -> str:
        return f"<CompiledRoute {self.name!r}>"


class _RouteIndex:
    """Where a virtual host's routes can match, by path: the candidates of a request, in order.

    Case-sensitive ``path`` routes are keyed by their path, case-sensitive ``prefix`` routes by
    their prefix (probed once per distinct prefix length); the others (regex, case-insensitive)
    are candidates for every path. Each key holds route positions in config order.
    """

    __slots__ = ("exact", "lengths", "prefixes", "scanned")

    def __init__(self, routes: tuple[CompiledRoute, ...]) -> None:
        self.exact: dict[str, list[int]] = {}
        self.prefixes: dict[str, list[int]] = {}
        self.scanned: list[int] = []
        for position, route in enumerate(routes):
            key = route.index_key()
            if key is None:
                self.scanned.append(position)
            else:
                exact, value = key
                (self.exact if exact else self.prefixes).setdefault(value, []).append(position)
        self.lengths = sorted({len(prefix) for prefix in self.prefixes})

    def candidates(self, path: str) -> list[int]:
        """Positions of the routes whose path criterion may hold for ``path``, ascending."""
        found: list[list[int]] = []
        if (exact := self.exact.get(path)) is not None:
            found.append(exact)
        prefixes = self.prefixes
        size = len(path)
        for length in self.lengths:
            if length > size:
                break
            if (under := prefixes.get(path[:length])) is not None:
                found.append(under)
        if self.scanned:
            found.append(self.scanned)
        if len(found) == 1:
            return found[0]
        return sorted(chain.from_iterable(found))


class CompiledVirtualHost:
    """A virtual host ready to match requests.

    Attributes:
        name: the virtual host's name.
        config: its config.
        routes: its routes, in order.
    """

    __slots__ = ("_index", "config", "name", "routes")

    def __init__(self, config: VirtualHost, routes: tuple[CompiledRoute, ...]) -> None:
        self.name = config.name
        self.config = config
        self.routes = routes
        self._index = _RouteIndex(routes) if len(routes) >= INDEX_FROM else None

    def match(self, request: Request) -> CompiledRoute | None:
        """The first route (in config order) that matches ``request``, or None."""
        full = request.path
        cut = full.find("?")
        path = full if cut < 0 else full[:cut]
        params: Mapping[str, str] | None = None
        if self._index is None:
            candidates: Iterable[CompiledRoute] = self.routes
        else:
            routes = self.routes
            candidates = [routes[i] for i in self._index.candidates(path)]
        for route in candidates:
            if route.needs_query and params is None:
                params = parse_query(full[cut + 1 :]) if cut >= 0 else _NO_PARAMS
            if route.matches(request, path, params):
                return route
        return None

    def scan(self, request: Request) -> CompiledRoute | None:
        """:meth:`match` without the index: every route tried in order (the reference)."""
        full = request.path
        cut = full.find("?")
        path = full if cut < 0 else full[:cut]
        params = parse_query(full[cut + 1 :]) if cut >= 0 else _NO_PARAMS
        return next((route for route in self.routes if route.matches(request, path, params)), None)

    def __repr__(self) -> str:
        return f"<CompiledVirtualHost {self.name!r}>"


_Wildcards = tuple[tuple[int, dict[str, CompiledVirtualHost]], ...]
_MISS: Final[Any] = object()


def _by_length(entries: dict[str, CompiledVirtualHost]) -> _Wildcards:
    """Wildcard stems grouped by length, longest first (the longest wildcard wins)."""
    groups: dict[int, dict[str, CompiledVirtualHost]] = {}
    for stem, vhost in entries.items():
        groups.setdefault(len(stem), {})[stem] = vhost
    return tuple(sorted(groups.items(), reverse=True))


def _without_port(host: str) -> str | None:
    """``host`` without a numeric ":port" (IPv6 literals in brackets kept), or None if it has none."""
    colon = host.rfind(":")
    if colon < 0 or host.rfind("]") > colon:
        return None
    port = host[colon + 1 :]
    return host[:colon] if port.isascii() and port.isdigit() else None


class RouteTable:
    """A compiled :class:`RouteConfiguration`. Build it with :meth:`compile`.

    Attributes:
        name: the route configuration's name.
        config: the route configuration.
        virtual_hosts: the compiled virtual hosts, in config order.
    """

    __slots__ = ("_cache", "_default", "_exact", "_prefixes", "_suffixes", "config", "name", "virtual_hosts")

    def __init__(
        self,
        config: RouteConfiguration,
        virtual_hosts: tuple[CompiledVirtualHost, ...],
        domains: dict[str, CompiledVirtualHost],
    ) -> None:
        self.name = config.name
        self.config = config
        self.virtual_hosts = virtual_hosts
        self._default = domains.get("*")
        self._exact = {d: v for d, v in domains.items() if "*" not in (d[:1], d[-1:])}
        self._suffixes = _by_length({d[1:]: v for d, v in domains.items() if d.startswith("*") and d != "*"})
        self._prefixes = _by_length({d[:-1]: v for d, v in domains.items() if d.endswith("*") and d != "*"})
        self._cache: dict[str, CompiledVirtualHost | None] = {}

    @classmethod
    def compile(cls, config: RouteConfiguration, *, rng: random.Random | None = None) -> RouteTable:
        """Compile ``config`` once, for every request of a Snapshot.

        Args:
            config: the route configuration.
            rng: the random source of weighted cluster picks (tests pass a seeded one).

        Raises:
            ConfigError: what :func:`~meshcore.config.consistency.route_config_problems`
                finds (a domain served by two virtual hosts, both rewrites on a route, an
                unusable substitution), which validation reports before any apply.
        """
        problems = route_config_problems(config)
        if problems:
            raise ConfigError(problems)
        source = rng if rng is not None else random.Random()  # noqa: S311 - load spreading, not crypto
        domains: dict[str, CompiledVirtualHost] = {}
        vhosts = []
        for vh in config.virtual_hosts:
            routes = tuple(
                CompiledRoute(route, name=route.name or f"{vh.name}/{j}", virtual_host=vh.name, rng=source)
                for j, route in enumerate(vh.routes)
            )
            vhost = CompiledVirtualHost(vh, routes)
            vhosts.append(vhost)
            for domain in vh.domains:
                domains.setdefault(domain.lower(), vhost)
        return cls(config, tuple(vhosts), domains)

    def match(self, request: Request) -> CompiledRoute | None:
        """The route for ``request``, or None if no virtual host or route takes it."""
        vhost = self.select_virtual_host(request.authority)
        return None if vhost is None else vhost.match(request)

    def select_virtual_host(self, authority: str) -> CompiledVirtualHost | None:
        """The virtual host serving ``authority`` (Host or :authority), or None.

        Case-insensitive. In each tier (exact, suffix wildcard, prefix wildcard) the full
        authority is tried first, then the authority without its port; ``*`` comes last.
        """
        vhost: CompiledVirtualHost | None = self._cache.get(authority, _MISS)
        if vhost is _MISS:
            vhost = self._lookup(authority.lower())
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[authority] = vhost
        return vhost

    def _lookup(self, host: str) -> CompiledVirtualHost | None:
        bare = _without_port(host)
        hosts = (host,) if bare is None else (host, bare)
        for h in hosts:
            if (vhost := self._exact.get(h)) is not None:
                return vhost
        for h in hosts:
            for length, stems in self._suffixes:
                if len(h) > length and (vhost := stems.get(h[-length:])) is not None:
                    return vhost
        for h in hosts:
            for length, stems in self._prefixes:
                if len(h) > length and (vhost := stems.get(h[:length])) is not None:
                    return vhost
        return self._default

    def __repr__(self) -> str:
        return f"<RouteTable {self.name!r}: {len(self.virtual_hosts)} virtual hosts>"
