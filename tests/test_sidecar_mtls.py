"""Two sidecars talk mTLS with workload certificates of the mesh's CA, and check each other's SPIFFE ID.

app client ──plaintext──► outbound sidecar ──mTLS──► inbound sidecar ──► app

The outbound sidecar presents the frontend's certificate and accepts only the backend's
SPIFFE ID (secure naming: ``peer_identities``); the inbound sidecar requires a client
certificate of the mesh (STRICT) and tells the app who called (x-forwarded-client-cert).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog
import trio

from meshcore import Duration
from meshcore.plugins.ca import CaConfig, LocalCA, make_csr
from meshcore.plugins.istio_security import inbound_filter_chains
from meshcore.testing import RunningProxy, UpstreamFactory, http_proxy_config
from meshcore.testing.proxies import ProxyFactory

FRONTEND = "spiffe://cluster.local/ns/shop/sa/frontend"
BACKEND = "spiffe://cluster.local/ns/shop/sa/backend"


class Files:
    def __init__(self, ca: LocalCA, identity: str, directory: Path, name: str) -> None:
        csr, key = make_csr(identity)
        signed = ca.sign(csr, identity)
        self.cert, self.key, self.bundle = (
            directory / f"{name}.pem",
            directory / f"{name}.key",
            directory / "bundle.pem",
        )
        self.cert.write_text(signed.certificate_chain)
        self.key.write_bytes(key)
        self.bundle.write_text(signed.trusted_ca)


@pytest.fixture
def ca(tmp_path: Path) -> LocalCA:
    return LocalCA(CaConfig(directory=str(tmp_path / "ca"), workload_lifetime=Duration(3600)))


async def inbound_sidecar(proxies: ProxyFactory, app: str, server: Files) -> RunningProxy:
    config = http_proxy_config([app], listener={"access_log": True})
    filters = config["listeners"][0]["filter_chains"][0]["filters"]
    tls = {
        "certificate_file": str(server.cert),
        "private_key_file": str(server.key),
        "client_ca_file": str(server.bundle),
    }
    config["listeners"][0]["filter_chains"] = inbound_filter_chains("STRICT", tls, filters)
    return await proxies(config)


def outbound_config(
    inbound: RunningProxy, client: Files | None, bundle: Path, expected: list[str]
) -> dict[str, Any]:
    tls: dict[str, Any] = {"ca_file": str(bundle), "peer_identities": expected}
    if client is not None:
        tls |= {"certificate_file": str(client.cert), "private_key_file": str(client.key)}
    return http_proxy_config([inbound.endpoint()], cluster={"tls": tls})


async def test_two_sidecars_talk_mtls_and_know_each_other(
    tmp_path: Path, ca: LocalCA, meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory
) -> None:
    app = await meshcore_upstream()
    server, client = Files(ca, BACKEND, tmp_path, "backend"), Files(ca, FRONTEND, tmp_path, "frontend")
    with trio.fail_after(20), structlog.testing.capture_logs() as logs:
        inbound = await inbound_sidecar(meshcore_proxy, app.endpoint, server)
        outbound = await meshcore_proxy(outbound_config(inbound, client, server.bundle, [BACKEND]))
        replies = [await outbound.client().get(f"/call/{i}") for i in range(3)]
    assert [r.status for r in replies] == [200] * 3
    # The inbound sidecar's access log names the caller.
    lines = [e for e in logs if e["event"] == "request_completed" and e["listener"] == "ingress"]
    assert {e["peer_principal"] for e in lines} == {FRONTEND}
    xfcc = dict(replies[0].json()["headers"])["x-forwarded-client-cert"]
    assert f"URI={FRONTEND}" in xfcc
    # One TLS connection, kept alive and reused by the outbound sidecar's pool.
    assert outbound.stats.value("cluster_upstream_cx_total", cluster="backend") == 1


async def test_secure_naming_refuses_an_upstream_with_another_identity(
    tmp_path: Path, ca: LocalCA, meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory
) -> None:
    app = await meshcore_upstream()
    server, client = Files(ca, BACKEND, tmp_path, "backend"), Files(ca, FRONTEND, tmp_path, "frontend")
    with trio.fail_after(20):
        inbound = await inbound_sidecar(meshcore_proxy, app.endpoint, server)
        expecting_other = outbound_config(
            inbound, client, server.bundle, ["spiffe://cluster.local/ns/shop/sa/payments"]
        )
        outbound = await meshcore_proxy(expecting_other)
        reply = await outbound.client().get("/")
    assert (reply.status, reply.header("x-meshcore-flags")) == (503, "UIM")
    assert BACKEND not in reply.text  # the detail is in the log, not in the reply
    assert outbound.stats.value("cluster_upstream_cx_connect_fail", cluster="backend") == 1
    assert reply.header("x-upstream") is None  # the app was never reached


async def test_an_outbound_sidecar_without_a_certificate_is_refused_by_strict(
    tmp_path: Path, ca: LocalCA, meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory
) -> None:
    app = await meshcore_upstream()
    server = Files(ca, BACKEND, tmp_path, "backend")
    with trio.fail_after(20):
        inbound = await inbound_sidecar(meshcore_proxy, app.endpoint, server)
        outbound = await meshcore_proxy(outbound_config(inbound, None, server.bundle, [BACKEND]))
        reply = await outbound.client().get("/")
    assert reply.status in (502, 503)
    assert reply.header("x-upstream") is None


async def test_new_connections_resume_the_tls_session_and_keep_the_peer_identity(
    tmp_path: Path, ca: LocalCA, meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory
) -> None:
    """No per-request handshake, and a new connection resumes: no certificates, no key agreement.

    The outbound sidecar keeps no idle connection here, so each request opens one; the
    first handshake is a full one, the next ones resume its session, and both sides still
    know who the other is (secure naming on one, the caller's principal on the other).
    """
    app = await meshcore_upstream()
    server, client = Files(ca, BACKEND, tmp_path, "backend"), Files(ca, FRONTEND, tmp_path, "frontend")
    with trio.fail_after(20), structlog.testing.capture_logs() as logs:
        inbound = await inbound_sidecar(meshcore_proxy, app.endpoint, server)
        config = outbound_config(inbound, client, server.bundle, [BACKEND])
        config["clusters"][0]["max_idle_connections_per_endpoint"] = 0
        outbound = await meshcore_proxy(config)
        replies = [await outbound.client().get(f"/call/{i}") for i in range(3)]
        kept = await meshcore_proxy(outbound_config(inbound, client, server.bundle, [BACKEND]))
        kept_replies = [await kept.client().get(f"/kept/{i}") for i in range(3)]
    assert [r.status for r in replies + kept_replies] == [200] * 6
    assert outbound.stats.value("cluster_upstream_ssl_handshake", cluster="backend") == 3
    assert outbound.stats.value("cluster_upstream_ssl_session_reused", cluster="backend") == 2
    # Kept alive: one handshake for three requests.
    assert kept.stats.value("cluster_upstream_ssl_handshake", cluster="backend") == 1
    assert inbound.stats.value("listener_ssl_handshake", listener="ingress") == 4
    assert inbound.stats.value("listener_ssl_session_reused", listener="ingress") == 2
    lines = [e for e in logs if e["event"] == "request_completed" and e["listener"] == "ingress"]
    assert [e["peer_principal"] for e in lines] == [FRONTEND] * 6
    assert all(f"URI={FRONTEND}" in dict(r.json()["headers"])["x-forwarded-client-cert"] for r in replies)
