"""Applying by resource: what a Snapshot does not change keeps running, connections and all.

Each test holds connections open across a change (an HTTP/1.1 keep-alive connection, an
HTTP/2 session) and then looks at them: still served, no ``connection: close``, no GOAWAY;
or, when the listener's own chain changed, drained.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from _h1client import Client
from _h2client import open_h2_client

import meshcore
from meshcore.config import Endpoint
from meshcore.testing import (
    ProxyFactory,
    RunningProxy,
    UpstreamFactory,
    http_proxy_config,
    open_proxies,
    tcp_proxy_config,
)

TIMEOUT = 15


def endpoints(*addresses: str) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(address=meshcore.Address.__meshcore_parse__(a)) for a in addresses)


def direct(name: str, path: str, body: str) -> dict[str, Any]:
    return {"name": name, "match": {"path": path}, "direct_response": {"status": 200, "body": body}}


def routes(version: str) -> list[dict[str, Any]]:
    return [
        direct("version", "/version", version),
        {"name": "up", "match": {"prefix": "/"}, "cluster": "backend"},
    ]


def with_routes(proxy: RunningProxy, version: str) -> meshcore.SnapshotDelta:
    """A delta that changes only the route table: /version answers ``version``."""
    config = http_proxy_config([], routes=routes(version))
    (table,) = meshcore.snapshot_from_data(config, proxy.registry).route_configs
    return meshcore.SnapshotDelta(version=version, route_configs=(table,))


# -- what is not changed is not touched --------------------------------------------------------


async def test_endpoint_route_and_cluster_changes_touch_no_connection(
    meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        first = await meshcore_upstream(name="first")
        second = await meshcore_upstream(name="second")
        proxy = await meshcore_proxy(http_proxy_config([first.endpoint], routes=routes("v1")))
        (chain,) = proxy.proxy.listeners["ingress"].chains
        async with await Client.connect(proxy.address()) as h1, open_h2_client(proxy.address()) as h2:
            assert (await h1.get("/version")).body == b"v1"
            assert (await h2.request("/version")).body == b"v1"

            changes = [
                meshcore.SnapshotDelta(version="e", endpoints={"backend": endpoints(second.endpoint)}),
                with_routes(proxy, "v2"),
                meshcore.SnapshotDelta(version="c", clusters=(meshcore.Cluster(name="other"),)),
            ]
            for change in changes:
                proxy.apply_delta(change)
                reply = await h1.get("/hello")
                assert "connection" not in reply.headers
                assert reply.headers["x-upstream"] == "second"
                response = await h2.request("/hello")
                assert response.get("x-upstream") == "second"
            assert (await h1.get("/version")).body == b"v2"
            assert (await h2.request("/version")).body == b"v2"
            assert h2.terminated is None  # no GOAWAY, ever
            assert not h2.closed.is_set()
        # The very same chain object served throughout: never rebuilt.
        assert proxy.proxy.listeners["ingress"].chains == [chain]


async def test_a_new_route_table_is_taken_by_the_next_request_of_every_open_connection(
    meshcore_proxy: ProxyFactory,
) -> None:
    with trio.fail_after(TIMEOUT):
        proxy = await meshcore_proxy(http_proxy_config([], routes=routes("v1")))
        async with open_h2_client(proxy.address()) as h2:
            clients = [await Client.connect(proxy.address()) for _ in range(3)]
            try:
                for version in ("v2", "v3", "v4"):
                    proxy.apply_delta(with_routes(proxy, version))
                    for client in clients:
                        assert (await client.get("/version")).body == version.encode()
                    assert (await h2.request("/version")).body == version.encode()
            finally:
                for client in clients:
                    await client.stream.aclose()
            assert h2.terminated is None


async def test_endpoints_that_stay_keep_their_pool(
    meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        kept = await meshcore_upstream(name="kept")
        added = await meshcore_upstream(name="added")
        proxy = await meshcore_proxy(http_proxy_config([kept.endpoint]))
        client = proxy.client()
        await client.get("/")
        cluster = proxy.proxy.clusters.get("backend")
        assert cluster is not None
        (host,) = cluster.hosts
        picker = cluster.picker

        proxy.apply_delta(
            meshcore.SnapshotDelta(
                version="2", endpoints={"backend": endpoints(kept.endpoint, added.endpoint)}
            )
        )
        assert proxy.proxy.clusters.get("backend") is cluster
        assert cluster.hosts[0] is host  # the same pool, its idle connection in it
        assert cluster.picker is picker  # the same round robin, carrying on
        seen = {(await client.get("/")).header("x-upstream") for _ in range(4)}
        assert seen == {"kept", "added"}
        # One connection to "kept" all along (reused), one new one to "added".
        assert proxy.stats.value("cluster_upstream_cx_total", cluster="backend") == 2


async def test_only_the_listener_whose_chain_changed_drains(meshcore_proxy: ProxyFactory) -> None:
    config = http_proxy_config([], routes=routes("v1"))
    (listener,) = config["listeners"]
    config["listeners"] = [listener, {**listener, "name": "other"}]
    with trio.fail_after(TIMEOUT):
        proxy = await meshcore_proxy(config)
        async with (
            await Client.connect(proxy.address("ingress")) as changed,
            await Client.connect(proxy.address("other")) as untouched,
            open_h2_client(proxy.address("ingress")) as h2_changed,
            open_h2_client(proxy.address("other")) as h2_untouched,
        ):
            for client in (changed, untouched):
                assert (await client.get("/version")).status == 200
            for h2 in (h2_changed, h2_untouched):
                assert (await h2.request("/version")).status == 200

            hcm = listener["filter_chains"][0]["filters"][0]["http_connection_manager"]
            new_chain = {"filters": [{"http_connection_manager": {**hcm, "idle_timeout": "299s"}}]}
            config["listeners"] = [{**listener, "filter_chains": [new_chain]}, config["listeners"][1]]
            proxy.apply(config)

            assert await changed.closed_by_server()  # idle: closed at once
            await h2_changed.closed.wait()
            assert h2_changed.terminated is not None  # told to go away first
            assert (await untouched.get("/version")).status == 200
            assert (await h2_untouched.request("/version")).status == 200
            assert h2_untouched.terminated is None


async def test_a_changed_chain_is_rebuilt_alone_among_the_chains_of_its_listener(
    meshcore_proxy: ProxyFactory,
) -> None:
    config = tcp_proxy_config(["127.0.0.1:1"])
    (chain,) = config["listeners"][0]["filter_chains"]
    chains = [
        {**chain, "name": "local", "match": {"source_prefixes": ["127.0.0.0/8"]}},
        {**chain, "name": "private", "match": {"source_prefixes": ["10.0.0.0/8"]}},
    ]
    config["listeners"][0]["filter_chains"] = chains
    with trio.fail_after(TIMEOUT):
        proxy = await meshcore_proxy(config)
        local, private = proxy.proxy.listeners["ingress"].chains
        chains[1] = {**chains[1], "match": {"source_prefixes": ["10.1.0.0/16"]}}
        proxy.apply(config)
        kept, rebuilt = proxy.proxy.listeners["ingress"].chains
    assert kept is local
    assert rebuilt is not private
    assert rebuilt.config.match.source_prefixes == ("10.1.0.0/16",)


# -- filter state across Snapshots ---------------------------------------------------------------


def limited(max_tokens: int, **manager: Any) -> dict[str, Any]:
    ratelimit = {"local_ratelimit": {"max_tokens": max_tokens, "fill_interval": "1h"}}
    return http_proxy_config([], routes=routes("v1"), http_filters=[ratelimit, "router"], manager=manager)


async def statuses(proxy: RunningProxy, count: int) -> list[int]:
    return [(await proxy.client().get("/version")).status for _ in range(count)]


async def test_a_rate_limit_bucket_is_not_refilled_by_an_unrelated_change(
    meshcore_proxy: ProxyFactory,
) -> None:
    with trio.fail_after(TIMEOUT):
        proxy = await meshcore_proxy(limited(3))
        assert await statuses(proxy, 4) == [200, 200, 200, 429]
        proxy.apply_delta(meshcore.SnapshotDelta(version="2", clusters=(meshcore.Cluster(name="unrelated"),)))
        proxy.apply_delta(with_routes(proxy, "v2"))
        assert await statuses(proxy, 1) == [429]


async def test_a_rebuilt_chain_takes_over_the_bucket(meshcore_proxy: ProxyFactory) -> None:
    with trio.fail_after(TIMEOUT):
        proxy = await meshcore_proxy(limited(3))
        assert await statuses(proxy, 2) == [200, 200]
        proxy.apply(limited(3, idle_timeout="299s"))  # the chain changed, not the limit
        assert await statuses(proxy, 2) == [200, 429]


@pytest.mark.parametrize(
    ("new_max", "expected"),
    [
        (1, [200, 429]),  # lowered below the tokens left: 1 left
        (5, [200, 200, 200, 200, 429]),  # raised by 2: 2 left + 2
    ],
)
async def test_a_changed_limit_applies_from_the_next_request(
    meshcore_proxy: ProxyFactory, new_max: int, expected: list[int]
) -> None:
    with trio.fail_after(TIMEOUT):
        proxy = await meshcore_proxy(limited(3))
        assert await statuses(proxy, 1) == [200]
        proxy.apply(limited(new_max))
        assert await statuses(proxy, len(expected)) == expected


@pytest.mark.parametrize("way", ["apply", "apply_async"])
async def test_a_route_s_own_bucket_survives_a_change_to_another_route(
    meshcore_proxy: ProxyFactory, way: str
) -> None:
    """Either way: apply_async makes the runtimes of routes without filters ahead, not this one."""
    own = {"local_ratelimit": {"max_tokens": 1, "fill_interval": "1h"}}
    guarded = {**direct("guarded", "/guarded", "ok"), "filters": own}
    config = limited(100)
    config["route_configs"][0]["virtual_hosts"][0]["routes"] = [guarded, *routes("v1")]
    with trio.fail_after(TIMEOUT):
        proxy = await meshcore_proxy(config)
        assert [(await proxy.client().get("/guarded")).status for _ in range(2)] == [200, 429]
        config["route_configs"][0]["virtual_hosts"][0]["routes"] = [guarded, *routes("v2")]
        if way == "apply":
            proxy.apply(config)
        else:
            await proxy.apply_async(config)
        assert (await proxy.client().get("/version")).body == b"v2"
        assert (await proxy.client().get("/guarded")).status == 429
        # Route stats count on across the change, for the route with filters and those without.
        assert proxy.stats.value("route_rq_total", route="guarded", virtual_host="all") == 3
        assert proxy.stats.value("route_rq_total", route="version", virtual_host="all") == 1


async def hold_connections(proxy: RunningProxy, count: int, nursery: trio.Nursery) -> list[trio.SocketStream]:
    """``count`` connections passed through to the upstream (a request answered on each)."""
    streams = []
    for _ in range(count):
        stream = await trio.open_tcp_stream(*proxy.address())
        await stream.send_all(b"GET /echo HTTP/1.1\r\nhost: x\r\n\r\n")
        assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 200")
        streams.append(stream)
        nursery.start_soon(stream.receive_some, 65536)  # no-op reader: the test ends by cancelling
    return streams


async def refused(proxy: RunningProxy) -> bool:
    """Whether a new connection is closed by the proxy at once (past the connection limit)."""
    async with await trio.open_tcp_stream(*proxy.address()) as stream:
        await stream.send_all(b"GET /echo HTTP/1.1\r\nhost: x\r\n\r\n")
        try:
            return await stream.receive_some(65536) == b""
        except trio.BrokenResourceError:
            return True


def counted(upstream: str, max_connections: int) -> dict[str, Any]:
    config = tcp_proxy_config([upstream])
    (chain,) = config["listeners"][0]["filter_chains"]
    limit = {"connection_limit": {"max_connections": max_connections}}
    chain["filters"] = [limit, *chain["filters"]]
    return config


async def test_a_connection_count_survives_an_unrelated_change_and_a_changed_limit_counts_on(
    meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        upstream = await meshcore_upstream(name="u")
        proxy = await meshcore_proxy(counted(upstream.endpoint, 2))
        async with trio.open_nursery() as nursery:
            streams = await hold_connections(proxy, 2, nursery)
            assert await refused(proxy)

            proxy.apply_delta(
                meshcore.SnapshotDelta(version="2", clusters=(meshcore.Cluster(name="unrelated"),))
            )
            assert await refused(proxy)  # not reset by an unrelated change

            proxy.apply(counted(upstream.endpoint, 3))  # raised: one more, counting the two open
            streams += await hold_connections(proxy, 1, nursery)
            assert await refused(proxy)
            assert proxy.stats.value("connection_limit_active", listener="ingress") == 3
            nursery.cancel_scope.cancel()
        for stream in streams:
            await stream.aclose()


# -- nothing that fails is half applied --------------------------------------------------------


async def test_a_failing_carry_over_rejects_the_snapshot_naming_the_plugin(
    meshcore_upstream: UpstreamFactory,
) -> None:
    class Sticky:
        def __init__(self, _config: None, _context: meshcore.FilterContext) -> None:
            pass

        def carry_over(self, previous: object) -> None:
            msg = f"cannot adopt {type(previous).__name__}"
            raise RuntimeError(msg)

        async def __call__(
            self, request: meshcore.Request, call_next: meshcore.HttpHandler
        ) -> meshcore.Response:
            return await call_next(request)

    class StickyPlugin:
        @meshcore.hookimpl
        def meshcore_http_filters(self) -> list[meshcore.HttpFilterType]:
            return [meshcore.HttpFilterType(name="sticky", factory=Sticky)]

    registry = meshcore.build_registry(autoload=False, plugins=[("sticky-plugin", StickyPlugin())])
    upstream = await meshcore_upstream(name="u")
    with trio.fail_after(TIMEOUT):
        async with open_proxies(registry) as proxies:
            proxy = await proxies(http_proxy_config([upstream.endpoint], http_filters=["sticky", "router"]))
            changed = http_proxy_config(
                [upstream.endpoint], http_filters=["sticky", "router"], manager={"idle_timeout": "1s"}
            )
            before = list(proxy.proxy.listeners["ingress"].chains)
            with pytest.raises(meshcore.ConfigError) as caught:
                proxy.apply(changed)
            (problem,) = caught.value.problems
            assert problem.path == (
                "listeners[0].filter_chains[0].filters[0].http_connection_manager.http_filters[0].sticky"
            )
            assert problem.message.startswith("carry_over of plugin 'sticky-plugin' (")
            assert problem.message.endswith("raised RuntimeError: cannot adopt Sticky")
            assert caught.value.stage == "apply"
            assert (await proxy.client().get("/")).header("x-upstream") == "u"
            assert proxy.proxy.listeners["ingress"].chains == before  # the same chain objects


async def test_an_endpoint_given_twice_keeps_one_pool_each_and_closes_both_when_it_goes(
    meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory
) -> None:
    """An address given twice: two hosts, each kept in its place.

    Found by test_apply_property: the second host of a repeated address took the first one's
    place when the endpoints changed again, and the first one's socket was never closed.
    """
    with trio.fail_after(TIMEOUT):
        upstream = await meshcore_upstream(name="u")
        proxy = await meshcore_proxy(http_proxy_config([upstream.endpoint]))
        twice = endpoints(upstream.endpoint, upstream.endpoint)
        proxy.apply_delta(meshcore.SnapshotDelta(version="2", endpoints={"backend": twice}))
        client = proxy.client()
        for _ in range(2):
            assert (await client.get("/")).status == 200
        cluster = proxy.proxy.clusters.get("backend")
        assert cluster is not None
        hosts = list(cluster.hosts)
        assert len(hosts) == 2
        assert hosts[0] is not hosts[1]
        opened = sum(h.open_connections for h in hosts)
        assert opened >= 1

        proxy.apply_delta(
            meshcore.SnapshotDelta(version="3", endpoints={"backend": endpoints(upstream.endpoint)})
        )
        (kept,) = cluster.hosts
        assert kept is hosts[0]
        gone = hosts[1]
        assert (gone.healthy, gone.open_connections) == (False, 0)  # its idle connection closed
        proxy.apply_delta(meshcore.SnapshotDelta(version="4", endpoints={"backend": ()}))
        assert (kept.healthy, kept.open_connections) == (False, 0)


async def test_a_stream_s_place_is_free_as_soon_as_its_last_frame_went_out(
    meshcore_proxy: ProxyFactory,
) -> None:
    """A client that keeps within MAX_CONCURRENT_STREAMS is never refused.

    Found by the full-scale soak test: a stream counted against the limit until its task
    finished, after its END_STREAM had gone out; a client opening its next stream at once
    got REFUSED_STREAM. With a limit of 1, back-to-back requests hit it about 1 in 20.
    """
    direct = {"name": "d", "match": {"prefix": "/"}, "direct_response": {"status": 200, "body": "x"}}
    config = http_proxy_config([], routes=[direct], manager={"http2": {"max_concurrent_streams": 1}})
    with trio.fail_after(TIMEOUT):
        proxy = await meshcore_proxy(config)
        async with open_h2_client(proxy.address()) as h2:
            statuses = [(await h2.request("/")).status for _ in range(300)]
    assert statuses == [200] * 300
