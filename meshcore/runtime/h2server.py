"""Downstream HTTP/2: one h2 connection, a task per stream, the same filter chains as HTTP/1.1.

Flow control honours both peers: a request body is acknowledged to the client only as the
chain reads it (so the proxy buffers at most the window it advertised), and a response is
sent no faster than the client's windows allow, each stream waiting on its own window, so
a stream whose reader never reads does not hold back the others. Abuse (rapid reset,
SETTINGS and PING floods, CONTINUATION floods, oversized header lists) ends the
connection with GOAWAY and a fitting error code.
"""

from __future__ import annotations

import contextlib
import math
import struct
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

from meshcore.errors import ProtocolError
from meshcore.flags import ResponseFlag
from meshcore.http.h2fields import response_fields
from meshcore.http.h2flow import send_flow_controlled
from meshcore.http.h2guard import TINY_WINDOW_UPDATE, Abuse, H2Budgets
from meshcore.http.h2quiet import SILENT, silence_hpack
from meshcore.http.messages import Body, Headers, Request, Response, StreamInfo
from meshcore.http.semantics import strip_hop_by_hop

if TYPE_CHECKING:
    from meshcore.connection import Connection
    from meshcore.runtime.http_manager import HttpConnectionManager

__all__ = ["PREFACE", "GracefulGoaway", "H2ServerSession"]

log = structlog.get_logger("meshcore.http2")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
RECEIVE_SIZE = 64 * 1024
# The longest one send to the client may block (sends are not cancelled midway: see flush).
SEND_TIMEOUT = 10.0
# A GOAWAY frame's header: 8 bytes of payload, type 0x7, no flags, stream 0 (RFC 9113 6.8).
_GOAWAY_HEAD = b"\x00\x00\x08\x07\x00\x00\x00\x00\x00"


_HEAD = 9  # the size of a frame header
_GOAWAY = 0x7  # the frame type
_CONTINUATION = 0x9
_GOAWAY_MIN = _HEAD + 8  # last stream id and error code


class GracefulGoaway:
    """Takes the graceful GOAWAY frames (NO_ERROR) out of the bytes a peer sends.

    h2 takes any GOAWAY it reads for the end of the connection and refuses every frame
    after it, both ways: the streams a peer going away still finishes - an upstream
    draining answers those up to the frame's last stream id, a client closing gracefully
    waits for its answers - would be lost. So h2 never sees a graceful GOAWAY; its last
    stream id is handed over instead. A GOAWAY with an error code goes to h2 as it came.
    Sans-IO, for both sides: ``skip`` is how many bytes come before the first frame (the
    client's connection preface, on the server side).
    """

    __slots__ = ("buffer", "empty_continuations", "largest", "passing")

    def __init__(self, skip: int = 0, max_frame_size: int = 16384) -> None:
        self.empty_continuations = 0  # seen since the last take_empty_continuations()
        self.buffer = b""  # the start of a frame header, or of a GOAWAY frame
        self.passing = skip  # bytes of the current frame (not a GOAWAY) still to come
        self.largest = _HEAD + max_frame_size  # h2 refuses a larger frame: not kept here

    def take_empty_continuations(self) -> int:
        """How many empty CONTINUATION frames went by since the last call (frames that carry nothing)."""
        count, self.empty_continuations = self.empty_continuations, 0
        return count

    def feed(self, data: bytes) -> tuple[bytes, list[int]]:
        """The bytes for h2, and the last stream ids of the graceful GOAWAYs taken out."""
        if self.buffer:
            data, self.buffer = self.buffer + data, b""
        lasts: list[int] = []
        kept: list[bytes] = []
        kept_from = 0
        i = min(self.passing, len(data))
        self.passing -= i
        while i < len(data):
            if len(data) - i < _HEAD:
                break
            end = i + _HEAD + int.from_bytes(data[i : i + 3], "big")
            if data[i + 3] == _CONTINUATION and end - i == _HEAD:
                self.empty_continuations += 1  # h2 does not report them: counted here
            if data[i + 3] != _GOAWAY or end - i > self.largest:
                # Not a GOAWAY (or one h2 will refuse for its size): on to h2, whole or in part.
                self.passing = max(0, end - len(data))
                i = min(end, len(data))
                continue
            if end > len(data):
                break
            code = int.from_bytes(data[i + 13 : i + 17], "big")
            if end - i >= _GOAWAY_MIN and code == ErrorCodes.NO_ERROR:
                lasts.append(int.from_bytes(data[i + 9 : i + 13], "big") & 0x7FFFFFFF)
                kept.append(data[kept_from:i])
                kept_from = end
            i = end
        self.buffer = data[i:]
        if not kept_from:
            return data[:i] if self.buffer else data, lasts
        kept.append(data[kept_from:i])
        return b"".join(kept), lasts


class _Stream:
    """One request stream: its inbound body buffer and the events its tasks wait on."""

    __slots__ = ("chunks", "done", "ended", "id", "readable", "request", "scope", "trailers", "window")

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.chunks: deque[tuple[bytes, int]] = deque()
        self.ended = False
        self.done = False
        self.trailers: Headers | None = None
        self.readable = trio.Event()
        self.window = trio.Event()
        self.scope = trio.CancelScope()
        self.request: Request | None = None


class H2ServerSession:
    """One downstream HTTP/2 connection."""

    def __init__(self, hcm: HttpConnectionManager, conn: Connection, initial: bytes = b"") -> None:
        self.hcm = hcm
        self.conn = conn
        self.stream = conn.stream
        self.initial = initial
        settings = hcm.http2
        silence_hpack()
        # Outbound fields are normalized and checked by response_fields, in one pass (h2's
        # nine generators cost about 100 Python calls per response).
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=True,
            normalize_outbound_headers=False,
            validate_outbound_headers=False,
            logger=SILENT,
        )
        self.h2 = h2.connection.H2Connection(config=config)
        self.max_streams: int = settings.max_concurrent_streams
        self.h2.local_settings = self._settings(self.max_streams)
        # Settings replaced wholesale are never "acknowledged" in h2's eyes, and h2 applies
        # these two limits only on an acknowledgement: apply them here, or h2 keeps its
        # defaults (frames over 16 KiB refused whatever we advertised, header lists up to
        # 64 KiB accepted whatever the configured limit).
        self.h2.max_inbound_frame_size = settings.max_frame_size
        self.h2.decoder.max_header_list_size = settings.max_header_list_size
        self.connection_window = settings.initial_connection_window_size
        self.streams: dict[int, _Stream] = {}
        self.send_lock = trio.Lock()
        self.closing = False
        self.budgets = H2Budgets(settings)
        self.stream_idle_timeout: float = hcm.stream_idle_timeout
        self.nursery: trio.Nursery | None = None
        self.last_stream_id = 0
        self.flush_soon = trio.Event()
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
                self.flush_soon.set()
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
            self.goaway_frame = _GOAWAY_HEAD + struct.pack(">LL", self.last_stream_id, ErrorCodes.NO_ERROR)

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
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.trailers = Headers.from_raw(list(event.headers))

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
        stream = _Stream(stream_id)
        try:
            request = self._make_request(stream, event)
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
        self.nursery.start_soon(self._serve_stream, stream)

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

    def _make_request(self, stream: _Stream, event: h2.events.RequestReceived) -> Request:
        method = path = authority = b""
        scheme = b"https" if self.hcm.scheme == "https" else b"http"
        headers: list[tuple[bytes, bytes]] = []
        for name, value in event.headers:
            if name[0:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
                elif name == b":scheme":
                    scheme = value
            elif name == b"host":
                authority = authority or value
            else:
                headers.append((name, value))
        if not method or (not path and method != b"CONNECT"):
            msg = "missing :method or :path"
            raise ProtocolError(msg, status=400)
        if len(headers) > self.hcm.max_headers:
            msg = f"more than {self.hcm.max_headers} request headers"
            raise ProtocolError(msg, status=431)
        length = None
        for name, value in headers:
            if name == b"content-length" and value.isdigit():
                length = int(value)
        body = (
            Body.empty() if event.stream_ended is not None else Body(self._body_reader(stream), length=length)
        )
        body.limit = self.hcm.max_body  # a declared length over it gets 413 in dispatch
        return Request(
            method.decode("ascii"),
            path.decode("latin-1"),
            authority=authority.decode("latin-1"),
            scheme=scheme.decode("ascii"),
            headers=Headers.from_raw(headers),
            body=body,
            http_version="2",
            info=StreamInfo(downstream_address=self.conn.peer, connection_id=self.conn.id),
            connection=self.conn,
        )

    def _body_reader(self, stream: _Stream) -> Any:
        async def read() -> bytes:
            # A loop, not a recursion per empty chunk: thousands of empty DATA frames ended in
            # a RecursionError here (and a 500 without END_STREAM).
            while True:
                while not stream.chunks:
                    if stream.ended:
                        if stream.request is not None and stream.trailers is not None:
                            stream.request.body.trailers = stream.trailers
                        return b""
                    stream.readable = trio.Event()
                    await stream.readable.wait()
                data, flow = stream.chunks.popleft()
                if flow:
                    # Consumed: give the window back, so the client may send more. No await
                    # between taking the chunk and returning it: a cancelled read must never
                    # lose data.
                    self.h2.acknowledge_received_data(flow, stream.id)
                    self.flush_soon.set()
                if data:
                    return data

        return read

    # -- one stream -----------------------------------------------------------------------------

    async def _serve_stream(self, stream: _Stream) -> None:
        request = stream.request
        assert request is not None  # noqa: S101 - set before the task starts
        hcm = self.hcm
        response: Response | None = None
        completed = False
        try:
            with stream.scope:
                response = await hcm.dispatch(request)
                completed = await self._send_response(stream, response)
        finally:
            # Also when the client reset the stream, or the connection went, before the end of
            # the response: the request is still counted done and logged, as DC (status 0 if
            # no response was ready: none was sent).
            stream.done = True
            self.streams.pop(stream.id, None)
            self._release(stream, completed=completed)
            if response is None or (not completed and stream.scope.cancel_called):
                request.info.flags.add(ResponseFlag.DOWNSTREAM_CONNECTION_TERMINATION)
            if response is None:
                response = Response(0)
            elif not completed:
                response.body.close()
            hcm.record(request, response)
            if self.closing and not self.streams and self.nursery is not None:
                # Last stream after GOAWAY: nothing more to serve.
                self.nursery.cancel_scope.cancel()

    def _release(self, stream: _Stream, *, completed: bool) -> None:
        """A stream is done: give back the flow-control credit of request body nobody read.

        A reply sent before the body was read (a local reply: fault, rate limit, no route)
        leaves chunks behind, and the client's connection window would shrink by them for
        good. If the client is still sending, it is told to stop: RST_STREAM with NO_ERROR
        after a complete response (RFC 9113 section 8.1).
        """
        for _, flow in stream.chunks:
            if flow:
                self.h2.acknowledge_received_data(flow, stream.id)
        stream.chunks.clear()
        if completed and not stream.ended:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.reset_stream(stream.id, ErrorCodes.NO_ERROR)
        self.flush_soon.set()

    async def _send_response(self, stream: _Stream, response: Response) -> bool:
        # Connection-specific fields must not cross into HTTP/2 (RFC 9113 section 8.2.2).
        headers = [(b":status", str(response.status).encode()), *strip_hop_by_hop(response.headers.raw)]
        request = stream.request
        if request is not None and request.info.flags:
            headers.append((b"x-meshcore-flags", request.info.flag_string().encode()))
        body = response.body
        no_body = (request is not None and request.method == "HEAD") or response.status in (204, 304)
        try:
            headers = response_fields(headers)
            if no_body or body.length == 0 or body.done:
                await self._send_head_only(stream, headers, body)
                return True
            self.h2.send_headers(stream.id, headers)
            # A body of known length is about to follow: send the head with it, in one write.
            # A streamed body (length unknown: SSE, gRPC streams) gets its head at once.
            known_length = body.length is not None
            if not known_length:
                await self.flush()
            while True:
                try:
                    chunk = await body.read()
                except Exception as err:  # noqa: BLE001 - upstream reset or timeout mid-response
                    flag = getattr(err, "flag", None)
                    if flag is not None and stream.request is not None:
                        stream.request.info.flags.add(flag)
                    log.warning(
                        "response_aborted",
                        listener=self.hcm.listener,
                        stream=stream.id,
                        flags=getattr(flag, "value", "-"),
                        reason=str(err) or type(err).__name__,
                    )
                    self.h2.reset_stream(stream.id, ErrorCodes.INTERNAL_ERROR)
                    await self.flush()
                    return False
                if not chunk:
                    break
                more_to_come = not known_length or body.consumed < (body.length or 0)
                await self._send_data(stream, chunk, flush=more_to_come)
            if body.trailers is not None:
                self.h2.send_headers(
                    stream.id, response_fields(body.trailers.raw, trailers=True), end_stream=True
                )
            else:
                self.h2.end_stream(stream.id)
            self.flush_soon.set()  # with the other streams' frames, in one write
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return False  # the client reset the stream meanwhile
        except trio.TooSlowError:
            # The client's window stayed shut: reset, never ended as if complete (the caller
            # closes the body, which frees the upstream side).
            if request is not None:
                request.info.flags.add(ResponseFlag.STREAM_IDLE_TIMEOUT)
            log.warning("stream_idle_timeout", listener=self.hcm.listener, stream=stream.id)
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.reset_stream(stream.id, ErrorCodes.CANCEL)
            await self.flush()
            return False
        return True

    async def _send_head_only(self, stream: _Stream, headers: list[tuple[bytes, bytes]], body: Body) -> None:
        """A response with nothing after its head (and trailers, if any).

        A reply to HEAD, a 204 or a 304 has no content on the wire (RFC 9110 9.3.2, 15.3.5,
        15.4.5), even when a route or filter gave it a body. The body is read to its end all
        the same: that is what finishes an upstream exchange and gives its connection back.
        """
        try:
            while await body.read():
                pass
        except Exception:  # noqa: BLE001 - the upstream failed after its head: nothing to send anyway
            body.close()
        trailers = body.trailers
        self.h2.send_headers(stream.id, headers, end_stream=trailers is None)
        if trailers is not None:
            self.h2.send_headers(stream.id, response_fields(trailers.raw, trailers=True), end_stream=True)
        self.flush_soon.set()  # with the other streams' frames, in one write

    async def _send_data(self, stream: _Stream, data: bytes, *, flush: bool = True) -> None:
        """Send body bytes within the client's windows.

        ``flush=False`` leaves a frame that fits queued, to go out with the end of the stream
        in the same write.
        """
        conn = self.h2
        if not flush and len(data) <= min(
            conn.local_flow_control_window(stream.id), conn.max_outbound_frame_size
        ):
            conn.send_data(stream.id, data)
            return
        await send_flow_controlled(conn, stream, data, self.flush, idle_timeout=self.stream_idle_timeout)
