"""Busy connections while the config changes under them: nothing fails, nothing is closed.

HTTP/1.1 keep-alive clients and HTTP/2 clients (many streams each) keep a proxy busy while
endpoint sets change 100 times a second and route tables 10 times a second, as deltas from
a control plane would. Every response must be a success; no connection may be closed (or
told to go away) by the proxy; and each request must land on an endpoint and a route table
that were live while it was in flight, so that a change is taken by the very next request.

CI runs a reduced scale (a few clients, about 2.5 s) that proves the same properties. The
full scale of issue 8 (50 HTTP/1.1 clients, 10 HTTP/2 clients of 100 streams, 10 s) is:

    MESHCORE_SOAK=full python -m pytest tests/test_soak.py -p no:cacheprovider -s
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio
from _h1client import Client
from _h2client import H2Client, open_h2_client

import meshcore
from meshcore.config import Endpoint
from meshcore.testing import ProxyFactory, RunningProxy, UpstreamFactory, http_proxy_config


@attrs.frozen
class Scale:
    h1_clients: int
    h2_clients: int
    h2_streams: int
    seconds: float
    endpoint_changes_per_second: float = 100.0
    route_changes_per_second: float = 10.0
    upstreams: int = 6


FULL = Scale(h1_clients=50, h2_clients=10, h2_streams=100, seconds=10.0)
CI = Scale(h1_clients=10, h2_clients=2, h2_streams=20, seconds=2.5)
SCALE = FULL if os.environ.get("MESHCORE_SOAK") == "full" else CI


def routes(version: int) -> list[dict[str, Any]]:
    return [
        {
            "name": "work",
            "match": {"prefix": "/"},
            "cluster": "backend",
            "response_headers_to_add": {"x-route-version": str(version)},
        }
    ]


@attrs.define
class Soak:
    """The changes made so far, and what the clients saw."""

    proxy: RunningProxy
    upstreams: dict[str, str]  # name -> endpoint
    endpoint_sets: list[frozenset[str]] = attrs.Factory(list)  # by generation
    route_version: int = 0
    requests: int = 0
    by_client: dict[str, int] = attrs.Factory(dict)
    longest_burst: int = 0
    failures: list[str] = attrs.Factory(list)
    stop: trio.Event = attrs.Factory(trio.Event)

    @property
    def endpoint_generation(self) -> int:
        return len(self.endpoint_sets) - 1

    def check(self, kind: str, generations: tuple[int, int], versions: tuple[int, int], reply: Any) -> None:
        """A response: a success, from an endpoint and a route table live while it was in flight."""
        self.requests += 1
        status, upstream, version, connection = reply
        live = frozenset().union(*self.endpoint_sets[generations[0] : generations[1] + 1])
        if status != 200:
            self.failures.append(f"{kind}: status {status}")
        elif upstream not in live:
            self.failures.append(
                f"{kind}: served by {upstream}, not among {sorted(live)} (generations {generations})"
            )
        elif version is None or not versions[0] <= int(version) <= versions[1]:
            self.failures.append(f"{kind}: route table {version}, not one of {versions}")
        elif connection is not None:
            self.failures.append(f"{kind}: connection: {connection}")

    async def request(self, kind: str, send: Callable[[], Awaitable[tuple[Any, ...]]]) -> None:
        client = kind.partition(" stream")[0].partition(" (after)")[0]
        self.by_client[client] = self.by_client.get(client, 0) + 1
        generations, versions = self.endpoint_generation, self.route_version
        try:
            reply = await send()
        except Exception as err:  # noqa: BLE001 - every failure is recorded, not just the first
            self.failures.append(f"{kind}: {type(err).__name__}: {err}")
            self.stop.set()
            return
        self.check(kind, (generations, self.endpoint_generation), (versions, self.route_version), reply)

    # -- the control plane ----------------------------------------------------------------------

    def set_endpoints(self, names: frozenset[str]) -> None:
        chosen = tuple(
            Endpoint(address=meshcore.Address.__meshcore_parse__(self.upstreams[n])) for n in sorted(names)
        )
        version = f"e{len(self.endpoint_sets)}"
        self.proxy.apply_delta(meshcore.SnapshotDelta(version=version, endpoints={"backend": chosen}))
        self.endpoint_sets.append(names)

    def set_routes(self, version: int) -> None:
        config = http_proxy_config([], routes=routes(version))
        (table,) = meshcore.snapshot_from_data(config, self.proxy.registry).route_configs
        self.proxy.apply_delta(meshcore.SnapshotDelta(version=f"r{version}", route_configs=(table,)))
        self.route_version = version

    async def change_endpoints(self, rng: random.Random, start: float, end: float) -> None:
        names = sorted(self.upstreams)
        await self._every(
            1 / SCALE.endpoint_changes_per_second,
            start,
            end,
            lambda: self.set_endpoints(frozenset(rng.sample(names, rng.randint(1, 3)))),
        )

    async def change_routes(self, start: float, end: float) -> None:
        await self._every(
            1 / SCALE.route_changes_per_second, start, end, lambda: self.set_routes(self.route_version + 1)
        )

    async def _every(self, interval: float, start: float, end: float, change: Callable[[], None]) -> None:
        """``change()`` at its rate from ``start`` to ``end``; when the loop was busy, every change due at once.

        The clients share the loop: on a busy machine its turns come late, and a change that
        waited for a turn of its own would fall behind its rate. ``start`` is given, not read
        when this task first runs, which on a busy loop is later (247 changes of 250 once).
        """
        total = round((end - start) / interval)
        done = 0
        while done < total and not self.stop.is_set():
            await trio.sleep_until(start + (done + 1) * interval)
            due = min(total, int((trio.current_time() - start) / interval + 1e-9))
            self.longest_burst = max(self.longest_burst, due - done)
            while done < due and not self.stop.is_set():
                change()
                done += 1

    # -- the clients ------------------------------------------------------------------------------

    async def h1_client(self, index: int) -> None:
        async with await Client.connect(self.proxy.address()) as client:

            async def send() -> tuple[Any, ...]:
                reply = await client.get(f"/h1/{index}")
                headers = reply.headers
                return (
                    reply.status,
                    headers.get("x-upstream"),
                    headers.get("x-route-version"),
                    headers.get("connection"),
                )

            while not self.stop.is_set():
                await self.request(f"h1 client {index}", send)
            await self.request(f"h1 client {index} (after)", send)  # still open, still served

    async def h2_client(self, index: int) -> None:
        async with open_h2_client(self.proxy.address()) as client:

            async def send() -> tuple[Any, ...]:
                response = await client.request("/h2")
                return (
                    response.status,
                    response.get("x-upstream"),
                    response.get("x-route-version"),
                    response.get("connection"),
                )

            async with trio.open_nursery() as streams:
                for stream in range(SCALE.h2_streams):
                    streams.start_soon(self.h2_stream, client, send, f"h2 client {index} stream {stream}")
            await self.request(f"h2 client {index} (after)", send)  # still open, still served
            if client.terminated is not None or client.closed.is_set():
                self.failures.append(f"h2 client {index}: the connection was closed or told to go away")

    async def h2_stream(
        self, client: H2Client, send: Callable[[], Awaitable[tuple[Any, ...]]], kind: str
    ) -> None:
        while not self.stop.is_set():
            await self.request(kind, send)
            if client.terminated is not None or client.closed.is_set():
                self.failures.append(f"{kind}: the connection was closed or told to go away")
                self.stop.set()


async def test_busy_connections_see_every_change_and_none_fails(
    meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory
) -> None:
    rng = random.Random(8)  # noqa: S311 - load spreading in a test, not cryptography
    upstreams = {f"u{i}": (await meshcore_upstream(name=f"u{i}")).endpoint for i in range(SCALE.upstreams)}
    with trio.fail_after(SCALE.seconds + 60):
        first = {"u0", "u1"}
        proxy = await meshcore_proxy(
            http_proxy_config(
                [upstreams[n] for n in sorted(first)],
                routes=routes(0),
                manager={"http2": {"max_concurrent_streams": max(100, SCALE.h2_streams)}},
                cluster={"max_connections_per_endpoint": 4096},
            )
        )
        soak = Soak(proxy, upstreams, [frozenset(first)])
        started = time.monotonic()
        async with trio.open_nursery() as nursery:
            for i in range(SCALE.h1_clients):
                nursery.start_soon(soak.h1_client, i)
            for i in range(SCALE.h2_clients):
                nursery.start_soon(soak.h2_client, i)
            begin = trio.current_time()
            end = begin + SCALE.seconds
            async with trio.open_nursery() as changes:
                changes.start_soon(soak.change_endpoints, rng, begin, end)
                changes.start_soon(soak.change_routes, begin, end)
            soak.stop.set()  # the clients finish their requests in flight, and one more each
        took = time.monotonic() - started
    endpoint_changes = len(soak.endpoint_sets) - 1
    print(  # noqa: T201 - the figures of a documented run (-s)
        f"\nsoak {SCALE}: {took:.1f} s, {soak.requests} requests ({soak.requests / took:.0f}/s), "
        f"{endpoint_changes} endpoint changes, {soak.route_version} route changes (at most {soak.longest_burst} "
        f"at once), {len(soak.failures)} failures"
    )
    assert soak.failures == []
    # The changes came at their rate (in bursts when the loop was busy), and every client
    # was busy throughout.
    assert endpoint_changes == round(SCALE.endpoint_changes_per_second * SCALE.seconds)
    assert soak.route_version == round(SCALE.route_changes_per_second * SCALE.seconds)
    assert len(soak.by_client) == SCALE.h1_clients + SCALE.h2_clients
    assert min(soak.by_client.values()) >= 2, soak.by_client  # one during the run at least, one after
    assert sum(proxy.stats.value("config_snapshots_rejected", reason=r) for r in ("validation", "apply")) == 0
