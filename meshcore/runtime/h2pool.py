"""Upstream HTTP/2: multiplexed connections per endpoint, a reader task per connection.

A request takes a stream on a connection that has room (the peer's
SETTINGS_MAX_CONCURRENT_STREAMS); when every connection is full a new one is opened, up
to the cluster's connection limit. A stream refused by the upstream (REFUSED_STREAM, or
beyond the last stream id of a GOAWAY) was not processed, so it is retried on another
connection.

Full duplex: a request body is sent by a task of its own, in the connection's nursery, while
the response comes in (a bidirectional gRPC call answers each message before the client
sends the next). A stream given up on (timeout, the client went away, the response ended
before the request) is reset, and its sender stopped.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import structlog
import trio
from h2.errors import ErrorCodes
from hpack import NeverIndexedHeaderTuple

from meshcore.errors import ProtocolError, UpstreamError
from meshcore.flags import ResponseFlag
from meshcore.http.h2fields import fields_received, fields_to_send
from meshcore.http.h2flow import send_flow_controlled
from meshcore.http.h2goaway import GracefulGoaway
from meshcore.http.h2hpack import CachingEncoder
from meshcore.http.h2quiet import SILENT, silence_hpack
from meshcore.http.messages import Body, Headers, Request, Response
from meshcore.http.semantics import strip_hop_by_hop

if TYPE_CHECKING:
    from meshcore.runtime.host import Host

__all__ = ["H2Pool", "StreamRefused"]

log = structlog.get_logger("meshcore.upstream.http2")

RECEIVE_SIZE = 64 * 1024
WINDOW = 1 << 20
# The longest a send may block: it is not cancelled midway (see H2Connection.flush).
SEND_TIMEOUT = 10.0
# Frames queued for the flusher's next write past which a sender writes them itself (and
# waits for the socket): what a connection holds unsent stays bounded.
QUEUED_LIMIT = 64 * 1024
# Fields whose value is new with every request: never entered in the HPACK table. Each one
# entered would evict the oldest entry, a field every request repeats, which the next
# request enters again, evicting the next: a whole head re-entered (and Huffman-coded) per
# request, on both sides, and no head ever the same bytes twice for CachingEncoder.
PER_REQUEST_FIELDS = frozenset(
    [
        b"x-request-id",
        b"traceparent",
        b"x-b3-traceid",
        b"x-b3-spanid",
        b"x-b3-parentspanid",
        b"b3",
        b"grpc-timeout",
    ]
)


class StreamRefused(Exception):  # noqa: N818 - an outcome: the request was not processed
    """The upstream refused the stream before processing it: safe to retry elsewhere."""


class _UpStream:
    __slots__ = ("chunks", "ended", "error", "head", "id", "readable", "sender", "sent", "trailers", "window")

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.head: list[tuple[bytes, bytes]] | None = None
        self.chunks: deque[tuple[bytes, int]] = deque()
        self.ended = False
        self.trailers: Headers | None = None
        self.error: BaseException | None = None
        self.readable = trio.Event()
        self.window = trio.Event()
        self.sender = trio.CancelScope()  # the task sending the request body
        self.sent = False  # the request is complete (END_STREAM sent)


class H2Connection:
    """One HTTP/2 connection to an upstream endpoint."""

    def __init__(self, stream: trio.abc.Stream, host: Host) -> None:
        self.stream = stream
        self.host = host
        silence_hpack()
        # Fields are normalized and checked by fields_to_send and fields_received, each in
        # one pass held to h2's pipelines by differential tests (tests/test_h2fields.py).
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            logger=SILENT,
        )
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.encoder = CachingEncoder()  # the same request head, encoded once per table state
        self.h2.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW}
        )
        self.streams: dict[int, _UpStream] = {}
        self.send_lock = trio.Lock()
        self.closed = False
        self.goaway_last: int | None = None
        self.graceful = GracefulGoaway()
        self.settled = trio.Event()
        self.nursery: trio.Nursery | None = None
        self.flush_soon = trio.Event()
        # Frames taken from h2 for the flusher's next write (see queue), oldest first.
        self.queued: list[bytes] = []
        self.queued_size = 0

    @property
    def capacity(self) -> int:
        """Streams this connection can still open."""
        if self.closed or self.goaway_last is not None:
            return 0
        return self.h2.remote_settings.max_concurrent_streams - len(self.streams)

    def queue(self) -> None:
        """Frames h2 queued go with the others in the flusher's next write (woken only if any).

        Everything that does not need to wait for the socket queues its frames this way: a
        request's HEADERS, DATA and END_STREAM, window updates, resets, acknowledgements of
        the peer's SETTINGS and PING. Streams runnable at the same moment share one write.
        """
        data = self.h2.data_to_send()
        if data:
            self.queued.append(data)
            self.queued_size += len(data)
            self.flush_soon.set()

    async def send_soon(self) -> None:
        """Queue what h2 has for the flusher; past QUEUED_LIMIT, write it now (back-pressure)."""
        self.queue()
        if self.queued_size >= QUEUED_LIMIT:
            await self.flush()

    async def flush(self) -> None:
        """Send what was queued and what h2 has, one writer at a time.

        The send is shielded from cancellation (a stream given up on cancels its task, maybe
        here): frames taken from h2 and then not sent, or sent in part, would break the
        connection for every stream on it (HPACK state, stream states). It is bounded by
        SEND_TIMEOUT instead; past it the connection is closed.
        """
        lock = self.send_lock
        if lock.locked():
            await lock.acquire()
        else:
            lock.acquire_nowait()  # no checkpoint of its own: the send is one
        try:
            last = self.h2.data_to_send()
            if last:
                self.queued.append(last)
            if not self.queued:
                return
            data = self.queued[0] if len(self.queued) == 1 else b"".join(self.queued)
            self.queued = []
            self.queued_size = 0
            # One scope: shielded from outer cancellations, cancelled by its own deadline.
            with trio.CancelScope(shield=True, deadline=trio.current_time() + SEND_TIMEOUT) as scope:
                await self.stream.send_all(data)
            if scope.cancelled_caught:
                self.close(ConnectionResetError("upstream HTTP/2 connection stopped reading"))
                msg = "send to the upstream timed out"
                raise trio.BrokenResourceError(msg)
        finally:
            lock.release()

    async def _flusher(self) -> None:
        """Send what was queued: one write for everything runnable streams queued meanwhile."""
        try:
            while True:
                await self.flush_soon.wait()
                # Once more round the loop: every stream runnable now queues its frames first,
                # and they all go in one write.
                await trio.lowlevel.cancel_shielded_checkpoint()
                self.flush_soon = trio.Event()
                await self.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.close(ConnectionResetError("upstream HTTP/2 connection broken"))

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Read from the upstream until it closes; wake the streams.

        Request bodies are sent by tasks in this connection's nursery.
        """
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(WINDOW)
        try:
            await self.flush()
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._flusher)
                task_status.started()
                await self._read_loop()
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as err:
            log.info("upstream_http2_connection_failed", upstream=self.host.label, reason=str(err))
        finally:
            self.close(ConnectionResetError("upstream HTTP/2 connection closed"))

    async def _read_loop(self) -> None:
        try:
            while not self.closed:
                data = await self.stream.receive_some(RECEIVE_SIZE)
                if not data:
                    break
                data, lasts = self.graceful.feed(bytes(data))
                for last in lasts:
                    self._goaway(last)
                for event in self.h2.receive_data(data):
                    self._handle(event)
                self.queue()  # acknowledgements and window updates, if any, with the rest
        except (trio.BrokenResourceError, trio.ClosedResourceError, h2.exceptions.ProtocolError) as err:
            log.info("upstream_http2_connection_failed", upstream=self.host.label, reason=str(err))

    def close(self, error: BaseException) -> None:
        """Fail every open stream and close the transport."""
        if not self.closed:
            self.closed = True
            self.host.h2_pool.discard(self)
        for up in self.streams.values():
            if up.error is None and not up.ended:
                up.error = error
            up.readable.set()
            up.window.set()
            up.sender.cancel()
        self.streams.clear()
        sock = getattr(self.stream, "transport_stream", self.stream)
        if isinstance(sock, trio.SocketStream):
            sock.socket.close()

    def _handle(self, event: h2.events.Event) -> None:
        handler = self._EVENT_HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _checked(self, fields: list[Any], *, trailers: bool) -> list[tuple[bytes, bytes]]:
        """A received block's fields as h2 would hand them over (see fields_received).

        A block h2 would refuse ends the connection as h2 ends it: GOAWAY(PROTOCOL_ERROR),
        then ProtocolError for the read loop.
        """
        try:
            return fields_received(fields, response=True, trailers=trailers)
        except h2.exceptions.ProtocolError:
            with contextlib.suppress(h2.exceptions.ProtocolError):  # the connection is already over
                self.h2.close_connection(error_code=ErrorCodes.PROTOCOL_ERROR)
            raise

    def _response_received(self, event: h2.events.ResponseReceived) -> None:
        head = self._checked(event.headers, trailers=False)
        if (up := self.streams.get(event.stream_id)) is not None:
            up.head = head
            up.readable.set()

    def _informational_received(self, event: h2.events.InformationalResponseReceived) -> None:
        self._checked(event.headers, trailers=False)  # h2 checked these too; nothing else to do

    def _data_received(self, event: h2.events.DataReceived) -> None:
        if (up := self.streams.get(event.stream_id)) is not None:
            if event.data:
                up.chunks.append((event.data, event.flow_controlled_length))
                up.readable.set()
            elif event.flow_controlled_length:
                # An empty DATA frame (padding only): never a chunk, for b"" ends a body, and the
                # response would pass for complete when cut short. Its window goes back at once.
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                self.queue()

    def _trailers_received(self, event: h2.events.TrailersReceived) -> None:
        trailers = self._checked(event.headers, trailers=True)
        if (up := self.streams.get(event.stream_id)) is not None:
            up.trailers = Headers.from_raw(trailers)

    def _stream_ended(self, event: h2.events.StreamEnded) -> None:
        if (up := self.streams.get(event.stream_id)) is not None:
            up.ended = True
            up.readable.set()

    def _reset_received(self, event: h2.events.StreamReset) -> None:
        if (up := self.streams.get(event.stream_id)) is not None:
            self._stream_reset(up, event.error_code)

    def _window_updated(self, event: h2.events.WindowUpdated) -> None:
        up = self.streams.get(event.stream_id)
        targets = self.streams.values() if event.stream_id == 0 else ([up] if up else [])
        for target in targets:
            target.window.set()

    def _settings_changed(self, event: h2.events.RemoteSettingsChanged) -> None:
        self.settled.set()
        self.host.wake_waiters()
        if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            # Every stream's window changed, with no WINDOW_UPDATE (RFC 9113 6.9.2).
            for target in self.streams.values():
                target.window.set()

    def _connection_terminated(self, event: h2.events.ConnectionTerminated) -> None:
        self._goaway(event.last_stream_id or 0)

    # What _handle does with each kind of event h2 reports (by exact type, as h2 reports
    # them); the others need nothing.
    _EVENT_HANDLERS: ClassVar[dict[type[h2.events.Event], Callable[[H2Connection, Any], None]]] = {
        h2.events.ResponseReceived: _response_received,
        h2.events.InformationalResponseReceived: _informational_received,
        h2.events.DataReceived: _data_received,
        h2.events.TrailersReceived: _trailers_received,
        h2.events.StreamEnded: _stream_ended,
        h2.events.StreamReset: _reset_received,
        h2.events.WindowUpdated: _window_updated,
        h2.events.RemoteSettingsChanged: _settings_changed,
        h2.events.ConnectionTerminated: _connection_terminated,
    }

    def _goaway(self, last: int) -> None:
        """GOAWAY: no new streams here; those past ``last`` were not processed (retry them)."""
        self.goaway_last = last if self.goaway_last is None else min(last, self.goaway_last)
        for sid, target in list(self.streams.items()):
            if sid > last:
                target.error = StreamRefused("GOAWAY before the stream was processed")
                target.readable.set()
                self.streams.pop(sid)

    def _stream_reset(self, up: _UpStream, code: int) -> None:
        """The upstream reset a stream."""
        self.streams.pop(up.id, None)
        if up.ended:
            # After a complete response: the upstream wants no more of the request (RFC 9113
            # section 8.1, NO_ERROR). The response stands; only the request body stops.
            up.sender.cancel()
            return
        refused = code == ErrorCodes.REFUSED_STREAM and up.head is None
        up.error = StreamRefused("REFUSED_STREAM") if refused else ConnectionResetError("stream reset")
        up.readable.set()
        up.window.set()

    async def _open(self, request: Request, deadline: float) -> _UpStream:
        """Send the request head, start sending its body, wait for the response head."""
        sid = self.h2.get_next_available_stream_id()
        up = self.streams[sid] = _UpStream(sid)
        headers = [
            (b":method", request.method.encode()),
            (b":scheme", request.scheme.encode()),
            (b":authority", request.authority.encode("latin-1")),
            (b":path", request.path.encode("latin-1")),
        ]
        # Connection-specific fields must not cross into HTTP/2 (RFC 9113 section 8.2.2); te
        # only as "te: trailers" (gRPC needs it); the host is the :authority.
        headers += [(n, v) for n, v in strip_hop_by_hop(request.headers.raw) if n != b"host"]
        body = request.body
        empty = body.length == 0 or body.done
        try:
            headers = fields_to_send(headers, request=True)  # refused as h2 refuses, before any state
        except h2.exceptions.ProtocolError:
            self.streams.pop(sid, None)
            raise
        headers = [NeverIndexedHeaderTuple(*f) if f[0] in PER_REQUEST_FIELDS else f for f in headers]
        self.h2.send_headers(sid, headers, end_stream=empty)
        up.sent = empty
        try:
            # The head goes with the other streams' frames in the flusher's next write (the
            # body's first frames too, queued by its sender before the flusher runs); a failed
            # write closes the connection, which fails this stream (up.error).
            self.queue()
            if not empty:
                assert self.nursery is not None  # noqa: S101 - set by run() before any exchange
                self.nursery.start_soon(self._send_body, up, body)
            with trio.move_on_at(deadline):
                while up.head is None and up.error is None:
                    up.readable = trio.Event()
                    await up.readable.wait()
        except BaseException:  # cancelled (the client went away, the caller's deadline) or broken
            self._reset(up)
            raise
        if up.error is not None:
            self._reset(up)
            raise up.error
        if up.head is None:
            self._reset(up)
            raise TimeoutError
        return up

    async def exchange(self, request: Request, deadline: float, finish: Any) -> Response:
        """Send ``request`` on a new stream; return the response with its body streaming."""
        up = await self._open(request, deadline)
        sid = up.id
        assert up.head is not None  # noqa: S101 - _open returns once it came
        status = 200
        out: list[tuple[bytes, bytes]] = []
        for name, value in up.head:
            if name == b":status":
                status = int(value)
            elif name[:1] != b":":
                out.append((name, value))
        length = next((int(v) for n, v in out if n == b"content-length" and v.isdigit()), None)
        response_body: Body

        async def read() -> bytes:
            try:
                return await read_chunk()
            except (TimeoutError, StreamRefused, ConnectionResetError) as err:
                flag, msg = upstream_error(err, self.host.label)
                if flag is ResponseFlag.UPSTREAM_REQUEST_TIMEOUT:
                    self.host.cluster.stats_rq_timeout.value += 1
                raise UpstreamError(flag, msg) from err

        async def read_chunk() -> bytes:
            while not up.chunks:
                if up.error is not None:
                    finish()
                    raise up.error
                if up.ended:
                    response_body.trailers = up.trailers
                    self._done(up)
                    finish()
                    return b""
                up.readable = trio.Event()
                with trio.move_on_at(deadline):
                    await up.readable.wait()
                if not up.readable.is_set() and trio.current_time() >= deadline:
                    self._reset(up)
                    finish()
                    raise TimeoutError
            data, flow = up.chunks.popleft()
            if flow:
                # Give the window back without awaiting here: a read cancelled between taking
                # the chunk and returning it would lose the chunk. The flusher sends the update
                # (h2 makes one only once half a window is consumed).
                self.h2.acknowledge_received_data(flow, sid)
                self.queue()
            return data

        def close() -> None:
            self._reset(up)
            finish()

        response_body = Body(read, length=0 if up.ended and not up.chunks else length, close=close)
        if up.ended and not up.chunks:
            response_body.trailers = up.trailers
            response_body.done = True
            self._done(up)
            finish()
        return Response(status, headers=Headers.from_raw(out), body=response_body)

    def _done(self, up: _UpStream) -> None:
        """The response has ended: forget the stream; if the request has not, stop sending it."""
        if up.sent:
            self.streams.pop(up.id, None)
        else:
            self._reset(up)

    def _reset(self, up: _UpStream) -> None:
        """Give up on a stream: stop sending its body, RST_STREAM (CANCEL) if it is still open.

        What it had buffered and nobody will read is given back to the connection's window
        (h2 does so itself for DATA that arrives after the reset).
        """
        up.sender.cancel()
        if self.closed:
            return
        while up.chunks:
            _, flow = up.chunks.popleft()
            if flow:
                self.h2.acknowledge_received_data(flow, up.id)
        self.queue()
        if self.streams.pop(up.id, None) is not None:
            try:
                self.h2.reset_stream(up.id, ErrorCodes.CANCEL)
            except h2.exceptions.ProtocolError:
                return
            self.queue()

    async def _send_body(self, up: _UpStream, body: Body) -> None:
        """Send the request body (a task of its own: see the module docstring).

        If the client breaks off its body or the stream breaks, the stream is reset and the
        error is left for whoever reads the response.
        """
        with up.sender:
            try:
                async for chunk in body:
                    # Queued for the flusher (with the head, for a body that is all there),
                    # written at once only past QUEUED_LIMIT.
                    sent = await send_flow_controlled(
                        self.h2,
                        up,
                        chunk,
                        self.send_soon,
                        abandoned=lambda: up.error is not None,
                        # An upstream that stops reading the request body: given up on after
                        # the cluster's idle timeout without progress.
                        idle_timeout=float(self.host.cluster.config.idle_timeout) or math.inf,
                    )
                    if not sent:
                        return
                if body.trailers is not None:
                    self.h2.send_headers(
                        up.id, fields_to_send(body.trailers.raw, trailers=True), end_stream=True
                    )
                else:
                    self.h2.end_stream(up.id)
                up.sent = True
                await self.send_soon()
            except (h2.exceptions.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError) as err:
                # The stream or the connection is gone (reset, closed).
                self._fail(up, ConnectionResetError(f"sending the request body failed: {err!r}"))
            except trio.TooSlowError:
                self._fail(up, ConnectionResetError("the upstream stopped reading the request body"))
            except ProtocolError as err:  # the client broke off its body
                self._fail(up, err)

    def _fail(self, up: _UpStream, error: BaseException) -> None:
        """Sending the request failed: reset the stream, leave the error to the response's reader."""
        if up.ended or up.sender.cancel_called:
            # The response is complete (the upstream may reset the stream after it, with
            # NO_ERROR), or the stream was given up on: the failure is no one's concern.
            return
        if up.error is None:
            up.error = error
        up.readable.set()
        self._reset(up)


class H2Pool:
    """The HTTP/2 connections of one endpoint."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.connections: list[H2Connection] = []
        self.connecting = 0
        self.connect_failures = 0
        self.connect_error: UpstreamError | None = None

    def discard(self, conn: H2Connection) -> None:
        """Forget a closed or refused connection."""
        if conn in self.connections:
            self.connections.remove(conn)
            self.host.cluster.stats_cx_active.value -= 1
            self.host.cluster.breakers.connection_closed()
            self.host.wake_waiters()

    async def acquire(self, nursery: trio.Nursery) -> H2Connection:
        """A connection with room for one more stream, opening one if needed."""
        while True:
            for conn in self.connections:
                if conn.capacity > 0:
                    if conn is not self.connections[0] or len(conn.streams):
                        self.host.cluster.stats_cx_reused.value += 1
                    return conn
            if self.connecting:
                # One connection opened at a time: a burst of requests waits for it and shares
                # it (it has room for many streams) instead of each opening its own. If it
                # cannot be opened, they fail with it, rather than try again one by one.
                failures = self.connect_failures
                await self.host.wait_for_room()
                if self.connect_failures != failures and self.connect_error is not None:
                    raise UpstreamError(self.connect_error.flag, str(self.connect_error))
                continue
            if self.host.may_connect(len(self.connections)):
                self.connecting += 1
                breakers = self.host.cluster.breakers
                breakers.connection_opened()
                try:
                    stream = await self.host.connect()
                    conn = H2Connection(stream, self.host)
                    await nursery.start(conn.run)
                except BaseException as err:
                    breakers.connection_closed()
                    if isinstance(err, UpstreamError):
                        self.connect_failures += 1
                        self.connect_error = err
                    raise
                finally:
                    self.connecting -= 1
                    self.host.wake_waiters()  # those waiting for it look again
                self.connections.append(conn)
                self.host.cluster.stats_cx_active.value += 1
                return conn
            await self.host.wait_for_room()

    def close(self) -> None:
        """Close every connection (the endpoint left, or the proxy stops)."""
        for conn in list(self.connections):
            conn.close(ConnectionResetError("endpoint removed"))


def upstream_error(err: BaseException, label: str) -> tuple[ResponseFlag, str]:
    """The response flag and message for an HTTP/2 upstream failure."""
    if isinstance(err, TimeoutError):
        return ResponseFlag.UPSTREAM_REQUEST_TIMEOUT, "upstream request timeout"
    if isinstance(err, StreamRefused):
        return ResponseFlag.UPSTREAM_CONNECTION_TERMINATION, f"upstream {label} refused the stream: {err}"
    return ResponseFlag.UPSTREAM_RESET, f"upstream {label} reset the stream: {err}"


__all__ += ["upstream_error"]
