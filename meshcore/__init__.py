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
from meshcore.errors import ConfigError, ConfigProblem, MeshcoreError, PluginError, ProtocolError
from meshcore.plugin import (
    ConfigSourceType,
    HttpFilterType,
    LbPolicyType,
    NetworkFilterType,
    PluginType,
    hookimpl,
)
from meshcore.registry import PluginInfo, Registry, build_registry

try:
    __version__ = version("meshcore")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Address",
    "ByteSize",
    "Catalog",
    "Cluster",
    "ConfigError",
    "ConfigProblem",
    "ConfigSourceType",
    "Duration",
    "HttpFilterRef",
    "HttpFilterType",
    "LbPolicyRef",
    "LbPolicyType",
    "MeshcoreError",
    "NetworkFilterRef",
    "NetworkFilterType",
    "PluginError",
    "PluginInfo",
    "PluginType",
    "ProtocolError",
    "Registry",
    "Route",
    "RouteConfiguration",
    "Snapshot",
    "VirtualHost",
    "__version__",
    "at_least",
    "at_most",
    "build_registry",
    "hookimpl",
    "load_snapshot",
    "non_empty",
    "ref",
    "regex",
    "snapshot_from_data",
]
