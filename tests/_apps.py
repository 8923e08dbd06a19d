"""Small real HTTP/1.1 servers whose answers a test decides: a JWKS endpoint, an authorization service.

``await nursery.start(serve_app, handler)`` listens on a loopback port and answers every
request with ``await handler(AppRequest)``: a ``(status, headers, body)`` triple.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import h11
import trio


@attrs.frozen
class AppRequest:
    """What the app was asked."""

    method: str
    target: str
    headers: dict[str, str]


Answer = tuple[int, list[tuple[str, str]], bytes]
Handler = Callable[[AppRequest], Awaitable[Answer]]


async def serve_app(handler: Handler, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``handler`` on 127.0.0.1 until cancelled; report ``"127.0.0.1:PORT"``."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def serve(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                    continue
                if not isinstance(event, h11.Request):
                    return
                request = AppRequest(
                    event.method.decode(),
                    event.target.decode("latin-1"),
                    {n.decode(): v.decode("latin-1") for n, v in event.headers},
                )
                while not isinstance(body_event := conn.next_event(), h11.EndOfMessage):
                    if body_event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                status, headers, body = await handler(request)
                head = [*headers, ("content-length", str(len(body)))]
                out = conn.send(h11.Response(status_code=status, headers=head)) or b""
                out += (conn.send(h11.Data(data=body)) or b"") + (conn.send(h11.EndOfMessage()) or b"")
                await stream.send_all(out)
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, h11.RemoteProtocolError):
            return

    async with trio.open_nursery() as nursery:
        task_status.started(f"127.0.0.1:{port}")
        await trio.serve_listeners(serve, listeners, handler_nursery=nursery)
