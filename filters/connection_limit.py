"""``connection_limit``: an L4 filter that caps the connections a filter chain serves at once.

Modelled on Envoy's connection_limit filter. It counts the connections that passed it
and are still open; a connection beyond ``max_connections`` is not passed on: it is held
for ``delay`` (so that a client that reconnects at once does not spin), then closed.

The count belongs to one filter instance, that is one filter chain for one Snapshot: a
new Snapshot starts a new count for new connections, while those on the old chain drain.
Metrics, labelled ``listener``: the gauge ``connection_limit_active`` and the counter
``connection_limit_rejected``.
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


class ConnectionLimit:
    """The ``connection_limit`` filter for one filter chain and Snapshot."""

    def __init__(self, config: ConnectionLimitConfig, context: FilterContext) -> None:
        self._max = config.max_connections
        self._delay = float(config.delay)
        self._listener = context.listener
        self._active = 0
        self._stat_active = context.stats.gauge("connection_limit_active", listener=context.listener)
        self._stat_rejected = context.stats.counter("connection_limit_rejected", listener=context.listener)

    @property
    def active(self) -> int:
        """How many connections this filter passed on that are still open."""
        return self._active

    async def __call__(self, conn: Connection, call_next: NetworkHandler) -> None:
        """Pass ``conn`` on while under the limit; past it, hold it for the delay and close it."""
        if self._active >= self._max:
            self._stat_rejected.value += 1
            log.info(
                "connection_limit_rejected", listener=self._listener, active=self._active, peer=conn.peer
            )
            if self._delay:
                await trio.sleep(self._delay)
            await conn.stream.aclose()
            return
        self._active += 1
        self._stat_active.value += 1
        try:
            await call_next(conn)
        finally:
            self._active -= 1
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
