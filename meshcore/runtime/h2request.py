"""One request on an upstream HTTP/2 connection: its stream, from head to end.

The head is sent, the body by a task of its own in the connection's nursery while the
response comes in (full duplex: a bidirectional gRPC call answers each message before the
client sends the next), and the response handed back with its body read as the caller
asks. A stream given up on (timeout, the client went away, the response ended before the
request) is reset, and its sender stopped.

What a stream sends is queued for the connection's next write (see H2Connection.queue), so
that a request that is all there (a unary gRPC call: HEADERS, DATA, END_STREAM) takes one
write. The connection (h2's state, the read loop, writes) is
meshcore.runtime.h2upstream's H2Connection; these functions take it as ``conn``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import h2.exceptions
import trio
from h2.errors import ErrorCodes
from hpack import NeverIndexedHeaderTuple

from meshcore.errors import ProtocolError, UpstreamError
from meshcore.flags import ResponseFlag
from meshcore.http.h2fields import fields_to_send
from meshcore.http.h2flow import send_flow_controlled
from meshcore.http.messages import Body, Headers, Request, Response
from meshcore.http.semantics import strip_hop_by_hop

if TYPE_CHECKING:
    from meshcore.runtime.h2upstream import H2Connection

__all__ = ["PER_REQUEST_FIELDS", "StreamRefused", "UpStream", "exchange", "upstream_error"]

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


class UpStream:
    """One stream's state: the response as it comes in, the events its tasks wait on."""

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


async def open_stream(conn: H2Connection, request: Request, deadline: float) -> UpStream:
    """Send the request head, start sending its body, wait for the response head."""
    sid = conn.h2.get_next_available_stream_id()
    up = conn.streams[sid] = UpStream(sid)
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
        conn.streams.pop(sid, None)
        raise
    # Per-request fields last, never indexed: the rest is the same block request after request
    # (see RequestHeadEncoder). Fields of different names may come in any order (RFC 9110 5.3).
    stable = [f for f in headers if f[0] not in PER_REQUEST_FIELDS]
    if len(stable) != len(headers):
        headers = stable + [NeverIndexedHeaderTuple(*f) for f in headers if f[0] in PER_REQUEST_FIELDS]
    conn.h2.send_headers(sid, headers, end_stream=empty)
    up.sent = empty
    try:
        if not empty:
            # What of the body is here already goes with the head (all of a unary gRPC
            # call); only a body still to come gets a task of its own.
            rest = await send_at_hand(conn, up, body)
            if rest is not None:
                assert conn.nursery is not None  # noqa: S101 - set by run() before any exchange
                conn.nursery.start_soon(send_body, conn, up, body, rest)
        # Written now, with what other streams queued meanwhile (one writer at a time: those
        # that come while this write is under way share the next one).
        await conn.write_now()
        with trio.move_on_at(deadline):
            while up.head is None and up.error is None:
                up.readable = trio.Event()
                await up.readable.wait()
    except BaseException:  # cancelled (the client went away, the caller's deadline) or broken
        reset(conn, up)
        raise
    if up.error is not None:
        reset(conn, up)
        raise up.error
    if up.head is None:
        reset(conn, up)
        raise TimeoutError
    return up


async def exchange(
    conn: H2Connection, request: Request, deadline: float, finish: Callable[[], None]
) -> Response:
    """Send ``request`` on a new stream; return the response with its body streaming."""
    up = await open_stream(conn, request, deadline)
    sid = up.id
    assert up.head is not None  # noqa: S101 - open_stream returns once it came
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
            flag, msg = upstream_error(err, conn.host.label)
            if flag is ResponseFlag.UPSTREAM_REQUEST_TIMEOUT:
                conn.host.cluster.stats_rq_timeout.value += 1
            raise UpstreamError(flag, msg) from err

    async def read_chunk() -> bytes:
        while not up.chunks:
            if up.error is not None:
                finish()
                raise up.error
            if up.ended:
                response_body.trailers = up.trailers
                done(conn, up)
                finish()
                return b""
            up.readable = trio.Event()
            with trio.move_on_at(deadline):
                await up.readable.wait()
            if not up.readable.is_set() and trio.current_time() >= deadline:
                reset(conn, up)
                finish()
                raise TimeoutError
        data, flow = up.chunks.popleft()
        if flow:
            # Give the window back without awaiting here: a read cancelled between taking
            # the chunk and returning it would lose the chunk. The flusher sends the update
            # (h2 makes one only once half a window is consumed).
            conn.h2.acknowledge_received_data(flow, sid)
            conn.queue()
        return data

    def close() -> None:
        reset(conn, up)
        finish()

    response_body = Body(read, length=0 if up.ended and not up.chunks else length, close=close)
    if up.ended and not up.chunks:
        response_body.trailers = up.trailers
        response_body.done = True
        done(conn, up)
        finish()
    return Response(status, headers=Headers.from_raw(out), body=response_body)


def done(conn: H2Connection, up: UpStream) -> None:
    """The response has ended: forget the stream; if the request has not, stop sending it."""
    if up.sent:
        conn.streams.pop(up.id, None)
    else:
        reset(conn, up)


def reset(conn: H2Connection, up: UpStream) -> None:
    """Give up on a stream: stop sending its body, RST_STREAM (CANCEL) if it is still open.

    What it had buffered and nobody will read is given back to the connection's window
    (h2 does so itself for DATA that arrives after the reset).
    """
    up.sender.cancel()
    if conn.closed:
        return
    while up.chunks:
        _, flow = up.chunks.popleft()
        if flow:
            conn.h2.acknowledge_received_data(flow, up.id)
    conn.queue()
    if conn.streams.pop(up.id, None) is not None:
        try:
            conn.h2.reset_stream(up.id, ErrorCodes.CANCEL)
        except h2.exceptions.ProtocolError:
            return
        conn.queue()


async def send_at_hand(conn: H2Connection, up: UpStream, body: Body) -> bytes | None:
    """Queue what of the request body is already here; None if that was all of it.

    Otherwise what is left to send first: a chunk read that the windows cannot take whole
    now, or b"". If reading the body fails (the client broke it off, or it is too large),
    or the stream cannot take it, the stream is reset and the error left to the response's
    reader, as send_body does: None too.
    """
    h2conn = conn.h2
    pending = b""  # the last chunk read, held back to carry END_STREAM if it is the last
    try:
        while body.at_hand():
            chunk = await body.read()  # at once
            if not chunk:
                if pending and body.trailers is None:
                    h2conn.send_data(up.id, pending, end_stream=True)  # no empty DATA frame after it
                    up.sent = True
                    return None
                if pending:
                    h2conn.send_data(up.id, pending)
                end_request(conn, up, body)
                return None
            if pending:
                h2conn.send_data(up.id, pending)
                pending = b""
            if len(chunk) > min(h2conn.local_flow_control_window(up.id), h2conn.max_outbound_frame_size):
                return chunk
            pending = chunk
        if pending:
            h2conn.send_data(up.id, pending)
    except h2.exceptions.ProtocolError as err:  # the stream is gone (reset)
        fail(conn, up, ConnectionResetError(f"sending the request body failed: {err!r}"))
        return None
    except ProtocolError as err:  # the client broke off its body
        fail(conn, up, err)
        return None
    return b""


def end_request(conn: H2Connection, up: UpStream, body: Body) -> None:
    """Queue the end of the request: its trailers, or an empty DATA frame, with END_STREAM."""
    if body.trailers is not None:
        conn.h2.send_headers(up.id, fields_to_send(body.trailers.raw, trailers=True), end_stream=True)
    else:
        conn.h2.end_stream(up.id)
    up.sent = True


async def send_body(conn: H2Connection, up: UpStream, body: Body, first: bytes = b"") -> None:
    """Send the request body, from ``first`` on (a task of its own: see the module docstring).

    If the client breaks off its body or the stream breaks, the stream is reset and the
    error is left for whoever reads the response.
    """
    with up.sender:
        try:
            chunk = first or await body.read()
            while chunk:
                # Queued for the flusher, written at once only past QUEUED_LIMIT.
                sent = await send_flow_controlled(
                    conn.h2,
                    up,
                    chunk,
                    conn.send_soon,
                    abandoned=lambda: up.error is not None,
                    # An upstream that stops reading the request body: given up on after
                    # the cluster's idle timeout without progress.
                    idle_timeout=float(conn.host.cluster.config.idle_timeout) or math.inf,
                )
                if not sent:
                    return
                chunk = await body.read()
            end_request(conn, up, body)
            await conn.send_soon()
        except (h2.exceptions.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError) as err:
            # The stream or the connection is gone (reset, closed).
            fail(conn, up, ConnectionResetError(f"sending the request body failed: {err!r}"))
        except trio.TooSlowError:
            fail(conn, up, ConnectionResetError("the upstream stopped reading the request body"))
        except ProtocolError as err:  # the client broke off its body
            fail(conn, up, err)


def fail(conn: H2Connection, up: UpStream, error: BaseException) -> None:
    """Sending the request failed: reset the stream, leave the error to the response's reader."""
    if up.ended or up.sender.cancel_called:
        # The response is complete (the upstream may reset the stream after it, with
        # NO_ERROR), or the stream was given up on: the failure is no one's concern.
        return
    if up.error is None:
        up.error = error
    up.readable.set()
    reset(conn, up)


def upstream_error(err: BaseException, label: str) -> tuple[ResponseFlag, str]:
    """The response flag and message for an HTTP/2 upstream failure."""
    if isinstance(err, TimeoutError):
        return ResponseFlag.UPSTREAM_REQUEST_TIMEOUT, "upstream request timeout"
    if isinstance(err, StreamRefused):
        return ResponseFlag.UPSTREAM_CONNECTION_TERMINATION, f"upstream {label} refused the stream: {err}"
    return ResponseFlag.UPSTREAM_RESET, f"upstream {label} reset the stream: {err}"
