"""A small HTTP/1.1 client for trio tests and the demo: one request per call, h11 inside."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import h11
import trio

__all__ = ["ClientResponse", "IncompleteResponse", "fetch"]


class IncompleteResponse(ConnectionError):
    """The connection closed before the response was complete (never mistaken for success)."""


@attrs.frozen
class ClientResponse:
    """What came back: status, headers (lower-case names) and the whole body."""

    status: int
    headers: Sequence[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name``, or None."""
        return next((v for n, v in self.headers if n == name.lower()), None)

    @property
    def text(self) -> str:
        """The body as UTF-8 text."""
        return self.body.decode()


async def fetch(
    address: tuple[str, int],
    path: str = "/",
    *,
    method: str = "GET",
    host: str = "example.com",
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | None = None,
) -> ClientResponse:
    """Send one request on a new connection and read the whole response."""
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        head = [("host", host), *headers]
        if body is not None:
            head.append(("content-length", str(len(body))))
        out = conn.send(h11.Request(method=method, target=path, headers=head)) or b""
        if body:
            out += conn.send(h11.Data(data=body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        await stream.send_all(out)
        response: h11.Response | None = None
        chunks: list[bytes] = []
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as err:
                raise IncompleteResponse(str(err)) from err
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        if response is None:
            msg = "the server closed the connection without a response"
            raise ConnectionError(msg)
        pairs = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in response.headers]
        return ClientResponse(response.status_code, pairs, b"".join(chunks))
