"""Applying without stalling traffic: Proxy.apply_async checks and compiles off the event loop.

Traffic is served while a Snapshot is checked (a plugin's check holds the apply open until
a request has gone through the proxy meanwhile); a big Snapshot that fails, in its checks
or in its build on the loop, leaves the last good one serving; concurrent applies go live
in the order they were made. What it costs in time is measured in bench/config_growth.py.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import trio
import trio.testing

import meshcore
from meshcore.testing import UpstreamFactory, http_proxy_config, open_proxies

TIMEOUT = 20


def many_routes(count: int, cluster: str = "backend") -> list[dict[str, Any]]:
    """``count`` path routes that no test request takes, then one for everything."""
    routes: list[dict[str, Any]] = [
        {"name": f"r{i}", "match": {"path": f"/api/{i}/items"}, "cluster": cluster} for i in range(count)
    ]
    return [*routes, {"name": "all", "match": {"prefix": "/"}, "cluster": cluster}]


class Gate:
    """A plugin whose Snapshot check waits (in the apply's worker thread) until it is opened.

    Snapshots whose version starts with ``bad`` get a problem.
    """

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    @meshcore.hookimpl
    def meshcore_validate_snapshot(self, snapshot: meshcore.Snapshot) -> list[meshcore.ConfigProblem]:
        if not snapshot.version.startswith("gated"):
            return []
        self.entered.set()
        if not self.opened.wait(TIMEOUT):
            return [meshcore.ConfigProblem(path="", message="the gate never opened")]
        if snapshot.version.startswith("gated-bad"):
            return [meshcore.ConfigProblem(path="clusters", message="refused by the gate")]
        return []


def versioned(config: dict[str, Any], version: str, registry: meshcore.Registry) -> meshcore.Snapshot:
    return meshcore.snapshot_from_data(config, registry, version=version)


async def test_traffic_is_served_while_a_big_snapshot_is_checked(meshcore_upstream: UpstreamFactory) -> None:
    gate = Gate()
    registry = meshcore.build_registry(plugins=[("gate", gate)])
    old, new = await meshcore_upstream(name="old"), await meshcore_upstream(name="new")
    with trio.fail_after(TIMEOUT):
        async with open_proxies(registry) as proxies, trio.open_nursery() as nursery:
            proxy = await proxies(http_proxy_config([old.endpoint]))
            big = http_proxy_config([new.endpoint], routes=many_routes(2000))
            snapshot = versioned(big, "gated-1", registry)
            nursery.start_soon(proxy.proxy.apply_async, snapshot)
            await trio.to_thread.run_sync(gate.entered.wait)
            # The apply is under way, its check in a worker thread: the loop still serves.
            assert (await proxy.client().get("/")).header("x-upstream") == "old"
            assert proxy.snapshot.version != "gated-1"
            gate.opened.set()
            await proxy.proxy.wait_applied("gated-1")
            assert (await proxy.client().get("/api/7/items")).header("x-upstream") == "new"


async def test_a_big_snapshot_refused_by_its_checks_leaves_the_last_good_one_serving(
    meshcore_upstream: UpstreamFactory,
) -> None:
    gate = Gate()
    gate.opened.set()
    registry = meshcore.build_registry(plugins=[("gate", gate)])
    old, new = await meshcore_upstream(name="old"), await meshcore_upstream(name="new")
    with trio.fail_after(TIMEOUT):
        async with open_proxies(registry) as proxies:
            proxy = await proxies(http_proxy_config([old.endpoint]))
            live = proxy.snapshot.version
            big = http_proxy_config([new.endpoint], routes=many_routes(2000))
            with pytest.raises(meshcore.ConfigError) as caught:
                await proxy.proxy.apply_async(versioned(big, "gated-bad", registry))
            assert [str(p) for p in caught.value.problems] == ["clusters: refused by the gate"]
            assert proxy.snapshot.version == live
            assert proxy.proxy.health.last_rejection is not None
            assert (await proxy.client().get("/api/7/items")).header("x-upstream") == "old"


async def test_a_big_snapshot_that_fails_in_its_build_leaves_the_last_good_one_serving(
    meshcore_upstream: UpstreamFactory,
) -> None:
    """Checked in the worker thread, then refused on the loop: its listener's port is taken."""
    registry = meshcore.build_registry()
    old, new = await meshcore_upstream(name="old"), await meshcore_upstream(name="new")
    with trio.fail_after(TIMEOUT), trio.socket.socket() as taken:
        await taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with open_proxies(registry) as proxies:
            proxy = await proxies(http_proxy_config([old.endpoint]))
            live = proxy.snapshot.version
            big = http_proxy_config([new.endpoint], routes=many_routes(2000))
            big["listeners"].append({**big["listeners"][0], "name": "second", "address": f"127.0.0.1:{port}"})
            with pytest.raises(meshcore.ConfigError) as caught:
                await proxy.proxy.apply_async(meshcore.snapshot_from_data(big, registry))
            assert caught.value.stage == "apply"
            assert [p.path for p in caught.value.problems] == ["listeners[1].address"]
            assert proxy.snapshot.version == live
            assert (await proxy.client().get("/api/7/items")).header("x-upstream") == "old"
            # And the next good one applies, its route tables compiled off the loop.
            await proxy.apply_async(http_proxy_config([new.endpoint], routes=many_routes(10)))
            assert (await proxy.client().get("/api/7/items")).header("x-upstream") == "new"


async def test_concurrent_applies_go_live_in_the_order_they_were_made(
    meshcore_upstream: UpstreamFactory,
) -> None:
    gate = Gate()
    registry = meshcore.build_registry(plugins=[("gate", gate)])
    first, second = await meshcore_upstream(name="first"), await meshcore_upstream(name="second")
    applied: list[str] = []
    with trio.fail_after(TIMEOUT):
        async with open_proxies(registry) as proxies:
            proxy = await proxies(http_proxy_config([first.endpoint]))

            async def apply(config: dict[str, Any], version: str) -> None:
                await proxy.proxy.apply_async(versioned(config, version, registry))
                applied.append(version)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    apply, http_proxy_config([first.endpoint], routes=many_routes(100)), "gated-1"
                )
                await trio.to_thread.run_sync(gate.entered.wait)
                nursery.start_soon(apply, http_proxy_config([second.endpoint]), "plain-2")
                await trio.testing.wait_all_tasks_blocked()
                assert applied == []  # the second waits for the first, whose check is held
                gate.opened.set()
            assert applied == ["gated-1", "plain-2"]
            assert proxy.snapshot.version == "plain-2"
            assert (await proxy.client().get("/")).header("x-upstream") == "second"
