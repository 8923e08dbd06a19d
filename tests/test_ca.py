"""The ``meshcore`` CA: CSRs checked and signed, plug-in intermediates, root rotation, the plugin hook.

The command line (``meshcore ca``) is run by tests/test_security_guide.py, as docs/security.md shows it.

Certificates are checked by OpenSSL itself (``openssl verify``), not by the code that made them.
"""

from __future__ import annotations

import shutil
import subprocess
import types
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import meshcore
from meshcore.config import CertificateAuthorityRef, Structurer
from meshcore.plugins.ca import (
    CaConfig,
    CsrRejectedError,
    LocalCA,
    SignedCertificate,
    create_intermediate,
    create_root,
    make_csr,
)

ID = "spiffe://cluster.local/ns/shop/sa/frontend"
OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command (Debian: openssl)")


def openssl_verify(tmp_path: Path, bundle: str, chain: str, name: str = "leaf") -> bool:
    """Whether OpenSSL verifies ``chain`` (leaf first) against roots ``bundle``."""
    certs = x509.load_pem_x509_certificates(chain.encode())
    leaf, untrusted = tmp_path / f"{name}.pem", tmp_path / f"{name}-untrusted.pem"
    roots = tmp_path / f"{name}-roots.pem"
    leaf.write_bytes(certs[0].public_bytes(serialization.Encoding.PEM))
    untrusted.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs[1:]))
    roots.write_text(bundle)
    command = [str(OPENSSL), "verify", "-purpose", "sslclient", "-CAfile", str(roots)]
    if len(certs) > 1:
        command += ["-untrusted", str(untrusted)]
    result = subprocess.run([*command, str(leaf)], capture_output=True, text=True, check=False, timeout=10)  # noqa: S603 - our own arguments
    return result.returncode == 0


def test_a_csr_is_signed_for_the_identity_it_asks_for(tmp_path: Path) -> None:
    ca = LocalCA(CaConfig(directory=str(tmp_path / "ca"), workload_lifetime=meshcore.Duration(90)))
    csr, key = make_csr(ID)
    signed = ca.sign(csr, ID)
    assert isinstance(signed, SignedCertificate)
    leaf = x509.load_pem_x509_certificates(signed.certificate_chain.encode())[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.critical
    assert sans.value.get_values_for_type(x509.UniformResourceIdentifier) == [ID]
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    lifetime = leaf.not_valid_after_utc.timestamp() - leaf.not_valid_before_utc.timestamp()
    assert 90 < lifetime <= 150  # 90 s, started up to a minute early (clock skew)
    assert abs(signed.not_after - leaf.not_valid_after_utc.timestamp()) < 1
    # The key never left: the certificate holds the CSR's public key.
    private = serialization.load_pem_private_key(key, password=None)
    assert leaf.public_key() == private.public_key()
    assert openssl_verify(tmp_path, ca.trust_bundle(), signed.certificate_chain)


def test_the_root_is_created_once_and_kept(tmp_path: Path) -> None:
    first = LocalCA(CaConfig(directory=str(tmp_path)))
    again = LocalCA(CaConfig(directory=str(tmp_path)))
    assert first.trust_bundle() == again.trust_bundle()
    assert (tmp_path / "root-1.key").stat().st_mode & 0o077 == 0  # the key is private


def tampered(csr_pem: bytes) -> bytes:
    """The CSR with a byte of its signature flipped."""
    der = bytearray(x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)


def csr_with(names: list[x509.GeneralName], key: object = None) -> bytes:
    signer = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    return builder.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("csr", "identity", "reason"),
    [
        (make_csr("spiffe://cluster.local/ns/admin/sa/root")[0], ID, "the caller may claim"),
        (csr_with([x509.UniformResourceIdentifier(ID), x509.DNSName("evil.example")]), ID, "may claim"),
        (tampered(make_csr(ID)[0]), ID, "signature does not verify"),
        (make_csr(ID)[0], "spiffe://other.domain/ns/shop/sa/frontend", "not in trust domain"),
        (make_csr(ID)[0], "spiffe://cluster.local/shop/frontend", "not a workload SPIFFE ID"),
        (b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", ID, "not a PEM"),
        (
            csr_with([], rsa.generate_private_key(public_exponent=65537, key_size=1024)),  # noqa: S505 - refused on purpose
            ID,
            "fewer than 2048",
        ),
    ],
    ids=[
        "other identity",
        "extra SAN",
        "bad signature",
        "other trust domain",
        "not spiffe",
        "garbage",
        "weak key",
    ],
)
def test_a_csr_that_may_not_be_signed_is_refused(
    tmp_path: Path, csr: bytes, identity: str, reason: str
) -> None:
    ca = LocalCA(CaConfig(directory=str(tmp_path)))
    with pytest.raises(CsrRejectedError, match=reason):
        ca.sign(csr, identity)


def test_a_csr_without_sans_gets_the_callers_identity(tmp_path: Path) -> None:
    ca = LocalCA(CaConfig(directory=str(tmp_path)))
    signed = ca.sign(csr_with([]), ID)
    leaf = x509.load_pem_x509_certificates(signed.certificate_chain.encode())[0]
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    ) == [ID]


def test_plug_in_mode_signs_under_the_users_root(tmp_path: Path) -> None:
    root_pem, root_key = create_root("cluster.local", 3600, "corp root")
    ca_pem, ca_key = create_intermediate(root_pem.encode(), root_key, "cluster.local", 3600)
    (tmp_path / "root-cert.pem").write_text(root_pem)
    (tmp_path / "ca-cert.pem").write_text(ca_pem)
    (tmp_path / "ca-key.pem").write_bytes(ca_key)
    config = CaConfig(
        directory=str(tmp_path / "state"),
        ca_certificate_file=str(tmp_path / "ca-cert.pem"),
        ca_private_key_file=str(tmp_path / "ca-key.pem"),
        root_certificate_file=str(tmp_path / "root-cert.pem"),
    )
    ca = LocalCA(config)
    signed = ca.sign(make_csr(ID)[0], ID)
    assert len(x509.load_pem_x509_certificates(signed.certificate_chain.encode())) == 2  # leaf, intermediate
    assert signed.trusted_ca == root_pem
    assert openssl_verify(tmp_path, root_pem, signed.certificate_chain)
    # Not under the root given: refused when loaded.
    other_root, _ = create_root("cluster.local", 3600, "other root")
    (tmp_path / "root-cert.pem").write_text(other_root)
    with pytest.raises(ValueError, match="not issued by a root of root_certificate_file"):
        LocalCA(config)
    with pytest.raises(ValueError, match=r"a plug-in CA's root is yours"):
        ca.rotation_step("prepare")


def test_root_rotation_with_overlap(tmp_path: Path) -> None:
    directory = str(tmp_path / "ca")
    ca = LocalCA(CaConfig(directory=directory))
    old = ca.sign(make_csr(ID)[0], ID).certificate_chain
    with pytest.raises(ValueError, match="run the prepare step first"):
        ca.rotation_step("activate")
    ca.rotation_step("prepare")
    bundle = ca.trust_bundle()
    assert bundle.count("BEGIN CERTIFICATE") == 2
    still_old = ca.sign(make_csr(ID)[0], ID).certificate_chain
    ca.rotation_step("activate")
    new = ca.sign(make_csr(ID)[0], ID).certificate_chain
    # During the overlap every certificate verifies against the bundle the proxies hold.
    for name, chain in (("old", old), ("still_old", still_old), ("new", new)):
        assert openssl_verify(tmp_path, ca.trust_bundle(), chain, name)
    # A control plane sharing the directory sees each step on reload.
    assert LocalCA(CaConfig(directory=directory)).trust_bundle() == ca.trust_bundle()
    ca.rotation_step("finish")
    assert ca.trust_bundle().count("BEGIN CERTIFICATE") == 1
    assert openssl_verify(tmp_path, ca.trust_bundle(), new, "new2")
    assert not openssl_verify(tmp_path, ca.trust_bundle(), old, "old2")


class ExternalCA:
    """A third-party CA: it only has to satisfy the Signer protocol."""

    def __init__(self, _config: object) -> None:
        self.signed: list[str] = []

    def sign(self, _csr_pem: bytes, spiffe_id: str) -> SignedCertificate:
        self.signed.append(spiffe_id)
        return SignedCertificate(certificate_chain="", trusted_ca="", not_after=0.0)

    def trust_bundle(self) -> str:
        return ""


def test_a_third_party_ca_plugs_in_through_the_hook() -> None:
    plugin = types.ModuleType("vault_ca")

    @meshcore.hookimpl
    def meshcore_certificate_authorities() -> list[meshcore.CertificateAuthorityType]:
        return [meshcore.CertificateAuthorityType(name="vault", factory=ExternalCA, description="Vault PKI")]

    plugin.meshcore_certificate_authorities = meshcore_certificate_authorities  # type: ignore[attr-defined]
    registry = meshcore.build_registry(autoload=False, plugins=[("vault_ca", plugin)])
    assert registry.problems == []
    assert set(registry.names("certificate_authority")) == {"meshcore", "vault"}
    found = registry.get("certificate_authority", "vault")
    assert found is not None
    signer = found.factory(None)
    signer.sign(b"", ID)
    assert signer.signed == [ID]
    builtin = registry.get("certificate_authority", "meshcore")
    assert builtin is not None
    assert builtin.config is CaConfig


def test_a_ca_section_names_a_certificate_authority_and_its_config(tmp_path: Path) -> None:
    """What a control plane's ``ca:`` section structures into, and builds its Signer from."""
    registry = meshcore.build_registry(autoload=False)
    structurer = Structurer(registry)
    ref = structurer.structure(
        {"meshcore": {"directory": str(tmp_path), "trust_domain": "example.org"}}, CertificateAuthorityRef
    )
    assert structurer.problems == []
    assert isinstance(ref, CertificateAuthorityRef)
    found = registry.get("certificate_authority", ref.name)
    assert found is not None
    signer = found.factory(ref.config)
    identity = "spiffe://example.org/ns/a/sa/b"
    assert signer.sign(make_csr(identity)[0], identity).trusted_ca == signer.trust_bundle()
    structurer.structure({"vault": {}}, CertificateAuthorityRef)
    assert [p.message for p in structurer.problems] == [
        "unknown certificate authority 'vault' (known: meshcore)"
    ]
