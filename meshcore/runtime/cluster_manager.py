"""Every upstream cluster of a proxy by name, and applying a Snapshot's clusters to them.

Applying is in two steps, so that a Snapshot is taken or rejected whole: :meth:`ClusterManager.prepare`
builds whatever can fail (load balancers, TLS contexts, health checkers: ConfigError with
the field path, nothing changed) and returns the commit, which cannot fail and changes
clusters in place. :meth:`ClusterManager.prebuild` builds large sets of new clusters ahead,
yielding to the loop between chunks.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
import trio

from meshcore.config import Catalog, Snapshot
from meshcore.config import Cluster as ClusterConfig
from meshcore.errors import ConfigError, ConfigProblem
from meshcore.http.messages import Request
from meshcore.runtime.cluster import Cluster, Picker
from meshcore.runtime.filterstate import blame
from meshcore.runtime.health import Checker
from meshcore.runtime.hostset import node_locality
from meshcore.runtime.mirror import Mirrors
from meshcore.runtime.stats import Stats
from meshcore.runtime.tls import Secrets, client_context, material, secrets_of

if TYPE_CHECKING:
    from meshcore.config.traffic import RequestMirrorPolicy

__all__ = ["ClusterManager"]

log = structlog.get_logger("meshcore.upstream")


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
