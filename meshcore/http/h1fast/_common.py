"""Readers and writers shared by both sides: field lines, framing, bodies.

Every rule here is h11's (the reference), written against bytes methods that run in C.
"""

from __future__ import annotations

import re
from operator import itemgetter

from meshcore.errors import ProtocolError
from meshcore.http.codec import (
    END_OF_MESSAGE,
    NEED_DATA,
    NOTHING_CHECKED,
    BodyEvent,
    Data,
    EndOfMessage,
    RawHeaders,
)
from meshcore.http.h1strict import block_end
from meshcore.http.semantics import REASONS

__all__ = [
    "EMPTY_BODY",
    "REASONS",
    "BodyWriter",
    "ChunkedReader",
    "CloseReader",
    "LengthReader",
    "bad",
    "field_block",
    "field_lines",
    "framing",
    "write_head",
]

TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
# h11's field-content: runs of anything but NUL and whitespace, joined by spaces or tabs.
FIELD_VALUE = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")
# Every name (value) of a header block at once, joined by "\n", which neither may hold: one
# regex call per block instead of one per field (the per-field check then names the culprit).
# The join must hold exactly one "\n" per seam, or a field holding "\n" would pass as two.
_TOKENS = re.compile(rb"%s(?:\n%s)*" % (TOKEN.pattern, TOKEN.pattern))
_FIELD_VALUES = re.compile(rb"%s(?:\n%s)*" % (FIELD_VALUE.pattern, FIELD_VALUE.pattern))
# A whole header section at once, each line ending in CRLF, as received (optional whitespace
# around the value) and as written (": " then the value): one C-level pass over the bytes
# instead of a Python loop over the fields. Values hold no CR or LF (FIELD_VALUE excludes
# all whitespace but inner spaces and tabs), so every line ends at its own CRLF.
_LINE_IN = rb"(%s):[ \t]*(%s)[ \t]*\r\n" % (TOKEN.pattern, FIELD_VALUE.pattern)
# The same lines, each captured whole too: matches that add up to the whole block tile it
# (they cannot overlap, and no line's match can run into the next: a value holds no CRLF),
# so one findall both checks and splits a block (field_block).
_WHOLE_LINES_IN = re.compile(rb"(%s)" % _LINE_IN)
_BLOCK_OUT = re.compile(rb"(?:%s: %s\r\n)*" % (TOKEN.pattern, FIELD_VALUE.pattern))


def _all_valid(names: list[bytes], values: list[bytes]) -> bool:
    """Whether every name is a token and every value a field value (:data:`TOKEN`, :data:`FIELD_VALUE`)."""
    joined_names, joined_values = b"\n".join(names), b"\n".join(values)
    seams = len(names) - 1
    return (
        joined_names.count(b"\n") == seams
        and joined_values.count(b"\n") == seams
        and _TOKENS.fullmatch(joined_names) is not None
        and _FIELD_VALUES.fullmatch(joined_values) is not None
    )


_first = itemgetter(0)
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;.*)?[ \t]*")
_MAX_CHUNK_LINE = 4096
_H11_MAX_DIGITS = 20  # h11 refuses longer lengths as it parses (stricter limits come later)
_CRLF = b"\r\n"


def bad(message: str, status: int = 400) -> ProtocolError:
    """A protocol error of the peer's, answered with ``status``."""
    return ProtocolError(message, status=status)


def field_lines(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    """Header (or trailer) lines checked for syntax, names lower-cased, as h11 reads them.

    obs-fold lines were refused before (:func:`~meshcore.http.h1strict.block_end`), on
    both sides: here such a line is merely illegal.
    """
    names = []
    values = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon:
            msg = f"illegal header line: {line[:80]!r}"
            raise bad(msg)
        names.append(name)
        values.append(value.strip(b" \t"))
    if not _all_valid(names, values):
        for line, name, value in zip(lines, names, values, strict=True):
            if TOKEN.fullmatch(name) is None or FIELD_VALUE.fullmatch(value) is None:
                msg = f"illegal header line: {line[:80]!r}"
                raise bad(msg)
    return [(name.lower(), value) for name, value in zip(names, values, strict=True)]


def field_block(block: bytes) -> list[tuple[bytes, bytes]]:
    """:func:`field_lines` for a header section given whole, every line ending in CRLF.

    The same fields, or the same error: a section that is not valid as a whole goes
    through :func:`field_lines`, which names the culprit.
    """
    found = _WHOLE_LINES_IN.findall(block)
    if sum(map(len, map(_first, found))) == len(block):
        return [(name.lower(), value) for _, name, value in found]
    return field_lines(block.split(_CRLF)[:-1])


def _content_length(value: bytes) -> bytes:
    if b"," in value:  # a list: the same value repeated is one length (as h11)
        lengths = {part.strip() for part in value.split(b",")}
        if len(lengths) != 1:
            msg = "conflicting Content-Length headers"
            raise bad(msg)
        single = lengths.pop()
    else:
        single = value.strip()
    if not single.isdigit() or not single.isascii() or len(single) > _H11_MAX_DIGITS:
        msg = "bad Content-Length"
        raise bad(msg)
    return single


def framing(fields: list[tuple[bytes, bytes]]) -> tuple[RawHeaders, bytes | None, bool]:
    """Fields with Content-Length and Transfer-Encoding validated and normalised (as h11).

    Returns the fields (a repeated identical Content-Length kept once), the length, and
    whether the body is chunked.
    """
    out: RawHeaders = []
    length: bytes | None = None
    chunked = False
    for name, value in fields:
        if name == b"content-length":
            single = _content_length(value)
            if length is not None:
                if length != single:
                    msg = "conflicting Content-Length headers"
                    raise bad(msg)
                continue  # the same length again: h11 keeps one
            length = single
            out.append((name, single))
        elif name == b"transfer-encoding":
            if chunked:
                msg = "multiple Transfer-Encoding headers"
                raise bad(msg, 501)
            if value.lower() != b"chunked":
                msg = "Only Transfer-Encoding: chunked is supported"
                raise bad(msg, 501)
            chunked = True
            out.append((name, b"chunked"))
        else:
            out.append((name, value))
    return out, length, chunked


# -- bodies in ------------------------------------------------------------------------------


class LengthReader:
    """A body of known length (zero included)."""

    __slots__ = ("remaining",)

    def __init__(self, length: int) -> None:
        self.remaining = length

    def read(self, buffer: bytearray, closed: bool) -> BodyEvent:
        """The next Data, EndOfMessage or NEED_DATA."""
        if not self.remaining:
            return END_OF_MESSAGE
        if not buffer:
            if closed:
                msg = "peer closed connection without sending complete message body"
                raise bad(msg)
            return NEED_DATA
        take = min(self.remaining, len(buffer))
        data = bytes(buffer[:take])
        del buffer[:take]
        self.remaining -= take
        return Data(data)


EMPTY_BODY = LengthReader(0)
"""The reader of every body of length zero: it never changes (``remaining`` stays 0)."""


class CloseReader:
    """A response body delimited by the connection's close (HTTP/1.0 style)."""

    __slots__ = ()

    def read(self, buffer: bytearray, closed: bool) -> BodyEvent:
        """The next Data, EndOfMessage (at EOF) or NEED_DATA."""
        if buffer:
            data = bytes(buffer)
            buffer.clear()
            return Data(data)
        return END_OF_MESSAGE if closed else NEED_DATA


class ChunkedReader:
    """A chunked body: size lines, data, CRLFs, then trailers."""

    __slots__ = ("max_trailers", "remaining", "scanned", "state")

    _SIZE, _DATA, _CRLF, _TRAILERS = range(4)

    def __init__(self, max_trailers: int) -> None:
        self.max_trailers = max_trailers
        self.state = self._SIZE
        self.remaining = 0
        self.scanned = 0  # bytes of a partial trailer section already checked

    def read(self, buffer: bytearray, closed: bool) -> BodyEvent:
        """The next Data, EndOfMessage (with trailers) or NEED_DATA."""
        while True:
            if self.state == self._DATA:
                if not buffer:
                    return self._need(closed)
                take = min(self.remaining, len(buffer))
                data = bytes(buffer[:take])
                del buffer[:take]
                self.remaining -= take
                if not self.remaining:
                    self.state = self._CRLF
                return Data(data)
            if self.state == self._CRLF:
                if buffer[:2] != _CRLF[: len(buffer)]:  # as h11: a wrong first byte is wrong already
                    msg = f"malformed chunk footer: {bytes(buffer[:2])!r} (expected CRLF)"
                    raise bad(msg)
                if len(buffer) < len(_CRLF):
                    return self._need(closed)
                del buffer[:2]
                self.state = self._SIZE
            elif self.state == self._SIZE:
                end = buffer.find(_CRLF)
                if end < 0:
                    if len(buffer) > _MAX_CHUNK_LINE:
                        msg = "chunk header too long"
                        raise bad(msg)
                    return self._need(closed)
                match = _CHUNK_SIZE.fullmatch(buffer, 0, end)
                if match is None:
                    msg = f"illegal chunk header: {bytes(buffer[:end])[:40]!r}"
                    raise bad(msg)
                self.remaining = int(match[1], 16)  # before the del: the match views the buffer
                del buffer[: end + 2]
                self.state = self._DATA if self.remaining else self._TRAILERS
            else:
                return self._trailers(buffer, closed)

    def _trailers(self, buffer: bytearray, closed: bool) -> BodyEvent:
        # Strict, as h1strict.TrailerScanner holds the h11 codecs: CRLF only, no obs-fold, a size
        # limit whether the section came in one read or many.
        if buffer[:2] == _CRLF:
            del buffer[:2]
            return END_OF_MESSAGE
        stop = block_end(
            buffer, self.max_trailers, what="trailers", status=400, too_large=431, start=self.scanned
        )
        if stop < 0:
            self.scanned = len(buffer)
            return self._need(closed)
        block = bytes(buffer[: stop - 4])
        del buffer[:stop]
        self.scanned = 0
        trailers = framing(field_lines(block.split(_CRLF)))[0]
        return EndOfMessage(trailers) if trailers else END_OF_MESSAGE

    @staticmethod
    def _need(closed: bool) -> BodyEvent:
        if closed:
            msg = "peer closed connection without sending complete message body"
            raise bad(msg)
        return NEED_DATA


# -- bytes out ------------------------------------------------------------------------------


def write_head(
    start_line: bytes, headers: RawHeaders, *, error: str, status: int, checked: range = NOTHING_CHECKED
) -> bytes:
    """A start line and header lines; a header that could split the message is refused.

    The pairs at the indexes in ``checked`` (a range) are known good and not checked again.
    """
    block = b"".join([name + b": " + value + _CRLF for name, value in headers])
    if not checked:
        _check_out(block, headers, error, status)
    else:
        rest = headers[: checked.start] + headers[checked.stop :]
        if rest:
            _check_out(b"".join([name + b": " + value + _CRLF for name, value in rest]), rest, error, status)
    return start_line + block + _CRLF


def _check_out(block: bytes, headers: RawHeaders, error: str, status: int) -> None:
    """Refuse ``headers`` (written as ``block``) if any of them could split the message."""
    # The block's regex alone would take a name holding ": " (b"a: b", b"v" reads as a
    # valid b"a", b"b: v"): the names are checked as tokens too. A name holding "\n" fails
    # the block's regex, so the joined names have one "\n" per seam. Nor would it refuse a
    # value holding CRLF and a header line (b"1\r\nx-injected: 1" reads as two valid
    # lines): the block must hold exactly one CRLF per field.
    if (
        block.count(_CRLF) != len(headers)
        or _BLOCK_OUT.fullmatch(block) is None
        or _TOKENS.fullmatch(b"\n".join([name for name, _ in headers])) is None
    ) and headers:  # one regex per block; then find the culprit
        for name, value in headers:
            if TOKEN.fullmatch(name) is None or FIELD_VALUE.fullmatch(value) is None:
                msg = f"{error}: illegal header {name[:40]!r}"
                raise ProtocolError(msg, status=status, remote=False)


class BodyWriter:
    """Frames an outgoing body: by length, chunked, or (responses to HTTP/1.0) until close."""

    __slots__ = ("chunked", "done", "error", "remaining", "status")

    def __init__(self, chunked: bool, length: int | None, error: str, status: int) -> None:
        self.chunked = chunked
        self.remaining = length  # None: unbounded (close-delimited)
        self.done = False
        self.error = error
        self.status = status

    def data(self, data: bytes) -> bytes:
        """Bytes for one chunk of body."""
        if self.chunked:
            return b"%x\r\n%s\r\n" % (len(data), data) if data else b""
        if self.remaining is not None:
            if len(data) > self.remaining:
                msg = f"{self.error}: body longer than its Content-Length"
                raise ProtocolError(msg, status=self.status, remote=False)
            self.remaining -= len(data)
        return data

    def end(self, trailers: RawHeaders | None) -> bytes:
        """Bytes that end the body."""
        self.done = True
        if self.chunked:
            block = b"".join([n + b": " + v + _CRLF for n, v in trailers or ()])
            if trailers:  # checked as header lines are: a trailer could split the message too
                _check_out(block, trailers, self.error, self.status)
            return b"0\r\n" + block + _CRLF
        if self.remaining:
            msg = f"{self.error}: body shorter than its Content-Length"
            raise ProtocolError(msg, status=self.status, remote=False)
        return b""
