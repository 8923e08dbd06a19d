"""What a filter factory is given: the proxy's shared parts, for one listener and Snapshot."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from meshcore.connection import Connection

if TYPE_CHECKING:
    from meshcore.config import Snapshot
    from meshcore.registry import Registry
    from meshcore.runtime.cluster_manager import ClusterManager
    from meshcore.runtime.overload import OverloadManager
    from meshcore.runtime.services import ServicesView
    from meshcore.runtime.stats import Stats

__all__ = ["Connection", "FilterContext"]


@attrs.frozen(kw_only=True)
class FilterContext:
    """Given to every filter factory, once per listener and Snapshot.

    Attributes:
        listener: the listener's name.
        snapshot: the Snapshot being applied (route tables, clusters, ...).
        clusters: the upstream clusters, by name (``clusters.get(name)``).
        stats: the metrics store (create metrics here, once, and keep them).
        registry: the plugin registry (to build nested filters).
        services: the proxy's long-lived helpers by key (exporters, log sinks: see
            :mod:`meshcore.runtime.services`); None outside a running proxy (a test harness).
        access_log: whether this listener has access logs.
        access_logger: its access logs (``log_http``, ``log_tcp``: see
            :class:`meshcore.telemetry.accesslog.AccessLogger`), or None.
        tls: whether the filter chain terminates TLS.
        overload: the proxy's overload manager (None outside a proxy).
    """

    listener: str
    snapshot: Snapshot
    clusters: ClusterManager
    stats: Stats
    registry: Registry
    services: ServicesView | None = None
    access_log: bool = False
    access_logger: Any = None
    tls: bool = False
    overload: OverloadManager | None = None
