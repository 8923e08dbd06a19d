"""What a growing config costs: route matching per request, applying a Snapshot, memory.

Run: ``python bench/config_growth.py [--routes 10000] [--vhosts 1000] [--clusters 1000]``.

1. Route matching, per request (in-process, :meth:`RouteTable.match` on requests spread over
   every route): 10 routes in one virtual host (the reference), ``--routes`` routes across
   ``--vhosts`` virtual hosts, and ``--routes`` routes in one virtual host (the worst case
   for a scan: the index must keep it flat). Half the routes are ``path`` routes, half
   ``prefix`` ones; the ratios to the 10-route case are printed.
2. Applying a Snapshot of ``--routes`` routes and ``--clusters`` clusters to a running proxy
   (a listener, an HTTP connection manager with the router): the time to structure the
   config data into a Snapshot, the time of :meth:`Proxy.apply`, and the longest the trio
   loop went without running a 1 ms heartbeat task meanwhile (a stall of traffic).
3. Memory (tracemalloc) of the applied proxy per route and per cluster: the growth between
   a Snapshot with none and one with ``--routes`` routes / ``--clusters`` clusters.
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
import time
import tracemalloc
from typing import Any

import trio

import meshcore
from meshcore.config.model import Route, RouteConfiguration, RouteMatch, VirtualHost
from meshcore.http.messages import Headers, Request
from meshcore.http.routing import RouteTable
from meshcore.logs import configure
from meshcore.runtime.proxy import Proxy


def route_config(routes: int, vhosts: int) -> RouteConfiguration:
    """``routes`` routes spread evenly over ``vhosts`` virtual hosts (svc-N.example.com)."""
    per = max(routes // vhosts, 1)
    hosts = []
    for v in range(vhosts):
        table = []
        for r in range(per):
            match = RouteMatch(path=f"/api/{r}/items") if r % 2 else RouteMatch(prefix=f"/api/{r}/")
            table.append(Route(name=f"v{v}-r{r}", match=match, cluster=f"c{(v * per + r) % 7}"))
        hosts.append(VirtualHost(name=f"v{v}", domains=(f"svc-{v}.example.com",), routes=tuple(table)))
    return RouteConfiguration(name="main", virtual_hosts=tuple(hosts))


def requests_for(config: RouteConfiguration, count: int) -> list[Request]:
    """``count`` requests, each matching one route (spread over them all)."""
    targets = [(vh.domains[0], route) for vh in config.virtual_hosts for route in vh.routes]
    step = max(len(targets) // count, 1)
    # Every step-th route, and its neighbour every other time: path and prefix routes alike.
    picked = [targets[min(i * step + i % 2, len(targets) - 1)] for i in range(min(count, len(targets)))]
    out = []
    for host, route in picked:
        path = route.match.path if route.match.path is not None else f"{route.match.prefix}x/y?q=1"
        out.append(Request("GET", path, authority=host, headers=Headers([("user-agent", "bench")])))
    return out


def time_matching(config: RouteConfiguration, repeat: int) -> float:
    """Fastest µs per :meth:`RouteTable.match` over ``repeat`` passes of 1,000 requests.

    The fastest pass, as timeit advises: on a shared machine the slower ones measure the
    other processes (a pass preempted once costs tens of µs per request).
    """
    table = RouteTable.compile(config)
    requests = requests_for(config, 1000)
    for request in requests:  # warm the authority cache, as a running proxy has it
        assert table.match(request) is not None, request.path
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        for request in requests:
            table.match(request)
        runs.append((time.perf_counter() - start) / len(requests) * 1e6)
    return min(runs)


def config_data(routes: int, vhosts: int, clusters: int) -> dict[str, Any]:
    """A proxy config: one listener, ``routes`` routes over ``vhosts`` hosts, ``clusters`` clusters."""
    per = max(routes // vhosts, 1) if routes else 0
    hosts = [
        {
            "name": f"v{v}",
            "domains": [f"svc-{v}.example.com"],
            "routes": [
                {
                    "name": f"v{v}-r{r}",
                    "match": {"path": f"/api/{r}/items"} if r % 2 else {"prefix": f"/api/{r}/"},
                    "cluster": f"c{(v * per + r) % max(clusters, 1)}",
                }
                for r in range(per)
            ],
        }
        for v in range(vhosts if routes else 0)
    ]
    hosts.append(
        {"name": "default", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "cluster": "c0"}]}
    )
    return {
        "admin": {"enabled": False},
        "listeners": [
            {
                "name": "ingress",
                "address": "127.0.0.1:0",
                "filter_chains": [
                    {
                        "filters": [
                            {"http_connection_manager": {"route_config": "main", "http_filters": ["router"]}}
                        ]
                    }
                ],
            }
        ],
        "route_configs": [{"name": "main", "virtual_hosts": hosts}],
        "clusters": [
            {"name": f"c{c}", "endpoints": [f"127.0.0.1:{20000 + c % 1000}"]} for c in range(max(clusters, 1))
        ],
    }


async def measure_apply(routes: int, vhosts: int, clusters: int) -> dict[str, float]:
    """Structure and apply a Snapshot to a running proxy; the loop's longest stall meanwhile."""
    registry = meshcore.build_registry()
    small = meshcore.snapshot_from_data(config_data(0, 0, 1), registry, version="small")
    data = config_data(routes, vhosts, clusters)
    stall = 0.0
    stop = trio.Event()

    async def heartbeat() -> None:
        nonlocal stall
        last = trio.current_time()
        while not stop.is_set():
            await trio.sleep(0.001)
            now = trio.current_time()
            stall = max(stall, now - last)
            last = now

    async with trio.open_nursery() as nursery:
        proxy = Proxy(registry)
        await nursery.start(proxy.run)
        proxy.apply(small)
        nursery.start_soon(heartbeat)
        await trio.sleep(0.05)
        stall = 0.0
        start = time.perf_counter()
        snapshot = meshcore.snapshot_from_data(data, registry, version="big")
        structured = time.perf_counter()
        await trio.sleep(0.05)
        structure_stall, stall = stall, 0.0
        # As the file source reloads: structured in a worker thread while the loop runs.
        threaded_start = time.perf_counter()
        snapshot = await trio.to_thread.run_sync(
            functools.partial(meshcore.snapshot_from_data, data, registry, version="big")
        )
        threaded = time.perf_counter()
        await trio.sleep(0.05)
        threaded_stall, stall = stall, 0.0
        applied_start = time.perf_counter()
        proxy.apply(snapshot)
        applied = time.perf_counter()
        await trio.sleep(0.05)
        stop.set()
        proxy.drain()
    return {
        "structure_s": structured - start,
        "structure_stall_ms": structure_stall * 1e3,
        "threaded_s": threaded - threaded_start,
        "threaded_stall_ms": threaded_stall * 1e3,
        "apply_s": applied - applied_start,
        "stall_ms": stall * 1e3,
    }


async def applied_memory(routes: int, vhosts: int, clusters: int) -> int:
    """Bytes (tracemalloc) held by a proxy that applied this config, config data dropped."""
    registry = meshcore.build_registry()
    snapshot = meshcore.snapshot_from_data(config_data(routes, vhosts, clusters), registry, version="m")
    gc.collect()
    async with trio.open_nursery() as nursery:
        proxy = Proxy(registry)
        await nursery.start(proxy.run)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        proxy.apply(snapshot)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        proxy.drain()
    return held


def memory(routes: int, vhosts: int, clusters: int) -> tuple[float, float, float, float]:
    """Bytes per route and per cluster: applied runtime (Snapshot excluded), then the Snapshot."""
    base = trio.run(applied_memory, 0, 0, 1)
    with_routes = trio.run(applied_memory, routes, vhosts, 1)
    with_clusters = trio.run(applied_memory, 0, 0, clusters)
    snapshot_bytes = _snapshot_bytes(routes, vhosts, clusters)
    return (
        (with_routes - base) / routes,
        (with_clusters - base) / (clusters - 1),
        snapshot_bytes[0] / routes,
        snapshot_bytes[1] / (clusters - 1),
    )


def _snapshot_bytes(routes: int, vhosts: int, clusters: int) -> tuple[int, int]:
    """Bytes of the structured Snapshot alone, per the same growth (routes, clusters)."""
    registry = meshcore.build_registry()

    def held(data: dict[str, Any]) -> int:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        snapshot = meshcore.snapshot_from_data(data, registry, version="m")
        gc.collect()
        size = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        del snapshot
        return size

    base = held(config_data(0, 0, 1))
    return held(config_data(routes, vhosts, 1)) - base, held(config_data(0, 0, clusters)) - base


def main() -> int:
    """Run the three measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--vhosts", type=int, default=1_000)
    parser.add_argument("--clusters", type=int, default=1_000)
    parser.add_argument(
        "--repeat", type=int, default=15, help="passes over 1,000 requests (the median is kept)"
    )
    args = parser.parse_args()
    configure("warning", fmt="json")

    cases = {
        "10 routes, 1 virtual host": route_config(10, 1),
        f"{args.routes} routes, {args.vhosts} virtual hosts": route_config(args.routes, args.vhosts),
        f"{args.routes} routes, 1 virtual host": route_config(args.routes, 1),
    }
    # Interleaved passes: the machine is shared, so each case is timed in every round.
    rounds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(3):
        for name, config in cases.items():
            rounds[name].append(time_matching(config, args.repeat))
    print(
        "Route matching (RouteTable.match, warm authority cache), µs per request, fastest pass, median of 3 rounds"
    )
    reference = statistics.median(rounds["10 routes, 1 virtual host"])
    for name, runs in rounds.items():
        us = statistics.median(runs)
        print(f"  {name:36} {us:7.2f} µs   {us / reference:5.2f}x the 10-route case")

    print(
        f"\nApplying a Snapshot of {args.routes} routes ({args.vhosts} virtual hosts) and {args.clusters} clusters"
    )
    results = [trio.run(measure_apply, args.routes, args.vhosts, args.clusters) for _ in range(3)]
    for key, label, unit in (
        ("structure_s", "structure config data into a Snapshot", "s"),
        ("structure_stall_ms", "longest loop stall while structuring", "ms"),
        ("threaded_s", "structure in a worker thread (file reload)", "s"),
        ("threaded_stall_ms", "longest loop stall meanwhile", "ms"),
        ("apply_s", "Proxy.apply (check, build, swap)", "s"),
        ("stall_ms", "longest loop stall during Proxy.apply", "ms"),
    ):
        values = [r[key] for r in results]
        print(
            f"  {label:40} median {statistics.median(values):8.3f} {unit}  (runs: "
            + ", ".join(f"{v:.3f}" for v in values)
            + ")"
        )

    per_route, per_cluster, snap_route, snap_cluster = memory(args.routes, args.vhosts, args.clusters)
    print("\nMemory (tracemalloc)")
    print(
        f"  per route:   Snapshot {snap_route / 1024:6.2f} KiB + applied (compiled route, stats)"
        f" {per_route / 1024:6.2f} KiB = {(snap_route + per_route) / 1024:6.2f} KiB"
    )
    print(
        f"  per cluster: Snapshot {snap_cluster / 1024:6.2f} KiB + applied (cluster runtime, stats)"
        f" {per_cluster / 1024:6.2f} KiB = {(snap_cluster + per_cluster) / 1024:6.2f} KiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
