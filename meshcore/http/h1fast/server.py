"""The fast HTTP/1.1 server codec: requests in, responses out (as H11ServerCodec)."""

from __future__ import annotations

import re

from meshcore.errors import ProtocolError
from meshcore.http.codec import (
    CLOSED,
    NEED_DATA,
    NOTHING_CHECKED,
    Data,
    EndOfMessage,
    RawHeaders,
    RequestHead,
    ServerEvent,
)
from meshcore.http.h1fast._common import (
    EMPTY_BODY,
    REASONS,
    BodyWriter,
    ChunkedReader,
    LengthReader,
    bad,
    field_block,
    framing,
    write_head,
)
from meshcore.http.h1strict import MAX_LENGTH_DIGITS, block_end

__all__ = ["FastServerCodec"]

_REQUEST_LINE = re.compile(rb"([-!#$%&'*+.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP/([0-9]\.[0-9])")
_SEND_ERROR = "cannot send response"
_HEAD, _BODY, _DONE, _SWITCHED = range(4)


def _lists_close(connection: bytes) -> bool:
    """Whether the (lower-case, comma-joined) Connection values hold the ``close`` option."""
    return any(token.strip() == b"close" for token in connection.split(b","))


def _length(value: bytes) -> int:
    if not value.isdigit():
        msg = f"{_SEND_ERROR}: bad Content-Length"
        raise ProtocolError(msg, status=502, remote=False)
    return int(value)


def _fields_out(headers: RawHeaders, checked: range) -> tuple[RawHeaders, int, int | None, bool]:
    """A response's fields to write, but those of framing; how many lead known good; length; close.

    The pairs at the indexes in ``checked`` (a range from 0; any other is ignored) are
    lower-case and good already; the others are lower-cased here, and follow them.
    """
    length: int | None = None
    close = False
    out: RawHeaders = []
    if checked.start == 0 and checked.stop:
        known, unknown = headers[: checked.stop], headers[checked.stop :]
    else:
        known, unknown = [], headers
    for pair in known:
        name = pair[0]
        if name == b"content-length":
            length = _length(pair[1])
        elif name == b"connection" and b"close" in pair[1].lower():
            close = True
        elif name != b"transfer-encoding":  # framing is ours to choose
            out.append(pair)
    good = len(out)
    for name, value in unknown:
        lower = name.lower()
        if lower == b"content-length":
            length = _length(value)
        elif lower == b"connection" and b"close" in value.lower():
            close = True
        elif lower != b"transfer-encoding":
            out.append((lower, value))
    return out, good, length, close


class FastServerCodec:
    """Downstream HTTP/1.1: requests in, responses out (the contract of H11ServerCodec)."""

    __slots__ = (
        "_buffer",
        "_closed",
        "_expect",
        "_keep_alive",
        "_max_head",
        "_method",
        "_reader",
        "_scanned",
        "_state",
        "_version",
        "_writer",
    )

    def __init__(self, *, max_head_size: int = 60 * 1024) -> None:
        self._max_head = max_head_size
        self._buffer = bytearray()
        self._closed = False
        self._scanned = 0  # bytes of a partial head already checked
        self._state = _HEAD
        self._reader: LengthReader | ChunkedReader = EMPTY_BODY
        self._writer: BodyWriter | None = None
        self._expect = False
        self._keep_alive = True
        self._method = b""
        self._version = b"1.1"

    # -- requests in ----------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes from the client; ``b""`` means it closed its side."""
        if data:
            self._buffer += data
        else:
            self._closed = True

    def next_event(self) -> ServerEvent:
        """The next event, NEED_DATA, or CLOSED; ProtocolError on bad input."""
        if self._state == _HEAD:
            if not self._buffer and not self._closed:  # between requests: nothing to scan
                return NEED_DATA
            return self._read_head()
        if self._state == _BODY:
            event = self._reader.read(self._buffer, self._closed)
            if type(event) is EndOfMessage:
                self._state = _DONE
            elif type(event) is Data:
                self._expect = False
            return event
        return NEED_DATA  # done (paused until the next cycle: pipelining) or switched

    def _read_head(self) -> ServerEvent:
        buffer = self._buffer
        while buffer[:2] == b"\r\n":  # RFC 9112 section 2.2: ignore empty lines before a request
            del buffer[:2]
            self._scanned = max(self._scanned - 2, 0)
        stop = block_end(
            buffer, self._max_head, what="request head", status=400, too_large=431, start=self._scanned
        )
        if stop < 0:
            self._scanned = len(buffer)
            return self._incomplete_head()
        self._scanned = 0
        line_end = buffer.find(b"\r\n", 0, stop)  # the head ends in CRLF CRLF: found
        request_line = bytes(buffer[:line_end])
        fields = bytes(buffer[line_end + 2 : stop - 2])  # every field line with its CRLF
        del buffer[:stop]
        match = _REQUEST_LINE.fullmatch(request_line)
        if match is None:
            msg = f"illegal request line: {request_line[:80]!r}"
            raise bad(msg)
        method, target, version = match.groups()
        headers, length, chunked = framing(field_block(fields))
        self._check_head(headers, version, length, chunked)
        self._method = method
        self._version = version
        if chunked:
            self._reader = ChunkedReader(self._max_head)
        else:
            self._reader = LengthReader(int(length)) if length is not None and length != b"0" else EMPTY_BODY
            if self._reader.remaining == 0:
                self._expect = False
        self._state = _BODY
        return RequestHead(method, target, headers, version)

    def _incomplete_head(self) -> ServerEvent:
        if not self._closed:
            return NEED_DATA
        if self._buffer:
            msg = "peer unexpectedly closed connection"
            raise bad(msg)
        return CLOSED

    def _check_head(self, headers: RawHeaders, version: bytes, length: bytes | None, chunked: bool) -> None:
        """What h11's Request checks after the fields, then our own (version, CL+TE), in that order."""
        hosts = 0
        connection = b""
        for name, value in headers:
            if name == b"host":
                hosts += 1
            elif name == b"connection":
                connection += b"," + value.lower()
            elif name == b"expect" and value.lower() == b"100-continue":
                self._expect = version == b"1.1"
        if hosts > 1:
            msg = "Found multiple Host: headers"
            raise bad(msg)
        if version == b"1.1" and not hosts:
            msg = "Missing mandatory Host: header"
            raise bad(msg)
        if version not in (b"1.0", b"1.1"):
            msg = f"HTTP/{version.decode()} is not supported (HTTP/1.0 and HTTP/1.1 are)"
            raise bad(msg, 505)
        if chunked and length is not None:
            msg = "request has both Content-Length and Transfer-Encoding"
            raise bad(msg)
        if chunked and version == b"1.0":
            # RFC 9112 section 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
            msg = "HTTP/1.0 request with Transfer-Encoding"
            raise bad(msg)
        if length is not None and len(length) > MAX_LENGTH_DIGITS:  # framing kept one Content-Length
            msg = f"Content-Length longer than {MAX_LENGTH_DIGITS} digits"
            raise bad(msg)
        # As h11: no keep-alive for HTTP/1.0.
        self._keep_alive = version == b"1.1" and not (connection and _lists_close(connection))

    @property
    def expects_continue(self) -> bool:
        """The client sent ``Expect: 100-continue`` and waits for it before its body."""
        return self._expect and self._writer is None

    @property
    def request_complete(self) -> bool:
        """The whole current request, body included, has been received."""
        return self._state == _DONE

    @property
    def response_started(self) -> bool:
        """A response head has been sent for the current request."""
        return self._writer is not None

    @property
    def trailing_data(self) -> bytes:
        """Bytes the client sent after the request that switched protocols (an upgrade)."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    # -- responses out --------------------------------------------------------------------------

    def send_informational(self, status: int, headers: RawHeaders) -> bytes:
        """Bytes for a 1xx interim response (101 switches the connection to a byte pipe)."""
        if status == 101:  # noqa: PLR2004 - Switching Protocols
            self._state = _SWITCHED
        self._expect = False
        return write_head(
            b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"")), headers, error=_SEND_ERROR, status=502
        )

    def send_response_head(
        self, status: int, headers: RawHeaders, *, checked: range = NOTHING_CHECKED
    ) -> bytes:
        """Bytes for the status line and headers; the framing is chosen here, as h11 does.

        The pairs at the indexes in ``checked`` are known good (names lower-case, syntax
        checked: see ServerCodec) and not checked again; only a range from 0 is used.
        """
        no_body = self._method == b"HEAD" or status in (204, 304) or status < 200  # noqa: PLR2004
        out, good, length, close = _fields_out(headers, checked)
        if good == len(out):  # all known good: so are the framing pairs added below, ours
            good = -1
        close = close or not self._keep_alive
        chunked = False
        if length is not None:  # on a body-less answer it describes the entity: passed on
            out.append((b"content-length", str(length).encode()))
        elif not no_body:
            chunked = self._version == b"1.1"
            close = close or not chunked  # HTTP/1.0 without a length: the close delimits the body
            if chunked:
                out.append((b"transfer-encoding", b"chunked"))
        if close:
            self._keep_alive = False
            out.append((b"connection", b"close"))
        # Positional: a class called with keywords builds a dict for them, once per request.
        self._writer = BodyWriter(chunked, 0 if no_body else length, _SEND_ERROR, 502)
        self._expect = False
        return write_head(
            b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"")),
            out,
            error=_SEND_ERROR,
            status=502,
            checked=range(len(out) if good < 0 else good),
        )

    def send_data(self, data: bytes) -> bytes:
        """Bytes for a chunk of response body."""
        assert self._writer is not None  # noqa: S101 - the head goes first
        return self._writer.data(data)

    def send_end(self, trailers: RawHeaders | None = None) -> bytes:
        """Bytes that end the response body."""
        assert self._writer is not None  # noqa: S101 - the head goes first
        try:
            return self._writer.end(trailers)
        except ProtocolError:
            self._keep_alive = False
            raise

    def start_next_cycle(self) -> bool:
        """Prepare for the next request; False when the connection must close."""
        if self._state != _DONE or self._writer is None or not self._writer.done or not self._keep_alive:
            return False
        self._state = _HEAD
        self._writer = None
        self._expect = False
        self._method = b""
        return True
