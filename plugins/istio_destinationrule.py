"""The structure of Istio's ``DestinationRule``: subsets of a service and the policies toward them.

Every field Istio defines, with Istio's names; plugins/istio_routing.py registers the kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import attrs

from meshcore import Duration, at_least, at_most, non_empty
from meshcore.plugins.istio_common import (
    EMPTY,
    PolicySelector,
    PortSelector,
    export_to,
    host_name,
    optional_port_number,
)


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
