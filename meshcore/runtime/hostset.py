"""Which endpoints a cluster's load balancer chooses from: health, priorities, localities, panic.

Recomputed when an endpoint's health changes or the endpoints change, never per request;
per request, :meth:`HostSet.candidates` is a list lookup (and one random draw when several
priority levels share the traffic).

Envoy's semantics:

- Endpoints are grouped into *levels*: by their ``priority``, then (with ``locality_lb``)
  by their distance from the proxy's locality (same subzone, zone, region, elsewhere), as
  Istio turns localities into priorities.
- A level's *health* is its share of healthy endpoints times the overprovisioning factor
  (1.4), at most 100%. Level 0 takes the traffic its health allows, the next level the
  rest of it up to its own health, and so on; when the levels' healths add up to less than
  100%, their loads are scaled up to fill it.
- *Panic*: when that sum is below ``healthy_panic_threshold`` (50% by default), health no
  longer tells good endpoints from bad (a mass failure, or a flaky detector), so every
  endpoint of every level is used again.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

from meshcore.config.traffic import Locality

_RANDOM = random.Random()  # noqa: S311 - load spreading, not cryptography
"""One random source for every host set: seeding one per set (from os.urandom) cost a third of
building a cluster (bench/config_growth.py, 1,000 clusters)."""

__all__ = ["LOCALITY_LABELS", "HostSet", "Member", "node_locality"]


class Member(Protocol):
    """What the host set needs to know of an endpoint."""

    @property
    def healthy(self) -> bool:
        """Whether it may be chosen."""
        ...

    @property
    def priority(self) -> int:
        """Its priority (0 first)."""
        ...

    @property
    def locality(self) -> Locality | None:
        """Where it runs, if known."""
        ...


Host = TypeVar("Host", bound=Member)

_FAR = 3  # the distance of an endpoint with no locality (or of every endpoint without locality_lb)


class HostSet(Generic[Host]):
    """The endpoints to choose from, computed once per health change.

    Attributes:
        levels: the healthy endpoints of each level that takes traffic, in order.
        panic: whether panic mode is on (every endpoint is a candidate).
        loads: the share of traffic of each level, in percent (same order as ``levels``).
    """

    __slots__ = ("_cumulative", "_random", "levels", "loads", "panic")

    def __init__(self, levels: list[list[Host]], loads: list[float], *, panic: bool) -> None:
        self.levels = levels
        self.loads = loads
        self.panic = panic
        self._cumulative: list[float] = []
        total = 0.0
        for load in loads:
            total += load
            self._cumulative.append(total)
        self._random = _RANDOM

    @classmethod
    def build(
        cls,
        hosts: Sequence[Host],
        *,
        panic_threshold: float = 50.0,
        overprovisioning: float = 1.4,
        local: Locality | None = None,
    ) -> HostSet[Host]:
        """The candidates among ``hosts`` (each with ``healthy``, ``priority``, ``locality``).

        Args:
            hosts: the cluster's endpoints.
            panic_threshold: below this total health (percent), every endpoint is used.
            overprovisioning: the factor a level's healthy share is multiplied by.
            local: the proxy's locality, when endpoints should be grouped by distance from it.
        """
        if not hosts:
            return cls([], [], panic=False)
        grouped: dict[tuple[int, int], list[Host]] = {}
        for host in hosts:
            distance = _FAR
            if local is not None and host.locality is not None:
                distance = local.distance(host.locality)
            elif local is None:
                distance = 0
            grouped.setdefault((host.priority, distance), []).append(host)
        ordered = [grouped[key] for key in sorted(grouped)]
        healthy = [[h for h in level if h.healthy] for level in ordered]
        health = [
            min(100.0, 100.0 * len(ok) / len(level) * overprovisioning)
            for ok, level in zip(healthy, ordered, strict=True)
        ]
        total = min(100.0, sum(health))
        if total < panic_threshold:
            return cls([list(hosts)], [100.0], panic=True)
        if total == 0:  # no panic mode (threshold 0) and no healthy endpoint: none to choose
            return cls([], [], panic=False)
        loads = []
        left = 100.0
        for level_health in health:
            load = min(left, level_health)
            loads.append(load)
            left -= load
        if left > 0:  # the healths add up to less than 100%: scale the loads up to fill it
            scale = 100.0 / (100.0 - left)
            loads = [load * scale for load in loads]
        kept = [(ok, load) for ok, load in zip(healthy, loads, strict=True) if ok and load > 0]
        return cls([ok for ok, _ in kept], [load for _, load in kept], panic=False)

    def candidates(self) -> list[Host]:
        """The endpoints for one request: a level's healthy ones, drawn by the levels' loads."""
        levels = self.levels
        if len(levels) <= 1:
            return levels[0] if levels else []
        draw = self._random.random() * self._cumulative[-1]
        return levels[min(bisect_right(self._cumulative, draw), len(levels) - 1)]

    def __repr__(self) -> str:
        shape = ", ".join(
            f"{len(level)}@{load:.0f}%" for level, load in zip(self.levels, self.loads, strict=True)
        )
        return f"<HostSet {shape}{' panic' if self.panic else ''}>"


LOCALITY_LABELS = (
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
)
"""The workload labels a proxy's own locality is read from (Kubernetes' and Istio's)."""


def node_locality(snapshot: object) -> Locality | None:
    """The proxy's locality, from its identity's labels in the Snapshot (None if unknown)."""
    node = getattr(snapshot, "node", None)
    labels = getattr(node, "labels", None) or {}
    region, zone, subzone = (str(labels.get(name, "")) for name in LOCALITY_LABELS)
    if not (region or zone or subzone):
        return None
    return Locality(region=region, zone=zone, subzone=subzone)
