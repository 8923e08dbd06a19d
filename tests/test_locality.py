"""Locality and priority failover: traffic stays near the proxy and spills over as health drops.

Envoy's priority load with its overprovisioning factor (1.4): a level keeps all the traffic
while more than 1/1.4 of its endpoints are healthy, then sheds the missing share to the next
level. Checked on the host set directly, then end to end: endpoints in the proxy's zone
take everything, lose their health to active checks, and the remote zone takes over.
"""

from __future__ import annotations

import collections
from typing import Any

import attrs
import pytest
import trio
from _faulty import FaultyUpstream

from meshcore.config import snapshot_from_data
from meshcore.config.traffic import Locality
from meshcore.registry import build_registry
from meshcore.runtime.cluster import Cluster
from meshcore.runtime.hostset import HostSet, node_locality
from meshcore.runtime.proxy import Proxy
from meshcore.testing.client import fetch
from meshcore.testing.harness import http_proxy_config, start_proxy

HERE = Locality(region="eu", zone="eu-1", subzone="rack-a")


@attrs.define(eq=False)
class FakeHost:
    name: str
    healthy: bool = True
    priority: int = 0
    locality: Locality | None = None


def _shares(host_set: HostSet[FakeHost], draws: int = 20_000) -> dict[str, float]:
    """The share of requests each host gets (a drawn level's hosts sharing its draw evenly)."""
    counts: dict[str, float] = collections.defaultdict(float)
    for _ in range(draws):
        level = host_set.candidates()
        for host in level:
            counts[host.name] += 1 / len(level)
    return {name: n / draws for name, n in counts.items()}


def test_a_healthy_priority_0_takes_everything() -> None:
    hosts = [FakeHost("p0a"), FakeHost("p0b"), FakeHost("p1", priority=1)]
    host_set = HostSet.build(hosts)
    assert [[h.name for h in level] for level in host_set.levels] == [["p0a", "p0b"]]
    assert host_set.loads == [100.0]


def test_a_priority_sheds_what_its_health_times_1_4_cannot_carry() -> None:
    p0 = [FakeHost(f"p0-{i}", healthy=i < 2) for i in range(4)]  # 2 of 4 healthy: 70%
    p1 = [FakeHost(f"p1-{i}", priority=1) for i in range(2)]
    host_set = HostSet.build([*p0, *p1])
    assert host_set.loads == pytest.approx([70.0, 30.0])
    shares = _shares(host_set)
    assert sum(v for k, v in shares.items() if k.startswith("p0")) == pytest.approx(0.70, abs=0.015)
    assert "p0-3" not in shares  # unhealthy ones are never candidates
    # Three of four healthy: 75% x 1.4 is over 100%: no spill at all.
    p0[2].healthy = True
    assert HostSet.build([*p0, *p1]).loads == [100.0]


def test_healths_short_of_100_percent_are_scaled_up() -> None:
    p0 = [FakeHost("a", healthy=False), FakeHost("b")]  # 70%
    p1 = [
        FakeHost("c", priority=1, healthy=False),
        FakeHost("d", priority=1, healthy=False),
        FakeHost("e", priority=1),
    ]
    # p1: 1/3 x 1.4 = 46.7%; total 116.7% -> p0 70, p1 30.
    assert HostSet.build([*p0, *p1]).loads == pytest.approx([70.0, 30.0])
    p0[1].healthy = False
    # p0: 0; p1: 46.7% alone, under the panic threshold (50): every endpoint is used.
    panic = HostSet.build([*p0, *p1])
    assert panic.panic
    assert len(panic.levels[0]) == 5
    # Without panic mode (threshold 0), the healthy one takes it all.
    calm = HostSet.build([*p0, *p1], panic_threshold=0)
    assert [h.name for h in calm.levels[0]] == ["e"]
    assert calm.loads == pytest.approx([100.0])


def test_localities_are_levels_by_distance_from_the_proxy() -> None:
    hosts = [
        FakeHost("far", locality=Locality(region="us", zone="us-1")),
        FakeHost("region", locality=Locality(region="eu", zone="eu-2")),
        FakeHost("zone", locality=Locality(region="eu", zone="eu-1", subzone="rack-b")),
        FakeHost("subzone", locality=HERE),
        FakeHost("nowhere"),
    ]
    host_set = HostSet.build(hosts, local=HERE)
    assert [h.name for h in host_set.levels[0]] == ["subzone"]
    hosts[3].healthy = False
    host_set = HostSet.build(hosts, local=HERE)
    assert [[h.name for h in level] for level in host_set.levels] == [["zone"]]
    # Priority first, then distance: a local priority-1 endpoint comes after remote priority-0 ones.
    hosts[2].priority = 1
    host_set = HostSet.build(hosts, local=HERE)
    assert [h.name for h in host_set.levels[0]] == ["region"]


def test_the_proxys_locality_comes_from_its_identity_labels() -> None:
    @attrs.frozen
    class Node:
        labels: dict[str, str]

    @attrs.frozen
    class WithNode:
        node: Node | None

    labels = {"topology.kubernetes.io/region": "eu", "topology.kubernetes.io/zone": "eu-1", "app": "x"}
    assert node_locality(WithNode(Node(labels))) == Locality(region="eu", zone="eu-1")
    assert node_locality(WithNode(None)) is None


# -- end to end ------------------------------------------------------------------------------------


def _cluster(proxy: Proxy) -> Cluster:
    cluster = proxy.clusters.get("backend")
    assert cluster is not None
    return cluster


async def _healthy(proxy: Proxy, count: int) -> None:
    while sum(h.healthy for h in _cluster(proxy).hosts) != count:
        await _cluster(proxy).wait_health_change()


async def _spread(proxy: Proxy, requests: int, clients: int = 10) -> collections.Counter[str]:
    """Which upstream answered ``requests`` requests sent by ``clients`` concurrent clients."""
    names: collections.Counter[str] = collections.Counter()

    async def client() -> None:
        for i in range(requests // clients):
            names[(await fetch(proxy.address("ingress"), f"/{i}")).header("x-upstream") or ""] += 1

    async with trio.open_nursery() as callers:
        for _ in range(clients):
            callers.start_soon(client)
    return names


async def test_traffic_stays_in_the_proxys_zone_and_spills_over_as_it_loses_health(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(30):
        upstreams: dict[str, FaultyUpstream] = {}
        for name in ("near1", "near2", "far1", "far2"):
            upstreams[name] = FaultyUpstream(name=name, paths={"/healthz": "200"})
            await nursery.start(upstreams[name].serve)
        zones = {"near1": "eu-1", "near2": "eu-1", "far1": "eu-2", "far2": "eu-2"}
        config: dict[str, Any] = http_proxy_config(
            [],
            cluster={
                "locality_lb": {"local": {"region": "eu", "zone": "eu-1"}},
                "health_checks": [
                    {
                        "http": {"path": "/healthz"},
                        "interval": "100ms",
                        "unhealthy_threshold": 1,
                        "healthy_threshold": 1,
                    }
                ],
            },
        )
        config["clusters"][0]["endpoints"] = [
            {"address": u.endpoint, "locality": {"region": "eu", "zone": zones[n]}}
            for n, u in upstreams.items()
        ]
        snapshot_from_data(config, build_registry(autoload=False))  # the config as a user writes it
        proxy = await start_proxy(nursery, config)
        await _healthy(proxy, 4)
        assert set(await _spread(proxy, 20)) == {"near1", "near2"}
        # One near endpoint fails: 1/2 x 1.4 = 70% stays near, 30% goes far.
        upstreams["near1"].paths["/healthz"] = "503"
        await _healthy(proxy, 3)
        spread = await _spread(proxy, 200)
        near = spread["near2"] / 200
        # Binomial(200, 0.7): 3.2 points of deviation; 10 points is over three of them.
        assert abs(near - 0.70) <= 0.10, spread
        assert spread["near1"] == 0
        # Both near endpoints fail: everything goes far.
        upstreams["near2"].paths["/healthz"] = "503"
        await _healthy(proxy, 2)
        assert set(await _spread(proxy, 20)) == {"far1", "far2"}
