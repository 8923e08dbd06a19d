"""Run ONE HTTP filter (or a short chain) against synthetic requests, with no sockets.

    harness = FilterHarness("local_ratelimit", {"rate": 10, "burst": 2})
    response = await harness.request("GET", "/")            # next handler answers 200
    harness.next = lambda request: ...                      # or play the next handler yourself

The filter's config goes through the same structuring and validation as a config file,
so a bad config raises ConfigError with the field path, exactly as ``meshcore validate``
would report it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from meshcore import (
    Body,
    ConfigError,
    Connection,
    FilterContext,
    Headers,
    HttpFilterRef,
    HttpHandler,
    MatchedRoute,
    PluginError,
    Registry,
    Request,
    Response,
    Snapshot,
    Stats,
    StreamInfo,
    build_registry,
)
from meshcore.config import Structurer
from meshcore.config.typecheck import config_type_problems
from meshcore.runtime.cluster_manager import ClusterManager
from meshcore.runtime.http_manager import build_chain

__all__ = ["FilterHarness", "make_request"]


def make_request(
    method: str = "GET",
    path: str = "/",
    *,
    authority: str = "example.com",
    headers: Sequence[tuple[str, str]] | Mapping[str, str] = (),
    body: bytes | Body = b"",
    peer: str = "127.0.0.1:40000",
    route: MatchedRoute | None = None,
    connection: Connection | None = None,
) -> Request:
    """A synthetic request as a codec would have produced it."""
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    request = Request(
        method,
        path,
        authority=authority,
        headers=Headers(pairs),
        body=body if isinstance(body, Body) else Body.from_bytes(body),
        info=StreamInfo(downstream_address=peer),
        connection=connection,
    )
    request.route = route
    return request


async def _ok(_request: Request) -> Response:
    return Response.local(200, b"ok\n")


class FilterHarness:
    """One filter, or a chain of them, built exactly as the proxy builds it; no sockets.

    Args:
        filters: a filter name with ``config`` (a mapping as in a config file, structured
            and validated), or a list of ``(name, config)`` pairs for a short chain.
        config: the config section of a single filter.
        registry: the plugin registry (default: built-ins and installed plugins).
        stats: the stats store the filters count into (default: a new one).

    Raises:
        ConfigError: a config with problems, each with its field path.
        PluginError: a filter's config class has a field of a type config cannot hold
            (see :mod:`meshcore.config.typecheck`), named with the class and the field.

    Attributes:
        next: the handler behind the chain: ``async (request) -> Response``. Replace it to
            play the upstream: return a response, raise, stream a body, or stall.
        stats: the stats store, to assert on the filter's counters.
    """

    def __init__(
        self,
        filters: str | Sequence[tuple[str, Mapping[str, Any] | None]],
        config: Mapping[str, Any] | None = None,
        *,
        registry: Registry | None = None,
        stats: Stats | None = None,
        listener: str = "test",
    ) -> None:
        self.registry = registry or build_registry()
        self.stats = stats or Stats()
        pairs = [(filters, config)] if isinstance(filters, str) else list(filters)
        self.context = FilterContext(
            listener=listener,
            snapshot=Snapshot(),
            clusters=ClusterManager(self.stats, lambda _cluster: _no_picker()),
            stats=self.stats,
            registry=self.registry,
        )
        self.next: HttpHandler = _ok
        built = [self._build(name, section, i) for i, (name, section) in enumerate(pairs)]
        built.append(self._call_next)
        self._chain = build_chain(built)

    def _build(self, name: str, section: Mapping[str, Any] | None, index: int) -> Any:
        found = self.registry.get("http_filter", name)
        if found is not None:
            # Loud in the plugin author's own tests: a config class config cannot hold.
            classes = [found.config, getattr(found, "route_config", None)]
            problems = [p for cls in classes if cls is not None for p in config_type_problems(cls)]
            if problems:
                msg = f"HTTP filter {name!r}: " + "; ".join(problems)
                raise PluginError(msg)
        structurer = Structurer(self.registry)
        data = {name: dict(section)} if section is not None else name
        ref = structurer.structure(data, HttpFilterRef, ("http_filters", index))
        if structurer.problems or ref is None:
            raise ConfigError(structurer.problems)
        assert found is not None  # the structurer checked the name
        return found.factory(ref.config, self.context)

    async def _call_next(self, request: Request, _call_next: HttpHandler) -> Response:
        return await self.next(request)

    async def __call__(self, request: Request) -> Response:
        """Run ``request`` through the chain."""
        return await self._chain(request)

    async def request(self, method: str = "GET", path: str = "/", **kwargs: Any) -> Response:
        """Build a request with :func:`make_request` and run it through the chain."""
        return await self._chain(make_request(method, path, **kwargs))


def _no_picker() -> Any:
    msg = "the filter harness has no clusters"
    raise RuntimeError(msg)
