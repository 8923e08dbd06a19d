"""A raw HTTP/2 client for tests, built on h2: streams multiplexed on one connection.

It sees what a higher-level client hides: each stream's reset code, and the GOAWAY the
server sends (``terminated``), so tests can tell a connection that carried on from one
that was told to go away.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import h2.config
import h2.connection
import h2.events
import trio
from h2.errors import ErrorCodes

RawHeaders = list[tuple[bytes, bytes]]
RECEIVE_SIZE = 64 * 1024


def text_headers(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(bytes(n).decode("latin-1"), bytes(v).decode("latin-1")) for n, v in headers]


def frame(f: Any) -> bytes:
    """A hyperframe frame on the wire."""
    return bytes(f.serialize())


def raw_headers(headers: Any) -> RawHeaders:
    """h2's header tuples (bytes, since ``header_encoding=None``) as plain byte pairs."""
    return [(bytes(n), bytes(v)) for n, v in headers]


async def send_flow_controlled(
    conn: h2.connection.H2Connection,
    stream_id: int,
    data: bytes,
    flush: Callable[[], Awaitable[None]],
    window_opened: Callable[[], Awaitable[None]],
    *,
    end_stream: bool,
) -> None:
    """Send ``data`` on a stream as the peer's windows allow, waiting for WINDOW_UPDATEs."""
    view = memoryview(data)
    while view:
        window = conn.local_flow_control_window(stream_id)
        if window <= 0:
            await window_opened()
            continue
        size = min(window, len(view), conn.max_outbound_frame_size)
        conn.send_data(stream_id, bytes(view[:size]), end_stream=end_stream and size == len(view))
        view = view[size:]
        await flush()
    if not data and end_stream:
        conn.end_stream(stream_id)
        await flush()


# -- a raw HTTP/2 client ---------------------------------------------------------------------


@attrs.define
class H2Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)


class _ClientStream:
    def __init__(self, *, acknowledge: bool) -> None:
        self.acknowledge = acknowledge
        self.head: RawHeaders | None = None
        self.body = bytearray()
        self.trailers: RawHeaders = []
        self.reset: ErrorCodes | int | None = None
        self.ended = trio.Event()
        self.progress = trio.Event()


class H2Client:
    """A client on one HTTP/2 connection, built on h2 (client side), streams multiplexed.

    A stream opened with ``acknowledge=False`` is never read: its data is never acknowledged
    on the stream, so its window closes after the first 65535 bytes. The connection window is
    still given back for it, as a browser does for bytes it has buffered for a tab that does
    not read them: flow control per stream, not per connection, must hold the sender back.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h2 = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.streams: dict[int, _ClientStream] = {}
        self.lock = trio.Lock()
        self.window = trio.Event()
        self.terminated: h2.events.ConnectionTerminated | None = None
        self.closed = trio.Event()

    async def flush(self) -> None:
        async with self.lock:
            if data := self.h2.data_to_send():
                await self.stream.send_all(data)

    async def window_opened(self) -> None:
        await self.window.wait()

    async def read_loop(self) -> None:
        try:
            while data := await self.stream.receive_some(RECEIVE_SIZE):
                for event in self.h2.receive_data(data):
                    self._handle(event)
                await self.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.closed.set()
            self.window.set()
            for stream in self.streams.values():
                stream.ended.set()
                stream.progress.set()

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = event
            return
        if isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self.window.set()
            self.window = trio.Event()
            return
        stream = self.streams.get(getattr(event, "stream_id", 0))
        if stream is None:
            return
        if isinstance(event, h2.events.ResponseReceived):
            stream.head = raw_headers(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            stream.body.extend(event.data)
            flow = event.flow_controlled_length
            if stream.acknowledge:
                self.h2.acknowledge_received_data(flow, event.stream_id)
            elif flow:
                self.h2.increment_flow_control_window(flow)  # the connection's window, not the stream's
            stream.progress.set()
            stream.progress = trio.Event()
        elif isinstance(event, h2.events.TrailersReceived):
            stream.trailers = raw_headers(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            stream.ended.set()
        elif isinstance(event, h2.events.StreamReset):
            # A reset after the end of the response (RST_STREAM NO_ERROR: "stop sending your
            # body", RFC 9113 8.1) does not undo the response; it may come in the same read.
            if not stream.ended.is_set():
                stream.reset = event.error_code
            stream.ended.set()

    async def start(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        authority: str = "proxy.test",
        acknowledge: bool = True,
        end_stream: bool = True,
    ) -> int:
        """Open a stream with a request; return its id (the response is read by :meth:`response`).

        With ``end_stream=False`` the request body is left open after ``body``.
        """
        sid = self.h2.get_next_available_stream_id()
        self.streams[sid] = _ClientStream(acknowledge=acknowledge)
        head = [
            (":method", method),
            (":scheme", "http"),
            (":authority", authority),
            (":path", path),
            *headers,
        ]
        self.h2.send_headers(
            sid, [(n.encode(), v.encode()) for n, v in head], end_stream=end_stream and not body
        )
        await self.flush()
        if body:
            await send_flow_controlled(
                self.h2, sid, body, self.flush, self.window_opened, end_stream=end_stream
            )
        return sid

    async def response(self, sid: int) -> H2Response:
        """Wait for the whole response on stream ``sid``."""
        stream = self.streams[sid]
        await stream.ended.wait()
        if stream.reset is not None or stream.head is None:
            msg = f"stream {sid} reset ({stream.reset!r}) or connection closed before a response"
            raise ConnectionError(msg)
        head = text_headers(stream.head)
        status = int(next(v for n, v in head if n == ":status"))
        headers = [(n, v) for n, v in head if not n.startswith(":")]
        return H2Response(status, headers, bytes(stream.body), text_headers(stream.trailers))

    async def request(self, path: str, **kwargs: Any) -> H2Response:
        return await self.response(await self.start(path, **kwargs))


@asynccontextmanager
async def open_h2_client(address: tuple[str, int]) -> AsyncIterator[H2Client]:
    """An :class:`H2Client` on a new cleartext connection (prior knowledge), closed on exit."""
    stream = await trio.open_tcp_stream(*address)
    async with stream, trio.open_nursery() as nursery:
        client = H2Client(stream)
        client.h2.initiate_connection()
        await client.flush()
        nursery.start_soon(client.read_loop)
        yield client
        nursery.cancel_scope.cancel()
