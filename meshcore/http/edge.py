"""The edge of trust: what the connection manager does to a request before routing and filters.

Once per request, before the route is matched and before the first filter runs, so that
routing, authorization and the upstream all see the same request:

- the path is normalised (:mod:`meshcore.http.paths`); a refused path is answered 400;
- ``x-forwarded-for``: from a client outside the mesh, the header it sent is dropped
  unless ``xff_trusted_hops`` proxies in front of this one are trusted to have set it
  (the router then appends the peer's address: the upstream sees the real client);
  from a mesh peer it is kept. The client address that authorization rules see
  (``remoteIpBlocks``) is the ``xff_trusted_hops``-th address from the right of the
  header the client sent, or the peer's own address; it is kept in the request's
  ``info.metadata["remote_address"]``;
- ``x-forwarded-proto``: from a client outside the mesh, replaced by the scheme of the
  real transport (``https`` on TLS, else ``http``; never the client's ``:scheme``); a
  mesh peer's is kept (it forwards its own client's);
- ``x-forwarded-client-cert`` (XFCC, Envoy's format): a client outside the mesh cannot
  send one (it is removed); the verified peer certificate of the connection is described
  in a new one (``Hash``, ``Subject``, ``URI``, ``DNS``). A mesh peer's is kept and ours
  appended. ``forward_client_cert`` changes what happens for clients outside the mesh;
- ``x-meshcore-*``: the mesh's own headers. A client outside the mesh cannot send them,
  except those a filter of the chain reads on purpose (a filter declares them in its
  ``trusted_request_headers`` attribute, e.g. the fault filter with ``header_control``)
  and those listed in ``internal_headers``.

A **mesh peer** is a connection whose verified client certificate carries a SPIFFE ID
(of one of ``mesh_trust_domains``, when that is set): another proxy of the mesh.

Pure, no I/O: :class:`EdgePolicy` is compiled once per Snapshot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Final, Literal

import structlog

from meshcore.errors import ProtocolError
from meshcore.flags import ResponseFlag
from meshcore.http.messages import ParsedHeaders, Request, Response
from meshcore.http.paths import PathNormalizer

__all__ = ["ORIGINAL_PATH", "REMOTE_ADDRESS", "EdgePolicy", "is_internal_header", "strip_internal_headers"]

log = structlog.get_logger("meshcore.http")

ORIGINAL_PATH: Final = "original_path"
"""``request.info.metadata`` key: the path as the client sent it, when it is to be forwarded as is."""
REMOTE_ADDRESS: Final = "remote_address"
"""``request.info.metadata`` key: the client's address as trusted (``x-forwarded-for`` hops counted)."""

INTERNAL_PREFIX: Final = b"x-meshcore-"
_XFF: Final = b"x-forwarded-for"
_XFP: Final = b"x-forwarded-proto"
_XFCC: Final = b"x-forwarded-client-cert"

ClientCert = Literal["sanitize_set", "sanitize", "append_forward", "forward_only"]


def is_internal_header(name: bytes) -> bool:
    """Whether lower-case header ``name`` is one of the mesh's own (``x-meshcore-*``)."""
    return name.startswith(INTERNAL_PREFIX)


def _allowed(name: bytes, allowed: Sequence[bytes]) -> bool:
    """Whether ``name`` is in ``allowed``: exact names, or prefixes written with a trailing ``*``."""
    for pattern in allowed:
        if pattern.endswith(b"*") and name.startswith(pattern[:-1]):
            return True
        if name == pattern:
            return True
    return False


def strip_internal_headers(
    raw: list[tuple[bytes, bytes]], allowed: Sequence[bytes] = ()
) -> list[tuple[bytes, bytes]]:
    """``raw`` without ``x-meshcore-*`` headers other than ``allowed``; the same list if none is there."""
    if not any(name.startswith(INTERNAL_PREFIX) for name, _ in raw):
        return raw
    return [(n, v) for n, v in raw if not n.startswith(INTERNAL_PREFIX) or _allowed(n, allowed)]


def _xfcc_value(text: str) -> str:
    """A value of an XFCC element: quoted when it holds a separator (as Envoy writes them)."""
    if any(c in text for c in ',;="'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def client_cert_element(tls: Any) -> str | None:
    """The XFCC element describing a verified peer certificate, or None without one."""
    if tls is None or tls.certificate is None:
        return None
    if tls.subject is None and not tls.uri_sans and not tls.dns_sans:
        return None  # a certificate nobody verified
    parts = [f"Hash={hashlib.sha256(tls.certificate).hexdigest()}"]
    if tls.subject:
        parts.append(f"Subject={_xfcc_value(tls.subject)}")
    parts += [f"URI={_xfcc_value(uri)}" for uri in tls.uri_sans]
    parts += [f"DNS={_xfcc_value(dns)}" for dns in tls.dns_sans]
    return ";".join(parts)


class EdgePolicy:
    """Path normalisation and header hygiene for one connection manager (see the module docstring).

    Args:
        paths: the path normaliser (None: paths pass as they came).
        forward_original_path: route and authorize on the normalised path, but send the
            upstream the path as the client wrote it.
        xff_trusted_hops: proxies in front of this one whose ``x-forwarded-for`` is trusted.
        mesh_trust_domains: trust domains whose SPIFFE IDs make a peer a mesh peer
            (empty: any verified SPIFFE ID).
        forward_client_cert: XFCC for clients outside the mesh: ``sanitize_set`` (drop
            theirs, describe their certificate), ``sanitize`` (drop), ``append_forward``
            (keep theirs, append), ``forward_only`` (keep theirs).
        internal_headers: ``x-meshcore-*`` names (``*`` at the end: a prefix) that clients
            outside the mesh may send.
    """

    def __init__(
        self,
        *,
        paths: PathNormalizer | None = None,
        forward_original_path: bool = False,
        xff_trusted_hops: int = 0,
        mesh_trust_domains: Sequence[str] = (),
        forward_client_cert: ClientCert = "sanitize_set",
        internal_headers: Sequence[str | bytes] = (),
    ) -> None:
        self.paths = paths
        self.forward_original_path = forward_original_path
        self.xff_trusted_hops = xff_trusted_hops
        self.mesh_prefixes = tuple(f"spiffe://{domain}/" for domain in mesh_trust_domains)
        self.forward_client_cert = forward_client_cert
        self.internal_headers = tuple(
            (h if isinstance(h, bytes) else h.encode("latin-1")).lower() for h in internal_headers
        )

    @classmethod
    def from_config(cls, config: Any, trusted_request_headers: Sequence[bytes] = ()) -> EdgePolicy:
        """The policy of an ``http_connection_manager`` config (its ``path_normalization`` and ``trust``).

        Args:
            config: the connection manager's config (fields read if present).
            trusted_request_headers: ``x-meshcore-*`` headers the chain's filters read on purpose.
        """
        paths = getattr(config, "path_normalization", None)
        trust = getattr(config, "trust", None)
        normalizer = None
        if paths is not None and paths.enabled:
            normalizer = PathNormalizer(
                merge_slashes=paths.merge_slashes, escaped_slashes=paths.escaped_slashes
            )
        if trust is None:
            return cls(paths=normalizer, internal_headers=tuple(trusted_request_headers))
        return cls(
            paths=normalizer,
            forward_original_path=paths is not None and paths.forward == "original",
            xff_trusted_hops=trust.xff_trusted_hops,
            mesh_trust_domains=trust.mesh_trust_domains,
            forward_client_cert=trust.forward_client_cert,
            internal_headers=(*trust.internal_headers, *trusted_request_headers),
        )

    def is_mesh_peer(self, request: Request) -> bool:
        """Whether ``request`` came from another proxy of the mesh (a verified SPIFFE ID)."""
        conn = request.connection
        principal = conn.peer_principal if conn is not None else None
        if principal is None:
            return False
        return not self.mesh_prefixes or principal.startswith(self.mesh_prefixes)

    def prepare(self, request: Request) -> Response | None:
        """Normalise ``request`` in place; a local reply if it must be refused, else None."""
        if self.paths is not None:
            original = request.path
            try:
                request.path = self.paths(original)
            except ProtocolError as err:
                request.info.flags.add(ResponseFlag.DOWNSTREAM_PROTOCOL_ERROR)
                log.info("path_rejected", status=err.status, reason=str(err))
                # Never the reason in the reply: it quotes what the client sent.
                return Response.local(err.status, "Bad Request\n")
            if self.forward_original_path and request.path != original:
                request.info.metadata[ORIGINAL_PATH] = original
        conn = request.connection
        # Only a verified certificate makes a mesh peer: a plaintext connection is never one.
        if conn is not None and conn.tls is not None and self.is_mesh_peer(request):
            request.info.internal = True  # what the request id and tracing trust, too
            self._from_mesh_peer(request)
        else:
            self._from_outside(request)
        return None

    def _from_mesh_peer(self, request: Request) -> None:
        """Keep what another proxy of the mesh says; add the XFCC element of its certificate."""
        headers = request.headers
        hops = [h.strip() for v in headers.get_all(_XFF) for h in v.split(",") if h.strip()]
        conn = request.connection
        remote = hops[-1] if hops else conn.peer_host if conn is not None else ""
        request.info.metadata[REMOTE_ADDRESS] = remote  # the client the mesh peer saw
        element = client_cert_element(conn.tls if conn is not None else None)
        if element is not None:
            headers.add(_XFCC, element)

    def _from_outside(self, request: Request) -> None:
        """Drop what a client outside the mesh cannot be trusted to say.

        One pass over the headers finds what needs work; the list is rebuilt only when a
        header must go (most requests carry none of these).
        """
        headers = request.headers
        raw = headers.raw
        conn = request.connection
        tls = conn.tls if conn is not None else None
        remote = conn.peer_host if conn is not None else ""
        internal, forwarded, drop = self._scan(raw)
        if forwarded:
            trusted = self.xff_trusted_hops
            hops = [h.strip() for v in forwarded for h in v.split(b",") if h.strip()]
            if trusted and len(hops) >= trusted:
                remote = hops[-trusted].decode("latin-1")
            else:
                drop.add(_XFF)
        if internal:
            raw = strip_internal_headers(raw, self.internal_headers)
        if drop:
            raw = [(n, v) for n, v in raw if n not in drop]
        if raw is not headers.raw:
            headers.raw = raw
        request.info.metadata[REMOTE_ADDRESS] = remote
        if conn is not None:
            proto = b"https" if tls is not None else b"http"
            if raw is headers.raw and type(headers) is ParsedHeaders:  # ours: no check needed
                headers.add_checked(_XFP, proto)
            else:
                raw.append((_XFP, proto))
        if tls is not None and self.forward_client_cert in ("sanitize_set", "append_forward"):
            element = client_cert_element(tls)
            if element is not None:
                raw.append((_XFCC, element.encode("latin-1")))

    def _scan(self, raw: list[tuple[bytes, bytes]]) -> tuple[bool, list[bytes], set[bytes]]:
        """Whether internal headers must go, the x-forwarded-for values, the headers to drop."""
        drop: set[bytes] = set()
        internal = False
        forwarded: list[bytes] = []
        sanitize = self.forward_client_cert in ("sanitize_set", "sanitize")
        for name, value in raw:
            if name[:2] != b"x-":
                continue
            if name.startswith(INTERNAL_PREFIX):
                internal = internal or not _allowed(name, self.internal_headers)
            elif name == _XFF:
                forwarded.append(value)
            elif name == _XFP or (name == _XFCC and sanitize):
                drop.add(name)
        return internal, forwarded, drop
