"""L7 filter chains through a real proxy: order, per-route overrides, access log, crashes."""

from __future__ import annotations

import json
from typing import Any

import attrs
import structlog
import trio

import meshcore
from meshcore.testing.client import fetch
from meshcore.testing.harness import http_proxy_config, start_proxy
from meshcore.testing.upstreams import serve_upstream


@attrs.frozen(kw_only=True)
class TagConfig:
    """Config of the test filter ``tag``."""

    value: str = "default"


class Tag:
    """Adds ``x-tag: VALUE`` to the request and to the response."""

    def __init__(self, config: TagConfig, _context: meshcore.FilterContext) -> None:
        self.value = config.value

    async def __call__(self, request: meshcore.Request, call_next: meshcore.HttpHandler) -> meshcore.Response:
        request.headers.add("x-tag", self.value)
        response = await call_next(request)
        response.headers.add("x-tag", self.value)
        return response


class Crash:
    """A filter with a bug: it raises on every request."""

    def __init__(self, _config: None, _context: meshcore.FilterContext) -> None:
        pass

    async def __call__(
        self, _request: meshcore.Request, _call_next: meshcore.HttpHandler
    ) -> meshcore.Response:
        msg = "filter bug"
        raise RuntimeError(msg)


class TestPlugin:
    @staticmethod
    @meshcore.hookimpl
    def meshcore_http_filters() -> list[meshcore.HttpFilterType]:
        return [
            meshcore.HttpFilterType(name="tag", factory=Tag, config=TagConfig),
            meshcore.HttpFilterType(name="crash", factory=Crash),
        ]


def registry() -> meshcore.Registry:
    return meshcore.build_registry(autoload=False, plugins=[("test-filters", TestPlugin())])


def upstream_saw(body: bytes, name: str) -> list[str]:
    headers: list[list[str]] = json.loads(body)["headers"]
    return [v for n, v in headers if n == name]


async def test_filters_run_in_order_and_overrides_apply_per_route(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        upstream = await nursery.start(serve_upstream)
        routes: list[dict[str, Any]] = [
            {"name": "plain", "match": {"prefix": "/plain"}, "cluster": "backend"},
            {
                "name": "off",
                "match": {"prefix": "/off"},
                "cluster": "backend",
                "filters": {"tag": "disabled"},
            },
            {
                "name": "changed",
                "match": {"prefix": "/changed"},
                "cluster": "backend",
                "filters": {"tag": {"value": "route-setting"}},
            },
        ]
        config = http_proxy_config(
            [upstream], routes=routes, http_filters=[{"tag": {"value": "outer"}}, "router"]
        )
        proxy = await start_proxy(nursery, config, registry=registry())
        address = proxy.address("ingress")

        plain = await fetch(address, "/plain")
        assert upstream_saw(plain.body, "x-tag") == ["outer"]
        assert plain.header("x-tag") == "outer"

        off = await fetch(address, "/off")
        assert upstream_saw(off.body, "x-tag") == []
        assert off.header("x-tag") is None

        changed = await fetch(address, "/changed")
        assert upstream_saw(changed.body, "x-tag") == ["route-setting"]
        nursery.cancel_scope.cancel()


async def test_access_log_has_one_line_per_request_when_enabled(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        upstream = await nursery.start(serve_upstream)
        config = http_proxy_config([upstream], listener={"access_log": True})
        proxy = await start_proxy(nursery, config)
        with structlog.testing.capture_logs() as logs:
            ok = await fetch(proxy.address("ingress"), "/bytes/7", host="svc.local")
        assert ok.status == 200
        lines = [entry for entry in logs if entry["event"] == "request_completed"]
        assert len(lines) == 1
        line = lines[0]
        assert line["method"] == "GET"
        assert line["authority"] == "svc.local"
        assert line["path"] == "/bytes/7"
        assert line["status"] == 200
        assert line["flags"] == "-"
        assert line["bytes_sent"] == 7
        assert line["cluster"] == "backend"
        assert line["route"] == "default"
        assert line["upstream"] == f"{upstream[0]}:{upstream[1]}"
        assert line["duration_ms"] >= 0
        nursery.cancel_scope.cancel()


async def test_access_log_is_off_by_default(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        upstream = await nursery.start(serve_upstream)
        proxy = await start_proxy(nursery, http_proxy_config([upstream]))
        with structlog.testing.capture_logs() as logs:
            await fetch(proxy.address("ingress"), "/bytes/1")
        assert [entry for entry in logs if entry["event"] == "request_completed"] == []
        nursery.cancel_scope.cancel()


async def test_a_crashing_filter_gets_a_500_and_the_proxy_keeps_serving(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        upstream = await nursery.start(serve_upstream)
        routes = [
            {"name": "bug", "match": {"prefix": "/bug"}, "cluster": "backend"},
            {
                "name": "fine",
                "match": {"prefix": "/"},
                "cluster": "backend",
                "filters": {"crash": "disabled"},
            },
        ]
        config = http_proxy_config([upstream], routes=routes, http_filters=["crash", "router"])
        proxy = await start_proxy(nursery, config, registry=registry())
        with structlog.testing.capture_logs() as logs:
            bug = await fetch(proxy.address("ingress"), "/bug")
        assert bug.status == 500
        assert any(entry["event"] == "filter_chain_crashed" for entry in logs)
        fine = await fetch(proxy.address("ingress"), "/fine")
        assert fine.status == 200
        nursery.cancel_scope.cancel()
