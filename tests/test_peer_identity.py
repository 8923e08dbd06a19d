"""HTTP filters see the downstream connection: addresses, TLS and the peer's SPIFFE identity.

The filter below uses the public API only (``meshcore.*``), as a third-party plugin would.
"""

from __future__ import annotations

import types
from typing import Any

import attrs
import httpx
import pytest
import trio

import meshcore
from meshcore import join_host_port, split_host_port
from meshcore.testing import FilterHarness, MeshcoreCA, Upstream, UpstreamFactory, http_proxy_config
from meshcore.testing.proxies import ProxyFactory

SPIFFE_ID = "spiffe://cluster.local/ns/shop/sa/frontend"


@attrs.frozen(kw_only=True)
class WhoConfig:
    """No settings."""


class Who:
    """Answers with what the request's connection says about the peer."""

    def __init__(self, _config: WhoConfig, _context: meshcore.FilterContext) -> None:
        pass

    async def __call__(
        self, request: meshcore.Request, _call_next: meshcore.HttpHandler
    ) -> meshcore.Response:
        conn = request.connection
        assert conn is not None
        return meshcore.Response.local(
            200,
            headers=[
                ("x-peer-principal", conn.peer_principal or "-"),
                ("x-peer-uri-sans", ",".join(conn.peer_uri_sans) or "-"),
                ("x-tls-version", conn.tls_version or "-"),
                ("x-peer-host", conn.peer_host),
                ("x-local-port", str(conn.local_port)),
                ("x-alpn", conn.alpn or "-"),
                ("x-connection-id", str(conn.id)),
            ],
        )


@meshcore.hookimpl
def meshcore_http_filters() -> list[meshcore.HttpFilterType]:
    return [meshcore.HttpFilterType(name="who", factory=Who, config=WhoConfig, ends_chain=True)]


@pytest.fixture
def meshcore_registry() -> meshcore.Registry:
    plugin = types.ModuleType("who_plugin")
    plugin.meshcore_http_filters = meshcore_http_filters  # type: ignore[attr-defined]
    return meshcore.build_registry(plugins=[("who_plugin", plugin)])


def _config(upstream: Upstream) -> dict[str, Any]:
    config = http_proxy_config([upstream.endpoint])
    hcm = config["listeners"][0]["filter_chains"][0]["filters"][0]["http_connection_manager"]
    hcm["http_filters"] = ["who"]
    return config


async def test_a_filter_reads_the_spiffe_id_of_a_client_certificate(
    meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory, meshcore_ca: MeshcoreCA
) -> None:
    upstream = await meshcore_upstream()
    config = meshcore_ca.with_tls(_config(upstream), require_client_certificate=True)
    with trio.fail_after(10):
        proxy = await meshcore_proxy(config)
        context = meshcore_ca.client_context(client_uris=[SPIFFE_ID])
        response = await proxy.client(ssl_context=context).get("/")
    assert response.status == 200
    assert response.header("x-peer-principal") == SPIFFE_ID
    assert response.header("x-peer-uri-sans") == SPIFFE_ID
    assert (response.header("x-tls-version") or "").startswith("TLSv1.")
    assert response.header("x-peer-host") == "127.0.0.1"
    assert int(response.header("x-local-port") or 0) == proxy.address("ingress")[1]


async def test_a_plaintext_connection_has_no_identity(
    meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory
) -> None:
    upstream = await meshcore_upstream()
    with trio.fail_after(10):
        proxy = await meshcore_proxy(_config(upstream))
        host, port = proxy.address("ingress")
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            first = await client.get("/")
            second = await client.get("/")
    assert first.headers["x-peer-principal"] == "-"
    assert first.headers["x-tls-version"] == "-"
    # Both requests came on one kept-alive connection, and the filter saw that.
    assert first.headers["x-connection-id"] == second.headers["x-connection-id"]


async def test_a_certificate_without_a_spiffe_uri_has_no_principal(
    meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory, meshcore_ca: MeshcoreCA
) -> None:
    upstream = await meshcore_upstream()
    config = meshcore_ca.with_tls(_config(upstream), require_client_certificate=True)
    with trio.fail_after(10):
        proxy = await meshcore_proxy(config)
        context = meshcore_ca.client_context(client_uris=["https://not-spiffe.example/x"])
        response = await proxy.client(ssl_context=context).get("/")
    assert response.header("x-peer-principal") == "-"
    assert response.header("x-peer-uri-sans") == "https://not-spiffe.example/x"


def test_split_host_port_handles_ipv6_brackets() -> None:
    assert split_host_port("127.0.0.1:80") == ("127.0.0.1", 80)
    assert split_host_port("[::1]:8443") == ("::1", 8443)
    assert split_host_port("::1") == ("::1", 0)
    assert split_host_port("example.com") == ("example.com", 0)


@pytest.mark.parametrize(
    ("host", "port"), [("127.0.0.1", 80), ("::1", 8443), ("fe80::1%eth0", 1), ("example.com", 0)]
)
def test_join_host_port_is_the_inverse_of_split_host_port(host: str, port: int) -> None:
    assert split_host_port(join_host_port(host, port)) == (host, port)


async def test_filters_see_an_ipv6_client_address_without_brackets() -> None:
    # router's x-forwarded-for and local_ratelimit's client_address key read the client's
    # address the same way as Connection.peer_host: split_host_port, brackets removed.
    harness = FilterHarness(
        "local_ratelimit",
        {
            "max_tokens": 100,
            "fill_interval": "1h",
            "descriptors": [{"key": "client_address", "max_tokens": 1, "fill_interval": "1h"}],
        },
    )
    assert (await harness.request(peer="[::1]:40000")).status == 200
    assert (await harness.request(peer="[::1]:40001")).status == 429  # same client, other port
    assert (await harness.request(peer="127.0.0.1:40000")).status == 200
