"""The structure of Istio's ``VirtualService``: how requests to some hosts are routed.

Every field Istio defines, with Istio's names; plugins/istio_routing.py registers the kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import attrs

from meshcore import Duration, RetryOn, at_least, at_most, non_empty, regex
from meshcore.plugins.istio_common import (
    EMPTY,
    Percent,
    PortSelector,
    StringMatch,
    export_to,
    host_name,
    host_names,
    optional_port_number,
)


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
