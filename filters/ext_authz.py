"""``ext_authz``: ask an external HTTP service whether a request may pass.

Modelled on Envoy's HTTP ext_authz and Istio's ``envoyExtAuthzHttp`` provider. For each
request the filter sends the service a check request through a cluster of the proxy (so
its endpoints, TLS and pools are config like any other): the same method, the path
prefixed with ``path_prefix``, the same authority, no body, and the request headers
named in ``include_request_headers`` (``authorization`` always; a name may end or start
with ``*``). Then:

- **200**: allowed. The headers of the answer named in ``headers_to_upstream_on_allow``
  are set on the request that goes on;
- **any other status below 500**: denied. The client gets the service's status and body,
  with the headers named in ``headers_to_downstream_on_deny`` (all but framing headers
  when that list is empty), and the flag ``UAEX``;
- **no answer within ``timeout``, a connection failure, or a 5xx**: an error. With
  ``fail_open`` the request passes; otherwise the client gets ``status_on_error`` (403)
  with the flag ``UAEX``.

The ``authz`` filter's ``CUSTOM`` action goes through the same client
(:class:`ExtAuthzClient`). Metrics, labelled ``listener``: ``ext_authz_ok``,
``ext_authz_denied``, ``ext_authz_error`` and ``ext_authz_failure_mode_allowed``.
"""

from __future__ import annotations

import attrs
import structlog

import meshcore
from meshcore import (
    Duration,
    FilterContext,
    Headers,
    HttpHandler,
    Request,
    Response,
    ResponseFlag,
    UpstreamError,
    at_least,
    at_most,
    non_empty,
    ref,
)

log = structlog.get_logger("meshcore.ext_authz")

MAX_DENY_BODY = 64 * 1024
"""Bytes of a denial's body passed on to the client at most."""
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive"})


@attrs.frozen(kw_only=True)
class ExtAuthzConfig:
    """Config of ``ext_authz`` (and of an ``authz`` CUSTOM provider)."""

    cluster: str = ref("cluster", validator=non_empty)
    """The cluster of the authorization service."""
    path_prefix: str = ""
    """Put before the request's path in the check request (``/check``)."""
    timeout: Duration = Duration(0.5)
    """How long the service has to answer."""
    fail_open: bool = False
    """Let the request pass when the service cannot answer (timeout, 5xx, unreachable)."""
    status_on_error: int = attrs.field(default=403, validator=[at_least(200), at_most(599)])
    """The status sent to the client when the service cannot answer (and not ``fail_open``)."""
    include_request_headers: tuple[str, ...] = ()
    """Request headers sent to the service (``authorization`` always is); ``x-*`` or
    ``*-id`` match by prefix or suffix."""
    headers_to_upstream_on_allow: tuple[str, ...] = ()
    """Headers of an allowing answer set on the request sent upstream."""
    headers_to_downstream_on_deny: tuple[str, ...] = ()
    """Headers of a denying answer passed to the client (empty: all but framing headers)."""


def _matcher(patterns: tuple[str, ...]) -> tuple[frozenset[bytes], tuple[bytes, ...], tuple[bytes, ...]]:
    exact, prefixes, suffixes = set(), [], []
    for pattern in (p.lower().encode("latin-1") for p in patterns):
        if pattern.endswith(b"*"):
            prefixes.append(pattern[:-1])
        elif pattern.startswith(b"*"):
            suffixes.append(pattern[1:])
        else:
            exact.add(pattern)
    return frozenset(exact), tuple(prefixes), tuple(suffixes)


def _selected(
    raw: list[tuple[bytes, bytes]], rule: tuple[frozenset[bytes], tuple[bytes, ...], tuple[bytes, ...]]
) -> list[tuple[bytes, bytes]]:
    exact, prefixes, suffixes = rule
    return [
        (n, v)
        for n, v in raw
        if n in exact or (prefixes and n.startswith(prefixes)) or (suffixes and n.endswith(suffixes))
    ]


@attrs.frozen
class Decision:
    """What the authorization service decided.

    Attributes:
        allowed: whether the request may pass.
        response: the reply to send instead, when it may not.
    """

    allowed: bool
    response: Response | None = None


class ExtAuthzClient:
    """Checks requests with one authorization service (for ``ext_authz`` and ``authz`` CUSTOM).

    Args:
        config: the service and the policy.
        context: the filter context (clusters, stats).
    """

    def __init__(self, config: ExtAuthzConfig, context: FilterContext) -> None:
        self.config = config
        self._clusters = context.clusters
        self._include = _matcher((*config.include_request_headers, "authorization"))
        self._to_upstream = _matcher(config.headers_to_upstream_on_allow)
        self._to_client = (
            _matcher(config.headers_to_downstream_on_deny) if config.headers_to_downstream_on_deny else None
        )
        labels = {"listener": context.listener}
        stats = context.stats
        self.stat_ok = stats.counter("ext_authz_ok", **labels)
        self.stat_denied = stats.counter("ext_authz_denied", **labels)
        self.stat_error = stats.counter("ext_authz_error", **labels)
        self.stat_fail_open = stats.counter("ext_authz_failure_mode_allowed", **labels)

    async def check(self, request: Request) -> Decision:
        """Ask the service about ``request``; on allow, the answer's chosen headers are set on it."""
        config = self.config
        cluster = self._clusters.get(config.cluster)
        if cluster is None:
            return self._error(request, f"no cluster {config.cluster!r}")
        headers = _selected(request.headers.raw, self._include)
        check = Request(
            request.method,
            config.path_prefix + request.path,
            authority=request.authority,
            scheme=request.scheme,
            headers=Headers([*headers, (b"content-length", b"0")]),
        )
        try:
            answer = await cluster.send(check, timeout=float(config.timeout))
            body = await answer.body.read_all()
        except UpstreamError as err:
            return self._error(request, str(err))
        except meshcore.ProtocolError as err:
            return self._error(request, str(err))
        if answer.status == 200:  # noqa: PLR2004 - Envoy's contract: 200 and nothing else allows
            self.stat_ok.value += 1
            for name, value in _selected(answer.headers.raw, self._to_upstream):
                request.headers.set(name, value)
            return Decision(allowed=True)
        if answer.status >= 500:  # noqa: PLR2004 - a failing service, not a denial
            return self._error(request, f"authorization service answered {answer.status}")
        self.stat_denied.value += 1
        request.info.flags.add(ResponseFlag.UNAUTHORIZED)
        raw = [(n, v) for n, v in answer.headers.raw if n not in _FRAMING]
        if self._to_client is not None:
            raw = _selected(raw, self._to_client)
        reply = Response.local(answer.status, body[:MAX_DENY_BODY], headers=raw)
        log.info("ext_authz_denied", path=request.path_only, status=answer.status)
        return Decision(allowed=False, response=reply)

    def _error(self, request: Request, reason: str) -> Decision:
        self.stat_error.value += 1
        if self.config.fail_open:
            self.stat_fail_open.value += 1
            log.warning("ext_authz_failed", reason=reason, outcome="allowed (fail_open)")
            return Decision(allowed=True)
        log.warning("ext_authz_failed", reason=reason, outcome="denied")
        request.info.flags.add(ResponseFlag.UNAUTHORIZED)
        return Decision(
            allowed=False,
            response=Response.local(self.config.status_on_error, "authorization check failed\n"),
        )


class ExtAuthz:
    """The ``ext_authz`` filter for one Snapshot."""

    def __init__(self, config: ExtAuthzConfig, context: FilterContext) -> None:
        self.client = ExtAuthzClient(config, context)

    async def __call__(self, request: Request, call_next: HttpHandler) -> Response:
        """Pass ``request`` on if the service allows it, else answer with the denial."""
        decision = await self.client.check(request)
        if not decision.allowed:
            assert decision.response is not None  # noqa: S101 - a denial carries its reply
            return decision.response
        return await call_next(request)


@meshcore.hookimpl
def meshcore_http_filters() -> list[meshcore.HttpFilterType]:
    """Register ``ext_authz``."""
    return [
        meshcore.HttpFilterType(
            name="ext_authz",
            factory=ExtAuthz,
            config=ExtAuthzConfig,
            description="asks an external HTTP service whether each request may pass",
        )
    ]
