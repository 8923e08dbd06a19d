"""Translators for a proxy's own side: what it may reach (``scope``) and its inbound listeners.

``scope`` (order 50) finds the Sidecar resource that applies to the proxy and narrows the
services it receives to those its egress ``hosts`` import (``namespace/host``: ``*/``,
``./`` or a namespace; ``*``, ``*.example.com`` or a name). Without a Sidecar, a proxy
receives every service exported to its namespace.

``inbound`` (order 100) gives the workload one listener per port: a Sidecar's ``ingress``
listeners when it has some (``bind`` or the workload's address, on ``port``, forwarding to
``defaultEndpoint``), else one per port of the services that select the workload, on the
workload's address, forwarding to the same port on 127.0.0.1 (Istio's default without
iptables: the application listens on localhost).
"""

from __future__ import annotations

from typing import Literal

import meshcore
from meshcore import Address, Cluster, Duration, Route, TranslatorType
from meshcore.control import (
    ClusterBuild,
    ClusterEndpoint,
    ListenerBuild,
    RouteBuild,
    RouteMatch,
    Service,
    ServicePort,
    TranslationContext,
    VirtualHostBuild,
)
from meshcore.plugins.istio_lookup import host_matches, sidecar_for

SIDECAR = "istio.sidecar"
"""``context.shared`` key of the Sidecar resource that applies to the proxy (None: none)."""

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def egress_host_matches(item: str, service: Service, namespace: str) -> bool:
    """Whether Sidecar egress host ``item`` (``namespace/host``) imports ``service`` for a proxy of ``namespace``."""
    ns, _, host = item.partition("/")
    if ns == "~":
        return False
    if ns not in ("*", service.namespace) and not (ns == "." and service.namespace == namespace):
        return False
    return host_matches(host, service.host)


def scope(context: TranslationContext) -> None:
    """Find the proxy's Sidecar; keep only the services its egress hosts import."""
    sidecar = sidecar_for(context.model, context.namespace, context.labels)
    context.shared[SIDECAR] = sidecar
    if sidecar is None or not sidecar.spec.egress:
        return
    hosts = [h for egress in sidecar.spec.egress for h in egress.hosts]
    context.services = [
        s for s in context.services if any(egress_host_matches(h, s, context.namespace) for h in hosts)
    ]


def cluster_protocol(port: ServicePort) -> Literal["http1", "http2"]:
    """The upstream protocol of a cluster for ``port``: HTTP/2 for HTTP2 and GRPC, else HTTP/1.1."""
    return "http2" if port.effective_protocol in ("HTTP2", "GRPC") else "http1"


def add_inbound(
    context: TranslationContext, port: ServicePort, bind: str, app: Address, service: Service | None
) -> None:
    """An inbound listener on ``bind:port`` forwarding to the application at ``app``."""
    number = port.number
    cluster = f"inbound|{number}||"
    context.snapshot.add_cluster(
        ClusterBuild(
            cluster=Cluster(
                name=cluster, endpoints=(ClusterEndpoint(address=app),), protocol=cluster_protocol(port)
            ),
            direction="inbound",
            service=service,
            port=port,
        )
    )
    listener = ListenerBuild(
        name=f"inbound_{number}",
        address=Address(bind, number),
        direction="inbound",
        service=service,
        port=port,
    )
    if port.is_http:
        table = f"inbound|{number}"
        listener.route_config = table
        route = Route(
            name=f"inbound|{number}", match=RouteMatch(prefix="/"), cluster=cluster, timeout=Duration(0)
        )
        context.snapshot.route_config(table).virtual_hosts.append(
            VirtualHostBuild(
                name=f"inbound|http|{number}",
                domains=["*"],
                routes=[RouteBuild(route=route, service=service)],
                service=service,
                port=port,
            )
        )
    else:
        listener.tcp_cluster = cluster
    context.snapshot.add_listener(listener)


def _default_endpoint(text: str, workload_address: str) -> Address | None:
    try:
        address = Address.__meshcore_parse__(text)
    except ValueError:
        return None
    return Address(workload_address, address.port) if address.host == "0.0.0.0" else address  # noqa: S104 - Istio's "the instance's address"


def inbound(context: TranslationContext) -> None:
    """The workload's inbound listeners and the clusters to its application."""
    workload = context.workload
    if workload is None:
        return
    sidecar = context.shared.get(SIDECAR)
    if sidecar is not None and sidecar.spec.ingress:
        for i, ingress in enumerate(sidecar.spec.ingress):
            where = f"{sidecar.ref}: spec.ingress[{i}]"
            app = _default_endpoint(ingress.defaultEndpoint, workload.address)
            if app is None:
                context.problems.append(
                    f'{where}.defaultEndpoint: needs "127.0.0.1:PORT" (where the application listens), got {ingress.defaultEndpoint!r}'
                )
                continue
            spec_port = ingress.port
            port = ServicePort(
                number=spec_port.number,
                name=spec_port.name or f"port-{spec_port.number}",
                protocol=spec_port.protocol.upper(),
            )
            add_inbound(context, port, ingress.bind or workload.address or "0.0.0.0", app, None)  # noqa: S104 - no address known: every interface
        return
    seen: set[int] = set()
    for service in context.model.services_of(workload):
        for port in service.ports:
            number = workload.ports.get(port.name) or port.target_port or port.number
            if number in seen:
                continue
            seen.add(number)
            if not workload.address or workload.address in _LOOPBACK:
                context.problems.append(
                    f"{workload.source}: inbound port {number} of {service.host} would forward to itself "
                    f"({workload.address or 'no address'}:{number}); give the workload another address, or a Sidecar "
                    "with an ingress listener whose defaultEndpoint is where the application listens"
                )
                continue
            add_inbound(
                context,
                ServicePort(number=number, name=port.name, protocol=port.protocol),
                workload.address,
                Address("127.0.0.1", number),
                service,
            )


@meshcore.hookimpl
def meshcore_mesh_translators() -> list[TranslatorType]:
    """Register ``scope`` and ``inbound``."""
    return [
        TranslatorType(
            name="scope",
            factory=scope,
            order=50,
            description="the Sidecar that applies to a proxy, and the services its egress hosts import",
            handles=(
                "Sidecar.workloadSelector",
                "Sidecar.egress.hosts",
                "Sidecar.outboundTrafficPolicy.mode=REGISTRY_ONLY",
            ),
        ),
        TranslatorType(
            name="inbound",
            factory=inbound,
            order=100,
            description="a listener per port of the workload, forwarding to its application",
            handles=(
                "Sidecar.ingress.port.number",
                "Sidecar.ingress.port.name",
                "Sidecar.ingress.port.protocol",
                "Sidecar.ingress.bind",
                "Sidecar.ingress.captureMode=DEFAULT|NONE",
                "Sidecar.ingress.defaultEndpoint",
            ),
        ),
    ]
