"""The certificate-signing seam: what the control plane calls when a proxy sends a CSR.

A proxy makes its own key and sends a certificate signing request over its delivery
stream; the control plane asks its :class:`Signer` to sign it for the proxy's SPIFFE
identity (``spiffe://<trust domain>/ns/<namespace>/sa/<service account>``, from the
mesh model, never from the CSR) and sends the certificate back. Keys never leave proxies.

meshcore's CA plugins (``meshcore_certificate_authorities``) provide signers; without one
a CSR gets the error "no CA configured".
"""

from __future__ import annotations

from typing import Protocol

import attrs

from meshcore.errors import MeshcoreError

__all__ = ["NO_CA", "SignedCertificate", "Signer", "SigningError"]

NO_CA = "no CA configured"
"""The error a CSR gets from a control plane without a signer."""


@attrs.frozen(kw_only=True)
class SignedCertificate:
    """A signed workload certificate.

    Attributes:
        certificate_chain: PEM, the workload's certificate first, then intermediates.
        trusted_ca: PEM, the roots peers' certificates are checked against (one or more).
        not_after: when the certificate expires (seconds since the epoch).
    """

    certificate_chain: str
    trusted_ca: str
    not_after: float


class SigningError(MeshcoreError):
    """A CSR that cannot be signed (malformed, a key too weak, a name it may not claim)."""


class Signer(Protocol):
    """Signs CSRs for workload identities (a certificate authority)."""

    def sign(self, csr_pem: bytes, spiffe_id: str) -> SignedCertificate:
        """A certificate for the key of ``csr_pem`` with ``spiffe_id`` as its URI SAN; SigningError if not."""
        ...

    def trust_bundle(self) -> str:
        """The PEM roots that certificates it signs chain to."""
        ...
