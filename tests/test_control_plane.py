"""A control plane and sidecars in one trio loop: real sockets, real TLS, real proxies.

The control plane (``serve_control_plane``) watches mesh files and serves delivery over
HTTP/2 with TLS; each sidecar is a proxy (``serve_proxy``) fed by the ``control_plane``
source. Tests wait on the plane's state (``plane.wait_for``), never on sleeps.
"""

from __future__ import annotations

import datetime as dt
import functools
import socket
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio
import trustme
from _ports import free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import meshcore
from meshcore.config import Address, CertificateAuthorityRef, Duration
from meshcore.control import (
    WORKLOAD_SECRET,
    ControlPlaneSource,
    ControlPlaneSourceConfig,
    SignedCertificate,
    SigningError,
)
from meshcore.control.discovery import DiscoveryRef
from meshcore.control.plane import ControlPlane
from meshcore.control.process import RunningControlPlane, serve_control_plane
from meshcore.control.protocol import Status
from meshcore.control.settings import BootstrapToken, ControlPlaneConfig, ServerTls
from meshcore.control.watch import SETTLE, MeshWatcher
from meshcore.plugins.ca import CaConfig
from meshcore.runtime.proxy import Proxy
from meshcore.testing.client import fetch
from meshcore.testing.upstreams import serve_upstream

REGISTRY = meshcore.build_registry(autoload=False)
TIMEOUT = 10


@attrs.define
class Mesh:
    """A control plane on loopback and the files it watches."""

    nursery: trio.Nursery
    directory: Path
    running: RunningControlPlane
    ca: trustme.CA
    tokens: Path
    scope: trio.CancelScope

    @property
    def plane(self) -> ControlPlane:
        return self.running.plane

    def write(self, name: str, text: str) -> None:
        (self.directory / name).write_text(textwrap.dedent(text))

    def edit(self, name: str, text: str) -> bool:
        """Write a mesh file and have the control plane look at once; whether it took the edit."""
        self.write(name, text)
        return self.running.watcher.check_now()

    async def sidecar(
        self,
        workload: str,
        *,
        token: str | None = "secret",  # noqa: S107 - the test mesh's bootstrap token
        **options: Any,
    ) -> tuple[Proxy, ControlPlaneSource]:
        ca_file = self.directory.parent / "ca.pem"
        self.ca.cert_pem.write_to_path(str(ca_file))
        token_file = self.directory.parent / f"{workload}.token"
        if token is not None:
            token_file.write_text(token)
        config = ControlPlaneSourceConfig(
            address=Address(*self.running.delivery),
            workload=workload,
            id=options.pop("id", f"{workload}-1"),
            token_file=str(token_file) if token is not None else None,
            ca_file=str(ca_file),
            server_name="localhost",
            http_proxy=options.pop("http_proxy", "127.0.0.1:0"),
            admin=Address("127.0.0.1", 0),
            initial_backoff=Duration(0.02),
            max_backoff=Duration(0.2),
            **options,
        )
        plugin = REGISTRY.types("config_source")["control_plane"]  # as `meshcore sidecar` does
        source = plugin.factory(config, REGISTRY)
        assert isinstance(source, ControlPlaneSource)
        proxy: Proxy = await self.nursery.start(
            functools.partial(meshcore.serve_proxy, source, REGISTRY, admin=False)
        )
        return proxy, source

    async def synced(self, *ids: str) -> None:
        """Wait until every proxy named runs the current mesh's resources."""

        def current(proxy_id: str) -> bool:
            proxy = self.plane.proxies.get(proxy_id)
            if (
                proxy is None
                or not proxy.connected
                or proxy.status is not Status.SYNCED
                or proxy.identity is None
            ):
                return False
            wanted = self.plane.translated(proxy.identity).versions
            acked = proxy.session.acked_versions()
            return all(acked.get(t) == v for t, v in wanted.items())

        await self.plane.wait_for(lambda: all(current(i) for i in ids))


def settings(directory: Path, ca: trustme.CA, listen: int = 0) -> ControlPlaneConfig:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_file, key_file = directory / "cp.pem", directory / "cp.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    (directory / "token").write_text("secret\n")
    return ControlPlaneConfig(
        listen=Address("127.0.0.1", listen),
        admin=Address("127.0.0.1", 0),
        tls=ServerTls(certificate_file=str(cert_file), private_key_file=str(key_file)),
        bootstrap_tokens=(BootstrapToken(token_file=str(directory / "token"), namespace="default"),),
        debounce=Duration(0.02),
        poll_interval=Duration(0),
        discovery=(DiscoveryRef(name="static"), DiscoveryRef(name="dns")),
    )


@asynccontextmanager
async def open_mesh(
    tmp_path: Path,
    files: dict[str, str],
    *,
    ca: trustme.CA | None = None,
    authority: CertificateAuthorityRef | None = None,
    **overrides: Any,
) -> AsyncIterator[Mesh]:
    directory = tmp_path / "mesh"
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text))
    ca = ca or trustme.CA()
    config = attrs.evolve(settings(tmp_path, ca), ca=authority, **overrides)
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            running = await nursery.start(
                functools.partial(serve_control_plane, config, REGISTRY, mesh=[str(directory)])
            )
            yield Mesh(nursery, directory, running, ca, tmp_path / "token", scope)
        nursery.cancel_scope.cancel()


SERVICES = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backend}
spec:
  hosts: [backend.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: backend}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"""


def workloads(ports: dict[str, int]) -> str:
    return "".join(
        f"""\
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: backend-{version}}}
spec: {{address: 127.0.0.1, ports: {{http: {port}}}, labels: {{app: backend, version: {version}}}}}
"""
        for version, port in ports.items()
    )


def routing(v1: int, v2: int) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend}}
spec:
  hosts: [backend]
  http:
  - route:
    - {{destination: {{host: backend, subset: v1}}, weight: {v1}}}
    - {{destination: {{host: backend, subset: v2}}, weight: {v2}}}
"""


async def upstreams(nursery: trio.Nursery) -> dict[str, int]:
    ports = {}
    for version in ("v1", "v2"):
        _, ports[version] = await nursery.start(functools.partial(serve_upstream, name=f"backend-{version}"))
    return ports


async def via(proxy: Proxy, listener: str = "outbound_http_proxy", host: str = "backend") -> str:
    response = await fetch(proxy.address(listener), "/", host=host)
    assert response.status == 200, response
    return response.header("x-upstream") or ""


async def test_a_sidecar_gets_its_snapshot_and_follows_edits_within_a_second(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as apps:
            ports = await upstreams(apps)
            async with open_mesh(
                tmp_path, {"services.yaml": SERVICES + workloads(ports), "routing.yaml": routing(100, 0)}
            ) as mesh:
                proxy, _ = await mesh.sidecar("frontend")
                await mesh.synced("frontend-1")
                assert proxy.snapshot is not None
                assert proxy.snapshot.node is not None
                assert proxy.snapshot.node.workload == "frontend"
                assert {await via(proxy) for _ in range(5)} == {"backend-v1"}
                started = trio.current_time()
                assert mesh.edit("routing.yaml", routing(0, 100))
                await mesh.synced("frontend-1")
                assert trio.current_time() - started < 1.0
                assert {await via(proxy) for _ in range(5)} == {"backend-v2"}
            apps.cancel_scope.cancel()


async def test_only_what_changed_goes_only_to_the_proxies_it_changes(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_mesh(
            tmp_path,
            {
                "services.yaml": SERVICES + workloads({"v1": 1001, "v2": 1002}),
                "routing.yaml": routing(100, 0),
            },
        ) as mesh:
            await mesh.sidecar("frontend")
            await mesh.sidecar("other", id="other-1")
            await mesh.synced("frontend-1", "other-1")
            pushes = mesh.plane.stat_pushes.value
            frontend = mesh.plane.proxies["frontend-1"]
            before = dict(frontend.session.acked_versions())
            # A workload goes away: endpoints only, as a delta, in one push to each proxy.
            assert mesh.edit("services.yaml", SERVICES + workloads({"v1": 1001}))
            await mesh.plane.wait_for(lambda: mesh.plane.stat_pushes.value == pushes + 2)
            await mesh.synced("frontend-1", "other-1")
            after = frontend.session.acked_versions()
            assert {t for t in after if after[t] != before[t]} == {"endpoints"}
            snapshot = frontend.translated.resources if frontend.translated else {}
            assert snapshot["endpoints"]["outbound|80|v2|backend.default.svc.cluster.local"] == []
            # A VirtualService only for one proxy's namespace changes nothing for the other.
            pushes, rounds = mesh.plane.stat_pushes.value, mesh.plane.stat_rounds.value
            elsewhere = routing(50, 50).replace("name: backend}", "name: backend, namespace: elsewhere}")
            assert mesh.edit(
                "extra.yaml",
                elsewhere.replace("host: backend,", "host: backend.default.svc.cluster.local,").replace(
                    "[backend]", "[backend.default.svc.cluster.local]"
                ),
            )
            await mesh.plane.wait_for(lambda: mesh.plane.stat_rounds.value > rounds)
            assert mesh.plane.stat_pushes.value == pushes


async def test_a_proxy_that_cannot_apply_nacks_and_keeps_its_last_good_config(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    sidecar = f"""\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: frontend}}
spec:
  workloadSelector: {{labels: {{app: frontend}}}}
  egress:
  - port: {{number: {busy}, protocol: HTTP}}
    hosts: ["./backend.default.svc.cluster.local"]
"""
    frontend = """\
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: frontend}
spec: {address: 10.9.9.9, labels: {app: frontend}}
"""
    with taken, trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as apps:
            ports = await upstreams(apps)
            async with open_mesh(
                tmp_path,
                {"services.yaml": SERVICES + workloads(ports) + frontend, "routing.yaml": routing(100, 0)},
            ) as mesh:
                proxy, source = await mesh.sidecar("frontend")
                other, _ = await mesh.sidecar("other", id="other-1")
                await mesh.synced("frontend-1", "other-1")
                good = proxy.snapshot
                assert mesh.edit("sidecar.yaml", sidecar)
                handle = mesh.plane.proxies["frontend-1"]
                await mesh.plane.wait_for(lambda: handle.status is Status.NACKED)
                assert f"cannot listen on 127.0.0.1:{busy}" in handle.session.nack_message
                assert proxy.snapshot is good
                assert await via(proxy) == "backend-v1", "the NACKed proxy still serves its last good config"
                await mesh.synced("other-1")
                assert await via(other) == "backend-v1"
                # The port frees up; the next push is applied and the proxy is SYNCED again.
                taken.close()
                assert mesh.edit("routing.yaml", routing(0, 100))
                await mesh.synced("frontend-1")
                assert await via(proxy, f"egress_{busy}", host="anything") == "backend-v2"
                assert source.last_error == ""
            apps.cancel_scope.cancel()


async def test_a_bad_edit_is_refused_whole_and_never_pushed(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_mesh(
            tmp_path,
            {
                "services.yaml": SERVICES + workloads({"v1": 1001, "v2": 1002}),
                "routing.yaml": routing(100, 0),
            },
        ) as mesh:
            await mesh.sidecar("frontend")
            await mesh.synced("frontend-1")
            version, pushes = (
                mesh.plane.model.version if mesh.plane.model else None,
                mesh.plane.stat_pushes.value,
            )
            assert not mesh.edit(
                "routing.yaml",
                routing(0, 100).replace("weight: 100", "wieght: 100").replace("subset: v1", "subset: v3"),
            )
            assert mesh.plane.rejection is not None
            found = [str(p).replace(str(mesh.directory) + "/", "") for p in mesh.plane.rejection.problems]
            assert found == [
                "routing.yaml:7: VirtualService default/backend: spec.http[0]: the weights of several route destinations must not all be 0",
                "routing.yaml:9: VirtualService default/backend: spec.http[0].route[1].wieght: unknown field; did you mean 'weight'?",
            ]
            assert not mesh.edit("routing.yaml", routing(50, 50).replace("subset: v2", "subset: v3"))
            found = [str(p).replace(str(mesh.directory) + "/", "") for p in mesh.plane.rejection.problems]
            assert found == [
                (
                    "routing.yaml:1: VirtualService default/backend: spec.http[0].route[1].destination.subset: subset 'v3' of "
                    "'backend.default.svc.cluster.local' is not defined (defined: v1, v2) [MC0002]"
                )
            ]
            assert (mesh.plane.model.version if mesh.plane.model else None, mesh.plane.stat_pushes.value) == (
                version,
                pushes,
            )
            assert mesh.edit("routing.yaml", routing(50, 50))
            assert mesh.plane.rejection is None


async def test_bootstrap_tokens_say_which_identities_may_be_claimed(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_mesh(tmp_path, {"services.yaml": SERVICES}) as mesh:
            config = attrs.evolve(mesh.plane.config)
            assert config.bootstrap_tokens
            (tmp_path / "wrong.token").write_text("not-the-token")
            source = ControlPlaneSource(
                ControlPlaneSourceConfig(
                    address=Address(*mesh.running.delivery),
                    workload="frontend",
                    token_file=str(tmp_path / "wrong.token"),
                    ca_file=str(tmp_path / "ca.pem"),
                    server_name="localhost",
                    initial_backoff=Duration(0.01),
                    max_backoff=Duration(0.01),
                ),
                REGISTRY,
            )
            mesh.ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
            with trio.move_on_after(0.3):
                await source.run(_NoSink())
            assert source.last_error == "unknown bootstrap token"
            assert not mesh.plane.proxies
            _, allowed = await mesh.sidecar("frontend", namespace="default")
            await mesh.synced("frontend-1")
            assert allowed.last_error == ""


class _NoSink:
    def apply(self, snapshot: meshcore.Snapshot, *, file: str | None = None) -> None:
        raise AssertionError(snapshot, file)

    def apply_delta(self, delta: meshcore.SnapshotDelta) -> meshcore.Snapshot:
        raise AssertionError(delta)

    async def apply_async(self, snapshot: meshcore.Snapshot, *, file: str | None = None) -> None:
        raise AssertionError(snapshot, file)

    async def apply_delta_async(self, delta: meshcore.SnapshotDelta) -> meshcore.Snapshot:
        raise AssertionError(delta)

    def rejected(self, error: meshcore.ConfigError) -> None:
        raise AssertionError(error)


class _TestCA:
    """A real certificate authority (cryptography), to check the Signer seam end to end."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test mesh CA")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(1)
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def trust_bundle(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def sign(self, csr_pem: bytes, spiffe_id: str) -> SignedCertificate:
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as err:
            msg = f"not a CSR: {err}"
            raise SigningError(msg) from err
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=True
            )
            .sign(self.key, hashes.SHA256())
        )
        return SignedCertificate(
            certificate_chain=cert.public_bytes(serialization.Encoding.PEM).decode(),
            trusted_ca=self.trust_bundle(),
            not_after=cert.not_valid_after_utc.timestamp(),
        )


def _csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


async def test_csrs_travel_on_the_delivery_stream_to_the_signer(tmp_path: Path) -> None:
    frontend = """\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: frontend}
spec: {address: 10.9.9.9, labels: {app: frontend}, serviceAccount: shop}
"""
    with trio.fail_after(TIMEOUT):
        async with open_mesh(tmp_path, {"services.yaml": SERVICES, "frontend.yaml": frontend}) as mesh:
            _, source = await mesh.sidecar("frontend")
            answer = await source.request_certificate(_csr())
            assert answer.error == "no CA configured"
            mesh.plane.signer = _TestCA()
            answer = await source.request_certificate(_csr())
            cert = x509.load_pem_x509_certificate(answer.certificate_chain.encode())
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
                "spiffe://cluster.local/ns/default/sa/shop"
            ]
            assert answer.trusted_ca.startswith("-----BEGIN CERTIFICATE-----")
            answer = await source.request_certificate("not a csr")
            assert answer.error.startswith("not a CSR")


async def test_a_sidecar_gets_its_certificate_through_the_control_plane_and_renews_it(tmp_path: Path) -> None:
    """The control plane's CA (2 s certificates) signs the sidecar's CSRs, renewed live.

    The push that needs the certificate is applied and ACKed once it came; each renewal is
    swapped in; PERMISSIVE inbound takes plaintext, and a DISABLE destination is called in
    plaintext.
    """
    frontend = """\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: frontend}}
spec: {{address: 127.0.0.1, labels: {{app: frontend}}, serviceAccount: shop}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: frontend}}
spec:
  workloadSelector: {{labels: {{app: frontend}}}}
  ingress: [{{port: {{number: {port}, protocol: HTTP, name: http}}, defaultEndpoint: "127.0.0.1:{app}"}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: backend}}
spec: {{selector: {{matchLabels: {{app: backend}}}}, mtls: {{mode: DISABLE}}}}
"""
    authority = CertificateAuthorityRef(
        name="meshcore", config=CaConfig(directory=str(tmp_path / "ca"), workload_lifetime=Duration(2))
    )
    inbound = free_port()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as apps:
            ports = await upstreams(apps)
            files = {
                "services.yaml": SERVICES + workloads(ports),
                "routing.yaml": routing(100, 0),
                "frontend.yaml": frontend.format(port=inbound, app=ports["v1"]),
            }
            async with open_mesh(tmp_path, files, authority=authority) as mesh:
                proxy, source = await mesh.sidecar("frontend")
                await mesh.synced("frontend-1")
                assert source.certificates_applied == 1, "the first push waited for the certificate"
                live = proxy.snapshot
                assert live is not None
                (secret,) = live.secrets
                assert secret.name == WORKLOAD_SECRET
                cert = x509.load_pem_x509_certificate((secret.certificate_chain or "").encode())
                sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
                    "spiffe://cluster.local/ns/default/sa/shop"
                ]
                chains = next(lst for lst in live.listeners if lst.name == f"inbound_{inbound}").filter_chains
                assert [c.tls is not None for c in chains] == [True, False]  # PERMISSIVE: the default
                assert await via(proxy) == "backend-v1"  # backend is DISABLE: plaintext to it
                plain = await fetch(("127.0.0.1", inbound), "/")
                assert (plain.status, plain.header("x-upstream")) == (200, "backend-v1")
                # Renewed at about half of 2 s, twice: a new certificate each time, applied live.
                await source.wait_certificates(3)
                renewed = proxy.snapshot
                assert renewed is not None
                assert renewed.secrets[0].certificate_chain != secret.certificate_chain
                assert mesh.plane.proxies["frontend-1"].status is Status.SYNCED
                # The workload's service account changes: a certificate of its new identity.
                assert mesh.edit(
                    "frontend.yaml",
                    files["frontend.yaml"].replace("serviceAccount: shop", "serviceAccount: cart"),
                )
                while spiffe_ids(proxy) != ["spiffe://cluster.local/ns/default/sa/cart"]:
                    # (a renewal of the old identity may have been on its way)
                    await source.wait_certificates(source.certificates_applied + 1)
            apps.cancel_scope.cancel()


def spiffe_ids(proxy: Proxy) -> list[str]:
    """The SPIFFE IDs of the workload certificate a proxy runs with."""
    assert proxy.snapshot is not None
    chain = proxy.snapshot.secrets[0].certificate_chain or ""
    cert = x509.load_pem_x509_certificate(chain.encode())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(sans.get_values_for_type(x509.UniformResourceIdentifier))


class _RefusingCA:
    """A CA that refuses every CSR, and says when it was asked."""

    def __init__(self) -> None:
        self.asked = trio.Event()

    def trust_bundle(self) -> str:
        return ""

    def sign(self, csr_pem: bytes, spiffe_id: str) -> SignedCertificate:
        assert csr_pem
        self.asked.set()
        msg = f"not today: {spiffe_id}"
        raise SigningError(msg)


async def test_pushes_waiting_for_a_certificate_are_applied_once_the_mesh_needs_none(tmp_path: Path) -> None:
    frontend = """\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: frontend}}
spec: {{address: 127.0.0.1, labels: {{app: frontend}}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: frontend}}
spec:
  workloadSelector: {{labels: {{app: frontend}}}}
  ingress: [{{port: {{number: {port}, protocol: HTTP, name: http}}, defaultEndpoint: "127.0.0.1:{app}"}}]
"""
    disable = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: DISABLE}}
"""
    authority = CertificateAuthorityRef(name="meshcore", config=CaConfig(directory=str(tmp_path / "ca")))
    refusing = _RefusingCA()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as apps:
            ports = await upstreams(apps)
            files = {
                "services.yaml": SERVICES + workloads(ports),
                "frontend.yaml": frontend.format(port=free_port(), app=ports["v1"]),
            }
            async with open_mesh(tmp_path, files, authority=authority) as mesh:
                mesh.plane.signer = refusing
                started: list[tuple[Proxy, ControlPlaneSource]] = []
                serving = trio.Event()

                async def sidecar() -> None:  # it reports started once a Snapshot is live
                    started.append(await mesh.sidecar("frontend"))
                    serving.set()

                apps.start_soon(sidecar)
                await refusing.asked.wait()  # the push waits for a certificate that does not come
                assert mesh.plane.proxies["frontend-1"].status is Status.STALE
                assert not started, "nothing applied yet"
                assert mesh.edit("security.yaml", disable)
                await mesh.synced("frontend-1")  # the waiting pushes, then the last, applied and ACKed
                await serving.wait()
                ((proxy, source),) = started
                assert proxy.snapshot is not None
                assert proxy.snapshot.secrets == ()
                assert source.certificates_applied == 0
                assert await via(proxy) in {"backend-v1", "backend-v2"}  # plaintext: the backends are DISABLE
            apps.cancel_scope.cancel()


async def test_the_sidecar_keeps_serving_while_the_control_plane_is_away(tmp_path: Path) -> None:
    files = {"services.yaml": SERVICES, "routing.yaml": routing(100, 0)}
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as apps:
            ports = await upstreams(apps)
            files["services.yaml"] += workloads(ports)
            async with trio.open_nursery() as sidecars:
                async with open_mesh(tmp_path, files) as mesh:
                    mesh.nursery = sidecars
                    proxy, source = await mesh.sidecar("frontend")
                    await mesh.synced("frontend-1")
                    listen, ca = mesh.running.delivery[1], mesh.ca
                    versions = dict(source.versions)
                assert await via(proxy) == "backend-v1", "the control plane is away: the sidecar serves on"
                async with open_mesh(tmp_path, files, ca=ca, listen=Address("127.0.0.1", listen)) as again:
                    await again.synced("frontend-1")
                    assert again.plane.stat_pushes.value == 0, "an unchanged mesh: nothing to push"
                    assert source.versions == versions
                    assert again.edit("routing.yaml", routing(0, 100))
                    await again.plane.wait_for(lambda: again.plane.stat_pushes.value == 1)
                    await again.synced("frontend-1")
                    assert await via(proxy) == "backend-v2"
                sidecars.cancel_scope.cancel()
            apps.cancel_scope.cancel()


async def test_dns_services_get_the_addresses_of_their_names(tmp_path: Path) -> None:
    dns = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: local}
spec:
  hosts: [local.example]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  resolution: DNS
  endpoints: [{address: localhost}]
"""
    with trio.fail_after(TIMEOUT):
        async with open_mesh(tmp_path, {"dns.yaml": dns}) as mesh:
            proxy, _ = await mesh.sidecar("frontend")
            await mesh.synced("frontend-1")
            cluster = proxy.snapshot.cluster("outbound|80||local.example") if proxy.snapshot else None
            assert cluster is not None
            assert {str(e.address) for e in cluster.endpoints} & {"127.0.0.1:8080", "[::1]:8080"}


async def test_a_file_written_in_place_is_loaded_once_it_settles(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A mesh file caught half written (cp, an editor) is not loaded: the watcher waits for it to settle."""
    assert autojump_clock.autojump_threshold == 0  # virtual time: the polls pass at once
    directory = tmp_path / "mesh"
    directory.mkdir()
    (directory / "services.yaml").write_text(SERVICES + workloads({"v1": 8001, "v2": 8002}))
    (directory / "routing.yaml").write_text(routing(100, 0))
    plane = ControlPlane(REGISTRY, ControlPlaneConfig(poll_interval=Duration(1)))
    watcher = MeshWatcher(plane, [str(directory)], poll_interval=1.0)
    assert plane.propose(watcher.load())
    accepted = plane.stat_accepted.value
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        (directory / "routing.yaml").write_text("")  # the write has begun: no VirtualService yet
        await trio.sleep(1.0 + SETTLE / 2)  # the watcher has seen a change and waits for the files to settle
        (directory / "routing.yaml").write_text(routing(0, 100))  # the write ends
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert plane.stat_accepted.value == accepted + 1, "one mesh accepted: the one written, not the half"
    assert plane.resources is not None
    (routes,) = plane.resources.of_kind("VirtualService")
    assert [d.weight for d in routes.spec.http[0].route] == [0, 100]
