"""Workload certificates from the mesh's CA on a real listener, seen by real clients (openssl, curl).

The listener presents a CA-issued certificate whose only name is its SPIFFE ID and asks
clients for one from the same CA. ``openssl s_client`` verifies the listener against the
trust bundle and shows its SPIFFE ID; ``curl --cert`` presents a workload certificate and
the upstream learns the caller's SPIFFE ID (x-forwarded-client-cert). Clients with no
certificate, an expired one, or one from another CA are refused, each.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import shutil
from pathlib import Path
from typing import Any

import attrs
import pytest
import structlog
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from meshcore import Duration
from meshcore.plugins.ca import CaConfig, LocalCA, make_csr
from meshcore.testing import UpstreamFactory, http_proxy_config
from meshcore.testing.proxies import ProxyFactory

SERVER_ID = "spiffe://cluster.local/ns/shop/sa/backend"
CLIENT_ID = "spiffe://cluster.local/ns/shop/sa/frontend"
pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None or shutil.which("curl") is None,
    reason="needs openssl and curl (Debian packages)",
)


@attrs.frozen
class Workload:
    """A workload's files: certificate chain, key, trust bundle."""

    cert: Path
    key: Path
    bundle: Path


def issue(ca: LocalCA, identity: str, directory: Path, name: str) -> Workload:
    csr, key = make_csr(identity)
    signed = ca.sign(csr, identity)
    files = Workload(directory / f"{name}.pem", directory / f"{name}.key", directory / f"{name}-ca.pem")
    files.cert.write_text(signed.certificate_chain)
    files.key.write_bytes(key)
    files.bundle.write_text(signed.trusted_ca)
    return files


def expired(ca_directory: Path, identity: str, directory: Path) -> Workload:
    """A certificate of the right CA, for the right identity, that expired an hour ago."""
    root = x509.load_pem_x509_certificate((ca_directory / "root-1.pem").read_bytes())
    root_key = serialization.load_pem_private_key((ca_directory / "root-1.key").read_bytes(), password=None)
    csr_pem, key = make_csr(identity)
    csr = x509.load_pem_x509_csr(csr_pem)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(root.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=2))
        .not_valid_after(now - dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=True)
        .sign(root_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    files = Workload(directory / "expired.pem", directory / "expired.key", directory / "expired-ca.pem")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key)
    return files


@pytest.fixture
def mesh_ca(tmp_path: Path) -> LocalCA:
    return LocalCA(CaConfig(directory=str(tmp_path / "ca"), workload_lifetime=Duration(3600)))


def mtls_config(upstream: str, server: Workload) -> dict[str, Any]:
    config = http_proxy_config([upstream])
    config["listeners"][0]["filter_chains"][0]["tls"] = {
        "certificate_file": str(server.cert),
        "private_key_file": str(server.key),
        "client_ca_file": str(server.bundle),
        "require_client_certificate": True,
    }
    return config


async def run(*command: str, stdin: bytes = b"") -> tuple[int, str]:
    result = await trio.run_process(
        list(command), stdin=stdin, capture_stdout=True, capture_stderr=True, check=False
    )
    return result.returncode, (result.stdout + result.stderr).decode(errors="replace")


def pin(cert: Path) -> str:
    """The ``--pinnedpubkey`` value (for curl) of the first certificate of ``cert``."""
    leaf = x509.load_pem_x509_certificates(cert.read_bytes())[0]
    spki = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256//" + base64.b64encode(hashlib.sha256(spki).digest()).decode()


async def test_openssl_and_curl_see_the_spiffe_ids(
    tmp_path: Path, mesh_ca: LocalCA, meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory
) -> None:
    upstream = await meshcore_upstream()
    server = issue(mesh_ca, SERVER_ID, tmp_path, "server")
    client = issue(mesh_ca, CLIENT_ID, tmp_path, "client")
    with trio.fail_after(30):
        proxy = await meshcore_proxy(mtls_config(upstream.endpoint, server))
        host, port = proxy.address()
        status, shown = await run(
            "openssl", "s_client", "-connect", f"{host}:{port}", "-CAfile", str(client.bundle),
            "-cert", str(client.cert), "-key", str(client.key), "-verify_return_error", "-showcerts",
            stdin=b"",
        )  # fmt: skip
        presented = shown[
            shown.index("-----BEGIN CERTIFICATE-----") : shown.index("-----END CERTIFICATE-----") + 25
        ]
        _, san = await run("openssl", "x509", "-noout", "-ext", "subjectAltName", stdin=presented.encode())
        # curl checks DNS names, and a workload certificate has none: the server is pinned by its
        # key instead (--pinnedpubkey holds even with -k), the client presents its certificate.
        code, body = await run(
            "curl", "-sS", "-k", "--pinnedpubkey", pin(server.cert), "--cert", str(client.cert),
            "--key", str(client.key), f"https://{host}:{port}/whoami",
        )  # fmt: skip
    assert status == 0, shown
    assert "Verify return code: 0 (ok)" in shown
    assert f"URI:{SERVER_ID}" in san
    assert code == 0, body
    assert f"URI={CLIENT_ID}" in body  # the upstream's x-forwarded-client-cert, as the proxy set it


@pytest.mark.parametrize("case", ["no certificate", "expired certificate", "another CA's certificate"])
async def test_clients_without_a_valid_workload_certificate_are_refused(
    case: str,
    tmp_path: Path,
    mesh_ca: LocalCA,
    meshcore_proxy: ProxyFactory,
    meshcore_upstream: UpstreamFactory,
) -> None:
    upstream = await meshcore_upstream()
    server = issue(mesh_ca, SERVER_ID, tmp_path, "server")
    if case == "expired certificate":
        client: Workload | None = expired(tmp_path / "ca", CLIENT_ID, tmp_path)
    elif case == "another CA's certificate":
        other = LocalCA(CaConfig(directory=str(tmp_path / "other-ca")))
        client = issue(other, CLIENT_ID, tmp_path, "stranger")
    else:
        client = None
    with trio.fail_after(30), structlog.testing.capture_logs() as logs:
        proxy = await meshcore_proxy(mtls_config(upstream.endpoint, server))
        host, port = proxy.address()
        credentials = ["--cert", str(client.cert), "--key", str(client.key)] if client is not None else []
        code, output = await run(
            "curl", "-sS", "-k", "--pinnedpubkey", pin(server.cert), *credentials, f"https://{host}:{port}/"
        )
    assert code != 0, output
    assert '"upstream"' not in output
    failures = [entry["reason"] for entry in logs if entry["event"] == "tls_handshake_failed"]
    expected = {
        "no certificate": "PEER_DID_NOT_RETURN_A_CERTIFICATE",
        "expired certificate": "certificate has expired",
        "another CA's certificate": "unable to get local issuer certificate",
    }[case]
    assert any(expected in reason for reason in failures), failures
