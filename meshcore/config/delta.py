"""Deltas: a change to the live Snapshot, resource by resource, as a control plane sends it.

A :class:`SnapshotDelta` names, per resource type (listeners, route tables, clusters,
endpoint sets by cluster name, secrets), the resources added or changed and the names
removed.
:meth:`SnapshotDelta.compose` lays it onto a Snapshot and returns the new whole Snapshot,
which the runtime validates and applies like any other: a delta is a shorter way to say
"this Snapshot", never a way around validation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

import attrs

from meshcore.config.model import Cluster, Endpoint, Listener, RouteConfiguration, Snapshot, TlsSecret
from meshcore.config.structure import Catalog, Structurer
from meshcore.config.validators import non_empty, unique
from meshcore.errors import ConfigError, ConfigProblem

__all__ = ["SnapshotDelta", "delta_from_data"]

_NO_ENDPOINTS: Mapping[str, tuple[Endpoint, ...]] = MappingProxyType({})
R = TypeVar("R")


def _named(value: Any) -> str:
    name: str = value.name
    return name


@attrs.frozen(kw_only=True)
class SnapshotDelta:
    """Resources added, changed or removed since the live Snapshot, by type.

    A resource given whose name the live Snapshot has replaces it; a new name is added (at
    the end, in the order given). ``endpoints`` replaces the endpoint set of a cluster by
    name (an empty tuple leaves it without endpoints), after the delta's own clusters are
    in, so one delta can add a cluster and fill it. Removing a name the Snapshot does not
    have is not a problem (it is gone either way, as in xDS).

    Attributes:
        version: the version of the Snapshot that results (required: it is what a control
            plane acknowledges).
        listeners: listeners added or changed.
        removed_listeners: names of listeners removed.
        route_configs: route tables added or changed.
        removed_route_configs: names of route tables removed.
        clusters: clusters added or changed.
        removed_clusters: names of clusters removed.
        endpoints: new endpoint sets, by cluster name.
        secrets: TLS secrets added or changed (a certificate rotated).
        removed_secrets: names of secrets removed.
    """

    version: str = attrs.field(validator=non_empty)
    listeners: tuple[Listener, ...] = attrs.field(default=(), validator=unique(_named))
    removed_listeners: tuple[str, ...] = ()
    route_configs: tuple[RouteConfiguration, ...] = attrs.field(default=(), validator=unique(_named))
    removed_route_configs: tuple[str, ...] = ()
    clusters: tuple[Cluster, ...] = attrs.field(default=(), validator=unique(_named))
    removed_clusters: tuple[str, ...] = ()
    endpoints: Mapping[str, tuple[Endpoint, ...]] = _NO_ENDPOINTS
    secrets: tuple[TlsSecret, ...] = attrs.field(default=(), validator=unique(_named))
    removed_secrets: tuple[str, ...] = ()

    def compose(self, snapshot: Snapshot) -> Snapshot:
        """The Snapshot that results from applying this delta to ``snapshot``.

        Only the delta's own consistency is checked here (a name both given and removed,
        endpoints for a cluster that neither has); the result is validated as a whole by
        whoever applies it.

        Raises:
            ConfigError: every problem of the delta, with field paths in it.
        """
        problems: list[ConfigProblem] = []
        listeners = _merge(snapshot.listeners, self.listeners, self.removed_listeners, "listeners", problems)
        routes = _merge(
            snapshot.route_configs, self.route_configs, self.removed_route_configs, "route_configs", problems
        )
        clusters = _merge(snapshot.clusters, self.clusters, self.removed_clusters, "clusters", problems)
        secrets = _merge(snapshot.secrets, self.secrets, self.removed_secrets, "secrets", problems)
        if self.endpoints:
            clusters = list(clusters)
            index = {c.name: i for i, c in enumerate(clusters)}
            for name, endpoints in self.endpoints.items():
                at = index.get(name)
                if at is None:
                    message = f"no cluster {name!r} in the Snapshot or the delta"
                    problems.append(ConfigProblem(path=f"endpoints.{name}", message=message))
                    continue
                clusters[at] = attrs.evolve(clusters[at], endpoints=tuple(endpoints))
        if problems:
            raise ConfigError(problems)
        return attrs.evolve(
            snapshot,
            version=self.version,
            listeners=tuple(listeners),
            route_configs=tuple(routes),
            clusters=tuple(clusters),
            secrets=tuple(secrets),
        )

    @property
    def empty(self) -> bool:
        """Whether the delta changes nothing (but the version)."""
        return not any(getattr(self, f.name) for f in attrs.fields(type(self)) if f.name != "version")


def _merge(
    current: Sequence[R],
    given: Sequence[R],
    removed: Sequence[str],
    section: str,
    problems: list[ConfigProblem],
) -> Sequence[R]:
    """``current`` with ``given`` replacing or appended by name, and ``removed`` dropped.

    ``current`` itself when the delta leaves the section alone.
    """
    if not given and not removed:
        return current
    name: Callable[[Any], str] = _named
    gone = set(removed)
    for i, resource in enumerate(given):
        if name(resource) in gone:
            message = f"{name(resource)!r} is both given and removed"
            problems.append(ConfigProblem(path=f"{section}[{i}]", message=message))
    replacing = {name(r): r for r in given}
    out = [replacing.pop(name(r), r) for r in current if name(r) not in gone]
    out.extend(r for r in given if name(r) in replacing)
    return out


def delta_from_data(data: Any, catalog: Catalog, *, file: str | None = None) -> SnapshotDelta:
    """Structure plain data (a delta document from YAML, JSON, the wire) as a SnapshotDelta.

    Written like a config document: ``version``, ``listeners``, ``route_configs``,
    ``clusters``, ``secrets`` (each a list as in a config file), ``removed_listeners``,
    ``removed_route_configs``, ``removed_clusters``, ``removed_secrets`` (lists of names)
    and ``endpoints`` (a mapping of cluster name to a list of endpoints). References to other resources are
    checked once the delta is composed onto a Snapshot.

    Raises:
        ConfigError: every problem, with its field path (and ``file`` when given).
    """
    structurer = Structurer(catalog)
    delta = structurer.structure(data, SnapshotDelta)
    if structurer.problems or delta is None:
        problems = structurer.problems or [ConfigProblem(path="", message="invalid delta")]
        raise ConfigError([attrs.evolve(p, file=file) for p in problems])
    return delta
