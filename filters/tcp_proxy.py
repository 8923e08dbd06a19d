"""``tcp_proxy``: the terminal L4 filter that pipes bytes to an upstream cluster.

Both directions run concurrently and are half-close aware: when one side finishes
sending, the other side is told (``send_eof``) and the opposite direction carries on
until it finishes too. An idle timeout closes a connection on which nothing moves.
"""

from __future__ import annotations

import math

import attrs
import structlog
import trio

import meshcore
from meshcore import ByteSize, Connection, Duration, FilterContext, NetworkHandler, UpstreamError, non_empty, ref

log = structlog.get_logger("meshcore.tcp_proxy")


@attrs.frozen(kw_only=True)
class TcpProxyConfig:
    """Config of ``tcp_proxy``."""

    cluster: str = ref("cluster", validator=non_empty)
    idle_timeout: Duration = Duration(3600)
    buffer_size: ByteSize = ByteSize(64 * 1024)


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

    async def __call__(self, conn: Connection, call_next: NetworkHandler) -> None:
        """Pipe ``conn`` to an endpoint of the cluster (terminal: ``call_next`` is unused)."""
        cluster = self._clusters.get(self._config.cluster)
        self._stat_cx.value += 1
        if cluster is None:
            log.warning("tcp_proxy_failed", cluster=self._config.cluster, reason="no such cluster")
            return
        try:
            async with cluster.connect() as (upstream, host):
                log.debug("tcp_proxy_connected", upstream=host.label)
                await self._pipe(conn.stream, upstream)
        except UpstreamError as err:
            self._stat_fail.value += 1
            log.warning("tcp_proxy_failed", cluster=self._config.cluster, flags=err.flag.value, reason=str(err))

    async def _pipe(self, downstream: trio.abc.Stream, upstream: trio.abc.Stream) -> None:
        idle = float(self._config.idle_timeout) or math.inf
        size = int(self._config.buffer_size)
        with trio.CancelScope(deadline=trio.current_time() + idle) as scope:

            async def copy(source: trio.abc.Stream, sink: trio.abc.Stream, counter: meshcore.Counter) -> None:
                try:
                    while data := await source.receive_some(size):
                        scope.deadline = trio.current_time() + idle
                        await sink.send_all(data)
                        counter.value += len(data)
                    if isinstance(sink, trio.abc.HalfCloseableStream):
                        await sink.send_eof()
                    else:
                        scope.cancel()  # no half-close on this stream (TLS): end both ways
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    scope.cancel()  # one side reset: tear down both

            async with trio.open_nursery() as nursery:
                nursery.start_soon(copy, downstream, upstream, self._stat_rx)
                nursery.start_soon(copy, upstream, downstream, self._stat_tx)
        if scope.cancelled_caught and trio.current_time() >= scope.deadline:
            log.info("tcp_proxy_idle_timeout", cluster=self._config.cluster)


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
