"""The TLS contexts of listeners and clusters, built from config the one way the runtime builds them.

Validation (:mod:`meshcore.runtime.validation`) builds them the same way before a Snapshot
is applied, so that a certificate, key or CA bundle that does not load is a validation
problem with its field path, not a failure while applying.

Certificates and keys come from files or from the Snapshot's secrets (PEM text). A key
held as text is handed to OpenSSL through an anonymous in-memory file where the system has
them (Linux), so that it never touches a disk. :func:`material` says what a context is
made of, so that the runtime builds it again exactly when that changed: a rotated secret,
or a file replaced on disk.

:func:`start_tls` (listeners) and :func:`connect_tls` (clusters) run the handshakes, on the
socket transport of :mod:`meshcore.runtime.tlssocket` wherever the connection is a TCP
socket, else on ``trio.SSLStream`` (with :class:`RecordsStream` on top).
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeGuard

import trio

from meshcore.config import Snapshot, TlsContext, TlsSecret, UpstreamTls
from meshcore.config.files import ssl_reason
from meshcore.connection import peer_tls
from meshcore.runtime.tlssocket import TlsSocketStream, fast_tls_available

__all__ = [
    "TLS12_CIPHERS",
    "TLS_STREAMS",
    "TLS_TRANSPORT_ENV",
    "RecordsStream",
    "Secrets",
    "TlsStream",
    "client_context",
    "connect_tls",
    "identity_mismatch",
    "material",
    "secrets_of",
    "server_context",
    "start_tls",
]

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
"""The TLS 1.2 cipher suites listeners offer (OpenSSL syntax)."""

Secrets = Mapping[str, TlsSecret]
"""A Snapshot's secrets by name."""

_NO_SECRETS: Secrets = MappingProxyType({})
_FD_DIR = Path("/proc/self/fd")


def secrets_of(snapshot: Snapshot) -> Secrets:
    """``snapshot``'s secrets by name."""
    return {secret.name: secret for secret in snapshot.secrets}


def server_context(tls: TlsContext, secrets: Secrets = _NO_SECRETS) -> ssl.SSLContext:
    """The SSLContext a listener's filter chain presents (and verifies clients with).

    Raises:
        ValueError: a secret it names is missing or lacks what is needed of it.
        OSError: a file or PEM text does not load (ssl.SSLError is an OSError).
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # Mozilla's "intermediate" profile: TLS 1.2 and 1.3, and in TLS 1.2 only AEAD ciphers with
    # forward secrecy (no CBC: LUCKY13; no static RSA key exchange). TLS 1.3's suites are all such.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_RENEGOTIATION  # TLS 1.2 renegotiation: a DoS lever, never needed
    if tls.secret is not None:
        secret = _secret(secrets, tls.secret, "secret")
        _load_chain(context, secret)
    else:
        assert tls.certificate_file is not None  # noqa: S101 - a TlsContext has files or a secret
        context.load_cert_chain(tls.certificate_file, tls.private_key_file)
    if tls.validation_secret is not None:
        context.load_verify_locations(cadata=_roots(secrets, tls.validation_secret))
    elif tls.client_ca_file is not None:
        context.load_verify_locations(tls.client_ca_file)
    if tls.validation_secret is not None or tls.client_ca_file is not None:
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
    if tls.alpn:
        context.set_alpn_protocols(list(tls.alpn))
    return context


def client_context(tls: UpstreamTls, secrets: Secrets = _NO_SECRETS) -> ssl.SSLContext:
    """The SSLContext a cluster connects to its endpoints with (see :func:`server_context`)."""
    if tls.validation_secret is not None:
        context = ssl.create_default_context(cadata=_roots(secrets, tls.validation_secret))
    else:
        context = ssl.create_default_context(cafile=tls.ca_file)
    context.options |= ssl.OP_NO_RENEGOTIATION
    if tls.peer_identities:
        # Secure naming: the peer is checked for its SPIFFE ID after the handshake
        # (identity_mismatch), not for a DNS name; its chain is still verified.
        context.check_hostname = False
    if tls.secret is not None:
        _load_chain(context, _secret(secrets, tls.secret, "secret"))
    elif tls.certificate_file is not None:
        context.load_cert_chain(tls.certificate_file, tls.private_key_file)
    if tls.alpn:
        context.set_alpn_protocols(list(tls.alpn))
    return context


def material(tls: TlsContext | UpstreamTls, secrets: Secrets) -> tuple[Any, ...]:
    """What the context of ``tls`` is made of: its config, the secrets it names, its files.

    Equal material makes an equal context, so a kept listener or cluster builds its context
    again only when this changes (a secret rotated, a file replaced: its inode, size or time).
    """
    names = (tls.secret, tls.validation_secret)
    files = [
        getattr(tls, field, None)
        for field in ("certificate_file", "private_key_file", "client_ca_file", "ca_file")
    ]
    return (
        tls,
        *(secrets.get(name) for name in names if name is not None),
        *(_identity(path) for path in files if isinstance(path, str)),
    )


def _identity(path: str) -> tuple[str, int, int, int] | None:
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return path, st.st_mtime_ns, st.st_size, st.st_ino


def _secret(secrets: Secrets, name: str, field: str) -> TlsSecret:
    found = secrets.get(name)
    if found is None:
        msg = f"{field}: no secret {name!r} in the Snapshot"
        raise ValueError(msg)
    return found


def _roots(secrets: Secrets, name: str) -> str:
    secret = _secret(secrets, name, "validation_secret")
    if secret.trusted_ca is None:
        msg = f"validation_secret: secret {name!r} has no trusted_ca"
        raise ValueError(msg)
    return secret.trusted_ca


def _load_chain(context: ssl.SSLContext, secret: TlsSecret) -> None:
    """Load a secret's certificate chain and key into ``context``, never writing the key to disk."""
    if secret.certificate_chain is None or secret.private_key is None:
        msg = f"secret: secret {secret.name!r} has no certificate_chain and private_key"
        raise ValueError(msg)
    pem = f"{secret.certificate_chain.strip()}\n{str(secret.private_key).strip()}\n".encode()
    with _pem_file(pem) as path:
        try:
            context.load_cert_chain(path)
        except ssl.SSLError as err:
            msg = f"secret {secret.name!r}: its certificate_chain and private_key do not load: {ssl_reason(err)}"
            raise ValueError(msg) from None


@contextlib.contextmanager
def _pem_file(data: bytes) -> Iterator[str]:
    """A path OpenSSL can read ``data`` from, for the time of the block.

    An anonymous in-memory file (memfd) seen through /proc where there is one; else a file in
    a private temporary directory, removed at once.
    """
    if hasattr(os, "memfd_create") and _FD_DIR.is_dir():
        fd = os.memfd_create("meshcore-tls", os.MFD_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            yield str(_FD_DIR / str(fd))
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="meshcore-tls-") as directory:  # mode 0700
        path = Path(directory) / "chain.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        yield str(path)


class RecordsStream(trio.abc.Stream):
    """A ``trio.SSLStream`` whose ``receive_some`` returns every record already received.

    The fallback transport (streams that are not TCP sockets, or ``MESHCORE_TLS_TRANSPORT=sslstream``).

    OpenSSL decrypts one TLS record per read, and trio's SSLStream returns what one read
    gives: when a peer's HTTP/2 frames of several streams (or a gRPC response's HEADERS,
    DATA and trailers) arrived in one segment as several records, each came back from its
    own ``receive_some``, each one a pass of the reader's loop and of the scheduler, where
    plaintext takes one. This one decrypts the records already in hand (no I/O) after the
    first, up to ``max_bytes``, and returns them together. Everything else is the
    SSLStream's: sending, closing, and the TLS attributes (``getpeercert``, ``session``...).
    """

    __slots__ = ("_read", "tls")

    def __init__(self, tls: trio.SSLStream[Any]) -> None:
        self.tls = tls
        # trio keeps its SSLObject private; without it (another trio), records come one by one.
        ssl_object = getattr(tls, "_ssl_object", None)
        self._read = ssl_object.read if isinstance(ssl_object, ssl.SSLObject) else None

    @property
    def transport_stream(self) -> trio.abc.Stream:
        """The stream under TLS (a SocketStream)."""
        transport: trio.abc.Stream = self.tls.transport_stream
        return transport

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """The next decrypted bytes: the first record's, and the ones after it already received."""
        data = await self.tls.receive_some(max_bytes)
        read = self._read
        if not data or read is None:
            return data
        limit = max_bytes or _RECEIVE_LIMIT
        size = len(data)
        chunks = None
        while size < limit:
            try:
                more = read(limit - size)
            except ssl.SSLError:  # no whole record left (want read), or one the next call reports
                break
            if not more:
                break  # close_notify: the next receive_some returns the end
            if chunks is None:
                chunks = [data]
            chunks.append(more)
            size += len(more)
        return data if chunks is None else b"".join(chunks)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send ``data`` (the SSLStream's)."""
        await self.tls.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        """The SSLStream's."""
        await self.tls.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """Close TLS (close_notify) and the transport."""
        await self.tls.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tls, name)


_RECEIVE_LIMIT = 64 * 1024
TLS_STREAMS = (TlsSocketStream, trio.SSLStream, RecordsStream)
"""The stream types that carry TLS over a transport stream (``stream.transport_stream``)."""

TlsStream = TlsSocketStream | RecordsStream
"""An established TLS connection, as :func:`start_tls` and :func:`connect_tls` give it."""

TLS_TRANSPORT_ENV = "MESHCORE_TLS_TRANSPORT"
"""Environment variable: ``sslstream`` makes every TLS connection take ``trio.SSLStream``.

For benchmarks and bisecting: the socket transport (:mod:`meshcore.runtime.tlssocket`) is
the default wherever it can serve (see :func:`meshcore.runtime.tlssocket.fast_tls_available`).
"""


def _on_socket(stream: trio.abc.Stream) -> TypeGuard[trio.SocketStream]:
    return os.environ.get(TLS_TRANSPORT_ENV) != "sslstream" and fast_tls_available(stream)


async def start_tls(stream: trio.abc.Stream, context: ssl.SSLContext) -> TlsStream:
    """TLS, server side, on an accepted connection: the handshake done (the caller bounds its time).

    On a TCP socket stream, OpenSSL reads and writes the socket itself
    (:class:`~meshcore.runtime.tlssocket.TlsSocketStream`); on anything else (a memory
    stream), ``trio.SSLStream`` does. ``context``'s SNI callback gets the stream (or the
    ``ssl.SSLObject``) and may set its ``context``.

    Raises:
        trio.BrokenResourceError: the handshake failed; its ``__cause__`` says why (an
            ``ssl.SSLError``: a certificate not verified, no shared protocol).
    """
    if _on_socket(stream):
        fast = TlsSocketStream(stream, context, server_side=True)
        await fast.do_handshake()
        return fast
    tls = trio.SSLStream(stream, context, server_side=True)
    await tls.do_handshake()
    return RecordsStream(tls)


async def connect_tls(
    stream: trio.abc.Stream,
    context: ssl.SSLContext,
    server_hostname: str | None,
    *,
    session: ssl.SSLSession | None = None,
) -> TlsStream:
    """TLS, client side, on a connected stream: the handshake done, resuming ``session`` if given.

    The same transports and errors as :func:`start_tls`. The peer's identity (a SPIFFE ID) is
    the caller's to check (:func:`identity_mismatch`).
    """
    if _on_socket(stream):
        fast = TlsSocketStream(stream, context, server_hostname=server_hostname, session=session)
        await fast.do_handshake()
        return fast
    tls = trio.SSLStream(stream, context, server_hostname=server_hostname)
    if session is not None:
        tls.session = session
    await tls.do_handshake()
    return RecordsStream(tls)


def identity_mismatch(ssl_object: Any, expected: tuple[str, ...]) -> str | None:
    """Why the peer of an established TLS connection is not one of ``expected``; None if it is.

    ``expected`` are SPIFFE IDs (URI SANs); the peer's certificate must carry one of them.
    """
    found = peer_tls(ssl_object).uri_sans
    if any(uri in expected for uri in found):
        return None
    return f"its certificate names {', '.join(found) or 'no URI'}, expected {' or '.join(expected)} (secure naming)"
