"""The service registry kinds: ``ServiceEntry`` and ``WorkloadEntry`` (istio/api networking).

A ServiceEntry names a service (its hosts and ports) and where its endpoints come from:
inline ``endpoints``, WorkloadEntries chosen by ``workloadSelector``, or DNS. A
WorkloadEntry is one workload outside Kubernetes: its address, ports, labels and service
account. The ``static`` and ``dns`` discovery plugins turn them into the mesh model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import attrs

import meshcore
from meshcore import at_least, non_empty
from meshcore.plugins.istio_common import (
    EMPTY,
    WorkloadSelector,
    export_to,
    host_names,
    optional_port_number,
    port_number,
    protocol,
)

NETWORKING = ("networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3")


def _port_map(_instance: object, _attribute: object, value: Mapping[str, int]) -> None:
    for name, number in value.items():
        if not 1 <= number <= 65535:  # noqa: PLR2004 - the TCP port range
            msg = f"port {name!r} must be a port number from 1 to 65535, got {number!r}"
            raise ValueError(msg)


@attrs.frozen(kw_only=True)
class WorkloadEntrySpec:
    """One workload: where it is reached, its ports by name, labels, identity."""

    address: str = ""
    """Its IP address or DNS name (reached by the mesh on the ports below)."""
    ports: Mapping[str, int] = attrs.field(default=EMPTY, validator=_port_map)
    """Port numbers by the service port's name, when they differ from the service's."""
    labels: Mapping[str, str] = EMPTY
    network: str = ""
    locality: str = ""
    weight: int = attrs.field(default=0, validator=at_least(0))
    """Its share of load among the endpoints of a service (0: the default, 1)."""
    serviceAccount: str = ""
    """The service account it runs as (its SPIFFE identity); "default" when empty."""


@attrs.frozen(kw_only=True)
class ServicePort:
    """A port of a service."""

    number: int = attrs.field(validator=port_number)
    protocol: str = attrs.field(default="", validator=protocol)
    """HTTP, HTTP2, GRPC, GRPC-WEB (routed per request), or TCP, TLS, HTTPS, MONGO, REDIS,
    MYSQL (proxied as bytes). Empty: from the name's prefix (``http-web``), else TCP."""
    name: str = attrs.field(validator=non_empty)
    targetPort: int = attrs.field(default=0, validator=optional_port_number)
    """The port of the endpoints (when a WorkloadEntry does not say), 0: ``number``."""


@attrs.frozen(kw_only=True)
class ServiceEntrySpec:
    """A service of the mesh: hosts, ports, and where its endpoints come from."""

    hosts: tuple[str, ...] = attrs.field(validator=[non_empty, host_names])
    addresses: tuple[str, ...] = ()
    ports: tuple[ServicePort, ...] = ()
    location: Literal["MESH_EXTERNAL", "MESH_INTERNAL"] | None = None
    resolution: Literal["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"] | None = None
    """STATIC: the endpoints' addresses; DNS: each endpoint address (or each host) resolved, and
    re-resolved; DNS_ROUND_ROBIN: resolved at connection time. Unset: STATIC when endpoints
    or a workloadSelector are given."""
    endpoints: tuple[WorkloadEntrySpec, ...] = ()
    workloadSelector: WorkloadSelector | None = None
    exportTo: tuple[str, ...] = attrs.field(default=(), validator=export_to)
    subjectAltNames: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        if self.endpoints and self.workloadSelector is not None:
            msg = "takes endpoints or workloadSelector, not both"
            raise ValueError(msg)
        if self.workloadSelector is not None and self.resolution not in (None, "STATIC"):
            msg = f"workloadSelector needs resolution STATIC, got {self.resolution}"
            raise ValueError(msg)
        names = [port.name for port in self.ports]
        numbers = [str(port.number) for port in self.ports]
        for what, values in (("name", names), ("number", numbers)):
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                msg = f"ports repeat the {what} {', '.join(repeated)}"
                raise ValueError(msg)

    @property
    def effective_resolution(self) -> str:
        """The resolution, with an unset one read as STATIC or NONE as described above."""
        if self.resolution is not None:
            return self.resolution
        return "STATIC" if self.endpoints or self.workloadSelector is not None else "NONE"


@meshcore.hookimpl
def meshcore_mesh_kinds() -> list[meshcore.MeshKindType]:
    """Register ``ServiceEntry`` and ``WorkloadEntry``."""
    return [
        meshcore.MeshKindType(
            name="ServiceEntry",
            config=ServiceEntrySpec,
            api_versions=NETWORKING,
            description="a service of the mesh: hosts, ports, and its endpoints or how to find them",
        ),
        meshcore.MeshKindType(
            name="WorkloadEntry",
            config=WorkloadEntrySpec,
            api_versions=NETWORKING,
            description="one workload: address, ports, labels and service account",
        ),
    ]
