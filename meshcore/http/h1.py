"""The reference HTTP/1.1 codecs, over h11, with the strictness a proxy needs.

h11 is lenient where a proxy must not be (request smuggling): it accepts obs-fold
continuation lines, bare LF line endings, and a request carrying both Content-Length
and Transfer-Encoding. The server codec rejects those before h11 sees them.
"""

from __future__ import annotations

import re
from typing import cast

import h11

from meshcore.errors import ProtocolError
from meshcore.http.codec import (
    CLOSED,
    NEED_DATA,
    ClientEvent,
    Data,
    EndOfMessage,
    Informational,
    RawHeaders,
    RequestHead,
    ResponseHead,
    ServerEvent,
)

__all__ = ["H11ClientCodec", "H11ServerCodec"]

_CRLF2 = b"\r\n\r\n"
# A LF not preceded by CR, or a line starting with whitespace (obs-fold).
_BAD_LINE = re.compile(rb"(?<!\r)\n|\n[ \t]")


def _check_lines(head: bytearray, start: int, stop: int) -> None:
    """Reject bare LF and obs-fold among the request head bytes ``head[start:stop]``."""
    found = _BAD_LINE.search(head, start, stop)
    if found is None:
        return
    if found.group() == b"\n":
        msg = "bare LF line ending in request head"
    else:
        msg = "obsolete line folding (obs-fold) in request headers"
    raise ProtocolError(msg, status=400)


class H11ServerCodec:
    """Downstream HTTP/1.1 over h11: requests in, responses out."""

    __slots__ = ("_conn", "_eof", "_head", "_head_done", "_max_head", "_scanned")

    def __init__(self, *, max_head_size: int = 60 * 1024) -> None:
        self._max_head = max_head_size
        self._conn = self._new_h11()
        # The next request head is held back from h11 until it is complete and checked: h11
        # would accept what a proxy must reject, and cannot skip empty lines before it.
        self._head = bytearray()
        self._scanned = 0  # bytes of _head already checked
        self._head_done = False
        self._eof = False

    def _new_h11(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_head)

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes from the client; ``b""`` means it closed its side."""
        if self._head_done:
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
        # Scan only new bytes (from 3 back: CRLF CRLF may straddle two reads).
        end = head.find(_CRLF2, max(self._scanned - 3, 0))
        stop = len(head) if end < 0 else end + 4
        # Bad lines within the size limit first, then the size, so that the error does not
        # depend on how the bytes were split across reads. From 1 back: whether the last LF
        # seen starts an obs-fold shows only now.
        _check_lines(head, max(self._scanned - 1, 0), min(stop, self._max_head))
        if stop > self._max_head:
            msg = f"request head larger than {self._max_head} bytes"
            raise ProtocolError(msg, status=431)
        if end < 0 and not self._eof:
            self._scanned = stop
            return
        # Complete, or the client closed mid-head (h11 then reports the truncated head).
        self._head_done = True
        self._scanned = 0
        self._conn.receive_data(bytes(head))
        head.clear()
        if self._eof:
            self._conn.receive_data(b"")

    def next_event(self) -> ServerEvent:
        """The next event, NEED_DATA, or CLOSED; ProtocolError on bad input."""
        if not self._head_done:
            self._take_head()  # until it hands the head over, h11 has nothing: NEED_DATA
        try:
            event = self._conn.next_event()
        except h11.RemoteProtocolError as err:
            raise ProtocolError(str(err), status=err.error_status_hint) from err
        if type(event) is h11.Request:
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
            return RequestHead(event.method, event.target, headers, event.http_version)
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

    @property
    def expects_continue(self) -> bool:
        """The client sent ``Expect: 100-continue`` and waits for it before its body."""
        return bool(self._conn.they_are_waiting_for_100_continue)

    def send_informational(self, status: int, headers: RawHeaders) -> bytes:
        """Bytes for a 1xx interim response (101 switches the connection to a byte pipe)."""
        return self._conn.send(h11.InformationalResponse(status_code=status, headers=headers)) or b""

    def send_response_head(self, status: int, headers: RawHeaders) -> bytes:
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
        return self._conn.send(h11.EndOfMessage(headers=trailers or [])) or b""

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
    """Upstream HTTP/1.1 over h11: requests out, responses in."""

    __slots__ = ("_closed_before_answer", "_conn", "_received")

    def __init__(self) -> None:
        self._conn = h11.Connection(h11.CLIENT)
        self._received = 0  # bytes of the current response so far
        self._closed_before_answer = False

    def send_request_head(self, method: bytes, target: bytes, headers: RawHeaders) -> bytes:
        """Bytes for a request line and headers; h11 chooses the framing."""
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
        return self._conn.send(h11.EndOfMessage(headers=trailers or [])) or b""

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes from the upstream; ``b""`` means it closed its side."""
        if not data and not self._received and self._conn.their_state is h11.SEND_RESPONSE:
            # Closed before a byte of the answer: a kept-alive connection the upstream dropped
            # while idle. h11 calls that a protocol error; for a proxy it is "closed, retry".
            self._closed_before_answer = True
            return
        self._received += len(data)
        self._conn.receive_data(cast("bytes", data))  # h11 takes any bytes-like

    def next_event(self) -> ClientEvent:
        """The next event, NEED_DATA or CLOSED; ProtocolError (502) on a bad response."""
        if self._closed_before_answer:
            return CLOSED
        try:
            event = self._conn.next_event()
        except h11.RemoteProtocolError as err:
            msg = f"upstream: {err}"
            raise ProtocolError(msg, status=502) from err
        return _client_event(event)

    def start_next_cycle(self) -> bool:
        """Prepare for the next request; False when the connection cannot be reused."""
        conn = self._conn
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return False
        conn.start_next_cycle()
        self._received = 0
        return True

    @property
    def trailing_data(self) -> bytes:
        """Bytes the upstream sent after its 101 Switching Protocols head."""
        return bytes(self._conn.trailing_data[0])


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
