"""Translation: the mesh model and one proxy's identity in, that proxy's Snapshot out.

Pure: no I/O, no clock, no randomness, so it is tested without sockets and rerun for
every affected proxy on every change. Translators are plugins (``meshcore_mesh_translators``)
run in order over one :class:`TranslationContext`: each adds to, or edits, the Snapshot
under construction (:class:`SnapshotBuilder`), whose parts remember the mesh objects they
came from, so that a later translator can find them (the retry translator looks for the
routes whose Istio rule has ``retries``; a third party adds its filter to every sidecar
of a namespace).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import attrs

from meshcore.config import (
    Address,
    Cluster,
    FilterChain,
    HttpFilterRef,
    Listener,
    NetworkFilterRef,
    NodeInfo,
    Route,
    RouteConfiguration,
    Snapshot,
    Structurer,
    TlsContext,
    VirtualHost,
)
from meshcore.control.model import MeshModel, Service, ServicePort, Workload
from meshcore.control.resources import MeshResource
from meshcore.errors import MeshcoreError
from meshcore.plugin import TranslatorType
from meshcore.registry import Registry

__all__ = [
    "WORKLOAD_SECRET",
    "ClusterBuild",
    "ListenerBuild",
    "ProxyIdentity",
    "RouteBuild",
    "RouteConfigBuild",
    "SnapshotBuilder",
    "TranslationContext",
    "TranslationError",
    "VirtualHostBuild",
    "translate",
]

_EMPTY: Mapping[str, str] = MappingProxyType({})

WORKLOAD_SECRET = "workload"  # noqa: S105 - the name of a secret, not one
"""The TlsSecret of a sidecar's workload certificate, its key and the trust bundle.

Translators name it in listeners and clusters; the control plane never sends it (the key
never leaves the proxy): the sidecar's certificate agent adds it to every Snapshot it
applies (Istio's SDS names it ``default``)."""


class TranslationError(MeshcoreError):
    """A proxy's Snapshot could not be built (a translator failed); the proxy keeps its last one."""


@attrs.frozen(kw_only=True)
class ProxyIdentity:
    """Who a proxy says it is when it connects (its bootstrap).

    Attributes:
        id: its own id, unique among the control plane's proxies.
        workload: the workload it claims to serve (a WorkloadEntry's name), or "".
        namespace: that workload's namespace.
        version: the meshcore version it runs.
        metadata: settings of this proxy that translation reads, by name:
            ``http_proxy`` (the outbound HTTP proxy listener's address, default
            ``127.0.0.1:15001``; "" for none).
    """

    id: str
    workload: str = ""
    namespace: str = "default"
    version: str = ""
    metadata: Mapping[str, str] = _EMPTY

    @property
    def translation_key(self) -> tuple[Any, ...]:
        """What translation depends on: proxies with equal keys get equal Snapshots (but their node)."""
        return (self.workload, self.namespace, tuple(sorted(self.metadata.items())))


# -- the Snapshot under construction ---------------------------------------------------------


@attrs.define(kw_only=True)
class ListenerBuild:
    """A listener under construction: HTTP (a route table and HTTP filters) or TCP (a cluster).

    Attributes:
        name: its name.
        address: where it listens.
        direction: ``inbound`` (traffic for the workload) or ``outbound`` (from it).
        route_config: the route table of an HTTP listener.
        http_filters: its HTTP filters, the router last (insert before it).
        http_options: more fields of its ``http_connection_manager`` config.
        tcp_cluster: the cluster of a TCP listener.
        network_filters: L4 filters before the terminal one.
        tls: TLS it terminates, if any.
        tls_chains: when not empty, one filter chain per item instead, all with the same
            filters, each terminating that TLS or none: ``(mTLS, None)`` is PERMISSIVE
            (mTLS and plaintext on one port, told apart by the connection's first byte).
        service: the service it serves (inbound, or a local port for one service).
        port: that service's port.
    """

    name: str
    address: Address
    direction: str
    route_config: str | None = None
    http_filters: list[HttpFilterRef] = attrs.field(factory=lambda: [HttpFilterRef(name="router")])
    http_options: dict[str, Any] = attrs.field(factory=dict)
    tcp_cluster: str | None = None
    network_filters: list[NetworkFilterRef] = attrs.field(factory=list)
    tls: TlsContext | None = None
    tls_chains: tuple[TlsContext | None, ...] = ()
    service: Service | None = None
    port: ServicePort | None = None

    def ensure_http_filter(self, name: str, config: Any = None) -> None:
        """Put HTTP filter ``name`` before the router unless the chain has it already."""
        if all(f.name != name for f in self.http_filters):
            self.http_filters.insert(len(self.http_filters) - 1, HttpFilterRef(name=name, config=config))


@attrs.define(kw_only=True)
class RouteBuild:
    """A route under construction, and the mesh rule it came from.

    Attributes:
        route: the route (replace it with ``attrs.evolve`` to change it).
        source: the mesh rule it translates (an Istio ``HTTPRoute``), None for a default route.
        resource: the resource that rule belongs to (a VirtualService).
        service: the service the route's virtual host is for.
    """

    route: Route
    source: Any = None
    resource: MeshResource | None = None
    service: Service | None = None


@attrs.define(kw_only=True)
class VirtualHostBuild:
    """A virtual host under construction."""

    name: str
    domains: list[str]
    routes: list[RouteBuild] = attrs.field(factory=list)
    service: Service | None = None
    port: ServicePort | None = None


@attrs.define(kw_only=True)
class RouteConfigBuild:
    """A route table under construction."""

    name: str
    virtual_hosts: list[VirtualHostBuild] = attrs.field(factory=list)


@attrs.define(kw_only=True)
class ClusterBuild:
    """A cluster under construction, and the mesh objects it came from.

    Attributes:
        cluster: the cluster (replace it with ``attrs.evolve`` to change it).
        direction: ``inbound`` (to the local application) or ``outbound``.
        service: the service it reaches.
        port: the service port.
        subset: the subset name ("" for the whole service).
        destination_rule: the DestinationRule that applies, if any.
        policy: the traffic policy that applies to this port and subset (Istio's
            ``TrafficPolicy``, merged as Istio merges them), if any.
    """

    cluster: Cluster
    direction: str = "outbound"
    service: Service | None = None
    port: ServicePort | None = None
    subset: str = ""
    destination_rule: MeshResource | None = None
    policy: Any = None


@attrs.define(kw_only=True)
class SnapshotBuilder:
    """The Snapshot of one proxy while translators build it; :meth:`build` freezes it."""

    listeners: dict[str, ListenerBuild] = attrs.field(factory=dict)
    route_configs: dict[str, RouteConfigBuild] = attrs.field(factory=dict)
    clusters: dict[str, ClusterBuild] = attrs.field(factory=dict)
    secrets: list[Any] = attrs.field(factory=list)

    def add_listener(self, listener: ListenerBuild) -> ListenerBuild:
        """Add ``listener`` (replacing one of the same name)."""
        self.listeners[listener.name] = listener
        return listener

    def add_cluster(self, cluster: ClusterBuild) -> ClusterBuild:
        """Add ``cluster`` (replacing one of the same name)."""
        self.clusters[cluster.cluster.name] = cluster
        return cluster

    def route_config(self, name: str) -> RouteConfigBuild:
        """The route table ``name``, created empty if new."""
        found = self.route_configs.get(name)
        if found is None:
            found = self.route_configs[name] = RouteConfigBuild(name=name)
        return found

    def routes(self) -> Iterator[tuple[RouteConfigBuild, VirtualHostBuild, RouteBuild]]:
        """Every route, with its route table and virtual host."""
        for table in self.route_configs.values():
            for vhost in table.virtual_hosts:
                for route in vhost.routes:
                    yield table, vhost, route

    def build(self, registry: Registry, *, node: NodeInfo | None = None, version: str = "") -> Snapshot:
        """The frozen Snapshot; ValueError (from the config classes) if a part is invalid."""
        return Snapshot(
            version=version,
            node=node,
            listeners=tuple(self._listener(registry, lb) for lb in self.listeners.values()),
            clusters=tuple(cb.cluster for cb in self.clusters.values()),
            route_configs=tuple(
                RouteConfiguration(
                    name=table.name,
                    virtual_hosts=tuple(
                        VirtualHost(
                            name=vh.name, domains=tuple(vh.domains), routes=tuple(r.route for r in vh.routes)
                        )
                        for vh in table.virtual_hosts
                    ),
                )
                for table in self.route_configs.values()
            ),
        )

    @staticmethod
    def _listener(registry: Registry, lb: ListenerBuild) -> Listener:
        if lb.route_config is not None:
            config_type = _config_type(registry, "network_filter", "http_connection_manager")
            config = config_type(
                route_config=lb.route_config, http_filters=tuple(lb.http_filters), **lb.http_options
            )
            terminal = NetworkFilterRef(name="http_connection_manager", config=config)
        elif lb.tcp_cluster is not None:
            config_type = _config_type(registry, "network_filter", "tcp_proxy")
            terminal = NetworkFilterRef(name="tcp_proxy", config=config_type(cluster=lb.tcp_cluster))
        else:
            msg = f"listener {lb.name!r} has neither a route config nor a TCP cluster"
            raise ValueError(msg)
        filters = (*lb.network_filters, terminal)
        if not lb.tls_chains:
            return Listener(
                name=lb.name, address=lb.address, filter_chains=(FilterChain(filters=filters, tls=lb.tls),)
            )
        chains = tuple(
            FilterChain(
                name=f"{lb.name}-{'tls' if tls is not None else 'plaintext'}", filters=filters, tls=tls
            )
            for tls in lb.tls_chains
        )
        return Listener(name=lb.name, address=lb.address, filter_chains=chains)


def _config_type(registry: Registry, kind: str, name: str) -> Any:
    found = registry.config_type(kind, name)
    if found is None:
        msg = f"the {kind.replace('_', ' ')} {name!r} is not installed in the control plane"
        raise ValueError(msg)
    return found


# -- running the translators -------------------------------------------------------------------


@attrs.define(kw_only=True)
class TranslationContext:
    """What every translator of one proxy is given.

    Attributes:
        model: the mesh model (read only).
        proxy: who the proxy is.
        workload: its workload in the model, None if the model has none of that name.
        node: its identity as its Snapshot will carry it.
        registry: the plugin registry (config classes of filters).
        services: the services this proxy may reach; scoping translators narrow it.
        snapshot: the Snapshot under construction.
        problems: what could not be translated for this proxy, one line each (shown in
            its status; the rest of its Snapshot still goes out).
        shared: what translators leave for later ones, by a name they agree on
            (``istio.sidecar``: the Sidecar resource that applies).
    """

    model: MeshModel
    proxy: ProxyIdentity
    workload: Workload | None
    node: NodeInfo
    registry: Registry
    services: list[Service]
    snapshot: SnapshotBuilder = attrs.field(factory=SnapshotBuilder)
    problems: list[str] = attrs.field(factory=list)
    shared: dict[str, Any] = attrs.field(factory=dict)

    @property
    def namespace(self) -> str:
        """The proxy's namespace."""
        return self.proxy.namespace

    @property
    def labels(self) -> Mapping[str, str]:
        """The proxy's workload labels."""
        return self.node.labels

    def plugin_config(self, kind: str, name: str, data: Any) -> Any:
        """``data`` (as a config file writes it) structured as the config of plugin ``name`` of ``kind``.

        Raises:
            ValueError: the plugin is not installed, or ``data`` is not a valid config of it
                (every problem, with its field path).
        """
        config_type = _config_type(self.registry, kind, name)
        structurer = Structurer(self.registry)
        found = structurer.structure(data, config_type)
        if structurer.problems:
            msg = f"the {kind.replace('_', ' ')} {name!r}: " + "; ".join(str(p) for p in structurer.problems)
            raise ValueError(msg)
        return found


@attrs.frozen(kw_only=True)
class Translation:
    """A proxy's Snapshot and what could not be translated."""

    snapshot: Snapshot
    problems: tuple[str, ...] = ()


def node_info(model: MeshModel, proxy: ProxyIdentity, workload: Workload | None) -> NodeInfo:
    """The identity a proxy's Snapshot carries."""
    return NodeInfo(
        id=proxy.id,
        workload=proxy.workload,
        namespace=proxy.namespace,
        service_account=workload.service_account if workload is not None else "default",
        labels=workload.labels if workload is not None else _EMPTY,
        services=tuple(sorted(s.host for s in model.services_of(workload))) if workload is not None else (),
        version=proxy.version,
        trust_domain=model.settings.trust_domain,
    )


def translators_of(registry: Registry) -> list[TranslatorType]:
    """Every registered translator, in the order they run."""
    found = [t for t in registry.types("translator").values() if isinstance(t, TranslatorType)]
    return sorted(found, key=lambda t: (t.order, t.name))


def translate(
    model: MeshModel,
    proxy: ProxyIdentity,
    registry: Registry,
    translators: Sequence[TranslatorType] | None = None,
) -> Translation:
    """The Snapshot of ``proxy`` for ``model``.

    Raises:
        TranslationError: a translator raised, or built an invalid part; the message names it.
    """
    workload = model.workload(proxy.namespace, proxy.workload) if proxy.workload else None
    node = node_info(model, proxy, workload)
    context = TranslationContext(
        model=model,
        proxy=proxy,
        workload=workload,
        node=node,
        registry=registry,
        services=[s for s in model.services if s.visible_to(proxy.namespace)],
    )
    if proxy.workload and workload is None:
        context.problems.append(
            f"no WorkloadEntry {proxy.namespace}/{proxy.workload}: no inbound listeners, no labels"
        )
    for translator in translators if translators is not None else translators_of(registry):
        try:
            translator.factory(context)
        except Exception as err:
            msg = f"translator {translator.name!r} failed: {type(err).__name__}: {err}"
            raise TranslationError(msg) from err
    try:
        snapshot = context.snapshot.build(registry, node=node)
    except (ValueError, TypeError) as err:
        msg = f"the translated Snapshot is invalid: {err}"
        raise TranslationError(msg) from err
    return Translation(snapshot=snapshot, problems=tuple(dict.fromkeys(context.problems)))
