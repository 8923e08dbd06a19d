"""The config model: pure data (frozen attrs), with no runtime imports.

``meshcore.config`` turns YAML, TOML or JSON into a validated, versioned :class:`Snapshot`,
reporting every problem with its file, line, field path and reason.
"""

from meshcore.config.checks import check_snapshot, defined_names
from meshcore.config.delta import SnapshotDelta, delta_from_data
from meshcore.config.files import file_field
from meshcore.config.loader import CONFIG_SUFFIXES, load_snapshot, parse_document, snapshot_from_data
from meshcore.config.model import (
    AdminConfig,
    Cluster,
    DirectResponse,
    Endpoint,
    FilterChain,
    FilterChainMatch,
    FilterOverrides,
    HeaderMatch,
    Listener,
    QueryParamMatch,
    Redirect,
    Route,
    RouteConfiguration,
    RouteMatch,
    Snapshot,
    TlsContext,
    UpstreamTls,
    VirtualHost,
    WeightedCluster,
    ref,
)
from meshcore.config.structure import (
    Catalog,
    HttpFilterRef,
    LbPolicyRef,
    NetworkFilterRef,
    PluginRef,
    Structurer,
    format_path,
)
from meshcore.config.units import Address, ByteSize, Duration, SecretStr, format_duration
from meshcore.config.validators import at_least, at_most, cidr, non_empty, regex, unique

__all__ = [
    "CONFIG_SUFFIXES",
    "Address",
    "AdminConfig",
    "ByteSize",
    "Catalog",
    "Cluster",
    "DirectResponse",
    "Duration",
    "Endpoint",
    "FilterChain",
    "FilterChainMatch",
    "FilterOverrides",
    "HeaderMatch",
    "HttpFilterRef",
    "LbPolicyRef",
    "Listener",
    "NetworkFilterRef",
    "PluginRef",
    "QueryParamMatch",
    "Redirect",
    "Route",
    "RouteConfiguration",
    "RouteMatch",
    "SecretStr",
    "Snapshot",
    "SnapshotDelta",
    "Structurer",
    "TlsContext",
    "UpstreamTls",
    "VirtualHost",
    "WeightedCluster",
    "at_least",
    "at_most",
    "check_snapshot",
    "cidr",
    "defined_names",
    "delta_from_data",
    "file_field",
    "format_duration",
    "format_path",
    "load_snapshot",
    "non_empty",
    "parse_document",
    "ref",
    "regex",
    "snapshot_from_data",
    "unique",
]
