"""Upstream clusters: endpoints, a load-balancing policy, and a connection pool per endpoint.

Clusters are updated in place when a new Snapshot arrives: endpoints that stay keep their
pools (and their idle keep-alive connections); endpoints that go are drained.
"""

from __future__ import annotations

import math
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol

import structlog
import trio

from meshcore.config import Catalog, Endpoint, Snapshot
from meshcore.config import Cluster as ClusterConfig
from meshcore.config.traffic import Locality
from meshcore.errors import ConfigError, ConfigProblem, ProtocolError, UpstreamError
from meshcore.flags import ResponseFlag
from meshcore.http.codec import NEED_DATA, Data, Informational, ResponseHead
from meshcore.http.h1 import H11ClientCodec
from meshcore.http.h1fast import FastClientCodec
from meshcore.http.messages import Body, Headers, Request, Response, Upgraded, UpstreamAttempt
from meshcore.http.semantics import strip_hop_by_hop
from meshcore.runtime.breakers import CircuitBreakers
from meshcore.runtime.filterstate import blame
from meshcore.runtime.h1exchange import RECEIVE_SIZE, H1Exchange
from meshcore.runtime.h2pool import StreamRefused, upstream_error
from meshcore.runtime.health import Checker, HealthChecking
from meshcore.runtime.host import Host, _close_now, _now
from meshcore.runtime.hostset import HostSet, node_locality
from meshcore.runtime.mirror import Mirrors
from meshcore.runtime.outlier import OutlierDetector
from meshcore.runtime.retry import RetryStats, send_with_retries
from meshcore.runtime.stats import Stats
from meshcore.runtime.tls import Secrets, client_context, material, secrets_of

if TYPE_CHECKING:
    from meshcore.config.traffic import RequestMirrorPolicy, RetryPolicy

__all__ = ["Cluster", "ClusterManager", "UpstreamError"]

log = structlog.get_logger("meshcore.upstream")

# How many times a request may go out on HTTP/2: again only when the upstream cannot have
# processed it (a stream refused).
_H2_ATTEMPTS = 3


class Picker(Protocol):
    """A load balancer's picker (see ``meshcore.filters.load_balancers``).

    ``pick(hosts, request)``: one of ``hosts`` (healthy, never empty) for ``request``, the
    :class:`~meshcore.Request` of an HTTP exchange or the :class:`~meshcore.Connection` of
    a TCP one (None when there is neither), so that a policy can hash what it needs: a
    header, a cookie, the client's address, a query parameter.
    """

    def pick(self, hosts: list[Host], request: Any = None, /) -> Host: ...


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
            return self._send_upgrade_counted(request, host, deadline)
        protocol = self.config.protocol
        if protocol == "http2" or (protocol == "auto" and request.http_version == "2"):
            return self._send_h2(request, host, deadline)
        return H1Exchange(self, host, request, deadline).run()

    async def _send_upgrade_counted(self, request: Request, host: Host, deadline: float) -> Response:
        try:
            return await self._send_upgrade(request, host, deadline)
        finally:
            host.active_requests -= 1
            self.stats_rq_active.value -= 1

    async def _send_upgrade(self, request: Request, host: Host, deadline: float) -> Response:
        """An HTTP/1.1 upgrade (WebSocket) on a connection of its own: it becomes a byte pipe."""
        assert request.upgrade is not None  # noqa: S101 - checked by the caller
        stream: trio.abc.Stream | None = None
        try:
            with trio.move_on_at(deadline):
                stream = await host.connect()
                codec: H11ClientCodec | FastClientCodec = (
                    FastClientCodec() if self.config.codec == "fast" else H11ClientCodec()
                )
                headers = [
                    (b"host", request.authority.encode("latin-1")),
                    *strip_hop_by_hop(request.headers.raw),
                    (b"connection", b"upgrade"),
                    (b"upgrade", request.upgrade.encode("latin-1")),
                ]
                head = codec.send_request_head(
                    request.method.encode(), request.path.encode("latin-1"), headers
                )
                await stream.send_all(head + codec.send_end())
                while True:
                    event = codec.next_event()
                    if event is NEED_DATA:
                        codec.receive_data(await stream.receive_some(RECEIVE_SIZE))
                        continue
                    if type(event) is Informational and event.status == HTTPStatus.SWITCHING_PROTOCOLS:
                        response = Response(101, headers=Headers.from_raw(strip_hop_by_hop(event.headers)))
                        response.upgraded = Upgraded(stream, codec.trailing_data)
                        stream = None  # the connection manager owns it now
                        return response
                    if type(event) is ResponseHead:
                        # The upstream declined the upgrade: pass its answer on, small body and all.
                        answer = event
                        parts = []
                        while True:
                            event = codec.next_event()
                            if event is NEED_DATA:
                                codec.receive_data(await stream.receive_some(RECEIVE_SIZE))
                            elif type(event) is Data:
                                parts.append(event.data)
                            else:
                                break
                        headers_out = strip_hop_by_hop(answer.headers)
                        return Response(
                            answer.status,
                            headers=Headers.from_raw(headers_out),
                            body=Body.from_bytes(b"".join(parts)),
                        )
                    if type(event) is not Informational:
                        msg = f"upstream {host.label} closed the connection before answering the upgrade"
                        raise UpstreamError(ResponseFlag.UPSTREAM_CONNECTION_TERMINATION, msg)
            self.stats_rq_timeout.value += 1
            raise UpstreamError(ResponseFlag.UPSTREAM_REQUEST_TIMEOUT, "upstream request timeout")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ProtocolError) as err:
            msg = f"upstream {host.label} failed during the upgrade: {err}"
            raise UpstreamError(ResponseFlag.UPSTREAM_CONNECTION_TERMINATION, msg) from err
        finally:
            if stream is not None:
                _close_now(stream)

    async def _send_h2(self, request: Request, host: Host, deadline: float) -> Response:
        """Forward over a multiplexed HTTP/2 connection; retry streams the upstream refused."""
        finished = False

        def finish() -> None:
            nonlocal finished
            if not finished:
                finished = True
                host.active_requests -= 1
                self.stats_rq_active.value -= 1
                host.wake_waiters()

        nursery = self.manager.nursery if self.manager is not None else None
        if nursery is None:
            finish()
            msg = "HTTP/2 upstreams need a running proxy (no nursery for their connections)"
            raise UpstreamError(ResponseFlag.UPSTREAM_CONNECTION_FAILURE, msg)
        try:
            response = await self._h2_attempts(request, host, deadline, nursery, finish)
        except (TimeoutError, StreamRefused, ConnectionResetError, trio.BrokenResourceError) as err:
            finish()
            flag, msg = upstream_error(err, host.label)
            if flag is ResponseFlag.UPSTREAM_REQUEST_TIMEOUT:
                self.stats_rq_timeout.value += 1
            raise UpstreamError(flag, msg, refused=isinstance(err, StreamRefused)) from err
        except BaseException:
            finish()
            raise
        if response is None:
            self.stats_rq_timeout.value += 1
            finish()
            raise UpstreamError(ResponseFlag.UPSTREAM_REQUEST_TIMEOUT, "upstream request timeout")
        return response

    async def _h2_attempts(
        self,
        request: Request,
        host: Host,
        deadline: float,
        nursery: trio.Nursery,
        finish: Callable[[], None],
    ) -> Response | None:
        """The response, on a new stream after each refused one; None when the deadline passed."""
        for attempt in range(_H2_ATTEMPTS):
            with trio.move_on_at(deadline) as scope:
                conn = await host.h2_pool.acquire(nursery)
                try:
                    return await conn.exchange(request, deadline, finish)
                except StreamRefused:
                    if attempt == _H2_ATTEMPTS - 1 or request.body.consumed:
                        raise
            if scope.cancelled_caught:
                return None
        msg = "unreachable"
        raise AssertionError(msg)  # pragma: no cover - the last attempt returns or raises


def _describe(host: Host, endpoint: Endpoint) -> None:
    """Give ``host`` what its config says of it (weight, priority, locality)."""
    host.weight = endpoint.weight
    host.priority = endpoint.priority
    host.locality = endpoint.locality


class ClusterManager:
    """Every cluster of the proxy by name; applies Snapshots in place."""

    def __init__(
        self,
        stats: Stats,
        picker_factory: Callable[[ClusterConfig], Picker],
        *,
        catalog: Catalog | None = None,
        checker_factory: Callable[[Any], Checker] | None = None,
    ) -> None:
        self.stats = stats
        self._picker_factory = picker_factory
        self._catalog = catalog
        self._checker_factory = checker_factory
        self.clusters: dict[str, Cluster] = {}
        self._prebuilt: dict[str, Cluster] = {}
        self.mirrors = Mirrors(self)
        self.nursery: trio.Nursery | None = None
        """Where HTTP/2 upstream connections run their reader tasks (the proxy's nursery)."""

    def get(self, name: str) -> Cluster | None:
        """The cluster called ``name``, if any."""
        return self.clusters.get(name)

    def mirror(
        self, request: Request, route: str, policies: tuple[RequestMirrorPolicy, ...], *, timeout: float
    ) -> None:
        """Send copies of ``request`` per a route's mirror policies, fire and forget (see runtime/mirror.py).

        Call it before the request's body is read: the copies are fed as it is.
        """
        self.mirrors.mirror(request, route, policies, timeout=timeout)

    async def prebuild(self, snapshot: Snapshot, *, chunk: int = 50) -> None:
        """Build the runtimes of ``snapshot``'s new clusters ahead of :meth:`prepare`, yielding between chunks.

        A thousand new clusters take tens of milliseconds to build (endpoints, breakers,
        stats): done here, ``chunk`` at a time with a checkpoint between, the loop serves
        traffic meanwhile, and :meth:`prepare` and its commit take them as they are. Nothing
        live changes: they are not in :attr:`clusters` until the commit. Only what cannot
        fail is built here (no TLS, which :meth:`prepare` builds and reports); a policy
        factory that raises is left for :meth:`prepare` to call again and report.
        """
        prebuilt: dict[str, Cluster] = {}
        for n, config in enumerate(snapshot.clusters, 1):
            if config.name in self.clusters or config.tls is not None:
                continue
            try:
                picker = self._picker_factory(config)
            except Exception:  # noqa: BLE001, S112 - prepare calls it again and reports it with its field path
                continue
            prebuilt[config.name] = Cluster(config, picker, self.stats)
            if n % chunk == 0:
                await trio.lowlevel.checkpoint()
        self._prebuilt = prebuilt

    def prepare(self, snapshot: Snapshot, secrets: Secrets | None = None) -> Callable[[], None]:
        """Build what ``snapshot``'s clusters need; return the function that applies them.

        Building may fail (a load-balancing policy's factory, a TLS file or secret, a health
        checker's factory): ConfigError with the field path, and nothing changed. The returned
        function cannot fail: it changes clusters in place (endpoints that stay keep their
        pools and health), adds new ones, drains removed ones, and (re)starts health checking
        and outlier detection where their config changed. A cluster whose config and TLS
        material (see :func:`meshcore.runtime.tls.material`) did not change is not touched;
        one whose TLS material alone changed (a rotated secret) gets a new TLS context for new
        connections.
        """
        if secrets is None:
            secrets = secrets_of(snapshot)
        prebuilt, self._prebuilt = self._prebuilt, {}
        updates: list[
            tuple[ClusterConfig, Picker, ssl.SSLContext | None, Any, list[Checker] | None, Cluster | None]
        ] = []
        for i, config in enumerate(snapshot.clusters):
            current = self.clusters.get(config.name)
            ready = prebuilt.get(config.name)
            if ready is not None and (current is not None or ready.config is not config):
                ready = None
            tls_material = material(config.tls, secrets) if config.tls is not None else None
            if (
                current is not None
                and (current.config is config or current.config == config)
                and current.tls_material == tls_material
            ):
                continue
            picker = self._picker_for(i, config, current, ready)
            if current is not None and current.tls_material == tls_material:
                tls = current.tls_context
            else:
                tls = _client_tls(i, config, secrets)
            checkers = None  # None: the background keeps running as it is (or, new, none is wanted)
            if (current is None and any(_background(config))) or (
                current is not None and _background(current.config) != _background(config)
            ):
                checkers = self._checkers(i, config)
            updates.append((config, picker, tls, tls_material, checkers, ready))
        wanted = {c.name for c in snapshot.clusters}
        local = node_locality(snapshot)

        def commit() -> None:
            for name in [n for n in self.clusters if n not in wanted]:
                removed = self.clusters.pop(name)
                removed.stop_background()
                for host in removed.hosts:
                    host.removed = True
                    host.healthy = False
                    host.close_idle()
            for config, picker, tls, tls_material, checkers, ready in updates:
                current = self.clusters.get(config.name)
                if current is None:
                    current = (
                        ready if ready is not None else Cluster(config, picker, self.stats, tls_context=tls)
                    )
                    self.clusters[config.name] = current
                    current.manager = self
                else:
                    current.update(config, picker, tls_context=tls)
                current.tls_material = tls_material
                if checkers is not None and self.nursery is not None:
                    current.start_background(self.nursery, checkers)
            for cluster in self.clusters.values():
                if cluster.local_locality != local:
                    cluster.local_locality = local
                    cluster.refresh_health()
            log.debug("clusters_applied", clusters=sorted(self.clusters))

        return commit

    def _picker_for(
        self, index: int, config: ClusterConfig, current: Cluster | None, ready: Cluster | None
    ) -> Picker:
        """The load balancer of cluster ``config``: the current one if its policy did not change, else built."""
        if current is not None and current.config.lb_policy == config.lb_policy:
            return current.picker
        if ready is not None:  # built ahead (prebuild)
            return ready.picker
        policy = config.lb_policy
        where = f"clusters[{index}].lb_policy.{policy.name}"
        with blame(where, self._catalog, "lb_policy", policy.name, "factory"):
            return self._picker_factory(config)

    def _checkers(self, index: int, config: ClusterConfig) -> list[Checker]:
        """The health checkers of a cluster's checks, built (ConfigError naming the field if one fails)."""
        checkers = []
        for j, check in enumerate(config.health_checks):
            if self._checker_factory is None:
                break
            ref = check.checker
            where = f"clusters[{index}].health_checks[{j}].{ref.name}"
            with blame(where, self._catalog, "health_checker", ref.name, "factory"):
                checkers.append(self._checker_factory(ref))
        return checkers

    def apply(self, snapshot: Snapshot) -> None:
        """Update to ``snapshot``'s clusters at once (see :meth:`prepare`)."""
        self.prepare(snapshot)()


def _client_tls(index: int, config: ClusterConfig, secrets: Secrets) -> ssl.SSLContext | None:
    """The TLS context of cluster ``config`` (the ``index``-th), built; ConfigError naming its field."""
    try:
        return client_context(config.tls, secrets) if config.tls is not None else None
    except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
        message = f"cannot build the TLS context: {err}"
        problem = ConfigProblem(path=f"clusters[{index}].tls", message=message)
        raise ConfigError([problem], stage="apply") from err


def _background(config: ClusterConfig) -> tuple[Any, ...]:
    """What health checking and outlier detection depend on."""
    return (config.health_checks, config.outlier_detection)
