"""``http_connection_manager``: the terminal L4 filter that speaks HTTP/1.1 and HTTP/2.

It decodes requests (HTTP/2 by TLS ALPN ``h2`` or by prior knowledge, HTTP/1.1
otherwise), runs each through its chain of HTTP filters (the last one the router) and
encodes the responses. Filters see one message model whatever the protocol.

It registers through the same hook and entry-point group as every plugin, but it is part
of the runtime, not of ``meshcore.filters``: it drives the codecs and the HTTP/2 sessions
(:mod:`meshcore.runtime.http_manager`), which are no part of the public API.
"""

from __future__ import annotations

from typing import Literal

import attrs

from meshcore.config import ByteSize, Duration, HttpFilterRef, at_least, at_most, non_empty, ref
from meshcore.plugin import NetworkFilterType, hookimpl
from meshcore.runtime.http_manager import HttpConnectionManager

__all__ = ["Http2Settings", "HttpConnectionManagerConfig", "meshcore_network_filters"]


@attrs.frozen(kw_only=True)
class Http2Settings:
    """HTTP/2 settings advertised to clients, and the limits that contain abuse."""

    max_concurrent_streams: int = attrs.field(default=100, validator=[at_least(1), at_most(2**31 - 1)])
    initial_stream_window_size: int = attrs.field(
        default=65535, validator=[at_least(65535), at_most(2**31 - 1)]
    )
    """Bytes of request body a client may send on a stream ahead of the proxy reading them."""
    initial_connection_window_size: int = attrs.field(
        default=1024 * 1024, validator=[at_least(65535), at_most(2**31 - 1)]
    )
    max_frame_size: int = attrs.field(default=16384, validator=[at_least(16384), at_most(2**24 - 1)])
    max_header_list_size: int = attrs.field(default=60 * 1024, validator=at_least(1024))
    max_stream_resets_burst: int = attrs.field(default=200, validator=at_least(1))
    """Streams a client may cancel in a burst before GOAWAY ENHANCE_YOUR_CALM (rapid reset)."""
    max_stream_resets_per_second: float = attrs.field(default=100.0, validator=at_least(0))
    max_control_frames_burst: int = attrs.field(default=100, validator=at_least(1))
    """SETTINGS and PING frames a client may send in a burst before GOAWAY ENHANCE_YOUR_CALM."""
    max_control_frames_per_second: float = attrs.field(default=20.0, validator=at_least(0))


@attrs.frozen(kw_only=True)
class HttpConnectionManagerConfig:
    """Config of ``http_connection_manager``."""

    route_config: str = ref("route_config", validator=non_empty)
    http_filters: tuple[HttpFilterRef, ...] = attrs.field(
        default=(HttpFilterRef(name="router"),), validator=non_empty
    )
    codec: Literal["h11", "fast"] = "h11"
    """The HTTP/1.1 codec: ``h11`` (the reference) or ``fast`` (held to h11 by differential tests)."""
    max_request_headers_size: ByteSize = ByteSize(60 * 1024)
    max_request_headers: int = attrs.field(default=100, validator=at_least(1))
    request_headers_timeout: Duration = Duration(10)
    idle_timeout: Duration = Duration(300)
    max_requests_per_connection: int = attrs.field(default=0, validator=at_least(0))
    """0: no limit."""
    http_protocol: Literal["auto", "http1", "http2"] = "auto"
    """auto: HTTP/2 by ALPN or prior knowledge, else HTTP/1.1."""
    http2: Http2Settings = Http2Settings()


@hookimpl
def meshcore_network_filters() -> list[NetworkFilterType]:
    """Register ``http_connection_manager``."""
    return [
        NetworkFilterType(
            name="http_connection_manager",
            factory=HttpConnectionManager,
            config=HttpConnectionManagerConfig,
            ends_chain=True,
            description="HTTP/1.1 and HTTP/2; runs each request through a chain of HTTP filters",
        )
    ]
