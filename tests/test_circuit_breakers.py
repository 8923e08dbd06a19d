"""Circuit breakers: past a cluster's limits a request fails fast (503, UO) instead of queueing.

Proven against a real slow upstream on loopback that counts, on its side, how many requests
it holds at once: 200 concurrent clients never put more than the limit on it, the requests
over the limits are answered at once, each limit counts its overflows, and a proxy process
under that load keeps its memory.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any

import trio
from _faulty import FaultyUpstream
from _proxy_process import start_proxy_process

from meshcore.testing.client import ClientResponse, fetch
from meshcore.testing.harness import http_proxy_config, start_proxy

CLIENTS = 200


async def _storm(address: tuple[str, int], clients: int = CLIENTS) -> list[tuple[ClientResponse, float]]:
    """``clients`` concurrent GETs; each answer with its latency in seconds."""
    results: list[tuple[ClientResponse, float]] = []

    async def one() -> None:
        start = time.monotonic()
        response = await fetch(address, "/slow")
        results.append((response, time.monotonic() - start))

    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(one)
    return results


def _breakers(**limits: Any) -> dict[str, Any]:
    return {"circuit_breakers": limits}


async def test_200_clients_never_put_more_than_the_connection_limit_on_a_slow_upstream(
    nursery: trio.Nursery,
) -> None:
    """Ten requests held upstream, ten pending: the other 180 are answered UO meanwhile.

    The upstream holds every request until the test releases it, so "answered before the
    upstream could have answered them" is an order of events, checked as such, whatever the
    load of the machine.
    """
    held, pending = 10, 10
    over = CLIENTS - held - pending
    with trio.fail_after(30):
        upstream = FaultyUpstream(default="gate")
        address = await nursery.start(upstream.serve)
        limits = _breakers(max_connections=held, max_pending_requests=pending)
        proxy = await start_proxy(nursery, http_proxy_config([address], cluster=limits))
        results: list[ClientResponse] = []
        overflowed = trio.Event()

        async def one() -> None:
            response = await fetch(proxy.address("ingress"), "/slow")
            results.append(response)
            if len(results) == over:
                overflowed.set()

        async with trio.open_nursery() as clients:
            for _ in range(CLIENTS):
                clients.start_soon(one)
            await overflowed.wait()
            # 180 answered while the upstream still holds its ten and answered none.
            assert (upstream.active, upstream.count) == (held, held)
            assert [(r.status, r.header("x-meshcore-flags")) for r in results] == [(503, "UO")] * over
            stats = proxy.stats
            assert stats.value("cluster_upstream_rq_pending_overflow", cluster="backend") == over
            assert stats.value("cluster_upstream_rq_pending_active", cluster="backend") == pending
            assert stats.value("cluster_circuit_breakers_remaining", cluster="backend", limit="pending") == 0
            assert (
                stats.value("cluster_circuit_breakers_remaining", cluster="backend", limit="connections") == 0
            )
            upstream.release()
    statuses = collections.Counter(r.status for r in results)
    assert statuses == {200: held + pending, 503: over}
    # The upstream, counted on its side, never held more than max_connections requests.
    assert upstream.max_active == held
    assert upstream.connections == held  # the pending ten reused the ten connections
    assert stats.value("cluster_circuit_breakers_remaining", cluster="backend", limit="pending") == pending
    assert stats.value("cluster_upstream_rq_pending_active", cluster="backend") == 0


async def test_past_max_requests_a_request_fails_fast_and_the_upstream_sees_at_most_the_limit(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(20):
        upstream = FaultyUpstream(default="delay:500")
        address = await nursery.start(upstream.serve)
        config = http_proxy_config([address], cluster=_breakers(max_requests=5))
        proxy = await start_proxy(nursery, config)
        results = await _storm(proxy.address("ingress"), clients=50)
    statuses = sorted(r.status for r, _ in results)
    assert upstream.max_active <= 5
    assert statuses.count(200) >= 5
    overflowed = proxy.stats.value("cluster_upstream_rq_overflow", cluster="backend")
    assert overflowed == statuses.count(503) > 0
    assert all(r.header("x-meshcore-flags") == "UO" for r, _ in results if r.status == 503)
    remaining = proxy.stats.value("cluster_circuit_breakers_remaining", cluster="backend", limit="requests")
    assert remaining == 5  # all done: the room is back


async def test_without_pending_room_a_request_that_finds_no_connection_fails_at_once(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        upstream = FaultyUpstream(default="hang")
        address = await nursery.start(upstream.serve)
        config = http_proxy_config([address], cluster=_breakers(max_connections=1, max_pending_requests=0))
        proxy = await start_proxy(nursery, config)
        async with trio.open_nursery() as clients:
            clients.start_soon(fetch, proxy.address("ingress"), "/held")
            await upstream.wait_seen(1)
            response = await fetch(proxy.address("ingress"), "/next")
            # Answered while the first request is still held upstream (it hangs for good):
            # the second did not queue behind it.
            assert upstream.active == 1
            clients.cancel_scope.cancel()
    assert (response.status, response.header("x-meshcore-flags")) == (503, "UO")
    assert upstream.count == 1


async def test_a_proxy_process_under_200_clients_keeps_its_memory(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(40):
        upstream = FaultyUpstream(default="delay:200")
        address = await nursery.start(upstream.serve)
        config = http_proxy_config([address], cluster=_breakers(max_connections=10, max_pending_requests=10))
        proxy = await start_proxy_process(nursery, config, tmp_path)
        await _storm(proxy.address)  # warm up: first allocations, pools
        before = proxy.rss_bytes()
        answered = 0
        for _ in range(3):
            answered += len(await _storm(proxy.address))
        after = proxy.rss_bytes()
        proxy.process.terminate()
    assert answered == 3 * CLIENTS
    assert upstream.max_active <= 10
    # 600 more requests, most over the limits, cost no memory that stays (nothing queued).
    assert after - before < 8 * 1024 * 1024, (before, after)
