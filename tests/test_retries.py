"""Retries: what a route's retry policy recovers, and what it must not.

Real upstreams on loopback that die, hang, reset, answer slowly or answer 503 count on
their side every request that reached them: a retry policy recovers what it allows and
nothing more, a POST is never replayed after it may have been processed, per-try timeouts
hold inside the route's timeout, and a retry budget caps retries during a full outage.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import attrs
import pytest
import trio
from _faulty import FaultyUpstream
from _h2client import open_h2_client

import meshcore
from meshcore import Request, Response, UpstreamAttempt, UpstreamError
from meshcore.config import snapshot_from_data
from meshcore.config.traffic import RetryOn, RetryPolicy
from meshcore.flags import ResponseFlag
from meshcore.http.messages import Headers
from meshcore.registry import build_registry
from meshcore.runtime.retry import _failure_condition, _response_condition, backoff
from meshcore.testing.client import ClientResponse, fetch
from meshcore.testing.harness import http_proxy_config, start_proxy

# -- which outcomes match which conditions (no sockets) -----------------------------------------


def _policy(retry_on: str, **kwargs: Any) -> RetryPolicy:
    return RetryPolicy(retry_on=RetryOn.__meshcore_parse__(retry_on), **kwargs)


@pytest.mark.parametrize(
    ("retry_on", "status", "matched"),
    [
        ("5xx", 500, "5xx"),
        ("5xx", 503, "5xx"),
        ("5xx", 404, None),
        ("gateway-error", 502, "gateway-error"),
        ("gateway-error", 504, "gateway-error"),
        ("gateway-error", 500, None),
        ("retriable-4xx", 409, "retriable-4xx"),
        ("retriable-4xx", 429, None),
        ("retriable-status-codes", 429, "retriable-status-codes"),
        ("retriable-status-codes", 418, None),
        ("reset,connect-failure", 503, None),
    ],
)
def test_a_response_matches_the_http_conditions_as_envoy_reads_them(
    retry_on: str, status: int, matched: str | None
) -> None:
    policy = _policy(retry_on, retriable_status_codes=(429,))
    assert _response_condition(Response(status), policy) == matched


@pytest.mark.parametrize(
    ("grpc_status", "retry_on", "matched"),
    [
        ("14", "unavailable", "unavailable"),
        ("1", "cancelled", "cancelled"),
        ("4", "deadline-exceeded", "deadline-exceeded"),
        ("8", "resource-exhausted", "resource-exhausted"),
        ("13", "internal", "internal"),
        ("14", "cancelled", None),
        ("0", "unavailable,cancelled,internal", None),
    ],
)
def test_a_trailers_only_grpc_answer_matches_its_grpc_condition(
    grpc_status: str, retry_on: str, matched: str | None
) -> None:
    response = Response(
        200, headers=Headers([("content-type", "application/grpc"), ("grpc-status", grpc_status)])
    )
    assert _response_condition(response, _policy(retry_on)) == matched


@pytest.mark.parametrize(
    ("flag", "refused", "retry_on", "matched", "processed"),
    [
        (ResponseFlag.UPSTREAM_CONNECTION_FAILURE, False, "connect-failure", "connect-failure", False),
        (
            ResponseFlag.UPSTREAM_CONNECTION_FAILURE,
            False,
            "reset-before-request",
            "reset-before-request",
            False,
        ),
        (ResponseFlag.UPSTREAM_CONNECTION_FAILURE, False, "5xx", "5xx", False),
        (ResponseFlag.UPSTREAM_CONNECTION_TERMINATION, True, "refused-stream", "refused-stream", False),
        (ResponseFlag.UPSTREAM_CONNECTION_TERMINATION, False, "refused-stream", None, True),
        (ResponseFlag.UPSTREAM_CONNECTION_TERMINATION, False, "connect-failure", None, True),
        (ResponseFlag.UPSTREAM_CONNECTION_TERMINATION, False, "reset", "reset", True),
        (ResponseFlag.UPSTREAM_CONNECTION_TERMINATION, False, "reset-before-request", None, True),
        (ResponseFlag.UPSTREAM_REQUEST_TIMEOUT, False, "gateway-error", "gateway-error", True),
        (ResponseFlag.UPSTREAM_REQUEST_TIMEOUT, False, "retriable-4xx", None, True),
        (ResponseFlag.UPSTREAM_OVERFLOW, False, "5xx,reset,connect-failure", None, False),
        (ResponseFlag.NO_HEALTHY_UPSTREAM, False, "5xx,reset,connect-failure", None, False),
    ],
)
def test_a_failure_without_a_response_matches_the_reset_conditions(
    flag: ResponseFlag, refused: bool, retry_on: str, matched: str | None, processed: bool
) -> None:
    error = UpstreamError(flag, "test", refused=refused)
    assert _failure_condition(error, RetryOn.__meshcore_parse__(retry_on)) == (matched, processed)


def test_backoff_is_fully_jittered_and_exponential_up_to_its_cap() -> None:
    policy = RetryPolicy()  # 25ms base, 250ms cap
    for retry, cap in ((1, 0.025), (2, 0.075), (3, 0.175), (4, 0.25), (9, 0.25)):
        waits = [backoff(retry, policy) for _ in range(400)]
        assert all(0 <= w < cap for w in waits)
        assert max(waits) > cap * 0.8  # the whole range is used


def test_unknown_retry_conditions_are_named_with_a_suggestion() -> None:
    with pytest.raises(
        ValueError, match="unknown retry condition 'connect-failures'; did you mean 'connect-failure'"
    ):
        RetryOn.__meshcore_parse__("5xx,connect-failures")


# -- through a proxy, against upstreams that fail -----------------------------------------------


@attrs.define
class Spy:
    """An HTTP filter that keeps each request's StreamInfo, to see its attempts."""

    seen: list[list[UpstreamAttempt]] = attrs.Factory(list)

    def factory(self, _config: Any, _context: Any) -> Any:
        async def spy(request: Request, call_next: meshcore.HttpHandler) -> Response:
            try:
                return await call_next(request)
            finally:
                self.seen.append(list(request.info.attempts))

        return spy

    @meshcore.hookimpl
    def meshcore_http_filters(self) -> list[meshcore.HttpFilterType]:
        return [meshcore.HttpFilterType(name="spy", factory=self.factory)]


def _retrying(
    upstreams: Sequence[str | tuple[str, int]], policy: dict[str, Any], **cluster: Any
) -> dict[str, Any]:
    routes = [{"name": "r", "match": {"prefix": "/"}, "cluster": "backend", "retry_policy": policy}]
    return http_proxy_config(upstreams, routes=routes, cluster=cluster)


async def _start(
    nursery: trio.Nursery, *actions: str, name: str = "faulty", default: str = "200"
) -> FaultyUpstream:
    upstream = FaultyUpstream(name=name, default=default, script=list(actions))
    await nursery.start(upstream.serve)
    return upstream


async def test_503s_are_retried_as_many_times_as_the_policy_allows_and_no_more(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        upstream = await _start(nursery, "503", "503")
        proxy = await start_proxy(
            nursery, _retrying([upstream.endpoint], {"retry_on": "5xx", "num_retries": 3})
        )
        assert (await fetch(proxy.address("ingress"), "/a")).status == 200
        assert upstream.count == 3  # two failures, then the success
        upstream.default = "503"
        response = await fetch(proxy.address("ingress"), "/b")
    assert response.status == 503
    assert upstream.count == 3 + 4  # the first attempt and three retries, nothing more
    stats = proxy.stats
    assert stats.value("cluster_upstream_rq_retry", cluster="backend") == 2 + 3
    assert stats.value("cluster_upstream_rq_retry_success", cluster="backend") == 1
    assert stats.value("cluster_upstream_rq_retry_limit_exceeded", cluster="backend") == 1


async def test_a_condition_not_in_retry_on_is_not_retried(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        upstream = await _start(nursery, default="503")
        proxy = await start_proxy(
            nursery, _retrying([upstream.endpoint], {"retry_on": "reset,connect-failure"})
        )
        response = await fetch(proxy.address("ingress"), "/")
    assert (response.status, upstream.count) == (503, 1)


async def test_a_dead_endpoint_is_retried_on_the_live_one(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        dead = await _start(nursery, name="dead")
        live = await _start(nursery, name="live")
        dead_endpoint = dead.endpoint
        dead.stop()  # connections to it are refused from now on
        policy = {"retry_on": "connect-failure", "num_retries": 1}
        proxy = await start_proxy(nursery, _retrying([dead_endpoint, live.endpoint], policy))
        statuses = [(await fetch(proxy.address("ingress"), f"/{i}")).status for i in range(10)]
    assert statuses == [200] * 10
    assert live.count == 10  # each request once, whether it went there first or second


async def test_a_retry_goes_to_an_endpoint_not_tried_yet(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        broken = await _start(nursery, name="broken", default="503")
        good = await _start(nursery, name="good")
        spy = Spy()
        registry = build_registry(plugins=[("spy", spy)])
        config = _retrying([broken.endpoint, good.endpoint], {"retry_on": "5xx", "num_retries": 1})
        config["listeners"][0]["filter_chains"][0]["filters"][0]["http_connection_manager"][
            "http_filters"
        ] = [
            "spy",
            "router",
        ]
        proxy = await start_proxy(nursery, config, registry=registry)
        statuses = [(await fetch(proxy.address("ingress"), f"/{i}")).status for i in range(10)]
    assert statuses == [200] * 10
    assert good.count == 10
    # Every request that went to "broken" first was retried once, on "good".
    retried = [attempts for attempts in spy.seen if len(attempts) == 2]
    assert len(retried) == broken.count > 0
    assert all(len(attempts) in (1, 2) for attempts in spy.seen)
    for first, second in retried:
        assert (first.number, first.status, second.number, second.status) == (1, 503, 2, 200)
        assert first.endpoint != second.endpoint
        assert first.end is not None
        assert second.start >= first.end


async def test_a_reset_is_retried_under_reset(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        upstream = await _start(nursery, "reset", "close")
        proxy = await start_proxy(
            nursery, _retrying([upstream.endpoint], {"retry_on": "reset", "num_retries": 2})
        )
        response = await fetch(proxy.address("ingress"), "/")
    assert (response.status, upstream.count) == (200, 3)


async def test_per_try_timeouts_hold_inside_the_route_timeout(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        upstream = await _start(nursery, "hang", "hang", default="200")
        policy = {"retry_on": "5xx", "num_retries": 2, "per_try_timeout": "150ms"}
        proxy = await start_proxy(nursery, _retrying([upstream.endpoint], policy))
        start = time.monotonic()
        response = await fetch(proxy.address("ingress"), "/")
        elapsed = time.monotonic() - start
        assert (response.status, upstream.count) == (200, 3)
        # Two attempts given up at 150 ms each, plus backoff (< 25 ms, < 75 ms). Without
        # per-try timeouts the first attempt would hang until the route's 15 s: the upper
        # bound leaves a loaded machine seconds of slack and still tells the two apart.
        assert 0.3 <= elapsed < 3, elapsed
        # A per-try timeout longer than the route's: the route's wins, one attempt.
        upstream.default = "hang"
        routes = [
            {
                "name": "r",
                "match": {"prefix": "/"},
                "cluster": "backend",
                "timeout": "300ms",
                "retry_policy": {"retry_on": "5xx", "num_retries": 5, "per_try_timeout": "5s"},
            }
        ]
        proxy.apply(snapshot_from_data(http_proxy_config([upstream.endpoint], routes=routes), proxy.registry))
        start = time.monotonic()
        response = await fetch(proxy.address("ingress"), "/")
        elapsed = time.monotonic() - start
    assert (response.status, response.header("x-meshcore-flags")) == (504, "UT")
    assert upstream.count == 4  # one attempt, not retried: the route's time was up
    assert 0.3 <= elapsed < 4, elapsed  # the route's 300 ms, not a per-try 5 s


async def test_a_slow_endpoint_past_its_per_try_timeout_is_retried_on_a_fast_one(
    nursery: trio.Nursery,
) -> None:
    """An endpoint that answers, but slowly (5 s): each attempt there is given up at 200 ms."""
    with trio.fail_after(15):
        slow = await _start(nursery, name="slow", default="delay:5000")
        fast = await _start(nursery, name="fast")
        policy = {"retry_on": "5xx", "num_retries": 1, "per_try_timeout": "200ms"}
        proxy = await start_proxy(nursery, _retrying([slow.endpoint, fast.endpoint], policy))
        slowest = 0.0
        for i in range(6):
            start = time.monotonic()
            response = await fetch(proxy.address("ingress"), f"/{i}")
            slowest = max(slowest, time.monotonic() - start)
            assert (response.status, response.header("x-upstream")) == (200, "fast")
    # Every request was answered by the fast endpoint, once; those that went to the slow
    # one first (counted there) were given up long before its 5 s and tried on the fast one.
    assert fast.count == 6
    assert 0 < slow.count < 6
    assert slowest < 3, slowest
    assert proxy.stats.value("cluster_upstream_rq_retry", cluster="backend") == slow.count


async def test_an_endpoint_that_dies_mid_request_fails_over_and_a_post_is_not_replayed(
    nursery: trio.Nursery,
) -> None:
    """An endpoint dies (its process gone) while it holds a GET and a POST.

    Its connections close and new ones are refused. The GET is retried on the other
    endpoint; the POST, which the dying endpoint had received in full, is not. Later
    requests, POSTs included, never reach the dead endpoint: their connection fails first,
    which is always safe to retry.
    """
    with trio.fail_after(15):
        dying = await _start(nursery, name="dying", default="hang")
        live = await _start(nursery, name="live")
        policy = {"retry_on": "reset,connect-failure", "num_retries": 2}
        proxy = await start_proxy(nursery, _retrying([dying.endpoint], policy))
        address = proxy.address("ingress")
        results: dict[str, ClientResponse] = {}

        async def call(path: str, method: str) -> None:
            results[path] = await fetch(address, path, method=method, body=b"order-7")

        async with trio.open_nursery() as clients:
            clients.start_soon(call, "/get", "GET")
            clients.start_soon(call, "/post", "POST")
            await dying.wait_seen(2)  # both held by the only endpoint
            # The live endpoint joins (endpoints change in place: the two stay in flight) ...
            proxy.apply(
                snapshot_from_data(_retrying([dying.endpoint, live.endpoint], policy), proxy.registry)
            )
            dying.stop()  # ... and the first one dies.
        assert results["/get"].status == 200
        assert results["/post"].status in (502, 503)
        assert (live.count_path("/get"), live.count_path("/post")) == (1, 0)
        # From now on the dead endpoint refuses connections: every request goes to the live one.
        for i in range(6):
            method = "POST" if i % 2 else "GET"
            response = await fetch(address, f"/after-{i}", method=method, body=b"order-8")
            assert (response.status, response.header("x-upstream")) == (200, "live")
    assert dying.count == 2
    assert live.count == 1 + 6
    assert {seen.body_size for seen in live.seen} == {7}


@pytest.mark.parametrize("action", ["503", "reset", "hang"])
async def test_a_post_is_never_replayed_after_it_may_have_been_processed(
    nursery: trio.Nursery, action: str
) -> None:
    with trio.fail_after(10):
        upstream = await _start(nursery, default=action)
        policy = {"retry_on": "5xx,reset,connect-failure", "num_retries": 3, "per_try_timeout": "200ms"}
        proxy = await start_proxy(nursery, _retrying([upstream.endpoint], policy))
        response = await fetch(proxy.address("ingress"), "/charge", method="POST", body=b"pay 10")
        assert response.status in (502, 503, 504)
        assert upstream.count == 1  # it reached the upstream, which may have charged: never again
        # The same failure for an idempotent PUT is retried, body and all.
        response = await fetch(proxy.address("ingress"), "/put", method="PUT", body=b"x" * 1000)
    assert response.status in (502, 503, 504)
    assert upstream.count == 1 + 4
    assert [seen.body_size for seen in upstream.seen[1:]] == [1000] * 4


async def test_a_body_from_an_http2_client_is_replayed_whole_and_a_post_still_is_not(
    nursery: trio.Nursery,
) -> None:
    """The other downstream protocol: a body that came in HTTP/2 DATA frames is replayed whole.

    200 KB, past a flow-control window, kept and sent again whole on each retry; a POST so
    sent is still not replayed after a 503.
    """
    with trio.fail_after(15):
        upstream = await _start(nursery, "503", "503")
        policy = {"retry_on": "5xx", "num_retries": 2, "buffer_limit": "1MiB"}
        proxy = await start_proxy(nursery, _retrying([upstream.endpoint], policy))
        body = bytes(range(256)) * 800
        async with open_h2_client(proxy.address("ingress")) as h2:
            put = await h2.request("/put", method="PUT", body=body)
            upstream.then(["503"])
            post = await h2.request("/post", method="POST", body=body)
    assert (put.status, post.status) == (200, 503)
    assert [(s.method, s.body_size) for s in upstream.seen] == [("PUT", len(body))] * 3 + [
        ("POST", len(body))
    ]


async def test_a_post_is_retried_when_it_never_reached_an_upstream(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        dead = await _start(nursery, name="dead")
        live = await _start(nursery, name="live")
        dead_endpoint = dead.endpoint
        dead.stop()
        proxy = await start_proxy(
            nursery, _retrying([dead_endpoint, live.endpoint], {"retry_on": "connect-failure"})
        )
        for i in range(6):
            response = await fetch(proxy.address("ingress"), f"/{i}", method="POST", body=b"order")
            assert response.status == 200
    assert live.count == 6
    assert {seen.body_size for seen in live.seen} == {5}


async def test_retry_non_idempotent_lets_a_post_be_replayed(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        upstream = await _start(nursery, "503")
        policy = {"retry_on": "5xx", "retry_non_idempotent": True}
        proxy = await start_proxy(nursery, _retrying([upstream.endpoint], policy))
        response = await fetch(proxy.address("ingress"), "/", method="POST", body=b"idempotency-key: 7")
    assert (response.status, upstream.count) == (200, 2)
    assert [s.body_size for s in upstream.seen] == [18, 18]


async def test_a_body_past_the_buffer_limit_is_not_retried(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        upstream = await _start(nursery, default="503")
        policy = {"retry_on": "5xx", "num_retries": 2, "buffer_limit": "1KiB"}
        proxy = await start_proxy(nursery, _retrying([upstream.endpoint], policy))
        big = await fetch(proxy.address("ingress"), "/", method="PUT", body=b"b" * 5000)
        assert (big.status, upstream.count) == (503, 1)
        small = await fetch(proxy.address("ingress"), "/", method="PUT", body=b"s" * 1000)
    assert (small.status, upstream.count) == (503, 1 + 3)


async def test_retry_after_is_honoured_and_a_wait_past_the_timeout_is_not_made(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        upstream = await _start(nursery, "503 retry-after=1")
        policy = {"retry_on": "retriable-status-codes", "retriable_status_codes": [503]}
        proxy = await start_proxy(nursery, _retrying([upstream.endpoint], policy))
        start = time.monotonic()
        response = await fetch(proxy.address("ingress"), "/")
        assert (response.status, upstream.count) == (200, 2)
        # The retry waited the second asked for, not the 25 ms backoff (nor much more).
        assert 1.0 <= time.monotonic() - start < 4
        # Asked to come back after the route's timeout (15 s): answered now, not retried.
        upstream.then(["503 retry-after=30"])
        start = time.monotonic()
        response = await fetch(proxy.address("ingress"), "/")
    assert (response.status, upstream.count) == (503, 3)
    assert time.monotonic() - start < 4  # not the 30 s asked for


async def test_grpc_unavailable_is_retried_under_unavailable(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        upstream = await _start(nursery, "grpc:14", "grpc:13", default="grpc:0")
        proxy = await start_proxy(
            nursery, _retrying([upstream.endpoint], {"retry_on": "unavailable", "num_retries": 3})
        )
        headers = {"content-type": "application/grpc"}
        response = await fetch(
            proxy.address("ingress"), "/pkg.Svc/Call", method="POST", headers=headers, body=b""
        )
    # UNAVAILABLE retried (a gRPC call is a POST: the listed status is the policy's word that
    # it may be sent again); INTERNAL is not in retry_on: it is the answer.
    assert (response.header("grpc-status"), upstream.count) == ("13", 2)


async def test_the_attempt_count_header_tells_the_upstream_which_attempt_it_is(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        upstream = await _start(nursery, "503", "503")
        policy = {"retry_on": "5xx", "num_retries": 2, "include_attempt_count": True}
        proxy = await start_proxy(nursery, _retrying([upstream.endpoint], policy))
        assert (await fetch(proxy.address("ingress"), "/")).status == 200
    assert [s.attempt for s in upstream.seen] == ["1", "2", "3"]


async def test_retries_ran_out_on_failures_says_urx(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        upstream = await _start(nursery, default="reset")
        proxy = await start_proxy(
            nursery, _retrying([upstream.endpoint], {"retry_on": "reset", "num_retries": 2})
        )
        response = await fetch(proxy.address("ingress"), "/")
    assert response.status == 503
    assert response.header("x-meshcore-flags") == "UC,URX"
    assert upstream.count == 3


async def test_a_retry_budget_caps_retries_during_a_full_outage(nursery: trio.Nursery) -> None:
    """Every endpoint answers 503 and 20 clients keep calling: the budget holds retries down.

    Measured against a baseline in the same run: the same outage without a budget (and a
    retry circuit breaker too high to matter) costs each request 1 + 3 attempts; the budget
    (20% of active requests, at least 1) keeps the retries to a fraction of the requests.
    """
    clients, rounds = 20, 10
    requests = clients * rounds
    policy = {"retry_on": "5xx", "num_retries": 3, "retry_back_off": {"base_interval": "1ms"}}

    async def outage(proxy: Any, rounds: int) -> None:
        async def client() -> None:
            for i in range(rounds):
                assert (await fetch(proxy.address("ingress"), f"/{i}")).status == 503

        async with trio.open_nursery() as callers:
            for _ in range(clients):
                callers.start_soon(client)

    with trio.fail_after(30):
        upstream = await _start(nursery, default="delay:20:503")  # slow enough to overlap
        unbudgeted = {"max_retries": 10_000}
        proxy = await start_proxy(
            nursery, _retrying([upstream.endpoint], policy, circuit_breakers=unbudgeted)
        )
        await outage(proxy, 2)  # every request costs the same here: two rounds tell it
        baseline = upstream.count / (clients * 2)
        budget = {"retry_budget": {"budget_percent": 20, "min_retry_concurrency": 1}}
        config = _retrying([upstream.endpoint], policy, circuit_breakers=budget)
        proxy.apply(snapshot_from_data(config, proxy.registry))
        stats = proxy.stats
        retries_before = stats.value("cluster_upstream_rq_retry", cluster="backend")
        seen_before = upstream.count
        await outage(proxy, rounds)
    ratio = (upstream.count - seen_before) / requests
    print(f"attempts per request in a full outage: {baseline:.2f} unbudgeted, {ratio:.2f} under a 20% budget")  # noqa: T201 - the measured figures, with -s
    assert baseline == 4.0  # every request: the first attempt and three retries
    # With the budget, retries in flight stay under 20% of the requests in flight (about 4
    # of 20), so attempts per request stay far below.
    assert ratio < 1.6, ratio
    assert stats.value("cluster_upstream_rq_retry_overflow", cluster="backend") > 0
    retries = stats.value("cluster_upstream_rq_retry", cluster="backend") - retries_before
    assert retries == upstream.count - seen_before - requests
