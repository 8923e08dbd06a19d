"""Start real proxies in trio tests: from a config dict or a Snapshot, on loopback ports.

Example:
    ::

        async with trio.open_nursery() as nursery:
            upstream = await nursery.start(serve_upstream)
            proxy = await start_proxy(nursery, http_proxy_config([upstream]))
            response = await fetch(proxy.address("ingress"), "/hello")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import trio

from meshcore import Registry, Snapshot, build_registry, snapshot_from_data
from meshcore.runtime.proxy import Proxy

__all__ = ["http_proxy_config", "start_proxy", "tcp_proxy_config"]


def _endpoints(upstreams: Sequence[tuple[str, int] | str]) -> list[str]:
    return [u if isinstance(u, str) else f"{u[0]}:{u[1]}" for u in upstreams]


def http_proxy_config(
    upstreams: Sequence[tuple[str, int] | str],
    *,
    routes: Sequence[Mapping[str, Any]] | None = None,
    http_filters: Sequence[Any] = ("router",),
    cluster: Mapping[str, Any] | None = None,
    manager: Mapping[str, Any] | None = None,
    listener: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A config dict: listener "ingress" on 127.0.0.1:0 → HTTP filters → cluster "backend".

    Args:
        upstreams: the cluster's endpoints, as (host, port) or "host:port".
        routes: routes of the one virtual host (default: everything to "backend").
        http_filters: the HTTP filter chain (default: just the router).
        cluster: extra settings of the "backend" cluster.
        manager: extra settings of the http_connection_manager.
        listener: extra settings of the listener.
    """
    return {
        "admin": {"enabled": False},
        "listeners": [
            {
                "name": "ingress",
                "address": "127.0.0.1:0",
                "filter_chains": [
                    {
                        "filters": [
                            {
                                "http_connection_manager": {
                                    "route_config": "main",
                                    "http_filters": list(http_filters),
                                    **(manager or {}),
                                }
                            }
                        ]
                    }
                ],
                **(listener or {}),
            }
        ],
        "route_configs": [
            {
                "name": "main",
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": list(
                            routes or [{"name": "default", "match": {"prefix": "/"}, "cluster": "backend"}]
                        ),
                    }
                ],
            }
        ],
        "clusters": [{"name": "backend", "endpoints": _endpoints(upstreams), **(cluster or {})}],
    }


def tcp_proxy_config(upstreams: Sequence[tuple[str, int] | str], **tcp_proxy: Any) -> dict[str, Any]:
    """A config dict: listener "ingress" on 127.0.0.1:0 → tcp_proxy → cluster "backend"."""
    return {
        "admin": {"enabled": False},
        "listeners": [
            {
                "name": "ingress",
                "address": "127.0.0.1:0",
                "filter_chains": [{"filters": [{"tcp_proxy": {"cluster": "backend", **tcp_proxy}}]}],
            }
        ],
        "clusters": [{"name": "backend", "endpoints": _endpoints(upstreams)}],
    }


async def start_proxy(
    nursery: trio.Nursery,
    config: Mapping[str, Any] | Snapshot,
    *,
    registry: Registry | None = None,
) -> Proxy:
    """Start a proxy in ``nursery`` and apply ``config``; return it once it listens.

    Stop it with ``proxy.drain()`` (or by cancelling the nursery).
    """
    registry = registry or build_registry()
    snapshot = config if isinstance(config, Snapshot) else snapshot_from_data(config, registry)
    proxy = Proxy(registry)
    await nursery.start(proxy.run)
    proxy.apply(snapshot)
    return proxy
