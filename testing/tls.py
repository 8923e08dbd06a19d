"""A test certificate authority for TLS listeners: PEM files for configs, contexts for clients.

    ca = MeshcoreCA(tmp_path)
    config = ca.with_tls(http_proxy_config([upstream.endpoint]))  # every chain speaks TLS
    proxy = await meshcore_proxy(config)
    client = proxy.client(ssl_context=ca.client_context())

Certificates are issued by a ``trustme.CA`` (in memory, never trusted outside the test);
trustme comes with meshcore's ``test`` extra.
"""

from __future__ import annotations

import copy
import re
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    import trustme

__all__ = ["DEFAULT_IDENTITIES", "MeshcoreCA", "TlsFiles", "issue_with_uris"]

DEFAULT_IDENTITIES = ("localhost", "127.0.0.1", "::1")
"""What a certificate is issued for unless told otherwise: the loopback names."""


@attrs.frozen
class TlsFiles:
    """A certificate chain and its private key, as PEM files.

    Attributes:
        certificate_file: the certificate, then its issuers.
        private_key_file: the private key.
    """

    certificate_file: str
    private_key_file: str


class MeshcoreCA:
    """A ``trustme.CA`` that writes what listeners and clients need into a directory.

    Args:
        directory: where PEM files are written (created if missing).
        ca: the CA to issue from (default: a new one).

    Attributes:
        ca: the ``trustme.CA``: issue more certificates, build contexts of your own.
        directory: where the files are.
        ca_file: the CA certificate as PEM: the ``client_ca_file`` of a listener, or what
            an outside client (curl ``--cacert``, httpx ``verify=``) trusts.
    """

    def __init__(self, directory: str | Path, ca: trustme.CA | None = None) -> None:
        if ca is None:
            try:
                import trustme  # noqa: PLC0415 - a test-only dependency, needed only here
            except ImportError as err:
                msg = "MeshcoreCA needs trustme: pip install 'meshcore[test]'"
                raise RuntimeError(msg) from err
            ca = trustme.CA()
        self.ca = ca
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_file = self.directory / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        self._issued = 0

    def issue(self, *identities: str, uris: Sequence[str] = ()) -> TlsFiles:
        """Issue a certificate for ``identities`` (default: the loopback names); write its files.

        Args:
            identities: host names, IP addresses or wildcards (``*.example.com``).
            uris: URI SANs too, such as a workload's SPIFFE ID
                (``spiffe://cluster.local/ns/default/sa/frontend``).
        """
        names = identities or (() if uris else DEFAULT_IDENTITIES)
        self._issued += 1
        stem = f"{self._issued:02d}-{re.sub(r'[^A-Za-z0-9.-]+', '_', (*names, *uris)[0])}"
        chain, key = self._issue_pem(names, uris)
        cert_file, key_file = self.directory / f"{stem}.pem", self.directory / f"{stem}.key"
        cert_file.write_bytes(chain)
        key_file.write_bytes(key)
        return TlsFiles(str(cert_file), str(key_file))

    def _issue_pem(self, names: Sequence[str], uris: Sequence[str]) -> tuple[bytes, bytes]:
        """A leaf certificate chain and its key as PEM.

        Certificates with URI SANs are signed with the CA's key here: trustme issues host
        names, addresses and e-mail addresses only.
        """
        if not uris:
            leaf = self.ca.issue_cert(*names)
            return b"".join(pem.bytes() for pem in leaf.cert_chain_pems), leaf.private_key_pem.bytes()
        return issue_with_uris(self.ca, names, uris)

    def tls_context(self, *identities: str, require_client_certificate: bool = False) -> dict[str, Any]:
        """The ``tls`` section of a filter chain, with a new certificate for ``identities``.

        Args:
            identities: what the certificate is for (default: the loopback names).
            require_client_certificate: ask clients for a certificate issued by this CA
                (mutual TLS; see :meth:`client_context`).
        """
        files = self.issue(*identities)
        section: dict[str, Any] = {
            "certificate_file": files.certificate_file,
            "private_key_file": files.private_key_file,
        }
        if require_client_certificate:
            section["client_ca_file"] = str(self.ca_file)
            section["require_client_certificate"] = True
        return section

    def with_tls(
        self,
        config: Mapping[str, Any],
        *identities: str,
        listener: str | None = None,
        require_client_certificate: bool = False,
    ) -> dict[str, Any]:
        """A copy of config dict ``config`` whose filter chains all speak TLS.

        Args:
            config: a config dict (not changed).
            identities: what the certificate is for (default: the loopback names).
            listener: change only this listener (default: every one).
            require_client_certificate: mutual TLS (see :meth:`tls_context`).

        Raises:
            LookupError: there is no listener ``listener``.
        """
        out = copy.deepcopy(dict(config))
        section = self.tls_context(*identities, require_client_certificate=require_client_certificate)
        found = False
        for item in out.get("listeners", []):
            if listener is None or item.get("name") == listener:
                found = True
                for chain in item.get("filter_chains", []):
                    chain["tls"] = dict(section)
        if not found:
            msg = f"no listener {listener!r} in the config" if listener else "the config has no listeners"
            raise LookupError(msg)
        return out

    def client_context(
        self, *, client_identity: str | None = None, client_uris: Sequence[str] = ()
    ) -> ssl.SSLContext:
        """An SSL context for clients that trusts this CA (and only it).

        Args:
            client_identity: also present a client certificate issued for this name (for a
                listener with ``require_client_certificate``).
            client_uris: also present a client certificate with these URI SANs (a SPIFFE ID).
        """
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self.ca.configure_trust(context)
        if client_identity is not None or client_uris:
            files = self.issue(*([client_identity] if client_identity else []), uris=client_uris)
            context.load_cert_chain(files.certificate_file, files.private_key_file)
        return context

    def __repr__(self) -> str:
        return f"<MeshcoreCA in {self.directory}>"


def issue_with_uris(ca: trustme.CA, names: Sequence[str], uris: Sequence[str]) -> tuple[bytes, bytes]:
    """A leaf certificate (PEM chain) and key (PEM) from ``ca`` with DNS/IP and URI SANs.

    Valid for a day, for both server and client authentication, EC P-256 key.
    """
    import datetime as dt  # noqa: PLC0415 - only for URI SANs
    import ipaddress  # noqa: PLC0415

    from cryptography import x509  # noqa: PLC0415 - trustme's own dependency
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415

    issuer_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    issuer_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    general: list[x509.GeneralName] = []
    for name in names:
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            general.append(x509.DNSName(name))
    general += [x509.UniformResourceIdentifier(uri) for uri in uris]
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshcore test")]))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(general), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]  # trustme's CA key is RSA or EC
    )
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca.cert_pem.bytes()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return chain, key_pem
