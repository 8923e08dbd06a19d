"""Load balancers as plugins: random, ring hash and Maglev with hash policies, peak EWMA, slow start.

The algorithms' properties are checked on the pickers directly, at the sizes the claims
are about (10,000 keys, 10,000 draws); the end-to-end proofs go through a real proxy to
real upstreams at smaller counts: a user sticks to an endpoint by its header, peak EWMA
moves load away from an endpoint made ten times slower, a 90/10 canary split holds.
"""

from __future__ import annotations

import collections
import functools
import random
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from _faulty import FaultyUpstream

from meshcore.config import Duration, RouteConfiguration, snapshot_from_data
from meshcore.filters.ewma_lb import PeakEwma, PeakEwmaConfig
from meshcore.filters.hash_lb import HashPolicy, Maglev, MaglevConfig, RingHash, RingHashConfig, request_hash
from meshcore.filters.load_balancers import (
    LeastRequest,
    LeastRequestConfig,
    Random,
    RoundRobin,
    RoundRobinConfig,
    SlowStart,
)
from meshcore.http.routing import RouteTable
from meshcore.registry import build_registry
from meshcore.testing.client import fetch
from meshcore.testing.filters import make_request
from meshcore.testing.harness import http_proxy_config, start_proxy, tcp_proxy_config

KEYS = 10_000


@attrs.define(eq=False)
class FakeHost:
    label: str
    weight: int = 1
    active_requests: int = 0
    ready_since: float = float("-inf")


def _hosts(n: int) -> list[FakeHost]:
    return [FakeHost(f"10.0.{i // 250}.{i % 250}:8080") for i in range(n)]


def _user(i: int) -> Any:
    return make_request(headers={"x-user": f"user-{i}"})


@functools.cache
def _users() -> list[Any]:
    """KEYS requests of distinct users (made once: the property tests share them)."""
    return [_user(i) for i in range(KEYS)]


BY_USER = (HashPolicy(header="x-user"),)


# -- consistent hashing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "picker", [RingHash(RingHashConfig(hash_policy=BY_USER)), Maglev(MaglevConfig(hash_policy=BY_USER))]
)
def test_removing_one_of_ten_endpoints_moves_at_most_1_3_over_n_of_the_keys(picker: Any) -> None:
    hosts = _hosts(10)
    requests = _users()
    before = [picker.pick(hosts, r).label for r in requests]
    gone = hosts[3]
    after = [picker.pick([h for h in hosts if h is not gone], r).label for r in requests]
    moved = sum(b != a for b, a in zip(before, after, strict=True))
    assert moved <= 1.3 / 10 * KEYS, moved
    # The keys of the endpoint that left had to move; few others did.
    owned = before.count(gone.label)
    assert owned <= moved
    shares = collections.Counter(before)
    assert len(shares) == 10
    assert all(0.7 * KEYS / 10 < n < 1.3 * KEYS / 10 for n in shares.values()), shares
    # Back again: every key returns to where it was.
    assert [picker.pick(hosts, r).label for r in requests] == before


def test_ring_hash_moves_only_the_keys_of_the_endpoint_that_left() -> None:
    picker = RingHash(RingHashConfig(hash_policy=BY_USER))
    hosts = _hosts(10)
    requests = _users()
    before = [picker.pick(hosts, r).label for r in requests]
    after = [picker.pick(hosts[:3] + hosts[4:], r).label for r in requests]
    moved = {i for i, (b, a) in enumerate(zip(before, after, strict=True)) if b != a}
    assert moved == {i for i, b in enumerate(before) if b == hosts[3].label}


@pytest.mark.parametrize(
    "picker", [RingHash(RingHashConfig(hash_policy=BY_USER)), Maglev(MaglevConfig(hash_policy=BY_USER))]
)
def test_weights_give_shares_of_the_keys(picker: Any) -> None:
    hosts = [FakeHost("a:1", weight=1), FakeHost("b:1", weight=3)]
    shares = collections.Counter(picker.pick(hosts, r).label for r in _users())
    assert shares["b:1"] / KEYS == pytest.approx(0.75, abs=0.05)


def test_maglev_table_size_must_be_prime() -> None:
    with pytest.raises(ValueError, match="table_size must be a prime number"):
        MaglevConfig(table_size=65536)


def test_hash_policies_read_header_cookie_source_and_query() -> None:
    request = make_request(
        path="/cart?session=abc&x=1",
        headers=[("x-user", "alice"), ("cookie", "theme=dark; sid=s-42")],
    )
    assert HashPolicy(header="x-user").key(request) == "alice"
    assert HashPolicy(cookie="sid").key(request) == "s-42"
    assert HashPolicy(query_parameter="session").key(request) == "abc"
    assert HashPolicy(source_ip=True).key(request) == request.info.downstream_address.rpartition(":")[0]
    assert HashPolicy(header="x-none").key(request) is None
    assert HashPolicy(cookie="none").key(request) is None
    # The first policy with a key and terminal ends the list; others combine.
    user, sid = HashPolicy(header="x-user", terminal=True), HashPolicy(cookie="sid")
    assert request_hash((user, sid), request) == request_hash((user,), request)
    assert request_hash((HashPolicy(header="x-user"), sid), request) != request_hash((user,), request)
    assert request_hash((HashPolicy(header="x-none", terminal=True), sid), request) == request_hash(
        (sid,), request
    )
    with pytest.raises(
        ValueError, match="exactly one of header, cookie, source_ip, query_parameter; got header, cookie"
    ):
        HashPolicy(header="a", cookie="b")


def test_a_request_without_a_key_goes_to_a_random_endpoint() -> None:
    picker = RingHash(RingHashConfig(hash_policy=BY_USER))
    hosts = _hosts(4)
    picks = collections.Counter(picker.pick(hosts, make_request()).label for _ in range(2000))
    assert len(picks) == 4
    assert all(350 < n < 650 for n in picks.values())


# -- random, slow start, peak EWMA -----------------------------------------------------------------


def test_random_spreads_evenly_and_by_weight() -> None:
    hosts = _hosts(4)
    picker = Random()
    picks = collections.Counter(picker.pick(hosts).label for _ in range(KEYS))
    assert all(abs(n / KEYS - 0.25) < 0.03 for n in picks.values())
    weighted = [FakeHost("a:1", weight=9), FakeHost("b:1", weight=1)]
    share = sum(picker.pick(weighted).label == "a:1" for _ in range(KEYS)) / KEYS
    assert share == pytest.approx(0.9, abs=0.02)


async def test_slow_start_grows_a_new_endpoints_share_over_the_window(
    autojump_clock: trio.testing.MockClock,  # noqa: ARG001 - virtual time
) -> None:
    start = trio.current_time()
    old = [FakeHost(f"old{i}:1") for i in range(3)]
    new = FakeHost("new:1", ready_since=start)
    hosts = [*old, new]
    slow = SlowStart(window=Duration(10), aggression=1, min_weight_percent=10)
    least = LeastRequest(LeastRequestConfig(slow_start=slow))
    least._random = random.Random(7)  # noqa: S311 - a fixed draw: the shares below are exact for it
    for picker in (RoundRobin(RoundRobinConfig(slow_start=slow)), least):
        shares = []
        for at in (0.5, 5.0, 10.0):
            await trio.sleep_until(start + at)
            picks = [picker.pick(hosts).label for _ in range(1000)]
            shares.append(picks.count("new:1") / 1000)
        # At 5% of the window: its 10% floor (of 3.1 weights); halfway: 0.5/3.5; then 1/4.
        assert shares[0] == pytest.approx(0.1 / 3.1, abs=0.02)
        assert shares[1] == pytest.approx(0.5 / 3.5, abs=0.03)
        assert shares[2] == pytest.approx(0.25, abs=0.03)
        start = trio.current_time()
        new.ready_since = start


async def test_peak_ewma_prefers_the_fast_endpoint_and_notices_a_slowdown_at_once(
    autojump_clock: trio.testing.MockClock,  # noqa: ARG001 - virtual time
) -> None:
    fast, slow = FakeHost("fast:1"), FakeHost("slow:1")
    picker = PeakEwma(PeakEwmaConfig(decay=Duration(10)))
    for _ in range(5):
        picker.observe(fast, 0.010)
        picker.observe(slow, 0.010)
    picker.observe(slow, 0.100)  # one slow answer: the peak counts at once
    picks = collections.Counter(picker.pick([fast, slow]).label for _ in range(100))
    assert picks == {"fast:1": 100}
    # Load counts too: ten requests in flight on the fast one make the slow one cheaper.
    fast.active_requests = 10
    assert picker.pick([fast, slow]).label == "slow:1"
    fast.active_requests = 0
    # Unused, the slow one's estimate decays: after a while it is tried again.
    await trio.sleep(30)
    picker.observe(fast, 0.010)
    assert picker.cost(slow, trio.current_time()) < picker.cost(fast, trio.current_time())


# -- through a proxy -----------------------------------------------------------------------------


async def _upstreams(nursery: trio.Nursery, count: int, default: str = "200") -> list[FaultyUpstream]:
    out = []
    for i in range(count):
        upstream = FaultyUpstream(name=f"u{i}", default=default)
        await nursery.start(upstream.serve)
        out.append(upstream)
    return out


def _users_over(picker: Any, endpoints: list[str], count: int) -> dict[str, str]:
    """``count`` or more users, enough that ``picker`` puts some on each endpoint; each one's endpoint.

    The upstreams' ports are new in every run, and so is where a hash puts a user: with 20
    users, one of three endpoints went without any about once in a thousand runs.
    """
    hosts = [FakeHost(endpoint) for endpoint in endpoints]
    owners: dict[str, str] = {}
    while len(owners) < count or len(set(owners.values())) < len(endpoints):
        user = f"u{len(owners)}"
        owners[user] = picker.pick(hosts, make_request(headers={"x-user": user})).label
    return owners


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
async def test_a_user_sticks_to_one_endpoint_by_its_header(nursery: trio.Nursery, policy: str) -> None:
    with trio.fail_after(15):
        upstreams = await _upstreams(nursery, 3)
        lb = {policy: {"hash_policy": [{"header": "x-user"}]}}
        proxy = await start_proxy(
            nursery, http_proxy_config([u.endpoint for u in upstreams], cluster={"lb_policy": lb})
        )
        picker = (
            RingHash(RingHashConfig(hash_policy=BY_USER))
            if policy == "ring_hash"
            else Maglev(MaglevConfig(hash_policy=BY_USER))
        )
        owners = _users_over(picker, [u.endpoint for u in upstreams], 20)
        name = {u.endpoint: u.name for u in upstreams}
        served: dict[str, set[str]] = collections.defaultdict(set)
        for round_ in range(3):
            for user in owners:
                response = await fetch(proxy.address("ingress"), f"/{round_}", headers={"x-user": user})
                assert response.status == 200, (user, response.status)
                served[user].add(response.header("x-upstream") or "")
    # Each user always to one endpoint, the one the policy's hash gives it: all three serve.
    assert served == {user: {name[endpoint]} for user, endpoint in owners.items()}


async def _from(source: str, address: tuple[str, int]) -> trio.SocketStream:
    """A TCP connection to ``address`` from ``source`` (any 127.0.0.0/8 address is loopback)."""
    sock = trio.socket.socket()
    try:
        await sock.bind((source, 0))
        await sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def _read_all(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


async def _name_teller(nursery: trio.Nursery, name: str) -> str:
    """A TCP server that says its name to each connection and closes it; its "host:port"."""

    async def tell(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(name.encode())

    listeners = await nursery.start(functools.partial(trio.serve_tcp, tell, 0, host="127.0.0.1"))
    host, port = listeners[0].socket.getsockname()[:2]
    return f"{host}:{port}"


SOURCES = [f"127.0.0.{i}" for i in range(2, 14)]


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
async def test_clients_stick_to_an_endpoint_by_their_source_address_over_http_and_tcp(
    nursery: trio.Nursery, policy: str
) -> None:
    """The source_ip hash policy, from real client addresses (12 of 127.0.0.0/8).

    Over HTTP the picker reads it from the request's connection, over TCP from the
    connection itself: the proxy gives either to the load balancer.
    """
    lb = {"lb_policy": {policy: {"hash_policy": [{"source_ip": True}]}}}
    with trio.fail_after(20):
        upstreams = await _upstreams(nursery, 3)
        http = await start_proxy(nursery, http_proxy_config([u.endpoint for u in upstreams], cluster=lb))
        tellers = [await _name_teller(nursery, f"t{i}") for i in range(3)]
        tcp_config = tcp_proxy_config(tellers)
        tcp_config["clusters"][0].update(lb)
        tcp = await start_proxy(nursery, tcp_config)
        by_http: dict[str, set[str]] = collections.defaultdict(set)
        by_tcp: dict[str, set[str]] = collections.defaultdict(set)
        for source in SOURCES:
            for i in range(3):
                async with await _from(source, http.address("ingress")) as stream:
                    request = f"GET /{i} HTTP/1.1\r\nhost: shop\r\nconnection: close\r\n\r\n"
                    await stream.send_all(request.encode())
                    answer = await _read_all(stream)
                assert answer.startswith(b"HTTP/1.1 200 ")
                by_http[source].add(answer.rpartition(b"\r\n\r\n")[2].decode().strip())
                async with await _from(source, tcp.address("ingress")) as stream:
                    by_tcp[source].add((await _read_all(stream)).decode())
    for served in (by_http, by_tcp):
        assert all(len(names) == 1 for names in served.values()), served
        # 12 addresses over 3 endpoints: all on one would be a 1 in 177,000 draw of the ports.
        assert len(set().union(*served.values())) >= 2, served
    # The upstreams saw the proxy, not the clients: the spread is the hash of their addresses.
    assert sum(u.count for u in upstreams) == len(SOURCES) * 3


async def test_peak_ewma_moves_load_away_from_an_endpoint_made_ten_times_slower(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(30):
        # 40 ms, then 400 ms: client, proxy and upstreams share one event loop on a shared
        # machine, and a stall of a few tens of ms is a peak of the fast endpoint's latency;
        # at 8 ms against 80 ms such a stall made the fast one look slower than the slow one
        # (a slow share of 0.18 in one run of five under load). A short decay, so that a
        # stall does not stay the peak for long either.
        fast, slow = await _upstreams(nursery, 2, default="delay:40")
        lb = {"peak_ewma": {"decay": "1s"}}
        config = http_proxy_config([fast.endpoint, slow.endpoint], cluster={"lb_policy": lb})
        proxy = await start_proxy(nursery, config)

        async def load(requests: int) -> None:
            async def client() -> None:
                for i in range(requests):
                    assert (await fetch(proxy.address("ingress"), f"/{i}")).status == 200

            async with trio.open_nursery() as clients:
                for _ in range(4):
                    clients.start_soon(client)

        await load(25)
        first = slow.count / (fast.count + slow.count)
        slow.default = "delay:400"  # ten times slower from now on
        before = (fast.count, slow.count)
        await load(25)
        shifted = (slow.count - before[1]) / (fast.count + slow.count - sum(before))
    print(f"peak EWMA: slow endpoint's share {first:.2f} before, {shifted:.2f} once 10x slower")  # noqa: T201 - the measured figure, with -s
    assert 0.3 < first < 0.7  # equal endpoints share the load
    assert shifted < 0.15, shifted  # the slow one gets a small fraction


def test_a_90_10_split_lands_within_one_point_over_10000_requests() -> None:
    config = snapshot_from_data(
        {
            "route_configs": [
                {
                    "name": "main",
                    "virtual_hosts": [
                        {
                            "name": "all",
                            "domains": ["*"],
                            "routes": [
                                {
                                    "match": {"prefix": "/"},
                                    "weighted_clusters": [
                                        {"name": "stable", "weight": 90},
                                        {"name": "canary", "weight": 10},
                                    ],
                                }
                            ],
                        }
                    ],
                }
            ],
            "clusters": [{"name": "stable"}, {"name": "canary"}],
        },
        build_registry(autoload=False),
    ).route_configs[0]
    assert isinstance(config, RouteConfiguration)
    for seed in range(5):
        rng = random.Random(seed)  # noqa: S311 - reproducible draws
        route = RouteTable.compile(config, rng=rng).virtual_hosts[0].routes[0]
        canary = sum(route.pick_cluster() == "canary" for _ in range(KEYS)) / KEYS
        assert abs(canary - 0.10) <= 0.01, (seed, canary)


async def test_a_90_10_split_through_a_proxy(nursery: trio.Nursery) -> None:
    with trio.fail_after(30):
        stable, canary = await _upstreams(nursery, 2)
        config = http_proxy_config(
            [stable.endpoint],
            routes=[
                {
                    "name": "split",
                    "match": {"prefix": "/"},
                    "weighted_clusters": [
                        {"name": "backend", "weight": 90},
                        {"name": "canary", "weight": 10},
                    ],
                }
            ],
        )
        config["clusters"].append({"name": "canary", "endpoints": [canary.endpoint]})
        proxy = await start_proxy(nursery, config)
        clients, each = 10, 40
        total = clients * each

        async def client() -> None:
            for i in range(each):
                assert (await fetch(proxy.address("ingress"), f"/{i}")).status == 200

        async with trio.open_nursery() as callers:
            for _ in range(clients):
                callers.start_soon(client)
    # Binomial(400, 0.1): 1.5 points of standard deviation. Four of them (6 points) fail one
    # run in 15,000 by chance; three (4.5) failed one in 370, too often for CI. The
    # within-one-point claim is the 10,000-draw test's above, on the router's own route table.
    assert abs(canary.count / total - 0.10) <= 0.06, canary.count
    assert stable.count + canary.count == total
