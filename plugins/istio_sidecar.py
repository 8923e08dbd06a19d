"""The ``Sidecar`` kind: what a workload's sidecar listens on and which services it may reach.

Without iptables, a Sidecar's ``ingress`` listeners say where the sidecar takes inbound
traffic (``port``, ``bind``) and where the application listens (``defaultEndpoint``), and
its ``egress`` listeners with a ``port`` are local ports that forward to a service (for
clients that cannot use an HTTP proxy). The egress ``hosts`` scope what the proxy receives.
"""

from __future__ import annotations

import re
from typing import Literal

import attrs

import meshcore
from meshcore import non_empty
from meshcore.plugins.istio_common import WorkloadSelector, port_number, protocol
from meshcore.plugins.istio_destinationrule import ConnectionPoolSettings
from meshcore.plugins.istio_services import NETWORKING
from meshcore.plugins.istio_virtualservice import Destination

_EGRESS_HOST = re.compile(
    r"^(\*|\.|~|[a-z0-9]([-a-z0-9]*[a-z0-9])?)/(\*|(\*\.)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$"
)


def _egress_hosts(_instance: object, _attribute: object, value: tuple[str, ...]) -> None:
    for item in value:
        if not _EGRESS_HOST.match(item):
            msg = f'must be "namespace/host" ("./*", "*/reviews.default.svc.cluster.local", "~/*"), got {item!r}'
            raise ValueError(msg)


@attrs.frozen(kw_only=True)
class SidecarPort:
    """A listener's port."""

    number: int = attrs.field(validator=port_number)
    protocol: str = attrs.field(default="", validator=protocol)
    name: str = ""
    targetPort: int = 0


@attrs.frozen(kw_only=True)
class ServerTLSSettings:
    """TLS an ingress listener terminates."""

    httpsRedirect: bool = False
    mode: (
        Literal["PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL"]
        | None
    ) = None
    serverCertificate: str = ""
    privateKey: str = ""
    caCertificates: str = ""
    caCrl: str = ""
    credentialName: str = ""
    credentialNames: tuple[str, ...] = ()
    subjectAltNames: tuple[str, ...] = ()
    verifyCertificateSpki: tuple[str, ...] = ()
    verifyCertificateHash: tuple[str, ...] = ()
    minProtocolVersion: str = ""
    maxProtocolVersion: str = ""
    cipherSuites: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class IstioIngressListener:
    """An inbound listener: traffic for the workload on ``port``, to ``defaultEndpoint``."""

    port: SidecarPort
    bind: str = ""
    """The address to listen on (default: the workload's address)."""
    captureMode: Literal["DEFAULT", "IPTABLES", "NONE"] | None = None
    defaultEndpoint: str = ""
    """Where the application listens, "127.0.0.1:PORT" (or "0.0.0.0:PORT": the workload's address)."""
    tls: ServerTLSSettings | None = None
    connectionPool: ConnectionPoolSettings | None = None


@attrs.frozen(kw_only=True)
class IstioEgressListener:
    """Services the workload may reach, and optionally a local port that reaches them."""

    port: SidecarPort | None = None
    bind: str = ""
    captureMode: Literal["DEFAULT", "IPTABLES", "NONE"] | None = None
    hosts: tuple[str, ...] = attrs.field(validator=[non_empty, _egress_hosts])


@attrs.frozen(kw_only=True)
class OutboundTrafficPolicy:
    """What happens to traffic for hosts the mesh does not know."""

    mode: Literal["REGISTRY_ONLY", "ALLOW_ANY"] | None = None
    egressProxy: Destination | None = None


@attrs.frozen(kw_only=True)
class SidecarSpec:
    """The listeners of the sidecars of some workloads, and what they may reach."""

    workloadSelector: WorkloadSelector | None = None
    ingress: tuple[IstioIngressListener, ...] = ()
    egress: tuple[IstioEgressListener, ...] = ()
    inboundConnectionPool: ConnectionPoolSettings | None = None
    outboundTrafficPolicy: OutboundTrafficPolicy | None = None

    def __attrs_post_init__(self) -> None:
        catch_all = [i for i, e in enumerate(self.egress) if e.port is None]
        if len(catch_all) > 1:
            msg = f"egress may have one listener without a port, got {len(catch_all)}"
            raise ValueError(msg)


@meshcore.hookimpl
def meshcore_mesh_kinds() -> list[meshcore.MeshKindType]:
    """Register ``Sidecar``."""
    return [
        meshcore.MeshKindType(
            name="Sidecar",
            config=SidecarSpec,
            api_versions=NETWORKING,
            description="a workload's inbound listeners and the services its sidecar may reach",
        )
    ]
