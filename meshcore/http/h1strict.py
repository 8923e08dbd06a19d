"""HTTP/1.1 framing rules a proxy needs on top of either codec, shared so that both apply them alike.

h11 is lenient where a proxy must not be, and most of all on the upstream side: it
unfolds obs-fold and accepts bare LF in response heads and in trailers (both
directions), relays a response with both Content-Length and Transfer-Encoding, takes
any status from 100 to 999, any number of interim responses, and a complete head of
any size when it comes in one read. A proxy that passes such a message on, or reuses a
connection after one, lets one peer smuggle responses to another. The rules here close
those gaps: the h11 codecs apply them in front of h11, the fast codecs in their readers,
and the differential tests (tests/test_fast_h1.py) hold the two to one behaviour.
"""

from __future__ import annotations

import re

from meshcore.errors import ProtocolError
from meshcore.http.codec import RawHeaders

__all__ = [
    "MAX_INFORMATIONAL",
    "MAX_LENGTH_DIGITS",
    "TrailerScanner",
    "block_end",
    "check_length",
    "check_response_framing",
    "check_response_head",
]

MAX_INFORMATIONAL = 16
"""Interim (1xx) responses accepted before a final one; more is a flood (502)."""
MAX_LENGTH_DIGITS = 18
"""Digits a Content-Length may have: 10**18 bytes is beyond any body, and fits in 64 bits."""

_CRLF2 = b"\r\n\r\n"
# A LF not preceded by CR; a line that starts with whitespace (obs-fold), first line included.
_BAD_LINE = re.compile(rb"(?<!\r)\n|\n[ \t]|^[ \t]")
_SPACE_TAB = frozenset(b" \t")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,20}")
_MAX_CHUNK_LINE = 4096


def block_end(
    buffer: bytes | bytearray, max_size: int, *, what: str, status: int, too_large: int, start: int = 0
) -> int:
    """Where the head or trailer block at the start of ``buffer`` ends (past its CRLF CRLF); -1 if incomplete.

    Bare LF line endings and obs-fold lines within the size limit are refused first, then
    a block past ``max_size`` (``too_large``), complete or not: the error does not depend
    on how the bytes were split across reads. ``start`` skips bytes already checked.

    Args:
        buffer: the bytes received so far, starting with the block.
        max_size: the largest block accepted, its final CRLF CRLF included.
        what: what the block is, for messages ("response head", "trailers").
        status: the status of a syntax error.
        too_large: the status of a block over ``max_size``.
        start: bytes at the start of ``buffer`` already checked by an earlier call.
    """
    # Rescan the last bytes already checked: a CRLF CRLF, or a bare LF's CR, may straddle reads.
    checked = start - 1 if start > 0 else 0
    end = buffer.find(_CRLF2, start - 3 if start > 3 else 0)  # noqa: PLR2004 - len(CRLF CRLF) - 1
    stop = len(buffer) if end < 0 else end + 4
    limit = min(max_size, stop)
    # The usual block has neither: C-level counts and finds make sure of it, the regex (a slow
    # scan, most of a head's parsing cost) runs only when they find something to look at.
    found = None
    if (
        buffer.count(b"\n", checked, limit) != buffer.count(b"\r\n", checked, limit)
        or buffer.find(b"\n ", checked, limit) >= 0
        or buffer.find(b"\n\t", checked, limit) >= 0
        or (checked == 0 and limit > 0 and buffer[0] in _SPACE_TAB)
    ):
        found = _BAD_LINE.search(buffer, checked, limit)
    if found is not None and found.start() >= checked:
        text = found.group()
        if text == b"\n":
            msg = f"bare LF line ending in {what}"
        else:
            msg = f"obsolete line folding (obs-fold) in {what}"
        raise ProtocolError(msg, status=status)
    if stop > max_size:
        msg = f"{what} larger than {max_size} bytes"
        raise ProtocolError(msg, status=too_large)
    return stop if end >= 0 else -1


def check_length(headers: RawHeaders, *, status: int) -> None:
    """Refuse a Content-Length (already validated as digits) longer than any body can be."""
    for name, value in headers:
        if name == b"content-length" and len(value) > MAX_LENGTH_DIGITS:
            msg = f"Content-Length longer than {MAX_LENGTH_DIGITS} digits"
            raise ProtocolError(msg, status=status)


def check_response_head(status: int, http_version: bytes, headers: RawHeaders) -> None:
    """What a proxy refuses in a response head that h11 accepts (502 each).

    A status outside 100-599 (RFC 9110 section 15), a version other than 1.0 and 1.1,
    both Content-Length and Transfer-Encoding (RFC 9112 section 6.1: possible smuggling),
    and a Content-Length longer than any body.
    """
    has_cl = has_te = False
    digits = 0
    for name, value in headers:
        if name == b"content-length":
            has_cl = True
            digits = max(digits, len(value))
        elif name == b"transfer-encoding":
            has_te = True
    check_response_framing(status, http_version, length_digits=digits if has_cl else None, chunked=has_te)


def check_response_framing(
    status: int, http_version: bytes, *, length_digits: int | None, chunked: bool
) -> None:
    """:func:`check_response_head` for a codec that has read the framing headers already.

    ``length_digits``: the length of the (longest) Content-Length value, None if there is
    none; ``chunked``: whether there is a Transfer-Encoding.
    """
    if not 100 <= status <= 599:  # noqa: PLR2004 - the range of RFC 9110 section 15
        msg = f"upstream: invalid status code {status}"
        raise ProtocolError(msg, status=502)
    if http_version not in (b"1.0", b"1.1"):
        msg = "upstream: response version is not HTTP/1.0 or HTTP/1.1"
        raise ProtocolError(msg, status=502)
    if length_digits is not None and chunked:
        msg = "upstream: response has both Content-Length and Transfer-Encoding"
        raise ProtocolError(msg, status=502)
    if length_digits is not None and length_digits > MAX_LENGTH_DIGITS:
        msg = f"Content-Length longer than {MAX_LENGTH_DIGITS} digits"
        raise ProtocolError(msg, status=502)


class TrailerScanner:
    """Follows a chunked body's framing, byte counts only, to check its trailer section.

    The h11 codecs feed it the same body bytes they feed h11: h11 reads the body, this
    finds the trailers and applies :func:`block_end` to them before h11 parses them (h11
    would unfold obs-fold and take bare LF). Anything else malformed it leaves to h11:
    it stops following as soon as the framing is not what it expects.
    """

    __slots__ = ("_line", "_remaining", "_scanned", "_state", "error", "max_size", "status", "what")

    _SIZE, _DATA, _CRLF, _TRAILERS, _DONE = range(5)

    def __init__(self, max_size: int, *, what: str, status: int) -> None:
        self.max_size = max_size
        self.what = what
        self.status = status
        self.error: ProtocolError | None = None
        self._state = self._SIZE
        self._remaining = 0
        self._line = bytearray()  # a partial size line or trailer section
        self._scanned = 0  # bytes of a partial trailer section already checked

    def feed(self, data: bytes | bytearray) -> None:
        """Follow ``data``; a bad trailer section sets :attr:`error`."""
        view = memoryview(data)
        while view and self._state != self._DONE:
            state = self._state
            if state in (self._DATA, self._CRLF):
                take = min(self._remaining, len(view))
                view = view[take:]
                self._remaining -= take
                if not self._remaining:
                    if state == self._DATA:
                        self._state, self._remaining = self._CRLF, 2
                    else:
                        self._state = self._SIZE
            elif state == self._SIZE:
                self._line += view
                view = view[len(view) :]
                view = self._size_line()
            else:
                self._line += view
                view = view[len(view) :]
                self._trailers()

    def _size_line(self) -> memoryview:
        """Parse a complete size line from the held bytes; the bytes after it."""
        end = self._line.find(b"\r\n")
        if end < 0:
            if len(self._line) > _MAX_CHUNK_LINE:
                self._state = self._DONE  # h11's to judge
            return memoryview(b"")
        size = _CHUNK_SIZE.match(self._line, 0, end)
        if size is None:
            self._state = self._DONE
            return memoryview(b"")
        rest = memoryview(bytes(self._line[end + 2 :]))
        self._remaining = int(size.group(), 16)
        self._line.clear()
        if self._remaining:
            self._state = self._DATA
            return rest
        self._state = self._TRAILERS
        self._line += rest
        self._trailers()
        return memoryview(b"")

    def _trailers(self) -> None:
        line = self._line
        if line[:2] == b"\r\n":
            self._state = self._DONE  # no trailers
            return
        try:
            stop = block_end(
                line,
                self.max_size,
                what=self.what,
                status=self.status,
                too_large=self.too_large,
                start=self._scanned,
            )
            self._scanned = len(line)
            done = stop >= 0
        except ProtocolError as err:
            self.error = err
            done = True
        if done:
            self._state = self._DONE
            line.clear()

    @property
    def too_large(self) -> int:
        """The status of a trailer section over the limit: 431 from a client, 502 from an upstream."""
        return 431 if self.status == 400 else self.status  # noqa: PLR2004 - a client's error
