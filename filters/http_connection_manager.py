"""``http_connection_manager``: the terminal L4 filter that speaks HTTP.

It decodes requests with the configured codec, runs each through its chain of HTTP
filters (the last one the router) and encodes the responses.
"""

from __future__ import annotations

from typing import Literal

import attrs

import meshcore
from meshcore import ByteSize, Duration, HttpFilterRef, at_least, non_empty, ref


@attrs.frozen(kw_only=True)
class HttpConnectionManagerConfig:
    """Config of ``http_connection_manager``."""

    route_config: str = ref("route_config", validator=non_empty)
    http_filters: tuple[HttpFilterRef, ...] = attrs.field(
        default=(HttpFilterRef(name="router"),), validator=non_empty
    )
    codec: Literal["h11"] = "h11"
    """The HTTP/1.1 codec; h11 is the reference (the seam for faster ones)."""
    max_request_headers_size: ByteSize = ByteSize(60 * 1024)
    max_request_headers: int = attrs.field(default=100, validator=at_least(1))
    request_headers_timeout: Duration = Duration(10)
    idle_timeout: Duration = Duration(300)
    max_requests_per_connection: int = attrs.field(default=0, validator=at_least(0))
    """0: no limit."""


@meshcore.hookimpl
def meshcore_network_filters() -> list[meshcore.NetworkFilterType]:
    """Register ``http_connection_manager``."""
    return [
        meshcore.NetworkFilterType(
            name="http_connection_manager",
            factory=meshcore.HttpConnectionManager,
            config=HttpConnectionManagerConfig,
            ends_chain=True,
            description="HTTP/1.1 codec; runs each request through a chain of HTTP filters",
        )
    ]
