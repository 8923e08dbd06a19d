"""What a filter factory is given: the proxy's shared parts, for one listener and Snapshot."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import trio

if TYPE_CHECKING:
    from meshcore.config import Snapshot
    from meshcore.registry import Registry
    from meshcore.runtime.cluster import ClusterManager
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
    """

    listener: str
    snapshot: Snapshot
    clusters: ClusterManager
    stats: Stats
    registry: Registry
    access_log: bool = False
    tls: bool = False


class Connection:
    """A downstream connection as L4 filters see it.

    Attributes:
        stream: the byte stream (TLS already terminated when the chain has TLS).
        id: a process-unique connection id.
        peer: the client's "host:port".
        local: the local "host:port".
        listener: the listener's name.
        server_name: the TLS SNI, if any.
        alpn: the negotiated ALPN protocol, if any.
        metadata: free-form data filters share for the life of the connection.
    """

    __slots__ = ("alpn", "id", "listener", "local", "metadata", "peer", "server_name", "stream")

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        id: int,  # noqa: A002 - the natural name, as in Envoy's connection id
        peer: str,
        local: str,
        listener: str,
        server_name: str | None = None,
        alpn: str | None = None,
    ) -> None:
        self.stream = stream
        self.id = id
        self.peer = peer
        self.local = local
        self.listener = listener
        self.server_name = server_name
        self.alpn = alpn
        self.metadata: dict[str, object] = {}

    @property
    def peer_host(self) -> str:
        """The client's address without the port."""
        host = self.peer.rpartition(":")[0]
        return host.strip("[]")

    def __repr__(self) -> str:
        return f"<Connection #{self.id} {self.peer} on {self.listener}>"
