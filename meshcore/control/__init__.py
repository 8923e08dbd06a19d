"""The control plane: mesh resources, the mesh model, translation and delivery.

This module is the public API of the control plane, for plugins that add kinds of mesh
resources, discovery backends, translators and analyzers, as the first-party ones in
``meshcore.plugins`` do. It sits above the proxy runtime (it may import ``meshcore.config``,
``meshcore.http`` and ``meshcore.runtime``; nothing below imports it).
"""

from meshcore.config import (
    DirectResponse,
    FilterChain,
    FilterOverrides,
    HeaderMatch,
    Listener,
    QueryParamMatch,
    Redirect,
    RouteMatch,
    TlsContext,
    UpstreamTls,
    WeightedCluster,
)
from meshcore.config import Endpoint as ClusterEndpoint
from meshcore.control.analyze import Finding, Severity, finding
from meshcore.control.discovery import Discovered, Discovery, DiscoveryRef, build_model
from meshcore.control.model import (
    HTTP_PROTOCOLS,
    Endpoint,
    MeshModel,
    MeshSettings,
    OpenTelemetryProvider,
    Service,
    ServicePort,
    TracingProvider,
    Workload,
    fqdn,
    labels_match,
)
from meshcore.control.resources import Claims, MeshResource, MeshResources, ObjectMeta, load_resources
from meshcore.control.signer import NO_CA, SignedCertificate, Signer, SigningError
from meshcore.control.source import ControlPlaneSource, ControlPlaneSourceConfig
from meshcore.control.translate import (
    WORKLOAD_SECRET,
    ClusterBuild,
    ListenerBuild,
    ProxyIdentity,
    RouteBuild,
    RouteConfigBuild,
    SnapshotBuilder,
    Translation,
    TranslationContext,
    TranslationError,
    VirtualHostBuild,
    translate,
)

__all__ = [
    "HTTP_PROTOCOLS",
    "NO_CA",
    "WORKLOAD_SECRET",
    "Claims",
    "ClusterBuild",
    "ClusterEndpoint",
    "ControlPlaneSource",
    "ControlPlaneSourceConfig",
    "DirectResponse",
    "Discovered",
    "Discovery",
    "DiscoveryRef",
    "Endpoint",
    "FilterChain",
    "FilterOverrides",
    "Finding",
    "HeaderMatch",
    "Listener",
    "ListenerBuild",
    "MeshModel",
    "MeshResource",
    "MeshResources",
    "MeshSettings",
    "ObjectMeta",
    "OpenTelemetryProvider",
    "ProxyIdentity",
    "QueryParamMatch",
    "Redirect",
    "RouteBuild",
    "RouteConfigBuild",
    "RouteMatch",
    "Service",
    "ServicePort",
    "Severity",
    "SignedCertificate",
    "Signer",
    "SigningError",
    "SnapshotBuilder",
    "TlsContext",
    "TracingProvider",
    "Translation",
    "TranslationContext",
    "TranslationError",
    "UpstreamTls",
    "VirtualHostBuild",
    "WeightedCluster",
    "Workload",
    "build_model",
    "finding",
    "fqdn",
    "labels_match",
    "load_resources",
    "translate",
]
