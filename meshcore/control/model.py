"""The mesh model: services, workloads and endpoints, with the resources they came from.

Built by :func:`meshcore.control.build_model` from the validated mesh resources and what
the discovery backends found. Immutable: a change builds a new model, and translation
reads one model from start to end.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from meshcore.config import Duration, non_empty
from meshcore.control.resources import MeshResources
from meshcore.errors import ConfigProblem
from meshcore.telemetry.exporter import parse_endpoint

__all__ = [
    "HTTP_PROTOCOLS",
    "Endpoint",
    "MeshModel",
    "MeshSettings",
    "OpenTelemetryProvider",
    "Service",
    "ServicePort",
    "TracingProvider",
    "Workload",
    "fqdn",
    "labels_match",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})

HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC", "GRPC-WEB"})
"""Protocols routed request by request; every other one is proxied as bytes."""
_NAME_PREFIXES = ("grpc-web", "http2", "grpc", "http", "https", "tcp", "tls", "mongo", "redis", "mysql")


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether ``labels`` have every label of ``selector`` (an empty selector matches all)."""
    return all(labels.get(key) == value for key, value in selector.items())


def fqdn(host: str, namespace: str, domain_suffix: str) -> str:
    """Istio's short-name rule: ``reviews`` in namespace ``ns`` is ``reviews.ns.svc.<suffix>``.

    A name with a dot, or a wildcard, is already qualified.
    """
    if "." in host or host.startswith("*"):
        return host
    return f"{host}.{namespace}.svc.{domain_suffix}"


def _otlp_endpoint(_instance: Any, _attribute: Any, value: str) -> None:
    parse_endpoint(value)


@attrs.frozen(kw_only=True)
class OpenTelemetryProvider:
    """An OpenTelemetry collector's OTLP/HTTP traces endpoint."""

    endpoint: str = attrs.field(validator=_otlp_endpoint)
    """``http://HOST:4318/v1/traces``."""
    timeout: Duration = Duration(5)
    """How long one export may take."""
    headers: Mapping[str, str] = _EMPTY
    """Extra headers on export requests (an API key for a hosted backend)."""


@attrs.frozen(kw_only=True)
class TracingProvider:
    """A named place where sidecars send spans (Istio's ``extensionProviders`` item)."""

    name: str = attrs.field(validator=non_empty)
    opentelemetry: OpenTelemetryProvider


@attrs.frozen(kw_only=True)
class MeshSettings:
    """Mesh-wide settings (Istio's MeshConfig, in part).

    Attributes:
        trust_domain: the SPIFFE trust domain of workload identities.
        domain_suffix: the suffix of service names (``svc.<suffix>``).
        root_namespace: the namespace whose policies (Sidecar, ...) apply mesh-wide.
        mtls: workloads have certificates (the control plane runs a CA): sidecars talk
            mutual TLS as PeerAuthentication says (PERMISSIVE where it says nothing).
        tracing_providers: the tracing providers a Telemetry resource may name, by name
            (Istio's ``extensionProviders``): each an OTLP/HTTP traces endpoint.
        default_tracing_providers: the providers of a Telemetry ``tracing`` that names none
            (Istio's ``defaultProviders.tracing``).
    """

    trust_domain: str = "cluster.local"
    domain_suffix: str = "cluster.local"
    root_namespace: str = "istio-system"
    mtls: bool = False
    tracing_providers: tuple[TracingProvider, ...] = ()
    default_tracing_providers: tuple[str, ...] = ()

    def tracing_provider(self, name: str) -> TracingProvider | None:
        """The tracing provider ``name``, if configured."""
        return next((p for p in self.tracing_providers if p.name == name), None)


@attrs.frozen(kw_only=True)
class ServicePort:
    """A port of a service.

    Attributes:
        number: the service's port (what clients address).
        name: its name (endpoints give their own port numbers by this name).
        protocol: the protocol as written, upper-case ("" when unset).
        target_port: the endpoints' port when they give none (0: ``number``).
    """

    number: int
    name: str
    protocol: str = ""
    target_port: int = 0

    @property
    def effective_protocol(self) -> str:
        """The protocol, or the one its name says (``http-web`` is HTTP, as Istio reads names), else TCP."""
        if self.protocol:
            return self.protocol
        lowered = self.name.lower()
        for prefix in _NAME_PREFIXES:
            if lowered == prefix or lowered.startswith(prefix + "-"):
                return prefix.upper()
        return "TCP"

    @property
    def is_http(self) -> bool:
        """Whether requests on this port are routed one by one (HTTP, HTTP2, GRPC, GRPC-WEB)."""
        return self.effective_protocol in HTTP_PROTOCOLS


@attrs.frozen(kw_only=True)
class Service:
    """A service of the mesh, by one host name.

    Attributes:
        host: its fully qualified host name (or a ``*.`` wildcard).
        namespace: the namespace of the resource that defines it.
        ports: its ports.
        resolution: STATIC, DNS or DNS_ROUND_ROBIN (how endpoints are found).
        location: MESH_INTERNAL (has sidecars) or MESH_EXTERNAL.
        export_to: the namespaces it is visible to ("*", ".", names).
        selector: the labels of the workloads that are its endpoints (None: not by labels).
        source: the resource that defines it (``ServiceEntry default/reviews``), for messages.
    """

    host: str
    namespace: str
    ports: tuple[ServicePort, ...] = ()
    resolution: str = "STATIC"
    location: str = "MESH_INTERNAL"
    export_to: tuple[str, ...] = ("*",)
    selector: Mapping[str, str] | None = None
    source: str = ""

    def port(self, number: int) -> ServicePort | None:
        """The port numbered ``number``, if any."""
        return next((p for p in self.ports if p.number == number), None)

    def visible_to(self, namespace: str) -> bool:
        """Whether a proxy in ``namespace`` may see this service (``exportTo``)."""
        for item in self.export_to:
            if item in ("*", namespace) or (item == "." and namespace == self.namespace):
                return True
        return False

    @property
    def key(self) -> tuple[str, str]:
        """``(namespace, host)``: how endpoints are looked up."""
        return (self.namespace, self.host)


@attrs.frozen(kw_only=True)
class Workload:
    """A workload (an instance of an application with its sidecar).

    Attributes:
        name: its name (the WorkloadEntry's), unique in its namespace.
        namespace: its namespace.
        address: where the mesh reaches it.
        ports: its port numbers by service port name, where they differ.
        labels: its labels.
        service_account: its service account.
        weight: its share of load (1 when unset).
        locality: ``region/zone/subzone``.
        source: the resource that defines it.
    """

    name: str
    namespace: str
    address: str = ""
    ports: Mapping[str, int] = _EMPTY
    labels: Mapping[str, str] = _EMPTY
    service_account: str = "default"
    weight: int = 1
    locality: str = ""
    source: str = ""


@attrs.frozen(kw_only=True)
class Endpoint:
    """One address of a service.

    Attributes:
        address: an IP address or a DNS name.
        ports: port numbers by service port name, where they differ from the service's.
        labels: labels (subsets choose endpoints by them).
        weight: share of load, >= 1.
        workload: ``namespace/name`` of its workload, "" if none.
        locality: ``region/zone/subzone``.
    """

    address: str
    ports: Mapping[str, int] = _EMPTY
    labels: Mapping[str, str] = _EMPTY
    weight: int = 1
    workload: str = ""
    locality: str = ""

    def port_for(self, port: ServicePort) -> int:
        """The port this endpoint takes ``port``'s traffic on."""
        return self.ports.get(port.name) or port.target_port or port.number


@attrs.frozen
class MeshModel:
    """The whole mesh at one version.

    Attributes:
        resources: the mesh resources it was built from.
        services: every service.
        workloads: every workload.
        endpoints: each service's endpoints, by ``(namespace, host)``.
        settings: the mesh-wide settings.
        problems: what discovery could not make sense of (a model with problems is refused).
        memo: see the field.
    """

    resources: MeshResources
    services: tuple[Service, ...] = ()
    workloads: tuple[Workload, ...] = ()
    endpoints: Mapping[tuple[str, str], tuple[Endpoint, ...]] = MappingProxyType({})
    settings: MeshSettings = MeshSettings()
    problems: tuple[ConfigProblem, ...] = ()
    memo: dict[Any, Any] = attrs.field(factory=dict, init=False, eq=False, repr=False)
    """Results that depend on this model alone, kept by translators that compute them (a
    cluster of a service's subset is the same for every proxy that reaches it)."""
    _by_host: Mapping[str, tuple[Service, ...]] = attrs.field(init=False, repr=False, eq=False)
    _workloads: Mapping[tuple[str, str], Workload] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        by_host: dict[str, list[Service]] = {}
        for service in self.services:
            by_host.setdefault(service.host, []).append(service)
        object.__setattr__(self, "_by_host", {h: tuple(s) for h, s in by_host.items()})
        object.__setattr__(self, "_workloads", {(w.namespace, w.name): w for w in self.workloads})

    def services_for(self, host: str) -> tuple[Service, ...]:
        """The services of exactly ``host`` (one per namespace that defines it)."""
        return self._by_host.get(host, ())

    def service(self, host: str, namespace: str) -> Service | None:
        """The service of ``host`` as a proxy in ``namespace`` sees it: its own namespace's first.

        None when no service of that host is visible from ``namespace``.
        """
        found = [s for s in self._by_host.get(host, ()) if s.visible_to(namespace)]
        return next((s for s in found if s.namespace == namespace), found[0] if found else None)

    def workload(self, namespace: str, name: str) -> Workload | None:
        """The workload ``namespace/name``, if any."""
        return self._workloads.get((namespace, name))

    def endpoints_of(self, service: Service) -> tuple[Endpoint, ...]:
        """The endpoints of ``service``."""
        return self.endpoints.get(service.key, ())

    def services_of(self, workload: Workload) -> tuple[Service, ...]:
        """The services whose selector picks ``workload`` (in its namespace)."""
        return tuple(
            s
            for s in self.services
            if s.selector is not None
            and s.namespace == workload.namespace
            and labels_match(s.selector, workload.labels)
        )

    @property
    def version(self) -> str:
        """A digest of the resources and of what discovery found."""
        digest = hashlib.sha256(self.resources.version.encode())
        found = {
            f"{ns}/{host}": [attrs.asdict(e) for e in eps]
            for (ns, host), eps in sorted(self.endpoints.items())
        }
        digest.update(json.dumps(found, sort_keys=True, default=str).encode())
        return digest.hexdigest()[:12]
