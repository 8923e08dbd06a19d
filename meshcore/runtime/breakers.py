"""Circuit breakers of a cluster: limits on connections, pending and active requests, retries.

Envoy's semantics. Past ``max_connections`` no new connection is opened: a request that
finds none free waits for one, as a *pending* request; past ``max_pending_requests`` (or
``max_requests`` in flight) a request fails at once with 503 and the ``UO`` flag instead
of queueing. Past ``max_retries`` (or the retry budget: a share of the requests in flight,
with a floor) a retry is not made and the last answer stands. Nothing waits without bound.

Each limit has an overflow counter (``cluster_upstream_cx_overflow``,
``cluster_upstream_rq_pending_overflow``, ``cluster_upstream_rq_overflow``,
``cluster_upstream_rq_retry_overflow``) and a gauge of the room left,
``cluster_circuit_breakers_remaining{limit="connections|pending|requests|retries"}``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

from meshcore.config.traffic import CircuitBreakers as CircuitBreakersConfig
from meshcore.errors import UpstreamError
from meshcore.flags import ResponseFlag
from meshcore.runtime.stats import Gauge, Stats

__all__ = ["CircuitBreakers"]


class CircuitBreakers:
    """The limits of one cluster and what counts against them.

    Args:
        name: the cluster's name (labels and messages).
        config: the limits.
        stats: where the overflow counters and remaining gauges live.
        active_requests: the cluster's gauge of requests in flight (counted by the cluster).
    """

    def __init__(
        self, name: str, config: CircuitBreakersConfig, stats: Stats, active_requests: Gauge
    ) -> None:
        self.name = name
        self.config = config
        self.connections = 0
        self.pending = 0
        self.retries = 0
        self._active = active_requests
        labels = {"cluster": name}
        self.cx_overflow = stats.counter("cluster_upstream_cx_overflow", **labels)
        self.pending_overflow = stats.counter("cluster_upstream_rq_pending_overflow", **labels)
        self.rq_overflow = stats.counter("cluster_upstream_rq_overflow", **labels)
        self.retry_overflow = stats.counter("cluster_upstream_rq_retry_overflow", **labels)
        self.pending_active = stats.computed_gauge(
            "cluster_upstream_rq_pending_active", lambda: self.pending, **labels
        )
        for limit, read in (
            ("connections", lambda: self.config.max_connections - self.connections),
            ("pending", lambda: self.config.max_pending_requests - self.pending),
            ("requests", lambda: self.config.max_requests - self._active.value),
            ("retries", lambda: self.max_active_retries() - self.retries),
        ):
            stats.computed_gauge("cluster_circuit_breakers_remaining", read, limit=limit, **labels)

    def _overflow(self, what: str, limit: int) -> UpstreamError:
        return UpstreamError(
            ResponseFlag.UPSTREAM_OVERFLOW, f"cluster {self.name!r} is at its {what} limit ({limit})"
        )

    def check_request(self) -> None:
        """Before a request goes upstream: UpstreamError(UO) if ``max_requests`` are in flight."""
        limit = self.config.max_requests
        if self._active.value >= limit:
            self.rq_overflow.value += 1
            error = self._overflow("active requests", limit)
            raise error

    def room_for_connection(self) -> bool:
        """Whether one more connection may be opened; counts an overflow when not."""
        if self.connections < self.config.max_connections:
            return True
        self.cx_overflow.value += 1
        return False

    def connection_opened(self) -> None:
        """A connection is being opened (count it from the connect on)."""
        self.connections += 1

    def connection_closed(self) -> None:
        """A connection counted by :meth:`connection_opened` is closed (or failed to open)."""
        self.connections -= 1

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Count a request waiting for a connection; UpstreamError(UO) when too many wait already."""
        limit = self.config.max_pending_requests
        if self.pending >= limit:
            self.pending_overflow.value += 1
            error = self._overflow("pending requests", limit)
            raise error
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    def max_active_retries(self) -> int:
        """Retries allowed in flight now: ``max_retries``, or the budget of the requests in flight."""
        budget = self.config.retry_budget
        if budget is None:
            return self.config.max_retries
        share = budget.budget_percent / 100 * (self._active.value + self.pending)
        return max(budget.min_retry_concurrency, math.floor(share))

    def try_retry(self) -> bool:
        """Take a retry slot; False (an overflow counted) if the limit or budget is spent."""
        if self.retries >= self.max_active_retries():
            self.retry_overflow.value += 1
            return False
        self.retries += 1
        return True

    def retry_done(self) -> None:
        """Give back a slot taken by :meth:`try_retry` (the retry's attempt ended)."""
        self.retries -= 1
