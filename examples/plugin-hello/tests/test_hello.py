"""Tests of the ``hello`` filter, written with pytest and meshcore.testing alone.

meshcore's pytest plugin comes with meshcore: its fixtures (``meshcore_proxy``,
``meshcore_upstream``, ``meshcore_registry``, ...) need no import and no conftest.py. These
tests expect meshcore and this plugin to be installed (``pip install -e .``), so that
meshcore finds ``hello`` through its entry point, as it will in production.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import meshcore
from meshcore.testing import (
    FilterHarness,
    ProxyFactory,
    SyncProxyFactory,
    SyncUpstreamFactory,
    UpstreamFactory,
    http_proxy_config,
    make_request,
    to_snapshot,
)

HELLO_YAML = Path(__file__).resolve().parent.parent / "hello.yaml"
TIMEOUT = 10  # seconds: no test waits longer for the network


# -- the plugin is installed -------------------------------------------------------------------


def test_meshcore_finds_the_plugin_through_its_entry_point(meshcore_registry: meshcore.Registry) -> None:
    owner = meshcore_registry.owner("http_filter", "hello")
    assert owner is not None, "install the plugin first: pip install -e ."
    assert owner.distribution == "meshcore-plugin-hello"


# -- the filter alone: FilterHarness, no sockets -----------------------------------------------


async def test_the_greeting_is_added_to_the_response() -> None:
    harness = FilterHarness("hello", {"greeting": "hi there", "header": "x-greeting"})
    response = await harness.request("GET", "/")
    assert response.status == 200
    assert response.headers.get_all("x-greeting") == ["hi there"]


async def test_without_config_the_defaults_apply() -> None:
    harness = FilterHarness("hello")  # as `- hello` alone in a config file
    response = await harness.request("GET", "/")
    assert response.headers.get_all("x-hello") == ["hello"]


async def test_repeat_adds_the_header_that_many_times() -> None:
    harness = FilterHarness("hello", {"repeat": 3})
    response = await harness.request("GET", "/")
    assert response.headers.get_all("x-hello") == ["hello"] * 3


async def test_the_answer_of_the_rest_of_the_chain_is_kept() -> None:
    seen: list[meshcore.Request] = []

    async def upstream(request: meshcore.Request) -> meshcore.Response:
        seen.append(request)
        return meshcore.Response.local(404, "not here\n")

    harness = FilterHarness("hello", {})
    harness.next = upstream  # play the rest of the chain: the router, an upstream
    request = make_request("GET", "/missing", headers={"x-user": "alice"})
    response = await harness(request)
    assert seen == [request]
    assert response.status == 404
    assert await response.body.read_all() == b"not here\n"
    assert response.headers.get("x-hello") == "hello"


# -- its config is validated -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "field", "message"),
    [
        ({"repeat": 0}, "repeat", "must be >= 1, got 0"),
        ({"header": ""}, "header", "must not be empty"),
        ({"greeting": 42}, "greeting", "must be a string, got 42"),
        ({"greting": "hi"}, "greting", "unknown field; did you mean 'greeting'?"),
    ],
)
def test_a_bad_config_is_reported_with_its_field_path(
    section: dict[str, object], field: str, message: str
) -> None:
    with pytest.raises(meshcore.ConfigError) as caught:
        FilterHarness("hello", section)
    (problem,) = caught.value.problems
    assert problem.path == f"http_filters[0].hello.{field}"
    assert problem.message == message


def test_the_example_config_file_is_valid(meshcore_registry: meshcore.Registry) -> None:
    snapshot = to_snapshot(HELLO_YAML, meshcore_registry)
    (listener,) = snapshot.listeners
    (manager,) = listener.filter_chains[0].filters
    hello, router = manager.config.http_filters
    assert (hello.name, router.name) == ("hello", "router")
    assert hello.config.header == "x-greeting"


# -- end to end: a real proxy on loopback, in front of a test upstream -------------------------


async def test_through_a_real_proxy(meshcore_upstream: UpstreamFactory, meshcore_proxy: ProxyFactory) -> None:
    with trio.fail_after(TIMEOUT):
        upstream = await meshcore_upstream(name="backend")
        config = http_proxy_config(
            [upstream.endpoint], http_filters=[{"hello": {"greeting": "hello from meshcore"}}, "router"]
        )
        proxy = await meshcore_proxy(config)
        response = await proxy.client().get("/anything")
    assert response.status == 200
    assert response.header("x-upstream") == "backend"  # the upstream answered ...
    assert response.header("x-hello") == "hello from meshcore"  # ... and hello added its header


async def test_a_reload_changes_the_greeting_and_keeps_the_port(
    meshcore_upstream: UpstreamFactory, meshcore_proxy: ProxyFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        upstream = await meshcore_upstream()
        hello = {"hello": {"greeting": "before"}}
        proxy = await meshcore_proxy(http_proxy_config([upstream.endpoint], http_filters=[hello, "router"]))
        port = proxy.address()[1]
        before = await proxy.client().get("/")
        hello = {"hello": {"greeting": "after"}}
        proxy.apply(http_proxy_config([upstream.endpoint], http_filters=[hello, "router"]))  # atomically
        after = await proxy.client().get("/")
    assert (before.header("x-hello"), after.header("x-hello")) == ("before", "after")
    assert proxy.address()[1] == port  # the listener kept its socket
    assert proxy.stats.value("http_downstream_rq_total", listener="ingress") == 2


def test_through_a_real_proxy_from_a_synchronous_test(
    meshcore_upstream_sync: SyncUpstreamFactory, meshcore_proxy_sync: SyncProxyFactory
) -> None:
    upstream = meshcore_upstream_sync(name="backend")
    proxy = meshcore_proxy_sync(http_proxy_config([upstream.endpoint], http_filters=["hello", "router"]))
    response = proxy.client().get("/")  # or any HTTP client library, at proxy.url("/")
    assert response.status == 200
    assert response.header("x-hello") == "hello"
