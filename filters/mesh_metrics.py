"""``mesh_metrics`` and ``tcp_mesh_metrics``: Istio-style standard metrics, by source and destination.

Each request (or TCP connection) is counted with who sent it and who served it, in the
spirit of Istio's standard metrics (with meshcore's prefix, and seconds for durations, so
that ``promtool check metrics`` passes):

====================================================  =========  ======================================
``meshcore_requests_total``                           counter    HTTP and gRPC requests
``meshcore_request_duration_seconds``                 histogram  from the request head to the response's end
``meshcore_request_bytes``                            histogram  request body sizes
``meshcore_response_bytes``                           histogram  response body sizes
``meshcore_tcp_sent_bytes_total``                     counter    bytes sent to the TCP client
``meshcore_tcp_received_bytes_total``                 counter    bytes received from the TCP client
``meshcore_tcp_connections_opened_total``             counter    TCP connections opened
``meshcore_tcp_connections_closed_total``             counter    TCP connections closed
====================================================  =========  ======================================

Labels (all on by default; ``labels`` picks a subset): ``reporter`` (``source`` for the
client-side sidecar, ``destination`` for the server-side one), ``source_workload``,
``source_workload_namespace``, ``source_principal``, ``source_version``,
``destination_workload``, ``destination_workload_namespace``, ``destination_principal``,
``destination_service``, ``destination_version``, ``destination_cluster`` (the upstream
cluster), ``request_protocol`` (``http``, ``grpc``; ``tcp``), ``response_code``,
``grpc_response_status``, ``response_flags``, ``connection_security_policy``
(``mutual_tls`` or ``none``). An unknown value is ``unknown``. Beyond
``max_label_values`` distinct values, a label's new values count as ``other``.

The proxy's own identity comes from ``Snapshot.node`` (set by a control plane) or the
filter's config; the peer's from the ``x-meshcore-peer-metadata`` exchange (see
:mod:`meshcore.telemetry.peer`) or, for the source, the peer's mTLS identity.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import attrs

import meshcore
from meshcore import (
    Connection,
    FilterContext,
    HttpHandler,
    NetworkHandler,
    Request,
    Response,
    at_least,
    grpc_status_for_http,
    is_grpc,
    telemetry,
)

LABELS = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_version",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_service",
    "destination_version",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
)
TCP_LABELS = tuple(name for name in LABELS if name not in ("response_code", "grpc_response_status"))
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SIZE_BUCKETS = (1.0, 10.0, 100.0, 1000.0, 10_000.0, 100_000.0, 1_000_000.0, 10_000_000.0)
UNKNOWN = "unknown"
OTHER = "other"
HELP = {
    "requests_total": "Requests, by source and destination workload, response code and flags.",
    "request_duration_seconds": "Time from the request head to the end of the response.",
    "request_bytes": "Request body sizes in bytes.",
    "response_bytes": "Response body sizes in bytes.",
    "tcp_sent_bytes_total": "Bytes sent to TCP clients.",
    "tcp_received_bytes_total": "Bytes received from TCP clients.",
    "tcp_connections_opened_total": "TCP connections opened.",
    "tcp_connections_closed_total": "TCP connections closed.",
}


def _labels(allowed: tuple[str, ...]) -> Any:
    def check(_instance: Any, _attribute: Any, value: tuple[str, ...]) -> None:
        for name in value:
            if name not in allowed:
                msg = f"unknown label {name!r} (known: {', '.join(allowed)})"
                raise ValueError(msg)

    return check


def _ascending(_instance: Any, _attribute: Any, value: tuple[float, ...]) -> None:
    if not value or list(value) != sorted(set(value)):
        msg = f"must be a non-empty list of increasing numbers, got {list(value)}"
        raise ValueError(msg)


@attrs.frozen(kw_only=True)
class MeshMetricsConfig:
    """Config of ``mesh_metrics`` (and ``tcp_mesh_metrics``)."""

    reporter: Literal["source", "destination"] = "destination"
    """``source`` on the client's (outbound) sidecar, ``destination`` on the server's (inbound)."""
    workload: str | None = None
    """This proxy's workload when the Snapshot has no node identity (a file-configured proxy)."""
    namespace: str | None = None
    service: str | None = None
    version: str | None = None
    labels: tuple[str, ...] = attrs.field(default=LABELS, validator=_labels(LABELS))
    """The labels to keep (fewer labels, fewer series)."""
    max_label_values: int = attrs.field(default=100, validator=at_least(1))
    """Distinct values per label at most; further values are counted as ``other``."""
    duration_buckets: tuple[float, ...] = attrs.field(default=DURATION_BUCKETS, validator=_ascending)
    """Upper bounds (seconds) of the duration histogram's buckets."""
    size_buckets: tuple[float, ...] = attrs.field(default=SIZE_BUCKETS, validator=_ascending)
    """Upper bounds (bytes) of the size histograms' buckets."""
    exchange_peer_metadata: bool = True
    """Tell the peer sidecar who we are, and learn who it is (``x-meshcore-peer-metadata``)."""


class _Values:
    """The distinct values seen per label, shared across Snapshots (a proxy service)."""

    def __init__(self) -> None:
        self.seen: dict[str, set[str]] = {}

    def cap(self, label: str, value: str, limit: int) -> str:
        seen = self.seen.setdefault(label, set())
        if value in seen:
            return value
        if len(seen) >= limit:
            return OTHER
        seen.add(value)
        return value


class _Series:
    """Label sets to their metrics: the hot path is one dict lookup once a label set was seen."""

    def __init__(self, config: MeshMetricsConfig, context: FilterContext, tcp: bool) -> None:
        self.stats = context.stats
        self.config = config
        self.wanted = [name for name in (TCP_LABELS if tcp else LABELS) if name in config.labels]
        for name, text in HELP.items():
            context.stats.describe(name, text)
        services = context.services
        self.values: _Values = services.get(("mesh_metrics_values",), _Values) if services else _Values()
        self.cache: dict[tuple[str, ...], Any] = {}

    def labels(self, values: dict[str, str]) -> tuple[str, ...]:
        limit, cap = self.config.max_label_values, self.values.cap
        return tuple(cap(name, values.get(name) or UNKNOWN, limit) for name in self.wanted)


def _own(context: FilterContext, config: MeshMetricsConfig) -> telemetry.Workload:
    return telemetry.own_workload(getattr(context.snapshot, "node", None), config)


def _identity_labels(
    reporter: str, own: telemetry.Workload, peer: telemetry.Workload | None, principal: str | None
) -> dict[str, str]:
    source, destination = (own, peer) if reporter == "source" else (peer, own)
    labels = {"reporter": reporter}
    if source is not None:
        labels |= {
            "source_workload": source.workload,
            "source_workload_namespace": source.namespace,
            "source_version": source.version,
        }
    if destination is not None:
        labels |= {
            "destination_workload": destination.workload,
            "destination_workload_namespace": destination.namespace,
            "destination_service": destination.service,
            "destination_version": destination.version,
        }
    if reporter == "destination" and principal:
        labels["source_principal"] = principal
        labels["connection_security_policy"] = "mutual_tls"
    elif reporter == "destination":
        labels["connection_security_policy"] = "none"
    return labels


_PEER_CACHE_SIZE = 256
"""Distinct peer-metadata header values remembered, decoded (a mesh has few peers)."""
_KEY_CACHE_SIZE = 4096
"""Distinct (peer, principal, cluster, protocol, status, flags) seen, mapped to their metrics."""


def _take(headers: meshcore.Headers, name: bytes) -> bytes | None:
    """The first value of ``name``, every value of it removed; one scan and no copy when absent."""
    raw = headers.raw
    for n, v in raw:
        if n == name:
            headers.raw = [pair for pair in raw if pair[0] != name]
            return v
    return None


class MeshMetrics:
    """The ``mesh_metrics`` HTTP filter for one Snapshot.

    Per request it does what cannot be done once: take the peer's exchange header, and
    find the request's metrics. Both are remembered (bounded): a peer's header value
    decoded once, and the metrics of a combination of what the labels are made of (peer,
    principal, cluster, protocol, status, flags) looked up with one dict access, so the
    label values are built and capped once per combination, not once per request.
    """

    def __init__(self, config: MeshMetricsConfig, context: FilterContext) -> None:
        self.config = config
        self.reporter = config.reporter
        self.series = _Series(config, context, tcp=False)
        self.own = _own(context, config)
        self.own_header = self.own.encode()
        self.exchange = config.exchange_peer_metadata and bool(self.own_header)
        self.read_exchange = config.exchange_peer_metadata
        self._peers: dict[bytes, telemetry.Workload | None] = {}
        self._metrics_by_key: dict[tuple[Any, ...], tuple[Any, Any, Any, Any]] = {}

    def _peer(self, raw: bytes) -> telemetry.Workload | None:
        peers = self._peers
        try:
            return peers[raw]
        except KeyError:
            pass
        if len(peers) >= _PEER_CACHE_SIZE:
            peers.clear()
        peer = peers[raw] = telemetry.Workload.decode(raw)
        return peer

    async def __call__(self, request: Request, call_next: HttpHandler) -> Response:
        """Exchange peer metadata; count the request when its response has been sent."""
        info = request.info
        header = telemetry.PEER_METADATA_HEADER
        if self.reporter == "destination":
            raw = _take(request.headers, header) if self.read_exchange else None
            if raw is not None:
                peer = self._peer(raw)
                if peer is not None:
                    info.metadata["meshcore.source"] = peer
            info.metadata["meshcore.destination"] = self.own
        else:
            _take(request.headers, header)  # never pass on one we did not set
            if self.exchange:
                request.headers.raw.append((header, self.own_header))
            info.metadata["meshcore.source"] = self.own
        info.when_complete(self._record)
        response = await call_next(request)
        if self.reporter == "source":
            raw = _take(response.headers, header)
            if raw is not None and self.read_exchange:
                peer = self._peer(raw)
                if peer is not None:
                    info.metadata["meshcore.destination"] = peer
        elif self.exchange:
            _take(response.headers, header)  # the app's own is not ours to pass on
            response.headers.raw.append((header, self.own_header))
        return response

    def _record(self, request: Request, response: Response) -> None:
        info = request.info
        peer = info.metadata.get(
            "meshcore.source" if self.reporter == "destination" else "meshcore.destination"
        )
        connection = request.connection
        principal = connection.peer_principal if connection is not None else None
        grpc = is_grpc(request)
        key = (
            peer,
            principal,
            info.cluster_name,
            response.status,
            info.flag_string() if info.flags else "-",
            _grpc_status(response) if grpc else None,
        )
        metrics = self._metrics_by_key.get(key)
        if metrics is None:
            metrics = self._find_metrics(key)
        requests, duration, request_bytes, response_bytes = metrics
        requests.value += 1
        duration.observe(info_elapsed(info))
        request_bytes.observe(request.body.consumed)
        response_bytes.observe(response.body.consumed)

    def _find_metrics(self, key: tuple[Any, ...]) -> tuple[Any, Any, Any, Any]:
        """The metrics of a combination not seen lately: its labels built, capped, looked up."""
        peer, principal, cluster, status, flags, grpc_status = key
        values = _identity_labels(self.reporter, self.own, peer, principal)
        values |= {
            "destination_cluster": cluster or UNKNOWN,
            "request_protocol": "http" if grpc_status is None else "grpc",
            "response_code": str(status),
            "response_flags": flags,
        }
        if grpc_status is not None:
            values["grpc_response_status"] = grpc_status
        series = self.series
        labels = series.labels(values)
        metrics = series.cache.get(labels)
        if metrics is None:
            metrics = series.cache[labels] = self._metrics(labels)
        if len(self._metrics_by_key) >= _KEY_CACHE_SIZE:
            self._metrics_by_key.clear()
        self._metrics_by_key[key] = metrics
        return metrics

    def _metrics(self, key: tuple[str, ...]) -> tuple[Any, Any, Any, Any]:
        series = self.series
        labels = dict(zip(series.wanted, key, strict=True))
        stats, config = series.stats, self.config
        return (
            stats.counter("requests_total", **labels),
            stats.histogram("request_duration_seconds", config.duration_buckets, **labels),
            stats.histogram("request_bytes", config.size_buckets, **labels),
            stats.histogram("response_bytes", config.size_buckets, **labels),
        )


def info_elapsed(info: Any) -> float:
    """Seconds since the request head arrived."""
    return time.monotonic() - float(info.start)


def _grpc_status(response: Response) -> str:
    trailers = response.body.trailers
    for headers in (trailers, response.headers):
        if headers is not None:
            value = headers.get_raw(b"grpc-status")
            if value is not None:
                return value.decode("ascii", "replace")
    return str(int(grpc_status_for_http(response.status))) if response.status else UNKNOWN


class _CountingStream:
    """A connection's stream that counts bytes each way into two counters."""

    def __init__(self, stream: Any, received: Any, sent: Any) -> None:
        self._stream = stream
        self._received = received
        self._sent = sent

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self._stream.receive_some(max_bytes)
        self._received.value += len(data)
        return data  # type: ignore[no-any-return]

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)
        self._sent.value += len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class TcpMeshMetrics:
    """The ``tcp_mesh_metrics`` network filter for one Snapshot (put it before ``tcp_proxy``)."""

    def __init__(self, config: MeshMetricsConfig, context: FilterContext) -> None:
        self.config = config
        self.series = _Series(config, context, tcp=True)
        self.own = _own(context, config)
        self.cluster = _tcp_cluster(context)

    async def __call__(self, conn: Connection, call_next: NetworkHandler) -> None:
        """Count the connection opened and closed, and its bytes as they flow."""
        values = _identity_labels(self.config.reporter, self.own, None, conn.peer_principal)
        values |= {"destination_cluster": self.cluster, "request_protocol": "tcp", "response_flags": "-"}
        labels = dict(zip(self.series.wanted, self.series.labels(values), strict=True))
        stats = self.series.stats
        stats.counter("tcp_connections_opened_total", **labels).value += 1
        received = stats.counter("tcp_received_bytes_total", **labels)
        sent = stats.counter("tcp_sent_bytes_total", **labels)
        conn.stream = _CountingStream(conn.stream, received, sent)  # type: ignore[assignment]
        try:
            await call_next(conn)
        finally:
            stats.counter("tcp_connections_closed_total", **labels).value += 1


def _tcp_cluster(context: FilterContext) -> str:
    """The cluster of the tcp_proxy that ends this listener's chain, if there is one."""
    for listener in context.snapshot.listeners:
        if listener.name == context.listener:
            for chain in listener.filter_chains:
                for ref in chain.filters:
                    cluster = getattr(ref.config, "cluster", None)
                    if cluster:
                        return str(cluster)
    return UNKNOWN


@meshcore.hookimpl
def meshcore_http_filters() -> list[meshcore.HttpFilterType]:
    """Register ``mesh_metrics``."""
    return [
        meshcore.HttpFilterType(
            name="mesh_metrics",
            factory=MeshMetrics,
            config=MeshMetricsConfig,
            description="Istio-style request metrics by source and destination workload",
        )
    ]


@meshcore.hookimpl
def meshcore_network_filters() -> list[meshcore.NetworkFilterType]:
    """Register ``tcp_mesh_metrics``."""
    return [
        meshcore.NetworkFilterType(
            name="tcp_mesh_metrics",
            factory=TcpMeshMetrics,
            config=MeshMetricsConfig,
            description="Istio-style TCP metrics: bytes and connections by source and destination",
        )
    ]
