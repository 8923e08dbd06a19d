"""HTTP/2 flow control for senders, shared by the downstream and upstream sides."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Protocol

import h2.connection
import trio

__all__ = ["FlowStream", "send_flow_controlled"]


class FlowStream(Protocol):
    """A stream a sender writes to: its id, and the event set when its window may have grown."""

    id: int
    window: trio.Event


async def send_flow_controlled(
    conn: h2.connection.H2Connection,
    stream: FlowStream,
    data: bytes,
    flush: Callable[[], Awaitable[None]],
    *,
    abandoned: Callable[[], bool] = lambda: False,
    idle_timeout: float = math.inf,
) -> bool:
    """Send ``data`` on ``stream`` no faster than the peer's windows allow; False if abandoned.

    Waits on the stream's own window event (set by the WINDOW_UPDATE and SETTINGS handlers),
    so a stream whose reader does not read holds back nobody else. Frames never exceed the
    peer's maximum frame size. A window that stays shut for ``idle_timeout`` seconds raises
    trio.TooSlowError: a peer that stops reading must not hold the stream (and whatever
    feeds it) forever.
    """
    view = memoryview(data)
    while view:
        if abandoned():
            return False
        window = conn.local_flow_control_window(stream.id)
        if window <= 0:
            stream.window = trio.Event()
            with trio.fail_after(idle_timeout):
                await stream.window.wait()
            continue
        size = min(window, len(view), conn.max_outbound_frame_size)
        conn.send_data(stream.id, bytes(view[:size]))
        view = view[size:]
        await flush()
    return True
