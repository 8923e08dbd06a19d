"""Proxy-owned services: shared by key across Snapshots, started on apply, stopped when unused."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio

import meshcore
from meshcore.testing.harness import http_proxy_config, start_proxy


class Ticker:
    """A service that records its life."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.stopped = trio.Event()
        self.started = trio.Event()
        self.flushed = trio.Event()

    async def run(self) -> None:
        self.log.append(f"run {self.name}")
        self.started.set()
        await self.stopped.wait()
        self.log.append(f"flushed {self.name}")
        self.flushed.set()

    def stop(self) -> None:
        self.stopped.set()


@attrs.frozen(kw_only=True)
class UsesConfig:
    name: str


def plugin(log: list[str], made: dict[str, Ticker]) -> Any:
    class Uses:
        def __init__(self, config: UsesConfig, context: meshcore.FilterContext) -> None:
            assert context.services is not None

            def make() -> Ticker:
                made[config.name] = Ticker(config.name, log)
                return made[config.name]

            self.ticker = context.services.get(("ticker", config.name), make)

        async def __call__(
            self, request: meshcore.Request, call_next: meshcore.HttpHandler
        ) -> meshcore.Response:
            return await call_next(request)

    class Plugin:
        @staticmethod
        @meshcore.hookimpl
        def meshcore_http_filters() -> list[meshcore.HttpFilterType]:
            return [meshcore.HttpFilterType(name="uses", factory=Uses, config=UsesConfig)]

    return Plugin()


def config(*names: str) -> dict[str, Any]:
    return http_proxy_config(
        ["127.0.0.1:1"], http_filters=[*({"uses": {"name": n}} for n in names), "router"]
    )


async def test_services_live_while_a_snapshot_uses_them_and_flush_when_the_proxy_stops() -> None:
    log: list[str] = []
    made: dict[str, Ticker] = {}
    registry = meshcore.build_registry(autoload=False, plugins=[("uses", plugin(log, made))])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            proxy = await start_proxy(nursery, config("a"), registry=registry)
            await made["a"].started.wait()
            first = made["a"]
            # Same key in the next Snapshot: the same object, still running.
            proxy.apply(meshcore.snapshot_from_data(config("a", "b"), registry))
            assert made["a"] is first
            await made["b"].started.wait()
            # A rejected Snapshot starts nothing.
            bad = config("c")
            bad["listeners"][0]["address"] = "192.0.2.1:1"  # not an address of this machine
            with pytest.raises(meshcore.ConfigError):
                proxy.apply(meshcore.snapshot_from_data(bad, registry))
            # "a" no longer used: stopped (flushed) after the apply.
            proxy.apply(meshcore.snapshot_from_data(config("b"), registry))
            await first.flushed.wait()
            proxy.drain()
    assert log == ["run a", "run b", "flushed a", "flushed b"]
    assert "run c" not in log
