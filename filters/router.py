"""``router``: the terminal HTTP filter that forwards a request along its route.

The route was matched before the chain ran (``request.route``). Its action is one of:
forward to a cluster (with rewrites, header edits and a timeout), answer directly, or
redirect. Failures become local replies whose response flag says why.
"""

from __future__ import annotations

from typing import Any

import attrs
import structlog

import meshcore
from meshcore import (
    FilterContext,
    HttpHandler,
    MatchedRoute,
    Request,
    Response,
    ResponseFlag,
    UpstreamError,
    grpc_timeout,
    is_grpc,
    split_host_port,
)

log = structlog.get_logger("meshcore.router")


@attrs.frozen(kw_only=True)
class RouterConfig:
    """Config of ``router``."""

    add_forwarded_headers: bool = True
    """Append the client address to ``x-forwarded-for`` and set ``x-forwarded-proto``."""
    internal_response_headers: tuple[str, ...] = ()
    """``x-meshcore-*`` headers of upstream responses let through to the client (``*`` at
    the end: a prefix). The others are removed, unless the upstream is a mesh peer (its
    cluster verifies the upstream's SPIFFE ID)."""


def _local(request: Request, flag: ResponseFlag, message: str | None = None) -> Response:
    """A local reply for ``flag``: its body is ``message`` (from config) or the flag's description.

    Never text from the request or from an upstream (an upstream error names what the upstream
    sent): a local reply that reflects bytes it was sent is a response-splitting and
    cross-site-scripting vector. The details go to the log.
    """
    request.info.flags.add(flag)
    return Response.local(flag.status, f"{message or flag.description}\n")


def _timeout(request: Request, route_timeout: float) -> float:
    """The request's timeout in seconds (0: none): the route's, or the gRPC call's if shorter.

    A gRPC client sends its deadline as ``grpc-timeout``; past it, the call is of no use to
    anyone, so the proxy gives up then too (UT, which the client sees as DEADLINE_EXCEEDED).
    """
    timeout = float(route_timeout)
    if is_grpc(request):
        deadline = grpc_timeout(request)
        if deadline is not None:
            deadline = max(deadline, 1e-6)  # "0n" is a deadline already past, not "no timeout"
            timeout = min(timeout, deadline) if timeout else deadline
    return timeout


class Router:
    """The ``router`` filter for one Snapshot."""

    def __init__(self, config: RouterConfig, context: FilterContext) -> None:
        self._clusters = context.clusters
        self._forwarded = config.add_forwarded_headers
        self._internal_allowed = tuple(h.lower().encode("latin-1") for h in config.internal_response_headers)

    async def __call__(self, request: Request, _call_next: HttpHandler) -> Response:
        """Serve ``request`` along its route (terminal: ``_call_next`` is not called)."""
        route = request.route
        if route is None:
            return _local(request, ResponseFlag.NO_ROUTE)
        answer = _answer_here(request, route)
        if answer is not None:
            return answer
        action = route.config
        name = route.pick_cluster()
        cluster = self._clusters.get(name) if name is not None else None
        if cluster is None:
            return _local(
                request, ResponseFlag.NO_CLUSTER_FOUND, f"no cluster {name!r} for route {route.name!r}"
            )
        original = request.info.metadata.get("original_path")
        if original is not None and action.prefix_rewrite is None and action.regex_rewrite is None:
            request.path = original  # path_normalization.forward: original
        route.rewrite_request(request)  # path, host and header edits (check-routes predicts the same)
        headers = request.headers
        if self._forwarded:
            # Lower-case bytes names: straight to the pairs, the fast path of Headers.
            client = split_host_port(request.info.downstream_address)[0]
            headers.raw.append((b"x-forwarded-for", client.encode("latin-1")))
            # The connection manager sets x-forwarded-proto from the transport.
            if headers.get_raw(b"x-forwarded-proto") is None:
                headers.set(b"x-forwarded-proto", request.scheme)
        timeout = _timeout(request, action.timeout)
        if action.request_mirror_policies:
            self._clusters.mirror(request, route.name, action.request_mirror_policies, timeout=timeout)
        try:
            response = await cluster.send(request, timeout=timeout, retry_policy=action.retry_policy)
        except UpstreamError as err:
            log.info("upstream_failed", route=route.name, cluster=name, flags=err.flag.value, reason=str(err))
            return _local(request, err.flag)
        if not _is_mesh_peer(cluster):
            response.headers.raw = _strip_internal(response.headers.raw, self._internal_allowed)
        for header in action.response_headers_to_remove:
            response.headers.remove(header)
        for header, value in action.response_headers_to_add.items():
            response.headers.add(header, value)
        return response


def _is_mesh_peer(cluster: Any) -> bool:
    """Whether the cluster's endpoints are proxies of the mesh: it verifies their SPIFFE IDs."""
    tls = cluster.config.tls
    return bool(tls is not None and getattr(tls, "peer_identities", ()))


def _strip_internal(raw: list[tuple[bytes, bytes]], allowed: tuple[bytes, ...]) -> list[tuple[bytes, bytes]]:
    """``raw`` without the mesh's own ``x-meshcore-*`` headers, except ``allowed`` ones."""
    for name, _ in raw:  # a loop, not any(generator): once per proxied response
        if name.startswith(b"x-meshcore-"):
            break
    else:
        return raw
    return [
        (name, value)
        for name, value in raw
        if not name.startswith(b"x-meshcore-")
        or any(name == a or (a.endswith(b"*") and name.startswith(a[:-1])) for a in allowed)
    ]


def _answer_here(request: Request, route: MatchedRoute) -> Response | None:
    """The reply of a route that answers itself; None when the request goes on to a cluster.

    A direct response, a redirect, or a rejected upgrade.
    """
    action = route.config
    if action.direct_response is not None:
        request.info.flags.add(ResponseFlag.DIRECT_RESPONSE)
        direct = action.direct_response
        return Response.local(direct.status, direct.body, content_type=direct.content_type)
    if action.redirect is not None:
        request.info.flags.add(ResponseFlag.DIRECT_RESPONSE)
        return Response.local(action.redirect.status, headers=[("location", _location(request, route))])
    if request.upgrade is not None and request.upgrade not in action.upgrades:
        return _local(request, ResponseFlag.UPGRADE_REJECTED)
    return None


def _location(request: Request, route: MatchedRoute) -> str:
    """Where a redirect route sends ``request`` (called for a route whose action is a redirect)."""
    redirect = route.config.redirect
    if redirect is None:
        return request.path
    scheme = redirect.scheme or request.scheme
    host = redirect.host or request.host
    port = f":{redirect.port}" if redirect.port else ""
    if redirect.path is not None:
        path = redirect.path
    elif redirect.prefix_rewrite is not None and route.config.match.prefix is not None:
        path = redirect.prefix_rewrite + request.path_only[len(route.config.match.prefix) :]
    else:
        path = request.path_only
    query = "" if redirect.strip_query or not request.query else f"?{request.query}"
    return f"{scheme}://{host}{port}{path}{query}"


@meshcore.hookimpl
def meshcore_http_filters() -> list[meshcore.HttpFilterType]:
    """Register ``router``."""
    return [
        meshcore.HttpFilterType(
            name="router",
            factory=Router,
            config=RouterConfig,
            ends_chain=True,
            description="forwards to the route's cluster, answers directly, or redirects",
        )
    ]
