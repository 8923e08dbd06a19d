"""The proxy config model: frozen attrs classes, one per section, and the Snapshot.

A :class:`Snapshot` is the whole config of one proxy at one version. It is immutable; the
runtime applies a new one as a diff. Filter sections are structured by each filter's own
config class (see :mod:`meshcore.config.structure`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal

import attrs

from meshcore.config.accesslog import AccessLogs, access_logs
from meshcore.config.structure import HttpFilterRef, LbPolicyRef, NetworkFilterRef, Path, Structurer
from meshcore.config.traffic import (
    CircuitBreakers,
    HealthCheck,
    Locality,
    LocalityLb,
    OutlierDetection,
    RequestMirrorPolicy,
    RetryPolicy,
)
from meshcore.config.units import Address, ByteSize, Duration, SecretStr
from meshcore.config.validators import at_least, at_most, cidr, non_empty, regex, unique

__all__ = [
    "AdminConfig",
    "Cluster",
    "DirectResponse",
    "Endpoint",
    "FilterChain",
    "FilterChainMatch",
    "FilterOverrides",
    "HeaderMatch",
    "Listener",
    "NodeInfo",
    "OverloadConfig",
    "QueryParamMatch",
    "Redirect",
    "Route",
    "RouteConfiguration",
    "RouteMatch",
    "Snapshot",
    "TlsContext",
    "TlsSecret",
    "UpstreamTls",
    "VirtualHost",
    "WeightedCluster",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def ref(kind: str, **kwargs: Any) -> Any:
    """An attrs field holding the name of another config object of ``kind`` ("cluster", ...)."""
    metadata = {**kwargs.pop("metadata", {}), "ref": kind}
    return attrs.field(metadata=metadata, **kwargs)


# -- admin and listeners ----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class AdminConfig:
    """The admin server: readiness, stats, config dump. Loopback only unless told otherwise."""

    address: Address = Address("127.0.0.1", 9901)
    enabled: bool = True


def _pem_certificates(_instance: Any, _attribute: attrs.Attribute[Any], value: str | None) -> None:
    """Holds PEM certificates (-----BEGIN CERTIFICATE-----)."""
    if value is not None and "-----BEGIN CERTIFICATE-----" not in value:
        msg = "must be PEM text with -----BEGIN CERTIFICATE----- blocks"
        raise ValueError(msg)


def _pem_private_key(_instance: Any, _attribute: attrs.Attribute[Any], value: str | None) -> None:
    """Holds a PEM private key (-----BEGIN PRIVATE KEY-----)."""
    if value is not None and re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", value) is None:
        msg = "must be PEM text with a -----BEGIN PRIVATE KEY----- block"
        raise ValueError(msg)


@attrs.frozen(kw_only=True)
class TlsSecret:
    """TLS material delivered as config (by a control plane, say) rather than as files: PEM text.

    Listeners and clusters name it: ``secret`` for the certificate and key they present,
    ``validation_secret`` for the roots they trust. A changed secret is taken by the next
    handshake of every listener and cluster that uses it, with nothing drained.
    """

    name: str = attrs.field(validator=non_empty)
    certificate_chain: str | None = attrs.field(default=None, validator=_pem_certificates)
    """The certificate, then its intermediates (PEM)."""
    private_key: SecretStr | None = attrs.field(default=None, validator=_pem_private_key)
    """The certificate's private key (PEM, unencrypted); redacted by /config_dump."""
    trusted_ca: str | None = attrs.field(default=None, validator=_pem_certificates)
    """Root certificates to verify peers with (PEM, one or several)."""

    def __attrs_post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            msg = "takes certificate_chain and private_key together"
            raise ValueError(msg)
        if self.certificate_chain is None and self.trusted_ca is None:
            msg = "needs certificate_chain and private_key, or trusted_ca, or both"
            raise ValueError(msg)


@attrs.frozen(kw_only=True)
class TlsContext:
    """Downstream TLS: the certificate a listener presents, and optionally client verification.

    The certificate and key come from files (``certificate_file``, ``private_key_file``) or
    from a secret (``secret``); the roots client certificates are verified with, from
    ``client_ca_file`` or ``validation_secret``.
    """

    certificate_file: str | None = attrs.field(default=None, validator=attrs.validators.optional(non_empty))
    private_key_file: str | None = attrs.field(default=None, validator=attrs.validators.optional(non_empty))
    secret: str | None = ref("secret", default=None)
    """The TlsSecret whose certificate_chain and private_key the listener presents."""
    client_ca_file: str | None = None
    validation_secret: str | None = ref("secret", default=None)
    """The TlsSecret whose trusted_ca client certificates are verified with."""
    require_client_certificate: bool = False
    alpn: tuple[str, ...] = ("http/1.1",)

    def __attrs_post_init__(self) -> None:
        files = self.certificate_file is not None or self.private_key_file is not None
        if files and self.secret is not None:
            msg = "takes certificate_file and private_key_file, or secret, not both"
            raise ValueError(msg)
        if not files and self.secret is None:
            msg = "needs certificate_file and private_key_file, or secret"
            raise ValueError(msg)
        if files and (self.certificate_file is None or self.private_key_file is None):
            msg = "takes certificate_file and private_key_file together"
            raise ValueError(msg)
        if self.client_ca_file is not None and self.validation_secret is not None:
            msg = "takes client_ca_file or validation_secret, not both"
            raise ValueError(msg)
        if self.require_client_certificate and self.client_ca_file is None and self.validation_secret is None:
            msg = "require_client_certificate needs client_ca_file or validation_secret"
            raise ValueError(msg)


@attrs.frozen(kw_only=True)
class FilterChainMatch:
    """Which connections a filter chain takes. Empty criteria match everything."""

    destination_port: int | None = attrs.field(default=None)
    server_names: tuple[str, ...] = ()
    alpn: tuple[str, ...] = ()
    source_prefixes: tuple[str, ...] = attrs.field(default=(), validator=cidr)


@attrs.frozen(kw_only=True)
class FilterChain:
    """L4 filters applied to a connection, the last one terminal (tcp_proxy, http_connection_manager)."""

    name: str = ""
    match: FilterChainMatch = FilterChainMatch()
    tls: TlsContext | None = None
    filters: tuple[NetworkFilterRef, ...] = attrs.field(validator=non_empty)


@attrs.frozen(kw_only=True)
class Listener:
    """A socket the proxy accepts connections on, and the filter chains that serve them."""

    name: str = attrs.field(validator=non_empty)
    address: Address
    filter_chains: tuple[FilterChain, ...] = attrs.field(validator=non_empty)
    access_log: AccessLogs = attrs.field(default=AccessLogs(), converter=access_logs)
    """Access logs (a list; ``true``: one JSON line per request in the process log)."""
    drain_timeout: Duration = Duration(30)
    max_connections: int = attrs.field(default=0, validator=at_least(0))
    """Connections this listener serves at once (0: no limit); one past it is closed at
    once, counted in ``listener_cx_overflow``."""


# -- clusters -------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Endpoint:
    """One upstream address of a cluster, written as "host:port" or a mapping."""

    address: Address
    weight: int = attrs.field(default=1, validator=at_least(1))
    locality: Locality | None = None
    """Where the endpoint runs, for locality-aware load balancing (see ``locality_lb``)."""
    priority: int = attrs.field(default=0, validator=[at_least(0), at_most(127)])
    """0 is used first; higher priorities take traffic only as lower ones lose health."""

    @classmethod
    def __meshcore_structure__(cls, structurer: Structurer, data: Any, path: Path) -> Any:
        if isinstance(data, str):
            data = {"address": data}
        elif not isinstance(data, Mapping):
            structurer.problem(path, f'must be an address "host:port" or a mapping, got {data!r}')
            return structurer.FAILED
        return structurer.structure_attrs(data, cls, path)


@attrs.frozen(kw_only=True)
class UpstreamTls:
    """TLS toward a cluster's endpoints.

    The roots endpoints are verified with come from ``ca_file`` or ``validation_secret``
    (neither: the system's); a client certificate, from files or ``secret``.
    """

    ca_file: str | None = None
    validation_secret: str | None = ref("secret", default=None)
    """The TlsSecret whose trusted_ca the endpoints' certificates are verified with."""
    server_name: str | None = None
    certificate_file: str | None = None
    private_key_file: str | None = None
    secret: str | None = ref("secret", default=None)
    """The TlsSecret whose certificate_chain and private_key are presented to the endpoints."""
    alpn: tuple[str, ...] = ()
    peer_identities: tuple[str, ...] = ()
    """Secure naming: the SPIFFE IDs (URI SANs) the endpoints' certificates may carry; one of
    them must be there, else the connection fails with the flag ``UIM``. When set, the
    certificate is checked for these instead of for ``server_name`` (workload certificates
    carry no DNS name); its chain is verified against ``ca_file`` all the same."""

    def __attrs_post_init__(self) -> None:
        if self.ca_file is not None and self.validation_secret is not None:
            msg = "takes ca_file or validation_secret, not both"
            raise ValueError(msg)
        if self.secret is not None and (
            self.certificate_file is not None or self.private_key_file is not None
        ):
            msg = "takes certificate_file and private_key_file, or secret, not both"
            raise ValueError(msg)


@attrs.frozen(kw_only=True)
class Cluster:
    """A named group of upstream endpoints with a load-balancing policy and a connection pool."""

    name: str = attrs.field(validator=non_empty)
    endpoints: tuple[Endpoint, ...] = ()
    lb_policy: LbPolicyRef = LbPolicyRef(name="round_robin")
    connect_timeout: Duration = Duration(5)
    max_connections_per_endpoint: int = attrs.field(default=1024, validator=at_least(1))
    """Open connections to one endpoint at most; further requests wait for one (circuit breaker)."""
    max_idle_connections_per_endpoint: int = attrs.field(default=256, validator=at_least(0))
    """Kept-alive idle connections per endpoint; more are closed when released."""
    idle_timeout: Duration = Duration(60)
    protocol: Literal["http1", "http2", "auto"] = "http1"
    """The upstream protocol: HTTP/1.1, HTTP/2, or ``auto`` (the protocol the client spoke)."""
    codec: Literal["h11", "fast"] = "h11"
    """The HTTP/1.1 codec toward the endpoints: ``h11`` (the reference) or ``fast``."""
    tls: UpstreamTls | None = None
    circuit_breakers: CircuitBreakers = CircuitBreakers()
    outlier_detection: OutlierDetection | None = None
    health_checks: tuple[HealthCheck, ...] = ()
    healthy_panic_threshold: float = attrs.field(default=50.0, validator=[at_least(0), at_most(100)])
    """Below this share of healthy endpoints, every endpoint is used again (0: never)."""
    overprovisioning_factor: float = attrs.field(default=1.4, validator=at_least(1))
    """A priority level with this share of healthy endpoints over 1/factor keeps all its traffic."""
    locality_lb: LocalityLb | None = None


# -- routes ---------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class HeaderMatch:
    """A header criterion: exact value, prefix, regex or mere presence; optionally inverted."""

    name: str = attrs.field(validator=non_empty)
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = attrs.field(default=None, validator=regex)
    present: bool | None = None
    invert: bool = False

    def __attrs_post_init__(self) -> None:
        given = [k for k in ("exact", "prefix", "regex", "present") if getattr(self, k) is not None]
        if len(given) > 1:
            msg = f"takes at most one of exact, prefix, regex, present; got {', '.join(given)}"
            raise ValueError(msg)


@attrs.frozen(kw_only=True)
class QueryParamMatch:
    """A query-parameter criterion: exact value, regex, or presence."""

    name: str = attrs.field(validator=non_empty)
    exact: str | None = None
    regex: str | None = attrs.field(default=None, validator=regex)
    present: bool | None = None


@attrs.frozen(kw_only=True)
class RouteMatch:
    """What a request must look like for a route to take it. Exactly one of path, prefix, regex."""

    path: str | None = None
    prefix: str | None = None
    regex: str | None = attrs.field(default=None, validator=regex)
    methods: tuple[str, ...] = ()
    headers: tuple[HeaderMatch, ...] = ()
    query_params: tuple[QueryParamMatch, ...] = ()
    case_sensitive: bool = True

    def __attrs_post_init__(self) -> None:
        given = [k for k in ("path", "prefix", "regex") if getattr(self, k) is not None]
        if len(given) != 1:
            got = ", ".join(given) if given else "none"
            msg = f"needs exactly one of path, prefix, regex; got {got}"
            raise ValueError(msg)


@attrs.frozen(kw_only=True)
class WeightedCluster:
    """One cluster of a weighted split."""

    name: str = ref("cluster", validator=non_empty)
    weight: int = attrs.field(validator=at_least(0))


@attrs.frozen(kw_only=True)
class DirectResponse:
    """Answer locally with a status and a body."""

    status: int = attrs.field(validator=[at_least(100), at_most(599)])
    body: str = ""
    content_type: str = "text/plain"


@attrs.frozen(kw_only=True)
class Redirect:
    """Answer with a redirect; unset parts keep the request's."""

    scheme: str | None = None
    host: str | None = None
    port: int | None = None
    path: str | None = None
    prefix_rewrite: str | None = None
    status: Literal[301, 302, 303, 307, 308] = 301
    strip_query: bool = False


@attrs.frozen
class FilterOverrides:
    """Per-route settings of HTTP filters: a filter's own config, or ``disabled``.

    Written as a mapping of filter name to that filter's config (structured by its per-route
    config class) or the string ``disabled``.
    """

    by_filter: Mapping[str, Any] = _EMPTY

    DISABLED = "disabled"

    @classmethod
    def __meshcore_structure__(cls, structurer: Structurer, data: Any, path: Path) -> Any:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            structurer.problem(path, f"must be a mapping of filter names, got {type(data).__name__}")
            return structurer.FAILED
        known = structurer.catalog.names("http_filter")
        out: dict[str, Any] = {}
        failed = False
        for name, section in data.items():
            if name not in known:
                structurer.problem(
                    (*path, str(name)), f"unknown HTTP filter {name!r} (known: {', '.join(sorted(known))})"
                )
                failed = True
            elif section == cls.DISABLED:
                out[name] = cls.DISABLED
            else:
                value = structurer.per_route_config("http_filter", name, section, (*path, name))
                failed = failed or value is structurer.FAILED
                out[name] = value
        return structurer.FAILED if failed else cls(MappingProxyType(out))


@attrs.frozen(kw_only=True)
class Route:
    """A route: a match and one action (cluster, weighted clusters, direct response, redirect)."""

    name: str = ""
    match: RouteMatch
    cluster: str | None = ref("cluster", default=None)
    weighted_clusters: tuple[WeightedCluster, ...] = ()
    direct_response: DirectResponse | None = None
    redirect: Redirect | None = None
    prefix_rewrite: str | None = None
    regex_rewrite: tuple[str, str] | None = None
    host_rewrite: str | None = None
    timeout: Duration = Duration(15)
    request_headers_to_add: Mapping[str, str] = _EMPTY
    request_headers_to_remove: tuple[str, ...] = ()
    response_headers_to_add: Mapping[str, str] = _EMPTY
    response_headers_to_remove: tuple[str, ...] = ()
    filters: FilterOverrides = FilterOverrides()
    upgrades: tuple[str, ...] = ()
    """HTTP/1.1 upgrades this route allows (e.g. ``websocket``); after the upgrade the
    connection is a byte pipe. An upgrade request on a route that does not allow it gets 403."""
    retry_policy: RetryPolicy | None = None
    request_mirror_policies: tuple[RequestMirrorPolicy, ...] = ()

    def __attrs_post_init__(self) -> None:
        actions = [
            k for k in ("cluster", "weighted_clusters", "direct_response", "redirect") if getattr(self, k)
        ]
        if len(actions) != 1:
            got = ", ".join(actions) if actions else "none"
            msg = f"needs exactly one action of cluster, weighted_clusters, direct_response, redirect; got {got}"
            raise ValueError(msg)
        if self.regex_rewrite is not None:
            try:
                re.compile(self.regex_rewrite[0])
            except re.error as err:
                msg = f"regex_rewrite has an invalid regular expression ({err})"
                raise ValueError(msg) from None


@attrs.frozen(kw_only=True)
class VirtualHost:
    """Routes for a set of domains (Host / :authority), with "*" wildcards at either end."""

    name: str = attrs.field(validator=non_empty)
    domains: tuple[str, ...] = attrs.field(validator=non_empty)
    routes: tuple[Route, ...] = ()


@attrs.frozen(kw_only=True)
class RouteConfiguration:
    """A named route table, used by HTTP connection managers."""

    name: str = attrs.field(validator=non_empty)
    virtual_hosts: tuple[VirtualHost, ...] = attrs.field(default=(), validator=unique(lambda vh: vh.name))


# -- overload ---------------------------------------------------------------------------------


_FRACTION = [at_least(0.01), at_most(1.0)]


@attrs.frozen(kw_only=True)
class OverloadConfig:
    """Protection of the whole process: a connection limit, and load shed as memory runs out.

    In the spirit of Envoy's overload manager: the process's resident memory (RSS) is
    watched against ``max_memory``; as it passes each fraction, one more action starts
    (and stops once it falls back), each logged and counted: keep-alive disabled, new
    requests answered 503, new connections no longer accepted.
    """

    max_connections: int = attrs.field(default=0, validator=at_least(0))
    """Downstream connections of all listeners at once (0: no limit); one past it is
    closed at once, counted in ``overload_cx_overflow``."""
    max_memory: ByteSize = ByteSize(0)
    """The memory (RSS) the process should stay under (0: not watched)."""
    disable_keepalive_at: float = attrs.field(default=0.8, validator=_FRACTION)
    """The fraction of ``max_memory`` past which keep-alive is disabled."""
    reject_requests_at: float = attrs.field(default=0.9, validator=_FRACTION)
    """... past which new requests get 503."""
    stop_accepting_at: float = attrs.field(default=0.95, validator=_FRACTION)
    """... past which listeners stop accepting connections."""
    check_interval: Duration = Duration(1)


# -- the snapshot ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class NodeInfo:
    """Who a proxy is in the mesh, as its control plane knows it.

    Set by the control plane in every Snapshot it sends (None for a proxy configured from a
    file). Filters read it as ``context.snapshot.node``.

    Attributes:
        id: this proxy's own id, unique among the control plane's proxies.
        workload: the workload it serves (a WorkloadEntry's name), "" if none is known.
        namespace: the workload's namespace.
        service_account: the workload's service account (its SPIFFE identity's last part).
        labels: the workload's labels.
        services: the host names of the services the workload is an endpoint of.
        version: the meshcore version the proxy runs.
        trust_domain: the mesh's trust domain (``spiffe://<trust_domain>/ns/...``).
    """

    id: str = attrs.field(validator=non_empty)
    workload: str = ""
    namespace: str = "default"
    service_account: str = "default"
    labels: Mapping[str, str] = _EMPTY
    services: tuple[str, ...] = ()
    version: str = ""
    trust_domain: str = "cluster.local"

    @property
    def spiffe_id(self) -> str:
        """The workload's SPIFFE ID: ``spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>``."""
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"


@attrs.frozen(kw_only=True)
class Snapshot:
    """The whole config of one proxy at one version: immutable, applied atomically."""

    version: str = ""
    node: NodeInfo | None = None
    """Who this proxy is in the mesh (set by a control plane; None when configured from a file)."""
    admin: AdminConfig = AdminConfig()
    listeners: tuple[Listener, ...] = attrs.field(default=(), validator=unique(lambda x: x.name))
    clusters: tuple[Cluster, ...] = attrs.field(default=(), validator=unique(lambda x: x.name))
    route_configs: tuple[RouteConfiguration, ...] = attrs.field(
        default=(), validator=unique(lambda x: x.name)
    )
    secrets: tuple[TlsSecret, ...] = attrs.field(default=(), validator=unique(lambda x: x.name))
    overload: OverloadConfig = OverloadConfig()

    def cluster(self, name: str) -> Cluster | None:
        """The cluster called ``name``, if any."""
        return next((c for c in self.clusters if c.name == name), None)

    def route_config(self, name: str) -> RouteConfiguration | None:
        """The route table called ``name``, if any."""
        return next((r for r in self.route_configs if r.name == name), None)

    def secret(self, name: str) -> TlsSecret | None:
        """The secret called ``name``, if any."""
        return next((s for s in self.secrets if s.name == name), None)


__all__ += ["HttpFilterRef", "NetworkFilterRef", "ref"]
