"""meshcore: a service mesh framework whose every behaviour is a plugin.

This module is the public API. First-party filters and plugins import only from here,
and so should third-party ones.
"""

from importlib.metadata import PackageNotFoundError, version

from meshcore.config import (
    Address,
    ByteSize,
    Catalog,
    Cluster,
    Duration,
    HttpFilterRef,
    LbPolicyRef,
    NetworkFilterRef,
    Route,
    RouteConfiguration,
    SecretStr,
    Snapshot,
    VirtualHost,
    at_least,
    at_most,
    load_snapshot,
    non_empty,
    ref,
    regex,
    snapshot_from_data,
)
from meshcore.connection import Connection, PeerTls
from meshcore.errors import ConfigError, ConfigProblem, MeshcoreError, PluginError, ProtocolError
from meshcore.flags import ResponseFlag
from meshcore.http.grpc import GrpcStatus, grpc_response, grpc_status_for_http, grpc_timeout, is_grpc
from meshcore.http.messages import Body, Headers, HttpHandler, Request, Response, StreamInfo, Upgraded
from meshcore.plugin import (
    ConfigSourceType,
    HttpFilterType,
    LbPolicyType,
    NetworkFilterType,
    PluginType,
    hookimpl,
)
from meshcore.registry import PluginInfo, Registry, build_registry
from meshcore.runtime.cluster import Cluster as UpstreamCluster
from meshcore.runtime.cluster import Host, UpstreamError
from meshcore.runtime.context import FilterContext
from meshcore.runtime.http_manager import HttpConnectionManager, build_chain
from meshcore.runtime.listener import NetworkHandler
from meshcore.runtime.pipe import splice
from meshcore.runtime.proxy import Proxy
from meshcore.runtime.stats import Counter, Gauge, Histogram, Stats

try:
    __version__ = version("meshcore")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Address",
    "Body",
    "ByteSize",
    "Catalog",
    "Cluster",
    "ConfigError",
    "ConfigProblem",
    "ConfigSourceType",
    "Connection",
    "Counter",
    "Duration",
    "FilterContext",
    "Gauge",
    "GrpcStatus",
    "Headers",
    "Histogram",
    "Host",
    "HttpConnectionManager",
    "HttpFilterRef",
    "HttpFilterType",
    "HttpHandler",
    "LbPolicyRef",
    "LbPolicyType",
    "MeshcoreError",
    "NetworkFilterRef",
    "NetworkFilterType",
    "NetworkHandler",
    "PeerTls",
    "PluginError",
    "PluginInfo",
    "PluginType",
    "ProtocolError",
    "Proxy",
    "Registry",
    "Request",
    "Response",
    "ResponseFlag",
    "Route",
    "RouteConfiguration",
    "SecretStr",
    "Snapshot",
    "Stats",
    "StreamInfo",
    "Upgraded",
    "UpstreamCluster",
    "UpstreamError",
    "VirtualHost",
    "__version__",
    "at_least",
    "at_most",
    "build_chain",
    "build_registry",
    "grpc_response",
    "grpc_status_for_http",
    "grpc_timeout",
    "hookimpl",
    "is_grpc",
    "load_snapshot",
    "non_empty",
    "ref",
    "regex",
    "snapshot_from_data",
    "splice",
]
