"""meshcore: a service mesh framework whose every behaviour is a plugin.

This module is the public API: what a plugin author needs to write filters, load
balancers and config sources, and to test them (with :mod:`meshcore.testing`). First-party
filters and plugins import only from here, and so should third-party ones. The runtime's
insides (the proxy, the connection manager, upstream pools) are not in it: the CLI and
the testing kit reach them in :mod:`meshcore.runtime`.
"""

from importlib.metadata import PackageNotFoundError, version

from meshcore import telemetry
from meshcore.config import (
    Address,
    ByteSize,
    Catalog,
    Cluster,
    Duration,
    HttpFilterRef,
    LbPolicyRef,
    NetworkFilterRef,
    NodeInfo,
    Route,
    RouteConfiguration,
    SecretStr,
    Snapshot,
    SnapshotDelta,
    TlsSecret,
    VirtualHost,
    at_least,
    at_most,
    delta_from_data,
    file_field,
    load_snapshot,
    non_empty,
    ref,
    regex,
    snapshot_from_data,
)
from meshcore.config.traffic import (
    CircuitBreakers,
    OutlierDetection,
    RequestMirrorPolicy,
    RetryBackoff,
    RetryBudget,
    RetryOn,
    RetryPolicy,
)
from meshcore.connection import Connection, PeerTls, join_host_port, split_host_port
from meshcore.errors import (
    ConfigError,
    ConfigProblem,
    MeshcoreError,
    PluginError,
    ProtocolError,
    UpstreamError,
)
from meshcore.flags import ResponseFlag
from meshcore.http.grpc import GrpcStatus, grpc_response, grpc_status_for_http, grpc_timeout, is_grpc
from meshcore.http.messages import (
    Body,
    Headers,
    HttpHandler,
    MatchedRoute,
    Request,
    Response,
    StreamInfo,
    Upgraded,
    UpstreamAttempt,
)
from meshcore.plugin import (
    CertificateAuthorityType,
    ConfigSourceType,
    DiscoveryType,
    HealthCheckerType,
    HttpFilterType,
    LbPolicyType,
    MeshAnalyzerType,
    MeshKindType,
    NetworkFilterType,
    PluginType,
    TranslatorType,
    hookimpl,
)
from meshcore.registry import Registry, build_registry
from meshcore.runtime.context import FilterContext
from meshcore.runtime.listener import NetworkHandler
from meshcore.runtime.offloop import run_beside_loop
from meshcore.runtime.pipe import splice
from meshcore.runtime.server import ConfigSink, ConfigSource, serve_proxy
from meshcore.runtime.stats import Counter, Gauge, Histogram, Stats
from meshcore.tokenbucket import TokenBucket

try:
    __version__ = version("meshcore")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Address",
    "Body",
    "ByteSize",
    "Catalog",
    "CertificateAuthorityType",
    "CircuitBreakers",
    "Cluster",
    "ConfigError",
    "ConfigProblem",
    "ConfigSink",
    "ConfigSource",
    "ConfigSourceType",
    "Connection",
    "Counter",
    "DiscoveryType",
    "Duration",
    "FilterContext",
    "Gauge",
    "GrpcStatus",
    "Headers",
    "HealthCheckerType",
    "Histogram",
    "HttpFilterRef",
    "HttpFilterType",
    "HttpHandler",
    "LbPolicyRef",
    "LbPolicyType",
    "MatchedRoute",
    "MeshAnalyzerType",
    "MeshKindType",
    "MeshcoreError",
    "NetworkFilterRef",
    "NetworkFilterType",
    "NetworkHandler",
    "NodeInfo",
    "OutlierDetection",
    "PeerTls",
    "PluginError",
    "PluginType",
    "ProtocolError",
    "Registry",
    "Request",
    "RequestMirrorPolicy",
    "Response",
    "ResponseFlag",
    "RetryBackoff",
    "RetryBudget",
    "RetryOn",
    "RetryPolicy",
    "Route",
    "RouteConfiguration",
    "SecretStr",
    "Snapshot",
    "SnapshotDelta",
    "Stats",
    "StreamInfo",
    "TlsSecret",
    "TokenBucket",
    "TranslatorType",
    "Upgraded",
    "UpstreamAttempt",
    "UpstreamError",
    "VirtualHost",
    "__version__",
    "at_least",
    "at_most",
    "build_registry",
    "delta_from_data",
    "file_field",
    "grpc_response",
    "grpc_status_for_http",
    "grpc_timeout",
    "hookimpl",
    "is_grpc",
    "join_host_port",
    "load_snapshot",
    "non_empty",
    "ref",
    "regex",
    "run_beside_loop",
    "serve_proxy",
    "snapshot_from_data",
    "splice",
    "split_host_port",
    "telemetry",
]
