"""Upstream clusters: a named group of endpoints, their membership and health, and sending to them.

A :class:`Cluster` is updated in place when a new Snapshot arrives: endpoints that stay
keep their pools (and their idle keep-alive connections) and their health; endpoints that
go are drained. It chooses an endpoint with its load balancer (a :class:`Picker`) among
the candidates its health, priorities and localities leave (:mod:`meshcore.runtime.hostset`),
and sends a request there: HTTP/1.1 over the endpoint's pool (:mod:`meshcore.runtime.h1exchange`),
HTTP/2 (:mod:`meshcore.runtime.h2exchange`), an upgrade (:mod:`meshcore.runtime.upgrade`),
or for TCP a raw connection. Every cluster of a proxy, and applying Snapshots to them, is
:mod:`meshcore.runtime.cluster_manager`.
"""

from __future__ import annotations

import math
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol

import trio

from meshcore.config import Cluster as ClusterConfig
from meshcore.config import Endpoint
from meshcore.config.traffic import Locality
from meshcore.errors import UpstreamError
from meshcore.flags import ResponseFlag
from meshcore.http.messages import Request, Response, UpstreamAttempt
from meshcore.runtime.breakers import CircuitBreakers
from meshcore.runtime.h1exchange import H1Exchange
from meshcore.runtime.h2exchange import send_h2
from meshcore.runtime.health import Checker, HealthChecking
from meshcore.runtime.host import Host, _now
from meshcore.runtime.hostset import HostSet
from meshcore.runtime.outlier import OutlierDetector
from meshcore.runtime.retry import RetryStats, send_with_retries
from meshcore.runtime.stats import Stats
from meshcore.runtime.upgrade import send_upgrade

if TYPE_CHECKING:
    from meshcore.config.traffic import RetryPolicy
    from meshcore.runtime.cluster_manager import ClusterManager

__all__ = ["Cluster", "ClusterManager", "Picker", "UpstreamError"]


class Picker(Protocol):
    """A load balancer's picker (see ``meshcore.filters.load_balancers``).

    ``pick(hosts, request)``: one of ``hosts`` (healthy, never empty) for ``request``, the
    :class:`~meshcore.Request` of an HTTP exchange or the :class:`~meshcore.Connection` of
    a TCP one (None when there is neither), so that a policy can hash what it needs: a
    header, a cookie, the client's address, a query parameter.
    """

    def pick(self, hosts: list[Host], request: Any = None, /) -> Host:
        """One of ``hosts`` for ``request`` (see the class)."""
        ...


class Cluster:
    """A named group of endpoints behind one load balancer, updated in place.

    Its endpoints' health (active checks, outlier ejections) and its priorities and
    localities decide, once per change, the candidates the load balancer is given (see
    :mod:`meshcore.runtime.hostset`); its circuit breakers bound what is sent and waits.
    """

    def __init__(
        self,
        config: ClusterConfig,
        picker: Picker,
        stats: Stats,
        *,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.name = config.name
        self.config = config
        self.picker = picker
        self.stats = stats
        self.hosts: list[Host] = []
        self.host_set: HostSet[Host] = HostSet([], [], panic=False)
        self.tls_context: ssl.SSLContext | None = None
        self.tls_material: Any = None
        """What ``tls_context`` is made of (see :func:`meshcore.runtime.tls.material`)."""
        self.manager: ClusterManager | None = None
        self.local_locality: Locality | None = None
        self.outlier: OutlierDetector | None = None
        self.health: HealthChecking | None = None
        self._background: trio.CancelScope | None = None
        self._observe: Callable[[Host, float], None] | None = None
        self._health_waiters = trio.lowlevel.ParkingLot()
        labels = {"cluster": config.name}
        self.stats_rq_total = stats.counter("cluster_upstream_rq_total", **labels)
        self.stats_rq_timeout = stats.counter("cluster_upstream_rq_timeout", **labels)
        self.stats_cx_total = stats.counter("cluster_upstream_cx_total", **labels)
        self.stats_cx_reused = stats.counter("cluster_upstream_cx_reused", **labels)
        self.stats_cx_connect_fail = stats.counter("cluster_upstream_cx_connect_fail", **labels)
        self.stats_ssl_handshake = stats.counter("cluster_upstream_ssl_handshake", **labels)
        """TLS handshakes completed with endpoints (one per new TLS connection, never per request)."""
        self.stats_ssl_session_reused = stats.counter("cluster_upstream_ssl_session_reused", **labels)
        """Of them, those that resumed an earlier session (no certificate exchange, no key agreement)."""
        self.stats_cx_active = stats.gauge("cluster_upstream_cx_active", **labels)
        self.stats_rq_active = stats.gauge("cluster_upstream_rq_active", **labels)
        self.stats_healthy = stats.computed_gauge(
            "cluster_membership_healthy", lambda: sum(1 for h in self.hosts if h.healthy), **labels
        )
        self.breakers = CircuitBreakers(config.name, config.circuit_breakers, stats, self.stats_rq_active)
        self.retry_stats = RetryStats(stats, config.name)
        self.update(config, picker, tls_context=tls_context)

    def update(self, config: ClusterConfig, picker: Picker, *, tls_context: ssl.SSLContext | None) -> None:
        """Apply a new config: keep the pools (and health) of endpoints that stay.

        ``picker`` and ``tls_context`` are built by the caller (they can fail, this cannot):
        the same objects as before when the policy and TLS settings did not change, so a
        round robin carries on where it was. New connections take ``tls_context``; pooled
        ones keep theirs.
        """
        self.config = config
        self.picker = picker
        self._observe = getattr(picker, "observe", None)
        self.breakers.config = config.circuit_breakers
        self.tls_context = tls_context
        # By address, in order: an address given twice has two hosts, each kept in its place.
        old: dict[tuple[str, int], list[Host]] = {}
        for current in self.hosts:
            old.setdefault(current.address, []).append(current)
        hosts = []
        for endpoint in config.endpoints:
            key = (endpoint.address.host, endpoint.address.port)
            same = old.get(key)
            host = same.pop(0) if same else Host(self, *key, endpoint.weight)
            _describe(host, endpoint)
            hosts.append(host)
        for gone in (h for left in old.values() for h in left):
            gone.removed = True
            gone.healthy = False
            gone.close_idle()
        self.hosts = hosts
        if self.outlier is not None:
            self.outlier.hosts_changed()
        if self.health is not None:
            self.health.hosts_changed()
        self.refresh_health()

    def refresh_health(self) -> None:
        """Recompute every endpoint's health and the load balancer's candidates (after a change)."""
        now = _now()
        for host in self.hosts:
            healthy = not (host.failed_active_hc or host.ejected or host.removed)
            if healthy and not host.healthy:
                host.ready_since = now
            host.healthy = healthy
        config = self.config
        local = None
        if config.locality_lb is not None and config.locality_lb.enabled:
            local = config.locality_lb.local or self.local_locality
        self.host_set = HostSet.build(
            self.hosts,
            panic_threshold=config.healthy_panic_threshold,
            overprovisioning=config.overprovisioning_factor,
            local=local,
        )
        self._health_waiters.unpark_all()

    async def wait_health_change(self) -> None:
        """Wait until the endpoints' health is next recomputed (for tests and tools)."""
        await self._health_waiters.park()

    # -- background: health checks and outlier detection -----------------------------------

    def start_background(self, nursery: trio.Nursery, checkers: Sequence[Checker]) -> None:
        """(Re)start active health checks and outlier detection as the config asks, in ``nursery``.

        ``checkers`` are the health checks' checkers, one per check, built beforehand.
        """
        self.stop_background()
        config = self.config
        if config.outlier_detection is not None:
            self.outlier = OutlierDetector(self, config.outlier_detection, self.stats)
        if config.health_checks and checkers:
            self.health = HealthChecking(self, config.health_checks, checkers, self.stats)
        self.refresh_health()
        if self.outlier is None and self.health is None:
            return
        scope = self._background = trio.CancelScope()
        outlier, health = self.outlier, self.health

        async def background() -> None:
            with scope:
                async with trio.open_nursery() as tasks:
                    if outlier is not None:
                        tasks.start_soon(outlier.run)
                    if health is not None:
                        tasks.start_soon(health.run)

        nursery.start_soon(background)

    def stop_background(self) -> None:
        """Stop health checks and outlier detection; forget what they found."""
        if self._background is not None:
            self._background.cancel()
            self._background = None
        self.outlier = self.health = None
        for host in self.hosts:
            host.failed_active_hc = host.ejected = host.active_hc_seen = False

    # -- choosing an endpoint ---------------------------------------------------------------

    def pick(self, request: Any = None, *, exclude: Collection[Host] = (), tries: int = 1) -> Host:
        """An endpoint chosen by the load balancer among the candidates; UpstreamError(UH) if none.

        Args:
            request: what the policy may look at: the Request, or for TCP the Connection.
            exclude: endpoints to avoid (tried already by this request), where others exist.
            tries: how many picks are made to avoid them before taking the next candidate.
        """
        candidates = self.host_set.candidates()
        if not candidates:
            msg = f"cluster {self.name!r} has no healthy endpoint"
            raise UpstreamError(ResponseFlag.NO_HEALTHY_UPSTREAM, msg)
        host = self.picker.pick(candidates, request)
        if exclude and host in exclude:
            for _ in range(tries - 1):
                host = self.picker.pick(candidates, request)
                if host not in exclude:
                    return host
            # Walk on from it, as a hash ring would, to the next endpoint not tried yet.
            start = candidates.index(host) if host in candidates else 0
            for i in range(1, len(candidates)):
                other = candidates[(start + i) % len(candidates)]
                if other not in exclude:
                    return other
        return host

    @asynccontextmanager
    async def connect(self, connection: Any = None) -> AsyncIterator[tuple[trio.abc.Stream, Host]]:
        """A raw transport to an endpoint chosen for ``connection``, for L4 proxying; closed on exit."""
        host = self.pick(connection)
        if not self.breakers.room_for_connection():
            limit = self.config.circuit_breakers.max_connections
            msg = f"cluster {self.name!r} is at its connections limit ({limit})"
            raise UpstreamError(ResponseFlag.UPSTREAM_OVERFLOW, msg)
        self.breakers.connection_opened()
        try:
            stream = await host.connect()
        except BaseException:
            self.breakers.connection_closed()
            if self.outlier is not None:
                self.outlier.report(host, None, ResponseFlag.UPSTREAM_CONNECTION_FAILURE)
            raise
        host.active_requests += 1
        self.stats_cx_active.value += 1
        try:
            yield stream, host
        finally:
            host.active_requests -= 1
            self.stats_cx_active.value -= 1
            self.breakers.connection_closed()
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    def send(
        self,
        request: Request,
        *,
        timeout: float,
        retry_policy: RetryPolicy | None = None,
    ) -> Awaitable[Response]:
        """Forward ``request`` to an endpoint; await the response, its body streaming.

        ``timeout`` (seconds, 0 for none) bounds the whole exchange, body included: past it
        the response head fails with UT, or the body read raises UpstreamError(UT). With a
        ``retry_policy``, failed attempts are retried within it (see :mod:`meshcore.runtime.retry`).

        A plain function handing back the attempt's coroutine (``await cluster.send(...)``
        as before): a coroutine awaiting it would add a frame that every suspension of the
        request unwinds and resumes.
        """
        deadline = trio.current_time() + timeout if timeout else math.inf
        if retry_policy is not None and request.upgrade is None:
            return send_with_retries(self, request, retry_policy, deadline)
        return self.attempt(request, self.pick(request), deadline)

    async def attempt(self, request: Request, host: Host, deadline: float) -> Response:
        """One try of ``request`` at ``host`` before ``deadline``; its result feeds outlier detection.

        Raises:
            UpstreamError: it failed without a response (UO past a circuit breaker).
        """
        info = request.info
        info.cluster_name = self.name
        info.upstream_address = host.label
        # One record per attempt, retries included: tracing and access logs read them.
        record = UpstreamAttempt(len(info.attempts) + 1, self.name, host.label)
        info.attempts.append(record)
        if info.on_attempt is not None:
            info.on_attempt(request, record)
        observe = self._observe
        started = trio.current_time() if observe is not None else 0.0  # for latency-aware balancers
        try:
            self.breakers.check_request()
            response = await self._send_to(request, host, deadline)
        except UpstreamError as err:
            record.flag = err.flag
            record.end = time.monotonic()
            if self.outlier is not None:
                self.outlier.report(host, None, err.flag)
            if info.on_attempt is not None:
                info.on_attempt(request, record)
            raise
        record.status = response.status
        record.end = time.monotonic()
        if self.outlier is not None:
            self.outlier.report(host, response.status)
        if observe is not None:
            observe(host, trio.current_time() - started)
        if info.on_attempt is not None:
            info.on_attempt(request, record)
        return response

    def _send_to(self, request: Request, host: Host, deadline: float) -> Awaitable[Response]:
        # A plain function handing back the exchange's coroutine (the exchange releases its
        # connection itself however it ends): one frame less at each wait of the request.
        self.stats_rq_total.value += 1
        host.active_requests += 1
        self.stats_rq_active.value += 1
        if request.upgrade is not None:
            return send_upgrade(self, request, host, deadline)
        protocol = self.config.protocol
        if protocol == "http2" or (protocol == "auto" and request.http_version == "2"):
            return send_h2(self, request, host, deadline)
        return H1Exchange(self, host, request, deadline).run()


def _describe(host: Host, endpoint: Endpoint) -> None:
    """Give ``host`` what its config says of it (weight, priority, locality)."""
    host.weight = endpoint.weight
    host.priority = endpoint.priority
    host.locality = endpoint.locality


def __getattr__(name: str) -> Any:
    """``ClusterManager``, importable from here as before it moved to :mod:`meshcore.runtime.cluster_manager`.

    Imported when asked for, not at the top: that module imports this one.
    """
    if name == "ClusterManager":
        from meshcore.runtime.cluster_manager import ClusterManager  # noqa: PLC0415 - see above

        return ClusterManager
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
