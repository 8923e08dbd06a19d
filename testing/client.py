"""A small HTTP/1.1 client for trio tests and the demo: one request per call, h11 inside.

:func:`fetch` sends one request on a new connection (TLS if given an SSL context) and
reads the whole response; :class:`Client` does the same with an address, Host and TLS
settings bound once, the way a test talks to one proxy listener:

    client = Client(("127.0.0.1", 8080))
    response = await client.get("/hello", headers={"x-user": "alice"})
    assert response.status == 200
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import h11
import trio

from meshcore import join_host_port

__all__ = ["Client", "ClientResponse", "HeadersArg", "IncompleteResponse", "fetch"]

HeadersArg = Sequence[tuple[str, str]] | Mapping[str, str]
"""Request headers: ``(name, value)`` pairs (repeats allowed) or a mapping."""


class IncompleteResponse(ConnectionError):  # noqa: N818 - public name since the first release; it is a ConnectionError
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

    def json(self) -> Any:
        """The body parsed as JSON (the test upstream describes requests this way)."""
        return json.loads(self.body)


def _host_part(host: str) -> str:
    """The name in a Host header: "a.example:8443" -> "a.example", "[::1]:80" -> "::1"."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.partition(":")[0]


def _pairs(headers: HeadersArg) -> list[tuple[str, str]]:
    return list(headers.items()) if isinstance(headers, Mapping) else list(headers)


async def fetch(
    address: tuple[str, int],
    path: str = "/",
    *,
    method: str = "GET",
    host: str = "example.com",
    headers: HeadersArg = (),
    body: bytes | None = None,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> ClientResponse:
    """Send one request on a new connection and read the whole response.

    Args:
        address: where to connect, ``(host, port)``.
        path: the request target (path and query).
        method: the request method.
        host: the Host header.
        headers: more request headers.
        body: the request body (sent with a content-length), or None for none.
        ssl_context: speak TLS with this client context (None: plain TCP).
        server_hostname: the name sent as SNI and checked against the server's certificate
            (default: the host part of ``host``).

    Raises:
        IncompleteResponse: the connection closed or broke before the response was complete.
        ConnectionError: the server closed the connection without any response.
    """
    stream: trio.abc.Stream = await trio.open_tcp_stream(*address)
    if ssl_context is not None:
        name = server_hostname or _host_part(host)
        stream = trio.SSLStream(stream, ssl_context, server_hostname=name, https_compatible=True)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        head = [("host", host), *_pairs(headers)]
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
                conn.receive_data(await _receive(stream, ssl_context is not None))
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


async def _receive(stream: trio.abc.Stream, tls: bool) -> bytes:
    if not tls:
        return bytes(await stream.receive_some(65536))
    try:
        return bytes(await stream.receive_some(65536))
    except trio.BrokenResourceError as err:  # a TLS stream cut without close_notify
        msg = "the TLS connection broke before the response was complete"
        raise IncompleteResponse(msg) from err


class Client:
    """A client bound to one HTTP listener: each call is one request on a new connection.

    Args:
        address: the listener's ``(host, port)``.
        host: the Host header of every request (default: ``host:port`` of ``address``, as
            a browser or curl would send it).
        ssl_context: speak TLS with this client context (None: plain HTTP).
        server_hostname: the SNI name and the name checked against the certificate
            (default: the host part of ``host``).
    """

    def __init__(
        self,
        address: tuple[str, int],
        *,
        host: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        self.address = address
        self.host = host if host is not None else join_host_port(*address)
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname

    async def request(
        self,
        method: str,
        path: str = "/",
        *,
        headers: HeadersArg = (),
        body: bytes | None = None,
        host: str | None = None,
    ) -> ClientResponse:
        """Send one request and read the whole response (see :func:`fetch`).

        Args:
            method: the request method.
            path: the request target (path and query).
            headers: more request headers.
            body: the request body, or None for none.
            host: the Host header of this request (default: the client's).
        """
        return await fetch(
            self.address,
            path,
            method=method,
            host=host if host is not None else self.host,
            headers=headers,
            body=body,
            ssl_context=self.ssl_context,
            server_hostname=self.server_hostname,
        )

    async def get(
        self, path: str = "/", *, headers: HeadersArg = (), host: str | None = None
    ) -> ClientResponse:
        """A GET request (see :meth:`request`)."""
        return await self.request("GET", path, headers=headers, host=host)

    async def head(
        self, path: str = "/", *, headers: HeadersArg = (), host: str | None = None
    ) -> ClientResponse:
        """A HEAD request (see :meth:`request`)."""
        return await self.request("HEAD", path, headers=headers, host=host)

    async def post(
        self, path: str = "/", body: bytes = b"", *, headers: HeadersArg = (), host: str | None = None
    ) -> ClientResponse:
        """A POST request with ``body`` (see :meth:`request`)."""
        return await self.request("POST", path, headers=headers, body=body, host=host)

    async def put(
        self, path: str = "/", body: bytes = b"", *, headers: HeadersArg = (), host: str | None = None
    ) -> ClientResponse:
        """A PUT request with ``body`` (see :meth:`request`)."""
        return await self.request("PUT", path, headers=headers, body=body, host=host)

    async def delete(
        self, path: str = "/", *, headers: HeadersArg = (), host: str | None = None
    ) -> ClientResponse:
        """A DELETE request (see :meth:`request`)."""
        return await self.request("DELETE", path, headers=headers, host=host)

    def __repr__(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"<Client {scheme}://{self.address[0]}:{self.address[1]} host={self.host!r}>"
