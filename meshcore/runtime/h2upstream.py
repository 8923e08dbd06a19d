"""An upstream HTTP/2 connection: h2's state, a reader task, and one write for many frames.

The read loop feeds h2 and wakes the streams its events concern; whatever the streams and
the read loop queue (heads, bodies, window updates, resets, acknowledgements) goes out in
the flusher's next write, so that the frames of every stream runnable at one moment share
one send. The streams themselves (a request's exchange) are meshcore.runtime.h2request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
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
from hpack.hpack import encode_integer

from meshcore.http.h2fields import fields_received_or_goaway
from meshcore.http.h2frames import meshcore_connection
from meshcore.http.h2goaway import GracefulGoaway
from meshcore.http.h2hpack import CachingEncoder
from meshcore.http.messages import Headers, Request, Response
from meshcore.runtime.h2request import StreamRefused, UpStream, exchange

if TYPE_CHECKING:
    from meshcore.runtime.host import Host

__all__ = ["H2Connection", "RequestHeadEncoder"]

log = structlog.get_logger("meshcore.upstream.http2")

RECEIVE_SIZE = 64 * 1024
WINDOW = 1 << 20
# The longest a send may block: it is not cancelled midway (see H2Connection.flush).
SEND_TIMEOUT = 10.0
# Frames queued for the flusher's next write past which a sender writes them itself (and
# waits for the socket): what a connection holds unsent stays bounded.
QUEUED_LIMIT = 64 * 1024


class RequestHeadEncoder(CachingEncoder):
    """CachingEncoder for request heads that end with fields new with every request.

    Those (PER_REQUEST_FIELDS, put last and never indexed by h2request) leave the table as
    it is, so the block before them is the same bytes request after request: it comes from
    memory. They are appended as never-indexed literals with a literal name and no Huffman
    coding (RFC 7541 6.2.3): hpack would search both tables for the name and Huffman-code
    the value a byte at a time in Python, and the peer decode it so, for an id that is
    random anyway.
    """

    def encode(self, headers: Iterable[Any], huffman: bool = True) -> bytes:
        """A block that decodes to ``headers`` and leaves the tables as hpack's would."""
        if isinstance(headers, list):
            stable = len(headers)
            while stable and isinstance(headers[stable - 1], NeverIndexedHeaderTuple):
                stable -= 1
            if 0 < stable < len(headers):
                # The first part carries any pending table-size update, at the block's start.
                block = bytearray(super().encode(headers[:stable], huffman))
                for name, value in headers[stable:]:
                    block += _NEVER_INDEXED_NEW_NAME
                    block += encode_integer(len(name), 7)
                    block += name
                    block += encode_integer(len(value), 7)
                    block += value
                return bytes(block)
        return super().encode(headers, huffman)


_NEVER_INDEXED_NEW_NAME = b"\x10"  # 0001 0000: never indexed, name not from a table


class H2Connection:
    """One HTTP/2 connection to an upstream endpoint."""

    def __init__(self, stream: trio.abc.Stream, host: Host) -> None:
        self.stream = stream
        self.host = host
        # h2's connection with meshcore's field checks, frame layer and HPACK caches
        # (meshcore.http.h2frames.meshcore_connection; held to h2 on the client side too by
        # tests/test_h2frames.py; the lean head paths are the server's only): the same request
        # head encoded once per table state but for its per-request fields, the same response
        # head (and gRPC trailers) decoded once.
        self.h2 = meshcore_connection(client_side=True, encoder=RequestHeadEncoder())
        self.h2.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW}
        )
        self.streams: dict[int, UpStream] = {}
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

    async def write_now(self) -> None:
        """Write what is queued from the calling task rather than the flusher's.

        A task that has queued all it will for a while (a request's head and the body that
        came with it) saves waking the flusher. If a write is under way or the flusher is
        about to write, the frames go with that (streams of a busy connection share writes
        rather than queue up on the lock). A broken connection is closed, which fails its
        streams (the caller's among them).
        """
        if self.send_lock.locked() or self.flush_soon.is_set():
            self.queue()
            return
        try:
            await self.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.close(ConnectionResetError("upstream HTTP/2 connection broken"))

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

    def _response_received(self, event: h2.events.ResponseReceived) -> None:
        head = fields_received_or_goaway(self.h2, event.headers, response=True, trailers=False)
        if (up := self.streams.get(event.stream_id)) is not None:
            up.head = head
            up.readable.set()

    def _informational_received(self, event: h2.events.InformationalResponseReceived) -> None:
        # h2 checked these too; nothing else to do with them
        fields_received_or_goaway(self.h2, event.headers, response=True, trailers=False)

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
        trailers = fields_received_or_goaway(self.h2, event.headers, response=True, trailers=True)
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

    def _stream_reset(self, up: UpStream, code: int) -> None:
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

    def exchange(self, request: Request, deadline: float, finish: Callable[[], None]) -> Awaitable[Response]:
        """Send ``request`` on a new stream; the response, its body streaming (see h2request).

        A plain function handing back the exchange's coroutine: one frame less at each of
        its waits.
        """
        return exchange(self, request, deadline, finish)
