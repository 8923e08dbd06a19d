"""Small real HTTP servers and clients for the security tests.

Servers whose answers a test decides (a JWKS endpoint, an authorization service), and an
HTTP/2 client that sends a request exactly as written (no client-side clean-up).

``await nursery.start(serve_app, handler)`` listens on a loopback port and answers every
request with ``await handler(AppRequest)``: a ``(status, headers, body)`` triple.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import h2.config
import h2.connection
import h2.events
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


async def h2_get(
    address: tuple[str, int], target: str, *, scheme: bytes = b"http"
) -> tuple[int, dict[str, str], bytes]:
    """GET ``target`` over HTTP/2 with prior knowledge, the :path (and :scheme) sent exactly as given."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(
        stream_id,
        [(b":method", b"GET"), (b":path", target.encode()), (b":scheme", scheme), (b":authority", b"x")],
        end_stream=True,
    )
    headers: dict[str, str] = {}
    body = b""
    async with await trio.open_tcp_stream(*address) as stream:
        await stream.send_all(conn.data_to_send())
        while True:
            data = await stream.receive_some(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    headers = {n.decode(): v.decode() for n, v in event.headers}
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    return int(headers.get(":status", "0")), headers, body
            await stream.send_all(conn.data_to_send())
    return 0, headers, body
