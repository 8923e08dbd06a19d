"""TLS straight on the connection's socket: OpenSSL does the record I/O on the descriptor, in C.

trio's ``SSLStream`` runs TLS over ``ssl.MemoryBIO``: every record goes socket → Python
bytes → incoming BIO → ``SSLObject`` → plaintext (and back the same way), each step a few
Python frames and a copy. :class:`TlsSocketStream` hands the connection's own non-blocking
socket to OpenSSL instead, through ``SSLContext._wrap_socket`` (what ``ssl.SSLSocket`` is
built on), without taking the socket away from trio: the ``trio.SocketStream`` stays the
owner of the descriptor (``transport_stream``), so closing it, shutting it down or polling
it works as on any TLS stream here. ``read``, ``write`` and ``do_handshake`` do the
syscalls themselves and raise ``SSLWantReadError`` / ``SSLWantWriteError`` when the socket
would block; only then does the stream wait on the descriptor (``wait_readable`` /
``wait_writable``) and try again. Nothing polls in a loop.

Semantics are ``trio.SSLStream``'s (``https_compatible=False``):

- ``receive_some`` returns b"" at the peer's close_notify, and raises
  ``trio.BrokenResourceError`` for an EOF without one (a truncation), a reset, or a TLS
  error (the ``ssl.SSLError`` is its ``__cause__``). It returns the first record and every
  whole record already received after it (up to ``max_bytes``), as ``RecordsStream`` does.
  Sending after the peer's close_notify still works (the peer half-closed).
- ``send_all`` writes ``data`` as records; while the socket is full, OpenSSL holds a
  record partly sent and the retry is with the same buffer, as OpenSSL requires.
- ``aclose`` sends close_notify (without waiting for the peer's) and closes the socket.
- Not a ``HalfCloseableStream``, like ``SSLStream``: sending close_notify and reading on
  would need ``SSL_shutdown`` once, and Python's ``shutdown`` calls it a second time, which
  reads from the socket and drops application data already there (OpenSSL discards data
  records once it has sent close_notify). Callers end both directions instead (``pipe``,
  ``linger``).
- Renegotiation is refused by the contexts (``OP_NO_RENEGOTIATION``, see
  :mod:`meshcore.runtime.tls`).

Cancellation: ``receive_some`` has its one schedule point before the first ``read`` and
returns as soon as a ``read`` gave data, so a cancellation never loses bytes already
decrypted. ``send_all`` can only be cancelled while waiting for the socket, and then
OpenSSL holds a record partly on the wire that no other bytes may follow: the stream is
marked broken (every later operation raises ``BrokenResourceError``, and ``aclose`` closes
the socket without close_notify), so a cancelled send can truncate the stream but never
corrupt it. A cancelled handshake leaves the stream broken likewise.

Checkpoints: like :mod:`meshcore.runtime.sockio`, ``receive_some`` schedules once before
reading, ``send_all`` checks for cancellation and schedules only when the socket is full.
``try_receive`` / ``wait_receive`` / ``try_send`` are StreamIO's operations, so that the
HTTP/1.1 path treats TLS on a socket as it treats plaintext (a timeout's cancel scope only
when it has to wait).

The fallback (``trio.SSLStream``, see :func:`meshcore.runtime.tls.start_tls`) serves what
this cannot: a transport that is not a TCP socket stream (a memory stream in tests, TLS
over another stream) and a Python whose ``ssl`` lacks ``_wrap_socket``.
"""

from __future__ import annotations

import select
import socket
import ssl
from typing import Any, TypeGuard

import trio
from trio.lowlevel import ParkingLot, checkpoint, checkpoint_if_cancelled, wait_readable, wait_writable

__all__ = ["RECEIVE_LIMIT", "TlsSocketStream", "fast_tls_available"]

RECEIVE_LIMIT = 64 * 1024
"""The most bytes ``receive_some()`` returns when not told."""

_WRAP = getattr(ssl.SSLContext, "_wrap_socket", None)
_POLLIN = select.POLLIN


def _raw_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """The stdlib socket under a plain ``trio.SocketStream`` (None for anything else)."""
    if type(stream) is not trio.SocketStream:
        return None
    raw = getattr(stream.socket, "_sock", None)  # trio's socket wraps a stdlib one
    return raw if isinstance(raw, socket.socket) else None


def fast_tls_available(stream: trio.abc.Stream) -> TypeGuard[trio.SocketStream]:
    """Whether :class:`TlsSocketStream` can serve ``stream``: a TCP socket stream, on CPython's ssl.

    Anything else (a memory stream, TLS in TLS, a Python without ``_wrap_socket``) takes
    ``trio.SSLStream``.
    """
    return _WRAP is not None and _raw_socket(stream) is not None


def _broken(err: BaseException) -> trio.BrokenResourceError:
    return trio.BrokenResourceError(f"TLS connection broken: {err}")


class TlsSocketStream(trio.abc.Stream):
    """TLS over a ``trio.SocketStream``'s socket, records read and written by OpenSSL (module doc).

    Built before the handshake; :meth:`do_handshake` runs it. The TLS attributes are
    ``ssl.SSLSocket``'s: ``getpeercert``, ``selected_alpn_protocol``, ``version``,
    ``cipher``, ``session``, ``session_reused``, ``context``, ``pending``.
    """

    __slots__ = (
        "__weakref__",
        "_broken",
        "_closed",
        "_handshook",
        "_lot",
        "_poll",
        "_raw",
        "_read",
        "_receiving",
        "_sending",
        "_ssl",
        "_unsent",
        "_waiting_readable",
        "_waiting_writable",
        "_write",
        "transport_stream",
    )

    def __init__(
        self,
        transport_stream: trio.SocketStream,
        context: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> None:
        raw = _raw_socket(transport_stream)
        if raw is None or _WRAP is None:
            msg = "TlsSocketStream needs a trio.SocketStream on CPython's ssl (see fast_tls_available)"
            raise TypeError(msg)
        if server_side and (server_hostname or session is not None):
            msg = "server_hostname and session are for the client side"
            raise ValueError(msg)
        if context.check_hostname and not server_side and not server_hostname:
            msg = "check_hostname requires server_hostname"
            raise ValueError(msg)
        self.transport_stream = transport_stream
        """The TCP stream under TLS: it owns the socket (close it, shut it down, poll it)."""
        self._raw = raw
        hostname = server_hostname.encode("idna").decode("ascii") if server_hostname else None
        # owner=self: the SNI callback gets this stream, and sets .context on it (below).
        self._ssl: Any = _WRAP(context, raw, server_side, hostname, owner=self, session=session)
        self._read = self._ssl.read
        self._write = self._ssl.write
        self._handshook = False
        self._broken = False
        self._closed = False
        self._receiving = False
        self._sending = False
        self._unsent: bytes | None = None
        self._waiting_readable = False
        self._waiting_writable = False
        self._lot: ParkingLot | None = None
        self._poll: Any = None

    # -- TLS attributes ------------------------------------------------------------------

    @property
    def context(self) -> ssl.SSLContext:
        """The SSLContext in use (an SNI callback may switch it during the handshake)."""
        context: ssl.SSLContext = self._ssl.context
        return context

    @context.setter
    def context(self, context: ssl.SSLContext) -> None:
        self._ssl.context = context

    @property
    def session(self) -> ssl.SSLSession | None:
        """The TLS session, to resume in a later connection (client side)."""
        session: ssl.SSLSession | None = self._ssl.session
        return session

    @property
    def session_reused(self) -> bool:
        """Whether the handshake resumed a session."""
        return bool(self._ssl.session_reused)

    @property
    def server_side(self) -> bool:
        """Whether this end is the server."""
        return bool(self._ssl.server_side)

    def getpeercert(self, binary_form: bool = False) -> Any:
        """The peer's certificate (``ssl.SSLSocket.getpeercert``)."""
        return self._ssl.getpeercert(binary_form)

    def selected_alpn_protocol(self) -> str | None:
        """The protocol ALPN agreed on, if any."""
        protocol: str | None = self._ssl.selected_alpn_protocol()
        return protocol

    def version(self) -> str | None:
        """The TLS version in use ("TLSv1.3")."""
        version: str | None = self._ssl.version()
        return version

    def cipher(self) -> tuple[str, str, int] | None:
        """The cipher in use (name, protocol, secret bits)."""
        cipher: tuple[str, str, int] | None = self._ssl.cipher()
        return cipher

    def pending(self) -> int:
        """Decrypted bytes held by OpenSSL that no ``receive_some`` has returned yet."""
        return int(self._ssl.pending())

    # -- the stream --------------------------------------------------------------------

    def _check(self) -> None:
        if self._closed or self._raw.fileno() < 0:
            # The socket was closed under us: never let OpenSSL touch its old descriptor
            # number, which a new connection may have by now.
            msg = "the TLS stream was closed"
            raise trio.ClosedResourceError(msg)
        if self._broken:
            msg = "the TLS stream is broken (a failed handshake, a TLS error or a cancelled send)"
            raise trio.BrokenResourceError(msg)

    async def do_handshake(self) -> None:
        """Run the TLS handshake (BrokenResourceError, from the ssl.SSLError, if it fails)."""
        self._check()
        await checkpoint_if_cancelled()
        handshake = self._ssl.do_handshake
        done = False
        try:
            while True:
                try:
                    handshake()
                    break
                except ssl.SSLWantReadError:
                    await self._wait_readable()
                except ssl.SSLWantWriteError:
                    await self._wait_writable()
                except OSError as err:  # ssl.SSLError is one; so is a reset
                    raise _broken(err) from err
                self._check()
            done = True
        finally:
            if not done:
                self._broken = True
        self._handshook = True

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """The next plaintext: one record's, and those of the whole records received after it."""
        if max_bytes is None:
            max_bytes = RECEIVE_LIMIT
        elif max_bytes < 1:
            msg = "max_bytes must be >= 1"
            raise ValueError(msg)
        self._enter_receive()
        try:
            await checkpoint()
            return await self._receive(max_bytes, wait_first=False)
        finally:
            self._receiving = False

    async def try_receive(self, max_bytes: int) -> bytes | None:
        """Like :meth:`receive_some` (its schedule point first), but None instead of waiting for data.

        For :class:`meshcore.runtime.sockio.StreamIO`: the caller enters a cancel scope for its
        timeout only when it has to wait, then calls :meth:`wait_receive`.
        """
        self._enter_receive()
        try:
            await checkpoint()
            self._check()
            try:
                data: bytes = self._read(max_bytes)
            except ssl.SSLWantReadError:
                return None
            except ssl.SSLWantWriteError:  # rare: the long way, which waits for the socket's room
                return await self._receive(max_bytes, wait_first=False)
            except ssl.SSLZeroReturnError:
                return b""
            except OSError as err:
                self._broken = True
                raise _broken(err) from err
            if not data or len(data) >= max_bytes:
                return data
            return self._more(data, max_bytes)
        finally:
            self._receiving = False

    async def wait_receive(self, max_bytes: int) -> bytes:
        """Wait for the socket to be readable, then :meth:`receive_some` (after :meth:`try_receive` found nothing)."""
        self._enter_receive()
        try:
            return await self._receive(max_bytes, wait_first=True)
        finally:
            self._receiving = False

    def _enter_receive(self) -> None:
        if self._receiving:
            msg = "another task is receiving on this TLS stream"
            raise trio.BusyResourceError(msg)
        self._check()
        self._receiving = True

    async def _receive(self, max_bytes: int, *, wait_first: bool) -> bytes:
        if wait_first:
            await self._wait_readable()
        read = self._read
        data: bytes = b""
        while True:
            self._check()
            try:
                data = read(max_bytes)
                break
            except ssl.SSLWantReadError:
                await self._wait_readable()
            except ssl.SSLWantWriteError:  # a TLS 1.3 KeyUpdate to answer, the socket full
                await self._wait_writable()
            except ssl.SSLZeroReturnError:
                return b""  # close_notify (after ours: read raises rather than returns b"")
            except OSError as err:  # an EOF without close_notify, a reset, a bad record
                self._broken = True
                raise _broken(err) from err
        size = len(data)
        if not size or size >= max_bytes:
            return data
        return self._more(data, max_bytes)

    def _more(self, data: bytes, max_bytes: int) -> bytes:
        """``data`` and the plaintext of the records already in the socket after it (no waiting).

        OpenSSL reads one record per ``read``, and no further than that record in the socket;
        a ``poll`` tells if more is there without a failed ``read`` (an exception) per call.
        """
        poller = self._poll
        if poller is None:
            poller = self._poll = select.poll()
            poller.register(self._raw, _POLLIN)
        if not poller.poll(0) and not self._ssl.pending():
            return data
        chunks = [data]
        size = len(data)
        read = self._read
        while size < max_bytes:
            try:
                more = read(max_bytes - size)
            except (OSError, ValueError):  # no whole record (want read); or an error the next call reports
                break
            if not more:
                break  # close_notify: the next receive_some returns b""
            chunks.append(more)
            size += len(more)
            if not poller.poll(0) and not self._ssl.pending():
                break
        return b"".join(chunks)

    def try_send(self, data: bytes) -> bool:
        """Encrypt and send all of ``data`` now if the socket takes it (True), without waiting.

        False: a record waits for room in the socket, and OpenSSL holds part of ``data``; the
        caller must go on with ``send_all(data)``, the same object (anything else breaks the
        stream). For :class:`meshcore.runtime.sockio.StreamIO`: no cancel scope, no schedule
        point when the data fits the socket buffer.
        """
        if self._sending:
            msg = "another task is sending on this TLS stream"
            raise trio.BusyResourceError(msg)
        self._check()
        if self._unsent is not None:
            self._broken = True
            msg = "a send that waited for room was not resumed"
            raise trio.BrokenResourceError(msg)
        if not data:
            return True
        try:
            self._write(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            self._unsent = data
            return False
        except OSError as err:
            self._broken = True
            raise _broken(err) from err
        return True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send all of ``data``; waits only while the socket is full."""
        if self._sending:
            msg = "another task is sending on this TLS stream"
            raise trio.BusyResourceError(msg)
        self._check()
        resuming = self._unsent is not None
        if resuming:
            if data is not self._unsent:  # OpenSSL holds part of it: only it may come next
                self._broken = True
                msg = "a send that waited for room must be resumed with the same bytes"
                raise trio.BrokenResourceError(msg)
            self._unsent = None
        self._sending = True
        try:
            if not resuming:
                await checkpoint_if_cancelled()
                if not data:
                    return
            write = self._write
            while True:
                try:
                    write(data)  # all of it, or SSLWant*: a record is then partly sent
                except ssl.SSLWantWriteError:
                    wait = self._wait_writable
                except ssl.SSLWantReadError:
                    wait = self._wait_readable
                except OSError as err:
                    self._broken = True
                    raise _broken(err) from err
                else:
                    return
                try:
                    await wait()
                    self._check()
                except BaseException:
                    # Cancelled (or closed) with a record partly on the wire: nothing else may
                    # be sent on this stream, ever; it is broken, not silently corrupted.
                    self._broken = True
                    raise
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the socket can take more."""
        self._check()
        await self._wait_writable()

    async def aclose(self) -> None:
        """Send close_notify (not waiting for the peer's) and close the socket."""
        if self._closed:
            await checkpoint()
            return
        try:
            if self._handshook and not self._broken and self._raw.fileno() >= 0:
                await self._close_notify()
        finally:
            self._closed = True
            await self.transport_stream.aclose()

    async def _close_notify(self) -> None:
        shutdown = self._ssl.shutdown
        while True:
            try:
                shutdown()  # sends close_notify, then looks for the peer's
            except ssl.SSLWantWriteError:
                await self._wait_writable()
                continue
            except (OSError, ValueError):  # SSLWantReadError: sent, the peer's not come; or gone
                return
            return

    # -- waiting on the socket, one task per direction -----------------------------------

    async def _wait_readable(self) -> None:
        if self._waiting_readable:  # the other direction's task waits already (a rare overlap)
            await self._park()
            return
        self._waiting_readable = True
        try:
            await wait_readable(self._raw)
        finally:
            self._waiting_readable = False
            self._unpark()

    async def _wait_writable(self) -> None:
        if self._waiting_writable:
            await self._park()
            return
        self._waiting_writable = True
        try:
            await wait_writable(self._raw)
        finally:
            self._waiting_writable = False
            self._unpark()

    async def _park(self) -> None:
        if self._lot is None:
            self._lot = ParkingLot()
        await self._lot.park()

    def _unpark(self) -> None:
        if self._lot is not None:
            self._lot.unpark_all()
