"""The pytest fixtures of meshcore.testing, used the way a user's test suite uses them.

Trio tests start proxies and upstreams with ``meshcore_proxy`` / ``meshcore_upstream``;
plain synchronous tests do the same with ``meshcore_proxy_sync`` / ``meshcore_upstream_sync``,
which run them in a trio loop on a background thread, and talk to them with httpx, the way
a team puts a proxy between its application and a dependency to inject faults.
"""

from __future__ import annotations

import json
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from meshcore import ConfigError
from meshcore.testing import (
    BackgroundLoop,
    IncompleteResponse,
    MeshcoreCA,
    ProxyFactory,
    SyncProxyFactory,
    SyncUpstreamFactory,
    UpstreamFactory,
    http_proxy_config,
)

TIMEOUT = 10  # seconds: every trio test is bounded by this
DELAY = 0.5  # the injected delay, in seconds
DELAY_MARGIN = 0.3  # how much longer than DELAY a delayed request may take on a busy machine


def two_upstream_config(first: str, second: str, *, to: str) -> dict[str, Any]:
    """Clusters "a" and "b"; every request goes to cluster ``to``."""
    config = http_proxy_config([first], routes=[{"name": "all", "match": {"prefix": "/"}, "cluster": to}])
    config["clusters"] = [{"name": "a", "endpoints": [first]}, {"name": "b", "endpoints": [second]}]
    return config


# -- trio tests --------------------------------------------------------------------------------


async def test_a_request_goes_through_the_proxy_to_the_upstream(
    meshcore_upstream: UpstreamFactory, meshcore_proxy: ProxyFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        upstream = await meshcore_upstream(name="backend")
        proxy = await meshcore_proxy(http_proxy_config([upstream.endpoint]))
        response = await proxy.client().get("/hello?x=1", headers={"x-user": "alice"})
        posted = await proxy.client().post("/echo", b"ping" * 1000)
    assert response.status == 200
    assert response.header("x-upstream") == "backend"
    seen = response.json()
    assert seen["path"] == "/hello?x=1"
    assert ["x-user", "alice"] in seen["headers"]
    assert posted.status == 200
    assert posted.body == b"ping" * 1000
    assert proxy.stats.value("http_downstream_rq_total", listener="ingress") == 2
    assert proxy.url("/a/b") == f"http://127.0.0.1:{proxy.address()[1]}/a/b"
    assert proxy.address("ingress") == proxy.address()


async def test_every_path_of_the_upstream_answers_through_the_proxy(
    meshcore_upstream: UpstreamFactory, meshcore_proxy: ProxyFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        upstream = await meshcore_upstream()
        client = (await meshcore_proxy(http_proxy_config([upstream.endpoint]))).client()
        status = await client.get("/status/418")
        sized = await client.get("/bytes/70000")
        chunked = await client.get("/chunks/3")
        start = trio.current_time()
        slow = await client.get("/delay/50")
        slow_took = trio.current_time() - start
        with pytest.raises(IncompleteResponse, match="received 10 bytes, expected 21"):
            await client.get("/reset/10")
    assert status.status == 418
    assert sized.body == b"x" * 70000
    assert chunked.body == b"c" * 3072
    assert slow.status == 200
    assert slow_took >= 0.05


async def test_a_config_file_written_for_production_runs_on_loopback_ports(
    tmp_path: Path, meshcore_upstream: UpstreamFactory, meshcore_proxy: ProxyFactory
) -> None:
    upstream = await meshcore_upstream()
    config = http_proxy_config([upstream.endpoint])
    config["listeners"][0]["address"] = "0.0.0.0:8080"
    config["admin"] = {"address": "0.0.0.0:9901"}
    file = tmp_path / "proxy.json"
    file.write_text(json.dumps(config))
    with trio.fail_after(TIMEOUT):
        proxy = await meshcore_proxy(file)
        response = await proxy.client().get("/")
        assert proxy.admin_address is not None
        admin = await trio.open_tcp_stream(*proxy.admin_address)
        await admin.aclose()
    assert response.status == 200
    host, port = proxy.address()
    assert host == "127.0.0.1"
    assert port not in (0, 8080)
    assert proxy.admin_address[0] == "127.0.0.1"
    assert proxy.admin_address[1] not in (0, 9901)


async def test_apply_reloads_on_the_same_port(
    meshcore_upstream: UpstreamFactory, meshcore_proxy: ProxyFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        a = await meshcore_upstream(name="a")
        b = await meshcore_upstream(name="b")
        proxy = await meshcore_proxy(two_upstream_config(a.endpoint, b.endpoint, to="a"))
        before = await proxy.client().get("/")
        port = proxy.address()
        snapshot = proxy.apply(two_upstream_config(a.endpoint, b.endpoint, to="b"))
        after = await proxy.client().get("/")
    assert before.header("x-upstream") == "a"
    assert after.header("x-upstream") == "b"
    assert proxy.address() == port
    assert proxy.snapshot is snapshot
    assert proxy.stats.value("config_snapshots_applied") == 2


async def test_a_bad_config_is_refused_and_a_bad_reload_keeps_the_old_config(
    meshcore_upstream: UpstreamFactory, meshcore_proxy: ProxyFactory
) -> None:
    with pytest.raises(ConfigError, match=r"clusters\[0\]\.endpoints"):
        await meshcore_proxy(http_proxy_config(["nowhere"]))
    upstream = await meshcore_upstream(name="good")
    with trio.fail_after(TIMEOUT):
        proxy = await meshcore_proxy(http_proxy_config([upstream.endpoint]))
        with pytest.raises(ConfigError, match="unknown HTTP filter 'no_such_filter'"):
            proxy.apply(http_proxy_config([upstream.endpoint], http_filters=["no_such_filter", "router"]))
        response = await proxy.client().get("/")
    assert response.header("x-upstream") == "good"


async def test_a_listener_that_cannot_listen_is_a_config_error(meshcore_proxy: ProxyFactory) -> None:
    config = http_proxy_config(["127.0.0.1:1"])
    config["listeners"][0]["address"] = "192.0.2.1:0"  # TEST-NET-1: not an address of this host
    with pytest.raises(ConfigError, match=r"cannot listen on 192\.0\.2\.1:0"):
        await meshcore_proxy(config, ephemeral=False)


async def test_drain_stops_the_proxy(
    meshcore_upstream: UpstreamFactory, meshcore_proxy: ProxyFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        upstream = await meshcore_upstream()
        proxy = await meshcore_proxy(http_proxy_config([upstream.endpoint]))
        address = proxy.address()
        assert (await proxy.client().get("/")).status == 200
        await proxy.drain()
        assert proxy.stopped
        with pytest.raises(OSError, match="connect"):
            await trio.open_tcp_stream(*address)


async def test_a_proxy_with_several_listeners_asks_which_one(meshcore_proxy: ProxyFactory) -> None:
    config = http_proxy_config(["127.0.0.1:1"])
    second = json.loads(json.dumps(config["listeners"][0]))
    second["name"] = "other"
    config["listeners"].append(second)
    proxy = await meshcore_proxy(config)
    assert proxy.address("ingress") != proxy.address("other")
    with pytest.raises(
        LookupError, match=r"several listeners: name one \(this proxy has 'ingress', 'other'\)"
    ):
        proxy.address()
    with pytest.raises(LookupError, match="no listener 'missing'"):
        proxy.url("/", listener="missing")


async def test_proxies_chain_through_their_endpoints(
    meshcore_upstream: UpstreamFactory, meshcore_proxy: ProxyFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        upstream = await meshcore_upstream(name="end")
        inner = await meshcore_proxy(http_proxy_config([upstream.endpoint]))
        outer = await meshcore_proxy(http_proxy_config([inner.endpoint()]))
        response = await outer.client().get("/")
    assert response.header("x-upstream") == "end"
    assert inner.stats.value("http_downstream_rq_total", listener="ingress") == 1


async def test_a_tls_listener_with_the_test_ca(
    meshcore_ca: MeshcoreCA, meshcore_upstream: UpstreamFactory, meshcore_proxy: ProxyFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        upstream = await meshcore_upstream(name="secure")
        proxy = await meshcore_proxy(meshcore_ca.with_tls(http_proxy_config([upstream.endpoint])))
        response = await proxy.client(ssl_context=meshcore_ca.client_context()).get("/")
        by_name = await proxy.client(ssl_context=meshcore_ca.client_context(), host="localhost").get("/")
        with pytest.raises(trio.BrokenResourceError) as refused:
            await proxy.client(ssl_context=ssl.create_default_context()).get("/")
    assert proxy.url("/x").startswith("https://127.0.0.1:")
    assert response.status == 200
    assert response.header("x-upstream") == "secure"
    assert by_name.status == 200
    assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)


async def test_mutual_tls_with_the_test_ca(
    meshcore_ca: MeshcoreCA, meshcore_upstream: UpstreamFactory, meshcore_proxy: ProxyFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        upstream = await meshcore_upstream()
        config = meshcore_ca.with_tls(http_proxy_config([upstream.endpoint]), require_client_certificate=True)
        proxy = await meshcore_proxy(config)
        with_cert = proxy.client(ssl_context=meshcore_ca.client_context(client_identity="client.test"))
        response = await with_cert.get("/")
        # TLS 1.3: the server checks the client's certificate after the client's handshake is done.
        with pytest.raises((trio.BrokenResourceError, ConnectionError)):
            await proxy.client(ssl_context=meshcore_ca.client_context()).get("/")
    assert response.status == 200


def test_with_tls_names_a_missing_listener(meshcore_ca: MeshcoreCA) -> None:
    assert meshcore_ca.ca_file.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    with pytest.raises(LookupError, match="no listener 'nope'"):
        meshcore_ca.with_tls(http_proxy_config(["127.0.0.1:1"]), listener="nope")


# -- synchronous tests: no trio in the test ----------------------------------------------------


def test_sync_fault_injection_between_a_client_library_and_an_upstream(
    meshcore_upstream_sync: SyncUpstreamFactory, meshcore_proxy_sync: SyncProxyFactory
) -> None:
    """The Toxiproxy use: a 500 ms delay, then a 503 abort, seen by httpx (a sync client)."""
    dependency = meshcore_upstream_sync(name="dependency")
    delay = {"fault": {"delay": {"fixed": "500ms", "percentage": 100}}}
    abort = {"fault": {"abort": {"http_status": 503, "percentage": 100}}}
    proxy = meshcore_proxy_sync(http_proxy_config([dependency.endpoint], http_filters=[delay, "router"]))
    with httpx.Client(timeout=5) as client:
        start = time.monotonic()
        delayed = client.get(proxy.url("/orders/42"))
        took = time.monotonic() - start
        proxy.apply(http_proxy_config([dependency.endpoint], http_filters=[abort, "router"]))
        aborted = client.get(proxy.url("/orders/42"))
    assert delayed.status_code == 200
    assert delayed.headers["x-upstream"] == "dependency"
    assert DELAY <= took < DELAY + DELAY_MARGIN
    assert aborted.status_code == 503
    assert aborted.headers["x-meshcore-flags"] == "FI"
    assert "x-upstream" not in aborted.headers


def test_sync_proxy_and_upstream_with_httpx_and_the_sync_client(
    meshcore_upstream_sync: SyncUpstreamFactory, meshcore_proxy_sync: SyncProxyFactory
) -> None:
    a = meshcore_upstream_sync(name="a")
    b = meshcore_upstream_sync(name="b")
    proxy = meshcore_proxy_sync(two_upstream_config(a.endpoint, b.endpoint, to="a"))
    with httpx.Client(timeout=5) as client:
        direct = client.get(a.url("/direct"))
        first = client.get(proxy.url("/one"), headers={"x-test": "1"})
        port = proxy.address()
        proxy.apply(two_upstream_config(a.endpoint, b.endpoint, to="b"))
        second = client.get(proxy.url("/two"))
    ours = proxy.client().post("/echo", b"body")
    assert direct.json()["upstream"] == "a"
    assert first.headers["x-upstream"] == "a"
    assert ["x-test", "1"] in first.json()["headers"]
    assert second.headers["x-upstream"] == "b"
    assert proxy.address() == port
    assert ours.status == 200
    assert ours.body == b"body"
    assert proxy.stats.value("http_downstream_rq_total", listener="ingress") == 3
    proxy.drain()
    with pytest.raises(httpx.ConnectError):
        httpx.get(proxy.url("/"), timeout=5)


def test_sync_bad_config_raises_in_the_test(meshcore_proxy_sync: SyncProxyFactory) -> None:
    with pytest.raises(ConfigError, match=r"clusters\[0\]\.endpoints\[0\]"):
        meshcore_proxy_sync(http_proxy_config(["no-port"]))
    config = http_proxy_config(["127.0.0.1:1"])
    config["listeners"][0]["address"] = "192.0.2.1:0"
    with pytest.raises(ConfigError, match="cannot listen"):
        meshcore_proxy_sync(config, ephemeral=False)


def test_background_loop_calls_are_bounded_and_end_with_the_loop() -> None:
    loop = BackgroundLoop(timeout=5)
    with loop:
        with pytest.raises(trio.TooSlowError):
            loop.run(trio.sleep, 10, timeout=0.05)
        assert loop.run(trio.to_thread.run_sync, lambda: 42) == 42
        upstream = loop.start_upstream(name="x")
    with pytest.raises(RuntimeError, match="not running"):
        loop.start_upstream()
    with pytest.raises(httpx.ConnectError):
        httpx.get(upstream.url("/"), timeout=5)


@pytest.mark.parametrize("during", [False, True], ids=["before-the-call", "during-the-call"])
def test_a_failure_inside_the_background_loop_is_raised_in_the_test(during: bool) -> None:
    called = trio.Event()

    async def crash() -> None:
        if during:
            await called.wait()
        msg = "boom"
        raise ValueError(msg)

    async def call() -> None:
        called.set()
        await trio.sleep(10)

    loop = BackgroundLoop(timeout=5)
    loop.start()
    loop.run_sync(lambda: loop._upstreams._nursery.start_soon(crash))  # type: ignore[union-attr]  # set by start()
    with pytest.raises(RuntimeError, match="has stopped") as stopped:
        loop.run(call)
    assert isinstance(stopped.value.__cause__, BaseExceptionGroup)
    with pytest.raises(RuntimeError, match="background trio loop failed") as failed:
        loop.close()
    assert isinstance(failed.value.__cause__, BaseExceptionGroup)
    assert failed.value.__cause__.subgroup(ValueError) is not None
