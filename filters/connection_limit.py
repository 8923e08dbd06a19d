"""``connection_limit``: an L4 filter that caps the connections a filter chain serves at once.

Modelled on Envoy's connection_limit filter. It counts the connections that passed it
and are still open; a connection beyond ``max_connections`` is not passed on: it is held
for ``delay`` (so that a client that reconnects at once does not spin), then closed.

The count belongs to the filter chain, across Snapshots: a Snapshot that leaves the chain
alone leaves the filter alone, and a new chain's ``connection_limit`` counts on from the one
it replaces (``carry_over``), whose connections still hold their places while they drain.
So a changed ``max_connections`` applies to the next connection, against the connections
open now. Metrics, labelled ``listener``: the gauge ``connection_limit_active`` and the
counter ``connection_limit_rejected``.
"""

from __future__ import annotations

import attrs
import structlog
import trio

import meshcore
from meshcore import Connection, Duration, FilterContext, NetworkHandler, at_least

log = structlog.get_logger("meshcore.connection_limit")


@attrs.frozen(kw_only=True)
class ConnectionLimitConfig:
    """Config of ``connection_limit``."""

    max_connections: int = attrs.field(validator=at_least(1))
    """The most connections passed on and open at once."""
    delay: Duration = Duration(0)
    """How long to hold a rejected connection before closing it (0: close at once)."""


class _Count:
    """Connections passed on and still open, shared by a filter and the ones that replace it."""

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = 0


class ConnectionLimit:
    """The ``connection_limit`` filter of one filter chain."""

    def __init__(self, config: ConnectionLimitConfig, context: FilterContext) -> None:
        self._max = config.max_connections
        self._delay = float(config.delay)
        self._listener = context.listener
        self._count = _Count()
        self._stat_active = context.stats.gauge("connection_limit_active", listener=context.listener)
        self._stat_rejected = context.stats.counter("connection_limit_rejected", listener=context.listener)

    @property
    def active(self) -> int:
        """How many connections this filter (and those it replaced) passed on that are still open."""
        return self._count.active

    def carry_over(self, previous: object) -> None:
        """Count on from the ``connection_limit`` this one replaces: its connections are still open."""
        if isinstance(previous, ConnectionLimit):
            self._count = previous._count  # noqa: SLF001 - the filter it replaces

    async def __call__(self, conn: Connection, call_next: NetworkHandler) -> None:
        """Pass ``conn`` on while under the limit; past it, hold it for the delay and close it."""
        count = self._count
        if count.active >= self._max:
            self._stat_rejected.value += 1
            log.info(
                "connection_limit_rejected", listener=self._listener, active=count.active, peer=conn.peer
            )
            if self._delay:
                await trio.sleep(self._delay)
            await conn.stream.aclose()
            return
        count.active += 1
        self._stat_active.value += 1
        try:
            await call_next(conn)
        finally:
            count.active -= 1
            self._stat_active.value -= 1


@meshcore.hookimpl
def meshcore_network_filters() -> list[meshcore.NetworkFilterType]:
    """Register ``connection_limit``."""
    return [
        meshcore.NetworkFilterType(
            name="connection_limit",
            factory=ConnectionLimit,
            config=ConnectionLimitConfig,
            description="caps the open connections of a filter chain; closes the ones past it",
        )
    ]
