"""Translators for a proxy's outbound traffic, without iptables.

- ``outbound_clusters`` (order 200): a cluster per port of every service the proxy may
  reach (``outbound|PORT||HOST``) and per subset of its DestinationRule
  (``outbound|PORT|SUBSET|HOST``: the endpoints with the subset's labels), with the load
  balancer, circuit breakers and outlier detection the rule's traffic policy asks for
  (see ``translate_traffic``).
- ``http_proxy`` (order 300): an HTTP proxy listener (``127.0.0.1:15001`` unless the
  proxy says otherwise) that applications reach through ``HTTP_PROXY``: requests are
  routed by the host name they address, one virtual host per service port
  (``backend.default.svc.cluster.local:80``, its short forms in Kubernetes' style, and the
  bare names for port 80 or the service's only HTTP port).
- ``egress_ports`` (order 400): a Sidecar's egress listeners with a ``port`` are local
  ports for clients that cannot use a proxy (Consul's ``local_bind_port``): HTTP ones route
  by host name, and take any host name when they import a single service; TCP ones forward
  to their one service.
"""

from __future__ import annotations

from typing import Any

import attrs

import meshcore
from meshcore import Address, Cluster, TranslatorType
from meshcore.control import (
    ClusterBuild,
    ClusterEndpoint,
    ListenerBuild,
    MeshResource,
    Service,
    ServicePort,
    TranslationContext,
    VirtualHostBuild,
    fqdn,
    labels_match,
)
from meshcore.plugins.istio_destinationrule import TrafficPolicy
from meshcore.plugins.istio_lookup import destination_rule_for, virtual_services_for
from meshcore.plugins.translate_routes import HANDLES as ROUTE_HANDLES
from meshcore.plugins.translate_routes import RouteTranslator, cluster_name
from meshcore.plugins.translate_sidecar import SIDECAR, cluster_protocol, egress_host_matches
from meshcore.plugins.translate_traffic import cluster_settings, traffic_policy_handles

DEFAULT_HTTP_PROXY = "127.0.0.1:15001"
HTTP_PROXY_LISTENER = "outbound_http_proxy"


# -- clusters -----------------------------------------------------------------------------------


def _merge(base: TrafficPolicy | None, over: TrafficPolicy | None, port: ServicePort) -> TrafficPolicy | None:
    """``base`` overridden field by field by ``over``, each with its port-level settings for ``port`` applied."""
    out = None
    for policy in (base, over):
        if policy is None:
            continue
        fields = {
            f: getattr(policy, f)
            for f in ("loadBalancer", "connectionPool", "outlierDetection", "tls", "retryBudget")
        }
        for level in policy.portLevelSettings:
            if level.port is not None and level.port.number == port.number:
                fields.update(
                    {f: getattr(level, f, None) for f in fields if getattr(level, f, None) is not None}
                )
        fields = {k: v for k, v in fields.items() if v is not None}
        out = attrs.evolve(out, **fields) if out is not None else TrafficPolicy(**fields)
    return out


def _cluster(
    context: TranslationContext,
    service: Service,
    port: ServicePort,
    subset: str,
    labels: dict[str, str] | None,
    rule: MeshResource | None,
    policy: TrafficPolicy | None,
) -> ClusterBuild:
    names = [s.name for s in rule.spec.subsets] if rule is not None else []
    where = f"spec.subsets[{names.index(subset)}].trafficPolicy" if subset in names else "spec.trafficPolicy"

    def problem(path: str, message: str) -> None:
        assert rule is not None  # noqa: S101 - a policy comes from a rule
        context.problems.append(f"{rule.ref}: {where}.{path} (port {port.number}): {message}")

    settings = cluster_settings(policy, problem)
    # The same for every proxy that reaches this subset: built once per model (the control
    # plane then turns it into data once, too).
    key = (
        "outbound_cluster",
        service.key,
        port,
        subset,
        tuple(sorted(labels.items())) if labels else None,
        tuple(sorted(settings.items())),
    )
    cluster = context.model.memo.get(key)
    if cluster is None:
        endpoints = tuple(
            ClusterEndpoint(address=Address(e.address, e.port_for(port)), weight=e.weight)
            for e in context.model.endpoints_of(service)
            if labels is None or labels_match(labels, e.labels)
        )
        cluster = context.model.memo[key] = Cluster(
            name=cluster_name(service, port, subset),
            endpoints=endpoints,
            protocol=cluster_protocol(port),
            **settings,
        )
    return ClusterBuild(
        cluster=cluster, service=service, port=port, subset=subset, destination_rule=rule, policy=policy
    )


def outbound_clusters(context: TranslationContext) -> None:
    """A cluster per port, and per subset and port, of every service the proxy may reach."""
    for service in context.services:
        rule = destination_rule_for(context.model, service, context.namespace, context.labels)
        top = rule.spec.trafficPolicy if rule is not None else None
        for port in service.ports:
            context.snapshot.add_cluster(
                _cluster(context, service, port, "", None, rule, _merge(top, None, port))
            )
            for subset in rule.spec.subsets if rule is not None else ():
                policy = _merge(top, subset.trafficPolicy, port)
                context.snapshot.add_cluster(
                    _cluster(context, service, port, subset.name, dict(subset.labels), rule, policy)
                )


# -- the HTTP proxy listener ----------------------------------------------------------------------


def default_http_port(service: Service) -> ServicePort | None:
    """The port a request without a port in its host reaches: port 80, else the only HTTP port."""
    http = [p for p in service.ports if p.is_http]
    port80 = next((p for p in http if p.number == 80), None)  # noqa: PLR2004 - HTTP's default port
    return port80 or (http[0] if len(http) == 1 else None)


def host_names(service: Service, namespace: str, suffix: str) -> list[str]:
    """The names a client may use for ``service`` from ``namespace``.

    ``name.ns.svc.<suffix>`` is also ``name.ns.svc`` and ``name.ns``, and ``name`` within ``ns``
    (as Kubernetes' DNS search path allows).
    """
    names = [service.host]
    tail = f".svc.{suffix}"
    if service.host.endswith(tail):
        short = service.host[: -len(tail)]
        name, _, ns = short.rpartition(".")
        if name and ns:
            names += [f"{short}.svc", short]
            if ns == namespace:
                names.append(name)
    return names


def add_virtual_host(
    context: TranslationContext,
    table: str,
    service: Service,
    port: ServicePort,
    domains: list[str],
    used: set[str],
) -> RouteTranslator:
    """A virtual host for ``service:port`` in route table ``table`` (domains already used elsewhere skipped)."""
    fresh = [d for d in domains if d not in used]
    used.update(fresh)
    translator = RouteTranslator(context, service, port)
    context.snapshot.route_config(table).virtual_hosts.append(
        VirtualHostBuild(
            name=f"{service.host}:{port.number}",
            domains=fresh,
            routes=translator.routes(),
            service=service,
            port=port,
        )
    )
    return translator


def http_proxy(context: TranslationContext) -> None:
    """The HTTP proxy listener: every HTTP service port the proxy may reach, by host name."""
    text = context.proxy.metadata.get("http_proxy", DEFAULT_HTTP_PROXY)
    if not text:
        return
    try:
        address = Address.__meshcore_parse__(text)
    except ValueError as err:
        context.problems.append(f"http_proxy address: {err}")
        return
    listener = ListenerBuild(
        name=HTTP_PROXY_LISTENER, address=address, direction="outbound", route_config=HTTP_PROXY_LISTENER
    )
    context.snapshot.route_config(HTTP_PROXY_LISTENER)
    used: set[str] = set()
    suffix = context.model.settings.domain_suffix
    for service in context.services:
        default = default_http_port(service)
        for port in service.ports:
            if not port.is_http:
                continue
            names = host_names(service, context.namespace, suffix)
            domains = [f"{n}:{port.number}" for n in names] + (names if port is default else [])
            if add_virtual_host(context, HTTP_PROXY_LISTENER, service, port, domains, used).needs_fault:
                listener.ensure_http_filter("fault")
    context.snapshot.add_listener(listener)


# -- local ports ----------------------------------------------------------------------------------


def _tcp_cluster(context: TranslationContext, service: Service, port: ServicePort) -> str | None:
    """The cluster a TCP connection to ``service:port`` goes to (a VirtualService's tcp rule may choose)."""
    for resource in virtual_services_for(context.model, service, context.namespace):
        for i, rule in enumerate(resource.spec.tcp):
            if rule.match and not any(
                (not m.port or m.port == port.number)
                and (not m.sourceNamespace or m.sourceNamespace == context.namespace)
                and labels_match(m.sourceLabels, context.labels)
                for m in rule.match
            ):
                continue
            if len(rule.route) > 1:
                context.problems.append(
                    f"{resource.ref}: spec.tcp[{i}].route: a weighted TCP split is not supported by meshcore yet; using its first destination"
                )
            destination = rule.route[0].destination
            host = fqdn(destination.host, resource.namespace, context.model.settings.domain_suffix)
            target = context.model.service(host, context.namespace)
            target_port = (
                target.port(destination.port.number)
                if target and destination.port
                else (target.ports[0] if target and len(target.ports) == 1 else None)
            )
            if target is None or target_port is None or target not in context.services:
                context.problems.append(
                    f"{resource.ref}: spec.tcp[{i}].route[0].destination: {host!r} is not a service port this proxy may reach"
                )
                return None
            return cluster_name(target, target_port, destination.subset)
        if resource.spec.tcp:
            break
    return cluster_name(service, port)


def _egress_targets(context: TranslationContext, egress: Any) -> list[tuple[Service, ServicePort]]:
    """The service ports an egress listener with a port forwards to.

    The service's port of the same number, else its only port, else (for an HTTP listener)
    its default HTTP port.
    """
    number = egress.port.number
    http = ServicePort(number=number, name="", protocol=egress.port.protocol.upper()).is_http
    targets = []
    for service in context.services:
        if any(egress_host_matches(h, service, context.namespace) for h in egress.hosts):
            port = service.port(number) or (service.ports[0] if len(service.ports) == 1 else None)
            if port is None and http:
                port = default_http_port(service)
            if port is not None:
                targets.append((service, port))
    return targets


def egress_ports(context: TranslationContext) -> None:
    """A local listener for each egress listener of the proxy's Sidecar that has a port."""
    sidecar: MeshResource | None = context.shared.get(SIDECAR)
    for i, egress in enumerate(sidecar.spec.egress if sidecar is not None else ()):
        if egress.port is None:
            continue
        where = f"{sidecar.ref}: spec.egress[{i}]"  # type: ignore[union-attr]  # not None in this loop
        number = egress.port.number
        targets = _egress_targets(context, egress)
        if not targets:
            context.problems.append(
                f"{where}: no service port this proxy may reach matches hosts {list(egress.hosts)}"
            )
            continue
        protocol = egress.port.protocol.upper() or targets[0][1].effective_protocol
        listener = ListenerBuild(
            name=f"egress_{number}", address=Address(egress.bind or "127.0.0.1", number), direction="outbound"
        )
        if ServicePort(number=number, name="", protocol=protocol).is_http:
            table = listener.route_config = f"egress|{number}"
            used: set[str] = set()
            for service, port in targets:
                names = host_names(service, context.namespace, context.model.settings.domain_suffix)
                domains = [*names, *(f"{n}:{number}" for n in names)] + (["*"] if len(targets) == 1 else [])
                if add_virtual_host(context, table, service, port, domains, used).needs_fault:
                    listener.ensure_http_filter("fault")
        elif len(targets) > 1:
            hosts = ", ".join(s.host for s, _ in targets)
            context.problems.append(
                f"{where}: a TCP local port forwards to one service, {len(targets)} match: {hosts}"
            )
            continue
        else:
            listener.service, listener.port = targets[0]
            listener.tcp_cluster = _tcp_cluster(context, *targets[0])
            if listener.tcp_cluster is None:
                continue
        context.snapshot.add_listener(listener)


def _handles() -> tuple[str, ...]:
    return (
        "DestinationRule.host",
        "DestinationRule.subsets.name",
        "DestinationRule.subsets.labels",
        "DestinationRule.exportTo",
        "DestinationRule.workloadSelector",
        *traffic_policy_handles(),
    )


@meshcore.hookimpl
def meshcore_mesh_translators() -> list[TranslatorType]:
    """Register ``outbound_clusters``, ``http_proxy`` and ``egress_ports``."""
    return [
        TranslatorType(
            name="outbound_clusters",
            factory=outbound_clusters,
            order=200,
            description="a cluster per port and subset of every service a proxy may reach",
            handles=_handles(),
        ),
        TranslatorType(
            name="http_proxy",
            factory=http_proxy,
            order=300,
            description="the HTTP proxy listener applications reach through HTTP_PROXY, routed by host name",
            handles=ROUTE_HANDLES,
        ),
        TranslatorType(
            name="egress_ports",
            factory=egress_ports,
            order=400,
            description="local ports of a Sidecar's egress listeners, for clients that cannot use a proxy",
            handles=(
                "Sidecar.egress.port.number",
                "Sidecar.egress.port.protocol",
                "Sidecar.egress.port.name",
                "Sidecar.egress.bind",
                "Sidecar.egress.captureMode=DEFAULT|NONE",
                "VirtualService.tcp.match.port",
                "VirtualService.tcp.match.sourceLabels",
                "VirtualService.tcp.match.sourceNamespace",
                "VirtualService.tcp.match.gateways=mesh",
                "VirtualService.tcp.route.destination",
                "VirtualService.tcp.route.weight",
            ),
        ),
    ]
