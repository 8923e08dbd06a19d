"""Certificates for the mesh's CA, built with ``cryptography``: roots, intermediates, CSRs, workload certificates.

Pure functions (no files, no state): :mod:`meshcore.plugins.ca` keeps the CA's state and
calls these. A workload certificate carries one name, its SPIFFE ID, as a critical
subject alternative name (its subject is empty), for TLS server and client use.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshcore import MeshcoreError

__all__ = [
    "SPIFFE_ID",
    "CsrRejectedError",
    "InvalidSignature",
    "check_csr",
    "create_intermediate",
    "create_root",
    "load_certificates",
    "load_private_key",
    "make_csr",
    "pem",
    "spiffe_id",
    "workload_certificate",
]

SPIFFE_ID: Final = re.compile(r"^spiffe://([a-z0-9._-]+)/ns/([A-Za-z0-9._-]+)/sa/([A-Za-z0-9._-]+)$")
BACKDATE: Final = 60.0  # seconds a certificate's validity starts before its issue (clock skew)
_MIN_RSA_BITS: Final = 2048


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    """``spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT``."""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


class CsrRejectedError(MeshcoreError, ValueError):
    """A certificate signing request the CA will not sign; the message says why.

    A :class:`meshcore.MeshcoreError`: the control plane answers the proxy with the message.
    """


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def pem(cert: x509.Certificate) -> str:
    """``cert`` as PEM text."""
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _ca_certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: Any,
    lifetime: float,
    path_length: int | None,
) -> x509.Certificate:
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(seconds=BACKDATE))
        .not_valid_after(now + dt.timedelta(seconds=lifetime))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    return builder.sign(issuer_key if issuer is not None else key, hashes.SHA256())


def create_root(trust_domain: str, lifetime: float, name: str = "meshcore root") -> tuple[str, bytes]:
    """A new self-signed root CA for ``trust_domain``: (certificate PEM, private key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    return pem(_ca_certificate(subject, key, None, None, lifetime, None)), _key_pem(key)


def create_intermediate(
    root_certificate_pem: bytes, root_key_pem: bytes, trust_domain: str, lifetime: float
) -> tuple[str, bytes]:
    """An intermediate CA signed by a root you hold: (certificate PEM, private key PEM).

    For the plug-in mode: the root's key is needed here only, never by the CA.
    """
    root = x509.load_pem_x509_certificate(root_certificate_pem)
    root_key = serialization.load_pem_private_key(root_key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, "meshcore intermediate"),
        ]
    )
    return pem(_ca_certificate(subject, key, root, root_key, lifetime, 0)), _key_pem(key)


def make_csr(identity: str) -> tuple[bytes, bytes]:
    """A new EC P-256 key and a CSR for SPIFFE ID ``identity``: (CSR PEM, private key PEM).

    What a proxy does before asking for a certificate; the key stays with the caller.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=True)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _check_public_key(csr: x509.CertificateSigningRequest) -> None:
    key = csr.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            msg = f"the CSR's RSA key has {key.key_size} bits, fewer than {_MIN_RSA_BITS}"
            raise CsrRejectedError(msg)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            msg = f"the CSR's EC key is on curve {key.curve.name}, not P-256 or P-384"
            raise CsrRejectedError(msg)
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        msg = f"the CSR's key type ({type(key).__name__}) is not RSA, EC or Ed25519"
        raise CsrRejectedError(msg)


def check_csr(csr_pem: bytes, identity: str, trust_domain: str) -> x509.CertificateSigningRequest:
    """The CSR of ``csr_pem`` if it may be signed for ``identity``; CsrRejectedError if not.

    Its signature must verify (the requester holds the key); it may ask for no subject
    alternative name other than ``identity`` (none at all is fine: the CA puts it in);
    ``identity`` must be a SPIFFE ID of ``trust_domain``.
    """
    match = SPIFFE_ID.match(identity)
    if match is None:
        msg = f"{identity!r} is not a workload SPIFFE ID (spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/ACCOUNT)"
        raise CsrRejectedError(msg)
    if match.group(1) != trust_domain:
        msg = f"{identity!r} is not in trust domain {trust_domain!r}"
        raise CsrRejectedError(msg)
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as err:
        msg = f"not a PEM certificate signing request: {err}"
        raise CsrRejectedError(msg) from None
    if not csr.is_signature_valid:
        msg = "the CSR's signature does not verify: the requester does not hold its key"
        raise CsrRejectedError(msg)
    _check_public_key(csr)
    try:
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return csr
    asked = [str(name.value) for name in sans]
    if asked != [identity] or not all(isinstance(n, x509.UniformResourceIdentifier) for n in sans):
        msg = f"the CSR asks for {', '.join(asked) or 'nothing'}; the caller may claim {identity} only"
        raise CsrRejectedError(msg)
    return csr


def load_certificates(path: str) -> list[x509.Certificate]:
    """Every certificate of PEM file ``path``, in order."""
    data = Path(path).read_bytes()
    return x509.load_pem_x509_certificates(data)


def workload_certificate(
    csr: x509.CertificateSigningRequest,
    identity: str,
    signer: x509.Certificate,
    signer_key: Any,
    lifetime: float,
) -> x509.Certificate:
    """The workload certificate for ``identity`` with ``csr``'s key, signed by ``signer``.

    Valid ``lifetime`` seconds from now (never past the signer's own end), started a little
    earlier (clock skew, at most the lifetime).
    """
    now = _now()
    not_after = min(now + dt.timedelta(seconds=lifetime), signer.not_valid_after_utc)
    backdate = min(BACKDATE, lifetime)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(signer.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(seconds=backdate))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(signer_key, hashes.SHA256())
    )


def load_private_key(data: bytes, password: bytes | None = None) -> Any:
    """A PEM private key (the CA's signing key)."""
    return serialization.load_pem_private_key(data, password=password)
