"""Upstream test servers a proxy can be pointed at: real HTTP/1.1 over loopback sockets.

One server answers by path (:data:`PATHS`), so a single upstream covers the usual cases;
anything else gets 200 with a JSON description of the request (method, path, headers,
body size, server name). Every response carries ``x-upstream: NAME`` so tests can tell
upstreams apart. ``meshcore upstream`` runs it; its ``--help`` lists the same paths.
"""

from __future__ import annotations

import json
import socket
import struct
from http import HTTPStatus
from typing import Any

import h11
import trio

__all__ = ["PATHS", "serve_upstream"]

CHUNK = 64 * 1024
PATHS: dict[str, str] = {
    "/echo": "streams the request body back (same length, chunk by chunk)",
    "/status/NNN": "answers with status NNN and no body",
    "/bytes/N": "N bytes of x",
    "/delay/MS": "answers (as any other path) after MS milliseconds",
    "/chunks/N": "N chunks of 1 KiB with chunked encoding, flushed one by one",
    "/reset/N": "promises more, sends N body bytes, then resets the connection",
    "/anything/else": "200 with a JSON description of the request (method, path, headers, body size, name)",
}
"""The paths the test upstream answers, and how."""


async def serve_upstream(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    name: str = "upstream",
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the test upstream until cancelled; report the bound ``(host, port)``."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[:2]

    async def serve(stream: trio.SocketStream) -> None:
        await _Session(stream, name).run()

    async with trio.open_nursery() as nursery:
        task_status.started((bound[0], bound[1]))
        await trio.serve_listeners(serve, listeners, handler_nursery=nursery)


class _Session:
    def __init__(self, stream: trio.SocketStream, name: str) -> None:
        self.stream = stream
        self.name = name.encode()
        self.conn = h11.Connection(h11.SERVER)
        self.head_request = False

    async def _next(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.stream.receive_some(CHUNK)
            self.conn.receive_data(data)

    async def _send(self, *events: Any) -> None:
        if self.head_request:  # a reply to HEAD is the head alone: h11 refuses body bytes
            events = tuple(e for e in events if not isinstance(e, h11.Data))
        await self.stream.send_all(b"".join(self.conn.send(e) or b"" for e in events))

    async def run(self) -> None:
        try:
            while True:
                event = await self._next()
                if not isinstance(event, h11.Request):
                    return
                await self._answer(event)
                if self.conn.our_state is h11.MUST_CLOSE:
                    return
                while self.conn.their_state is not h11.DONE:
                    if isinstance(await self._next(), h11.ConnectionClosed):
                        return
                self.conn.start_next_cycle()
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await self.stream.aclose()

    def _headers(self, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
        return [(b"x-upstream", self.name), *extra]

    async def _answer(self, request: h11.Request) -> None:
        self.head_request = request.method == b"HEAD"
        path = request.target.decode("latin-1").partition("?")[0]
        parts = path.strip("/").split("/")
        arg = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if parts[0] == "echo":
            await self._echo(request)
        elif parts[0] == "status":
            no_body = arg in (204, 304) or HTTPStatus.CONTINUE <= arg < HTTPStatus.OK
            headers = self._headers() if no_body else self._headers((b"content-length", b"0"))
            await self._send(h11.Response(status_code=arg, headers=headers), h11.EndOfMessage())
        elif parts[0] == "bytes":
            await self._send(
                h11.Response(status_code=200, headers=self._headers((b"content-length", str(arg).encode()))),
                h11.Data(data=b"x" * arg),
                h11.EndOfMessage(),
            )
        elif parts[0] == "delay":
            await trio.sleep(arg / 1000)
            await self._describe(request, 0)
        elif parts[0] == "chunks":
            await self._send(h11.Response(status_code=200, headers=self._headers()))
            for _ in range(arg):
                await self._send(h11.Data(data=b"c" * 1024))
            await self._send(h11.EndOfMessage())
        elif parts[0] == "reset":
            await self._send(
                h11.Response(
                    status_code=200, headers=self._headers((b"content-length", str(arg * 2 + 1).encode()))
                ),
                h11.Data(data=b"r" * arg),
            )
            # SO_LINGER 0: close with RST, the way a crashing upstream does.
            self.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.stream.socket.close()
        else:
            size = 0
            while isinstance(event := await self._next(), h11.Data):
                size += len(event.data)
            await self._describe(request, size)

    async def _describe(self, request: h11.Request, body_size: int) -> None:
        body = json.dumps(
            {
                "method": request.method.decode(),
                "path": request.target.decode("latin-1"),
                "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in request.headers],
                "body_size": body_size,
                "upstream": self.name.decode(),
            }
        ).encode()
        headers = self._headers(
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())
        )
        await self._send(
            h11.Response(status_code=200, headers=headers), h11.Data(data=body), h11.EndOfMessage()
        )

    async def _echo(self, request: h11.Request) -> None:
        length = dict(request.headers).get(b"content-length")
        headers = self._headers((b"content-length", length)) if length is not None else self._headers()
        await self._send(h11.Response(status_code=200, headers=headers))
        while isinstance(event := await self._next(), h11.Data):
            await self._send(h11.Data(data=event.data))
        await self._send(h11.EndOfMessage())
