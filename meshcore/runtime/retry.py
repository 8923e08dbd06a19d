"""Retries of a route: when a failed attempt is tried again, where, after how long.

Envoy's semantics, with one rule of our own made explicit: **a request that may have been
processed is retried only if its method is idempotent** (RFC 9110 section 9.2.2), unless
the policy sets ``retry_non_idempotent``. "May have been processed" is everything but a
connection that could not be made or a stream the upstream refused: a POST whose bytes
reached an upstream that then answered 503, reset, or stayed silent past the per-try
timeout is never sent again, because that upstream may have acted on it. gRPC calls are
POSTs too; a gRPC status the policy lists (``unavailable``, ...) is its word that calls
answered so may be sent again, as gRPC's own retry policy has it.

An attempt is retried when its outcome matches ``retry_on`` (see
:data:`meshcore.config.traffic.RETRY_ON`), retries are left, the request body could be
kept for replay (up to ``buffer_limit``), the cluster's retry circuit breaker or budget has
room, and the wait fits in the route's timeout. The wait is fully jittered exponential
backoff, or what the answer's ``Retry-After`` (or another reset header) asks for. A retry
goes to an endpoint not tried yet when one exists. Overflow (UO) and "no healthy endpoint"
(UH) are never retried.

Each attempt is recorded on ``request.info.attempts`` (see :class:`UpstreamAttempt`) by
the cluster; this module adds the retry counters: ``cluster_upstream_rq_retry``,
``cluster_upstream_rq_retry_success``, ``cluster_upstream_rq_retry_limit_exceeded`` (and
``cluster_upstream_rq_retry_overflow`` from the circuit breakers).
"""

from __future__ import annotations

import email.utils
import random
import time
from typing import TYPE_CHECKING

import structlog
import trio

from meshcore.config.traffic import RateLimitedBackoff, RetryPolicy
from meshcore.errors import UpstreamError
from meshcore.flags import ResponseFlag
from meshcore.http.messages import Body, Request, Response
from meshcore.runtime.stats import Stats

if TYPE_CHECKING:
    from meshcore.runtime.cluster import Cluster
    from meshcore.runtime.host import Host

__all__ = [
    "ATTEMPT_COUNT_HEADER",
    "GRPC_CONDITIONS",
    "IDEMPOTENT_METHODS",
    "ReplayableBody",
    "RetryStats",
    "backoff",
    "send_with_retries",
]

log = structlog.get_logger("meshcore.retry")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
"""Methods whose repetition has the effect of one request (RFC 9110 section 9.2.2)."""
ATTEMPT_COUNT_HEADER = b"x-meshcore-attempt-count"
_DRAIN_LIMIT = 16 * 1024  # a retried answer's body up to this size is read off to keep its connection
_GATEWAY = frozenset({502, 503, 504})
_CONFLICT = 409
_GRPC_RETRY_ON = {
    1: "cancelled",
    4: "deadline-exceeded",
    8: "resource-exhausted",
    13: "internal",
    14: "unavailable",
}
GRPC_CONDITIONS = frozenset(_GRPC_RETRY_ON.values())
"""gRPC calls are POSTs: a gRPC status listed in ``retry_on`` is the policy's word that calls
answered with it may be sent again, as in gRPC's own retry policy (gRFC A6)."""
_RESET_FLAGS = frozenset(
    {
        ResponseFlag.UPSTREAM_CONNECTION_TERMINATION,
        ResponseFlag.UPSTREAM_RESET,
        ResponseFlag.UPSTREAM_REQUEST_TIMEOUT,
        ResponseFlag.UPSTREAM_PROTOCOL_ERROR,
    }
)
_random = random.Random()  # noqa: S311 - jitter, not cryptography


class RetryStats:
    """The retry counters of one cluster."""

    __slots__ = ("limit_exceeded", "retry", "success")

    def __init__(self, stats: Stats, cluster: str) -> None:
        self.retry = stats.counter("cluster_upstream_rq_retry", cluster=cluster)
        self.success = stats.counter("cluster_upstream_rq_retry_success", cluster=cluster)
        self.limit_exceeded = stats.counter("cluster_upstream_rq_retry_limit_exceeded", cluster=cluster)


class ReplayableBody:
    """A request body kept while it is sent, so that another attempt can send it again.

    Only what the attempts read is kept, up to ``limit`` bytes; past that nothing is kept and
    :attr:`replayable` turns False. Each attempt gets :meth:`attempt_body`: the bytes kept so
    far, then the rest of the original body (kept in turn) as it is read.
    """

    __slots__ = ("chunks", "limit", "replayable", "size", "source")

    def __init__(self, source: Body, limit: int) -> None:
        self.source = source
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.replayable = True

    def attempt_body(self) -> Body:
        """A fresh body for one attempt (only one attempt reads at a time)."""
        index = 0
        body: Body

        async def read() -> bytes:
            nonlocal index
            if index < len(self.chunks):
                index += 1
                return self.chunks[index - 1]
            chunk = await self.source.read()
            if not chunk:
                body.trailers = self.source.trailers
                return b""
            if self.replayable:
                self.size += len(chunk)
                if self.size > self.limit:
                    self.replayable = False
                    self.chunks.clear()
                else:
                    self.chunks.append(chunk)
                    index += 1
            return chunk

        body = Body(read, length=self.source.length, close=self.source.close)
        if self.source.done and not self.chunks:
            body.done = True
            body.trailers = self.source.trailers
        return body


class _Outcome:
    """What one attempt came to, as far as retrying goes."""

    __slots__ = ("condition", "error", "processed", "response")

    def __init__(self, response: Response | None, error: UpstreamError | None) -> None:
        self.response = response
        self.error = error
        self.condition: str | None = None  # the retry_on condition it matched, if any
        self.processed = True  # the upstream may have acted on the request


def _classify(outcome: _Outcome, policy: RetryPolicy) -> None:
    """Set the retry condition the outcome matches and whether the upstream may have processed it."""
    if outcome.response is not None:
        outcome.condition = _response_condition(outcome.response, policy)
        return
    assert outcome.error is not None  # noqa: S101 - an outcome has one or the other
    outcome.condition, outcome.processed = _failure_condition(outcome.error, policy.retry_on)


def _response_condition(response: Response, policy: RetryPolicy) -> str | None:
    retry_on = policy.retry_on
    status = response.status
    if "5xx" in retry_on and status >= 500:  # noqa: PLR2004 - the 5xx class
        return "5xx"
    if "gateway-error" in retry_on and status in _GATEWAY:
        return "gateway-error"
    if "retriable-4xx" in retry_on and status == _CONFLICT:
        return "retriable-4xx"
    if "retriable-status-codes" in retry_on and status in policy.retriable_status_codes:
        return "retriable-status-codes"
    grpc = response.headers.get_raw(b"grpc-status")  # a trailers-only gRPC answer
    if grpc is not None and grpc.isdigit():
        name = _GRPC_RETRY_ON.get(int(grpc))
        if name is not None and name in retry_on:
            return name
    return None


def _failure_condition(error: UpstreamError, retry_on: frozenset[str]) -> tuple[str | None, bool]:
    """The condition a failure without a response matches, and whether it may have been processed."""
    flag = error.flag
    if flag in (ResponseFlag.UPSTREAM_OVERFLOW, ResponseFlag.NO_HEALTHY_UPSTREAM):
        return None, False  # never retried: nothing went out
    refused = flag is ResponseFlag.UPSTREAM_CONNECTION_FAILURE or error.refused
    if flag not in _RESET_FLAGS and not refused:
        return None, True
    candidates = ["5xx", "gateway-error", "reset"]
    if flag is ResponseFlag.UPSTREAM_CONNECTION_FAILURE:
        candidates.append("connect-failure")
    if error.refused:
        candidates.append("refused-stream")
    if refused:
        candidates.append("reset-before-request")
    return next((c for c in candidates if c in retry_on), None), not refused


def _parse_reset(value: str, form: str) -> float | None:
    """Seconds to wait from a reset header's value (negative for a time past), or None."""
    if value.isascii() and value.isdigit():
        number = float(value)
        return number if form == "seconds" else number - time.time()
    if form != "seconds":
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)  # Retry-After may be an HTTP date
    except (TypeError, ValueError, IndexError):
        return None
    return when.timestamp() - time.time() if when.tzinfo is not None else None


def _reset_header_wait(response: Response, config: RateLimitedBackoff) -> float | None:
    """The wait a retried answer asks for (Retry-After, X-RateLimit-Reset), or None.

    Headers are tried in order; one asking for more than ``max_interval`` is ignored.
    """
    for header in config.reset_headers:
        value = response.headers.get(header.name)
        if value is None:
            continue
        wait = _parse_reset(value.strip(), header.format)
        if wait is not None and wait <= config.max_interval:
            return max(wait, 0.0)
    return None


def backoff(retry: int, policy: RetryPolicy) -> float:
    """The jittered wait before retry number ``retry`` (1 for the first): random in [0, cap)."""
    base = policy.retry_back_off.base_interval
    ceiling = policy.retry_back_off.max_interval or base * 10
    cap = min(base * (2 ** min(retry, 30) - 1), ceiling)
    return _random.uniform(0, cap)


async def _discard(response: Response, deadline: float) -> None:
    """Drop a retried answer: read off a small body (the connection stays usable), else close it."""
    body = response.body
    if body.length is not None and body.length <= _DRAIN_LIMIT:
        with trio.move_on_at(min(deadline, trio.current_time() + 1)):
            try:
                while await body.read():
                    pass
            except (UpstreamError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            else:
                return
    body.close()


async def send_with_retries(
    cluster: Cluster, request: Request, policy: RetryPolicy, deadline: float
) -> Response:
    """Send ``request`` to ``cluster``, retrying as ``policy`` allows before ``deadline``.

    Returns:
        The response that ends it: a success, a failure not retried, or the last attempt's.

    Raises:
        UpstreamError: the last attempt failed without a response (its flag says why; URX
            is added to the request's flags when retries ran out).
    """
    body = request.body
    replay = None if body.length == 0 or body.done else ReplayableBody(body, policy.buffer_limit)
    idempotent = request.method in IDEMPOTENT_METHODS or policy.retry_non_idempotent
    tried: list[Host] = []
    slot = False  # a retry slot of the circuit breakers is held
    try:
        number = 0
        while True:
            number += 1
            exclude = tried if policy.retry_other_hosts else ()
            host = cluster.pick(request, exclude=exclude, tries=policy.host_selection_retry_max_attempts)
            tried.append(host)
            try_deadline = _prepare(request, policy, number, replay, deadline)
            try:
                outcome = _Outcome(await cluster.attempt(request, host, try_deadline), None)
            except UpstreamError as err:
                if err.flag is ResponseFlag.UPSTREAM_REQUEST_TIMEOUT and trio.current_time() >= deadline:
                    raise  # the route's own timeout: there is no time left to retry in
                outcome = _Outcome(None, err)
            finally:
                if slot:
                    slot = False
                    cluster.breakers.retry_done()
            wait = _next_wait(
                cluster,
                request,
                outcome,
                policy,
                number,
                idempotent=idempotent,
                replay=replay,
                deadline=deadline,
            )
            if wait is None:
                if outcome.response is not None:
                    return outcome.response
                assert outcome.error is not None  # noqa: S101 - an outcome has one or the other
                raise outcome.error
            slot = True
            cluster.retry_stats.retry.value += 1
            log.debug(
                "request_retried",
                cluster=cluster.name,
                attempt=number,
                condition=outcome.condition,
                wait=wait,
            )
            if outcome.response is not None:
                await _discard(outcome.response, deadline)
            await trio.sleep(wait)
    finally:
        if slot:
            cluster.breakers.retry_done()


def _prepare(
    request: Request, policy: RetryPolicy, number: int, replay: ReplayableBody | None, deadline: float
) -> float:
    """Make ``request`` ready for attempt ``number``; return the attempt's deadline."""
    if replay is not None:
        request.body = replay.attempt_body()
    if policy.include_attempt_count:
        request.headers.set(ATTEMPT_COUNT_HEADER, str(number))
    if policy.per_try_timeout:
        return min(deadline, trio.current_time() + policy.per_try_timeout)
    return deadline


def _next_wait(
    cluster: Cluster,
    request: Request,
    outcome: _Outcome,
    policy: RetryPolicy,
    number: int,
    *,
    idempotent: bool,
    replay: ReplayableBody | None,
    deadline: float,
) -> float | None:
    """How long to wait before retrying ``outcome``, or None when it is not retried.

    A retry slot of the cluster's circuit breakers is taken when it is retried.
    """
    _classify(outcome, policy)
    stats = cluster.retry_stats
    why = _no_retry(outcome, policy, number, idempotent=idempotent, replay=replay)
    wait = 0.0
    if why is None:
        wait = backoff(number, policy)
        if outcome.response is not None:
            asked = _reset_header_wait(outcome.response, policy.rate_limited_retry_back_off)
            if asked is not None:
                wait = max(wait, asked)
        if trio.current_time() + wait >= deadline:
            why = "no time left"
        elif not cluster.breakers.try_retry():
            why = "retry overflow"
    if why is None:
        return wait
    if number > 1 and outcome.condition is None:
        stats.success.value += 1
    if outcome.condition is not None:
        if why == "no retries left":
            stats.limit_exceeded.value += 1
            if outcome.error is not None:
                request.info.flags.add(ResponseFlag.UPSTREAM_RETRY_LIMIT_EXCEEDED)
        log.info(
            "retry_not_made", cluster=cluster.name, attempt=number, condition=outcome.condition, reason=why
        )
    return None


def _no_retry(
    outcome: _Outcome, policy: RetryPolicy, number: int, *, idempotent: bool, replay: ReplayableBody | None
) -> str | None:
    """Why this outcome is not retried, or None if it is (so far)."""
    if outcome.condition is None:
        return "not retriable"
    if number > policy.num_retries:
        return "no retries left"
    if outcome.processed and not idempotent and outcome.condition not in GRPC_CONDITIONS:
        return "not idempotent and may have been processed"
    if replay is not None and not replay.replayable:
        return "request body larger than buffer_limit"
    return None
