"""x-request-id through a real proxy: generated, kept from a mesh peer, replaced at the edge of trust."""

from __future__ import annotations

import json
import uuid
from typing import Any

import trio

from meshcore.http.messages import Request
from meshcore.telemetry.request_id import RequestIds, new_request_id
from meshcore.testing import MeshcoreCA, UpstreamFactory
from meshcore.testing.client import fetch
from meshcore.testing.filters import make_request
from meshcore.testing.harness import http_proxy_config, start_proxy
from meshcore.testing.proxies import ProxyFactory
from meshcore.testing.upstreams import serve_upstream

PEER = "spiffe://cluster.local/ns/shop/sa/frontend"


def sent_upstream(body: bytes) -> list[str]:
    headers: list[list[str]] = json.loads(body)["headers"]
    return [v for n, v in headers if n == "x-request-id"]


async def proxied(nursery: trio.Nursery, manager: dict[str, Any] | None = None) -> tuple[str, int]:
    upstream = await nursery.start(serve_upstream)
    proxy = await start_proxy(nursery, http_proxy_config([upstream], manager=manager))
    return proxy.address("ingress")


async def test_a_request_without_an_id_gets_a_uuid_and_keeps_it_upstream(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        address = await proxied(nursery)
        first = await fetch(address, "/a")
        second = await fetch(address, "/b")
    (one,) = sent_upstream(first.body)
    (two,) = sent_upstream(second.body)
    assert uuid.UUID(one).version == 4
    assert one != two
    assert first.header("x-request-id") is None  # not echoed unless configured


def mtls_config(ca: MeshcoreCA, upstream: str, manager: dict[str, Any]) -> dict[str, Any]:
    """A proxy whose listener asks for (optional) client certificates of ``ca``."""
    config = http_proxy_config([upstream], manager=manager)
    tls = ca.tls_context()
    tls["client_ca_file"] = str(ca.ca_file)
    config["listeners"][0]["filter_chains"][0]["tls"] = tls
    return config


async def test_a_mesh_peers_id_is_kept_and_echoed_and_an_outsiders_replaced(
    meshcore_ca: MeshcoreCA, meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory
) -> None:
    """Whom the id is trusted from is what the edge of trust says (``trust.mesh_trust_domains``)."""
    upstream = await meshcore_upstream()
    manager = {"request_id": {"set_in_response": True}, "trust": {"mesh_trust_domains": ["cluster.local"]}}
    peer = meshcore_ca.client_context(client_uris=[PEER])
    other_domain = meshcore_ca.client_context(client_uris=["spiffe://elsewhere.example/ns/a/sa/b"])
    no_certificate = meshcore_ca.client_context()
    with trio.fail_after(10):
        proxy = await meshcore_proxy(mtls_config(meshcore_ca, upstream.endpoint, manager))
        replies = [
            await proxy.client(ssl_context=context, server_hostname="localhost").get(
                "/", headers={"x-request-id": "abc-123"}
            )
            for context in (peer, other_domain, no_certificate)
        ]
    from_peer, *from_outside = replies
    assert sent_upstream(from_peer.body) == ["abc-123"]
    assert from_peer.header("x-request-id") == "abc-123"
    for reply in from_outside:
        (new,) = sent_upstream(reply.body)
        assert uuid.UUID(new).version == 4
        assert reply.header("x-request-id") == new


async def test_at_the_edge_a_clients_id_is_replaced_unless_preserved(nursery: trio.Nursery) -> None:
    """A plaintext client, even on loopback, is outside the mesh: an address proves nothing."""
    with trio.fail_after(10):
        edge = await proxied(nursery)
        replaced = await fetch(edge, "/", headers={"x-request-id": "forged"})
        trusting = await proxied(nursery, {"request_id": {"preserve_external": True}})
        kept = await fetch(trusting, "/", headers={"x-request-id": "forged"})
    (new,) = sent_upstream(replaced.body)
    assert new != "forged"
    assert uuid.UUID(new).version == 4
    assert sent_upstream(kept.body) == ["forged"]


async def test_generation_can_be_turned_off(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        address = await proxied(nursery, {"request_id": {"generate": False}})
        response = await fetch(address, "/")
    assert sent_upstream(response.body) == []


def request_with(value: str | None, peer: str = "203.0.113.9:5000") -> Request:
    headers = {"x-request-id": value} if value is not None else {}
    return make_request(headers=headers, peer=peer)


def test_ids_that_are_too_long_or_not_printable_are_replaced() -> None:
    ids = RequestIds()
    for bad in ("x" * 201, "tab\there", ""):
        request = request_with(bad)
        request.info.internal = True  # trusted, but not with that
        ids.apply(request)
        assert request.info.request_id != bad
        assert request.headers.get_all("x-request-id") == [request.info.request_id]


def test_only_an_internal_requests_id_is_kept() -> None:
    ids = RequestIds(None)
    outside = request_with("from-outside")
    ids.apply(outside)
    assert outside.info.request_id != "from-outside"
    inside = request_with("from-a-sidecar")
    inside.info.internal = True  # what the edge of trust says of a mesh peer's request
    ids.apply(inside)
    assert inside.info.request_id == "from-a-sidecar"
    assert inside.headers.get_all("x-request-id") == ["from-a-sidecar"]


def test_new_ids_are_version_4_uuids() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(uuid.UUID(i).version == 4 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)
