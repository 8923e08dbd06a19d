"""The last answer on a connection we close: send it, then linger so that it arrives.

Closing a socket with unread input makes the kernel send a reset, and a reset can destroy
the answer before the client reads it (RFC 9112 section 9.6): the rest of an oversized
head, a request body, pipelined requests. So the answer goes out, sending stops
(half-close), and what the client still sends is read and dropped, for a bounded time and
size, before the caller closes.
"""

from __future__ import annotations

import trio

__all__ = ["LINGER_BYTES", "LINGER_TIME", "send_and_linger"]

LINGER_TIME = 1.0
"""Seconds the answer may take to go out, and again to drop what the client still sends."""
LINGER_BYTES = 1024 * 1024
"""The most bytes read and dropped while lingering."""
RECEIVE_SIZE = 64 * 1024


async def send_and_linger(stream: trio.abc.Stream, answer: bytes) -> None:
    """Send ``answer``, half-close, and drop the client's input until it stops or a bound is hit.

    Never raises for a client that went away; the caller closes the stream afterwards. A
    stream that cannot half-close (TLS) gets the answer alone.

    Args:
        stream: the connection.
        answer: the bytes of the last answer (a complete HTTP response).
    """
    try:
        with trio.move_on_after(LINGER_TIME):
            await stream.send_all(answer)
        if not isinstance(stream, trio.abc.HalfCloseableStream):
            return
        with trio.move_on_after(LINGER_TIME):
            await stream.send_eof()
            dropped = 0
            while dropped < LINGER_BYTES and (data := await stream.receive_some(RECEIVE_SIZE)):
                dropped += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
