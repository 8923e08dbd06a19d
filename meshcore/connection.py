"""A downstream connection as filters see it: addresses, TLS, and the peer's identity.

It sits below both the HTTP layer and the runtime (it imports neither): L4 filters get
one per connection, and every HTTP request carries the one it came on
(:attr:`meshcore.Request.connection`), so that an L7 filter can decide by the peer's
SPIFFE identity, an access log can name it, and a load balancer can hash its address.
"""

from __future__ import annotations

import functools
from typing import Any

import trio

__all__ = ["Connection", "PeerTls", "join_host_port", "peer_tls", "split_host_port"]


@functools.lru_cache(maxsize=4096)  # pure, and called with the same few peers on every request
def split_host_port(address: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` as ``(host, port)``, brackets removed; port 0 if absent."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or (host.count(":") and not host.startswith("[")):
        # No port, or a bare IPv6 address ("::1"): the whole string is the host.
        return address.strip("[]"), 0
    return host.strip("[]"), int(port)


def join_host_port(host: str, port: int) -> str:
    """``"host:port"``, or ``"[v6]:port"`` for an IPv6 address: the inverse of split_host_port."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class PeerTls:
    """What the TLS handshake established about a connection's peer.

    Attributes:
        version: the negotiated protocol ("TLSv1.3").
        certificate: the peer's certificate, DER-encoded (None when it sent none).
        uri_sans: the URI subject alternative names of a verified peer certificate
            (a workload's SPIFFE ID: ``spiffe://trust.domain/ns/NS/sa/SA``).
        dns_sans: its DNS subject alternative names.
        subject: its subject, as ``CN=name,O=org`` (None without a verified certificate).
    """

    __slots__ = ("certificate", "dns_sans", "subject", "uri_sans", "version")

    def __init__(
        self,
        *,
        version: str | None = None,
        certificate: bytes | None = None,
        uri_sans: tuple[str, ...] = (),
        dns_sans: tuple[str, ...] = (),
        subject: str | None = None,
    ) -> None:
        self.version = version
        self.certificate = certificate
        self.uri_sans = uri_sans
        self.dns_sans = dns_sans
        self.subject = subject

    def __repr__(self) -> str:
        return f"<PeerTls {self.version} uri_sans={list(self.uri_sans)}>"


_SUBJECT_KEYS = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
}


def peer_tls(ssl_object: Any) -> PeerTls:
    """What ``ssl_object`` (an ``ssl.SSLObject`` or an established ``trio.SSLStream``) knows of its peer.

    SANs and subject come only from a certificate the handshake verified; an unverified
    certificate (a listener that does not ask for one) yields its DER bytes alone.
    """
    version = ssl_object.version()
    der = ssl_object.getpeercert(binary_form=True)
    info = ssl_object.getpeercert() if der else None
    if not info:
        return PeerTls(version=version, certificate=der or None)
    sans = info.get("subjectAltName", ())
    subject = ",".join(
        f"{_SUBJECT_KEYS.get(key, key)}={value}" for rdn in info.get("subject", ()) for key, value in rdn
    )
    return PeerTls(
        version=version,
        certificate=der,
        uri_sans=tuple(value for kind, value in sans if kind == "URI"),
        dns_sans=tuple(value for kind, value in sans if kind == "DNS"),
        subject=subject or None,
    )


class Connection:
    """A downstream connection as filters see it.

    Attributes:
        stream: the byte stream (TLS already terminated when the chain has TLS).
        id: a process-unique connection id.
        peer: the client's "host:port" ("[v6]:port" for IPv6).
        local: the local "host:port" the connection came in on.
        listener: the listener's name.
        server_name: the TLS SNI, if any.
        alpn: the negotiated ALPN protocol, if any.
        tls: what TLS established about the peer (None on a plaintext connection).
        metadata: free-form data filters share for the life of the connection (an L4
            filter may set what the HTTP filters of the same connection read).
    """

    __slots__ = (
        "_host",
        "alpn",
        "id",
        "listener",
        "local",
        "metadata",
        "peer",
        "server_name",
        "stream",
        "tls",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        id: int,  # noqa: A002 - the natural name, as in Envoy's connection id
        peer: str,
        local: str,
        listener: str,
        server_name: str | None = None,
        alpn: str | None = None,
        tls: PeerTls | None = None,
    ) -> None:
        self.stream = stream
        self.id = id
        self.peer = peer
        self.local = local
        self.listener = listener
        self.server_name = server_name
        self.alpn = alpn
        self.tls = tls
        self.metadata: dict[str, object] = {}
        self._host: tuple[str, str] | None = None  # (peer, its host): read once per request

    @property
    def peer_host(self) -> str:
        """The client's address without the port (no brackets for IPv6)."""
        cached = self._host
        if cached is None or cached[0] is not self.peer:
            cached = self._host = (self.peer, split_host_port(self.peer)[0])
        return cached[1]

    @property
    def peer_port(self) -> int:
        """The client's port."""
        return split_host_port(self.peer)[1]

    @property
    def local_port(self) -> int:
        """The local port the connection came in on."""
        return split_host_port(self.local)[1]

    @property
    def tls_version(self) -> str | None:
        """The negotiated TLS version ("TLSv1.3"), None on plaintext."""
        return self.tls.version if self.tls is not None else None

    @property
    def peer_certificate(self) -> bytes | None:
        """The peer's certificate (DER), if it presented one."""
        return self.tls.certificate if self.tls is not None else None

    @property
    def peer_uri_sans(self) -> tuple[str, ...]:
        """The URI SANs of the peer's verified certificate."""
        return self.tls.uri_sans if self.tls is not None else ()

    @property
    def peer_principal(self) -> str | None:
        """The peer's SPIFFE ID (its first ``spiffe://`` URI SAN), None if it has none."""
        for uri in self.peer_uri_sans:
            if uri.startswith("spiffe://"):
                return uri
        return None

    def __repr__(self) -> str:
        return f"<Connection #{self.id} {self.peer} on {self.listener}>"
