"""VirtualService HTTP rules as routes.

Matches, weighted destinations, rewrites, timeouts, header edits, redirects, direct
responses, fault injection, retries and mirroring are carried over.

Retries follow Istio: a rule without ``retries``, and the default route of a service
without a VirtualService, get Istio's default policy (2 retries on
``connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`` with 503
retriable, each to another endpoint where one exists), ``attempts: 0`` turns retries off,
and ``retryOn`` replaces the conditions (an HTTP status in it, ``503``, is retried under
``retriable-status-codes``). As everywhere in meshcore, a request that may have been
processed is retried only if its method is idempotent.

One Istio ``HTTPRoute`` becomes one route per match (a route without matches takes every
request), in order, so the first rule that matches wins as in Istio. A match that names a
port, source labels or a source namespace is kept only where it applies (the proxy's own
labels and namespace are known at translation). Without a VirtualService a service gets
one route to all of its endpoints. A destination the mesh does not know becomes a 503
answered by the proxy, and the problem is shown in the proxy's status.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import re
from collections.abc import Iterator

import attrs

from meshcore import Duration, GrpcStatus, RequestMirrorPolicy, RetryBackoff, RetryOn, RetryPolicy, Route
from meshcore.control import (
    DirectResponse,
    FilterOverrides,
    HeaderMatch,
    MeshResource,
    QueryParamMatch,
    Redirect,
    RouteBuild,
    RouteMatch,
    Service,
    ServicePort,
    TranslationContext,
    WeightedCluster,
    fqdn,
    labels_match,
)
from meshcore.filters.fault import FaultAbort, FaultConfig, FaultDelay
from meshcore.plugins.istio_common import StringMatch
from meshcore.plugins.istio_lookup import destination_rule_for, virtual_services_for
from meshcore.plugins.istio_virtualservice import (
    Destination,
    HTTPMatchRequest,
    HTTPRetry,
    HTTPRoute,
    VirtualServiceSpec,
)

MAX_WITHOUT_HEADERS = 4
"""withoutHeaders conditions one match may have (each doubles the routes it becomes)."""

HANDLES = (
    "VirtualService.hosts",
    "VirtualService.gateways=mesh",
    "VirtualService.exportTo",
    "VirtualService.http.name",
    "VirtualService.http.match.name",
    "VirtualService.http.match.uri",
    "VirtualService.http.match.scheme",
    "VirtualService.http.match.method",
    "VirtualService.http.match.authority",
    "VirtualService.http.match.headers",
    "VirtualService.http.match.port",
    "VirtualService.http.match.sourceLabels",
    "VirtualService.http.match.gateways=mesh",
    "VirtualService.http.match.queryParams",
    "VirtualService.http.match.ignoreUriCase",
    "VirtualService.http.match.withoutHeaders",
    "VirtualService.http.match.sourceNamespace",
    "VirtualService.http.route.destination",
    "VirtualService.http.route.weight",
    "VirtualService.http.redirect.uri",
    "VirtualService.http.redirect.authority",
    "VirtualService.http.redirect.port",
    "VirtualService.http.redirect.scheme",
    "VirtualService.http.redirect.redirectCode=301|302|303|307|308",
    "VirtualService.http.redirect.prefixRewrite",
    "VirtualService.http.directResponse",
    "VirtualService.http.rewrite",
    "VirtualService.http.timeout",
    "VirtualService.http.headers",
    "VirtualService.http.fault.delay.fixedDelay",
    "VirtualService.http.fault.delay.percent",
    "VirtualService.http.fault.delay.percentage",
    "VirtualService.http.fault.abort.httpStatus",
    "VirtualService.http.fault.abort.grpcStatus=" + "|".join(s.name for s in GrpcStatus),
    "VirtualService.http.fault.abort.percentage",
    "VirtualService.http.retries.attempts",
    "VirtualService.http.retries.perTryTimeout",
    "VirtualService.http.retries.retryOn",
    "VirtualService.http.retries.retryIgnorePreviousHosts",
    "VirtualService.http.retries.retryRemoteLocalities=False",
    "VirtualService.http.retries.backoff",
    "VirtualService.http.mirror",
    "VirtualService.http.mirrors",
    "VirtualService.http.mirrorPercentage",
    "VirtualService.http.mirrorPercent",
)

ISTIO_DEFAULT_RETRIES = RetryPolicy(
    retry_on=RetryOn(
        ("connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes")
    ),
    num_retries=2,
    retriable_status_codes=(503,),
)
"""The retries of a rule that says nothing of them, as Istio gives them (its ``DefaultPolicy``)."""


def retry_policy(retries: HTTPRetry | None) -> RetryPolicy | None:
    """The retry policy of an Istio rule's ``retries`` (None: no retries)."""
    if retries is None:
        return ISTIO_DEFAULT_RETRIES
    if retries.attempts == 0:
        return None
    policy = attrs.evolve(ISTIO_DEFAULT_RETRIES, num_retries=retries.attempts)
    if retries.retryOn.strip():
        parts = [p.strip() for p in retries.retryOn.split(",") if p.strip()]
        codes = tuple(int(p) for p in parts if p.isdigit())
        names = [p for p in parts if not p.isdigit()]
        if codes and "retriable-status-codes" not in names:
            names.append("retriable-status-codes")
        policy = attrs.evolve(policy, retry_on=RetryOn(names), retriable_status_codes=codes)
    if retries.perTryTimeout is not None:
        policy = attrs.evolve(policy, per_try_timeout=retries.perTryTimeout)
    if retries.retryIgnorePreviousHosts is not None:
        policy = attrs.evolve(policy, retry_other_hosts=retries.retryIgnorePreviousHosts)
    if retries.backoff is not None:
        policy = attrs.evolve(policy, retry_back_off=RetryBackoff(base_interval=retries.backoff))
    return policy


def cluster_name(service: Service, port: ServicePort, subset: str = "") -> str:
    """Istio's outbound cluster name: ``outbound|PORT|SUBSET|HOST``."""
    return f"outbound|{port.number}|{subset}|{service.host}"


def _header_match(name: str, match: StringMatch, *, invert: bool = False) -> HeaderMatch:
    return HeaderMatch(name=name, exact=match.exact, prefix=match.prefix, regex=match.regex, invert=invert)


def _query_match(name: str, match: StringMatch) -> QueryParamMatch:
    if match.prefix is not None:
        return QueryParamMatch(name=name, regex=re.escape(match.prefix) + ".*")
    return QueryParamMatch(name=name, exact=match.exact, regex=match.regex)


def route_matches(match: HTTPMatchRequest | None) -> Iterator[RouteMatch]:
    """The route matches of one Istio match (several when it has ``withoutHeaders``)."""
    if match is None:
        yield RouteMatch(prefix="/")
        return
    uri = match.uri
    path = prefix = pattern = None
    if uri is None:
        prefix = "/"
    elif uri.regex is not None:
        pattern = f"(?i){uri.regex}" if match.ignoreUriCase else uri.regex
    elif uri.exact is not None:
        path = uri.exact
    else:
        prefix = uri.prefix
    headers = [_header_match(name.lower(), m) for name, m in match.headers.items()]
    for name, attr in ((":method", match.method), (":authority", match.authority), (":scheme", match.scheme)):
        if attr is not None:
            headers.append(_header_match(name, attr))
    query = tuple(_query_match(name, m) for name, m in match.queryParams.items())
    # withoutHeaders: the header is absent, or present with a value that does not match.
    choices = [
        (HeaderMatch(name=name.lower(), present=False), _header_match(name.lower(), m, invert=True))
        for name, m in match.withoutHeaders.items()
    ]
    for without in itertools.product(*choices):
        yield RouteMatch(
            path=path,
            prefix=prefix,
            regex=pattern,
            headers=(*headers, *without),
            query_params=query,
            case_sensitive=not match.ignoreUriCase,
        )


def _applies(match: HTTPMatchRequest, context: TranslationContext, port: ServicePort) -> bool:
    if match.port and match.port != port.number:
        return False
    if match.sourceNamespace and match.sourceNamespace != context.namespace:
        return False
    return labels_match(match.sourceLabels, context.labels)


class RouteTranslator:
    """Routes of one service port for one proxy."""

    def __init__(self, context: TranslationContext, service: Service, port: ServicePort) -> None:
        self.context = context
        self.service = service
        self.port = port
        self.needs_fault = False

    def routes(self) -> list[RouteBuild]:
        """The routes of the winning VirtualService, or one default route."""
        found = virtual_services_for(self.context.model, self.service, self.context.namespace)
        http_rules = [vs for vs in found if vs.spec.http]
        if not http_rules:
            route = Route(
                name=f"{self.service.host}:{self.port.number}/default",
                match=RouteMatch(prefix="/"),
                cluster=cluster_name(self.service, self.port),
                timeout=Duration(0),
                retry_policy=ISTIO_DEFAULT_RETRIES,
            )
            return [RouteBuild(route=route, service=self.service)]
        resource = http_rules[0]
        spec: VirtualServiceSpec = resource.spec
        out: list[RouteBuild] = []
        for i, rule in enumerate(spec.http):
            matches = (
                [m for m in rule.match if _applies(m, self.context, self.port)] if rule.match else [None]
            )
            if rule.match and not matches:
                continue
            if sum(len(m.withoutHeaders) > MAX_WITHOUT_HEADERS for m in matches if m is not None):
                self.problem(
                    resource,
                    f"spec.http[{i}]",
                    f"a match may have at most {MAX_WITHOUT_HEADERS} withoutHeaders",
                )
                continue
            base = self._route(resource, i, rule)
            name = rule.name or f"{resource.namespace}/{resource.name}/{i}"
            n = 0
            for match in matches:
                for route_match in route_matches(match):
                    route = Route(**{**base, "name": f"{name}/{n}" if n else name, "match": route_match})  # type: ignore[arg-type]  # the fields of Route, built below
                    out.append(RouteBuild(route=route, source=rule, resource=resource, service=self.service))
                    n += 1
        return out

    def problem(self, resource: MeshResource, path: str, message: str) -> None:
        """Note what could not be translated for this proxy."""
        self.context.problems.append(f"{resource.ref}: {path}: {message}")

    def _route(self, resource: MeshResource, i: int, rule: HTTPRoute) -> dict[str, object]:
        """The fields of the routes of ``rule``, all but name and match."""
        fields: dict[str, object] = {"timeout": rule.timeout if rule.timeout is not None else Duration(0)}
        if rule.redirect is not None:
            r = rule.redirect
            fields["redirect"] = Redirect(
                scheme=r.scheme or None,
                host=r.authority or None,
                port=r.port or None,
                path=r.uri or None,
                prefix_rewrite=r.prefixRewrite or None,
                status=r.redirectCode,  # type: ignore[arg-type]  # checked by the claim of redirectCode
            )
        elif rule.directResponse is not None:
            fields["direct_response"] = self._direct(resource, i, rule)
        else:
            self._destinations(resource, i, rule, fields)
            self._resilience(resource, i, rule, fields)
        if rule.rewrite is not None:
            rewrite = rule.rewrite
            if rewrite.uri:
                fields["prefix_rewrite"] = rewrite.uri
            if rewrite.uriRegexRewrite is not None:
                fields["regex_rewrite"] = (rewrite.uriRegexRewrite.match, rewrite.uriRegexRewrite.rewrite)
            if rewrite.authority:
                fields["host_rewrite"] = rewrite.authority
        if rule.headers is not None:
            for side, operations in (("request", rule.headers.request), ("response", rule.headers.response)):
                if operations is not None:
                    fields[f"{side}_headers_to_remove"] = (*operations.remove, *operations.set)
                    fields[f"{side}_headers_to_add"] = {**operations.add, **operations.set}
        if rule.fault is not None:
            fields["filters"] = FilterOverrides({"fault": self._fault(rule)})
            self.needs_fault = True
        return fields

    def _resilience(self, resource: MeshResource, i: int, rule: HTTPRoute, fields: dict[str, object]) -> None:
        """Retries and mirrors of a rule that forwards (not of one that answers 503 itself)."""
        if "cluster" not in fields and "weighted_clusters" not in fields:
            return
        policy = retry_policy(rule.retries)
        if policy is not None:
            fields["retry_policy"] = policy
        mirrors = self._mirrors(resource, i, rule)
        if mirrors:
            fields["request_mirror_policies"] = mirrors

    def _mirrors(self, resource: MeshResource, i: int, rule: HTTPRoute) -> tuple[RequestMirrorPolicy, ...]:
        """``mirror`` (with ``mirrorPercentage`` or ``mirrorPercent``) and ``mirrors``, as mirror policies."""
        wanted: list[tuple[str, Destination, float]] = []
        if rule.mirror is not None:
            if rule.mirrors:
                self.problem(
                    resource, f"spec.http[{i}]", "takes mirror or mirrors, not both; mirrors ignored"
                )
            share = 100.0
            if rule.mirrorPercentage is not None:
                share = rule.mirrorPercentage.value
            elif rule.mirrorPercent is not None:
                share = float(rule.mirrorPercent)
            wanted.append((f"spec.http[{i}].mirror", rule.mirror, share))
        else:
            for j, mirror in enumerate(rule.mirrors):
                share = mirror.percentage.value if mirror.percentage is not None else 100.0
                wanted.append((f"spec.http[{i}].mirrors[{j}].destination", mirror.destination, share))
        out = []
        for path, destination, share in wanted:
            name = self._cluster(resource, path, destination)
            if name is not None:  # an unknown mirror is said, and the route still serves
                out.append(RequestMirrorPolicy(cluster=name, percentage=min(share, 100.0)))
        return tuple(out)

    def _direct(self, resource: MeshResource, i: int, rule: HTTPRoute) -> DirectResponse:
        direct = rule.directResponse
        assert direct is not None  # noqa: S101 - checked by the caller
        body = ""
        if direct.body is not None:
            if direct.body.string is not None:
                body = direct.body.string
            else:
                try:
                    body = base64.b64decode(direct.body.bytes or "", validate=True).decode("utf-8")
                except (binascii.Error, UnicodeDecodeError):
                    self.problem(
                        resource, f"spec.http[{i}].directResponse.body.bytes", "is not base64 of UTF-8 text"
                    )
        return DirectResponse(status=direct.status, body=body)

    def _destinations(
        self, resource: MeshResource, i: int, rule: HTTPRoute, fields: dict[str, object]
    ) -> None:
        clusters: list[WeightedCluster] = []
        for j, destination in enumerate(rule.route):
            name = self._cluster(resource, f"spec.http[{i}].route[{j}].destination", destination.destination)
            if name is None:
                fields["direct_response"] = DirectResponse(
                    status=503, body="no such destination in the mesh\n"
                )
                return
            clusters.append(
                WeightedCluster(name=name, weight=destination.weight if len(rule.route) > 1 else 1)
            )
        if len(clusters) == 1:
            fields["cluster"] = clusters[0].name
        else:
            fields["weighted_clusters"] = tuple(clusters)

    def _cluster(self, resource: MeshResource, path: str, destination: Destination) -> str | None:
        """The cluster of ``destination``; None (and a problem noted) if the mesh has none."""
        model = self.context.model
        host = fqdn(destination.host, resource.namespace, model.settings.domain_suffix)
        service = model.service(host, self.context.namespace)
        if service is None or service not in self.context.services:
            self.problem(resource, path, f"host {host!r} is not a service this proxy may reach")
            return None
        if destination.port is not None and destination.port.number:
            port = service.port(destination.port.number)
        elif len(service.ports) == 1:
            port = service.ports[0]
        else:
            port = service.port(self.port.number)
        if port is None:
            self.problem(
                resource,
                path,
                f"service {host!r} has no port {destination.port.number if destination.port else self.port.number}",
            )
            return None
        if destination.subset:
            rule = destination_rule_for(model, service, self.context.namespace, self.context.labels)
            subsets = [s.name for s in rule.spec.subsets] if rule is not None else []
            if destination.subset not in subsets:
                self.problem(
                    resource,
                    path,
                    f"subset {destination.subset!r} of {host!r} is not defined (defined: {', '.join(subsets) or 'none'})",
                )
                return None
        return cluster_name(service, port, destination.subset)

    @staticmethod
    def _fault(rule: HTTPRoute) -> FaultConfig:
        fault = rule.fault
        assert fault is not None  # noqa: S101 - checked by the caller
        delay = abort = None
        if fault.delay is not None and fault.delay.fixedDelay is not None:
            share = (
                fault.delay.percentage.value
                if fault.delay.percentage is not None
                else float(fault.delay.percent or 0)
            )
            delay = FaultDelay(fixed=fault.delay.fixedDelay, percentage=share)
        if fault.abort is not None:
            share = fault.abort.percentage.value if fault.abort.percentage is not None else 0.0
            if fault.abort.grpcStatus is not None:
                abort = FaultAbort(grpc_status=int(GrpcStatus[fault.abort.grpcStatus]), percentage=share)
            else:
                abort = FaultAbort(http_status=fault.abort.httpStatus, percentage=share)
        return FaultConfig(delay=delay, abort=abort)


def subset_labels(context: TranslationContext, service: Service) -> dict[str, dict[str, str]]:
    """The subsets of ``service`` that apply to this proxy, by name."""
    rule = destination_rule_for(context.model, service, context.namespace, context.labels)
    return {s.name: dict(s.labels) for s in rule.spec.subsets} if rule is not None else {}


__all__ = [
    "HANDLES",
    "ISTIO_DEFAULT_RETRIES",
    "RouteTranslator",
    "cluster_name",
    "retry_policy",
    "route_matches",
    "subset_labels",
]
