"""The reference HTTP/1.1 codecs, over h11, with the strictness a proxy needs.

h11 is lenient where a proxy must not be (request and response smuggling): it accepts
obs-fold continuation lines, bare LF line endings, and a message carrying both
Content-Length and Transfer-Encoding. Both codecs hold each head back until it is
complete and checked, and follow chunked bodies to check their trailers
(:mod:`meshcore.http.h1strict`), before h11 sees them.
"""

from __future__ import annotations

from typing import cast

import h11

from meshcore.errors import ProtocolError
from meshcore.http.codec import (
    CLOSED,
    NEED_DATA,
    NOTHING_CHECKED,
    ClientEvent,
    Data,
    EndOfMessage,
    Informational,
    RawHeaders,
    RequestHead,
    ResponseHead,
    ServerEvent,
)
from meshcore.http.h1strict import (
    MAX_INFORMATIONAL,
    TrailerScanner,
    block_end,
    check_length,
    check_response_head,
)

__all__ = ["H11ClientCodec", "H11ServerCodec"]


class H11ServerCodec:
    """Downstream HTTP/1.1 over h11: requests in, responses out."""

    __slots__ = ("_body_start", "_conn", "_eof", "_head", "_head_done", "_max_head", "_scanned", "_trailers")

    def __init__(self, *, max_head_size: int = 60 * 1024) -> None:
        self._max_head = max_head_size
        self._conn = self._new_h11()
        # The next request head is held back from h11 until it is complete and checked: h11
        # would accept what a proxy must reject, and cannot skip empty lines before it.
        self._head = bytearray()
        self._scanned = 0  # bytes of _head already checked
        self._head_done = False
        self._eof = False
        self._body_start = b""  # bytes that came with the head: the start of its body
        self._trailers: TrailerScanner | None = None  # follows a chunked body to its trailers

    def _new_h11(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_head)

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes from the client; ``b""`` means it closed its side."""
        if self._head_done:
            if self._trailers is not None:
                self._trailers.feed(data)
            self._conn.receive_data(cast("bytes", data))  # h11 takes any bytes-like
        elif data:
            self._head += data
        else:
            self._eof = True

    def _take_head(self) -> None:
        """Check the held-back head; once complete (or at EOF), hand it to h11."""
        head = self._head
        # RFC 9112 section 2.2: ignore empty lines (CRLF) received before the request line.
        skip = 0
        while head.startswith(b"\r\n", skip):
            skip += 2
        if skip:
            del head[:skip]
            self._scanned = max(self._scanned - skip, 0)
        # Bare LF and obs-fold, then the size, checking only new bytes (block_end).
        stop = block_end(
            head, self._max_head, what="request head", status=400, too_large=431, start=self._scanned
        )
        if stop < 0:
            if not self._eof:
                self._scanned = len(head)
                return
            stop = len(head)
        # Complete, or the client closed mid-head (h11 then reports the truncated head).
        self._head_done = True
        self._scanned = 0
        self._body_start = bytes(head[stop:])
        self._conn.receive_data(bytes(head))
        head.clear()
        if self._eof:
            self._conn.receive_data(b"")

    def next_event(self) -> ServerEvent:
        """The next event, NEED_DATA, or CLOSED; ProtocolError on bad input."""
        if not self._head_done:
            self._take_head()  # until it hands the head over, h11 has nothing: NEED_DATA
        elif self._trailers is not None and self._trailers.error is not None:
            raise self._trailers.error
        try:
            event = self._conn.next_event()
        except h11.RemoteProtocolError as err:
            raise ProtocolError(str(err), status=err.error_status_hint) from err
        if type(event) is h11.Request:
            return self._request_head(event)
        if type(event) is h11.Data:
            return Data(bytes(event.data))
        if type(event) is h11.EndOfMessage:
            trailers = cast("RawHeaders", list(event.headers)) if event.headers else None
            return EndOfMessage(trailers)
        if event is h11.NEED_DATA:
            return NEED_DATA
        if type(event) is h11.ConnectionClosed:
            return CLOSED
        # PAUSED: the next request is pipelined behind an unfinished response.
        return NEED_DATA

    def _request_head(self, event: h11.Request) -> RequestHead:
        """Our checks of a request head h11 accepted (version, framing), in the fast codec's order."""
        if event.http_version not in (b"1.0", b"1.1"):
            msg = f"HTTP/{event.http_version.decode()} is not supported (HTTP/1.0 and HTTP/1.1 are)"
            raise ProtocolError(msg, status=505)
        headers = cast("RawHeaders", list(event.headers))
        has_cl = has_te = False
        for name, _ in headers:
            has_cl = has_cl or name == b"content-length"
            has_te = has_te or name == b"transfer-encoding"
        if has_cl and has_te:
            msg = "request has both Content-Length and Transfer-Encoding"
            raise ProtocolError(msg, status=400)
        if has_te and event.http_version == b"1.0":
            # RFC 9112 section 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
            msg = "HTTP/1.0 request with Transfer-Encoding"
            raise ProtocolError(msg, status=400)
        check_length(headers, status=400)
        if has_te:
            self._trailers = TrailerScanner(self._max_head, what="request trailers", status=400)
            self._trailers.feed(self._body_start)  # an error shows at the next event
        self._body_start = b""
        return RequestHead(event.method, event.target, headers, event.http_version)

    @property
    def expects_continue(self) -> bool:
        """The client sent ``Expect: 100-continue`` and waits for it before its body."""
        return bool(self._conn.they_are_waiting_for_100_continue)

    def send_informational(self, status: int, headers: RawHeaders) -> bytes:
        """Bytes for a 1xx interim response (101 switches the connection to a byte pipe)."""
        return self._conn.send(h11.InformationalResponse(status_code=status, headers=headers)) or b""

    def send_response_head(
        self,
        status: int,
        headers: RawHeaders,
        *,
        checked: range = NOTHING_CHECKED,  # noqa: ARG002 - h11 checks every header anyway
    ) -> bytes:
        """Bytes for the status line and headers; h11 chooses the framing."""
        try:
            return self._conn.send(h11.Response(status_code=status, headers=headers)) or b""
        except h11.LocalProtocolError as err:
            msg = f"cannot send response: {err}"
            raise ProtocolError(msg, status=502, remote=False) from err

    def send_data(self, data: bytes) -> bytes:
        """Bytes for a chunk of body."""
        return self._conn.send(h11.Data(data=data)) or b""

    def send_end(self, trailers: RawHeaders | None = None) -> bytes:
        """Bytes that end the body (with trailers where the framing allows)."""
        try:
            return self._conn.send(h11.EndOfMessage(headers=trailers or [])) or b""
        except h11.LocalProtocolError as err:  # a trailer h11 refuses to write
            msg = f"cannot send response: {err}"
            raise ProtocolError(msg, status=502, remote=False) from err

    def start_next_cycle(self) -> bool:
        """Prepare for the next request; False when the connection must close."""
        conn = self._conn
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return False
        # A pipelined next request may already sit in h11's buffer: take it back, to check
        # its head first, and go on with a fresh h11 (what start_next_cycle would reset).
        pending, self._eof = conn.trailing_data
        self._conn = self._new_h11()
        self._head += pending
        self._head_done = False
        self._trailers = None
        return True

    @property
    def trailing_data(self) -> bytes:
        """Bytes the client sent after the request that switched protocols (an upgrade)."""
        return bytes(self._conn.trailing_data[0])

    @property
    def request_complete(self) -> bool:
        """The whole current request, body included, has been received."""
        return self._conn.their_state is h11.DONE

    @property
    def response_started(self) -> bool:
        """A response head has been sent for the current request."""
        return self._conn.our_state in (h11.SEND_BODY, h11.DONE, h11.MUST_CLOSE)


class H11ClientCodec:
    """Upstream HTTP/1.1 over h11: requests out, responses in.

    Each response head (interim ones too) is held back from h11 until it is complete and
    checked (size, bare LF, obs-fold), and checked again once h11 has parsed it (status,
    version, framing headers: :func:`~meshcore.http.h1strict.check_response_head`); a
    chunked body is followed to check its trailers. Bytes after a complete response make
    the connection unusable (:meth:`start_next_cycle`): nothing was asked for them.
    """

    __slots__ = (
        "_closed_before_answer",
        "_conn",
        "_eof",
        "_head",
        "_in_head",
        "_interim",
        "_max_head",
        "_method",
        "_received",
        "_scanned",
        "_trailers",
    )

    def __init__(self, *, max_head_size: int = 60 * 1024) -> None:
        self._max_head = max_head_size
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_head_size)
        self._received = 0  # bytes of the current response so far
        self._closed_before_answer = False
        self._head = bytearray()  # the next response head, held back from h11
        self._scanned = 0  # bytes of _head already checked
        self._in_head = True
        self._eof = False
        self._interim = 0  # 1xx responses to the current request
        self._trailers: TrailerScanner | None = None
        self._method = b""

    def send_request_head(
        self,
        method: bytes,
        target: bytes,
        headers: RawHeaders,
        *,
        checked: range = NOTHING_CHECKED,  # noqa: ARG002 - h11 checks every header anyway
    ) -> bytes:
        """Bytes for a request line and headers; h11 chooses the framing."""
        self._method = method
        try:
            return self._conn.send(h11.Request(method=method, target=target, headers=headers)) or b""
        except h11.LocalProtocolError as err:
            msg = f"cannot forward request: {err}"
            raise ProtocolError(msg, status=400, remote=False) from err

    def send_data(self, data: bytes) -> bytes:
        """Bytes for a chunk of body."""
        return self._conn.send(h11.Data(data=data)) or b""

    def send_end(self, trailers: RawHeaders | None = None) -> bytes:
        """Bytes that end the body (with trailers where the framing allows)."""
        try:
            return self._conn.send(h11.EndOfMessage(headers=trailers or [])) or b""
        except h11.LocalProtocolError as err:  # a trailer h11 refuses to write
            msg = f"cannot forward request: {err}"
            raise ProtocolError(msg, status=400, remote=False) from err

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes from the upstream; ``b""`` means it closed its side."""
        if not data and not self._received and self._conn.their_state is h11.SEND_RESPONSE:
            # Closed before a byte of the answer: a kept-alive connection the upstream dropped
            # while idle. h11 calls that a protocol error; for a proxy it is "closed, retry".
            self._closed_before_answer = True
            return
        self._received += len(data)
        if self._in_head:
            if data:
                self._head += data
            else:
                self._eof = True
            return
        if self._trailers is not None:
            self._trailers.feed(data)
        self._conn.receive_data(cast("bytes", data))  # h11 takes any bytes-like

    def next_event(self) -> ClientEvent:
        """The next event, NEED_DATA or CLOSED; ProtocolError (502) on a bad response."""
        if self._closed_before_answer:
            return CLOSED
        if self._in_head:
            if self._conn.their_state is not h11.SEND_RESPONSE:
                return NEED_DATA  # switched protocols, or no request sent yet: the bytes wait
            if not self._take_head():
                return NEED_DATA
        elif self._trailers is not None and self._trailers.error is not None:
            raise self._trailers.error
        try:
            event = self._conn.next_event()
        except h11.RemoteProtocolError as err:
            msg = f"upstream: {err}"
            raise ProtocolError(msg, status=502) from err
        if type(event) is h11.InformationalResponse:
            check_response_head(event.status_code, event.http_version, cast("RawHeaders", event.headers))
            self._interim += 1
            if self._interim > MAX_INFORMATIONAL:
                msg = f"upstream: more than {MAX_INFORMATIONAL} interim (1xx) responses"
                raise ProtocolError(msg, status=502)
            if self._conn.their_state is h11.SEND_RESPONSE:
                self._in_head = (
                    True  # a final response head comes next (after a 101: bytes of the new protocol)
                )
        elif type(event) is h11.Response:
            headers = cast("RawHeaders", list(event.headers))
            check_response_head(event.status_code, event.http_version, headers)
            self._body_begins(event.status_code, headers)
        return _client_event(event)

    def _take_head(self) -> bool:
        """Check the held-back head; once complete (or at EOF), hand it to h11 and say True."""
        head = self._head
        if head[:1] == b"\n" or head[:2] == b"\r\n":
            msg = "upstream: no response line received"
            raise ProtocolError(msg, status=502)
        try:
            stop = block_end(
                head, self._max_head, what="response head", status=502, too_large=502, start=self._scanned
            )
        except ProtocolError as err:
            msg = f"upstream: {err}"
            raise ProtocolError(msg, status=502) from err
        if stop < 0:
            if head and head[0] < _FIRST_PRINTABLE:
                msg = "upstream: illegal status line"
                raise ProtocolError(msg, status=502)
            if not self._eof:
                self._scanned = len(head)
                return False
            stop = len(head)  # closed mid-head: h11 reports the truncated head
        self._conn.receive_data(bytes(head[:stop]))
        del head[:stop]
        self._scanned = 0
        self._in_head = False
        if self._eof and not head:
            self._conn.receive_data(b"")
        return True

    def _body_begins(self, status: int, headers: RawHeaders) -> None:
        """After a final response head: the held-back rest is body, for h11 (and the trailer scanner)."""
        rest, self._head = self._head, bytearray()
        no_body = self._method == b"HEAD" or status in (204, 304)
        if not no_body and any(name == b"transfer-encoding" for name, _ in headers):
            self._trailers = TrailerScanner(self._max_head, what="response trailers", status=502)
            self._trailers.feed(rest)
        if rest:
            self._conn.receive_data(bytes(rest))
        if self._eof:
            self._conn.receive_data(b"")

    def start_next_cycle(self) -> bool:
        """Prepare for the next request; False when the connection cannot be reused.

        Not after bytes the upstream sent beyond the response (that is a framing error: they
        would be read as the answer to the next request), nor once it closed its side.
        """
        conn = self._conn
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return False
        extra, closed = conn.trailing_data
        if extra or closed or self._head or self._eof:
            return False
        conn.start_next_cycle()
        self._received = 0
        self._interim = 0
        self._in_head = True
        self._trailers = None
        return True

    @property
    def trailing_data(self) -> bytes:
        """Bytes the upstream sent after its 101 Switching Protocols head."""
        return bytes(self._head) + bytes(self._conn.trailing_data[0])


_FIRST_PRINTABLE = 0x21  # no status line starts below "!"


def _client_event(event: object) -> ClientEvent:
    """Our event for an h11 client-side event."""
    if type(event) is h11.Response:
        return ResponseHead(
            event.status_code, cast("RawHeaders", list(event.headers)), event.http_version, event.reason
        )
    if type(event) is h11.Data:
        return Data(bytes(event.data))
    if type(event) is h11.EndOfMessage:
        return EndOfMessage(cast("RawHeaders", list(event.headers)) if event.headers else None)
    if type(event) is h11.InformationalResponse:
        return Informational(event.status_code, cast("RawHeaders", list(event.headers)))
    return CLOSED if type(event) is h11.ConnectionClosed else NEED_DATA
