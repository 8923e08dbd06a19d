"""Receive and send on an HTTP/1.1 connection with fewer trips through trio's scheduler.

trio's ``SocketStream`` wraps every ``recv`` and ``send`` in a full checkpoint (a cancel
check before, a schedule point after), so a proxied request takes four trips through the
run loop for its four syscalls, each a few microseconds of Python. :class:`StreamIO` does
the syscall directly on a plain TCP stream's socket:

- ``send`` tries the socket first and waits (``wait_writable``) only when it would block:
  no schedule point when the data fits the socket buffer, which it nearly always does;
- ``receive`` keeps one schedule point, *before* the ``recv`` (``trio.lowlevel.checkpoint``:
  timeouts and cancellation are checked there, and other connections run meanwhile, which
  is also when the peer's answer arrives), then waits (``wait_readable``) only if nothing
  is there. Every request receives at least once, so every request still yields to the
  others: a client that never lets its socket run dry cannot starve the loop.

``try_receive`` / ``try_send`` are the same without any wait, so that the callers enter a
cancel scope for a timeout only when they have to wait (the idle, headers and stream-idle
timeouts count from when waiting starts, as before). TLS on a socket
(:class:`~meshcore.runtime.tlssocket.TlsSocketStream`) has the same four operations and
takes the same path; a ``try_send`` that did not fit is resumed by ``send_rest`` with the
same bytes, as OpenSSL requires. Any other stream (SSLStream, or a test's memory stream)
goes through its own ``receive_some`` / ``send_all``.

Errors are trio's: ``BrokenResourceError`` for a broken connection, ``ClosedResourceError``
for a socket closed (or shut down for sending) here.
"""

from __future__ import annotations

import errno
import socket

import trio
from trio.lowlevel import checkpoint, wait_readable, wait_writable

from meshcore.runtime.tlssocket import TlsSocketStream

__all__ = ["StreamIO"]

_CLOSED = frozenset({errno.EBADF, errno.ENOTSOCK})


def _stream_error(err: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if err.errno in _CLOSED:
        return trio.ClosedResourceError("the socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {err}")


def _raw_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """The stdlib socket under a plain ``trio.SocketStream`` (None for anything else)."""
    if type(stream) is not trio.SocketStream:
        return None
    raw = getattr(stream.socket, "_sock", None)  # trio's socket wraps a stdlib one
    return raw if isinstance(raw, socket.socket) else None


class StreamIO:
    """Direct socket I/O for one stream (see the module's docstring)."""

    __slots__ = ("sock", "stream", "tls", "tsock")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.sock = _raw_socket(stream)
        self.tsock = stream.socket if self.sock is not None else None  # type: ignore[attr-defined]
        self.tls = stream if type(stream) is TlsSocketStream else None

    async def receive(self, size: int) -> bytes:
        """Bytes from the peer (b"" at its EOF), after one schedule point; waits if none are there."""
        sock = self.sock
        if sock is None:
            return bytes(await self.stream.receive_some(size))
        await checkpoint()
        return await self._receive(sock, size)

    async def try_receive(self, size: int) -> bytes | None:
        """Like :meth:`receive`, but None instead of waiting when nothing is there (or not a socket)."""
        sock = self.sock
        if sock is None:
            return None if self.tls is None else await self.tls.try_receive(size)
        await checkpoint()
        try:
            return sock.recv(size)
        except BlockingIOError:
            return None
        except OSError as err:
            raise _stream_error(err) from err

    async def wait_receive(self, size: int) -> bytes:
        """Bytes from the peer, waiting for them without a schedule point first (after try_receive)."""
        sock = self.sock
        if sock is None:
            if self.tls is not None:
                return await self.tls.wait_receive(size)
            return bytes(await self.stream.receive_some(size))
        await wait_readable(sock)
        return await self._receive(sock, size)

    @staticmethod
    async def _receive(sock: socket.socket, size: int) -> bytes:
        while True:
            try:
                return sock.recv(size)
            except BlockingIOError:
                await wait_readable(sock)
            except OSError as err:
                raise _stream_error(err) from err

    def try_send(self, data: bytes) -> int:
        """Send what the socket takes now, without waiting: how many bytes (0 if not a socket)."""
        sock = self.sock
        if sock is None or not data:
            tls = self.tls
            return len(data) if tls is not None and tls.try_send(data) else 0
        try:
            return sock.send(data)
        except BlockingIOError:
            return 0
        except OSError as err:
            # Asked only now: a send after our own shutdown fails (EPIPE), and says why here.
            if self.tsock.did_shutdown_SHUT_WR:  # type: ignore[union-attr]
                msg = "can't send data after sending EOF"
                raise trio.ClosedResourceError(msg) from err
            raise _stream_error(err) from err

    async def send(self, data: bytes) -> None:
        """Send all of ``data``; a schedule point only if the socket cannot take it now."""
        sent = self.try_send(data)
        if sent < len(data):
            await self.send_rest(data, sent)

    async def send_rest(self, data: bytes, sent: int) -> None:
        """Send ``data`` from offset ``sent`` on, waiting while the socket is full."""
        sock = self.sock
        if sock is None:
            await self.stream.send_all(data[sent:] if sent else data)
            return
        view = memoryview(data)
        try:
            while sent < len(view):
                await wait_writable(sock)
                try:
                    sent += sock.send(view[sent:])
                except BlockingIOError:
                    continue
                except OSError as err:
                    raise _stream_error(err) from err
        finally:
            view.release()
