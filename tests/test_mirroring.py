"""Request mirroring: a share of a route's requests copied to another cluster, fire and forget.

The mirror is a real upstream that counts the copies it gets; the share is checked on the
sampler at 2,000 requests and end to end through a proxy; a dead, hanging or slow mirror
changes nothing for the clients.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio
from _faulty import FaultyUpstream

from meshcore.runtime.mirror import Sampler, shadow_authority
from meshcore.testing.client import fetch
from meshcore.testing.harness import http_proxy_config, start_proxy


@pytest.mark.parametrize("percentage", [50.0, 10.0, 12.5, 0.0, 100.0])
def test_the_share_is_exact_over_2000_requests(percentage: float) -> None:
    sample = Sampler(percentage)
    chosen = sum(sample() for _ in range(2000))
    assert chosen == round(2000 * percentage / 100)


def test_the_chosen_requests_are_spread_at_random() -> None:
    sample = Sampler(50.0)
    runs = [sample() for _ in range(1000)]
    assert runs != [True] * 50 + [False] * 50 * 19  # not in a fixed pattern
    longest = max(len(run) for run in "".join("x" if r else "." for r in runs).split("."))
    assert longest < 25


@pytest.mark.parametrize(
    ("authority", "shadow"),
    [
        ("api.example", "api.example-shadow"),
        ("api.example:8080", "api.example-shadow:8080"),
        ("[::1]:8080", "[::1]-shadow:8080"),
        ("10.0.0.1", "10.0.0.1-shadow"),
    ],
)
def test_the_copy_host_gets_a_shadow_suffix(authority: str, shadow: str) -> None:
    assert shadow_authority(authority) == shadow


def _mirrored(primary: str, mirror: str, **policy: Any) -> dict[str, Any]:
    routes = [
        {
            "name": "r",
            "match": {"prefix": "/"},
            "cluster": "backend",
            "request_mirror_policies": [{"cluster": "shadow", **policy}],
        }
    ]
    config = http_proxy_config([primary], routes=routes)
    config["clusters"].append({"name": "shadow", "endpoints": [mirror]})
    return config


async def test_half_the_requests_reach_the_mirror_with_their_body_and_a_shadow_host(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(20):
        primary = FaultyUpstream(name="primary")
        mirror = FaultyUpstream(name="mirror")
        await nursery.start(primary.serve)
        await nursery.start(mirror.serve)
        proxy = await start_proxy(nursery, _mirrored(primary.endpoint, mirror.endpoint, percentage=50))
        total = 200
        for i in range(total):
            response = await fetch(proxy.address("ingress"), f"/{i}", method="POST", body=b"x" * (i + 1))
            assert (response.status, response.header("x-upstream")) == (200, "primary")
        await mirror.wait_seen(total // 2)
    assert primary.count == total
    assert mirror.count == total // 2  # exact per block of 100
    for seen in mirror.seen:
        assert seen.host == "example.com-shadow"
        assert seen.body_size == int(seen.path.strip("/")) + 1  # the whole body, copied
    assert proxy.stats.value("mirror_requests_total", cluster="shadow") == total // 2


async def test_a_dead_mirror_changes_nothing_for_the_clients(nursery: trio.Nursery) -> None:
    with trio.fail_after(20):
        primary = FaultyUpstream(name="primary")
        await nursery.start(primary.serve)
        dead = FaultyUpstream(name="dead")
        await nursery.start(dead.serve)
        dead_endpoint = dead.endpoint
        dead.stop()
        proxy = await start_proxy(nursery, _mirrored(primary.endpoint, dead_endpoint, percentage=100))
        for i in range(50):
            response = await fetch(proxy.address("ingress"), f"/{i}", method="PUT", body=b"data")
            assert (response.status, response.body) == (200, b"primary\n")
        await proxy.clusters.mirrors.wait_idle()
    stats = proxy.stats
    assert primary.count == 50
    assert stats.value("mirror_failed", cluster="shadow") == 50


async def test_a_hanging_mirror_neither_slows_the_clients_nor_piles_up(nursery: trio.Nursery) -> None:
    with trio.fail_after(20):
        primary = FaultyUpstream(name="primary")
        hanging = FaultyUpstream(name="hanging", default="hang")
        await nursery.start(primary.serve)
        await nursery.start(hanging.serve)
        config = _mirrored(primary.endpoint, hanging.endpoint, percentage=100, max_active=5)
        proxy = await start_proxy(nursery, config)
        slowest = 0.0
        for i in range(30):
            start = time.monotonic()
            response = await fetch(proxy.address("ingress"), f"/{i}", method="POST", body=b"y" * 100_000)
            slowest = max(slowest, time.monotonic() - start)
            assert response.status == 200
    # A copy that held the original back would hold it for the route's timeout (15 s), as
    # long as the mirror hangs: far above this bound, which leaves a loaded machine slack.
    assert slowest < 5, slowest
    assert hanging.count == 5  # five copies hang; the rest were not made
    assert primary.count == 30
    stats = proxy.stats
    assert stats.value("mirror_overflow", cluster="shadow") == 25
    assert stats.value("mirror_active", cluster="shadow") == 5
