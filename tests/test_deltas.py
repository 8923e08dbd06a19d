"""Deltas: composed onto the live Snapshot, validated whole, applied or rejected with every problem.

The first half is pure data (compose, structure, check); the second applies deltas to a
real proxy on loopback and follows the traffic.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio

import meshcore
from meshcore.config import Endpoint, check_snapshot
from meshcore.runtime.proxy import Proxy
from meshcore.testing import ProxyFactory, UpstreamFactory, http_proxy_config, open_proxies, tcp_proxy_config

REGISTRY = meshcore.build_registry(autoload=False)


def snapshot(config: dict[str, Any]) -> meshcore.Snapshot:
    return meshcore.snapshot_from_data(config, REGISTRY)


def base() -> meshcore.Snapshot:
    return snapshot(http_proxy_config(["127.0.0.1:1001"]))


def endpoints(*addresses: str) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(address=meshcore.Address.__meshcore_parse__(a)) for a in addresses)


def cluster(name: str, *addresses: str) -> meshcore.Cluster:
    return meshcore.Cluster(name=name, endpoints=endpoints(*addresses))


# -- composing ---------------------------------------------------------------------------------


def test_a_delta_replaces_by_name_appends_new_ones_in_order_and_removes() -> None:
    live = attrs.evolve(base(), clusters=(cluster("a"), cluster("backend"), cluster("c")))
    delta = meshcore.SnapshotDelta(
        version="v2",
        clusters=(cluster("new-1"), cluster("backend", "127.0.0.1:2002"), cluster("new-2")),
        removed_clusters=("a", "never-there"),
    )
    composed = delta.compose(live)
    assert composed.version == "v2"
    assert [c.name for c in composed.clusters] == ["backend", "c", "new-1", "new-2"]
    assert composed.cluster("backend") == cluster("backend", "127.0.0.1:2002")
    # What the delta does not name is the very same object: nothing to rebuild.
    assert composed.listeners is live.listeners
    assert composed.route_configs is live.route_configs
    assert composed.cluster("c") is live.cluster("c")


def test_endpoints_replace_a_cluster_set_after_the_delta_own_clusters() -> None:
    delta = meshcore.SnapshotDelta(
        version="v2",
        clusters=(cluster("extra", "127.0.0.1:3000"),),
        endpoints={"backend": endpoints("127.0.0.1:2001", "127.0.0.1:2002"), "extra": ()},
    )
    composed = delta.compose(base())
    backend = composed.cluster("backend")
    assert backend is not None
    assert [str(e.address) for e in backend.endpoints] == ["127.0.0.1:2001", "127.0.0.1:2002"]
    assert backend.lb_policy == base().clusters[0].lb_policy
    extra = composed.cluster("extra")
    assert extra is not None
    assert extra.endpoints == ()


def test_listeners_and_route_tables_compose_the_same_way() -> None:
    live = base()
    (listener,) = live.listeners
    (routes,) = live.route_configs
    moved = attrs.evolve(listener, name="second")
    delta = meshcore.SnapshotDelta(
        version="v3",
        listeners=(moved,),
        removed_listeners=("ingress",),
        route_configs=(attrs.evolve(routes, virtual_hosts=()),),
    )
    composed = delta.compose(live)
    assert [li.name for li in composed.listeners] == ["second"]
    assert composed.route_configs == (attrs.evolve(routes, virtual_hosts=()),)


def test_a_delta_inconsistent_in_itself_names_every_problem() -> None:
    delta = meshcore.SnapshotDelta(
        version="v2",
        clusters=(cluster("backend"),),
        removed_clusters=("backend",),
        endpoints={"ghost": endpoints("127.0.0.1:1")},
    )
    with pytest.raises(meshcore.ConfigError) as caught:
        delta.compose(base())
    assert [str(p) for p in caught.value.problems] == [
        "clusters[0]: 'backend' is both given and removed",
        "endpoints.ghost: no cluster 'ghost' in the Snapshot or the delta",
    ]


def test_a_delta_needs_a_version() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        meshcore.SnapshotDelta(version="")


def test_a_delta_document_is_structured_with_field_paths() -> None:
    data = {
        "version": "7",
        "endpoints": {"backend": ["127.0.0.1:2001", {"address": "127.0.0.1:2002", "weight": 3}]},
        "removed_route_configs": ["old"],
        "clusters": [{"name": "extra", "endpoints": ["127.0.0.1:3000"], "lb_policy": "least_request"}],
    }
    delta = meshcore.delta_from_data(data, REGISTRY)
    assert delta.version == "7"
    assert [e.weight for e in delta.endpoints["backend"]] == [1, 3]
    assert delta.removed_route_configs == ("old",)
    assert delta.clusters[0].lb_policy.name == "least_request"

    bad = {
        "version": "8",
        "endpoints": {"backend": ["nowhere"]},
        "clusters": [{"name": "x", "lb_policy": "round_robbin"}],
        "listners": [],
    }
    with pytest.raises(meshcore.ConfigError) as caught:
        meshcore.delta_from_data(bad, REGISTRY, file="delta-8.json")
    assert [str(p) for p in caught.value.problems] == [
        "delta-8.json: listners: unknown field; did you mean 'listeners'?",
        (
            "delta-8.json: clusters[0].lb_policy: unknown load-balancing policy 'round_robbin'; "
            "did you mean 'round_robin'? (known: least_request, maglev, peak_ewma, random, ring_hash, round_robin)"
        ),
        "delta-8.json: endpoints.backend[0].address: must be an address \"host:port\", got 'nowhere'",
    ]


# -- the composed Snapshot, checked whole ------------------------------------------------------


def test_the_result_is_checked_for_references_it_no_longer_satisfies() -> None:
    live = snapshot(tcp_proxy_config(["127.0.0.1:1001"]))
    composed = meshcore.SnapshotDelta(version="v2", removed_clusters=("backend",)).compose(live)
    assert [str(p) for p in check_snapshot(composed, REGISTRY)] == [
        (
            "listeners[0].filter_chains[0].filters[0].tcp_proxy.cluster: unknown cluster 'backend' "
            "(defined: none defined)"
        )
    ]
    http = meshcore.SnapshotDelta(version="v2", removed_route_configs=("main",)).compose(base())
    assert [str(p) for p in check_snapshot(http, REGISTRY)] == [
        (
            "listeners[0].filter_chains[0].filters[0].http_connection_manager.route_config: "
            "unknown route config 'main' (defined: none defined)"
        )
    ]


def test_objects_built_in_python_are_checked_as_the_structurer_checks_documents() -> None:
    (listener,) = base().listeners
    (chain,) = listener.filter_chains
    hcm = chain.filters[0]
    router_first = attrs.evolve(
        hcm.config,
        http_filters=(meshcore.HttpFilterRef(name="router"), meshcore.HttpFilterRef(name="fault")),
    )
    chains = (
        attrs.evolve(chain, filters=(meshcore.NetworkFilterRef(name="no_such_filter"), hcm)),
        attrs.evolve(chain, filters=(attrs.evolve(hcm, config=router_first),)),
        attrs.evolve(chain, filters=(meshcore.NetworkFilterRef(name="tcp_proxy", config="backend"),)),
    )
    broken = attrs.evolve(base(), listeners=(attrs.evolve(listener, filter_chains=chains),))
    assert [str(p) for p in check_snapshot(broken, REGISTRY)] == [
        (
            "listeners[0].filter_chains[0].filters[0]: unknown network filter 'no_such_filter' "
            "(known: authz, connection_limit, http_connection_manager, tcp_mesh_metrics, tcp_proxy)"
        ),
        (
            "listeners[0].filter_chains[1].filters[0].http_connection_manager.http_filters[0]: "
            "'router' ends a chain and must be the last filter"
        ),
        (
            "listeners[0].filter_chains[1].filters[0].http_connection_manager.http_filters[1]: "
            "the last filter must end the chain, 'fault' does not"
        ),
        "listeners[0].filter_chains[2].filters[0].tcp_proxy: must be a TcpProxyConfig, got str",
    ]
    assert check_snapshot(base(), REGISTRY) == []


# -- on a running proxy ------------------------------------------------------------------------


async def test_an_endpoint_delta_moves_traffic_and_a_bad_one_keeps_the_last_good(
    meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory
) -> None:
    with trio.fail_after(10):
        first = await meshcore_upstream(name="first")
        second = await meshcore_upstream(name="second")
        proxy = await meshcore_proxy(http_proxy_config([first.endpoint]))
        assert (await proxy.client().get("/")).header("x-upstream") == "first"

        live = proxy.apply_delta(
            meshcore.SnapshotDelta(version="v2", endpoints={"backend": endpoints(second.endpoint)})
        )
        assert live is proxy.snapshot
        assert live.version == "v2"
        assert (await proxy.client().get("/")).header("x-upstream") == "second"

        # Composes, but leaves the route pointing nowhere: rejected whole, with the path.
        gone = meshcore.SnapshotDelta(version="v3", removed_clusters=("backend",))
        with pytest.raises(meshcore.ConfigError) as caught:
            proxy.apply_delta(gone)
        assert [str(p) for p in caught.value.problems] == [
            (
                "route_configs[0].virtual_hosts[0].routes[0].cluster: unknown cluster 'backend' "
                "(defined: none defined)"
            )
        ]
        assert caught.value.stage == "validation"
        assert proxy.snapshot.version == "v2"
        assert (await proxy.client().get("/")).header("x-upstream") == "second"
        assert proxy.stats.value("config_snapshots_rejected", reason="validation") == 1


async def test_plugin_checks_see_the_composed_snapshot(meshcore_upstream: UpstreamFactory) -> None:
    class OneEndpointOnly:
        @meshcore.hookimpl
        def meshcore_validate_snapshot(self, snapshot: meshcore.Snapshot) -> list[str]:
            return [
                f"cluster {c.name!r} has {len(c.endpoints)} endpoints, at most 1 allowed"
                for c in snapshot.clusters
                if len(c.endpoints) > 1
            ]

    registry = meshcore.build_registry(autoload=False, plugins=[("one-endpoint", OneEndpointOnly())])
    with trio.fail_after(10):
        upstream = await meshcore_upstream(name="only")
        async with open_proxies(registry) as proxies:
            proxy = await proxies(http_proxy_config([upstream.endpoint]))
            two = meshcore.SnapshotDelta(
                version="v2", endpoints={"backend": endpoints(upstream.endpoint, "127.0.0.1:1")}
            )
            with pytest.raises(meshcore.ConfigError) as caught:
                proxy.apply_delta(two)
            assert str(caught.value) == (
                "plugin 'one-endpoint': cluster 'backend' has 2 endpoints, at most 1 allowed"
            )
            assert (await proxy.client().get("/")).header("x-upstream") == "only"


async def test_a_delta_before_any_snapshot_is_rejected() -> None:
    proxy = Proxy(REGISTRY)
    with pytest.raises(meshcore.ConfigError, match="a delta needs a live Snapshot to apply to"):
        proxy.apply_delta(meshcore.SnapshotDelta(version="v1"))
    assert proxy.stats.value("config_snapshots_rejected", reason="validation") == 1
