"""One downstream HTTP/1.1 connection: requests in, through the connection manager, responses out.

One loop per connection, no task per request: read a request head, make the
:class:`~meshcore.http.messages.Request`, hand it to the connection manager's
:meth:`~meshcore.runtime.http_manager.HttpConnectionManager.dispatch` (route and filter
chain), stream the response back, record it, and go round again while the connection
stays reusable.

Waits, and their timeouts:

- for the next request, the idle timeout (a drain cuts it short), entered only when the
  request is not there after a schedule point (see :mod:`meshcore.runtime.sockio`);
- from the first byte of a head to its end, the headers timeout;
- for the client to take the response, the stream idle timeout, entered only when the
  socket buffer is full.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import structlog
import trio

from meshcore.errors import ProtocolError
from meshcore.flags import ResponseFlag
from meshcore.http.codec import CLOSED, NEED_DATA, NOTHING_CHECKED, Data, EndOfMessage, RequestHead
from meshcore.http.h1 import H11ServerCodec
from meshcore.http.h1fast import FastServerCodec
from meshcore.http.messages import Body, Headers, ParsedHeaders, Request, Response, StreamInfo
from meshcore.http.semantics import (
    HOP_BY_HOP,
    REASONS,
    connection_tokens,
    split_absolute_form,
    status_text,
    strip_hop_by_hop,
)
from meshcore.runtime.h2server import PREFACE, H2ServerSession
from meshcore.runtime.linger import send_and_linger
from meshcore.runtime.pipe import splice
from meshcore.runtime.sockio import StreamIO

if TYPE_CHECKING:
    from meshcore.connection import Connection
    from meshcore.runtime.http_manager import HttpConnectionManager

__all__ = ["RECEIVE_SIZE", "H1Session", "HeadersTimeoutError"]

log = structlog.get_logger("meshcore.http")

RECEIVE_SIZE = 64 * 1024
_SWITCHING_PROTOCOLS = 101


def _scan_fields(
    fields: list[tuple[bytes, bytes]],
) -> tuple[list[tuple[bytes, bytes]], bytes, int | None, bool, bytes, bytes]:
    """One pass over a request head's fields.

    Returns the fields to forward (no Host, no hop-by-hop ones), the Host value, the
    Content-Length (the codec checked its digits), whether the body is chunked, the Upgrade
    value, and the Connection values joined.
    """
    authority = upgrade = connection = b""
    length: int | None = None
    chunked = hop = False
    headers = []
    for pair in fields:
        name = pair[0]
        if name == b"host":
            authority = pair[1]
            continue
        headers.append(pair)
        if name == b"content-length":
            length = int(pair[1])
        elif name in HOP_BY_HOP or name == b"te":
            hop = True
            if name == b"transfer-encoding":
                chunked = True
            elif name == b"upgrade":
                upgrade = pair[1]
            elif name == b"connection":
                connection += b"," + pair[1]
    return (strip_hop_by_hop(headers) if hop else headers), authority, length, chunked, upgrade, connection


class HeadersTimeoutError(ProtocolError):
    """The client did not send a complete request head within the headers timeout."""


class H1Session:
    """One downstream HTTP/1.1 connection."""

    __slots__ = ("codec", "conn", "hcm", "initial", "io", "served", "stream")

    def __init__(self, hcm: HttpConnectionManager, conn: Connection, initial: bytes | None = b"") -> None:
        self.hcm = hcm
        self.conn = conn
        self.stream = conn.stream
        self.io = StreamIO(conn.stream)
        self.codec: H11ServerCodec | FastServerCodec = (
            FastServerCodec(max_head_size=hcm.max_head)
            if hcm.fast_codec
            else H11ServerCodec(max_head_size=hcm.max_head)
        )
        self.served = 0
        self.initial = initial

    async def run(self) -> None:
        """Serve requests until the connection closes, goes idle too long, or cannot be reused."""
        hcm, codec = self.hcm, self.codec
        if self.initial is None:
            initial = await hcm._sniff(self.conn)  # noqa: SLF001 - the session's own manager
            if initial.startswith(PREFACE):
                await H2ServerSession(hcm, self.conn, initial).run()
                return
            if not initial:
                return
            self.initial = initial
        while self.served < hcm.max_requests:
            try:
                initial = self.initial
                started = bool(initial)
                if initial:
                    codec.receive_data(initial)  # bytes read while telling HTTP/1.1 from HTTP/2
                    self.initial = b""
                head = await self._read_head(started=started)
            except ProtocolError as err:
                await self._reject(err)
                return
            if head is None:
                return
            self.served += 1
            try:
                request = self._request(head)
            except ProtocolError as err:
                await self._reject(err)
                return
            # Served here rather than in a method of its own: one frame less for each
            # suspension of the request (the upstream's answer, the writes) to unwind.
            response = await hcm.dispatch(request)
            try:
                completed = await self._write_response(request, response)
            except ProtocolError as err:
                # Trailers the codec refuses to write (one could split the message): close
                # the connection without ending the message, so the client sees it incomplete.
                log.warning("response_invalid", listener=hcm.listener, reason=str(err))
                response.body.close()
                completed = False
            finally:
                hcm.record(request, response)
            # A request body nobody read keeps the connection out of step: close it.
            if not completed or not codec.request_complete or not codec.start_next_cycle():
                return

    # -- requests in ----------------------------------------------------------------------------

    async def _receive(self) -> None:
        self.codec.receive_data(await self.io.receive(RECEIVE_SIZE))

    async def _read_head(self, *, started: bool = False) -> RequestHead | None:
        """The next request head; None when the client is gone, idle too long, or we drain.

        Waiting for the first byte is bounded by the idle timeout (and cut short by a drain);
        from the first byte on, the whole head must arrive within the headers timeout.
        """
        hcm, codec = self.hcm, self.codec
        event = codec.next_event()
        if event is NEED_DATA and not started:
            if hcm.draining:
                return None
            # The next request is usually there already, once the other connections have had
            # their turn (the schedule point before the recv): here, not in a method of its own,
            # one frame less at this wait. A cancel scope (for the idle timeout, and for a drain
            # to find the connection) only when waiting for it (_first_bytes).
            try:
                data = await self.io.try_receive(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if data is None:
                data = await self._first_bytes()
                if data is None:
                    return None
            codec.receive_data(data)
            event = codec.next_event()
        if event is NEED_DATA:
            with trio.move_on_after(hcm.headers_timeout):
                while event is NEED_DATA:
                    try:
                        await self._receive()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return None
                    event = codec.next_event()
            if event is NEED_DATA:
                msg = "request headers not received in time"
                raise HeadersTimeoutError(msg, status=408)
        if type(event) is RequestHead:
            return event
        if event is CLOSED:
            return None
        msg = f"unexpected {type(event).__name__} before a request head"
        raise ProtocolError(msg, status=400)

    async def _first_bytes(self) -> bytes | None:
        """Wait for the first bytes of the next request (none were there after a schedule point).

        None when the client is gone, idle too long, or we drain.
        """
        hcm = self.hcm
        data = None
        if hcm.draining:  # began during try_receive's schedule point
            return None
        with trio.move_on_after(hcm.idle_timeout) as idle:
            hcm.idle_scopes[idle] = self.stream
            try:
                data = await self.io.wait_receive(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            finally:
                hcm.idle_scopes.pop(idle, None)
        return None if idle.cancelled_caught else data

    async def _reject(self, err: ProtocolError) -> None:
        """Answer a bad request with its status, log it, and close the connection."""
        hcm = self.hcm
        flag = (
            ResponseFlag.DOWNSTREAM_HEADERS_TIMEOUT
            if isinstance(err, HeadersTimeoutError)
            else ResponseFlag.DOWNSTREAM_PROTOCOL_ERROR
        )
        hcm.stat_rejected.value += 1
        hcm.stat_classes[err.status // 100 - 1].value += 1
        log.warning(
            "request_rejected",
            listener=hcm.listener,
            peer=self.conn.peer,
            status=err.status,
            flags=flag.value,
            reason=str(err),
        )
        body = status_text(err.status).encode()  # never the reason: it quotes what the client sent
        reason = REASONS.get(err.status, b"")
        raw = (
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
            b"connection: close\r\nx-meshcore-flags: %s\r\n\r\n%s"
        ) % (err.status, reason, len(body), flag.value.encode(), body)
        await send_and_linger(self.stream, raw)

    def _request(self, head: RequestHead) -> Request:
        """The Request of ``head``: one pass over its fields for Host, framing and hop-by-hop ones."""
        if head.method == b"CONNECT":
            # No tunnels over HTTP/1.1: a 2xx to CONNECT would switch the connection to a byte
            # pipe (h11 then refused the response body, and the task crashed the listener).
            msg = "CONNECT is not supported"
            raise ProtocolError(msg, status=501)
        hcm = self.hcm
        if len(head.headers) > hcm.max_headers:
            msg = f"more than {hcm.max_headers} request headers"
            raise ProtocolError(msg, status=431)
        headers, authority, length, chunked, upgrade, connection = _scan_fields(head.headers)
        target = head.target
        absolute = split_absolute_form(target)
        if absolute is not None:  # its authority wins over Host; the upstream gets origin form
            authority, target = absolute
        # By position (see Request): method, path, authority, scheme, headers, body, version,
        # info, connection.
        request = Request(
            head.method.decode("ascii"),
            target.decode("latin-1"),
            authority.decode("latin-1"),
            hcm.scheme,
            # The fast codec's parser checks every field as strictly as its writer does: the
            # upstream side need not check again those no filter changed.
            ParsedHeaders.parsed_from(headers) if hcm.fast_codec else Headers.from_raw(headers),
            self._request_body(length, chunked),
            head.http_version.decode("ascii"),
            StreamInfo(self.conn.peer, self.conn.id),
            self.conn,
        )
        if upgrade and b"upgrade" in connection_tokens(connection):
            protocol = upgrade.decode("latin-1").strip().lower()
            if protocol != "h2c":  # ignored, not refused: served over HTTP/1.1 (RFC 9113 section 3.1)
                request.upgrade = protocol
        return request

    def _request_body(self, length: int | None, chunked: bool) -> Body:
        """The request's body, as its framing headers announce it."""
        if length == 0 or (length is None and not chunked):
            # Take the empty body's end from the codec (it needs no bytes): only then is the
            # request complete, and the connection free for the next one.
            self.codec.next_event()
            return Body.empty()
        limit = self.hcm.max_body
        if limit is not None and length is not None and length > limit:
            msg = f"request body of {length} bytes, more than the limit of {limit}"
            raise ProtocolError(msg, status=413)
        body = Body(self._read_body_chunk, length)
        body.limit = limit
        return body

    async def _read_body_chunk(self) -> bytes:
        codec = self.codec
        while True:
            event = codec.next_event()
            if type(event) is Data:
                return event.data
            if type(event) is EndOfMessage:
                return b""
            if event is NEED_DATA:
                if codec.expects_continue:
                    await self.stream.send_all(codec.send_informational(100, []))
                await self._receive()
                continue
            msg = "client closed the connection in the middle of the request body"
            raise ProtocolError(msg, status=400)

    # -- responses out --------------------------------------------------------------------------

    async def _write_response(self, request: Request, response: Response) -> bool:
        """Stream the response; False if it could not be completed (then the connection closes)."""
        if response.status == _SWITCHING_PROTOCOLS and response.upgraded is not None:
            await self._splice(request, response)
            return False
        codec, body, hcm = self.codec, response.body, self.hcm
        headers = response.headers.raw
        # Pairs the upstream side's parser checked, unchanged since, need no second check.
        checked = (
            range(response.headers.unchanged(headers))
            if type(response.headers) is ParsedHeaders
            else NOTHING_CHECKED
        )
        info = request.info
        if info.flags:
            headers = [*headers, (b"x-meshcore-flags", info.flag_string().encode())]
        overload = hcm.overload
        if hcm.draining or (overload is not None and overload.keepalive_disabled):
            headers = [*headers, (b"connection", b"close")]
        try:
            pending = codec.send_response_head(response.status, headers, checked=checked)
        except ProtocolError as err:
            log.warning("response_invalid", listener=hcm.listener, reason=str(err))
            body.close()
            pending = codec.send_response_head(502, [(b"content-length", b"0"), (b"connection", b"close")])
            await self._send(pending + codec.send_end())
            return False
        # A reply to HEAD, and a 204 or 304, has no body on the wire, even when the response
        # object has one (a local reply to HEAD): read it to its end, send none of it.
        no_body = request.method == "HEAD" or response.status in (204, 304)
        try:
            while True:
                try:
                    chunk = await body.read()
                except Exception as err:  # noqa: BLE001 - whatever a body reader raises ends the response alike
                    # Upstream reset or timeout mid-response: never pass off a truncated body
                    # as complete. Close without ending the message.
                    flag = getattr(err, "flag", ResponseFlag.UPSTREAM_RESET)
                    info.flags.add(flag)
                    log.warning("response_aborted", listener=hcm.listener, flags=flag.value, reason=str(err))
                    if pending:
                        await self._send(pending)
                    return False
                if not chunk:
                    break
                if no_body:
                    continue
                pending += codec.send_data(chunk)
                if body.length is None or body.consumed < body.length:
                    await self._send_timed(pending)
                    pending = b""
            trailers = body.trailers.raw if body.trailers is not None else None
            await self._send_timed(pending + codec.send_end(trailers))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            info.flags.add(ResponseFlag.DOWNSTREAM_CONNECTION_TERMINATION)
            body.close()
            return False
        except trio.TooSlowError:
            # The client stopped reading: disconnect it, and free the upstream side.
            info.flags.add(ResponseFlag.STREAM_IDLE_TIMEOUT)
            log.warning("stream_idle_timeout", listener=hcm.listener, peer=self.conn.peer)
            body.close()
            return False
        return True

    async def _send_timed(self, data: bytes) -> None:
        """Send to the client; trio.TooSlowError if it takes none of it for the stream idle timeout."""
        io = self.io
        sent = io.try_send(data)
        if sent == len(data):  # it fit the socket buffer: nothing to wait for, no cancel scope
            return
        # A bare cancel scope: trio.fail_after is a generator context manager, twice the cost
        # of the scope itself.
        with trio.CancelScope(relative_deadline=self.hcm.stream_idle_timeout) as scope:
            await io.send_rest(data, sent)
        if scope.cancelled_caught:
            raise trio.TooSlowError

    async def _splice(self, request: Request, response: Response) -> None:
        """Switch protocols: answer 101, then the connection is a byte pipe to the upstream."""
        upgraded = response.upgraded
        assert upgraded is not None  # noqa: S101 - checked by the caller
        try:
            token = (request.upgrade or "").encode("latin-1")
            headers = [*response.headers.raw, (b"connection", b"upgrade"), (b"upgrade", token)]
            head = self.codec.send_informational(101, headers)
            leftover = self.codec.trailing_data
            await self.stream.send_all(head + upgraded.leftover)
            if leftover:
                await upgraded.stream.send_all(leftover)
            await splice(self.stream, upgraded.stream, idle_timeout=self.hcm.idle_timeout)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            request.info.flags.add(ResponseFlag.DOWNSTREAM_CONNECTION_TERMINATION)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await upgraded.stream.aclose()

    async def _send(self, data: bytes) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.io.send(data)
