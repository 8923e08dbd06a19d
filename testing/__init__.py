"""meshcore.testing: tools for testing meshcore plugins and configs (a pytest plugin).

- Fixtures (``meshcore_proxy``, ``meshcore_upstream``, ``meshcore_proxy_sync``,
  ``meshcore_upstream_sync``, ``meshcore_ca``, ``meshcore_registry``): see
  :mod:`meshcore.testing.plugin`.
- Without pytest: :func:`open_proxies`, :func:`open_upstreams` (trio) and
  :class:`BackgroundLoop` (synchronous code).
- :class:`FilterHarness`: one filter against synthetic requests, no sockets.
- :func:`check_routes` / :func:`assert_routes`: a route table against expected routing.
"""

from meshcore.testing.background import (
    BackgroundLoop,
    SyncClient,
    SyncProxy,
    SyncProxyFactory,
    SyncUpstreamFactory,
)
from meshcore.testing.client import Client, ClientResponse, IncompleteResponse, fetch
from meshcore.testing.filters import FilterHarness, make_request
from meshcore.testing.harness import http_proxy_config, start_proxy, tcp_proxy_config
from meshcore.testing.proxies import (
    ConfigLike,
    ProxyFactory,
    RunningProxy,
    Upstream,
    UpstreamFactory,
    open_proxies,
    open_upstreams,
    to_snapshot,
)
from meshcore.testing.routecheck import Failure, Mismatch, RouteCase, assert_routes, check_routes, load_cases
from meshcore.testing.tls import MeshcoreCA, TlsFiles
from meshcore.testing.upstreams import serve_upstream

__all__ = [
    "BackgroundLoop",
    "Client",
    "ClientResponse",
    "ConfigLike",
    "Failure",
    "FilterHarness",
    "IncompleteResponse",
    "MeshcoreCA",
    "Mismatch",
    "ProxyFactory",
    "RouteCase",
    "RunningProxy",
    "SyncClient",
    "SyncProxy",
    "SyncProxyFactory",
    "SyncUpstreamFactory",
    "TlsFiles",
    "Upstream",
    "UpstreamFactory",
    "assert_routes",
    "check_routes",
    "fetch",
    "http_proxy_config",
    "load_cases",
    "make_request",
    "open_proxies",
    "open_upstreams",
    "serve_upstream",
    "start_proxy",
    "tcp_proxy_config",
    "to_snapshot",
]
