"""What a growing config costs: route matching per request, applying a Snapshot, memory.

Run: ``python bench/config_growth.py [--routes 10000] [--vhosts 1000] [--clusters 1000]``.

1. Route matching, per request (in-process, :meth:`RouteTable.match` on requests spread over
   every route): 10 routes in one virtual host (the reference), ``--routes`` routes across
   ``--vhosts`` virtual hosts, and ``--routes`` routes in one virtual host (the worst case
   for a scan: the index must keep it flat). Half the routes are ``path`` routes, half
   ``prefix`` ones; the ratios to the 10-route case are printed.
2. Applying a Snapshot of ``--routes`` routes and ``--clusters`` clusters to a running proxy
   (a listener, an HTTP connection manager with the router): the time to structure the
   config data into a Snapshot; the time of :meth:`Proxy.apply` (synchronous, the baseline)
   and of :meth:`Proxy.apply_async` (what config sources call), with requests flowing through
   the proxy meanwhile: the longest step the applying task ran without yielding, the longest
   a probe task sleeping 1 ms in a loop woke late (the stall traffic saw), beside that same
   probe's worst over 1 s of traffic with no apply (the machine's floor), and the slowest
   request.
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
from meshcore.runtime.offloop import run_beside_loop
from meshcore.runtime.proxy import Proxy
from meshcore.testing.client import Client
from meshcore.testing.upstreams import serve_upstream


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


def config_data(
    routes: int, vhosts: int, clusters: int, backend: tuple[str, int] = ("127.0.0.1", 20000)
) -> dict[str, Any]:
    """A proxy config: one listener, ``routes`` routes over ``vhosts`` hosts, ``clusters`` clusters.

    Cluster ``c0`` (the default route's, for every other host) is ``backend``.
    """
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
            {"name": "c0", "endpoints": [f"{backend[0]}:{backend[1]}"]},
            *({"name": f"c{c}", "endpoints": [f"127.0.0.1:{20000 + c % 1000}"]} for c in range(1, clusters)),
        ],
    }


class Probe:
    """A task that sleeps 1 ms again and again: how late it wakes is how long the loop stalled."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self) -> None:
        """Sleep 1 ms in a loop, keeping the worst lateness (seconds) in ``worst``."""
        while True:
            before = trio.current_time()
            await trio.sleep(0.001)
            self.worst = max(self.worst, trio.current_time() - before - 0.001)


class Steps(trio.abc.Instrument):
    """The longest step (run between two checkpoints) of one task: the stall that task caused."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.longest = 0.0
        self._start = time.perf_counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        """A step of ``task`` begins."""
        if task is self.task:
            self._start = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        """A step of ``task`` ends."""
        if task is self.task:
            self.longest = max(self.longest, time.perf_counter() - self._start)


class Traffic:
    """Clients sending GET requests through the proxy, one connection each, back to back."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.client = Client(address)
        self.done = 0
        self.failed = 0
        self.slowest = 0.0

    async def run(self) -> None:
        """Send requests until cancelled, counting them and keeping the slowest (seconds)."""
        while True:
            start = trio.current_time()
            try:
                response = await self.client.get("/anything")
            except OSError:
                self.failed += 1
                continue
            if response.status != 200:  # noqa: PLR2004 - HTTP OK
                self.failed += 1
            self.done += 1
            self.slowest = max(self.slowest, trio.current_time() - start)


async def applied(
    name: str, proxy: Proxy, snapshot: meshcore.Snapshot, probe: Probe, traffic: list[Traffic]
) -> dict[str, float]:
    """Apply ``snapshot`` (``name``: "sync" or "async"); what it took, and what it held up."""
    before = sum(t.done for t in traffic)
    steps = Steps(trio.lowlevel.current_task())
    trio.lowlevel.add_instrument(steps)
    start = time.perf_counter()
    if name == "sync":
        proxy.apply(snapshot)
    else:
        await proxy.apply_async(snapshot)
    took = time.perf_counter() - start
    await trio.lowlevel.checkpoint()  # the step that ended the apply ends too
    trio.lowlevel.remove_instrument(steps)
    served = sum(t.done for t in traffic) - before
    await trio.sleep(0.05)  # the probe wakes, and the requests held up finish
    return {
        f"{name}_s": took,
        f"{name}_step_ms": steps.longest * 1e3,
        f"{name}_requests": served,
        f"{name}_stall_ms": probe.worst * 1e3,
        f"{name}_slowest_ms": max(t.slowest for t in traffic) * 1e3,
    }


async def measure_apply(routes: int, vhosts: int, clusters: int, clients: int) -> dict[str, float]:
    """Structure and apply a Snapshot to a proxy serving traffic; the loop's longest stall meanwhile.

    In one process, as in a running proxy: the proxy, an upstream, ``clients`` clients sending
    requests through it, and a probe task that sleeps 1 ms in a loop (its worst lateness is the
    longest stall). The Snapshot is applied with :meth:`Proxy.apply` (synchronous, the baseline),
    then with :meth:`Proxy.apply_async` (what config sources call), back to the small one between.
    """
    registry = meshcore.build_registry()
    results: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        backend = await nursery.start(serve_upstream)
        small = meshcore.snapshot_from_data(config_data(0, 0, 1, backend), registry, version="small")
        data = config_data(routes, vhosts, clusters, backend)
        proxy = Proxy(registry)
        await nursery.start(proxy.run)
        await proxy.apply_async(small)
        probe = Probe()
        traffic = [Traffic(proxy.address("ingress")) for _ in range(clients)]
        nursery.start_soon(probe.run)

        async def settle() -> None:
            await trio.sleep(0.2)
            probe.worst = 0.0
            for t in traffic:
                t.slowest = 0.0

        # Structuring (parsing is the file source's, in a worker thread too): on the loop, then off it.
        await settle()
        start = time.perf_counter()
        meshcore.snapshot_from_data(data, registry, version="big")
        results["structure_s"] = time.perf_counter() - start
        await trio.sleep(0.01)  # the probe wakes, and sees how late
        results["structure_stall_ms"] = probe.worst * 1e3
        await settle()
        start = time.perf_counter()
        snapshot = await run_beside_loop(
            functools.partial(meshcore.snapshot_from_data, data, registry, version="big")
        )
        results["threaded_s"] = time.perf_counter() - start
        await trio.sleep(0.01)
        results["threaded_stall_ms"] = probe.worst * 1e3

        for t in traffic:
            nursery.start_soon(t.run)
        await trio.sleep(0.2)  # the traffic is flowing
        # The floor: the longest stall in 1 s of traffic with no apply (the machine, the GC, ...).
        await settle()
        await trio.sleep(1.0)
        results["idle_stall_ms"] = probe.worst * 1e3
        for name in ("sync", "async"):
            await settle()
            results.update(await applied(name, proxy, snapshot, probe, traffic))
            await settle()
            await trio.sleep(1.0)  # after it: what the collector costs now, over the larger heap
            results[f"{name}_after_stall_ms"] = probe.worst * 1e3
            await proxy.apply_async(small)
        results["failed"] = sum(t.failed for t in traffic)
        proxy.drain()
        nursery.cancel_scope.cancel()
    return results


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
    parser.add_argument("--clients", type=int, default=4, help="clients sending requests during the apply")
    parser.add_argument("--runs", type=int, default=3, help="apply measurements (the median is printed)")
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
    print(
        f"  in one process with the proxy: an upstream, {args.clients} clients sending requests through it,"
        " and a probe task sleeping 1 ms in a loop (its worst lateness is the longest stall)"
    )
    results = [
        trio.run(measure_apply, args.routes, args.vhosts, args.clusters, args.clients)
        for _ in range(args.runs)
    ]
    for key, label, unit in (
        ("structure_s", "structure config data into a Snapshot", "s"),
        ("structure_stall_ms", "longest loop stall while structuring", "ms"),
        ("threaded_s", "structure in a worker thread, as the file source", "s"),
        ("threaded_stall_ms", "longest loop stall meanwhile", "ms"),
        ("idle_stall_ms", "longest stall in 1 s of traffic, no apply", "ms"),
        ("sync_s", "Proxy.apply (sync: baseline)", "s"),
        ("sync_step_ms", "its longest step on the loop", "ms"),
        ("sync_stall_ms", "longest loop stall during it", "ms"),
        ("sync_slowest_ms", "slowest request during it", "ms"),
        ("sync_requests", "requests served during it", ""),
        ("sync_after_stall_ms", "longest stall in the 1 s after it", "ms"),
        ("async_s", "Proxy.apply_async (sources call it)", "s"),
        ("async_step_ms", "its longest step on the loop", "ms"),
        ("async_stall_ms", "longest loop stall during it", "ms"),
        ("async_slowest_ms", "slowest request during it", "ms"),
        ("async_requests", "requests served during it", ""),
        ("async_after_stall_ms", "longest stall in the 1 s after it", "ms"),
        ("failed", "requests failed (all runs)", ""),
    ):
        values = [r[key] for r in results]
        print(
            f"  {label:40} median {statistics.median(values):8.3f} {unit:2}  (runs: "
            + ", ".join(f"{v:.3f}" for v in values)
            + ")"
        )
    stall = {name: statistics.median(r[f"{name}_stall_ms"] for r in results) for name in ("sync", "async")}
    print(f"  longest stall, apply_async / apply: {stall['async'] / max(stall['sync'], 1e-9):.3f}x")

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
