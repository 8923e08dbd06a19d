"""What load balancers and filters see, proved with plugins of an installed distribution.

``header_hash`` (tests/testplugins) is a ring hash keyed by a request header, possible as a
plugin because a picker gets the request; ``peer_identity`` reads the caller's SPIFFE ID
from the client certificate through ``request.connection``. Both use the public API only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import trio

import meshcore
from meshcore.config import Endpoint
from meshcore.testing import MeshcoreCA, UpstreamFactory, http_proxy_config, open_proxies

TIMEOUT = 20
SPIFFE_ID = "spiffe://cluster.local/ns/shop/sa/frontend"
PLUGINS = Path(__file__).resolve().parent / "testplugins" / "src" / "meshcore_testplugins"


def test_the_test_plugins_use_only_the_public_api() -> None:
    for source in PLUGINS.glob("*.py"):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        used = {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "meshcore"
        }
        assert used <= set(meshcore.__all__), (source.name, used - set(meshcore.__all__))
        imported = [
            alias.name if isinstance(node, ast.Import) else node.module or ""
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        ]
        assert "meshcore" in imported
        assert not [m for m in imported if m.startswith("meshcore.")], (source.name, imported)


@pytest.mark.usefixtures("installed_testplugins")
async def test_a_ring_hash_policy_plugin_picks_by_a_request_header(
    meshcore_upstream: UpstreamFactory,
) -> None:
    registry = meshcore.build_registry()
    upstreams = [await meshcore_upstream(name=f"u{i}") for i in range(3)]
    cluster = {"lb_policy": {"header_hash": {"header": "x-user", "replicas": 50}}}
    users = [f"user-{i}" for i in range(30)]
    with trio.fail_after(TIMEOUT):
        async with open_proxies(registry) as proxies:
            proxy = await proxies(http_proxy_config([u.endpoint for u in upstreams], cluster=cluster))
            client = proxy.client()

            async def served(user: str) -> str:
                response = await client.get("/", headers={"x-user": user})
                name = response.header("x-upstream")
                assert name is not None
                return name

            first = {user: await served(user) for user in users}
            for user in users[:10]:
                assert await served(user) == first[user]  # the same user, the same upstream
            assert len(set(first.values())) == 3  # and users spread over all of them

            # An upstream leaves: only its users move; everyone else stays where they were.
            leaving = first[users[0]]
            staying = [u.endpoint for u in upstreams if u.name != leaving]
            kept = tuple(Endpoint(address=meshcore.Address.__meshcore_parse__(e)) for e in staying)
            proxy.apply_delta(meshcore.SnapshotDelta(version="2", endpoints={"backend": kept}))
            for user in users:
                now = await served(user)
                if first[user] != leaving:
                    assert now == first[user]
                else:
                    assert now != leaving


@pytest.mark.usefixtures("installed_testplugins")
async def test_a_filter_plugin_reads_the_peer_spiffe_id_from_the_client_certificate(
    meshcore_upstream: UpstreamFactory, meshcore_ca: MeshcoreCA
) -> None:
    registry = meshcore.build_registry()
    upstream = await meshcore_upstream(name="u")
    config = http_proxy_config([upstream.endpoint], http_filters=["peer_identity", "router"])
    config = meshcore_ca.with_tls(config, require_client_certificate=True)
    config["listeners"][0]["filter_chains"][0]["tls"]["require_client_certificate"] = (
        False  # asked, not required
    )
    with trio.fail_after(TIMEOUT):
        async with open_proxies(registry) as proxies:
            proxy = await proxies(config)
            with_id = proxy.client(ssl_context=meshcore_ca.client_context(client_uris=[SPIFFE_ID]))
            response = await with_id.get("/")
            assert response.header("x-peer-identity") == SPIFFE_ID
            seen = dict(response.json()["headers"])  # what the upstream was sent
            assert seen["x-peer-identity"] == SPIFFE_ID
            anonymous = proxy.client(ssl_context=meshcore_ca.client_context())
            assert (await anonymous.get("/")).header("x-peer-identity") == "anonymous"
