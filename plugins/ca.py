"""The ``meshcore`` certificate authority: short-lived SPIFFE workload certificates from CSRs.

Proxies generate their own keys and send certificate signing requests; the CA checks
each CSR's signature and that it asks for no identity but the one its caller has proven
(``spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT``), and signs a certificate
with that SPIFFE ID as its only subject alternative name, valid ``workload_lifetime``
(24 h by default, down to a second), for both TLS server and client authentication.
Private keys never reach it.

Two ways to run it (built on ``cryptography``; no hand-written crypto):

- **its own root** (the default): a self-signed root is created in ``directory`` on first
  use (EC P-256, ``root_lifetime``) and signs workload certificates directly;
- **under your root** (Istio's "plug-in CA"): ``ca_certificate_file`` and
  ``ca_private_key_file`` hold an intermediate CA issued by a root you keep offline,
  ``root_certificate_file`` that root (or several, during a rotation), and
  ``certificate_chain_file`` the intermediates between them if there are more than one.
  :func:`create_intermediate` makes such an intermediate from a root and its key.

The trust bundle (what proxies verify peers against) holds every trusted root, so a root
can be rotated with overlap. With its own root, a rotation is three steps on the CA's
directory (``meshcore ca rotate-root DIR --step prepare|activate|finish``, see
docs/security.md): *prepare* adds a new root to the bundle (certificates are still signed
by the old one), *activate* signs with the new root once every proxy trusts it, *finish*
drops the old root once no certificate it signed is still valid. The CA re-reads its
directory on :meth:`LocalCA.reload`, so a control plane takes each step without a restart.

Registered through ``meshcore_certificate_authorities`` as ``meshcore``: a third-party CA
(Vault, a cloud CA) registers the same way, and is chosen by name in the control plane's
``ca:`` section.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import structlog

import meshcore
from meshcore import Duration, non_empty

if TYPE_CHECKING:
    from types import ModuleType

    from cryptography import x509

    from meshcore.plugins.ca_x509 import (
        CsrRejectedError,
        create_intermediate,
        create_root,
        make_csr,
        spiffe_id,
    )

# cryptography (9 MiB of a proxy's memory) loads with the first CA, not with the plugin:
# every proxy registers this plugin, few run a CA. The names re-exported from ca_x509 load
# it on first use (module __getattr__).
_FROM_X509: Final = frozenset(
    {"CsrRejectedError", "create_intermediate", "create_root", "make_csr", "spiffe_id"}
)


def _x509() -> ModuleType:
    from meshcore.plugins import ca_x509  # noqa: PLC0415 - see _FROM_X509

    return ca_x509


def __getattr__(name: str) -> Any:
    if name in _FROM_X509:
        return getattr(_x509(), name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


__all__ = [
    "CaConfig",
    "CsrRejectedError",
    "LocalCA",
    "SignedCertificate",
    "create_intermediate",
    "create_root",
    "make_csr",
    "spiffe_id",
]

log = structlog.get_logger("meshcore.ca")

_STATE: Final = "state.json"


@attrs.frozen
class SignedCertificate:
    """A signed workload certificate, as the control plane delivers it.

    Attributes:
        certificate_chain: PEM: the workload certificate, then the intermediates up to a root.
        trusted_ca: PEM: every root of the trust bundle.
        not_after: when the certificate expires (POSIX time).
    """

    certificate_chain: str
    trusted_ca: str
    not_after: float


def _valid_lifetime(_instance: Any, attribute: attrs.Attribute[Any], value: Duration) -> None:
    if float(value) < 1:
        msg = f"{attribute.name} must be at least 1s, got {float(value):g}s"
        raise ValueError(msg)


@attrs.frozen(kw_only=True)
class CaConfig:
    """Config of the ``meshcore`` certificate authority."""

    directory: str = attrs.field(validator=non_empty)
    """Where the CA keeps its roots and its state (created if missing; keep it private)."""
    trust_domain: str = attrs.field(default="cluster.local", validator=non_empty)
    """The SPIFFE trust domain of the identities it signs."""
    workload_lifetime: Duration = attrs.field(default=Duration(24 * 3600), validator=_valid_lifetime)
    """How long a workload certificate is valid (proxies renew at about half of it)."""
    root_lifetime: Duration = attrs.field(default=Duration(10 * 365 * 24 * 3600), validator=_valid_lifetime)
    """How long a root it creates is valid."""
    ca_certificate_file: str | None = meshcore.file_field("pem_certificates", default=None)
    """Plug-in mode: the intermediate CA certificate that signs (issued by your root)."""
    ca_private_key_file: str | None = meshcore.file_field("pem_private_key", default=None)
    """Plug-in mode: its private key."""
    root_certificate_file: str | None = meshcore.file_field("pem_certificates", default=None)
    """Plug-in mode: your root certificate(s), the trust bundle."""
    certificate_chain_file: str | None = meshcore.file_field("pem_certificates", default=None)
    """Plug-in mode: intermediates between the signing CA and the root, if any."""

    def __attrs_post_init__(self) -> None:
        plug_in = [self.ca_certificate_file, self.ca_private_key_file, self.root_certificate_file]
        if any(f is not None for f in plug_in) and not all(f is not None for f in plug_in):
            msg = "a plug-in CA needs ca_certificate_file, ca_private_key_file and root_certificate_file"
            raise ValueError(msg)


# -- the CA ----------------------------------------------------------------------------------


class LocalCA:
    """The ``meshcore`` CA (see the module docstring). Satisfies the control plane's ``Signer``.

    Args:
        config: where it lives and what it signs.

    Raises:
        ValueError: the plug-in files cannot be read or do not fit together.
    """

    def __init__(self, config: CaConfig) -> None:
        self.config = config
        self.directory = Path(config.directory)
        self._signer: x509.Certificate | None = None
        self._signer_key: Any = None
        self._chain: list[x509.Certificate] = []
        self._bundle: list[x509.Certificate] = []
        self.reload()

    # -- state on disk -------------------------------------------------------------------------

    def reload(self) -> None:
        """Read the signing CA and the trust bundle again (after a rotation step)."""
        if self.config.ca_certificate_file is not None:
            self._load_plug_in()
        else:
            self._load_own()
        log.info(
            "ca_loaded",
            trust_domain=self.config.trust_domain,
            roots=len(self._bundle),
            signer=self._signer.subject.rfc4514_string() if self._signer is not None else None,
        )

    def _load_plug_in(self) -> None:
        config = self.config
        assert config.ca_certificate_file is not None  # noqa: S101 - plug-in mode
        assert config.ca_private_key_file is not None  # noqa: S101
        assert config.root_certificate_file is not None  # noqa: S101
        try:
            signer = _x509().load_certificates(config.ca_certificate_file)[0]
            key = _x509().load_private_key(Path(config.ca_private_key_file).read_bytes(), password=None)
            roots = _x509().load_certificates(config.root_certificate_file)
            chain = (
                _x509().load_certificates(config.certificate_chain_file)
                if config.certificate_chain_file
                else []
            )
        except (OSError, ValueError, IndexError) as err:
            msg = f"cannot load the plug-in CA files: {err}"
            raise ValueError(msg) from err
        self._check_issued_by_bundle(signer, chain, roots)
        self._signer, self._signer_key, self._chain, self._bundle = signer, key, chain, roots

    def _check_issued_by_bundle(
        self, signer: x509.Certificate, chain: list[x509.Certificate], roots: list[x509.Certificate]
    ) -> None:
        top = chain[-1] if chain else signer
        for root in roots:
            try:
                top.verify_directly_issued_by(root)
            except (ValueError, TypeError, _x509().InvalidSignature):
                continue
            return
        msg = "ca_certificate_file (or the top of certificate_chain_file) is not issued by a root of root_certificate_file"
        raise ValueError(msg)

    def _state(self) -> dict[str, Any]:
        path = self.directory / _STATE
        if path.exists():
            state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            return state
        return {"roots": [], "signing": None}

    def _save_state(self, state: dict[str, Any]) -> None:
        path = self.directory / _STATE
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        partial.replace(path)  # atomic: a CA reading meanwhile sees the old state or the new

    def _new_root(self, state: dict[str, Any]) -> int:
        number = max(state["roots"], default=0) + 1
        cert, key = _x509().create_root(
            self.config.trust_domain, float(self.config.root_lifetime), f"meshcore root {number}"
        )
        key_path = self.directory / f"root-{number}.key"
        key_path.write_bytes(key)
        key_path.chmod(0o600)
        (self.directory / f"root-{number}.pem").write_text(cert, encoding="ascii")
        state["roots"].append(number)
        return number

    def _load_own(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        state = self._state()
        if not state["roots"]:
            state["signing"] = self._new_root(state)
            self._save_state(state)
            log.info("ca_root_created", directory=str(self.directory), root=state["signing"])
        number = state["signing"]
        self._signer = _x509().load_certificates(str(self.directory / f"root-{number}.pem"))[0]
        self._signer_key = _x509().load_private_key(
            (self.directory / f"root-{number}.key").read_bytes(), password=None
        )
        self._chain = []
        self._bundle = [
            _x509().load_certificates(str(self.directory / f"root-{n}.pem"))[0] for n in state["roots"]
        ]

    # -- root rotation (own root) ----------------------------------------------------------------

    def rotation_step(self, step: str) -> str:
        """One step of a root rotation: ``prepare``, ``activate`` or ``finish``; what it did.

        Raises:
            ValueError: the step does not follow the one before, or the CA is a plug-in CA
                (rotate your root by updating root_certificate_file, then the intermediate).
        """
        if self.config.ca_certificate_file is not None:
            msg = "a plug-in CA's root is yours: add the new root to root_certificate_file, then replace the intermediate"
            raise ValueError(msg)
        state = self._state()
        roots, signing = state["roots"], state["signing"]
        if step == "prepare":
            if len(roots) > 1:
                msg = f"a rotation is under way (trusted roots {roots}, signing with {signing}): activate or finish it"
                raise ValueError(msg)
            number = self._new_root(state)
            done = f"root {number} created and trusted; still signing with root {signing}"
        elif step == "activate":
            newest = max(roots)
            if newest == signing:
                msg = "nothing to activate: run the prepare step first"
                raise ValueError(msg)
            state["signing"] = newest
            done = f"signing with root {newest}; root(s) {[r for r in roots if r != newest]} still trusted"
        elif step == "finish":
            if len(roots) == 1 or max(roots) != signing:
                msg = "nothing to finish: prepare and activate first"
                raise ValueError(msg)
            state["roots"] = [signing]
            done = f"only root {signing} is trusted now"
        else:
            msg = f"unknown rotation step {step!r} (prepare, activate, finish)"
            raise ValueError(msg)
        self._save_state(state)
        self.reload()
        log.info("ca_root_rotation_step", step=step, result=done)
        return done

    # -- the Signer protocol ---------------------------------------------------------------------

    def trust_bundle(self) -> str:
        """PEM of every trusted root."""
        return "".join(_x509().pem(root) for root in self._bundle)

    def sign(self, csr_pem: bytes, spiffe_id: str) -> SignedCertificate:
        """A workload certificate for ``spiffe_id`` from ``csr_pem``; CsrRejectedError if it may not.

        ``spiffe_id`` is the identity the caller has proven (a bootstrap token, or the
        SPIFFE ID of its current certificate): the CSR may ask for it and nothing else.
        """
        csr = _x509().check_csr(csr_pem, spiffe_id, self.config.trust_domain)
        signer, key = self._signer, self._signer_key
        assert signer is not None  # noqa: S101 - loaded by reload()
        cert = _x509().workload_certificate(csr, spiffe_id, signer, key, float(self.config.workload_lifetime))
        not_after = cert.not_valid_after_utc
        plug_in = self.config.ca_certificate_file is not None
        chain = [cert, signer, *self._chain] if plug_in else [cert]  # an own root is in the bundle
        log.info(
            "certificate_signed",
            spiffe_id=spiffe_id,
            not_after=not_after.isoformat(),
            serial=cert.serial_number,
        )
        return SignedCertificate(
            certificate_chain="".join(_x509().pem(c) for c in chain),
            trusted_ca=self.trust_bundle(),
            not_after=not_after.timestamp(),
        )


@meshcore.hookimpl
def meshcore_certificate_authorities() -> list[meshcore.CertificateAuthorityType]:
    """Register the ``meshcore`` CA."""
    return [
        meshcore.CertificateAuthorityType(
            name="meshcore",
            factory=LocalCA,
            config=CaConfig,
            description="signs short-lived SPIFFE workload certificates with its own root or under yours",
        )
    ]
