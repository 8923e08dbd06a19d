"""What a filter factory is given: the proxy's shared parts, for one listener and Snapshot."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from meshcore.connection import Connection

if TYPE_CHECKING:
    from meshcore.config import Snapshot
    from meshcore.registry import Registry
    from meshcore.runtime.cluster import ClusterManager
    from meshcore.runtime.overload import OverloadManager
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
        access_log: whether this listener logs one line per request.
        tls: whether the filter chain terminates TLS.
        overload: the proxy's overload manager (None outside a proxy).
    """

    listener: str
    snapshot: Snapshot
    clusters: ClusterManager
    stats: Stats
    registry: Registry
    access_log: bool = False
    tls: bool = False
    overload: OverloadManager | None = None
