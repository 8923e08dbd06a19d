"""Counters, gauges and histograms, rendered as Prometheus text or Envoy-style lines.

Metrics are created once (per Snapshot, per listener, cluster or route) and kept by the
objects that update them, so the hot path is an attribute increment: no lookup, no lock.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator

__all__ = ["ComputedGauge", "Counter", "Gauge", "Histogram", "Stats"]

Labels = tuple[tuple[str, str], ...]

HELP = {
    "cluster_upstream_cx_active": "Open connections to the cluster's endpoints.",
    "cluster_upstream_cx_connect_fail": "Connections to the cluster's endpoints that failed.",
    "cluster_upstream_cx_reused": "Requests sent on a kept-alive connection.",
    "cluster_upstream_cx_total": "Connections opened to the cluster's endpoints.",
    "cluster_upstream_rq_active": "Requests in flight to the cluster.",
    "cluster_upstream_rq_timeout": "Requests to the cluster that timed out.",
    "cluster_upstream_rq_total": "Requests sent to the cluster.",
    "cluster_upstream_ssl_handshake": "TLS handshakes with the cluster's endpoints (one per new TLS connection).",
    "cluster_upstream_ssl_session_reused": "TLS handshakes with the cluster's endpoints that resumed a session.",
    "config_snapshots_applied": "Snapshots applied.",
    "config_snapshots_rejected": "Snapshots rejected (the last good one kept serving).",
    "http_downstream_grpc_status": "gRPC calls by the status they ended with.",
    "http_downstream_rq_active": "Requests in flight on the listener.",
    "http_downstream_rq_rejected": "Requests rejected before routing (bad framing, headers timeout).",
    "http_downstream_rq_rx_bytes_total": "Request body bytes received.",
    "http_downstream_rq_time_ms": "Time from the request head to the end of the response.",
    "http_downstream_rq_total": "Requests received on the listener.",
    "http_downstream_rq_tx_bytes_total": "Response body bytes sent.",
    "http_downstream_rq_xx": "Responses by status class.",
    "listener_ssl_handshake": "TLS handshakes completed on the listener (one per TLS connection).",
    "listener_ssl_session_reused": "TLS handshakes on the listener that resumed a session.",
    "route_rq_total": "Requests that took the route.",
    "route_rq_xx": "Responses by status class, per route.",
    "tcp_downstream_cx_total": "TCP connections proxied.",
    "tcp_downstream_rx_bytes_total": "Bytes received from TCP clients.",
    "tcp_downstream_tx_bytes_total": "Bytes sent to TCP clients.",
    "tcp_upstream_cx_fail": "TCP connections that could not reach an endpoint.",
    # The mesh metrics (meshcore.filters.mesh_metrics): here too, so that the sum of several
    # workers' metrics (statsdata.merge) keeps their help.
    "requests_total": "Requests, by source and destination workload, response code and flags.",
    "request_duration_seconds": "Time from the request head to the end of the response.",
    "request_bytes": "Request body sizes in bytes.",
    "response_bytes": "Response body sizes in bytes.",
    "tcp_sent_bytes_total": "Bytes sent to TCP clients.",
    "tcp_received_bytes_total": "Bytes received from TCP clients.",
    "tcp_connections_opened_total": "TCP connections opened.",
    "tcp_connections_closed_total": "TCP connections closed.",
    "access_log_lines_written_total": "Access-log lines written.",
    "access_log_lines_dropped_total": "Access-log lines dropped: the sink was too slow or failed.",
    "access_log_write_errors_total": "Access-log writes that failed.",
    "tracing_exports_failed_total": "Span exports that failed (refused, timed out, or answered non-2xx).",
    "tracing_spans_dropped_total": "Spans dropped: the export queue was full, or their export failed.",
    "tracing_spans_exported_total": "Spans a collector took.",
}
"""Help texts of the built-in metrics (``Stats.describe`` adds others)."""

# Latency buckets in milliseconds.
DEFAULT_BUCKETS = (0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)


class Counter:
    """A monotonically increasing count. Update with ``counter.value += 1``."""

    __slots__ = ("value",)
    kind = "counter"

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        """Add ``amount``."""
        self.value += amount


class Gauge:
    """A value that goes up and down (active connections)."""

    __slots__ = ("value",)
    kind = "gauge"

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        """Add ``amount``."""
        self.value += amount

    def dec(self, amount: int = 1) -> None:
        """Subtract ``amount``."""
        self.value -= amount


class ComputedGauge:
    """A gauge whose value is computed when it is read (how close a limit is), never updated."""

    __slots__ = ("_read",)
    kind = "gauge"

    def __init__(self, read: Callable[[], int | float]) -> None:
        self._read = read

    @property
    def value(self) -> int | float:
        """The value now."""
        return self._read()


class Histogram:
    """A distribution over fixed buckets (milliseconds by default)."""

    __slots__ = ("buckets", "count", "counts", "sum")
    kind = "histogram"

    def __init__(self, buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Record one observation."""
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.count += 1
        self.sum += value

    def quantile(self, q: float) -> float:
        """An estimate of quantile ``q`` (the upper bound of its bucket)."""
        if not self.count:
            return 0.0
        target = q * self.count
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= target:
                return self.buckets[i] if i < len(self.buckets) else float("inf")
        return float("inf")


Metric = Counter | Gauge | ComputedGauge | Histogram


class Stats:
    """The metrics of one proxy process, by name and labels.

    Names are Prometheus-style (``cluster_upstream_rq_total``); labels say which object
    (``cluster="backend"``). The same name and labels always give the same metric, so a new
    Snapshot keeps counting where the old one left off.
    """

    def __init__(self, prefix: str = "meshcore") -> None:
        self.prefix = prefix
        self._metrics: dict[tuple[str, Labels], Metric] = {}
        self._help: dict[str, str] = dict(HELP)

    def describe(self, name: str, text: str) -> None:
        """Set the help text of metric ``name`` (the ``# HELP`` line of the exposition)."""
        self._help[name] = text

    def _get(
        self,
        cls: type[Counter | Gauge | Histogram],  # a ComputedGauge is made by computed_gauge only
        name: str,
        labels: dict[str, str],
        buckets: tuple[float, ...] | None = None,
    ) -> Metric:
        key = (name, tuple(sorted(labels.items())))
        metric = self._metrics.get(key)
        if metric is None:
            metric = self._metrics[key] = Histogram(buckets) if buckets is not None else cls()
        elif not isinstance(metric, cls):
            msg = f"metric {name!r} is a {metric.kind}, not a {cls.kind}"
            raise TypeError(msg)
        return metric

    def counter(self, name: str, **labels: str) -> Counter:
        """The counter ``name`` with ``labels`` (created on first use)."""
        metric = self._get(Counter, name, labels)
        assert isinstance(metric, Counter)  # noqa: S101 - narrowed by _get
        return metric

    def gauge(self, name: str, **labels: str) -> Gauge:
        """The gauge ``name`` with ``labels`` (created on first use)."""
        metric = self._get(Gauge, name, labels)
        assert isinstance(metric, Gauge)  # noqa: S101 - narrowed by _get
        return metric

    def computed_gauge(self, name: str, read: Callable[[], int | float], **labels: str) -> ComputedGauge:
        """The gauge ``name`` with ``labels``, read from ``read()`` (replacing an earlier one)."""
        key = (name, tuple(sorted(labels.items())))
        current = self._metrics.get(key)
        if current is not None and current.kind != "gauge":
            msg = f"metric {name!r} is a {current.kind}, not a gauge"
            raise TypeError(msg)
        metric = self._metrics[key] = ComputedGauge(read)
        return metric

    def histogram(self, name: str, buckets: tuple[float, ...] | None = None, /, **labels: str) -> Histogram:
        """The histogram ``name`` with ``labels`` (created on first use, with ``buckets`` if given).

        Every series of one name should have the same buckets: Prometheus sums them bucket by
        bucket (across labels, and across ``--workers``).
        """
        metric = self._get(Histogram, name, labels, tuple(sorted(buckets)) if buckets is not None else None)
        assert isinstance(metric, Histogram)  # noqa: S101 - narrowed by _get
        return metric

    def items(self) -> Iterator[tuple[str, Labels, Metric]]:
        """Every metric, sorted by name and labels."""
        for (name, labels), metric in sorted(self._metrics.items(), key=lambda kv: kv[0]):
            yield name, labels, metric

    def value(self, name: str, **labels: str) -> int | float:
        """The current value of a counter or gauge (0 if it does not exist): for tests and tools."""
        metric = self._metrics.get((name, tuple(sorted(labels.items()))))
        if metric is None:
            return 0
        return metric.count if isinstance(metric, Histogram) else metric.value

    def render_text(self) -> str:
        """Envoy-style lines: ``cluster.backend.upstream_rq_total: 5``."""
        lines = []
        for name, labels, metric in self.items():
            scope, _, rest = name.partition("_")
            by = dict(labels)
            code_class = by.pop("code_class", None)
            if code_class is not None:
                rest = rest.replace("_xx", f"_{code_class}")
            dotted = ".".join([scope, *by.values(), rest])
            if isinstance(metric, Histogram):
                p50, p99 = metric.quantile(0.5), metric.quantile(0.99)
                lines.append(f"{dotted}: count={metric.count} sum={metric.sum:.3f} P50={p50:g} P99={p99:g}")
            else:
                lines.append(f"{dotted}: {metric.value}")
        return "\n".join(lines) + "\n"

    def render_prometheus(self) -> str:
        """The Prometheus text exposition format (version 0.0.4), clean for ``promtool check metrics``.

        Every family has ``# HELP`` and ``# TYPE``; a counter's name ends in ``_total`` (added
        when its stored name lacks it); a histogram stored in milliseconds (``*_ms``) is
        exposed in seconds (``*_seconds``), Prometheus's base unit.
        """
        out: list[str] = []
        typed: set[str] = set()
        for name, labels, metric in self.items():
            full, scale = _exposed_name(f"{self.prefix}_{name}", metric)
            if full not in typed:
                typed.add(full)
                text = self._help.get(name) or f"{name.replace('_', ' ')} (undocumented)"
                out.append(f"# HELP {full} {_escape_help(text)}")
                out.append(f"# TYPE {full} {metric.kind}")
            if isinstance(metric, Histogram):
                seen = 0
                for bound, n in zip((*metric.buckets, float("inf")), metric.counts, strict=True):
                    seen += n
                    le = "+Inf" if bound == float("inf") else f"{bound * scale:g}"
                    out.append(f"{full}_bucket{_labels((*labels, ('le', le)))} {seen}")
                out.append(f"{full}_sum{_labels(labels)} {metric.sum * scale:g}")
                out.append(f"{full}_count{_labels(labels)} {metric.count}")
            else:
                out.append(f"{full}{_labels(labels)} {metric.value}")
        return "\n".join(out) + "\n"


def _exposed_name(full: str, metric: Metric) -> tuple[str, float]:
    """The exposed name of a metric and the factor its values are scaled by."""
    if isinstance(metric, Counter) and not full.endswith("_total"):
        return f"{full}_total", 1.0
    if isinstance(metric, Histogram) and full.endswith("_ms"):
        return f"{full[:-3]}_seconds", 0.001
    return full, 1.0


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
