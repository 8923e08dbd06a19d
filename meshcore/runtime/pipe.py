"""Splice two byte streams both ways, half-close aware, with an idle timeout.

Used by ``tcp_proxy`` and by HTTP/1.1 upgrades (WebSocket): when one side finishes
sending, the other is told (``send_eof``) and the opposite direction carries on until it
finishes too; a reset on either side tears down both.
"""

from __future__ import annotations

import math

import trio

from meshcore.runtime.stats import Counter

__all__ = ["splice"]


async def splice(
    a: trio.abc.Stream,
    b: trio.abc.Stream,
    *,
    idle_timeout: float = 0,
    buffer_size: int = 64 * 1024,
    a_to_b: Counter | None = None,
    b_to_a: Counter | None = None,
) -> bool:
    """Copy bytes a→b and b→a until both directions end; True if the idle timeout fired.

    Args:
        a: one stream (the client side, say).
        b: the other stream.
        idle_timeout: seconds with no byte moving either way before giving up (0: none).
        buffer_size: the largest read.
        a_to_b: counts the bytes copied from ``a`` to ``b``.
        b_to_a: counts the bytes copied from ``b`` to ``a``.
    """
    idle = idle_timeout or math.inf
    with trio.CancelScope(deadline=trio.current_time() + idle) as scope:

        async def copy(source: trio.abc.Stream, sink: trio.abc.Stream, counter: Counter | None) -> None:
            try:
                while data := await source.receive_some(buffer_size):
                    scope.deadline = trio.current_time() + idle
                    await sink.send_all(data)
                    if counter is not None:
                        counter.value += len(data)
                if isinstance(sink, trio.abc.HalfCloseableStream):
                    await sink.send_eof()
                else:
                    scope.cancel()  # no half-close on this stream (TLS): end both ways
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                scope.cancel()  # one side reset: tear down both

        async with trio.open_nursery() as nursery:
            nursery.start_soon(copy, a, b, a_to_b)
            nursery.start_soon(copy, b, a, b_to_a)
    return scope.cancelled_caught and trio.current_time() >= scope.deadline
