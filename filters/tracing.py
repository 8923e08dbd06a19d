"""``tracing``: a span per request at each proxy, and a child span per upstream attempt.

The filter continues the trace a request carries (W3C ``traceparent``/``tracestate``, B3
single or multi header: ``propagators``) or starts one, decides whether to record it
(``sampler``), and writes the context on to the upstream. A recorded request yields a
SERVER span for the proxy's whole handling of it and a CLIENT span per try at the
upstream (a retry is another try), each try's span id written into that try's headers, so
the next hop's spans are its children. Names and attributes follow the OpenTelemetry HTTP
semantic conventions (``http.request.method``, ``url.path``, ``http.response.status_code``,
``http.request.resend_count``, ...) plus the mesh's own (``meshcore.*``: source and
destination workloads, response flags, upstream cluster and endpoint, request id).

Spans are built when the response has been sent and handed to an OTLP/HTTP exporter that
the proxy runs as a service: requests never wait on export, and a dead collector only
costs spans (counted in ``tracing_spans_dropped_total``).

Trust follows the edge of trust (the connection manager's ``trust`` settings), as Envoy's
tracing follows its notion of an internal request: a client outside the mesh may carry
trace context, and its trace is continued (a sampled flag included, as W3C and B3 mean
it), but only a mesh peer's request (``request.info.internal``) can force recording, with
the ``force_header`` or a B3 debug flag; an outside client's is ignored, whatever the
header is called. (The default ``x-meshcore-force-trace`` is also removed at the edge, as
every ``x-meshcore-*`` header from outside is.)
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Mapping
from typing import Any, Literal

import attrs

import meshcore
from meshcore import (
    Duration,
    FilterContext,
    HttpHandler,
    Request,
    Response,
    at_least,
    at_most,
    non_empty,
    telemetry,
)

_MASK64 = (1 << 64) - 1
KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))
Propagator = Literal["tracecontext", "b3", "b3multi"]


def _endpoint(_instance: Any, _attribute: Any, value: str) -> None:
    telemetry.parse_endpoint(value)


@attrs.frozen(kw_only=True)
class OtlpHttpConfig:
    """Where spans go: an OpenTelemetry collector's OTLP/HTTP traces endpoint."""

    endpoint: str = attrs.field(validator=_endpoint)
    """``http://HOST:4318/v1/traces`` (or https://)."""
    timeout: Duration = Duration(5)
    """How long one export may take; past it the batch is dropped (and counted)."""
    headers: Mapping[str, str] = attrs.field(factory=dict)
    """Extra headers on export requests (an API key for a hosted backend)."""
    max_queue_size: int = attrs.field(default=2048, validator=at_least(1))
    """Finished spans waiting for export at most; more are dropped (and counted)."""
    max_batch_size: int = attrs.field(default=512, validator=at_least(1))
    export_interval: Duration = Duration(1)
    """Seconds between exports when fewer than ``max_batch_size`` spans wait."""


@attrs.frozen(kw_only=True)
class HeaderAttribute:
    """A span attribute whose value is a request header's."""

    header: str = attrs.field(validator=non_empty)
    default: str = ""
    """The value when the request has no such header ("": no attribute)."""


@attrs.frozen(kw_only=True)
class TracingConfig:
    """Config of ``tracing`` (also its per-route override)."""

    otlp_http: OtlpHttpConfig | None = None
    """The collector; without one, traces are continued and propagated but not recorded."""
    service_name: str | None = None
    """The ``service.name`` of the spans (default: the proxy's workload, else "meshcore")."""
    propagators: tuple[Propagator, ...] = attrs.field(default=("tracecontext",), validator=non_empty)
    """Formats read (first valid one wins) and written (all of them)."""
    sampler: Literal["always", "never", "ratio", "parent_based"] = "parent_based"
    """``parent_based``: follow the caller's decision, and ``ratio`` for new traces."""
    ratio: float = attrs.field(default=1.0, validator=[at_least(0.0), at_most(1.0)])
    """The share of traces recorded by ``ratio`` (and by ``parent_based`` for new traces)."""
    force_header: str | None = "x-meshcore-force-trace"
    """A mesh peer's request carrying this header is recorded, whatever the sampler says
    (from a client outside the mesh it is ignored, as a B3 debug flag is)."""
    attributes: Mapping[str, str] = attrs.field(factory=dict)
    """Extra attributes on every span of this proxy (custom tags)."""
    request_headers: tuple[str, ...] = ()
    """Request headers recorded as ``http.request.header.<name>`` attributes."""
    header_attributes: Mapping[str, HeaderAttribute] = attrs.field(factory=dict)
    """Attributes of the server span named here, valued from a request header (Istio's
    ``customTags`` of kind ``header``)."""


def _route_template(route: Any) -> str | None:
    """The low-cardinality ``http.route`` of a matched route: its exact path, or prefix + "*"."""
    match = route.config.match
    if match.path is not None:
        return str(match.path)
    if match.prefix is not None:
        return f"{match.prefix}*"
    return None


class Tracing:
    """The ``tracing`` filter for one Snapshot."""

    def __init__(self, config: TracingConfig, context: FilterContext) -> None:
        self.propagators = config.propagators
        self.owned = telemetry.owned_headers(config.propagators)
        self.sampler = config.sampler
        self.threshold = round(config.ratio * (1 << 64))
        self.force = config.force_header.lower().encode() if config.force_header else None
        self.clusters = context.clusters
        self.request_headers = [
            (h.lower().encode(), telemetry.AttributeKey(f"http.request.header.{h.lower()}"))
            for h in config.request_headers
        ]
        self.request_headers += [
            (a.header.lower().encode(), telemetry.AttributeKey(name))
            for name, a in config.header_attributes.items()
            if not a.default
        ]
        self.header_defaults = [
            (a.header.lower().encode(), telemetry.AttributeKey(name), a.default)
            for name, a in config.header_attributes.items()
            if a.default
        ]
        self.server_shapes = _Shapes()
        self.client_shapes = _Shapes()
        node = getattr(context.snapshot, "node", None)
        self.workload: str | None = getattr(node, "workload", None)
        self.namespace: str | None = getattr(node, "namespace", None)
        static: list[telemetry.Attribute] = [("meshcore.listener", context.listener)]
        static += [(k, v) for k, v in config.attributes.items()]
        self.static = telemetry.encode_attributes(static)
        """Attributes of every span of this filter, encoded once."""
        own = [("meshcore.workload", self.workload), ("meshcore.namespace", self.namespace)]
        self.static_server = self.static + telemetry.encode_attributes((k, v) for k, v in own if v)
        """Those of its server spans: the proxy's own workload too."""
        self.exporter: telemetry.OtlpHttpExporter | None = None
        if config.otlp_http is not None:
            self.exporter = self._exporter(config, config.otlp_http, context, node)

    def _exporter(
        self, config: TracingConfig, otlp: OtlpHttpConfig, context: FilterContext, node: Any
    ) -> telemetry.OtlpHttpExporter:
        service = config.service_name or self.workload or "meshcore"
        resource: list[telemetry.Attribute] = [
            ("service.name", service),
            ("telemetry.sdk.name", "meshcore"),
            ("telemetry.sdk.language", "python"),
            ("telemetry.sdk.version", meshcore.__version__),
        ]
        if self.namespace:
            resource.append(("service.namespace", self.namespace))
        if getattr(node, "id", None):
            resource.append(("service.instance.id", node.id))

        def make() -> telemetry.OtlpHttpExporter:
            return telemetry.OtlpHttpExporter(
                otlp.endpoint,
                resource=resource,
                stats=context.stats,
                headers=otlp.headers,
                timeout=float(otlp.timeout),
                max_queue=otlp.max_queue_size,
                max_batch=otlp.max_batch_size,
                interval=float(otlp.export_interval),
                version=meshcore.__version__,
            )

        if context.services is None:  # no running proxy (a test harness): nothing exports
            return make()
        key = ("otlp_http", repr(otlp), tuple(resource))  # repr: the headers mapping is unhashable
        exporter: telemetry.OtlpHttpExporter = context.services.get(key, make)
        return exporter

    def _sampled(self, request: Request, parent: telemetry.SpanContext | None, trace_id: int) -> bool:
        if request.info.internal:  # forcing is for the mesh's own (Envoy: internal requests only)
            if self.force is not None and request.headers.get_raw(self.force) is not None:
                return True
            if parent is not None and parent.debug:
                return True
        if parent is not None and self.sampler == "parent_based" and parent.sampled is not None:
            return parent.sampled
        if self.sampler == "always":
            return True
        if self.sampler == "never":
            return False
        return (trace_id & _MASK64) < self.threshold

    def __call__(self, request: Request, call_next: HttpHandler) -> Awaitable[Response]:
        """Continue or start the request's trace; record it if sampled.

        A plain function: it hands back ``call_next``'s coroutine (the span ends by a
        completion callback, nothing runs after the response), one frame less at every wait.
        """
        parent = telemetry.extract(request.headers, self.propagators)
        if parent is None:
            trace_id, parent_id, trace_state = telemetry.new_trace_id(), 0, ""
        else:
            trace_id, parent_id, trace_state = parent.trace_id, parent.span_id, parent.trace_state
        info = request.info
        info.trace_id = trace_hex = "%032x" % trace_id  # noqa: UP031 - the fastest format
        if not self._sampled(request, parent, trace_id) or self.exporter is None:
            # Not recorded here: pass the decision on, so that later hops agree.
            telemetry.inject(
                request.headers,
                self.propagators,
                trace_id,
                telemetry.new_span_id(),
                sampled=False if self.exporter is not None else bool(parent and parent.sampled),
                trace_state=trace_state,
                owned=self.owned,
                trace_hex=trace_hex,
            )
            return call_next(request)
        span = _ServerSpan(self, trace_id, parent_id, trace_state, trace_hex)
        info.on_attempt = span
        info.when_complete(span.finish)
        return call_next(request)


_Key = telemetry.AttributeKey
# Keys whose values repeat from request to request keep them encoded (cached=True); a path,
# a query, a request id or a client port would only fill a cache with one-off entries.
_METHOD = _Key("http.request.method", cached=True)
_METHOD_ORIGINAL = _Key("http.request.method_original")
_SCHEME = _Key("url.scheme", cached=True)
_PATH = _Key("url.path")
_QUERY = _Key("url.query")
_PROTOCOL = _Key("network.protocol.version", cached=True)
_SERVER_ADDRESS = _Key("server.address", cached=True)
_SERVER_PORT = _Key("server.port", cached=True)
_CLIENT_ADDRESS = _Key("client.address", cached=True)
_CLIENT_PORT = _Key("client.port")
_USER_AGENT = _Key("user_agent.original", cached=True)
_ROUTE = _Key("http.route", cached=True)
_ROUTE_NAME = _Key("meshcore.route.name", cached=True)
_STATUS_CODE = _Key("http.response.status_code", cached=True)
_REQUEST_ID = _Key("meshcore.request_id")
_CLUSTER = _Key("meshcore.upstream.cluster", cached=True)
_UPSTREAM_ADDRESS = _Key("meshcore.upstream.address", cached=True)
_FLAGS = _Key("meshcore.response_flags", cached=True)
_ERROR_TYPE = _Key("error.type", cached=True)
_URL_FULL = _Key("url.full")
_RESEND_COUNT = _Key("http.request.resend_count", cached=True)
_PEER_KEYS = [
    (
        f"meshcore.{side}",
        _Key(f"meshcore.{side}.workload", cached=True),
        _Key(f"meshcore.{side}.namespace", cached=True),
    )
    for side in ("source", "destination")
]
"""The peer-metadata entries (request.info.metadata) and their attributes' keys."""
_HOST_PORTS: dict[str, bytes] = {}
"""``server.address`` and ``server.port`` of an authority or endpoint, encoded together."""


def _address_attributes(
    cache: dict[str, bytes], host_key: telemetry.AttributeKey, port_key: telemetry.AttributeKey, address: str
) -> bytes:
    """A "host:port" as its two attributes, encoded once per address (``cache`` is bounded)."""
    found = cache.get(address)
    if found is None:
        if len(cache) >= 4096:  # noqa: PLR2004 - a bound, not a tunable
            cache.clear()
        host, port = meshcore.split_host_port(address)
        found = cache[address] = (host_key.text(host) if host else b"") + (
            port_key.number(port) if port else b""
        )
    return found


def _host_port(address: str) -> bytes:
    return _address_attributes(_HOST_PORTS, _SERVER_ADDRESS, _SERVER_PORT, address)


class _ServerSpan:
    """The span of one recorded request at this proxy, until the response has been sent.

    It is the request's attempt observer itself (``info.on_attempt``: no bound method per
    request), and lets go of it when it finishes: the request's objects may wait for the
    cyclic garbage collector, the span need not.
    """

    __slots__ = ("attempt_spans", "parent_id", "span_id", "trace_hex", "trace_id", "trace_state", "tracing")

    def __init__(
        self, tracing: Tracing, trace_id: int, parent_id: int, trace_state: str, trace_hex: str
    ) -> None:
        self.tracing = tracing
        self.trace_id = trace_id
        self.span_id = telemetry.new_span_id()
        self.parent_id = parent_id
        self.trace_state = trace_state
        self.trace_hex = trace_hex
        self.attempt_spans: dict[int, int] = {}

    def __call__(self, request: Request, attempt: Any) -> None:
        """A try at the upstream begins: give it a span id, and send that as the parent."""
        if attempt.end is not None:
            return  # it ended: its span is built with the others when the response is sent
        span_id = telemetry.new_span_id()
        self.attempt_spans[attempt.number] = span_id
        tracing = self.tracing
        telemetry.inject(
            request.headers,
            tracing.propagators,
            self.trace_id,
            span_id,
            sampled=True,
            parent_id=self.span_id,
            trace_state=self.trace_state,
            owned=tracing.owned,
            trace_hex=self.trace_hex,
        )

    attempt = __call__

    def finish(self, request: Request, response: Response) -> None:
        """The response has been sent: encode the spans and queue them for export."""
        tracing = self.tracing
        exporter = tracing.exporter
        assert exporter is not None  # noqa: S101 - only recorded with an exporter
        info = request.info
        if info.on_attempt is self:
            info.on_attempt = None
        end_ns = time.time_ns()
        offset = end_ns - time.monotonic_ns()
        method = request.method
        status = response.status
        flags = info.flag_string() if info.flags else ""
        get_raw = request.headers.get_raw
        # What most requests share with many others, encoded once (see _Shapes).
        key = (
            method,
            request.scheme,
            request.http_version,
            request.authority,
            request.route,
            info.route_name,
            get_raw(b"user-agent"),
            status,
            info.cluster_name,
            info.upstream_address,
            flags,
        )
        try:
            shape = tracing.server_shapes.get(key)
        except TypeError:  # a filter's own route, not hashable: nothing kept
            shape = _server_shape(tracing, key)
        if shape is None:
            shape = tracing.server_shapes.add(key, _server_shape(tracing, key))
        shared, name, error = shape
        path_only, _, query = request.path.partition("?")
        parts = [shared, _PATH.text(path_only), _client(info.downstream_address)]
        if query:
            parts.append(_QUERY.text(query))
        if info.request_id:
            parts.append(_REQUEST_ID.text(info.request_id))
        for raw_name, attribute in tracing.request_headers:
            value = get_raw(raw_name)
            if value is not None:
                parts.append(attribute.text(value.decode("latin-1")))
        for raw_name, attribute, default in tracing.header_defaults:
            value = get_raw(raw_name)
            parts.append(attribute.text(value.decode("latin-1") if value is not None else default))
        metadata = info.metadata
        if metadata:
            _identities(parts, metadata)
        exporter.submit_encoded(
            telemetry.encode_span_fields(
                self.trace_id,
                self.span_id,
                self.parent_id,
                name,
                telemetry.KIND_SERVER,
                int(info.start * 1e9) + offset,
                end_ns,
                b"".join(parts),
                error,
                self.trace_state,
            )
        )
        attempts = info.attempts
        for attempt in attempts:
            span_id = self.attempt_spans.get(attempt.number)
            if span_id is not None:
                last = attempt is attempts[-1] and attempt.status is not None
                # The last answered try lasts until its body has been relayed.
                end = end_ns if last or attempt.end is None else int(attempt.end * 1e9) + offset
                start = int(attempt.start * 1e9) + offset
                exporter.submit_encoded(self._attempt_span(request, attempt, span_id, start, end))

    def _attempt_span(
        self, request: Request, attempt: Any, span_id: int, start_ns: int, end_ns: int
    ) -> bytes:
        tracing = self.tracing
        method = request.method
        key = (method, attempt.endpoint, attempt.cluster, attempt.number, attempt.status, attempt.flag)
        shape = tracing.client_shapes.get(key)
        if shape is None:
            shape = tracing.client_shapes.add(key, _client_shape(tracing, key))
        shared, name, error, scheme = shape
        return telemetry.encode_span_fields(
            self.trace_id,
            span_id,
            self.span_id,
            name,
            telemetry.KIND_CLIENT,
            start_ns,
            end_ns,
            shared + _URL_FULL.text(f"{scheme}://{attempt.endpoint}{request.path}"),
            error,
            self.trace_state,
        )


class _Shapes(dict[Any, Any]):
    """Encoded attributes by the values they are made of, for the values most requests share.

    A server span's method, scheme, authority, route, user agent, status, cluster, endpoint
    and flags are those of many requests before it: their attributes (and the span's name
    and status) are encoded once per combination, and a request encodes only what is its
    own (path, query, request id, client port). Bounded: past ``LIMIT`` it starts over.
    """

    LIMIT = 1024

    def add(self, key: Any, value: Any) -> Any:
        if len(self) >= self.LIMIT:
            self.clear()
        self[key] = value
        return value


def _server_shape(tracing: Tracing, key: tuple[Any, ...]) -> tuple[bytes, str, int]:
    """The shared attributes of a server span, its name and its status code."""
    method, scheme, version, authority, route, route_name, agent, status, cluster, upstream, flags = key
    known = method in KNOWN_METHODS
    template = _route_template(route) if route is not None else None
    parts = [
        _METHOD.text(method if known else "_OTHER"),
        _SCHEME.text(scheme),
        _PROTOCOL.text(version),
        tracing.static_server,
        _host_port(authority),
    ]
    if not known:
        parts.append(_METHOD_ORIGINAL.text(method))
    if agent is not None:
        parts.append(_USER_AGENT.text(agent.decode("latin-1")))
    if template is not None:
        parts.append(_ROUTE.text(template))
    if route_name:
        parts.append(_ROUTE_NAME.text(route_name))
    if status:
        parts.append(_STATUS_CODE.number(status))
    if cluster:
        parts.append(_CLUSTER.text(cluster))
    if upstream:
        parts.append(_UPSTREAM_ADDRESS.text(upstream))
    if flags:
        parts.append(_FLAGS.text(flags))
    error = status >= 500 or status == 0  # noqa: PLR2004 - 5xx (0: no response was sent)
    if error:
        parts.append(_ERROR_TYPE.text(str(status) if status else flags or "DC"))
    verb = method if known else "HTTP"
    name = f"{verb} {template}" if template else verb
    return b"".join(parts), name, telemetry.STATUS_ERROR if error else telemetry.STATUS_UNSET


def _client_shape(tracing: Tracing, key: tuple[Any, ...]) -> tuple[bytes, str, int, str]:
    """The attributes of an attempt's span but its url.full, its name, status code and scheme."""
    method, endpoint, cluster_name, number, status, flag = key
    known = method in KNOWN_METHODS
    cluster = tracing.clusters.get(cluster_name)
    scheme = "https" if cluster is not None and cluster.config.tls is not None else "http"
    parts = [
        _METHOD.text(method if known else "_OTHER"),
        _host_port(endpoint),
        _CLUSTER.text(cluster_name),
        tracing.static,
    ]
    if number > 1:
        parts.append(_RESEND_COUNT.number(number - 1))
    status = status or 0
    if status:
        parts.append(_STATUS_CODE.number(status))
    if flag is not None:
        parts += [_FLAGS.text(flag.value), _ERROR_TYPE.text(flag.value)]
    elif status >= 400:  # noqa: PLR2004 - client spans: 4xx and 5xx are errors
        parts.append(_ERROR_TYPE.text(str(status)))
    error = flag is not None or status >= 400  # noqa: PLR2004 - as above
    return (
        b"".join(parts),
        method if known else "HTTP",
        telemetry.STATUS_ERROR if error else telemetry.STATUS_UNSET,
        scheme,
    )


_CLIENTS: dict[str, bytes] = {}
"""``client.address`` and ``client.port`` by downstream address (a str-to-bytes cache: the
garbage collector never walks it, however often it starts over)."""


def _client(address: str) -> bytes:
    return _address_attributes(_CLIENTS, _CLIENT_ADDRESS, _CLIENT_PORT, address)


def _identities(parts: list[bytes], metadata: dict[str, Any]) -> None:
    """Source and destination workloads, from the peer-metadata exchange.

    (This proxy's own are among its static attributes.)
    """
    for entry, workload_key, namespace_key in _PEER_KEYS:
        peer = metadata.get(entry)
        if peer is not None:
            if peer.workload:
                parts.append(workload_key.text(peer.workload))
            if peer.namespace:
                parts.append(namespace_key.text(peer.namespace))


@meshcore.hookimpl
def meshcore_http_filters() -> list[meshcore.HttpFilterType]:
    """Register ``tracing``."""
    return [
        meshcore.HttpFilterType(
            name="tracing",
            factory=Tracing,
            config=TracingConfig,
            description="distributed tracing: W3C and B3 propagation, sampling, spans exported over OTLP/HTTP",
        )
    ]
