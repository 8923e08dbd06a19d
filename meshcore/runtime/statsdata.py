"""Metrics as plain data (``/stats?format=json``), and several processes' metrics added up.

``meshcore proxy --workers N`` runs N processes; the admin server of the group asks each
for its metrics as data and adds them up (:func:`merge`) into one :class:`Stats`, which
renders as a single process's would: counters and gauges summed, histograms bucket by
bucket.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from meshcore.runtime.stats import Counter, Gauge, Histogram, Stats

__all__ = ["merge", "stats_data"]


def stats_data(stats: Stats) -> list[dict[str, Any]]:
    """Every metric of ``stats`` as ``{"name", "labels", "kind", ...}``, sorted by name and labels.

    A counter or gauge has ``value``; a histogram ``buckets`` (upper bounds), ``counts`` (one
    more than the buckets: the last is above them all), ``count`` and ``sum``.
    """
    out: list[dict[str, Any]] = []
    for name, labels, metric in stats.items():
        item: dict[str, Any] = {"name": name, "labels": dict(labels), "kind": metric.kind}
        if isinstance(metric, Histogram):
            item.update(
                buckets=list(metric.buckets), counts=list(metric.counts), count=metric.count, sum=metric.sum
            )
        else:
            item["value"] = metric.value
        out.append(item)
    return out


def merge(parts: Iterable[Iterable[Mapping[str, Any]]], prefix: str = "meshcore") -> Stats:
    """One Stats holding the sum of several :func:`stats_data` lists.

    A metric whose kind, or histogram buckets, differ between the parts is taken from the
    first part that has it (it cannot be added up); that never happens between workers of
    one config.
    """
    total = Stats(prefix)
    for part in parts:
        for item in part:
            _add(total, item)
    return total


def _add(total: Stats, item: Mapping[str, Any]) -> None:
    name, labels, kind = str(item["name"]), {str(k): str(v) for k, v in item["labels"].items()}, item["kind"]
    try:
        if kind == Histogram.kind:
            histogram = total.histogram(name, **labels)
            buckets = tuple(item["buckets"])
            if histogram.count == 0 and histogram.buckets != buckets:
                histogram.buckets = buckets
                histogram.counts = [0] * (len(buckets) + 1)
            if histogram.buckets == buckets and len(item["counts"]) == len(histogram.counts):
                histogram.counts = [a + b for a, b in zip(histogram.counts, item["counts"], strict=True)]
                histogram.count += int(item["count"])
                histogram.sum += float(item["sum"])
        elif kind == Gauge.kind:
            total.gauge(name, **labels).value += item["value"]
        elif kind == Counter.kind:
            total.counter(name, **labels).value += item["value"]
    except TypeError:  # the same name as another kind in an earlier part: keep that one
        return
