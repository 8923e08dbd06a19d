"""The fast HTTP/1.1 client codec: requests out, responses in (as H11ClientCodec)."""

from __future__ import annotations

import re

from meshcore.errors import ProtocolError
from meshcore.http.codec import (
    CLOSED,
    NEED_DATA,
    NOTHING_CHECKED,
    ClientEvent,
    EndOfMessage,
    Informational,
    RawHeaders,
    ResponseHead,
)
from meshcore.http.h1fast._common import (
    EMPTY_BODY,
    TOKEN,
    BodyWriter,
    ChunkedReader,
    CloseReader,
    LengthReader,
    field_block,
    framing,
    write_head,
)
from meshcore.http.h1strict import MAX_INFORMATIONAL, block_end, check_response_framing

__all__ = ["FastClientCodec"]

_STATUS_LINE = re.compile(rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: ((?:[ \t]|[^\x00\s])*))?")
_SEND_ERROR = "cannot forward request"
_FIRST_PRINTABLE = 0x21  # no status line starts below "!"
_HEAD, _BODY, _DONE, _SWITCHED = range(4)


def _upstream(err: ProtocolError) -> ProtocolError:
    return ProtocolError(f"upstream: {err}", status=502)


class FastClientCodec:
    """Upstream HTTP/1.1: requests out, responses in (the contract of H11ClientCodec)."""

    __slots__ = (
        "_buffer",
        "_closed",
        "_interim",
        "_keep_alive",
        "_max_head",
        "_method",
        "_reader",
        "_scanned",
        "_state",
        "_upgrading",
        "_writer",
    )

    def __init__(self, *, max_head_size: int = 60 * 1024) -> None:
        self._max_head = max_head_size
        self._buffer = bytearray()
        self._closed = False
        self._scanned = 0  # bytes of a partial head already checked
        self._reset()

    def _reset(self) -> None:
        self._state = _HEAD
        self._method = b""
        self._keep_alive = True
        self._upgrading = False
        self._interim = 0  # 1xx responses so far: a close before the final answer is an error
        self._reader: LengthReader | ChunkedReader | CloseReader = EMPTY_BODY
        self._writer: BodyWriter | None = None

    # -- requests out ---------------------------------------------------------------------------

    def send_request_head(
        self, method: bytes, target: bytes, headers: RawHeaders, *, checked: range = NOTHING_CHECKED
    ) -> bytes:
        """Bytes for a request line and headers; the body framing follows the headers.

        The pairs at the indexes in ``checked`` are not checked again (see ClientCodec).
        """
        if TOKEN.fullmatch(method) is None or not target or b" " in target:
            msg = f"{_SEND_ERROR}: illegal request line"
            raise ProtocolError(msg, status=400, remote=False)
        head = write_head(
            method + b" " + target + b" HTTP/1.1\r\n", headers, error=_SEND_ERROR, status=400, checked=checked
        )
        length: int | None = None
        chunked = upgrade = connection_upgrade = False
        for name, value in headers:
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
        self._upgrading = upgrade and connection_upgrade
        self._method = method
        # Positional: a class called with keywords builds a dict for them, once per request.
        self._writer = BodyWriter(chunked, 0 if chunked else (length or 0), _SEND_ERROR, 400)
        return head

    def send_data(self, data: bytes) -> bytes:
        """Bytes for a chunk of request body."""
        assert self._writer is not None  # noqa: S101 - the head goes first
        return self._writer.data(data)

    def send_end(self, trailers: RawHeaders | None = None) -> bytes:
        """Bytes that end the request body."""
        assert self._writer is not None  # noqa: S101 - the head goes first
        return self._writer.end(trailers)

    # -- responses in ---------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes from the upstream; ``b""`` means it closed its side."""
        if data:
            self._buffer += data
        else:
            self._closed = True

    def next_event(self) -> ClientEvent:
        """The next event, NEED_DATA or CLOSED; ProtocolError (502) on a bad response."""
        state = self._state
        if state == _HEAD:
            if not self._buffer and not self._closed:  # nothing received yet: nothing to scan
                return NEED_DATA
            return self._read_head()
        if state == _BODY:
            try:
                event = self._reader.read(self._buffer, self._closed)
            except ProtocolError as err:
                raise _upstream(err) from err
            if type(event) is EndOfMessage:
                self._state = _DONE
            return event
        if state == _DONE and self._closed and not self._keep_alive:
            return CLOSED
        return NEED_DATA

    def _read_head(self) -> ClientEvent:
        buffer = self._buffer
        if buffer[:1] == b"\n" or buffer[:2] == b"\r\n":
            msg = "upstream: no response line received"
            raise ProtocolError(msg, status=502)
        try:
            stop = block_end(
                buffer, self._max_head, what="response head", status=502, too_large=502, start=self._scanned
            )
        except ProtocolError as err:
            raise _upstream(err) from err
        if stop < 0:
            self._scanned = len(buffer)
            return self._incomplete_head()
        self._scanned = 0
        line_end = buffer.find(b"\r\n", 0, stop)  # the head ends in CRLF CRLF: found
        first = bytes(buffer[:line_end])
        fields = bytes(buffer[line_end + 2 : stop - 2])  # every field line with its CRLF
        del buffer[:stop]
        status_line = _STATUS_LINE.fullmatch(first)
        if status_line is None:
            msg = f"upstream: illegal status line: {first[:80]!r}"
            raise ProtocolError(msg, status=502)
        try:
            headers, length, chunked = framing(field_block(fields))
        except ProtocolError as err:
            raise _upstream(err) from err
        version, status_text, reason = status_line.groups()
        status = int(status_text)
        check_response_framing(
            status, version, length_digits=None if length is None else len(length), chunked=chunked
        )
        if status < 200:  # noqa: PLR2004 - interim answers
            return self._interim_head(status, headers)
        return self._final_head(status, headers, version, reason or b"", length, chunked)

    def _final_head(
        self,
        status: int,
        headers: RawHeaders,
        version: bytes,
        reason: bytes,
        length: bytes | None,
        chunked: bool,
    ) -> ClientEvent:
        """A final response head: choose its body reader and whether the connection stays."""
        close = version < b"1.1"  # as h11 compares versions
        for name, value in headers:
            if name == b"connection":
                for token in value.lower().split(b","):
                    if token.strip() == b"close":
                        close = True
        if close:
            self._keep_alive = False
        if self._method == b"HEAD" or status in (204, 304):
            self._reader = EMPTY_BODY
        elif chunked:
            self._reader = ChunkedReader(self._max_head)
        elif length is not None:
            self._reader = LengthReader(int(length))
        else:
            self._reader = CloseReader()
            self._keep_alive = False
        self._state = _BODY
        return ResponseHead(status, headers, version, reason)

    def _incomplete_head(self) -> ClientEvent:
        buffer = self._buffer
        if buffer and buffer[0] < _FIRST_PRINTABLE:
            msg = "upstream: illegal status line"
            raise ProtocolError(msg, status=502)
        if not self._closed:
            return NEED_DATA
        if buffer or self._interim:
            msg = "upstream: peer unexpectedly closed connection"
            raise ProtocolError(msg, status=502)
        return CLOSED

    def _interim_head(self, status: int, headers: RawHeaders) -> ClientEvent:
        self._interim += 1
        if self._interim > MAX_INFORMATIONAL:
            msg = f"upstream: more than {MAX_INFORMATIONAL} interim (1xx) responses"
            raise ProtocolError(msg, status=502)
        if status == 101:  # noqa: PLR2004 - Switching Protocols
            if not self._upgrading:
                msg = "upstream: 101 Switching Protocols to a request that asked for no upgrade"
                raise ProtocolError(msg, status=502)
            self._state = _SWITCHED
        return Informational(status, headers)

    def start_next_cycle(self) -> bool:
        """Prepare for the next request; False when the connection cannot be reused."""
        writer = self._writer
        if self._state != _DONE or writer is None or not writer.done or not self._keep_alive:
            return False
        if self._buffer or self._closed:
            # Bytes beyond the response are a framing error (they would be read as the answer
            # to the next request); a closed connection carries nothing more.
            return False
        self._reset()
        return True

    @property
    def trailing_data(self) -> bytes:
        """Bytes the upstream sent after its 101 Switching Protocols head."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data
