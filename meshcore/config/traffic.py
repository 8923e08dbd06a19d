"""Config of traffic management: retries, mirroring, breakers, health, localities.

Retries and mirroring are a route's; circuit breakers, outlier detection, active health
checks and locality-aware load balancing a cluster's.

Field names follow Envoy's (``retry_on``, ``per_try_timeout``, ``base_ejection_time``) so
that an operator who knows Envoy or Istio reads them without a dictionary; defaults are
Envoy's unless a field says otherwise.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import attrs

from meshcore.config.structure import Path, PluginRef, Structurer
from meshcore.config.units import ByteSize, Duration
from meshcore.config.validators import at_least, at_most, non_empty

__all__ = [
    "RETRY_ON",
    "CircuitBreakers",
    "HealthCheck",
    "HealthCheckerRef",
    "Locality",
    "LocalityLb",
    "OutlierDetection",
    "RateLimitedBackoff",
    "RequestMirrorPolicy",
    "ResetHeader",
    "RetryBackoff",
    "RetryBudget",
    "RetryOn",
    "RetryPolicy",
]

RETRY_ON: Mapping[str, str] = {
    "5xx": "any 5xx response, a reset, a connection failure or a per-try timeout",
    "gateway-error": "a 502, 503 or 504 response, a reset, a connection failure or a per-try timeout",
    "reset": "no response at all: a reset, a disconnect, a connection failure or a per-try timeout",
    "reset-before-request": "a reset or disconnect before the request went out",
    "connect-failure": "the connection to the endpoint could not be made (or timed out)",
    "refused-stream": "the upstream refused the HTTP/2 stream (REFUSED_STREAM, GOAWAY)",
    "retriable-4xx": "a 409 response",
    "retriable-status-codes": "a response whose status is in retriable_status_codes",
    "cancelled": "gRPC status CANCELLED (1) in the response headers",
    "deadline-exceeded": "gRPC status DEADLINE_EXCEEDED (4)",
    "internal": "gRPC status INTERNAL (13)",
    "resource-exhausted": "gRPC status RESOURCE_EXHAUSTED (8)",
    "unavailable": "gRPC status UNAVAILABLE (14)",
}
"""The ``retry_on`` conditions, as Envoy and Istio name them, and what each retries."""


class RetryOn(frozenset[str]):
    """The conditions a request is retried on: "5xx,connect-failure" or a list of names.

    The names are Envoy's and Istio's (see :data:`RETRY_ON`); HTTP and gRPC conditions mix
    in one list as Istio writes them.
    """

    __slots__ = ()

    @classmethod
    def __meshcore_parse__(cls, value: Any) -> RetryOn:
        if isinstance(value, str):
            names = [part.strip() for part in value.split(",") if part.strip()]
        elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            names = [v.strip() for v in value]
        else:
            msg = f'must be conditions such as "5xx,connect-failure" (a string or a list), got {value!r}'
            raise ValueError(msg)
        for name in names:
            if name not in RETRY_ON:
                close = difflib.get_close_matches(name, list(RETRY_ON), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(RETRY_ON)})"
                msg = f"unknown retry condition {name!r}{hint}"
                raise ValueError(msg)
        return cls(names)

    def __repr__(self) -> str:
        return f"RetryOn({','.join(sorted(self))!r})"


# -- retries ------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RetryBackoff:
    """Fully jittered exponential backoff between attempts (Envoy's).

    Retry N waits a random time in [0, base_interval * (2^N - 1)), capped at max_interval.
    """

    base_interval: Duration = attrs.field(default=Duration(0.025), validator=at_least(0.001))
    """The unit of the backoff (Envoy's 25ms)."""
    max_interval: Duration | None = None
    """The longest wait between attempts (default: 10 times base_interval)."""

    def __attrs_post_init__(self) -> None:
        if self.max_interval is not None and self.max_interval < self.base_interval:
            msg = f"max_interval ({self.max_interval:g}s) must be >= base_interval ({self.base_interval:g}s)"
            raise ValueError(msg)


@attrs.frozen(kw_only=True)
class ResetHeader:
    """A response header that says when to try again."""

    name: str = attrs.field(validator=non_empty)
    format: Literal["seconds", "unix_timestamp"] = "seconds"
    """``seconds`` (Retry-After's delta-seconds, an HTTP date is also read) or ``unix_timestamp``
    (X-RateLimit-Reset's absolute time)."""


@attrs.frozen(kw_only=True)
class RateLimitedBackoff:
    """How a retried response that says when to come back (429, 503 with Retry-After) is honoured."""

    reset_headers: tuple[ResetHeader, ...] = (ResetHeader(name="retry-after"),)
    """Headers tried in order; the first that parses sets the wait (never shorter than the backoff)."""
    max_interval: Duration = Duration(300)
    """A header asking for a longer wait is ignored (the next one is tried)."""


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """When and how a route retries a request (Envoy's ``retry_policy``, Istio's ``retries``).

    Retries stay inside the route's timeout. A request that may have been processed by an
    upstream (its bytes reached it and no refusal came back) is retried only if its method
    is idempotent, or if ``retry_non_idempotent`` says so: a POST is never replayed after
    an upstream may have acted on it.
    """

    retry_on: RetryOn = RetryOn(("connect-failure", "refused-stream", "reset-before-request"))
    """The conditions that trigger a retry (see the list in the traffic-management guide)."""
    num_retries: int = attrs.field(default=1, validator=[at_least(0), at_most(100)])
    """Retries after the first attempt (Istio's ``attempts``)."""
    per_try_timeout: Duration = Duration(0)
    """Each attempt's own timeout, inside the route's (0: only the route's)."""
    retriable_status_codes: tuple[int, ...] = ()
    """Statuses retried under ``retriable-status-codes``."""
    retry_back_off: RetryBackoff = RetryBackoff()
    rate_limited_retry_back_off: RateLimitedBackoff = RateLimitedBackoff()
    retry_other_hosts: bool = True
    """Send a retry to an endpoint not tried yet for this request, where one exists
    (Envoy's ``previous_hosts`` retry host predicate)."""
    host_selection_retry_max_attempts: int = attrs.field(default=5, validator=at_least(1))
    """How many picks of the load balancer a retry makes to find an endpoint not tried yet."""
    retry_non_idempotent: bool = False
    """Also retry POST, PATCH (any non-idempotent method) after it may have been processed."""
    buffer_limit: ByteSize = ByteSize(64 * 1024)
    """A request body is kept for replay up to this size; past it the request is not retried."""
    include_attempt_count: bool = False
    """Tell the upstream which attempt this is, in ``x-meshcore-attempt-count`` (1 for the first)."""

    def __attrs_post_init__(self) -> None:
        for code in self.retriable_status_codes:
            if not 100 <= code <= 599:  # noqa: PLR2004 - the range of HTTP statuses
                msg = f"retriable_status_codes must be HTTP statuses (100..599), got {code}"
                raise ValueError(msg)


# -- mirroring --------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RequestMirrorPolicy:
    """Copy a share of a route's requests to another cluster, fire and forget (Envoy's shadowing).

    The copy's Host gets a ``-shadow`` suffix; its answer is dropped; it never slows or
    fails the original request.
    """

    cluster: str = attrs.field(validator=non_empty, metadata={"ref": "cluster"})
    percentage: float = attrs.field(default=100.0, validator=[at_least(0), at_most(100)])
    """The share of requests copied, from 0 to 100."""
    max_active: int = attrs.field(default=64, validator=at_least(1))
    """Copies in flight at most for this route; past it a request is not copied (counted)."""


# -- circuit breakers -------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RetryBudget:
    """Retries limited to a share of the requests in flight, so that they cannot multiply an outage."""

    budget_percent: float = attrs.field(default=20.0, validator=[at_least(0), at_most(100)])
    """Active retries at most this share of active and pending requests."""
    min_retry_concurrency: int = attrs.field(default=3, validator=at_least(0))
    """Active retries always allowed, whatever the share."""


@attrs.frozen(kw_only=True)
class CircuitBreakers:
    """Limits of a cluster, across its endpoints; past one, a request fails fast (503, flag UO)."""

    max_connections: int = attrs.field(default=1024, validator=at_least(1))
    """Open connections to the cluster's endpoints at most; further requests wait (pending)."""
    max_pending_requests: int = attrs.field(default=1024, validator=at_least(0))
    """Requests waiting for a connection at most; past it they fail with UO."""
    max_requests: int = attrs.field(default=1024, validator=at_least(1))
    """Requests in flight to the cluster at most; past it they fail with UO."""
    max_retries: int = attrs.field(default=3, validator=at_least(0))
    """Retries in flight at most (ignored when ``retry_budget`` is set); past it no retry."""
    retry_budget: RetryBudget | None = None


# -- outlier detection ------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class OutlierDetection:
    """Passive health: eject endpoints whose answers show they are failing (Envoy's semantics).

    Local-origin failures (connection failures, resets, timeouts) count as 5xx errors unless
    ``split_external_local_origin_errors`` counts them apart. An ejected endpoint returns
    after ``base_ejection_time`` times the number of times it was ejected (at most
    ``max_ejection_time``).
    """

    consecutive_5xx: int = attrs.field(default=5, validator=at_least(1))
    enforcing_consecutive_5xx: float = attrs.field(default=100.0, validator=[at_least(0), at_most(100)])
    consecutive_gateway_failure: int = attrs.field(default=5, validator=at_least(1))
    """Consecutive 502, 503 or 504 (and local-origin failures, unless split)."""
    enforcing_consecutive_gateway_failure: float = attrs.field(
        default=0.0, validator=[at_least(0), at_most(100)]
    )
    split_external_local_origin_errors: bool = False
    consecutive_local_origin_failure: int = attrs.field(default=5, validator=at_least(1))
    enforcing_consecutive_local_origin_failure: float = attrs.field(
        default=100.0, validator=[at_least(0), at_most(100)]
    )
    interval: Duration = attrs.field(default=Duration(10), validator=at_least(0.001))
    """How often success rates and failure percentages are evaluated, and ejections ended."""
    base_ejection_time: Duration = attrs.field(default=Duration(30), validator=at_least(0.001))
    max_ejection_time: Duration = Duration(300)
    max_ejection_percent: float = attrs.field(default=10.0, validator=[at_least(0), at_most(100)])
    """At most this share of the endpoints ejected at once."""
    always_eject_one_host: bool = False
    """Eject one endpoint even when that passes max_ejection_percent (three endpoints at 10%)."""
    success_rate_minimum_hosts: int = attrs.field(default=5, validator=at_least(1))
    success_rate_request_volume: int = attrs.field(default=100, validator=at_least(1))
    success_rate_stdev_factor: int = attrs.field(default=1900, validator=at_least(0))
    """In thousandths: eject below mean - factor/1000 * stdev of the endpoints' success rates."""
    enforcing_success_rate: float = attrs.field(default=100.0, validator=[at_least(0), at_most(100)])
    failure_percentage_threshold: float = attrs.field(default=85.0, validator=[at_least(0), at_most(100)])
    failure_percentage_minimum_hosts: int = attrs.field(default=5, validator=at_least(1))
    failure_percentage_request_volume: int = attrs.field(default=50, validator=at_least(1))
    enforcing_failure_percentage: float = attrs.field(default=0.0, validator=[at_least(0), at_most(100)])

    def __attrs_post_init__(self) -> None:
        if self.max_ejection_time < self.base_ejection_time:
            msg = (
                f"max_ejection_time ({self.max_ejection_time:g}s) must be >= "
                f"base_ejection_time ({self.base_ejection_time:g}s)"
            )
            raise ValueError(msg)


# -- active health checks ---------------------------------------------------------------------


class HealthCheckerRef(PluginRef):
    """A health checker (``http``, ``tcp``, ``grpc`` or a plugin's) and its config."""

    kind: ClassVar[str] = "health_checker"


@attrs.frozen(kw_only=True)
class HealthCheckTiming:
    """When a health checker runs, and how many results change an endpoint's health."""

    interval: Duration = attrs.field(default=Duration(5), validator=at_least(0.001))
    """Time between two checks of an endpoint."""
    interval_jitter: Duration = Duration(0)
    """A random extra wait, up to this, added to each interval."""
    interval_jitter_percent: float = attrs.field(default=0.0, validator=[at_least(0), at_most(100)])
    """A random extra wait, up to this share of the interval, added to each interval."""
    timeout: Duration = attrs.field(default=Duration(1), validator=at_least(0.001))
    """A check that takes longer fails."""
    unhealthy_threshold: int = attrs.field(default=3, validator=at_least(1))
    """Consecutive failures that mark a healthy endpoint unhealthy."""
    healthy_threshold: int = attrs.field(default=2, validator=at_least(1))
    """Consecutive successes that mark an unhealthy endpoint healthy again (a new endpoint
    needs one: endpoints start unhealthy until their first check passes)."""


_TIMING_FIELDS = frozenset(f.name for f in attrs.fields(HealthCheckTiming))


@attrs.frozen(kw_only=True)
class HealthCheck(HealthCheckTiming):
    """An active health check: the timing fields and one health checker.

    The checker is written with its name as a key: ``- http: {path: /healthz}`` next to
    ``interval: 5s``.
    """

    checker: HealthCheckerRef
    """The checker (``http``, ``tcp``, ``grpc`` or a plugin's), written as its name: ``http: {...}``."""

    @classmethod
    def __meshcore_structure__(cls, structurer: Structurer, data: Any, path: Path) -> Any:
        if not isinstance(data, Mapping):
            structurer.problem(path, "must be a mapping of timing fields and one health checker")
            return structurer.FAILED
        known = structurer.catalog.names(HealthCheckerRef.kind)
        timing = {k: v for k, v in data.items() if k in _TIMING_FIELDS}
        checkers = {k: v for k, v in data.items() if k in known}
        failed = False
        for key in data:
            if key not in _TIMING_FIELDS and key not in known:
                choices = sorted(_TIMING_FIELDS | set(known))
                close = difflib.get_close_matches(str(key), choices, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(choices)})"
                structurer.problem((*path, str(key)), f"unknown field or health checker{hint}")
                failed = True
        if len(checkers) != 1:
            if not failed:
                got = ", ".join(map(repr, checkers)) or "none"
                listing = ", ".join(sorted(known)) or "none"
                structurer.problem(path, f"needs exactly one health checker ({listing}), got {got}")
            return structurer.FAILED
        checker = structurer.structure(checkers, HealthCheckerRef, path)
        base = structurer.structure_attrs(timing, HealthCheckTiming, path)
        if failed or checker is None or checker is structurer.FAILED or base is structurer.FAILED:
            return structurer.FAILED
        fields = {f.name: getattr(base, f.name) for f in attrs.fields(HealthCheckTiming)}
        return cls(checker=checker, **fields)


# -- localities -------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Locality:
    """Where an endpoint (or the proxy) runs: region, zone, subzone (Kubernetes topology labels)."""

    region: str = ""
    zone: str = ""
    subzone: str = ""

    def distance(self, other: Locality) -> int:
        """0 for the same subzone, 1 same zone, 2 same region, 3 elsewhere (Istio's failover order)."""
        if self.region != other.region:
            return 3
        if self.zone != other.zone:
            return 2
        return 0 if self.subzone == other.subzone else 1

    def __str__(self) -> str:
        return "/".join(part for part in (self.region, self.zone, self.subzone) if part) or "-"


@attrs.frozen(kw_only=True)
class LocalityLb:
    """Prefer endpoints near the proxy, spilling over when too few of them are healthy.

    Endpoints are grouped into levels, by their ``priority`` first, then by their distance
    from the proxy's locality (same subzone, zone, region, elsewhere). A level takes the
    traffic its healthy share times ``overprovisioning_factor`` allows (up to all of it);
    the rest spills to the next level (Envoy's priority load).
    """

    enabled: bool = True
    local: Locality | None = None
    """The proxy's own locality (default: from the proxy's identity in its Snapshot, if any)."""


__all__ += ["HealthCheckTiming"]
