"""``tcp_proxy``: the terminal L4 filter that pipes bytes to an upstream cluster.

Both directions run concurrently and are half-close aware: when one side finishes
sending, the other side is told (``send_eof``) and the opposite direction carries on
until it finishes too. An idle timeout closes a connection on which nothing moves.
"""

from __future__ import annotations

from typing import Any

import attrs
import structlog

import meshcore
from meshcore import (
    ByteSize,
    Connection,
    Counter,
    Duration,
    FilterContext,
    NetworkHandler,
    ResponseFlag,
    StreamInfo,
    UpstreamError,
    non_empty,
    ref,
)

log = structlog.get_logger("meshcore.tcp_proxy")


@attrs.frozen(kw_only=True)
class TcpProxyConfig:
    """Config of ``tcp_proxy``."""

    cluster: str = ref("cluster", validator=non_empty)
    idle_timeout: Duration = Duration(3600)
    buffer_size: ByteSize = ByteSize(64 * 1024)


class _ConnectionCounter(Counter):
    """Counts one connection's bytes, and adds them to a shared counter as they flow."""

    __slots__ = ("_count", "_shared")

    def __init__(self, shared: Counter) -> None:
        self._shared = shared
        self._count = 0

    @property
    def value(self) -> int:
        """The connection's bytes so far."""
        return self._count

    @value.setter
    def value(self, new: int) -> None:
        self._shared.value += new - self._count
        self._count = new


class TcpProxy:
    """The ``tcp_proxy`` filter for one Snapshot."""

    def __init__(self, config: TcpProxyConfig, context: FilterContext) -> None:
        self._config = config
        self._clusters = context.clusters
        labels = {"listener": context.listener, "cluster": config.cluster}
        self._stat_cx = context.stats.counter("tcp_downstream_cx_total", **labels)
        self._stat_rx = context.stats.counter("tcp_downstream_rx_bytes_total", **labels)
        self._stat_tx = context.stats.counter("tcp_downstream_tx_bytes_total", **labels)
        self._stat_fail = context.stats.counter("tcp_upstream_cx_fail", **labels)
        self._access_logger = context.access_logger

    async def __call__(self, conn: Connection, _call_next: NetworkHandler) -> None:
        """Pipe ``conn`` to an endpoint of the cluster (terminal: ``_call_next`` is unused)."""
        cluster = self._clusters.get(self._config.cluster)
        self._stat_cx.value += 1
        info = StreamInfo(downstream_address=conn.peer, connection_id=conn.id)
        info.cluster_name = self._config.cluster
        received, sent = _ConnectionCounter(self._stat_rx), _ConnectionCounter(self._stat_tx)
        try:
            if cluster is None:
                info.flags.add(ResponseFlag.NO_CLUSTER_FOUND)
                log.warning("tcp_proxy_failed", cluster=self._config.cluster, reason="no such cluster")
                return
            await self._proxy(conn, cluster, info, received, sent)
        finally:
            if self._access_logger is not None:
                self._access_logger.log_tcp(conn, info, bytes_received=received.value, bytes_sent=sent.value)

    async def _proxy(
        self,
        conn: Connection,
        cluster: Any,  # the runtime's cluster: context.clusters.get(name)
        info: StreamInfo,
        received: Counter,
        sent: Counter,
    ) -> None:
        try:
            async with cluster.connect(conn) as (upstream, host):
                info.upstream_address = host.label
                log.debug("tcp_proxy_connected", upstream=host.label)
                timed_out = await meshcore.splice(
                    conn.stream,
                    upstream,
                    idle_timeout=self._config.idle_timeout,
                    buffer_size=self._config.buffer_size,
                    a_to_b=received,
                    b_to_a=sent,
                )
                if timed_out:
                    log.info("tcp_proxy_idle_timeout", cluster=self._config.cluster)
        except UpstreamError as err:
            self._stat_fail.value += 1
            info.flags.add(err.flag)
            log.warning(
                "tcp_proxy_failed", cluster=self._config.cluster, flags=err.flag.value, reason=str(err)
            )


@meshcore.hookimpl
def meshcore_network_filters() -> list[meshcore.NetworkFilterType]:
    """Register ``tcp_proxy``."""
    return [
        meshcore.NetworkFilterType(
            name="tcp_proxy",
            factory=TcpProxy,
            config=TcpProxyConfig,
            ends_chain=True,
            description="pipes bytes both ways to an endpoint of an upstream cluster",
        )
    ]
