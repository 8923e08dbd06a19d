"""Downstream HTTP/2: one h2 connection, a task per stream, the same filter chains as HTTP/1.1.

This module is the connection (h2's state, the read loop, one write per loop iteration,
stream limits, GOAWAY, abuse budgets); serving one stream is meshcore.runtime.h2stream.

Flow control honours both peers: a request body is acknowledged to the client only as the
chain reads it (so the proxy buffers at most the window it advertised), and a response is
sent no faster than the client's windows allow, each stream waiting on its own window, so
a stream whose reader never reads does not hold back the others. Abuse (rapid reset,
SETTINGS and PING floods, CONTINUATION floods, oversized header lists) ends the
connection with GOAWAY and a fitting error code.
"""

from __future__ import annotations

import math
import struct
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

from meshcore.errors import ProtocolError
from meshcore.http.h2fields import fields_received_or_goaway
from meshcore.http.h2frames import meshcore_connection
from meshcore.http.h2goaway import GOAWAY_HEAD, GracefulGoaway
from meshcore.http.h2guard import TINY_WINDOW_UPDATE, Abuse, H2Budgets
from meshcore.http.h2hpack import CachingEncoder
from meshcore.http.messages import Headers
from meshcore.runtime.h2stream import H2Stream, make_request, serve_stream

if TYPE_CHECKING:
    from meshcore.connection import Connection
    from meshcore.runtime.http_manager import HttpConnectionManager

__all__ = ["PREFACE", "H2ServerSession"]

log = structlog.get_logger("meshcore.http2")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
RECEIVE_SIZE = 64 * 1024
# The longest one send to the client may block (sends are not cancelled midway: see flush).
SEND_TIMEOUT = 10.0


class H2ServerSession:
    """One downstream HTTP/2 connection."""

    def __init__(self, hcm: HttpConnectionManager, conn: Connection, initial: bytes = b"") -> None:
        self.hcm = hcm
        self.conn = conn
        self.stream = conn.stream
        self.initial = initial
        settings = hcm.http2
        # h2's connection with meshcore's field checks, frame layer and HPACK caches
        # (meshcore.http.h2frames.meshcore_connection): the same response head is encoded
        # once per table state, the same request head decoded once.
        self.h2 = meshcore_connection(client_side=False, encoder=CachingEncoder())
        self.max_streams: int = settings.max_concurrent_streams
        self.h2.local_settings = self._settings(self.max_streams)
        # Settings replaced wholesale are never "acknowledged" in h2's eyes, and h2 applies
        # these two limits only on an acknowledgement: apply them here, or h2 keeps its
        # defaults (frames over 16 KiB refused whatever we advertised, header lists up to
        # 64 KiB accepted whatever the configured limit).
        self.h2.max_inbound_frame_size = settings.max_frame_size
        self.h2.decoder.max_header_list_size = settings.max_header_list_size
        self.connection_window = settings.initial_connection_window_size
        self.streams: dict[int, H2Stream] = {}
        self.send_lock = trio.Lock()
        self.closing = False
        self.budgets = H2Budgets(settings)
        self.stream_idle_timeout: float = hcm.stream_idle_timeout
        self.nursery: trio.Nursery | None = None
        self.last_stream_id = 0
        self.flush_soon = trio.Event()
        self.queued_while_writing = 0  # send_soon() calls during the write under way
        self.broken = False
        self.goaway_frame = b""
        self.graceful = GracefulGoaway(skip=len(PREFACE), max_frame_size=settings.max_frame_size)

    def _settings(self, max_streams: int) -> h2.settings.Settings:
        settings = self.hcm.http2
        return h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: settings.initial_stream_window_size,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: settings.max_frame_size,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_list_size,
            },
        )

    # -- the connection -------------------------------------------------------------------------

    async def flush(self) -> None:
        """Send whatever h2 has queued (one writer at a time).

        If the client is gone, the whole session ends (its streams are cancelled); callers
        never see the error.
        """
        async with self.send_lock:
            self.queued_while_writing = 0
            # A graceful GOAWAY first: a GOAWAY h2 queued for an error (or abuse) comes after
            # it, and has the last word.
            data, self.goaway_frame = self.goaway_frame + self.h2.data_to_send(), b""
            if data and not self.broken:
                # Shielded: the caller may be a stream's task, cancelled when its client resets
                # it; frames taken from h2 and then not sent (or sent in part) would break the
                # whole connection (HPACK state, other streams' frames). Bounded instead.
                with trio.CancelScope(shield=True), trio.move_on_after(SEND_TIMEOUT) as scope:
                    try:
                        await self.stream.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        self.broken = True
                if scope.cancelled_caught:
                    self.broken = True
                if self.broken and self.nursery is not None:
                    self.nursery.cancel_scope.cancel()

    async def run(self) -> None:
        """Serve the connection until the client goes, GOAWAY, drain, or idleness."""
        self.h2.initiate_connection()
        # h2 enforces the stream limit it advertised by ending the whole connection (GOAWAY
        # PROTOCOL_ERROR), and no stream completes. RFC 9113 section 5.1.2 lets a server
        # refuse just the streams past it: _request_received does, so h2 gets no limit.
        self.h2.local_settings = self._settings(2**31 - 1)
        grow = self.connection_window - 65535
        if grow > 0:
            self.h2.increment_flow_control_window(grow)
        try:
            await self.flush()
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._flusher)
                self.hcm.h2_sessions.add(self)
                try:
                    writable = await self._read_loop(self.initial)
                finally:
                    self.hcm.h2_sessions.discard(self)
                self.closing = True
                if writable and self.streams:
                    # GOAWAY sent, streams in flight: let them finish (bounded), then stop.
                    nursery.cancel_scope.deadline = trio.current_time() + self.hcm.drain_timeout
                else:
                    nursery.cancel_scope.cancel()
            # What the last streams (or the read loop) queued after the flusher's last write.
            await self._final_flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _read_loop(self, data: bytes) -> bool:
        """Feed h2 until the connection is done; False when it can no longer be written to."""
        while True:
            if data:
                data, lasts = self.graceful.feed(data)
                if lasts:
                    self.closing = True  # the client goes away: its open streams still get answers
                try:
                    self.budgets.empty_frames(self.graceful.take_empty_continuations())
                    for event in self.h2.receive_data(data):
                        self._handle(event)
                except h2.exceptions.ProtocolError as err:
                    # h2 has queued a GOAWAY with the fitting code (COMPRESSION_ERROR for an
                    # oversized header list, PROTOCOL_ERROR for a CONTINUATION flood, ...).
                    log.warning("http2_protocol_error", peer=self.conn.peer, reason=str(err))
                    await self._final_flush()
                    return False
                except Abuse as abuse:
                    log.warning(
                        "http2_abuse_detected", peer=self.conn.peer, reason=str(abuse), code=abuse.code.name
                    )
                    # h2 has queued an answer to every frame of the batch (a SETTINGS ACK per
                    # SETTINGS, a PING ACK per PING): drop them, the flood gets GOAWAY alone.
                    self.h2.data_to_send()
                    self.h2.close_connection(error_code=abuse.code, last_stream_id=self.last_stream_id)
                    await self._final_flush()
                    return False
                await self.send_soon()
            if self.closing and not self.streams:
                return True
            idle = self.hcm.idle_timeout if not self.streams else math.inf
            with trio.move_on_after(idle) as scope:
                try:
                    data = bytes(await self.stream.receive_some(RECEIVE_SIZE))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return False
            if scope.cancelled_caught:
                self.goaway()
                await self._final_flush()
                return True
            if not data or self.broken:
                return False

    async def send_soon(self) -> None:
        """Frames were queued: they go with the others in the flusher's next write.

        While one write is under way, up to max_concurrent_streams more callers may queue
        and go on; past that (a client that reads slowly) each waits for the write and
        writes, as every stream did before the flusher: its task ends (and frees its place)
        and the read loop reads on only once what they queued is written, so what a
        connection holds stays bounded by its streams and their windows.
        """
        if self.send_lock.locked():
            self.queued_while_writing += 1
            if self.queued_while_writing > self.max_streams:
                await self.flush()
                return
        self.flush_soon.set()

    async def _final_flush(self) -> None:
        """Send the GOAWAY h2 queued, without waiting long for a client that does not read."""
        with trio.move_on_after(1):
            await self.flush()

    async def _flusher(self) -> None:
        """Send what was queued without waiting for the socket: one write per loop iteration.

        Responses, window updates and the answers to what the read loop fed h2 are queued
        and the flusher woken; it yields once more (every task runnable now queues its
        frames first), then sends them all in one write instead of one per stream.
        """
        while True:
            await self.flush_soon.wait()
            await trio.lowlevel.cancel_shielded_checkpoint()
            self.flush_soon = trio.Event()
            await self.flush()

    def goaway(self) -> None:
        """Graceful GOAWAY: no new streams; in-flight ones finish."""
        if not self.closing:
            self.closing = True
            # Not h2's close_connection(): h2 then takes the connection for closed and refuses
            # to send anything more, the responses of the streams in flight included. The
            # frame goes out with the next flush; streams opened after it are refused (see
            # _request_received).
            self.goaway_frame = GOAWAY_HEAD + struct.pack(">LL", self.last_stream_id, ErrorCodes.NO_ERROR)

    async def drain(self) -> None:
        """Send GOAWAY now (the listener drains); an idle session then ends at once.

        A busy one ends when its last stream does (see _serve_stream).
        """
        self.goaway()
        await self.flush()
        if not self.streams and self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    # -- events ---------------------------------------------------------------------------------

    def _handle(self, event: h2.events.Event) -> None:
        handler = self._EVENT_HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _data_received(self, event: h2.events.DataReceived) -> None:
        if not event.data and event.stream_ended is None:
            self.budgets.empty_frames()
        stream = self.streams.get(event.stream_id)
        if stream is None:
            # Data for a stream we no longer serve: still give its window back.
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            return
        stream.chunks.append((event.data, event.flow_controlled_length))
        stream.readable.set()

    def _stream_ended(self, event: h2.events.StreamEnded) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.ended = True
            stream.readable.set()

    def _trailers_received(self, event: h2.events.TrailersReceived) -> None:
        fields = fields_received_or_goaway(self.h2, event.headers, trailers=True)
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.trailers = Headers.from_raw(fields)

    def _window_updated(self, event: h2.events.WindowUpdated) -> None:
        if event.delta < TINY_WINDOW_UPDATE:
            self.budgets.empty_frames()
        if event.stream_id == 0:
            for stream in self.streams.values():
                stream.window.set()
        elif (one := self.streams.get(event.stream_id)) is not None:
            one.window.set()

    def _control_frame(self, event: h2.events.PingReceived | h2.events.RemoteSettingsChanged) -> None:
        self.budgets.control_frame()
        if (
            isinstance(event, h2.events.RemoteSettingsChanged)
            and h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings
        ):
            # Every stream's window changed, with no WINDOW_UPDATE (RFC 9113 6.9.2).
            for stream in self.streams.values():
                stream.window.set()

    def _connection_terminated(self, _event: h2.events.ConnectionTerminated) -> None:
        self.closing = True

    def _request_received(self, event: h2.events.RequestReceived) -> None:
        fields = fields_received_or_goaway(self.h2, event.headers, trailers=False)
        stream_id = event.stream_id
        self.last_stream_id = max(self.last_stream_id, stream_id)
        if self.closing:
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        if self._streams_open() >= self.max_streams:
            # Past the advertised limit: this stream is refused (the client may retry it), the
            # others go on. A client that keeps doing it spends the reset budget.
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            self.budgets.stream_refused()
            return
        stream = H2Stream(stream_id)
        try:
            request = make_request(self, stream, event, fields)
        except ProtocolError as err:
            log.warning("http2_request_rejected", peer=self.conn.peer, stream=stream_id, reason=str(err))
            self.h2.reset_stream(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return
        stream.request = request
        overload = self.hcm.overload
        if overload is not None and overload.keepalive_disabled:
            self.goaway()  # this stream is served; the client takes a new connection for more
        if event.stream_ended is not None:
            stream.ended = True
        self.streams[stream_id] = stream
        assert self.nursery is not None  # noqa: S101 - set by run()
        self.nursery.start_soon(serve_stream, self, stream)

    def _streams_open(self) -> int:
        """The streams being served that still count against the limit (RFC 9113 5.1.2).

        A stream whose last frame went out is closed, and the client may use its place at
        once, even though its task is still finishing (logs, stats); so h2's state decides.
        Fewer tasks than the limit need no look at h2 (the usual case, once per request).
        """
        if len(self.streams) < self.max_streams:
            return len(self.streams)
        states = self.h2.streams
        return sum(1 for sid in self.streams if (state := states.get(sid)) is not None and not state.closed)

    def _stream_reset(self, event: h2.events.StreamReset) -> None:
        stream = self.streams.pop(event.stream_id, None)
        if stream is None:
            return
        stream.scope.cancel()
        if stream.request is not None and event.remote_reset and not stream.done:
            self.budgets.stream_reset()

    def _priority_updated(self, event: h2.events.PriorityUpdated) -> None:
        if event.stream_id not in self.streams:  # not the priority of a request's HEADERS
            self.budgets.empty_frames()

    # What _handle does with each kind of event h2 reports (by exact type, as h2 reports
    # them); the others (acknowledgements, priority, unknown frames) need nothing.
    _EVENT_HANDLERS: ClassVar[dict[type[h2.events.Event], Callable[[H2ServerSession, Any], None]]] = {
        h2.events.RequestReceived: _request_received,
        h2.events.DataReceived: _data_received,
        h2.events.StreamEnded: _stream_ended,
        h2.events.TrailersReceived: _trailers_received,
        h2.events.StreamReset: _stream_reset,
        h2.events.WindowUpdated: _window_updated,
        h2.events.PriorityUpdated: _priority_updated,
        h2.events.PingReceived: _control_frame,
        h2.events.RemoteSettingsChanged: _control_frame,
        h2.events.ConnectionTerminated: _connection_terminated,
    }
