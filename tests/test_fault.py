"""The ``fault`` filter: delays on a virtual clock, aborts, header control, caps, gRPC replies."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from meshcore import ConfigError, Request, Response, ResponseFlag
from meshcore.testing.client import fetch
from meshcore.testing.filters import FilterHarness, make_request
from meshcore.testing.harness import http_proxy_config, start_proxy
from meshcore.testing.upstreams import serve_upstream

DI = ResponseFlag.DELAY_INJECTED
FI = ResponseFlag.FAULT_INJECTED


def stat(harness: FilterHarness, name: str, route: str = "") -> int | float:
    return harness.stats.value(name, listener="test", route=route)


# -- delays ------------------------------------------------------------------------------------


async def test_a_delay_holds_the_request_for_exactly_the_configured_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    harness = FilterHarness("fault", {"delay": {"fixed": "250ms"}})
    reached: list[float] = []

    async def upstream(_request: Request) -> Response:
        reached.append(autojump_clock.current_time())
        return Response.local(200, b"ok")

    harness.next = upstream
    request = make_request()
    with trio.fail_after(5):
        start = autojump_clock.current_time()
        response = await harness(request)
    assert response.status == 200
    assert reached == [pytest.approx(start + 0.25, abs=1e-9)]
    assert autojump_clock.current_time() - start == pytest.approx(0.25, abs=1e-9)
    assert request.info.flags == {DI}
    assert stat(harness, "fault_delays_injected") == 1
    assert stat(harness, "fault_active") == 0


async def test_a_delay_at_0_percent_never_waits(autojump_clock: trio.testing.MockClock) -> None:
    harness = FilterHarness("fault", {"delay": {"fixed": "1s", "percentage": 0}})
    with trio.fail_after(5):
        start = autojump_clock.current_time()
        for _ in range(50):
            request = make_request()
            await harness(request)
            assert not request.info.flags
    assert autojump_clock.current_time() == start
    assert stat(harness, "fault_delays_injected") == 0


async def test_a_delay_then_an_abort_both_apply(autojump_clock: trio.testing.MockClock) -> None:
    harness = FilterHarness("fault", {"delay": {"fixed": "2s"}, "abort": {"http_status": 503}})
    request = make_request()
    with trio.fail_after(5):
        start = autojump_clock.current_time()
        response = await harness(request)
    assert autojump_clock.current_time() - start == pytest.approx(2, abs=1e-9)
    assert response.status == 503
    assert request.info.flags == {DI, FI}


# -- aborts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("percentage", "aborted"), [(100, 200), (0, 0)])
async def test_abort_percentages_0_and_100_are_exact(percentage: float, aborted: int) -> None:
    harness = FilterHarness("fault", {"abort": {"http_status": 503, "percentage": percentage}})
    statuses = []
    with trio.fail_after(5):
        for _ in range(200):
            request = make_request()
            response = await harness(request)
            statuses.append(response.status)
            assert request.info.flags == ({FI} if response.status == 503 else set())
    assert statuses.count(503) == aborted
    assert statuses.count(200) == 200 - aborted
    assert stat(harness, "fault_aborts_injected") == aborted


async def test_an_abort_answers_locally_without_calling_the_next_handler() -> None:
    harness = FilterHarness("fault", {"abort": {"http_status": 418}})
    called = []

    async def upstream(request: Request) -> Response:
        called.append(request)
        return Response.local(200)

    harness.next = upstream
    with trio.fail_after(5):
        response = await harness.request()
        body = await response.body.read_all()
    assert (response.status, body, called) == (418, b"fault filter abort\n", [])
    assert response.headers.get("content-type") == "text/plain"


async def test_a_seeded_abort_percentage_holds_statistically_and_repeats() -> None:
    config = {"abort": {"http_status": 503, "percentage": 25}, "seed": 7}
    runs = []
    with trio.fail_after(10):
        for _ in range(2):
            harness = FilterHarness("fault", config)
            runs.append([(await harness.request()).status for _ in range(4000)])
    share = runs[0].count(503) / 4000
    # Binomial(4000, 0.25): standard deviation 0.68 points; 2.5 points is over 3.5 of them.
    assert share == pytest.approx(0.25, abs=0.025)
    assert runs[0] == runs[1]  # the same seed, the same faults


# -- header control ----------------------------------------------------------------------------


async def test_headers_are_ignored_without_header_control(autojump_clock: trio.testing.MockClock) -> None:
    harness = FilterHarness("fault", {})
    headers = {"x-meshcore-fault-delay-ms": "500", "x-meshcore-fault-abort": "503"}
    request = make_request(headers=headers)
    with trio.fail_after(5):
        start = autojump_clock.current_time()
        response = await harness(request)
    assert (response.status, autojump_clock.current_time(), request.info.flags) == (200, start, set())


async def test_header_control_delays_and_aborts_on_request(autojump_clock: trio.testing.MockClock) -> None:
    harness = FilterHarness("fault", {"header_control": True})
    request = make_request(headers={"x-meshcore-fault-delay-ms": "1500", "x-meshcore-fault-abort": "429"})
    with trio.fail_after(5):
        start = autojump_clock.current_time()
        response = await harness(request)
        assert autojump_clock.current_time() - start == pytest.approx(1.5, abs=1e-9)
        assert response.status == 429
        assert request.info.flags == {DI, FI}
        plain = make_request()
        assert (await harness(plain)).status == 200
    assert not plain.info.flags


async def test_a_header_fault_replaces_the_configured_one() -> None:
    harness = FilterHarness("fault", {"header_control": True, "abort": {"http_status": 503, "percentage": 0}})
    with trio.fail_after(5):
        assert (await harness.request()).status == 200
        response = await harness.request(headers={"x-meshcore-fault-abort": "502"})
    assert response.status == 502


async def test_the_grpc_abort_header_takes_precedence() -> None:
    harness = FilterHarness("fault", {"header_control": True})
    headers = {"x-meshcore-fault-abort": "503", "x-meshcore-fault-abort-grpc": "4"}
    with trio.fail_after(5):
        response = await harness.request(headers=headers)
    assert response.status == 200
    assert response.headers.get("grpc-status") == "4"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-meshcore-fault-delay-ms", "soon"),
        ("x-meshcore-fault-delay-ms", "-5"),
        ("x-meshcore-fault-delay-ms", "1.5"),
        ("x-meshcore-fault-delay-ms", ""),
        ("x-meshcore-fault-delay-ms", "60001"),  # past max_header_delay (60s)
        ("x-meshcore-fault-delay-ms", "9" * 5000),
        ("x-meshcore-fault-abort", "600"),
        ("x-meshcore-fault-abort", "199"),
        ("x-meshcore-fault-abort", "5O3"),
        ("x-meshcore-fault-abort", "\u0663\u0660\u0663"),  # Arabic-Indic digits: not ASCII digits
        ("x-meshcore-fault-abort-grpc", "17"),
        ("x-meshcore-fault-abort-grpc", "UNAVAILABLE"),
    ],
)
async def test_bad_header_values_are_ignored_with_a_log_line(
    autojump_clock: trio.testing.MockClock, header: str, value: str
) -> None:
    harness = FilterHarness("fault", {"header_control": True})
    request = make_request(headers=[(header, value.encode("utf-8").decode("latin-1"))])
    with trio.fail_after(5), capture_logs() as logs:
        start = autojump_clock.current_time()
        response = await harness(request)
    assert (response.status, autojump_clock.current_time(), request.info.flags) == (200, start, set())
    ignored = [entry for entry in logs if entry["event"] == "fault_header_ignored"]
    assert len(ignored) == 1
    assert ignored[0]["header"] == header
    assert len(ignored[0]["value"]) <= 64


# -- max_active_faults -------------------------------------------------------------------------


async def test_max_active_faults_passes_requests_untouched_past_the_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    harness = FilterHarness("fault", {"delay": {"fixed": "1s"}, "max_active_faults": 2})
    release = trio.Event()
    entered = 0

    async def stalled(_request: Request) -> Response:
        nonlocal entered
        entered += 1
        await release.wait()
        return Response.local(200)

    passing = harness.next
    harness.next = stalled
    requests = [make_request() for _ in range(3)]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for request in requests:
                nursery.start_soon(harness, request)
            await trio.testing.wait_all_tasks_blocked()
            # One request found two faults active and went straight on, undelayed.
            assert entered == 1
            assert stat(harness, "fault_overflow") == 1
            await trio.sleep(1)  # virtual: the two delays end and their requests stall too
            await trio.testing.wait_all_tasks_blocked()
            assert entered == 3
            assert autojump_clock.current_time() == 1
            assert stat(harness, "fault_active") == 2
            release.set()
    assert sorted(len(r.info.flags) for r in requests) == [0, 1, 1]
    assert stat(harness, "fault_active") == 0
    assert stat(harness, "fault_delays_injected") == 2
    # Under the cap again: faults are injected again.
    request = make_request()
    harness.next = passing
    with trio.fail_after(5):
        await harness(request)
    assert request.info.flags == {DI}


async def test_max_active_faults_0_never_injects() -> None:
    harness = FilterHarness("fault", {"abort": {"http_status": 503}, "max_active_faults": 0})
    with trio.fail_after(5):
        statuses = [(await harness.request()).status for _ in range(10)]
    assert statuses == [200] * 10
    assert stat(harness, "fault_overflow") == 10
    assert stat(harness, "fault_aborts_injected") == 0


# -- gRPC --------------------------------------------------------------------------------------


async def assert_grpc_reply(response: Response, grpc_status: int) -> None:
    assert response.status == 200
    assert response.headers.get("content-type") == "application/grpc"
    assert response.headers.get("grpc-status") == str(grpc_status)
    assert response.headers.get("grpc-message") == "fault filter abort"
    assert response.headers.get("content-length") == "0"
    assert await response.body.read_all() == b""


async def test_a_configured_grpc_status_answers_trailers_only() -> None:
    harness = FilterHarness("fault", {"abort": {"grpc_status": 14}})
    request = make_request("POST", "/pkg.Service/Method")
    with trio.fail_after(5):
        await assert_grpc_reply(await harness(request), 14)
    assert request.info.flags == {FI}


@pytest.mark.parametrize(("http_status", "grpc_status"), [(503, 14), (429, 14), (403, 7), (418, 2)])
async def test_an_http_abort_of_a_grpc_request_maps_to_a_grpc_status(
    http_status: int, grpc_status: int
) -> None:
    harness = FilterHarness("fault", {"abort": {"http_status": http_status}})
    headers = {"content-type": "application/grpc+proto"}
    with trio.fail_after(5):
        await assert_grpc_reply(
            await harness.request("POST", "/pkg.Service/Method", headers=headers), grpc_status
        )


# -- stats and config --------------------------------------------------------------------------


async def test_counters_are_labelled_with_the_route() -> None:
    harness = FilterHarness("fault", {"abort": {"http_status": 503}})
    request = make_request()
    request.info.route_name = "checkout"
    with trio.fail_after(5):
        await harness(request)
        await harness.request()
    assert stat(harness, "fault_aborts_injected", route="checkout") == 1
    assert stat(harness, "fault_aborts_injected") == 1


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        (
            {"abort": {"http_status": 503, "grpc_status": 14}},
            "http_filters[0].fault.abort: needs exactly one of http_status, grpc_status; got http_status, grpc_status",
        ),
        (
            {"abort": {"percentage": 50}},
            "http_filters[0].fault.abort: needs exactly one of http_status, grpc_status; got none",
        ),
        ({"abort": {"http_status": 600}}, "http_filters[0].fault.abort.http_status: must be <= 599, got 600"),
        ({"abort": {"http_status": 199}}, "http_filters[0].fault.abort.http_status: must be >= 200, got 199"),
        ({"abort": {"grpc_status": 17}}, "http_filters[0].fault.abort.grpc_status: must be <= 16, got 17"),
        (
            {"abort": {"http_status": 503, "percentage": -1}},
            "http_filters[0].fault.abort.percentage: must be >= 0, got -1.0",
        ),
        (
            {"delay": {"fixed": "1s", "percentage": 101}},
            "http_filters[0].fault.delay.percentage: must be <= 100, got 101.0",
        ),
        ({"delay": {"percentage": 5}}, "http_filters[0].fault.delay.fixed: is required"),
        (
            {"delay": {"fixed": "soon"}},
            'http_filters[0].fault.delay.fixed: must be a duration such as "250ms" or "2s", got \'soon\'',
        ),
        ({"max_active_faults": -1}, "http_filters[0].fault.max_active_faults: must be >= 0, got -1"),
        ({"header_control": "yes"}, "http_filters[0].fault.header_control: must be a boolean, got 'yes'"),
        ({"seed": 1.5}, "http_filters[0].fault.seed: must be an integer, got 1.5"),
    ],
)
def test_bad_configs_are_reported_with_their_field_path(config: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        FilterHarness("fault", config)
    assert [str(p) for p in info.value.problems] == [problem]


# -- end to end --------------------------------------------------------------------------------


async def test_through_a_proxy_aborts_carry_the_flag_and_routes_can_disable_the_filter(
    nursery: trio.Nursery,
) -> None:
    upstream = await nursery.start(serve_upstream)
    routes = [
        {
            "name": "safe",
            "match": {"prefix": "/safe"},
            "cluster": "backend",
            "filters": {"fault": "disabled"},
        },
        {
            "name": "teapot",
            "match": {"prefix": "/teapot"},
            "cluster": "backend",
            "filters": {"fault": {"abort": {"http_status": 418}}},
        },
        {"name": "default", "match": {"prefix": "/"}, "cluster": "backend"},
    ]
    config = http_proxy_config(
        [upstream], routes=routes, http_filters=[{"fault": {"header_control": True}}, "router"]
    )
    proxy = await start_proxy(nursery, config)
    address = proxy.address("ingress")
    abort = [("x-meshcore-fault-abort", "503")]
    with trio.fail_after(10):
        aborted = await fetch(address, "/", headers=abort)
        passed = await fetch(address, "/")
        safe = await fetch(address, "/safe", headers=abort)
        teapot = await fetch(address, "/teapot")
    assert (aborted.status, aborted.header("x-meshcore-flags"), aborted.body) == (
        503,
        "FI",
        b"fault filter abort\n",
    )
    assert (passed.status, passed.header("x-meshcore-flags"), passed.header("x-upstream")) == (
        200,
        None,
        "upstream",
    )
    assert (safe.status, safe.header("x-meshcore-flags")) == (200, None)
    assert (teapot.status, teapot.header("x-meshcore-flags")) == (418, "FI")
    stats = proxy.stats
    assert stats.value("fault_aborts_injected", listener="ingress", route="default") == 1
    assert stats.value("fault_aborts_injected", listener="ingress", route="teapot") == 1
    assert stats.value("fault_aborts_injected", listener="ingress", route="safe") == 0
