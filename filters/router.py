"""``router``: the terminal HTTP filter that forwards a request along its route."""

from __future__ import annotations

from typing import Any

import attrs

import meshcore


@attrs.frozen(kw_only=True)
class RouterConfig:
    """Config of ``router``."""

    suppress_envoy_headers: bool = False


def _factory(config: RouterConfig, context: Any) -> Any:
    return meshcore.router(config, context)


@meshcore.hookimpl
def meshcore_http_filters() -> list[meshcore.HttpFilterType]:
    """Register ``router``."""
    return [
        meshcore.HttpFilterType(
            name="router",
            factory=_factory,
            config=RouterConfig,
            ends_chain=True,
            description="forwards to the route's cluster, answers directly, or redirects",
        )
    ]
