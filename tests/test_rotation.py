"""Rotation without a dropped request, through two sidecars, with real mTLS.

app clients ──► outbound sidecar ──mTLS──► inbound sidecar ──► app

Workload certificates live 3 seconds; each sidecar's certificate agent renews its own at
about half of that (a new key and CSR each time) and swaps it in as a ``TlsSecret`` (a new
Snapshot whose only change is the secret: the next handshake takes it, nothing drains).
Meanwhile 20 clients keep calling, 10 on kept-alive connections and 10 on a new connection
for each request, and the outbound sidecar keeps few idle upstream connections, so new mTLS
handshakes happen all along. Then the CA's root is rotated with overlap (prepare, activate,
finish), each step once both sidecars hold what it needs. Not one request may fail.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import httpx
import trio

from meshcore import Duration
from meshcore.plugins.ca import CaConfig, LocalCA, SignedCertificate
from meshcore.plugins.workload_certs import WorkloadCertificate, keep_certificate
from meshcore.testing import RunningProxy, UpstreamFactory, fetch, http_proxy_config
from meshcore.testing.proxies import ProxyFactory

FRONTEND = "spiffe://cluster.local/ns/shop/sa/frontend"
BACKEND = "spiffe://cluster.local/ns/shop/sa/backend"
CLIENTS = 20


def secret(cert: WorkloadCertificate) -> dict[str, Any]:
    return {
        "name": "workload",
        "certificate_chain": cert.certificate_chain,
        "private_key": cert.private_key,
        "trusted_ca": cert.trusted_ca,
    }


def inbound_config(app: str, cert: WorkloadCertificate) -> dict[str, Any]:
    config = http_proxy_config([app])
    config["listeners"][0]["filter_chains"][0]["tls"] = {
        "secret": "workload",
        "validation_secret": "workload",
        "require_client_certificate": True,
    }
    config["secrets"] = [secret(cert)]
    return config


def outbound_config(inbound: str, cert: WorkloadCertificate) -> dict[str, Any]:
    tls = {"secret": "workload", "validation_secret": "workload", "peer_identities": [BACKEND]}
    config = http_proxy_config([inbound], cluster={"tls": tls, "max_idle_connections_per_endpoint": 2})
    config["secrets"] = [secret(cert)]
    return config


class Sidecar:
    """A proxy and the certificates its agent installed in it."""

    def __init__(self, identity: str, ca: LocalCA) -> None:
        self.identity = identity
        self.ca = ca
        self.proxy: RunningProxy | None = None
        self.config: Any = None
        self.installed: list[WorkloadCertificate] = []
        self.changed = trio.Event()

    async def sign(self, csr: bytes) -> SignedCertificate:
        return self.ca.sign(csr, self.identity)

    def install(self, cert: WorkloadCertificate) -> None:
        self.installed.append(cert)
        if self.proxy is not None:
            self.proxy.apply(self.config(cert))
        self.changed.set()
        self.changed = trio.Event()

    async def installs(self, count: int) -> WorkloadCertificate:
        """The certificate installed ``count`` installs from now."""
        target = len(self.installed) + count
        while len(self.installed) < target:
            await self.changed.wait()
        return self.installed[-1]


async def call(address: tuple[str, int], client: httpx.AsyncClient | None, failures: list[str]) -> None:
    try:
        if client is None:
            status = (await fetch(address, "/r")).status
        else:
            status = (await client.get("/r")).status_code
    except Exception as err:  # noqa: BLE001 - every failure is counted, whatever it is
        failures.append(f"{type(err).__name__}: {err}")
        return
    if status != 200:
        failures.append(f"status {status}")


async def caller(
    address: tuple[str, int], kept_alive: bool, stop: trio.Event, counts: list[int], failures: list[str]
) -> None:
    if not kept_alive:
        while not stop.is_set():
            await call(address, None, failures)
            counts[0] += 1
        return
    host, port = address
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
        while not stop.is_set():
            await call(address, client, failures)
            counts[0] += 1


async def test_certificates_and_the_root_rotate_without_a_failed_request(
    tmp_path: Path, meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory, nursery: trio.Nursery
) -> None:
    ca = LocalCA(CaConfig(directory=str(tmp_path / "ca"), workload_lifetime=Duration(3)))
    app = await meshcore_upstream()
    backend, frontend = Sidecar(BACKEND, ca), Sidecar(FRONTEND, ca)
    first_backend = await nursery.start(keep_certificate, BACKEND, backend.sign, backend.install)
    first_frontend = await nursery.start(keep_certificate, FRONTEND, frontend.sign, frontend.install)
    inbound = await meshcore_proxy(inbound_config(app.endpoint, first_backend))
    backend.proxy, backend.config = inbound, functools.partial(inbound_config, app.endpoint)
    outbound = await meshcore_proxy(outbound_config(inbound.endpoint(), first_frontend))
    frontend.proxy, frontend.config = outbound, functools.partial(outbound_config, inbound.endpoint())
    stop = trio.Event()
    counts = [0]
    failures: list[str] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as clients:
            for i in range(CLIENTS):
                clients.start_soon(caller, outbound.address(), i % 2 == 0, stop, counts, failures)
            # Three renewals on each side, with traffic on.
            await backend.installs(3)
            await frontend.installs(3)
            renewed = (len(backend.installed) - 1, len(frontend.installed) - 1)
            before_root = counts[0]
            # Root rotation: each step once both sidecars hold what the next one needs.
            ca.rotation_step("prepare")  # both roots trusted; still signed by the old one
            for side in (backend, frontend):
                assert (await side.installs(1)).trusted_ca.count("BEGIN CERTIFICATE") == 2
            ca.rotation_step("activate")  # new certificates from the new root
            await backend.installs(1)
            await frontend.installs(1)
            ca.rotation_step("finish")  # the old root is gone from the bundle
            for side in (backend, frontend):
                assert (await side.installs(1)).trusted_ca.count("BEGIN CERTIFICATE") == 1
            await backend.installs(1)
            stop.set()
    assert failures == []
    assert min(renewed) >= 3
    assert before_root > 100
    assert counts[0] > before_root
    hops = outbound.stats.value("cluster_upstream_cx_total", cluster="backend")
    assert hops > 10  # new mTLS handshakes all along, not one kept connection
