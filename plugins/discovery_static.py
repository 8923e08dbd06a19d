"""``static`` discovery: services and workloads from ServiceEntry and WorkloadEntry resources.

Each host of a ServiceEntry is a service. Its endpoints are its inline ``endpoints``, or
the WorkloadEntries of its namespace that its ``workloadSelector`` picks (resolution
STATIC), or its host names as they are (DNS_ROUND_ROBIN: resolved when connecting). The
resources are watched by the control plane, so an edit reaches the model on the next
push, and a WorkloadEntry removed leaves every service's endpoints at once.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio

import meshcore
from meshcore import ConfigProblem
from meshcore.control import (
    Discovered,
    Endpoint,
    MeshResource,
    MeshResources,
    MeshSettings,
    Service,
    ServicePort,
    Workload,
    labels_match,
)
from meshcore.plugins.istio_services import ServiceEntrySpec, WorkloadEntrySpec


def workload_of(resource: MeshResource) -> Workload:
    """The workload a WorkloadEntry describes."""
    spec: WorkloadEntrySpec = resource.spec
    return Workload(
        name=resource.name,
        namespace=resource.namespace,
        address=spec.address,
        ports=spec.ports,
        labels=spec.labels,
        service_account=spec.serviceAccount or "default",
        weight=spec.weight or 1,
        locality=spec.locality,
        source=resource.ref,
    )


def services_of(resource: MeshResource) -> list[Service]:
    """The services (one per host) a ServiceEntry defines."""
    spec: ServiceEntrySpec = resource.spec
    ports = tuple(
        ServicePort(number=p.number, name=p.name, protocol=p.protocol.upper(), target_port=p.targetPort)
        for p in spec.ports
    )
    selector = spec.workloadSelector.labels if spec.workloadSelector is not None else None
    return [
        Service(
            host=host,
            namespace=resource.namespace,
            ports=ports,
            resolution=spec.effective_resolution,
            location=spec.location or "MESH_EXTERNAL",
            export_to=spec.exportTo or ("*",),
            selector=selector,
            source=resource.ref,
        )
        for host in spec.hosts
    ]


def inline_endpoint(entry: WorkloadEntrySpec, address: str | None = None) -> Endpoint:
    """An endpoint written inline in a ServiceEntry (``address`` overrides its own)."""
    return Endpoint(
        address=entry.address if address is None else address,
        ports=entry.ports,
        labels=entry.labels,
        weight=entry.weight or 1,
        locality=entry.locality,
    )


@attrs.frozen(kw_only=True)
class StaticConfig:
    """Config of ``static`` discovery (none yet)."""


class StaticDiscovery:
    """Services and workloads from the mesh resources themselves."""

    def __init__(self, config: StaticConfig | None = None) -> None:
        self.config = config or StaticConfig()

    def discover(self, resources: MeshResources, settings: MeshSettings) -> Discovered:  # noqa: ARG002 - the Discovery protocol
        """Services, workloads and STATIC/DNS_ROUND_ROBIN endpoints of ``resources``."""
        workloads = [workload_of(r) for r in resources.of_kind("WorkloadEntry")]
        services: list[Service] = []
        endpoints: dict[tuple[str, str], tuple[Endpoint, ...]] = {}
        problems: list[ConfigProblem] = []
        for resource in resources.of_kind("ServiceEntry"):
            spec: ServiceEntrySpec = resource.spec
            resolution = spec.effective_resolution
            if resolution == "NONE":
                problems.append(
                    resource.problem(
                        "spec.resolution",
                        "NONE (the default without endpoints or a workloadSelector) is not supported by "
                        "meshcore yet: give endpoints or a workloadSelector (STATIC), or set DNS",
                    )
                )
                continue
            found = services_of(resource)
            for service in found:
                if resolution in ("DNS", "DNS_ROUND_ROBIN") and service.host.startswith("*"):
                    problems.append(
                        resource.problem(
                            "spec.hosts", f"wildcard host {service.host!r} cannot be resolved ({resolution})"
                        )
                    )
                    continue
                services.append(service)
                if resolution == "STATIC":
                    endpoints[service.key] = self._static_endpoints(spec, service, workloads)
                elif resolution == "DNS_ROUND_ROBIN":
                    entries = spec.endpoints or (WorkloadEntrySpec(address=service.host),)
                    endpoints[service.key] = tuple(inline_endpoint(e) for e in entries)
        return Discovered(
            services=tuple(services),
            workloads=tuple(workloads),
            endpoints=endpoints,
            problems=tuple(problems),
        )

    @staticmethod
    def _static_endpoints(
        spec: ServiceEntrySpec, service: Service, workloads: list[Workload]
    ) -> tuple[Endpoint, ...]:
        if service.selector is None:
            return tuple(inline_endpoint(e) for e in spec.endpoints if e.address)
        return tuple(
            Endpoint(
                address=w.address,
                ports=w.ports,
                labels=w.labels,
                weight=w.weight,
                workload=f"{w.namespace}/{w.name}",
                locality=w.locality,
            )
            for w in workloads
            if w.namespace == service.namespace and w.address and labels_match(service.selector, w.labels)
        )

    async def run(self, changed: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:  # noqa: ARG002 - nothing to learn in the background
        """Nothing to learn in the background: the control plane watches the resource files."""
        task_status.started()


@meshcore.hookimpl
def meshcore_mesh_discovery() -> list[meshcore.DiscoveryType]:
    """Register ``static`` discovery."""
    return [
        meshcore.DiscoveryType(
            name="static",
            factory=StaticDiscovery,
            config=StaticConfig,
            description="services and workloads from ServiceEntry and WorkloadEntry resources",
            handles=(
                "ServiceEntry.hosts",
                "ServiceEntry.ports",
                "ServiceEntry.location",
                "ServiceEntry.resolution=STATIC|DNS_ROUND_ROBIN",
                "ServiceEntry.endpoints.address",
                "ServiceEntry.endpoints.ports",
                "ServiceEntry.endpoints.labels",
                "ServiceEntry.endpoints.weight",
                "ServiceEntry.workloadSelector",
                "ServiceEntry.exportTo",
                "WorkloadEntry.address",
                "WorkloadEntry.ports",
                "WorkloadEntry.labels",
                "WorkloadEntry.weight",
                "WorkloadEntry.serviceAccount",
            ),
        )
    ]
