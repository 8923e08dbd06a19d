"""The ``local_ratelimit`` filter: its rate on a virtual and a real clock, scopes, keys, replies."""

from __future__ import annotations

from typing import Any

import h11
import pytest
import trio
import trio.testing

from meshcore import ConfigError, Request, Response, ResponseFlag
from meshcore.testing.client import fetch
from meshcore.testing.filters import FilterHarness, make_request
from meshcore.testing.harness import http_proxy_config, start_proxy
from meshcore.testing.upstreams import serve_upstream

RL = ResponseFlag.LOCAL_RATE_LIMITED
HOUR = "1h"  # a fill interval long enough that no test sees a refill


def stat(harness: FilterHarness, name: str, route: str = "") -> int | float:
    return harness.stats.value(name, listener="test", route=route)


async def statuses(harness: FilterHarness, count: int, **request: Any) -> list[int]:
    return [(await harness.request(**request)).status for _ in range(count)]


# -- the rate ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_tokens", "tokens_per_fill", "fill_interval", "rate"),
    [(20, 10, "50ms", 200.0), (1, 1, "10ms", 100.0), (100, 3, "33ms", 3 / 0.033)],
)
async def test_the_rate_holds_within_5_percent_over_5_seconds_of_virtual_time(
    autojump_clock: trio.testing.MockClock,
    max_tokens: int,
    tokens_per_fill: int,
    fill_interval: str,
    rate: float,
) -> None:
    config = {"max_tokens": max_tokens, "tokens_per_fill": tokens_per_fill, "fill_interval": fill_interval}
    harness = FilterHarness("local_ratelimit", config)
    allowed = limited = 0
    with trio.fail_after(60):
        start = autojump_clock.current_time()
        while autojump_clock.current_time() - start < 5:
            if (await harness.request()).status == 200:
                allowed += 1
            else:
                limited += 1
            await trio.sleep(0.0005)  # virtual: 2,000 requests a second offered
    expected = max_tokens + rate * 5
    assert allowed == pytest.approx(expected, rel=0.05)
    assert limited > allowed  # the offered load was well above the rate
    assert (stat(harness, "local_ratelimit_allowed"), stat(harness, "local_ratelimit_limited")) == (
        allowed,
        limited,
    )


async def keep_alive_client(
    address: tuple[str, int], until: float, sent: list[float], statuses: list[int]
) -> None:
    """Send GET / on one connection, one request after another, until ``until`` (real time)."""
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(method="GET", target="/", headers=[("host", "example.com")])
        while trio.current_time() < until:
            data = (conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b"")
            sent.append(trio.current_time())
            await stream.send_all(data)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    statuses.append(event.status_code)
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif not isinstance(event, h11.Data):
                    msg = f"unexpected {event!r} after {len(statuses)} responses"
                    raise ConnectionError(msg)
            conn.start_next_cycle()


def ideal_bucket_admits(offered: list[float], size: int, rate: float) -> int:
    """How many of the requests offered at these times a continuous token bucket admits."""
    tokens, last, admitted = float(size), min(offered), 0
    for at in sorted(offered):
        tokens = min(size, tokens + (at - last) * rate)
        last = at
        if tokens >= 1:
            tokens -= 1
            admitted += 1
    return admitted


def test_the_ideal_bucket_admits_the_burst_then_the_rate_and_loses_what_overflows() -> None:
    steady = [i / 1000 for i in range(2000)]  # 1,000/s for 2 s
    assert ideal_bucket_admits(steady, size=25, rate=50) == pytest.approx(25 + 50 * 2, abs=1)
    paused = [*steady, *(10 + i / 1000 for i in range(1000))]  # 8 s of nothing: refills to 25 only
    assert ideal_bucket_admits(paused, size=25, rate=50) == pytest.approx(25 + 100 + 25 + 50, abs=2)


async def test_the_rate_holds_within_5_percent_on_a_real_clock_under_concurrent_load(
    nursery: trio.Nursery,
) -> None:
    upstream = await nursery.start(serve_upstream)
    # 50/s, a token every 20 ms. A bucket of half a second's tokens: the clients and the proxy
    # share this process and the machine, and a stall longer than the bucket takes to fill
    # loses tokens to the cap, which is the bucket doing its job, not the rate drifting. The
    # rate is low enough that 8 clients in one process offer several times as much even on
    # a loaded machine (at 200/s they once offered only 190/s, and nothing was limited).
    limit = {"max_tokens": 25, "tokens_per_fill": 1, "fill_interval": "20ms"}
    config = http_proxy_config([upstream], http_filters=[{"local_ratelimit": limit}, "router"])
    proxy = await start_proxy(nursery, config)
    sent: list[float] = []
    seen: list[int] = []
    with trio.fail_after(20):
        until = trio.current_time() + 2.5
        async with trio.open_nursery() as clients:
            for _ in range(8):
                clients.start_soon(keep_alive_client, proxy.address("ingress"), until, sent, seen)
    elapsed = max(sent) - min(sent)
    allowed = seen.count(200)
    assert seen.count(429) + allowed == len(seen) == len(sent)
    assert seen.count(429) > allowed  # the offered load was well above the rate
    # Never more than the rate allows over the whole run...
    assert allowed <= (25 + 50 * elapsed) * 1.05
    # ...and, on a machine loaded enough that the clients sometimes offer less than the rate
    # (tokens past the bucket's size are then lost, as they must be), as many as an ideal
    # bucket admits for the requests as they were actually offered.
    assert allowed == pytest.approx(ideal_bucket_admits(sent, size=25, rate=50), rel=0.05)
    stats = proxy.stats
    assert stats.value("local_ratelimit_allowed", listener="ingress", route="default") == allowed
    assert stats.value("local_ratelimit_limited", listener="ingress", route="default") == seen.count(429)


async def test_a_quiet_spell_refills_the_bucket_up_to_max_tokens_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    harness = FilterHarness("local_ratelimit", {"max_tokens": 3, "tokens_per_fill": 1, "fill_interval": "1s"})
    with trio.fail_after(3700):  # virtual time
        assert await statuses(harness, 4) == [200, 200, 200, 429]
        await trio.sleep(1)
        assert await statuses(harness, 2) == [200, 429]
        await trio.sleep(3600)
        assert await statuses(harness, 4) == [200, 200, 200, 429]
    assert autojump_clock.current_time() == 3601  # no request waited


# -- rejections --------------------------------------------------------------------------------


async def test_retry_after_counts_whole_seconds_to_the_next_token(
    autojump_clock: trio.testing.MockClock,
) -> None:
    harness = FilterHarness("local_ratelimit", {"max_tokens": 1, "fill_interval": "10s"})
    with trio.fail_after(30):
        assert (await harness.request()).status == 200
        assert (await harness.request()).headers.get("retry-after") == "10"
        await trio.sleep(3.5)
        assert (await harness.request()).headers.get("retry-after") == "7"  # 6.5s, rounded up
        await trio.sleep(6.25)
        assert (await harness.request()).headers.get("retry-after") == "1"  # 0.25s, rounded up
        await trio.sleep(0.25)
        assert autojump_clock.current_time() == 10
        assert (await harness.request()).status == 200


async def test_a_rejection_answers_locally_with_the_configured_status_and_body() -> None:
    config = {"max_tokens": 1, "fill_interval": HOUR, "status": 503, "body": "slow down\n"}
    harness = FilterHarness("local_ratelimit", config)
    called: list[Request] = []

    async def upstream(request: Request) -> Response:
        called.append(request)
        return Response.local(200)

    harness.next = upstream
    first, second = make_request(), make_request()
    with trio.fail_after(5):
        await harness(first)
        response = await harness(second)
        body = await response.body.read_all()
    assert called == [first]
    assert (response.status, body, response.headers.get("retry-after")) == (503, b"slow down\n", "3600")
    assert (first.info.flags, second.info.flags) == (set(), {RL})


async def test_a_grpc_request_is_rejected_with_resource_exhausted() -> None:
    harness = FilterHarness("local_ratelimit", {"max_tokens": 1, "fill_interval": HOUR})
    headers = {"content-type": "application/grpc"}
    with trio.fail_after(5):
        await harness.request("POST", "/pkg.Service/Method", headers=headers)
        response = await harness.request("POST", "/pkg.Service/Method", headers=headers)
        body = await response.body.read_all()
    assert (response.status, body) == (200, b"")
    assert response.headers.get("content-type") == "application/grpc"
    assert response.headers.get("grpc-status") == "8"
    assert response.headers.get("grpc-message") == "local rate limited"
    assert response.headers.get("retry-after") == "3600"


# -- descriptors -------------------------------------------------------------------------------


def by(key: Any, max_tokens: int = 2, **more: Any) -> dict[str, Any]:
    return {
        "max_tokens": 100,
        "fill_interval": HOUR,
        "descriptors": [{"key": key, "max_tokens": max_tokens, "fill_interval": HOUR, **more}],
    }


async def test_a_header_descriptor_gives_each_user_a_bucket() -> None:
    harness = FilterHarness("local_ratelimit", by({"header": "X-User"}))
    with trio.fail_after(5):
        assert await statuses(harness, 3, headers={"x-user": "alice"}) == [200, 200, 429]
        assert await statuses(harness, 3, headers={"x-user": "bob"}) == [200, 200, 429]
        assert await statuses(harness, 5) == [200] * 5  # no key: only the filter's own bucket
        assert await statuses(harness, 1, headers={"x-user": "alice"}) == [429]


async def test_a_client_address_descriptor_keys_on_the_ip_not_the_port() -> None:
    harness = FilterHarness("local_ratelimit", by("client_address", max_tokens=1))
    with trio.fail_after(5):
        assert await statuses(harness, 1, peer="10.0.0.1:1000") == [200]
        assert await statuses(harness, 1, peer="10.0.0.1:2000") == [429]
        assert await statuses(harness, 1, peer="[2001:db8::1]:1000") == [200]
        assert await statuses(harness, 1, peer="[2001:db8::1]:3000") == [429]
        assert await statuses(harness, 1, peer="10.0.0.2:1000") == [200]


async def test_an_identity_descriptor_keys_on_the_identity_in_the_request_metadata() -> None:
    harness = FilterHarness("local_ratelimit", by("identity", max_tokens=1))
    with trio.fail_after(5):
        for identity, expected in [
            ("spiffe://td/ns/a/sa/x", 200),
            ("spiffe://td/ns/a/sa/x", 429),
            ("spiffe://td/ns/a/sa/y", 200),
            (None, 200),
            (None, 200),
        ]:
            request = make_request()
            if identity is not None:
                request.info.metadata["identity"] = identity
            assert (await harness(request)).status == expected


async def test_a_request_takes_tokens_only_when_every_bucket_has_one() -> None:
    config = by({"header": "x-user"}, max_tokens=1)
    config["max_tokens"] = 3
    harness = FilterHarness("local_ratelimit", config)
    with trio.fail_after(5):
        assert await statuses(harness, 4, headers={"x-user": "a"}) == [200, 429, 429, 429]
        # The three rejections of "a" took nothing from the shared bucket: two tokens are left.
        assert await statuses(harness, 1, headers={"x-user": "b"}) == [200]
        assert await statuses(harness, 1, headers={"x-user": "c"}) == [200]
        assert await statuses(harness, 1, headers={"x-user": "d"}) == [429]


async def test_descriptors_forget_the_least_recently_used_key_past_max_keys() -> None:
    harness = FilterHarness("local_ratelimit", by({"header": "x-user"}, max_tokens=1, max_keys=2))

    async def user(name: str) -> int:
        return (await harness.request(headers={"x-user": name})).status

    with trio.fail_after(5):
        assert [await user(name) for name in ("a", "b", "a")] == [200, 200, 429]
        assert await user("c") == 200  # forgets b, the least recently used
        assert await user("a") == 429  # a was kept: still empty
        assert await user("b") == 200  # b starts over with a full bucket


# -- scopes, through a real proxy --------------------------------------------------------------


async def test_routes_override_or_disable_the_listener_bucket(nursery: trio.Nursery) -> None:
    upstream = await nursery.start(serve_upstream)
    routes = [
        {
            "name": "free",
            "match": {"prefix": "/free"},
            "cluster": "backend",
            "filters": {"local_ratelimit": "disabled"},
        },
        {
            "name": "own",
            "match": {"prefix": "/own"},
            "cluster": "backend",
            "filters": {"local_ratelimit": {"max_tokens": 3, "fill_interval": HOUR, "body": "own limit\n"}},
        },
        {"name": "default", "match": {"prefix": "/"}, "cluster": "backend"},
    ]
    limit = {"max_tokens": 2, "fill_interval": HOUR}
    config = http_proxy_config([upstream], routes=routes, http_filters=[{"local_ratelimit": limit}, "router"])
    proxy = await start_proxy(nursery, config)
    address = proxy.address("ingress")
    with trio.fail_after(10):
        free = [await fetch(address, "/free") for _ in range(4)]
        own = [await fetch(address, "/own") for _ in range(4)]
        default = [await fetch(address, "/") for _ in range(3)]
    assert [r.status for r in free] == [200] * 4
    assert [r.status for r in own] == [200, 200, 200, 429]
    assert [r.status for r in default] == [200, 200, 429]
    rejected = default[-1]
    assert rejected.header("x-meshcore-flags") == "RL"
    assert rejected.header("retry-after") == "3600"
    assert rejected.body == b"local rate limited\n"
    assert (own[-1].body, own[-1].header("x-meshcore-flags")) == (b"own limit\n", "RL")
    assert default[0].header("x-meshcore-flags") is None
    values = {
        (name, route): proxy.stats.value(f"local_ratelimit_{name}", listener="ingress", route=route)
        for name in ("allowed", "limited")
        for route in ("free", "own", "default")
    }
    assert values == {
        ("allowed", "free"): 0,
        ("allowed", "own"): 3,
        ("allowed", "default"): 2,
        ("limited", "free"): 0,
        ("limited", "own"): 1,
        ("limited", "default"): 1,
    }


# -- config ------------------------------------------------------------------------------------

PATH = "http_filters[0].local_ratelimit"
KEY_HELP = 'must be "client_address", "identity" or a mapping {header: NAME}'


@pytest.mark.parametrize(
    ("config", "problems"),
    [
        ({}, [f"{PATH}.max_tokens: is required", f"{PATH}.fill_interval: is required"]),
        ({"max_tokens": 0, "fill_interval": "1s"}, [f"{PATH}.max_tokens: must be >= 1, got 0"]),
        (
            {"max_tokens": 1, "tokens_per_fill": 0, "fill_interval": "1s"},
            [f"{PATH}.tokens_per_fill: must be >= 1, got 0"],
        ),
        (
            {"max_tokens": 1, "fill_interval": "0ms"},
            [f"{PATH}.fill_interval: must be longer than 0s, got 0s"],
        ),
        (
            {"max_tokens": 1, "fill_interval": "1s", "status": 200},
            [f"{PATH}.status: must be >= 400, got 200"],
        ),
        (
            by("clientaddress"),
            [f"{PATH}.descriptors[0].key: {KEY_HELP}, got 'clientaddress'; did you mean 'client_address'?"],
        ),
        (
            by({"heder": "x-user"}),
            [
                f'{PATH}.descriptors[0].key: must be "client_address", "identity" or a mapping {{header: NAME}}, got a mapping'
            ],
        ),
        (
            by({"header": "x user"}),
            [f"{PATH}.descriptors[0].key: the header name must be a non-empty token, got 'x user'"],
        ),
        (by("identity", max_keys=0), [f"{PATH}.descriptors[0].max_keys: must be >= 1, got 0"]),
    ],
)
def test_bad_configs_are_reported_with_their_field_path(config: dict[str, Any], problems: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        FilterHarness("local_ratelimit", config)
    assert [str(p) for p in info.value.problems] == problems
