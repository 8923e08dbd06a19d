"""The TLS contexts of listeners and clusters, built from config the one way the runtime builds them.

Validation (:mod:`meshcore.runtime.validation`) builds them the same way before a Snapshot
is applied, so that a certificate, key or CA bundle that does not load is a validation
problem with its field path, not a failure while applying.
"""

from __future__ import annotations

import ssl

from meshcore.config import TlsContext, UpstreamTls

__all__ = ["client_context", "server_context"]


def server_context(tls: TlsContext) -> ssl.SSLContext:
    """The SSLContext a listener's filter chain presents (and verifies clients with)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.certificate_file, tls.private_key_file)
    if tls.client_ca_file is not None:
        context.load_verify_locations(tls.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
    if tls.alpn:
        context.set_alpn_protocols(list(tls.alpn))
    return context


def client_context(tls: UpstreamTls) -> ssl.SSLContext:
    """The SSLContext a cluster connects to its endpoints with."""
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.certificate_file is not None:
        context.load_cert_chain(tls.certificate_file, tls.private_key_file)
    if tls.alpn:
        context.set_alpn_protocols(list(tls.alpn))
    return context
