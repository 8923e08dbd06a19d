"""A faster HTTP/1.1 server codec, held to h11's behaviour by differential tests.

h11 is the reference codec: strict, readable, and about half of the proxy's CPU per
request. This codec implements the same :class:`~meshcore.http.codec.ServerCodec`
interface with fewer layers (one buffer, bytes methods that run in C, no event objects
beyond ours), with the same strictness: everything the h11 codec rejects it rejects with
the same status (tests/test_fast_h1.py checks this on generated and mutated requests).
Select it with ``codec: fast`` in the connection manager's config.
"""

from __future__ import annotations

import re
from typing import Any

from meshcore.errors import ProtocolError
from meshcore.http.codec import (
    CLOSED,
    NEED_DATA,
    Data,
    EndOfMessage,
    Informational,
    RawHeaders,
    RequestHead,
    ResponseHead,
    ServerEvent,
)

__all__ = ["FastClientCodec", "FastServerCodec"]

_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_REQUEST_LINE = re.compile(rb"([-!#$%&'*+.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP/([0-9]\.[0-9])")
# h11's field-content: runs of anything but NUL and whitespace, joined by spaces or tabs.
_FIELD_VALUE = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;.*)?[ \t]*")
_MAX_CHUNK_LINE = 4096
_BLANK_LINE = re.compile(rb"\n\r?\n")
_FOLD = re.compile(rb"[ \t]+")
_REASONS = {
    100: b"Continue", 101: b"Switching Protocols", 200: b"OK", 201: b"Created", 202: b"Accepted",
    204: b"No Content", 206: b"Partial Content", 301: b"Moved Permanently", 302: b"Found",
    303: b"See Other", 304: b"Not Modified", 307: b"Temporary Redirect", 308: b"Permanent Redirect",
    400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
    405: b"Method Not Allowed", 408: b"Request Timeout", 413: b"Content Too Large",
    429: b"Too Many Requests", 431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
    501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}  # fmt: skip

# States of the request side.
_HEAD, _LENGTH, _CHUNK_SIZE_LINE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _DONE, _SWITCHED = range(8)


def _bad(message: str, status: int = 400) -> ProtocolError:
    return ProtocolError(message, status=status)


def _trailer_fields(lines: list[bytes]) -> RawHeaders:
    """Trailer lines as h11 decodes them: unfold, validate, normalise the framing fields."""
    unfolded: list[bytes] = []
    for line in lines:
        fold = _FOLD.match(line)
        if fold is not None:
            if not unfolded:
                msg = "continuation line at start of headers"
                raise _bad(msg)
            unfolded[-1] += b" " + line[fold.end() :]
        else:
            unfolded.append(line)
    fields: RawHeaders = []
    length: bytes | None = None
    for line in unfolded:
        name, colon, value = line.partition(b":")
        value = value.strip(b" \t")
        if not colon or _TOKEN.fullmatch(name) is None or _FIELD_VALUE.fullmatch(value) is None:
            msg = f"illegal header line: {line[:80]!r}"
            raise _bad(msg)
        name = name.lower()
        if name == b"content-length":
            lengths = {part.strip() for part in value.split(b",")}
            if len(lengths) != 1:
                msg = "conflicting Content-Length headers"
                raise _bad(msg)
            value = lengths.pop()
            if not value.isdigit() or not value.isascii():
                msg = "bad Content-Length"
                raise _bad(msg)
            if length is not None:
                if length != value:
                    msg = "conflicting Content-Length headers"
                    raise _bad(msg)
                continue
            length = value
        elif name == b"transfer-encoding":
            value = value.lower()
            if value != b"chunked" or any(n == b"transfer-encoding" for n, _ in fields):
                msg = "Only Transfer-Encoding: chunked is supported"
                raise _bad(msg, 501)
        fields.append((name, value))
    return fields


def _parse_chunked(codec: Any, max_trailers: int) -> Any:
    """Chunked body parsing shared by both codecs (state lives on ``codec``)."""
    buffer = codec._buffer
    while True:
        state = codec._state
        if state == _CHUNK_SIZE_LINE:
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > _MAX_CHUNK_LINE:
                    msg = "chunk header too long"
                    raise _bad(msg)
                return codec._need()
            match = _CHUNK_SIZE.fullmatch(buffer, 0, end)
            if match is None:
                msg = f"illegal chunk header: {bytes(buffer[:end])[:40]!r}"
                raise _bad(msg)
            size = int(match[1], 16)
            del buffer[: end + 2]
            if size == 0:
                codec._state = _TRAILERS
            else:
                codec._remaining = size
                codec._state = _CHUNK_DATA
        elif state == _CHUNK_DATA:
            if not buffer:
                return codec._need()
            take = min(codec._remaining, len(buffer))
            data = bytes(buffer[:take])
            del buffer[:take]
            codec._remaining -= take
            if codec._remaining == 0:
                codec._state = _CHUNK_CRLF
            return Data(data)
        elif state == _CHUNK_CRLF:
            if len(buffer) < 2:
                return codec._need()
            if buffer[:2] != b"\r\n":
                msg = f"malformed chunk footer: {bytes(buffer[:2])!r} (expected CRLF)"
                raise _bad(msg)
            del buffer[:2]
            codec._state = _CHUNK_SIZE_LINE
        elif state == _TRAILERS:
            # As h11 reads trailers: lines end in LF or CRLF, obs-fold is unfolded.
            if buffer[:1] == b"\n" or buffer[:2] == b"\r\n":
                del buffer[: 1 if buffer[:1] == b"\n" else 2]
                lines: list[bytes] = []
            else:
                match = _BLANK_LINE.search(buffer)
                if match is None:
                    if len(buffer) > max_trailers:
                        msg = "trailers too large"
                        raise _bad(msg, 431)
                    return codec._need()
                block = bytes(buffer[: match.start()])
                del buffer[: match.end()]
                lines = [line[:-1] if line.endswith(b"\r") else line for line in block.split(b"\n")]
            codec._trailers = _trailer_fields(lines)
            codec._state = _DONE
            codec._remaining = -1
            return codec.next_event()
        else:  # pragma: no cover - states are exhaustive
            return NEED_DATA


class FastServerCodec:
    """Downstream HTTP/1.1: requests in, responses out (same contract as H11ServerCodec)."""

    __slots__ = (
        "_buffer",
        "_chunked_out",
        "_closed",
        "_expect",
        "_head_method",
        "_keep_alive",
        "_max_head",
        "_out_remaining",
        "_out_state",
        "_remaining",
        "_state",
        "_trailers",
        "_version",
    )

    def __init__(self, *, max_head_size: int = 60 * 1024) -> None:
        self._max_head = max_head_size
        self._buffer = bytearray()
        self._closed = False
        self._state = _HEAD
        self._out_state = 0  # 0 idle, 1 body, 2 done
        self._reset_message()

    def _reset_message(self) -> None:
        self._remaining = 0
        self._trailers: RawHeaders = []
        self._expect = False
        self._keep_alive = True
        self._head_method = b""
        self._version = b"1.1"
        self._chunked_out = False
        self._out_remaining: int | None = None

    # -- receiving ------------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        if data:
            self._buffer += data
        else:
            self._closed = True

    def next_event(self) -> ServerEvent:
        state = self._state
        if state == _HEAD:
            return self._parse_head()
        if state == _LENGTH:
            if not self._buffer:
                return self._need()
            take = min(self._remaining, len(self._buffer))
            data = bytes(self._buffer[:take])
            del self._buffer[:take]
            self._remaining -= take
            if self._remaining == 0:
                self._state = _DONE
                self._remaining = -1  # the EndOfMessage comes next
            self._expect = False
            return Data(data)
        if state == _DONE:
            if self._remaining == -1:  # the end event of a body-less or finished message
                self._remaining = 0
                return EndOfMessage(self._trailers or None)
            return NEED_DATA  # paused until start_next_cycle (pipelining)
        if state == _SWITCHED:
            return NEED_DATA
        return self._parse_chunked()

    def _need(self) -> ServerEvent:
        if self._closed:
            msg = "peer closed connection without sending complete message body"
            raise _bad(msg)
        return NEED_DATA

    def _parse_head(self) -> ServerEvent:
        buffer = self._buffer
        # h11 tolerates empty lines before a request line.
        while buffer[:2] == b"\r\n":
            del buffer[:2]
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > self._max_head:
                msg = f"request head larger than {self._max_head} bytes"
                raise _bad(msg, 431)
            if b"\n\n" in buffer:
                msg = "bare LF line ending in request head"
                raise _bad(msg)
            if self._closed:
                if buffer:
                    msg = "peer unexpectedly closed connection"
                    raise _bad(msg)
                return CLOSED
            return NEED_DATA
        if end + 4 > self._max_head:
            msg = f"request head larger than {self._max_head} bytes"
            raise _bad(msg, 431)
        head = bytes(buffer[:end])
        del buffer[: end + 4]
        if head.count(b"\n") != head.count(b"\r\n"):
            msg = "bare LF line ending in request head"
            raise _bad(msg)
        lines = head.split(b"\r\n")
        if any(line[:1] in (b" ", b"\t") for line in lines[1:]):
            msg = "obsolete line folding (obs-fold) in request headers"
            raise _bad(msg)
        match = _REQUEST_LINE.fullmatch(lines[0])
        if match is None:
            msg = f"illegal request line: {lines[0][:80]!r}"
            raise _bad(msg)
        method, target, version = match.groups()
        headers: RawHeaders = []
        length: bytes | None = None
        chunked = host = False
        connection = b""
        fields = []
        for line in lines[1:]:  # syntax first, for every line (as h11 does) ...
            name, colon, value = line.partition(b":")
            value = value.strip(b" \t")
            if not colon or _TOKEN.fullmatch(name) is None or _FIELD_VALUE.fullmatch(value) is None:
                msg = f"illegal header line: {line[:80]!r}"
                raise _bad(msg)
            fields.append((name.lower(), value))
        for name, value in fields:  # ... then the meaning of the framing fields
            if name == b"content-length":
                lengths = {part.strip() for part in value.split(b",")}
                if len(lengths) != 1:
                    msg = "conflicting Content-Length headers"
                    raise _bad(msg)
                value = lengths.pop()
                if not value.isdigit() or not value.isascii():
                    msg = "bad Content-Length"
                    raise _bad(msg)
                if length is not None:
                    if length != value:
                        msg = "conflicting Content-Length headers"
                        raise _bad(msg)
                    continue  # the same length again: h11 keeps one
                length = value
            elif name == b"transfer-encoding":
                if chunked:
                    msg = "multiple Transfer-Encoding headers"
                    raise _bad(msg, 501)
                value = value.lower()
                if value != b"chunked":
                    msg = "Only Transfer-Encoding: chunked is supported"
                    raise _bad(msg, 501)
                chunked = True
            elif name == b"host":
                if host:
                    msg = "Found multiple Host: headers"
                    raise _bad(msg)
                host = True
            elif name == b"connection":
                connection = value.lower() if not connection else connection + b"," + value.lower()
            elif name == b"expect" and value.lower() == b"100-continue":
                self._expect = version == b"1.1"
            headers.append((name, value))
        if version == b"1.1" and not host:
            msg = "Missing mandatory Host: header"
            raise _bad(msg)
        # In h11's order: the version and the CL+TE checks come after the fields are read.
        if version not in (b"1.0", b"1.1"):
            msg = f"HTTP/{version.decode()} is not supported (HTTP/1.0 and HTTP/1.1 are)"
            raise _bad(msg, 505)
        if chunked and length is not None:
            msg = "request has both Content-Length and Transfer-Encoding"
            raise _bad(msg)
        tokens = {t.strip() for t in connection.split(b",")}
        self._keep_alive = b"close" not in tokens and version == b"1.1"  # as h11: no keep-alive for 1.0
        self._head_method = method
        self._version = version
        if chunked:
            self._state = _CHUNK_SIZE_LINE
        elif length is not None and int(length):
            self._state = _LENGTH
            self._remaining = int(length)
        else:
            self._state = _DONE
            self._remaining = -1
            self._expect = False
        return RequestHead(method, target, headers, version)

    def _parse_chunked(self) -> ServerEvent:
        event: ServerEvent = _parse_chunked(self, self._max_head)
        if type(event) is Data:
            self._expect = False
        return event

    @property
    def expects_continue(self) -> bool:
        return self._expect and self._out_state == 0

    # -- sending --------------------------------------------------------------------------------

    def send_informational(self, status: int, headers: RawHeaders) -> bytes:
        if status == 101:
            self._state = _SWITCHED
        elif status == 100:
            self._expect = False
        return self._head(status, headers)

    def _head(self, status: int, headers: RawHeaders) -> bytes:
        reason = _REASONS.get(status, b"")
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        for name, value in headers:
            if b"\r" in name or b"\n" in name or b":" in name or b"\r" in value or b"\n" in value:
                msg = "cannot send response: illegal header"
                raise ProtocolError(msg, status=502, remote=False)
            parts.append(name + b": " + value + b"\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def send_response_head(self, status: int, headers: RawHeaders) -> bytes:
        no_body = self._head_method == b"HEAD" or status in (204, 304) or status < 200
        length: int | None = None
        out: RawHeaders = []
        close = not self._keep_alive
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-length":
                if not value.isdigit():
                    msg = "cannot send response: bad Content-Length"
                    raise ProtocolError(msg, status=502, remote=False)
                length = int(value)
                continue  # framing is written below, once
            elif lower == b"transfer-encoding":
                continue  # framing is ours to choose
            elif lower == b"connection" and b"close" in value.lower():
                close = True
                continue
            out.append((lower, value))
        if no_body:
            if length is not None:  # describes the entity, not this message: pass it on
                out.append((b"content-length", str(length).encode()))
            self._out_remaining = 0
        elif length is not None:
            out.append((b"content-length", str(length).encode()))
            self._out_remaining = length
        elif self._version == b"1.1":
            out.append((b"transfer-encoding", b"chunked"))
            self._chunked_out = True
        else:
            close = True  # HTTP/1.0 without a length: the close delimits the body
        if close:
            self._keep_alive = False
            out.append((b"connection", b"close"))
        self._out_state = 1
        self._expect = False
        return self._head(status, out)

    def send_data(self, data: bytes) -> bytes:
        if self._chunked_out:
            return b"%x\r\n%s\r\n" % (len(data), data) if data else b""
        if self._out_remaining is not None:
            if len(data) > self._out_remaining:
                msg = "cannot send response: body longer than its Content-Length"
                raise ProtocolError(msg, status=502, remote=False)
            self._out_remaining -= len(data)
        return data

    def send_end(self, trailers: RawHeaders | None = None) -> bytes:
        self._out_state = 2
        if self._chunked_out:
            block = b"".join(n + b": " + v + b"\r\n" for n, v in trailers or ())
            return b"0\r\n" + block + b"\r\n"
        if self._out_remaining:
            msg = "cannot end response: body shorter than its Content-Length"
            self._keep_alive = False
            raise ProtocolError(msg, status=502, remote=False)
        return b""

    def start_next_cycle(self) -> bool:
        if self._state != _DONE or self._out_state != 2 or not self._keep_alive:
            return False
        self._state = _HEAD
        self._out_state = 0
        self._reset_message()
        return True

    @property
    def request_complete(self) -> bool:
        """The whole current request, body included, has been received."""
        return self._state == _DONE and self._remaining == 0

    @property
    def response_started(self) -> bool:
        """A response head has been sent for the current request."""
        return self._out_state != 0

    @property
    def trailing_data(self) -> bytes:
        """Bytes the client sent after the request that switched protocols (an upgrade)."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


_STATUS_LINE = re.compile(rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: ((?:[ \t]|[^\x00\s])*))?")
_BODY_NONE, _BODY_LENGTH, _BODY_CHUNKED, _BODY_CLOSE = range(4)


class FastClientCodec:
    """Upstream HTTP/1.1: requests out, responses in (same contract as H11ClientCodec)."""

    __slots__ = (
        "_buffer",
        "_closed",
        "_framing",
        "_keep_alive",
        "_method",
        "_out_chunked",
        "_out_done",
        "_out_remaining",
        "_remaining",
        "_state",
        "_switched",
        "_trailers",
        "_upgrading",
    )

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._closed = False
        self._reset()

    def _reset(self) -> None:
        self._state = _HEAD
        self._method = b""
        self._keep_alive = True
        self._framing = _BODY_NONE
        self._remaining = 0
        self._trailers: RawHeaders = []
        self._out_chunked = False
        self._out_remaining = 0
        self._out_done = False
        self._switched = False
        self._upgrading = False

    # -- sending --------------------------------------------------------------------------------

    def send_request_head(self, method: bytes, target: bytes, headers: RawHeaders) -> bytes:
        lines = [method + b" " + target + b" HTTP/1.1\r\n"]
        length = chunked = None
        upgrade = connection_upgrade = False
        for name, value in headers:
            if _TOKEN.fullmatch(name) is None or _FIELD_VALUE.fullmatch(value) is None:
                msg = f"cannot forward request: illegal header {name[:40]!r}"
                raise ProtocolError(msg, status=400, remote=False)
            lower = name.lower()
            if lower == b"content-length":
                length = int(value) if value.isdigit() else None
            elif lower == b"transfer-encoding":
                chunked = value.lower() == b"chunked"
            elif lower == b"connection":
                tokens = {t.strip() for t in value.lower().split(b",")}
                self._keep_alive = self._keep_alive and b"close" not in tokens
                connection_upgrade = connection_upgrade or b"upgrade" in tokens
            elif lower == b"upgrade":
                upgrade = True
            lines.append(name + b": " + value + b"\r\n")
        self._upgrading = upgrade and connection_upgrade
        if _TOKEN.fullmatch(method) is None or not target or b" " in target:
            msg = "cannot forward request: illegal request line"
            raise ProtocolError(msg, status=400, remote=False)
        self._method = method
        self._out_chunked = bool(chunked)
        self._out_remaining = 0 if chunked else (length or 0)
        lines.append(b"\r\n")
        return b"".join(lines)

    def send_data(self, data: bytes) -> bytes:
        if self._out_chunked:
            return b"%x\r\n%s\r\n" % (len(data), data) if data else b""
        if len(data) > self._out_remaining:
            msg = "cannot forward request: body longer than its Content-Length"
            raise ProtocolError(msg, status=400, remote=False)
        self._out_remaining -= len(data)
        return data

    def send_end(self, trailers: RawHeaders | None = None) -> bytes:
        self._out_done = True
        if self._out_chunked:
            block = b"".join(n + b": " + v + b"\r\n" for n, v in trailers or ())
            return b"0\r\n" + block + b"\r\n"
        if self._out_remaining:
            msg = "cannot end request: body shorter than its Content-Length"
            raise ProtocolError(msg, status=400, remote=False)
        return b""

    # -- receiving ------------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        if data:
            self._buffer += data
        else:
            self._closed = True

    def next_event(self) -> Any:
        if self._switched is True:
            return NEED_DATA
        state = self._state
        if state == _HEAD:
            return self._parse_head()
        if state == _DONE:
            if self._remaining == -1:
                self._remaining = 0
                return EndOfMessage(self._trailers or None)
            return CLOSED if self._closed and not self._keep_alive else NEED_DATA
        if state == _LENGTH:
            return self._read_length()
        return self._read_chunked()

    def _parse_head(self) -> Any:
        buffer = self._buffer
        if buffer[:1] == b"\n" or buffer[:2] == b"\r\n":
            msg = "upstream: no response line received"
            raise ProtocolError(msg, status=502)
        match = _BLANK_LINE.search(buffer)
        if match is None:
            if buffer and buffer[0] < 0x21:  # noqa: PLR2004 - no status line starts below "!"
                msg = "upstream: illegal status line"
                raise ProtocolError(msg, status=502)
            if len(buffer) > 64 * 1024:
                msg = "upstream: response head too large"
                raise ProtocolError(msg, status=502)
            if self._closed:
                if buffer or self._switched is None:
                    msg = "upstream: peer unexpectedly closed connection"
                    raise ProtocolError(msg, status=502)
                return CLOSED
            return NEED_DATA
        block = bytes(buffer[: match.start()])
        del buffer[: match.end()]
        lines = [line[:-1] if line.endswith(b"\r") else line for line in block.split(b"\n")]
        status_line = _STATUS_LINE.fullmatch(lines[0])
        if status_line is None:
            msg = f"upstream: illegal status line: {lines[0][:80]!r}"
            raise ProtocolError(msg, status=502)
        try:
            headers = _trailer_fields(lines[1:])  # the same rules: unfold, validate, normalise
        except ProtocolError as err:
            raise ProtocolError(f"upstream: {err}", status=502) from err
        version, status_text, reason = status_line.groups()
        status = int(status_text)
        if status < 200:
            if status == 101:
                if not self._upgrading:
                    msg = "upstream: 101 Switching Protocols to a request that asked for no upgrade"
                    raise ProtocolError(msg, status=502)
                self._switched = True
            else:
                self._switched = None  # an interim answer: closing now would be mid-response
            return Informational(status, headers)
        tokens = set()
        length = chunked = None
        for name, value in headers:
            if name == b"connection":
                tokens.update(t.strip() for t in value.lower().split(b","))
            elif name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = True
        if b"close" in tokens or version != b"1.1":
            self._keep_alive = False
        if self._method == b"HEAD" or status in (204, 304):
            self._state, self._remaining = _DONE, -1
        elif chunked:
            self._state = _CHUNK_SIZE_LINE
        elif length is not None:
            if length:
                self._state, self._remaining = _LENGTH, length
            else:
                self._state, self._remaining = _DONE, -1
        else:
            self._state = _LENGTH
            self._remaining = -2  # until the upstream closes
            self._keep_alive = False
        return ResponseHead(status, headers, version, reason or b"")

    def _read_length(self) -> Any:
        buffer = self._buffer
        if self._remaining == -2:  # close-delimited
            if buffer:
                data = bytes(buffer)
                buffer.clear()
                return Data(data)
            if self._closed:
                self._state, self._remaining = _DONE, -1
                return self.next_event()
            return NEED_DATA
        if not buffer:
            if self._closed:
                msg = "upstream: peer closed connection without sending complete message body"
                raise ProtocolError(msg, status=502)
            return NEED_DATA
        take = min(self._remaining, len(buffer))
        data = bytes(buffer[:take])
        del buffer[:take]
        self._remaining -= take
        if self._remaining == 0:
            self._state, self._remaining = _DONE, -1
        return Data(data)

    def _read_chunked(self) -> Any:
        try:
            return _parse_chunked(self, 64 * 1024)
        except ProtocolError as err:
            raise ProtocolError(f"upstream: {err}", status=502) from err

    def _need(self) -> Any:
        if self._closed:
            msg = "peer closed connection without sending complete message body"
            raise _bad(msg)
        return NEED_DATA

    def start_next_cycle(self) -> bool:
        if self._state != _DONE or self._remaining != 0 or not self._out_done or not self._keep_alive:
            return False
        buffered = self._buffer
        self._reset()
        self._buffer = buffered
        return True

    @property
    def trailing_data(self) -> bytes:
        """Bytes the upstream sent after its 101 Switching Protocols head."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data
