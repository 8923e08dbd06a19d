"""PeerAuthentication: STRICT, PERMISSIVE (plaintext and mTLS on one port) and DISABLE, on real listeners.

The inbound listener's chains come from ``inbound_filter_chains(mode, ...)``; the workload
certificate and the trust bundle from the mesh's CA. Clients: plaintext HTTP/1.1 and
HTTP/2 (prior knowledge), mTLS with a workload certificate, TLS without one.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from _apps import h2_get

from meshcore import Duration
from meshcore.plugins.ca import CaConfig, LocalCA, make_csr
from meshcore.plugins.istio_security import UnsupportedError, inbound_filter_chains, peer_authentication_mode
from meshcore.testing import RunningProxy, UpstreamFactory, fetch, http_proxy_config
from meshcore.testing.proxies import ProxyFactory

SERVER_ID = "spiffe://cluster.local/ns/shop/sa/backend"
CLIENT_ID = "spiffe://cluster.local/ns/shop/sa/frontend"


def doc(text: str) -> Any:
    return yaml.safe_load(text)


MESH_STRICT = doc("""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
""")
NS_PERMISSIVE = doc("""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: PERMISSIVE}}
""")
WORKLOAD = doc("""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: backend, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  mtls: {mode: STRICT}
  portLevelMtls:
    "8080": {mode: DISABLE}
    "9090": {mode: UNSET}
""")


@pytest.mark.parametrize(
    ("docs", "labels", "port", "mode"),
    [
        ([], {}, 80, "PERMISSIVE"),  # Istio's default
        ([MESH_STRICT], {}, 80, "STRICT"),  # mesh-wide
        ([MESH_STRICT, NS_PERMISSIVE], {}, 80, "PERMISSIVE"),  # the namespace's wins over the mesh's
        ([MESH_STRICT, NS_PERMISSIVE, WORKLOAD], {"app": "backend"}, 80, "STRICT"),  # the workload's
        ([MESH_STRICT, NS_PERMISSIVE, WORKLOAD], {"app": "backend"}, 8080, "DISABLE"),  # its port's
        ([MESH_STRICT, NS_PERMISSIVE, WORKLOAD], {"app": "backend"}, 9090, "STRICT"),  # UNSET port: inherits
        ([MESH_STRICT, NS_PERMISSIVE, WORKLOAD], {"app": "other"}, 8080, "PERMISSIVE"),  # not selected
    ],
)
def test_the_most_specific_peer_authentication_wins(
    docs: list[Any], labels: dict[str, str], port: int, mode: str
) -> None:
    assert peer_authentication_mode(docs, namespace="shop", labels=labels, port=port) == mode


def test_an_unknown_mode_is_an_error() -> None:
    bad = doc(
        "kind: PeerAuthentication\nmetadata: {name: x, namespace: shop}\nspec: {mtls: {mode: OPTIONAL}}"
    )
    with pytest.raises(UnsupportedError, match="'OPTIONAL' is not one of"):
        peer_authentication_mode([bad], namespace="shop", labels={}, port=80)


class Mesh:
    """The CA and the files of a server and a client workload."""

    def __init__(self, directory: Path) -> None:
        self.ca = LocalCA(CaConfig(directory=str(directory / "ca"), workload_lifetime=Duration(3600)))
        self.directory = directory
        self.server = self.issue(SERVER_ID, "server")
        self.client = self.issue(CLIENT_ID, "client")
        self.bundle = directory / "bundle.pem"
        self.bundle.write_text(self.ca.trust_bundle())

    def issue(self, identity: str, name: str) -> tuple[Path, Path]:
        csr, key = make_csr(identity)
        cert_path, key_path = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        cert_path.write_text(self.ca.sign(csr, identity).certificate_chain)
        key_path.write_bytes(key)
        return cert_path, key_path

    def tls(self) -> dict[str, Any]:
        cert, key = self.server
        return {
            "certificate_file": str(cert),
            "private_key_file": str(key),
            "client_ca_file": str(self.bundle),
        }

    def client_context(self, *, with_certificate: bool = True) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.bundle))
        context.check_hostname = False  # a workload certificate has no DNS name
        if with_certificate:
            context.load_cert_chain(*map(str, self.client))
        return context


@pytest.fixture
def mesh(tmp_path: Path) -> Mesh:
    return Mesh(tmp_path)


async def inbound(mesh: Mesh, mode: str, proxies: ProxyFactory, upstream: str) -> RunningProxy:
    config = http_proxy_config([upstream])
    filters = config["listeners"][0]["filter_chains"][0]["filters"]
    config["listeners"][0]["filter_chains"] = inbound_filter_chains(mode, mesh.tls(), filters)
    return await proxies(config)


async def outcome(call: Any) -> str:
    """What a client got: the caller's identity as the upstream saw it, or how it failed."""
    try:
        reply = await call
    except (ConnectionError, ssl.SSLError, trio.BrokenResourceError, OSError) as err:
        return f"refused ({type(err).__name__})"
    if isinstance(reply, tuple):  # h2_get
        status, _, body = reply
        if status == 0:
            return "refused (closed without a response)"
        return f"{status} {'mtls' if b'URI=spiffe' in body else 'plaintext'}"
    return f"{reply.status} {'mtls' if 'URI=spiffe' in reply.text else 'plaintext'}"


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("STRICT", ["refused", "refused", "200 mtls", "refused"]),
        ("PERMISSIVE", ["200 plaintext", "200 plaintext", "200 mtls", "refused"]),
        ("DISABLE", ["200 plaintext", "200 plaintext", "refused", "refused"]),
    ],
)
async def test_modes_on_a_real_listener(
    mode: str,
    expected: list[str],
    mesh: Mesh,
    meshcore_proxy: ProxyFactory,
    meshcore_upstream: UpstreamFactory,
) -> None:
    upstream = await meshcore_upstream()
    with trio.fail_after(20):
        proxy = await inbound(mesh, mode, meshcore_proxy, upstream.endpoint)
        address = proxy.address()
        got = [
            await outcome(fetch(address, "/")),
            await outcome(h2_get(address, "/")),
            await outcome(fetch(address, "/", ssl_context=mesh.client_context(), server_hostname="backend")),
            await outcome(
                fetch(
                    address,
                    "/",
                    ssl_context=mesh.client_context(with_certificate=False),
                    server_hostname="backend",
                )
            ),
        ]
    assert [g.partition(" (")[0] for g in got] == expected, got
