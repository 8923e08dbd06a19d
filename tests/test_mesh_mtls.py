"""Security through the control plane, for real: a CA in ``meshcore control-plane``, two ``meshcore sidecar``s.

client ──HTTP_PROXY──► frontend sidecar ──mTLS──► backend sidecar ──► app (echoes the request)

The control plane runs the built-in CA (its ``ca:`` section); each sidecar makes its own key,
sends a CSR over its delivery stream and gets a certificate for its workload's SPIFFE ID. A
namespace-wide ``PeerAuthentication`` says STRICT and an ``AuthorizationPolicy`` lets only
the frontend's identity call the backend. Real external clients check it from outside:
``openssl s_client`` sees the backend's SPIFFE ID, ``curl --cert`` with a certificate of the
mesh is let in (and the app is told who called), and curl with no certificate, an expired one,
one of another CA, or plain HTTP is refused; a certificate of the mesh for another identity
is refused by the authorization policy (403).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trustme
from _followed import Followed
from _ports import free_ports
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshcore import Duration
from meshcore.plugins.ca import CaConfig, LocalCA, make_csr

START_TIMEOUT = 30.0
FRONTEND = "spiffe://cluster.local/ns/default/sa/frontend"
BACKEND = "spiffe://cluster.local/ns/default/sa/backend"


def mesh_resources(ports: dict[str, int]) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {{name: backend}}
        spec:
          hosts: [backend.default.svc.cluster.local]
          location: MESH_INTERNAL
          ports: [{{number: 80, name: http, protocol: HTTP}}]
          workloadSelector: {{labels: {{app: backend}}}}
        ---
        apiVersion: networking.istio.io/v1
        kind: WorkloadEntry
        metadata: {{name: backend}}
        spec:
          address: 127.0.0.1
          ports: {{http: {ports["backend-in"]}}}
          labels: {{app: backend}}
          serviceAccount: backend
        ---
        apiVersion: networking.istio.io/v1
        kind: Sidecar
        metadata: {{name: backend}}
        spec:
          workloadSelector: {{labels: {{app: backend}}}}
          ingress:
          - port: {{number: {ports["backend-in"]}, protocol: HTTP, name: http}}
            defaultEndpoint: 127.0.0.1:{ports["backend-app"]}
        ---
        apiVersion: networking.istio.io/v1
        kind: WorkloadEntry
        metadata: {{name: frontend}}
        spec: {{address: 127.0.0.1, labels: {{app: frontend}}, serviceAccount: frontend}}
        ---
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {{name: default, namespace: default}}
        spec: {{mtls: {{mode: STRICT}}}}
        ---
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {{name: backend-callers}}
        spec:
          selector: {{matchLabels: {{app: backend}}}}
          action: ALLOW
          rules:
          - from: [{{source: {{principals: [cluster.local/ns/default/sa/frontend]}}}}]
        """
    )


@attrs.define
class Mesh:
    base: Path
    ports: dict[str, int]
    processes: dict[str, Followed] = attrs.Factory(dict)

    def start(self, name: str, argv: list[str]) -> Followed:
        self.processes[name] = Followed(argv, self.base / f"{name}.log", cwd=self.base)
        return self.processes[name]

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.process.terminate()
        for process in self.processes.values():
            process.stop()

    def log_events(self, name: str) -> list[dict[str, Any]]:
        return self.processes[name].events()

    @property
    def ca(self) -> LocalCA:
        """The control plane's CA, read from its directory (tests mint client certificates with it)."""
        return LocalCA(CaConfig(directory=str(self.base / "ca")))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("mtls-mesh")
    ports = free_ports(["backend-in", "backend-app", "frontend-proxy", "cp", "cp-admin"])
    (base / "mesh").mkdir()
    (base / "mesh" / "mesh.yaml").write_text(mesh_resources(ports))
    delivery_ca = trustme.CA()  # the control plane's own serving certificate
    delivery_ca.cert_pem.write_to_path(str(base / "delivery-ca.pem"))
    cert = delivery_ca.issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(base / "cp.pem"))
    cert.private_key_pem.write_to_path(str(base / "cp.key"))
    (base / "token").write_text("t0ken-for-default\n")
    (base / "control-plane.yaml").write_text(
        textwrap.dedent(
            f"""\
            listen: 127.0.0.1:{ports["cp"]}
            admin: 127.0.0.1:{ports["cp-admin"]}
            tls: {{certificate_file: cp.pem, private_key_file: cp.key}}
            bootstrap_tokens: [{{token_file: token, namespace: default}}]
            debounce: 20ms
            ca: {{meshcore: {{directory: ca, workload_lifetime: 1h}}}}
            """
        )
    )
    found = Mesh(base, ports)
    meshcore = [sys.executable, "-m", "meshcore"]
    try:
        app = found.start(
            "app", [*meshcore, "upstream", "--port", str(ports["backend-app"]), "--name", "backend"]
        )
        control_plane = found.start(
            "control-plane",
            [
                *meshcore,
                "control-plane",
                "-c",
                "mesh",
                "--config",
                "control-plane.yaml",
                "--log-format",
                "json",
            ],
        )
        # The sidecars would back off and retry while it is starting: they start once it serves.
        control_plane.wait_for_event("delivery_started", START_TIMEOUT)
        for workload in ("frontend", "backend"):
            found.start(
                workload,
                [
                    *meshcore, "sidecar",
                    "--control-plane", f"127.0.0.1:{ports['cp']}",
                    "--workload", workload,
                    "--token-file", "token",
                    "--ca-file", "delivery-ca.pem",
                    "--server-name", "localhost",
                    "--http-proxy", f"127.0.0.1:{ports['frontend-proxy']}" if workload == "frontend" else "",
                    "--admin", "127.0.0.1:0",
                    "--id", workload,
                    "--log-format", "json",
                ],
            )  # fmt: skip
        # Each says when it serves: the app that it listens, each sidecar that its first
        # Snapshot (which waits for its certificate) is applied, with its listeners' addresses.
        app.wait_for(
            "listening line", lambda line: line.startswith("sample upstream listening on"), START_TIMEOUT
        )
        for workload, port in (("frontend", "frontend-proxy"), ("backend", "backend-in")):
            started = found.processes[workload].wait_for_event("proxy_started", START_TIMEOUT)
            assert f"127.0.0.1:{ports[port]}" in started["listeners"].values(), started
        yield found
    finally:
        found.stop_all()


def test_two_sidecars_talk_mtls_with_certificates_issued_through_the_control_plane(mesh: Mesh) -> None:
    with httpx.Client(proxy=f"http://127.0.0.1:{mesh.ports['frontend-proxy']}", timeout=10) as client:
        replies = [client.get(f"http://backend/call/{i}") for i in range(3)]
    assert [r.status_code for r in replies] == [200] * 3
    assert {r.headers["x-upstream"] for r in replies} == {"backend"}
    # The backend's sidecar verified the caller's certificate and told the app who it is.
    xfcc = dict(replies[0].json()["headers"])["x-forwarded-client-cert"]
    assert f"URI={FRONTEND}" in xfcc
    # Each sidecar's key stayed with it: the control plane signed their CSRs, for their own identities.
    issued = {e["spiffe_id"] for e in mesh.log_events("control-plane") if e["event"] == "certificate_issued"}
    assert issued == {FRONTEND, BACKEND}
    for workload in ("frontend", "backend"):
        installed = [e for e in mesh.log_events(workload) if e["event"] == "certificate_installed"]
        assert installed, f"the {workload} sidecar installed no certificate"


def client_files(directory: Path, name: str, ca: LocalCA, spiffe_id: str) -> tuple[Path, Path]:
    """A certificate of ``ca`` for ``spiffe_id``, and its key, as files."""
    csr, key = make_csr(spiffe_id)
    signed = ca.sign(csr, spiffe_id)
    cert_file, key_file = directory / f"{name}.pem", directory / f"{name}.key"
    cert_file.write_text(signed.certificate_chain)
    key_file.write_bytes(key)
    return cert_file, key_file


def expired_files(directory: Path, mesh: Mesh) -> tuple[Path, Path]:
    """A certificate for the frontend's identity, signed by the mesh's own root, that expired an hour ago."""
    root_cert = x509.load_pem_x509_certificate((mesh.base / "ca" / "root-1.pem").read_bytes())
    root_key = serialization.load_pem_private_key((mesh.base / "ca" / "root-1.key").read_bytes(), None)
    csr_pem, key = make_csr(FRONTEND)
    csr = x509.load_pem_x509_csr(csr_pem)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(root_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=2))
        .not_valid_after(now - dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(FRONTEND)]), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())  # type: ignore[arg-type]  # an EC key, as the CA makes
    )
    cert_file, key_file = directory / "expired.pem", directory / "expired.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key)
    return cert_file, key_file


def curl(url: str, *options: str) -> tuple[int, str, str]:
    """Curl's exit code, the HTTP status it got ("000": none) and the body."""
    done = subprocess.run(  # noqa: S603 - a real external client
        ["curl", "-sS", "--max-time", "10", "--noproxy", "*", "-w", "\n%{http_code}", *options, url],  # noqa: S607
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    body, _, status = done.stdout.rpartition("\n")
    return done.returncode, status, body


def test_openssl_sees_the_backends_spiffe_id_and_curl_with_a_mesh_certificate_is_let_in(
    mesh: Mesh, tmp_path: Path
) -> None:
    cert, key = client_files(tmp_path, "frontend", mesh.ca, FRONTEND)
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(mesh.ca.trust_bundle())
    handshake = subprocess.run(  # noqa: S603 - a real external client
        [  # noqa: S607
            "openssl", "s_client", "-connect", f"127.0.0.1:{mesh.ports['backend-in']}",
            "-cert", str(cert), "-key", str(key), "-CAfile", str(bundle), "-verify_return_error",
        ],
        input="", capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert "Verify return code: 0 (ok)" in handshake.stdout, handshake.stdout + handshake.stderr
    served = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName"],  # noqa: S607
        input=handshake.stdout, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert f"URI:{BACKEND}" in served.stdout
    # curl presents the certificate (-k: a workload certificate names no host, only a SPIFFE ID).
    code, status, body = curl(
        f"https://127.0.0.1:{mesh.ports['backend-in']}/hello", "-k", "--cert", str(cert), "--key", str(key)
    )
    assert (code, status) == (0, "200"), body
    assert f"URI={FRONTEND}" in dict(json.loads(body)["headers"])["x-forwarded-client-cert"]


def test_clients_without_a_valid_mesh_certificate_are_refused(mesh: Mesh, tmp_path: Path) -> None:
    url = f"https://127.0.0.1:{mesh.ports['backend-in']}/"
    other_ca = LocalCA(CaConfig(directory=str(tmp_path / "other-ca"), workload_lifetime=Duration(3600)))
    other = client_files(tmp_path, "other", other_ca, FRONTEND)
    expired = expired_files(tmp_path, mesh)
    refused = {
        "no certificate": curl(url, "-k"),
        "an expired certificate": curl(url, "-k", "--cert", str(expired[0]), "--key", str(expired[1])),
        "another CA's certificate": curl(url, "-k", "--cert", str(other[0]), "--key", str(other[1])),
        "plaintext (STRICT)": curl(f"http://127.0.0.1:{mesh.ports['backend-in']}/"),
    }
    for what, (code, status, body) in refused.items():
        assert code != 0, f"{what}: curl exit {code}, HTTP {status}: {body}"
        assert status == "000", f"{what}: HTTP {status}: {body}"
    # A certificate of the mesh for an identity the AuthorizationPolicy does not allow: 403.
    intruder = client_files(tmp_path, "intruder", mesh.ca, "spiffe://cluster.local/ns/default/sa/intruder")
    code, status, _ = curl(url, "-k", "--cert", str(intruder[0]), "--key", str(intruder[1]))
    assert (code, status) == (0, "403")
