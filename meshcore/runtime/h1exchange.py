"""One HTTP/1.1 request/response over a pooled upstream connection, full duplex.

The request body is sent while the response is read (an upstream may answer, or echo,
before it has read everything); a kept-alive connection found closed before any byte of
the answer is retried once on a new one, if nothing of the body was consumed.

The deadline bounds every wait (for a pooled connection, for the socket to take the
request, for the answer), each in a cancel scope entered only when it has to wait: the
usual request finds an idle connection, sends in one go and finds its answer after one
schedule point, and enters none.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import trio

from meshcore.errors import ProtocolError, UpstreamError
from meshcore.flags import ResponseFlag
from meshcore.http.codec import (
    CLOSED,
    NEED_DATA,
    NOTHING_CHECKED,
    Data,
    EndOfMessage,
    Informational,
    ResponseHead,
)
from meshcore.http.h1fast import FastClientCodec
from meshcore.http.messages import Body, Headers, ParsedHeaders, Request, Response
from meshcore.http.semantics import strip_hop_by_hop

if TYPE_CHECKING:
    from meshcore.runtime.cluster import Cluster
    from meshcore.runtime.host import Host, UpstreamConnection

__all__ = ["H1Exchange"]

RECEIVE_SIZE = 64 * 1024
# How many times a request may go out: again only when the upstream cannot have processed
# it (a kept-alive connection found closed before a byte of the answer).
_H1_ATTEMPTS = 2


class _DeadlinePassed(Exception):  # noqa: N818 - internal: becomes UpstreamError(UT)
    """A wait of the exchange reached its deadline."""


class H1Exchange:
    """One request/response over a pooled HTTP/1.1 connection."""

    __slots__ = ("body", "cluster", "conn", "deadline", "done", "host", "request", "sending")

    def __init__(self, cluster: Cluster, host: Host, request: Request, deadline: float) -> None:
        self.cluster = cluster
        self.host = host
        self.request = request
        self.deadline = deadline
        self.conn: UpstreamConnection | None = None
        self.body: Body | None = None
        self.done = False
        self.sending = False  # the request body is still being sent (see _receive)

    def finish(self, *, reusable: bool = False) -> None:
        """Release the connection and the load figures, once."""
        if self.done:
            return
        self.done = True
        self.host.active_requests -= 1
        self.cluster.stats_rq_active.value -= 1
        if self.conn is not None:
            reusable = reusable and self.conn.codec.start_next_cycle()
            self.host.release(self.conn, reusable=reusable)
            self.conn = None

    def _timed_out(self) -> UpstreamError:
        self.cluster.stats_rq_timeout.value += 1
        return UpstreamError(ResponseFlag.UPSTREAM_REQUEST_TIMEOUT, "upstream request timeout")

    async def run(self) -> Response:
        """Send the request; return the response once its head has come, its body streaming."""
        # Whatever ends the exchange early (an error, a cancellation) releases its connection:
        # here rather than in the caller, which hands back this coroutine unawaited.
        try:
            request = self.request
            fields = strip_hop_by_hop(request.headers.raw)
            headers = [(b"host", request.authority.encode("latin-1")), *fields]
            # Pairs our own parser checked, still unchanged, go out unchecked (the host is ours to check).
            checked = NOTHING_CHECKED
            if type(request.headers) is ParsedHeaders:
                checked = range(1, 1 + request.headers.unchanged(fields))
            if request.body.length is None and not request.body.done:
                # A body of unknown length (the client sent it chunked): the downstream
                # transfer-encoding was hop-by-hop and is gone, so frame this hop as chunked.
                headers.append((b"transfer-encoding", b"chunked"))
            head: ResponseHead | None = None
            try:
                for attempt in range(1, _H1_ATTEMPTS + 1):
                    conn = self.host.take_idle()
                    reused = conn is not None
                    if conn is None:
                        conn, reused = await self._acquire()
                    self.conn = conn
                    try:
                        # The request in one send when the socket takes it, as it nearly always
                        # does: no coroutine, no cancel scope (see _send for the wait).
                        out = self._request_bytes(headers, checked)
                        sent = conn.io.try_send(out)
                        if sent < len(out):
                            await self._send(out, sent)
                        head = await self._read_head()
                        break
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as err:
                        # A kept-alive connection the upstream closed while idle: retry once on a
                        # fresh one, if nothing of the body was consumed (so nothing was lost).
                        self.host.release(self.conn, reusable=False)
                        self.conn = None
                        if attempt == _H1_ATTEMPTS or not reused or request.body.consumed:
                            msg = f"upstream {self.host.label} closed the connection: {err}"
                            raise UpstreamError(ResponseFlag.UPSTREAM_CONNECTION_TERMINATION, msg) from err
            except _DeadlinePassed:
                raise self._timed_out() from None
            if head is None:
                raise self._timed_out()  # noqa: TRY301 - the handler below only releases, and re-raises
            return self._response(head)
        except BaseException:
            self.finish()
            raise

    def _response(self, head: ResponseHead) -> Response:
        """The Response of ``head``, its body read from the connection as it is read."""
        headers_out = strip_hop_by_hop(head.headers)
        length = None
        for name, value in headers_out:
            if name == b"content-length" and value.isdigit():
                length = int(value)
        body = self.body = Body(self._read_body, length, self.finish)  # by position: see Response
        if self.request.method == "HEAD" or head.status in (204, 304):
            body.length = 0
        # The fast codec's parser checks every field as strictly as the writers do: the
        # downstream side need not check again those no filter changed.
        fast = self.conn is not None and type(self.conn.codec) is FastClientCodec
        headers = ParsedHeaders.parsed_from(headers_out) if fast else Headers.from_raw(headers_out)
        return Response(head.status, headers, body)

    async def _acquire(self) -> tuple[UpstreamConnection, bool]:
        """A pooled connection (the pool may have one by now), or a new one within the deadline."""
        with trio.move_on_at(self.deadline):
            return await self.host.acquire()
        raise _DeadlinePassed

    async def _send(self, data: bytes, sent: int) -> None:
        """Send the rest of ``data`` (from ``sent`` on) to the upstream, waiting within the deadline."""
        assert self.conn is not None  # noqa: S101 - set by run()
        with trio.move_on_at(self.deadline) as scope:
            await self.conn.io.send_rest(data, sent)
        if scope.cancelled_caught:
            raise _DeadlinePassed

    def _request_bytes(self, headers: list[tuple[bytes, bytes]], checked: range) -> bytes:
        """The request head, and its end if it has no body to stream (then ``sending`` is False)."""
        assert self.conn is not None  # noqa: S101 - set by run()
        codec, request = self.conn.codec, self.request
        out = codec.send_request_head(
            request.method.encode(), request.path.encode(), headers, checked=checked
        )
        body = request.body
        if body.length == 0 or body.done:
            self.sending = False
            return out + codec.send_end()
        # The body goes out while the response comes in: see _receive.
        self.sending = True
        return out

    async def _receive(self) -> None:
        """Receive more of the response into the codec, sending the rest of the request body meanwhile.

        Full duplex: an upstream may stream its response while it still reads the request (an
        echo does). Sending the whole body before reading would deadlock once the socket buffers
        fill: the upstream stops reading while nobody reads its response, and we would not read
        until it had read everything. Only waits are cancelled here (for the client's next body
        chunk, for upstream bytes), never a send, so no stream is left half-written.
        """
        assert self.conn is not None  # noqa: S101 - set by run()
        conn = self.conn
        if not self.sending:
            data = await conn.io.try_receive(RECEIVE_SIZE)
            if data is None:
                data = await self._wait_receive()
            conn.codec.receive_data(data)
            return
        with trio.move_on_at(self.deadline) as scope:
            await self._pump()
        if scope.cancelled_caught:
            raise _DeadlinePassed

    async def _wait_receive(self) -> bytes:
        """Wait for bytes from the upstream (none were there after a schedule point), within the deadline."""
        assert self.conn is not None  # noqa: S101 - set by run()
        data = None
        with trio.move_on_at(self.deadline):
            data = await self.conn.io.wait_receive(RECEIVE_SIZE)
        if data is None:
            raise _DeadlinePassed
        return data

    async def _pump(self) -> None:
        """Receive response bytes while sending the request body (see _receive)."""
        assert self.conn is not None  # noqa: S101 - set by run()
        conn = self.conn
        pumping = True
        received = False
        waiting_for_client: trio.CancelScope | None = None
        waiting_for_upstream = trio.CancelScope()
        errors: list[Exception] = []

        async def receive() -> None:
            nonlocal received, waiting_for_upstream
            try:
                while True:
                    with trio.CancelScope() as waiting_for_upstream:
                        data = await conn.stream.receive_some(RECEIVE_SIZE)
                    if waiting_for_upstream.cancelled_caught:
                        return
                    conn.codec.receive_data(data)
                    received = True
                    if waiting_for_client is not None:
                        waiting_for_client.cancel()
                    # Keep reading until the sender is done: its client read may complete despite
                    # that cancel, and the send that follows needs the upstream to keep reading,
                    # which it does only while we read its response. Returning here deadlocked.
                    if not pumping or not data:
                        return
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as err:
                errors.append(err)
                nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            body = self.request.body
            try:
                while not received:
                    with trio.CancelScope() as waiting_for_client:
                        chunk = await body.read()
                    cancelled, waiting_for_client = waiting_for_client.cancelled_caught, None
                    if cancelled:
                        break
                    if chunk:
                        await self._send_body_part(conn.codec.send_data(chunk))
                        continue
                    trailers = body.trailers.raw if body.trailers is not None else None
                    await self._send_body_part(conn.codec.send_end(trailers))
                    self.sending = False
                    break
            except (
                trio.BrokenResourceError,
                trio.ClosedResourceError,
                OSError,
                ProtocolError,
                UpstreamError,
            ) as err:
                errors.append(err)
                nursery.cancel_scope.cancel()
            pumping = False
            if received:
                waiting_for_upstream.cancel()
        if errors:
            raise errors[0]

    async def _send_body_part(self, data: bytes) -> None:
        """Send request body bytes; an upstream that takes none of them for its idle timeout is given up on."""
        assert self.conn is not None  # noqa: S101 - set by run()
        with trio.move_on_after(float(self.cluster.config.idle_timeout) or math.inf) as scope:
            await self.conn.io.send(data)
        if scope.cancelled_caught:
            msg = f"upstream {self.host.label} stopped reading the request body"
            raise UpstreamError(ResponseFlag.UPSTREAM_REQUEST_TIMEOUT, msg)

    async def _next_event(self) -> Any:
        while True:
            event = self._buffered_event()
            if event is not NEED_DATA:
                return event
            await self._receive()

    async def _read_head(self) -> ResponseHead:
        # Nothing of the answer is in the codec yet (a pooled connection is reused only with
        # nothing pending): receive first. The usual receive (no request body still going
        # out) here rather than in _receive: one frame less at the wait for the answer.
        conn = self.conn
        assert conn is not None  # noqa: S101 - set by run()
        if self.sending:
            await self._receive()
        else:
            data = await conn.io.try_receive(RECEIVE_SIZE)
            if data is None:
                data = await self._wait_receive()
            conn.codec.receive_data(data)
        while True:
            # _next_event's loop, inline: one frame less at the wait for the upstream's answer.
            event = self._buffered_event()
            if event is NEED_DATA:
                await self._receive()
                continue
            if type(event) is ResponseHead:
                return event
            if type(event) is Informational:
                continue
            if event is CLOSED:
                msg = "upstream closed before responding"
                raise trio.BrokenResourceError(msg)
            msg = f"unexpected {type(event).__name__} before the response head"
            raise UpstreamError(ResponseFlag.UPSTREAM_PROTOCOL_ERROR, msg)

    def _buffered_event(self) -> Any:
        """The codec's next event from bytes already received (NEED_DATA if it needs more)."""
        assert self.conn is not None  # noqa: S101 - set by run()
        try:
            return self.conn.codec.next_event()
        except ProtocolError as err:
            raise UpstreamError(ResponseFlag.UPSTREAM_PROTOCOL_ERROR, str(err)) from err

    async def _read_body(self) -> bytes:
        try:
            conn = self.conn
            assert conn is not None  # noqa: S101 - released only at the body's end, or on close
            # A small body came with the head: no cancel scope, no wait for what is there.
            try:
                event = conn.codec.next_event()
            except ProtocolError as err:
                raise UpstreamError(ResponseFlag.UPSTREAM_PROTOCOL_ERROR, str(err)) from err
            if event is NEED_DATA:
                event = await self._next_event()
            if type(event) is Data:
                return event.data
            return self._body_part(event)
        except _DeadlinePassed:
            pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as err:
            self.finish()
            msg = f"upstream {self.host.label} reset the connection mid-response: {err}"
            raise UpstreamError(ResponseFlag.UPSTREAM_RESET, msg) from err
        except (UpstreamError, ProtocolError):  # ProtocolError: the client broke off the request body
            self.finish()
            raise
        self.finish()
        raise self._timed_out()

    def _body_part(self, event: Any) -> bytes:
        """The body bytes an event carries, b"" at the end; UpstreamError if the upstream closed."""
        if type(event) is Data:
            return event.data
        if type(event) is EndOfMessage:
            if event.trailers and self.body is not None:
                self.body.trailers = Headers.from_raw(event.trailers)
            self.finish(reusable=True)
            return b""
        msg = f"upstream {self.host.label} closed the connection mid-response"
        raise UpstreamError(ResponseFlag.UPSTREAM_RESET, msg)
