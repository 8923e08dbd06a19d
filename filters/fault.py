"""``fault``: inject delays and aborts into HTTP requests, to test how a system copes.

Modelled on Envoy's fault filter. A configured delay holds a request for a fixed time
before passing it on (flag ``DI``); a configured abort answers it locally (flag ``FI``),
after the delay when both apply. Each applies to a percentage of requests, rolled
independently. With ``header_control``, clients may ask for faults themselves:

- ``x-meshcore-fault-delay-ms: N`` delays the request by N milliseconds;
- ``x-meshcore-fault-abort: STATUS`` aborts it with HTTP status STATUS (200..599);
- ``x-meshcore-fault-abort-grpc: CODE`` aborts it with gRPC status CODE (0..16); it takes
  precedence over ``x-meshcore-fault-abort``.

A header fault replaces the configured fault of its kind for that request and is always
injected. A header value that is not valid is ignored with a log line.

A gRPC abort (the request's content-type starts with ``application/grpc``, or
``grpc_status`` is configured) answers as gRPC does: HTTP 200, ``content-type:
application/grpc``, and ``grpc-status`` and ``grpc-message`` in the headers (a
"Trailers-Only" response). An HTTP status is mapped to a gRPC status for gRPC requests
as the gRPC spec maps them.

A fault is active from its injection until the rest of the chain has answered (a delayed
request stays active while the upstream serves it); ``max_active_faults`` caps how many
are active at once in one filter instance. Metrics, labelled ``listener`` and ``route``:
``fault_delays_injected``, ``fault_aborts_injected``, ``fault_overflow`` (faults not
injected because of the cap) and the gauge ``fault_active``.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable
from typing import NamedTuple

import attrs
import structlog
import trio

import meshcore
from meshcore import Duration, FilterContext, HttpHandler, Request, Response, ResponseFlag, at_least, at_most

log = structlog.get_logger("meshcore.fault")

ABORT_MESSAGE = "fault filter abort"
_MAX_DIGITS = 9  # header integers: enough for any valid value, too few to cost anything to parse


@attrs.frozen(kw_only=True)
class FaultDelay:
    """A fixed delay injected before the request is passed on."""

    fixed: Duration
    """How long to hold the request."""
    percentage: float = attrs.field(default=100.0, validator=[at_least(0), at_most(100)])
    """The share of requests delayed, from 0 to 100."""


@attrs.frozen(kw_only=True)
class FaultAbort:
    """A local answer instead of the upstream's. Exactly one of ``http_status``, ``grpc_status``."""

    http_status: int | None = attrs.field(
        default=None, validator=attrs.validators.optional([at_least(200), at_most(599)])
    )
    """The HTTP status to answer with (200..599)."""
    grpc_status: int | None = attrs.field(
        default=None, validator=attrs.validators.optional([at_least(0), at_most(16)])
    )
    """The gRPC status to answer with (0..16), always as a gRPC reply."""
    percentage: float = attrs.field(default=100.0, validator=[at_least(0), at_most(100)])
    """The share of requests aborted, from 0 to 100."""

    def __attrs_post_init__(self) -> None:
        given = [k for k in ("http_status", "grpc_status") if getattr(self, k) is not None]
        if len(given) != 1:
            got = ", ".join(given) if given else "none"
            msg = f"needs exactly one of http_status, grpc_status; got {got}"
            raise ValueError(msg)


@attrs.frozen(kw_only=True)
class FaultConfig:
    """Config of ``fault`` (also its per-route override)."""

    delay: FaultDelay | None = None
    """The delay to inject, if any."""
    abort: FaultAbort | None = None
    """The abort to inject, if any."""
    header_control: bool = False
    """Let the ``x-meshcore-fault-*`` request headers ask for faults (trusted clients only)."""
    max_header_delay: Duration = Duration(60)
    """The longest delay a header may ask for; a longer one is ignored as a bad value."""
    max_active_faults: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(at_least(0))
    )
    """At most this many requests of this filter instance under a fault at once (None: no
    cap). Past it, requests pass untouched and ``fault_overflow`` counts them."""
    seed: int | None = None
    """Seed of the filter's random numbers, for reproducible tests (None: unpredictable)."""


class _Abort(NamedTuple):
    http: int | None
    grpc: int | None


class _RouteStats:
    __slots__ = ("aborts", "active", "delays", "overflow")

    def __init__(self, stats: meshcore.Stats, listener: str, route: str) -> None:
        self.delays = stats.counter("fault_delays_injected", listener=listener, route=route)
        self.aborts = stats.counter("fault_aborts_injected", listener=listener, route=route)
        self.active = stats.gauge("fault_active", listener=listener, route=route)
        self.overflow = stats.counter("fault_overflow", listener=listener, route=route)


def _abort_reply(request: Request, abort: _Abort) -> Response:
    if abort.grpc is not None or abort.http is None or meshcore.is_grpc(request):
        code = abort.grpc if abort.grpc is not None else meshcore.grpc_status_for_http(abort.http or 0)
        return meshcore.grpc_response(code, ABORT_MESSAGE)
    return Response.local(abort.http, f"{ABORT_MESSAGE}\n")


class FaultFilter:
    """The ``fault`` filter for one Snapshot (one instance per listener, and per overriding route)."""

    def __init__(self, config: FaultConfig, context: FilterContext) -> None:
        self._rng = random.Random(config.seed)  # noqa: S311 - fault sampling, not cryptography
        delay, abort = config.delay, config.abort
        self._delay = float(delay.fixed) if delay is not None else 0.0
        self._delay_pct = delay.percentage if delay is not None else 0.0
        self._abort = _Abort(abort.http_status, abort.grpc_status) if abort is not None else None
        self._abort_pct = abort.percentage if abort is not None else 0.0
        self._headers = config.header_control
        # The connection manager removes x-meshcore-* headers of clients outside the mesh,
        # except those a filter reads on purpose: header control is such a purpose.
        self.trusted_request_headers: tuple[bytes, ...] = (
            (b"x-meshcore-fault-*",) if config.header_control else ()
        )
        self._max_header_ms = int(float(config.max_header_delay) * 1000)
        self._max_active = config.max_active_faults
        self._active = 0
        self._stats = context.stats
        self._listener = context.listener
        self._by_route: dict[str, _RouteStats] = {}

    @property
    def active(self) -> int:
        """How many requests are under a fault of this filter now."""
        return self._active

    def __call__(self, request: Request, call_next: HttpHandler) -> Awaitable[Response]:
        """Delay and/or abort ``request`` as configured, else pass it on.

        A plain function: without a fault it hands back ``call_next``'s coroutine, so that
        the request's every suspension has one frame less to unwind and resume.
        """
        delay = self._delay if self._delay_pct and self._roll(self._delay_pct) else 0.0
        abort = self._abort if self._abort_pct and self._roll(self._abort_pct) else None
        if self._headers:
            delay, abort = self._from_headers(request, delay, abort)
        if not delay and abort is None:
            return call_next(request)
        return self._inject(request, call_next, delay, abort)

    async def _inject(
        self, request: Request, call_next: HttpHandler, delay: float, abort: _Abort | None
    ) -> Response:
        stats = self._route_stats(request.info.route_name or "")
        if self._max_active is not None and self._active >= self._max_active:
            stats.overflow.value += 1
            return await call_next(request)
        self._active += 1
        stats.active.value += 1
        try:
            if delay:
                request.info.flags.add(ResponseFlag.DELAY_INJECTED)
                stats.delays.value += 1
                await trio.sleep(delay)
            if abort is not None:
                request.info.flags.add(ResponseFlag.FAULT_INJECTED)
                stats.aborts.value += 1
                return _abort_reply(request, abort)
            return await call_next(request)
        finally:
            self._active -= 1
            stats.active.value -= 1

    def _roll(self, percentage: float) -> bool:
        return self._rng.random() * 100 < percentage

    def _from_headers(
        self, request: Request, delay: float, abort: _Abort | None
    ) -> tuple[float, _Abort | None]:
        delay_ms = self._header_int(request, b"x-meshcore-fault-delay-ms", 0, self._max_header_ms)
        if delay_ms is not None:
            delay = delay_ms / 1000
        grpc = self._header_int(request, b"x-meshcore-fault-abort-grpc", 0, 16)
        if grpc is not None:
            return delay, _Abort(None, grpc)
        http = self._header_int(request, b"x-meshcore-fault-abort", 200, 599)
        if http is not None:
            return delay, _Abort(http, None)
        return delay, abort

    @staticmethod
    def _header_int(request: Request, name: bytes, low: int, high: int) -> int | None:
        raw = request.headers.get_raw(name)
        if raw is None:
            return None
        if raw.isdigit() and len(raw) <= _MAX_DIGITS and low <= int(raw) <= high:
            return int(raw)
        log.info(
            "fault_header_ignored",
            header=name.decode(),
            value=raw[:64].decode("latin-1"),
            reason=f"must be an integer from {low} to {high}",
        )
        return None

    def _route_stats(self, route: str) -> _RouteStats:
        # One set of metrics per route, made on the route's first fault and kept.
        found = self._by_route.get(route)
        if found is None:
            found = self._by_route[route] = _RouteStats(self._stats, self._listener, route)
        return found


@meshcore.hookimpl
def meshcore_http_filters() -> list[meshcore.HttpFilterType]:
    """Register ``fault``."""
    return [
        meshcore.HttpFilterType(
            name="fault",
            factory=FaultFilter,
            config=FaultConfig,
            description="injects delays and aborts into a share of requests (or on request headers)",
        )
    ]
