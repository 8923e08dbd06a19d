"""Counters, gauges and histograms, rendered as Prometheus text or Envoy-style lines.

Metrics are created once (per Snapshot, per listener, cluster or route) and kept by the
objects that update them, so the hot path is an attribute increment: no lookup, no lock.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

__all__ = ["Counter", "Gauge", "Histogram", "Stats"]

Labels = tuple[tuple[str, str], ...]

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


Metric = Counter | Gauge | Histogram


class Stats:
    """The metrics of one proxy process, by name and labels.

    Names are Prometheus-style (``cluster_upstream_rq_total``); labels say which object
    (``cluster="backend"``). The same name and labels always give the same metric, so a new
    Snapshot keeps counting where the old one left off.
    """

    def __init__(self, prefix: str = "meshcore") -> None:
        self.prefix = prefix
        self._metrics: dict[tuple[str, Labels], Metric] = {}

    def _get(self, cls: type[Metric], name: str, labels: dict[str, str]) -> Metric:
        key = (name, tuple(sorted(labels.items())))
        metric = self._metrics.get(key)
        if metric is None:
            metric = self._metrics[key] = cls()
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

    def histogram(self, name: str, **labels: str) -> Histogram:
        """The histogram ``name`` with ``labels`` (created on first use)."""
        metric = self._get(Histogram, name, labels)
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
        """The Prometheus text exposition format (version 0.0.4)."""
        out: list[str] = []
        typed: set[str] = set()
        for name, labels, metric in self.items():
            full = f"{self.prefix}_{name}"
            if full not in typed:
                typed.add(full)
                out.append(f"# TYPE {full} {metric.kind}")
            if isinstance(metric, Histogram):
                seen = 0
                for bound, n in zip((*metric.buckets, float("inf")), metric.counts, strict=True):
                    seen += n
                    le = "+Inf" if bound == float("inf") else f"{bound:g}"
                    out.append(f"{full}_bucket{_labels((*labels, ('le', le)))} {seen}")
                out.append(f"{full}_sum{_labels(labels)} {metric.sum:g}")
                out.append(f"{full}_count{_labels(labels)} {metric.count}")
            else:
                out.append(f"{full}{_labels(labels)} {metric.value}")
        return "\n".join(out) + "\n"


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
