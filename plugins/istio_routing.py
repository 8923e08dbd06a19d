"""The traffic kinds: ``VirtualService`` and ``DestinationRule``.

A VirtualService says how requests to some hosts are routed; a DestinationRule names
subsets of a service's endpoints and the policies toward them.

Every field Istio defines is structured and checked here, with Istio's names. Which of
them meshcore acts on is declared by the translators (``handles``); a field no translator
handles is refused as not supported yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import attrs

import meshcore
from meshcore import Duration, RetryOn, at_least, at_most, non_empty, regex
from meshcore.plugins.istio_common import (
    EMPTY,
    Percent,
    PolicySelector,
    PortSelector,
    StringMatch,
    export_to,
    host_name,
    host_names,
    optional_port_number,
)
from meshcore.plugins.istio_services import NETWORKING

# -- VirtualService -------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Destination:
    """Where traffic goes: a service host, optionally a subset and a port."""

    host: str = attrs.field(validator=[non_empty, host_name])
    subset: str = ""
    port: PortSelector | None = None


@attrs.frozen(kw_only=True)
class HeaderOperations:
    """Header edits: ``set`` replaces, ``add`` appends, ``remove`` deletes."""

    set: Mapping[str, str] = EMPTY
    add: Mapping[str, str] = EMPTY
    remove: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class Headers:
    """Header edits on the request (toward the destination) and on the response."""

    request: HeaderOperations | None = None
    response: HeaderOperations | None = None


@attrs.frozen(kw_only=True)
class HTTPMatchRequest:
    """Conditions a request must meet, all of them (a route's matches are ORed)."""

    name: str = ""
    uri: StringMatch | None = None
    scheme: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: Mapping[str, StringMatch] = EMPTY
    port: int = attrs.field(default=0, validator=optional_port_number)
    sourceLabels: Mapping[str, str] = EMPTY
    gateways: tuple[str, ...] = ()
    queryParams: Mapping[str, StringMatch] = EMPTY
    ignoreUriCase: bool = False
    withoutHeaders: Mapping[str, StringMatch] = EMPTY
    sourceNamespace: str = ""
    statPrefix: str = ""


@attrs.frozen(kw_only=True)
class HTTPRouteDestination:
    """A destination of a route and its share of the traffic."""

    destination: Destination
    weight: int = attrs.field(default=0, validator=at_least(0))
    headers: Headers | None = None


@attrs.frozen(kw_only=True)
class HTTPRedirect:
    """Answer with a redirect."""

    uri: str = ""
    authority: str = ""
    port: int = attrs.field(default=0, validator=optional_port_number)
    derivePort: Literal["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"] | None = None
    scheme: str = ""
    redirectCode: int = attrs.field(default=301, validator=[at_least(300), at_most(399)])
    prefixRewrite: str = ""

    def __attrs_post_init__(self) -> None:
        if self.port and self.derivePort is not None:
            msg = "takes port or derivePort, not both"
            raise ValueError(msg)
        if self.uri and self.prefixRewrite:
            msg = "takes uri or prefixRewrite, not both"
            raise ValueError(msg)


@attrs.frozen(kw_only=True)
class HTTPBody:
    """A response body: ``string``, or ``bytes`` (base64)."""

    string: str | None = None
    bytes: str | None = None

    def __attrs_post_init__(self) -> None:
        if (self.string is None) == (self.bytes is None):
            msg = "needs exactly one of string, bytes"
            raise ValueError(msg)


@attrs.frozen(kw_only=True)
class HTTPDirectResponse:
    """Answer locally with a status and an optional body."""

    status: int = attrs.field(validator=[at_least(200), at_most(599)])
    body: HTTPBody | None = None


@attrs.frozen(kw_only=True)
class Delegate:
    """Another VirtualService that holds this route's rules."""

    name: str = attrs.field(validator=non_empty)
    namespace: str = ""


@attrs.frozen(kw_only=True)
class RegexRewrite:
    """Rewrite the matching parts of the path (``rewrite`` may refer to the match's groups)."""

    match: str = attrs.field(validator=[non_empty, regex])
    rewrite: str = ""


@attrs.frozen(kw_only=True)
class HTTPRewrite:
    """Rewrite the path (or the matched prefix) and the authority before forwarding."""

    uri: str = ""
    authority: str = ""
    uriRegexRewrite: RegexRewrite | None = None

    def __attrs_post_init__(self) -> None:
        if self.uri and self.uriRegexRewrite is not None:
            msg = "takes uri or uriRegexRewrite, not both"
            raise ValueError(msg)


ENVOY_ONLY_RETRY_ON = ("retriable-headers", "envoy-ratelimited", "http3-post-connect-failure")
"""Envoy's retry conditions that Istio passes through and meshcore cannot honour yet."""


def retry_on(_instance: object, _attribute: object, value: str) -> None:
    """Istio's ``retryOn``: Envoy's HTTP and gRPC condition names and HTTP statuses, comma-separated."""
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        if part.isdigit():
            if not 100 <= int(part) <= 599:  # noqa: PLR2004 - the range of HTTP statuses
                msg = f"{part!r} is not an HTTP status (100..599)"
                raise ValueError(msg)
        elif part in ENVOY_ONLY_RETRY_ON:
            msg = f"retry condition {part!r} is not supported by meshcore yet"
            raise ValueError(msg)
        else:
            RetryOn.__meshcore_parse__(part)  # an unknown name: its error, with a "did you mean"


@attrs.frozen(kw_only=True)
class HTTPRetry:
    """Retries of failed requests."""

    attempts: int = attrs.field(default=0, validator=at_least(0))
    perTryTimeout: Duration | None = None
    retryOn: str = attrs.field(default="", validator=retry_on)
    retryRemoteLocalities: bool | None = None
    retryIgnorePreviousHosts: bool | None = None
    backoff: Duration | None = None


@attrs.frozen(kw_only=True)
class FaultDelay:
    """A delay before forwarding: ``fixedDelay`` for ``percentage`` of requests."""

    percent: int | None = attrs.field(
        default=None, validator=attrs.validators.optional([at_least(0), at_most(100)])
    )
    fixedDelay: Duration | None = None
    exponentialDelay: Duration | None = None
    percentage: Percent | None = None

    def __attrs_post_init__(self) -> None:
        if (self.fixedDelay is None) == (self.exponentialDelay is None):
            msg = "needs exactly one of fixedDelay, exponentialDelay"
            raise ValueError(msg)


@attrs.frozen(kw_only=True)
class FaultAbort:
    """A local error instead of forwarding, for ``percentage`` of requests."""

    httpStatus: int | None = attrs.field(
        default=None, validator=attrs.validators.optional([at_least(200), at_most(599)])
    )
    grpcStatus: str | None = None
    http2Error: str | None = None
    percentage: Percent | None = None

    def __attrs_post_init__(self) -> None:
        given = [k for k in ("httpStatus", "grpcStatus", "http2Error") if getattr(self, k) is not None]
        if len(given) != 1:
            got = ", ".join(given) if given else "none"
            msg = f"needs exactly one of httpStatus, grpcStatus, http2Error; got {got}"
            raise ValueError(msg)


@attrs.frozen(kw_only=True)
class HTTPFaultInjection:
    """Faults injected into matching requests: a delay, an abort, or both."""

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


@attrs.frozen(kw_only=True)
class HTTPMirrorPolicy:
    """A copy of the traffic sent to another destination."""

    destination: Destination
    percentage: Percent | None = None


@attrs.frozen(kw_only=True)
class CorsPolicy:
    """Cross-origin resource sharing."""

    allowOrigin: tuple[str, ...] = ()
    allowOrigins: tuple[StringMatch, ...] = ()
    allowMethods: tuple[str, ...] = ()
    allowHeaders: tuple[str, ...] = ()
    exposeHeaders: tuple[str, ...] = ()
    maxAge: Duration | None = None
    allowCredentials: bool | None = None
    unmatchedPreflights: Literal["UNSPECIFIED", "FORWARD", "IGNORE"] | None = None


@attrs.frozen(kw_only=True)
class HTTPRoute:
    """One HTTP rule: matches, then a destination (weighted), a redirect or a direct response."""

    name: str = ""
    match: tuple[HTTPMatchRequest, ...] = ()
    route: tuple[HTTPRouteDestination, ...] = ()
    redirect: HTTPRedirect | None = None
    directResponse: HTTPDirectResponse | None = None
    delegate: Delegate | None = None
    rewrite: HTTPRewrite | None = None
    timeout: Duration | None = None
    retries: HTTPRetry | None = None
    fault: HTTPFaultInjection | None = None
    mirror: Destination | None = None
    mirrors: tuple[HTTPMirrorPolicy, ...] = ()
    mirrorPercent: int | None = attrs.field(
        default=None, validator=attrs.validators.optional([at_least(0), at_most(100)])
    )
    mirrorPercentage: Percent | None = None
    corsPolicy: CorsPolicy | None = None
    headers: Headers | None = None

    def __attrs_post_init__(self) -> None:
        actions = [k for k in ("route", "redirect", "directResponse", "delegate") if getattr(self, k)]
        if len(actions) != 1:
            got = ", ".join(actions) if actions else "none"
            msg = f"needs exactly one of route, redirect, directResponse, delegate; got {got}"
            raise ValueError(msg)
        if len(self.route) > 1 and sum(d.weight for d in self.route) == 0:
            msg = "the weights of several route destinations must not all be 0"
            raise ValueError(msg)


@attrs.frozen(kw_only=True)
class RouteDestination:
    """A destination of a TCP or TLS route and its share of connections."""

    destination: Destination
    weight: int = attrs.field(default=0, validator=at_least(0))


@attrs.frozen(kw_only=True)
class L4MatchAttributes:
    """Conditions on a connection."""

    destinationSubnets: tuple[str, ...] = ()
    port: int = attrs.field(default=0, validator=optional_port_number)
    sourceSubnet: str = ""
    sourceLabels: Mapping[str, str] = EMPTY
    gateways: tuple[str, ...] = ()
    sourceNamespace: str = ""


@attrs.frozen(kw_only=True)
class TCPRoute:
    """A rule for TCP connections."""

    match: tuple[L4MatchAttributes, ...] = ()
    route: tuple[RouteDestination, ...] = attrs.field(default=(), validator=non_empty)


@attrs.frozen(kw_only=True)
class TLSMatchAttributes:
    """Conditions on a TLS connection (SNI)."""

    sniHosts: tuple[str, ...] = attrs.field(validator=non_empty)
    destinationSubnets: tuple[str, ...] = ()
    port: int = attrs.field(default=0, validator=optional_port_number)
    sourceLabels: Mapping[str, str] = EMPTY
    gateways: tuple[str, ...] = ()
    sourceNamespace: str = ""


@attrs.frozen(kw_only=True)
class TLSRoute:
    """A rule for TLS connections, routed by SNI without terminating TLS."""

    match: tuple[TLSMatchAttributes, ...] = attrs.field(validator=non_empty)
    route: tuple[RouteDestination, ...] = ()


@attrs.frozen(kw_only=True)
class VirtualServiceSpec:
    """How requests to some hosts are routed."""

    hosts: tuple[str, ...] = attrs.field(default=(), validator=host_names)
    gateways: tuple[str, ...] = ()
    http: tuple[HTTPRoute, ...] = ()
    tls: tuple[TLSRoute, ...] = ()
    tcp: tuple[TCPRoute, ...] = ()
    exportTo: tuple[str, ...] = attrs.field(default=(), validator=export_to)


# -- DestinationRule ------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class CookieAttribute:
    """An attribute of a generated cookie."""

    name: str = attrs.field(validator=non_empty)
    value: str = ""


@attrs.frozen(kw_only=True)
class HTTPCookie:
    """The cookie a consistent hash is taken from (generated when absent)."""

    name: str = attrs.field(validator=non_empty)
    path: str = ""
    ttl: Duration | None = None
    attributes: tuple[CookieAttribute, ...] = ()


@attrs.frozen(kw_only=True)
class RingHash:
    """The ring-hash algorithm."""

    minimumRingSize: int = attrs.field(default=0, validator=at_least(0))


@attrs.frozen(kw_only=True)
class MagLev:
    """The Maglev algorithm."""

    tableSize: int = attrs.field(default=0, validator=at_least(0))


@attrs.frozen(kw_only=True)
class ConsistentHashLB:
    """Sticky load balancing by a hash of the request."""

    httpHeaderName: str | None = None
    httpCookie: HTTPCookie | None = None
    useSourceIp: bool | None = None
    httpQueryParameterName: str | None = None
    ringHash: RingHash | None = None
    maglev: MagLev | None = None
    minimumRingSize: int | None = None


@attrs.frozen(kw_only=True)
class LocalityDistribute:
    """Traffic from one locality spread over others, by weight."""

    from_: str = attrs.field(default="", metadata={"key": "from"})
    to: Mapping[str, int] = EMPTY


@attrs.frozen(kw_only=True)
class LocalityFailover:
    """Where traffic from a locality goes when its own endpoints are unhealthy."""

    from_: str = attrs.field(default="", metadata={"key": "from"})
    to: str = ""


@attrs.frozen(kw_only=True)
class LocalityLoadBalancerSetting:
    """Locality-weighted load balancing and failover."""

    distribute: tuple[LocalityDistribute, ...] = ()
    failover: tuple[LocalityFailover, ...] = ()
    failoverPriority: tuple[str, ...] = ()
    enabled: bool | None = None


@attrs.frozen(kw_only=True)
class ZoneAwareLoadBalancerSetting:
    """Zone-aware routing."""

    enabled: bool | None = None
    failover: tuple[LocalityFailover, ...] = ()
    failoverPriority: tuple[str, ...] = ()
    minClusterSize: int | None = None


@attrs.frozen(kw_only=True)
class WarmupConfiguration:
    """Slow start of new endpoints."""

    duration: Duration
    minimumPercent: float | None = None
    aggression: float | None = None


@attrs.frozen(kw_only=True)
class LoadBalancerSettings:
    """How endpoints are picked."""

    simple: (
        Literal["UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST"] | None
    ) = None
    consistentHash: ConsistentHashLB | None = None
    localityLbSetting: LocalityLoadBalancerSetting | None = None
    zoneAwareLbSetting: ZoneAwareLoadBalancerSetting | None = None
    warmupDurationSecs: Duration | None = None
    warmup: WarmupConfiguration | None = None

    def __attrs_post_init__(self) -> None:
        if self.simple is not None and self.consistentHash is not None:
            msg = "takes simple or consistentHash, not both"
            raise ValueError(msg)


@attrs.frozen(kw_only=True)
class TcpKeepalive:
    """TCP keepalive probes."""

    probes: int = attrs.field(default=0, validator=at_least(0))
    time: Duration | None = None
    interval: Duration | None = None


@attrs.frozen(kw_only=True)
class TCPSettings:
    """Connection limits and timeouts common to HTTP and TCP."""

    maxConnections: int = attrs.field(default=0, validator=at_least(0))
    connectTimeout: Duration | None = None
    tcpKeepalive: TcpKeepalive | None = None
    maxConnectionDuration: Duration | None = None
    idleTimeout: Duration | None = None


@attrs.frozen(kw_only=True)
class ConnectionKeepalive:
    """HTTP/2 keepalive pings."""

    interval: Duration | None = None
    timeout: Duration | None = None


@attrs.frozen(kw_only=True)
class HTTPSettings:
    """HTTP connection pool limits."""

    http1MaxPendingRequests: int = attrs.field(default=0, validator=at_least(0))
    http2MaxRequests: int = attrs.field(default=0, validator=at_least(0))
    maxRequestsPerConnection: int = attrs.field(default=0, validator=at_least(0))
    maxRetries: int = attrs.field(default=0, validator=at_least(0))
    idleTimeout: Duration | None = None
    h2UpgradePolicy: Literal["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"] | None = None
    useClientProtocol: bool = False
    maxConcurrentStreams: int = attrs.field(default=0, validator=at_least(0))
    http2KeepAlive: ConnectionKeepalive | None = None


@attrs.frozen(kw_only=True)
class ConnectionPoolSettings:
    """Connection pool (circuit breaker) limits toward a service."""

    tcp: TCPSettings | None = None
    http: HTTPSettings | None = None


@attrs.frozen(kw_only=True)
class OutlierDetection:
    """Ejection of endpoints that keep failing."""

    consecutiveErrors: int = attrs.field(default=0, validator=at_least(0))
    splitExternalLocalOriginErrors: bool = False
    consecutiveLocalOriginFailures: int | None = None
    consecutiveGatewayErrors: int | None = None
    consecutive5xxErrors: int | None = None
    interval: Duration | None = None
    baseEjectionTime: Duration | None = None
    maxEjectionPercent: int = attrs.field(default=0, validator=[at_least(0), at_most(100)])
    minHealthPercent: int = attrs.field(default=0, validator=[at_least(0), at_most(100)])
    outlierDetectionHttpErrorCodes: tuple[int, ...] = ()


@attrs.frozen(kw_only=True)
class ClientTLSSettings:
    """TLS toward the service's endpoints."""

    mode: Literal["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"] | None = None
    clientCertificate: str = ""
    privateKey: str = ""
    caCertificates: str = ""
    credentialName: str = ""
    subjectAltNames: tuple[str, ...] = ()
    sni: str = ""
    insecureSkipVerify: bool | None = None
    caCrl: str = ""


@attrs.frozen(kw_only=True)
class PortTrafficPolicy:
    """Traffic policy for one port of the service."""

    port: PortSelector | None = None
    loadBalancer: LoadBalancerSettings | None = None
    connectionPool: ConnectionPoolSettings | None = None
    outlierDetection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None


@attrs.frozen(kw_only=True)
class TunnelSettings:
    """Tunnel the traffic through a proxy (HTTP CONNECT or POST)."""

    protocol: str = ""
    targetHost: str = attrs.field(validator=non_empty)
    targetPort: int = attrs.field(validator=optional_port_number)


@attrs.frozen(kw_only=True)
class ProxyProtocol:
    """Send the PROXY protocol header upstream."""

    version: Literal["V1", "V2"] = "V1"


@attrs.frozen(kw_only=True)
class RetryBudget:
    """At most this share of active requests may be retries."""

    percent: float | None = attrs.field(
        default=None, validator=attrs.validators.optional([at_least(0), at_most(100)])
    )
    minRetryConcurrency: int = attrs.field(default=0, validator=at_least(0))
    budgetInterval: Duration | None = None


@attrs.frozen(kw_only=True)
class TrafficPolicy:
    """Policies toward a service (or a subset of it)."""

    loadBalancer: LoadBalancerSettings | None = None
    connectionPool: ConnectionPoolSettings | None = None
    outlierDetection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None
    portLevelSettings: tuple[PortTrafficPolicy, ...] = ()
    tunnel: TunnelSettings | None = None
    proxyProtocol: ProxyProtocol | None = None
    retryBudget: RetryBudget | None = None


@attrs.frozen(kw_only=True)
class Subset:
    """A named subset of a service's endpoints, chosen by labels."""

    name: str = attrs.field(validator=non_empty)
    labels: Mapping[str, str] = EMPTY
    trafficPolicy: TrafficPolicy | None = None


def _unique_subsets(_instance: object, _attribute: object, value: tuple[Subset, ...]) -> None:
    names = [s.name for s in value]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        msg = f"repeat the subset name {', '.join(map(repr, repeated))}"
        raise ValueError(msg)


@attrs.frozen(kw_only=True)
class DestinationRuleSpec:
    """Subsets of a service and the policies toward it."""

    host: str = attrs.field(validator=[non_empty, host_name])
    trafficPolicy: TrafficPolicy | None = None
    subsets: tuple[Subset, ...] = attrs.field(default=(), validator=_unique_subsets)
    exportTo: tuple[str, ...] = attrs.field(default=(), validator=export_to)
    workloadSelector: PolicySelector | None = None


@meshcore.hookimpl
def meshcore_mesh_kinds() -> list[meshcore.MeshKindType]:
    """Register ``VirtualService`` and ``DestinationRule``."""
    return [
        meshcore.MeshKindType(
            name="VirtualService",
            config=VirtualServiceSpec,
            api_versions=NETWORKING,
            description="how requests to some hosts are routed: matches, weights, rewrites, faults",
        ),
        meshcore.MeshKindType(
            name="DestinationRule",
            config=DestinationRuleSpec,
            api_versions=NETWORKING,
            description="subsets of a service's endpoints and the policies toward them",
        ),
    ]
