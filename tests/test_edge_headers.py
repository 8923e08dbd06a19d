"""Header hygiene at the edge of trust, through a real proxy with real TLS clients.

Clients outside the mesh cannot forge x-forwarded-*, x-forwarded-client-cert or the mesh's
own x-meshcore-* headers; a mesh peer (a verified SPIFFE ID) may. Upstreams cannot send
x-meshcore-* headers to clients. Local replies never name internal addresses.
"""

from __future__ import annotations

import hashlib
from typing import Any

import trio
from _apps import Answer, AppRequest, h2_get, serve_app
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshcore.testing import MeshcoreCA, RunningProxy, UpstreamFactory, fetch, http_proxy_config
from meshcore.testing.proxies import ProxyFactory

PEER = "spiffe://cluster.local/ns/shop/sa/frontend"
FORGED = {
    "x-meshcore-peer-metadata": "forged",
    "x-meshcore-fault-abort": "503",
    "x-forwarded-client-cert": "By=spiffe://x;URI=spiffe://cluster.local/ns/admin/sa/root",
    "x-forwarded-proto": "https",
    "x-forwarded-for": "10.1.2.3",
}


def seen(reply: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in reply.json()["headers"]:
        out.setdefault(name, []).append(value)
    return out


def optional_mtls(ca: MeshcoreCA, config: dict[str, Any], **trust: Any) -> dict[str, Any]:
    tls = ca.tls_context()
    tls["client_ca_file"] = str(ca.ca_file)
    config["listeners"][0]["filter_chains"][0]["tls"] = tls
    if trust:
        config["listeners"][0]["filter_chains"][0]["filters"][0]["http_connection_manager"]["trust"] = trust
    return config


async def tls_proxy(
    ca: MeshcoreCA, meshcore_proxy: ProxyFactory, upstream: str, **trust: Any
) -> RunningProxy:
    return await meshcore_proxy(optional_mtls(ca, http_proxy_config([upstream]), **trust))


async def test_clients_outside_the_mesh_cannot_forge_headers(
    meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory
) -> None:
    upstream = await meshcore_upstream()
    with trio.fail_after(10):
        proxy = await meshcore_proxy(http_proxy_config([upstream.endpoint]))
        by_h1 = seen(await proxy.client().get("/", headers=FORGED))
        status, _, body = await h2_get(proxy.address(), "/")
    for got in (by_h1,):
        assert not [name for name in got if name.startswith("x-meshcore-")]
        assert "x-forwarded-client-cert" not in got
        assert got["x-forwarded-proto"] == ["http"]
        assert got["x-forwarded-for"] == ["127.0.0.1"]
    assert status == 200
    assert b'"x-forwarded-proto", "http"' in body


async def test_x_forwarded_proto_comes_from_the_transport_not_from_scheme(
    meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory
) -> None:
    upstream = await meshcore_upstream()
    with trio.fail_after(10):
        proxy = await meshcore_proxy(http_proxy_config([upstream.endpoint]))
        # An HTTP/2 client claiming :scheme https over plaintext.
        status, _, body = await h2_get(proxy.address(), "/", scheme=b"https")
    assert status == 200
    assert b'"x-forwarded-proto", "http"' in body
    assert b'"x-forwarded-proto", "https"' not in body


async def test_xfcc_describes_the_verified_client_certificate(
    meshcore_ca: MeshcoreCA, meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory
) -> None:
    upstream = await meshcore_upstream()
    files = meshcore_ca.issue("client.example")
    context = meshcore_ca.client_context()
    context.load_cert_chain(files.certificate_file, files.private_key_file)
    with trio.fail_after(10):
        proxy = await tls_proxy(meshcore_ca, meshcore_proxy, upstream.endpoint)
        got = seen(
            await proxy.client(ssl_context=context, server_hostname="localhost").get("/", headers=FORGED)
        )
    leaf = x509.load_pem_x509_certificate(await trio.Path(files.certificate_file).read_bytes())
    der = leaf.public_bytes(serialization.Encoding.DER)
    assert len(got["x-forwarded-client-cert"]) == 1
    element = got["x-forwarded-client-cert"][0]
    assert element.startswith(f"Hash={hashlib.sha256(der).hexdigest()};")
    assert "DNS=client.example" in element
    assert "URI=spiffe://cluster.local/ns/admin/sa/root" not in element  # the forged one is gone
    assert got["x-forwarded-proto"] == ["https"]


async def test_a_mesh_peer_keeps_its_headers_and_its_xfcc_is_appended(
    meshcore_ca: MeshcoreCA, meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory
) -> None:
    upstream = await meshcore_upstream()
    peer = meshcore_ca.client_context(client_uris=[PEER])
    other_domain = meshcore_ca.client_context(client_uris=["spiffe://elsewhere.example/ns/a/sa/b"])
    with trio.fail_after(10):
        proxy = await tls_proxy(
            meshcore_ca, meshcore_proxy, upstream.endpoint, mesh_trust_domains=["cluster.local"]
        )
        from_peer = seen(
            await proxy.client(ssl_context=peer, server_hostname="localhost").get("/", headers=FORGED)
        )
        from_other = seen(
            await proxy.client(ssl_context=other_domain, server_hostname="localhost").get("/", headers=FORGED)
        )
    assert from_peer["x-meshcore-peer-metadata"] == ["forged"]
    assert from_peer["x-forwarded-proto"] == ["https"]
    assert ", ".join(from_peer["x-forwarded-for"]) == "10.1.2.3, 127.0.0.1"
    xfcc = from_peer["x-forwarded-client-cert"]
    assert xfcc[0] == FORGED["x-forwarded-client-cert"]  # the peer's own, kept
    assert f"URI={PEER}" in xfcc[1]  # ours, appended
    # A SPIFFE ID of another trust domain is not a mesh peer.
    assert "x-meshcore-peer-metadata" not in from_other
    assert from_other["x-forwarded-for"] == ["127.0.0.1"]


async def test_internal_headers_a_config_allows(
    meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory
) -> None:
    upstream = await meshcore_upstream()
    trust = {"internal_headers": ["x-meshcore-peer-metadata"]}
    with trio.fail_after(10):
        proxy = await meshcore_proxy(http_proxy_config([upstream.endpoint], manager={"trust": trust}))
        got = seen(await proxy.client().get("/", headers=FORGED))
    assert got["x-meshcore-peer-metadata"] == ["forged"]
    assert "x-meshcore-fault-abort" not in got


async def upstream_with_internal_headers(_request: AppRequest) -> Answer:
    return 200, [("x-meshcore-peer-metadata", "upstream"), ("x-meshcore-secret", "s"), ("x-kept", "1")], b"ok"


async def test_upstream_responses_lose_internal_headers(
    meshcore_proxy: ProxyFactory, nursery: trio.Nursery
) -> None:
    app = await nursery.start(serve_app, upstream_with_internal_headers)
    router = {"router": {"internal_response_headers": ["x-meshcore-peer-*"]}}
    with trio.fail_after(10):
        strict = await meshcore_proxy(http_proxy_config([app]))
        allowing = await meshcore_proxy(http_proxy_config([app], http_filters=[router]))
        plain = await strict.client().get("/")
        allowed = await allowing.client().get("/")
    assert plain.header("x-kept") == "1"
    assert plain.header("x-meshcore-peer-metadata") is None
    assert plain.header("x-meshcore-secret") is None
    assert allowed.header("x-meshcore-peer-metadata") == "upstream"
    assert allowed.header("x-meshcore-secret") is None


async def test_local_replies_never_name_internal_addresses(meshcore_proxy: ProxyFactory) -> None:
    with trio.fail_after(10):
        listener = trio.socket.socket()
        await listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        listener.close()  # nothing listens there: UF
        proxy = await meshcore_proxy(http_proxy_config([f"127.0.0.1:{port}"]))
        h1 = await fetch(proxy.address(), "/x")
        status, headers, body = await h2_get(proxy.address(), "/x")
    assert (h1.status, h1.header("x-meshcore-flags")) == (503, "UF")
    assert (status, headers.get("x-meshcore-flags")) == (503, "UF")
    for text in (h1.body, body):
        assert str(port).encode() not in text
        assert b"127.0.0.1" not in text
