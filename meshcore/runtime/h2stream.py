"""Serving one downstream HTTP/2 stream.

Its request is built from h2's event, its body read as the chain asks (the window given
back as it is consumed), its response sent within the client's windows.

The connection (h2 state, the read loop, flushing, limits and abuse budgets) is
meshcore.runtime.h2server's H2ServerSession; these functions take it as ``session``.
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import TYPE_CHECKING, Any

import h2.events
import h2.exceptions
import structlog
import trio
from h2.errors import ErrorCodes

from meshcore.errors import ProtocolError
from meshcore.flags import ResponseFlag
from meshcore.http.h2fields import fields_to_send
from meshcore.http.h2flow import send_flow_controlled
from meshcore.http.messages import Body, Headers, Request, Response, StreamInfo
from meshcore.http.semantics import strip_hop_by_hop

if TYPE_CHECKING:
    from meshcore.runtime.h2server import H2ServerSession

__all__ = ["H2Stream", "make_request", "serve_stream"]

log = structlog.get_logger("meshcore.http2")


class H2Stream:
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


def make_request(
    session: H2ServerSession,
    stream: H2Stream,
    event: h2.events.RequestReceived,
    fields: list[tuple[bytes, bytes]],
) -> Request:
    """The Request of a stream's HEADERS; ProtocolError (stream reset) if it cannot be served."""
    method = path = authority = b""
    scheme = b"https" if session.hcm.scheme == "https" else b"http"
    headers: list[tuple[bytes, bytes]] = []
    for name, value in fields:
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
    if len(headers) > session.hcm.max_headers:
        msg = f"more than {session.hcm.max_headers} request headers"
        raise ProtocolError(msg, status=431)
    length = None
    for name, value in headers:
        if name == b"content-length" and value.isdigit():
            length = int(value)
    body = (
        Body.empty()
        if event.stream_ended is not None
        else Body(body_reader(session, stream), length=length, ready=body_ready(stream))
    )
    body.limit = session.hcm.max_body  # a declared length over it gets 413 in dispatch
    return Request(
        method.decode("ascii"),
        path.decode("latin-1"),
        authority=authority.decode("latin-1"),
        scheme=scheme.decode("ascii"),
        headers=Headers.from_raw(headers),
        body=body,
        http_version="2",
        info=StreamInfo(downstream_address=session.conn.peer, connection_id=session.conn.id),
        connection=session.conn,
    )


def body_ready(stream: H2Stream) -> Any:
    """Whether the stream's body reader returns at once: data buffered, or the end came."""

    def ready() -> bool:
        return stream.ended or any(data for data, _ in stream.chunks)

    return ready


def body_reader(session: H2ServerSession, stream: H2Stream) -> Any:
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
                session.h2.acknowledge_received_data(flow, stream.id)
                session.flush_soon.set()
            if data:
                return data

    return read


async def serve_stream(session: H2ServerSession, stream: H2Stream) -> None:
    """A stream's task: the chain's response sent; the request counted and logged however it ends."""
    request = stream.request
    assert request is not None  # noqa: S101 - set before the task starts
    hcm = session.hcm
    response: Response | None = None
    completed = False
    try:
        with stream.scope:
            response = await hcm.dispatch(request)
            completed = await send_response(session, stream, response)
    finally:
        # Also when the client reset the stream, or the connection went, before the end of
        # the response: the request is still counted done and logged, as DC (status 0 if
        # no response was ready: none was sent).
        stream.done = True
        session.streams.pop(stream.id, None)
        release(session, stream, completed=completed)
        if response is None or (not completed and stream.scope.cancel_called):
            request.info.flags.add(ResponseFlag.DOWNSTREAM_CONNECTION_TERMINATION)
        if response is None:
            response = Response(0)
        elif not completed:
            response.body.close()
        hcm.record(request, response)
        if session.closing and not session.streams and session.nursery is not None:
            # Last stream after GOAWAY: nothing more to serve.
            session.nursery.cancel_scope.cancel()


def release(session: H2ServerSession, stream: H2Stream, *, completed: bool) -> None:
    """A stream is done: give back the flow-control credit of request body nobody read.

    A reply sent before the body was read (a local reply: fault, rate limit, no route)
    leaves chunks behind, and the client's connection window would shrink by them for
    good. If the client is still sending, it is told to stop: RST_STREAM with NO_ERROR
    after a complete response (RFC 9113 section 8.1).
    """
    for _, flow in stream.chunks:
        if flow:
            session.h2.acknowledge_received_data(flow, stream.id)
    stream.chunks.clear()
    if completed and not stream.ended:
        with contextlib.suppress(h2.exceptions.ProtocolError):
            session.h2.reset_stream(stream.id, ErrorCodes.NO_ERROR)
    session.flush_soon.set()


async def send_response(session: H2ServerSession, stream: H2Stream, response: Response) -> bool:
    # Connection-specific fields must not cross into HTTP/2 (RFC 9113 section 8.2.2).
    headers = [(b":status", str(response.status).encode()), *strip_hop_by_hop(response.headers.raw)]
    request = stream.request
    if request is not None and request.info.flags:
        headers.append((b"x-meshcore-flags", request.info.flag_string().encode()))
    body = response.body
    no_body = (request is not None and request.method == "HEAD") or response.status in (204, 304)
    try:
        headers = fields_to_send(headers)
        if no_body or body.length == 0 or body.done:
            await send_head_only(session, stream, headers, body)
            return True
        session.h2.send_headers(stream.id, headers)
        if not await send_body(session, stream, body):
            return False
        await session.send_soon()  # with the other streams' frames, in one write
    except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
        return False  # the client reset the stream meanwhile
    except trio.TooSlowError:
        # The client's window stayed shut: reset, never ended as if complete (the caller
        # closes the body, which frees the upstream side).
        if request is not None:
            request.info.flags.add(ResponseFlag.STREAM_IDLE_TIMEOUT)
        log.warning("stream_idle_timeout", listener=session.hcm.listener, stream=stream.id)
        with contextlib.suppress(h2.exceptions.ProtocolError):
            session.h2.reset_stream(stream.id, ErrorCodes.CANCEL)
        await session.flush()
        return False
    return True


async def send_body(session: H2ServerSession, stream: H2Stream, body: Body) -> bool:
    """A response's body and end (trailers, or END_STREAM) after its head; False if it failed midway."""
    # A body of known length is about to follow: send the head with it, in one write.
    # A streamed body (length unknown: SSE, gRPC) has its head and each chunk queued for
    # the flusher's next write, which goes out as soon as this task waits: a gRPC
    # answer that is all there (head, message, trailers) takes one write, a stream that
    # trickles gets each part at once.
    known_length = body.length is not None
    if not known_length:
        await session.send_soon()
    last = b""  # the chunk that completed a body of known length: it goes with END_STREAM
    while True:
        try:
            chunk = await body.read()
        except Exception as err:  # noqa: BLE001 - upstream reset or timeout mid-response
            flag = getattr(err, "flag", None)
            if flag is not None and stream.request is not None:
                stream.request.info.flags.add(flag)
            log.warning(
                "response_aborted",
                listener=session.hcm.listener,
                stream=stream.id,
                flags=getattr(flag, "value", "-"),
                reason=str(err) or type(err).__name__,
            )
            session.h2.reset_stream(stream.id, ErrorCodes.INTERNAL_ERROR)
            await session.flush()
            return False
        if not chunk:
            break
        if last:  # more than the declared length: sent as it comes (the client judges)
            await send_data(session, stream, last, flush=False)
            last = b""
        if known_length and body.consumed >= (body.length or 0):
            # Held until the body reports its end (and trailers, if any): then it ends the
            # stream itself, one DATA frame fewer than an empty one after it.
            last = chunk
            continue
        await send_chunk(session, stream, body, chunk)
    if body.trailers is not None:
        if last:
            await send_data(session, stream, last, flush=False)
        session.h2.send_headers(stream.id, fields_to_send(body.trailers.raw, trailers=True), end_stream=True)
    elif last:
        await send_data(session, stream, last, flush=False, end_stream=True)
    else:
        session.h2.end_stream(stream.id)
    return True


async def send_head_only(
    session: H2ServerSession, stream: H2Stream, headers: list[tuple[bytes, bytes]], body: Body
) -> None:
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
    session.h2.send_headers(stream.id, headers, end_stream=trailers is None)
    if trailers is not None:
        session.h2.send_headers(stream.id, fields_to_send(trailers.raw, trailers=True), end_stream=True)
    await session.send_soon()  # with the other streams' frames, in one write


async def send_chunk(session: H2ServerSession, stream: H2Stream, body: Body, chunk: bytes) -> None:
    """One chunk of a response body, but the last of a known length (the caller holds it).

    Of a known length, it is written at once (the last one goes with END_STREAM, see
    send_response). Of an unknown length (SSE, gRPC), each is queued for the flusher's
    next write (which send_soon bounds), so that what is all there goes in one.
    """
    if body.length is None:
        await send_data(session, stream, chunk, flush=False)
        await session.send_soon()
    else:
        await send_data(session, stream, chunk, flush=body.consumed < body.length)


async def send_data(
    session: H2ServerSession, stream: H2Stream, data: bytes, *, flush: bool = True, end_stream: bool = False
) -> None:
    """Send body bytes within the client's windows; ``end_stream``: they end the stream.

    ``flush=False`` leaves a frame that fits queued, to go out with the end of the stream
    in the same write.
    """
    conn = session.h2
    if not flush and len(data) <= min(
        conn.local_flow_control_window(stream.id), conn.max_outbound_frame_size
    ):
        conn.send_data(stream.id, data, end_stream=end_stream)
        return
    await send_flow_controlled(conn, stream, data, session.flush, idle_timeout=session.stream_idle_timeout)
    if end_stream:
        conn.end_stream(stream.id)
