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

from meshcore.config import (
    ByteSize,
    Duration,
    HttpFilterRef,
    Snapshot,
    at_least,
    at_most,
    non_empty,
    ref,
)
from meshcore.errors import ConfigProblem
from meshcore.plugin import NetworkFilterType, hookimpl
from meshcore.runtime.http_manager import HttpConnectionManager

__all__ = [
    "Http2Settings",
    "HttpConnectionManagerConfig",
    "meshcore_network_filters",
    "meshcore_validate_snapshot",
]


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
    max_empty_frames_burst: int = attrs.field(default=200, validator=at_least(1))
    """Frames that cost work and carry nothing (empty DATA without END_STREAM, empty
    CONTINUATION, PRIORITY, WINDOW_UPDATE under 1 KiB) a client may send in a burst before
    GOAWAY ENHANCE_YOUR_CALM."""
    max_empty_frames_per_second: float = attrs.field(default=100.0, validator=at_least(0))


@attrs.frozen(kw_only=True)
class PathNormalization:
    """How request paths are normalised before routing and filters (see docs/security.md).

    The defaults follow Envoy's advice for proxies at an edge of trust: RFC 3986 dot
    segments removed, slashes merged, encoded unreserved characters decoded, encoded
    slashes refused.
    """

    enabled: bool = True
    """Normalise paths at all. Off: routes and filters see paths as clients wrote them."""
    merge_slashes: bool = True
    """Merge runs of slashes (``//admin`` is ``/admin``)."""
    escaped_slashes: Literal["reject", "keep", "decode"] = "reject"
    """``%2F`` and ``%5C``: ``reject`` with 400, ``keep`` encoded (not a separator), or
    ``decode`` into ``/``."""
    forward: Literal["normalized", "original"] = "normalized"
    """What the upstream receives: the normalised path, or the path as the client wrote it
    (routing and filters still see the normalised one; a route that rewrites the path
    rewrites the normalised one)."""


@attrs.frozen(kw_only=True)
class TrustSettings:
    """Header hygiene at the edge of trust: what clients outside the mesh may tell upstreams."""

    xff_trusted_hops: int = attrs.field(default=0, validator=at_least(0))
    """Proxies in front of this one trusted to set ``x-forwarded-for``. 0: a client's own
    ``x-forwarded-for`` is dropped (the upstream sees the client's address alone)."""
    mesh_trust_domains: tuple[str, ...] = ()
    """Trust domains whose SPIFFE IDs make a client a mesh peer, whose ``x-forwarded-*``
    and ``x-meshcore-*`` headers are kept. Empty: any verified SPIFFE ID."""
    forward_client_cert: Literal["sanitize_set", "sanitize", "append_forward", "forward_only"] = (
        "sanitize_set"
    )
    """``x-forwarded-client-cert`` from clients outside the mesh: ``sanitize_set`` (drop
    theirs, describe their verified certificate), ``sanitize`` (drop), ``append_forward``
    (keep, append), ``forward_only`` (keep)."""
    internal_headers: tuple[str, ...] = ()
    """``x-meshcore-*`` headers clients outside the mesh may send (``x-meshcore-fault-*``:
    a prefix). Others are removed."""


@attrs.frozen(kw_only=True)
class RequestIdConfig:
    """``x-request-id``: generated when absent, propagated upstream, optionally echoed back.

    A client's id is kept when the request comes from a mesh peer (what ``trust`` calls
    one: a verified SPIFFE ID of ``mesh_trust_domains``), or when ``preserve_external`` is
    set; otherwise it is replaced, as Envoy does at the edge (``preserve_external_request_id``).
    """

    generate: bool = True
    """Generate an id (a UUID) for a request that has none, or whose id is not kept."""
    preserve_external: bool = False
    """Keep the id of a request from outside the mesh too (trust every client)."""
    set_in_response: bool = False
    """Echo the id in the response's ``x-request-id``."""


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
    stream_idle_timeout: Duration = Duration(300)
    """How long a response may make no progress because the client does not read it (0: no
    limit; Envoy's default is 5 minutes): past it, an HTTP/1.1 connection is closed and an
    HTTP/2 stream reset (CANCEL), never ended as if complete, and the upstream side freed."""
    max_requests_per_connection: int = attrs.field(default=0, validator=at_least(0))
    """0: no limit."""
    max_request_body_size: ByteSize = ByteSize(0)
    """The largest request body accepted (0: no limit). A Content-Length over it gets 413
    before anything reaches an upstream; a body streamed past it (chunked, HTTP/2) is cut
    off with 413 (or a reset, if the response has begun). Filters that buffer a body
    (``body.read_all()``) are held to it too."""
    http_protocol: Literal["auto", "http1", "http2"] = "auto"
    """auto: HTTP/2 by ALPN or prior knowledge, else HTTP/1.1."""
    http2: Http2Settings = Http2Settings()
    path_normalization: PathNormalization = PathNormalization()
    trust: TrustSettings = TrustSettings()
    request_id: RequestIdConfig = RequestIdConfig()


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


@hookimpl
def meshcore_validate_snapshot(snapshot: Snapshot) -> list[ConfigProblem]:
    """A route's filter override names a filter of the chain of a connection manager using its table.

    An override of a filter that no such chain has would be ignored without a word. A route
    table shared by managers with different chains may override a filter that only some
    of them have.
    """
    chains: dict[str, list[tuple[str, tuple[str, ...]]]] = {}  # route config -> (where, filter names)
    for i, listener in enumerate(snapshot.listeners):
        for j, chain in enumerate(listener.filter_chains):
            for k, network_filter in enumerate(chain.filters):
                config = network_filter.config
                if isinstance(config, HttpConnectionManagerConfig):
                    where = (
                        f"listeners[{i}].filter_chains[{j}].filters[{k}].{network_filter.name}.http_filters"
                    )
                    names = tuple(f.name for f in config.http_filters)
                    chains.setdefault(config.route_config, []).append((where, names))
    problems = []
    for i, route_config in enumerate(snapshot.route_configs):
        users = chains.get(route_config.name)
        if not users:
            continue
        in_some_chain = {name for _, names in users for name in names}
        for j, vhost in enumerate(route_config.virtual_hosts):
            for k, route in enumerate(vhost.routes):
                for name in route.filters.by_filter:
                    if name not in in_some_chain:
                        path = f"route_configs[{i}].virtual_hosts[{j}].routes[{k}].filters.{name}"
                        problems.append(
                            ConfigProblem(path=path, message=_not_in_chain(name, route_config.name, users))
                        )
    return problems


def _not_in_chain(name: str, route_config: str, users: list[tuple[str, tuple[str, ...]]]) -> str:
    which = "the connection manager" if len(users) == 1 else "any connection manager"
    chains = "; ".join(f"{where}: {', '.join(names)}" for where, names in users)
    return f"{name!r} is not in the HTTP filters of {which} using route config {route_config!r} ({chains})"
