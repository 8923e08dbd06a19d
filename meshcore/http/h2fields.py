"""HTTP/2 header fields, normalized and checked in one pass each way, as h2 would.

h2 normalizes and validates every header block it sends through a chain of nine
generators (lower-case names, strip whitespace, drop connection-specific fields, mark
credentials never-indexed, reject ``te`` other than ``trailers``, check pseudo-header
fields, ...), and every block it receives through seven more, with character checks that
loop over every byte in Python: about 170 Python calls per proxied request.
:func:`fields_to_send` and :func:`fields_received` do the same in one loop each, and the
server session and the upstream pool turn h2's own normalization and validation off. They
are held to h2's pipelines by differential tests (tests/test_h2fields.py): same fields
out, same field types (never-indexed or not), a ProtocolError exactly where h2 raises one.

A proxy sees the same blocks over and over (a client's request head, an upstream's
response head for as long as its Date stays the same), so both functions remember the
answers for small blocks (:data:`_MEMO_BLOCKS` of them, up to :data:`_MEMO_BYTES` of names
and values each): the same fields in, a fresh list of the same fields out, without the
checks run again. A block refused is never remembered; it is refused again, the same way.

Raising before encoding is also safer than h2's way: h2's generators raise midway through
HPACK-encoding a block, after the earlier fields have entered the encoder's dynamic table,
and the connection's compression state no longer matches the peer's.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import re
from collections.abc import Iterable
from typing import Any

from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from hpack import NeverIndexedHeaderTuple

__all__ = ["fields_received", "fields_received_or_goaway", "fields_to_send"]

# RFC 9113 8.2.2: fields that are specific to one HTTP/1.1 connection.
_CONNECTION = frozenset([b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"])
_SECURE = frozenset([b"authorization", b"proxy-authorization"])
_PSEUDO = frozenset([b":method", b":scheme", b":authority", b":path", b":status", b":protocol"])
_REQUEST_ONLY = frozenset([b":scheme", b":path", b":authority", b":method", b":protocol"])
_COLON = 0x3A
_SHORT_COOKIE = 20  # a cookie shorter than this is never indexed (h2 and nghttp2's rule)
_MEMO_BLOCKS = 256  # blocks remembered per process, least recently used forgotten first
_MEMO_BYTES = 2048  # a block with more bytes of names and values is checked every time
_MEMO_FIELDS = 64  # ... and one with more fields

_Block = tuple[tuple[bytes, bytes], ...]


def _small(block: _Block) -> bool:
    """Whether a block is small enough to remember (C-level: no Python call per field)."""
    return len(block) <= _MEMO_FIELDS and sum(map(len, itertools.chain.from_iterable(block))) <= _MEMO_BYTES


def fields_to_send(
    fields: Iterable[tuple[bytes, bytes]], *, request: bool = False, trailers: bool = False
) -> list[tuple[bytes, bytes]]:
    """A response's or request's (or trailers') fields as h2 would send them; ProtocolError where h2 refuses.

    See :func:`_fields_to_send`; a small block seen before is answered from memory.
    """
    block = tuple(fields)
    if _small(block):
        try:
            return list(_sent_memo(block, request, trailers))
        except TypeError:  # a field that cannot be hashed (a list): checked as it is
            pass
    return _fields_to_send(block, request=request, trailers=trailers)


@functools.lru_cache(maxsize=_MEMO_BLOCKS)
def _sent_memo(block: _Block, request: bool, trailers: bool) -> _Block:
    return tuple(_fields_to_send(block, request=request, trailers=trailers))


def _fields_to_send(
    fields: Iterable[tuple[bytes, bytes]], *, request: bool = False, trailers: bool = False
) -> list[tuple[bytes, bytes]]:
    """A response's or request's (or trailers') fields as h2 would send them; ProtocolError where h2 refuses.

    Names are lower-cased and both names and values stripped of surrounding whitespace,
    connection-specific fields dropped, ``authorization``, ``proxy-authorization`` and
    short ``cookie`` fields made never-indexed (HPACK 7.1.3). Refused: ``te`` other than
    ``trailers``, a pseudo-header field that is unknown, repeated or after a regular field,
    a response head without ``:status`` or with a request's pseudo-header field, a request
    head as :func:`fields_received` refuses one (pseudo-header fields, ``:authority`` and
    ``host``, an empty ``:path``), trailers with any pseudo-header field.
    """
    out: list[tuple[bytes, bytes]] = []
    pseudo: set[bytes] = set()
    regular = False
    method = authority = host = None
    request_head = request and not trailers
    for raw_name, raw_value in fields:
        name = raw_name.lower().strip()
        if not name:
            msg = "An empty header name is forbidden"  # h2 fails here with an IndexError
            raise ProtocolError(msg)
        if name in _CONNECTION:
            continue
        value = raw_value.strip()
        if name[:1] == b":":
            _check_pseudo(name, pseudo, regular=regular)
            if request_head:
                method, authority = _request_pseudo(name, value, method, authority)
        else:
            regular = True
            if name == b"te" and value.lower() != b"trailers":
                msg = f"Invalid value for TE header: {value!r}"
                raise ProtocolError(msg)
            if name == b"host" and request_head:
                host = _one_host(host, value)
            if name in _SECURE or (name == b"cookie" and len(value) < _SHORT_COOKIE):
                out.append(NeverIndexedHeaderTuple(name, value))
                continue
        out.append((name, value))
    _check_block(pseudo, method, authority, host, request=request, trailers=trailers)
    return out


# RFC 9113 8.2.1: a name has no uppercase, control, space or non-ASCII byte (nor a colon
# past the first byte); a value has no NUL, CR or LF, and no whitespace at either end.
_BAD_NAME = re.compile(rb"[\x00-\x20A-Z\x7f-\xff]")
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")


def fields_received(
    fields: Iterable[tuple[bytes, bytes]], *, response: bool = False, trailers: bool = False
) -> list[tuple[bytes, bytes]]:
    """A request's or response's (or trailers') fields as h2 hands them over; ProtocolError where h2 refuses.

    See :func:`_fields_received`; a small block seen before is answered from memory. The
    fields' types are part of what is remembered: a never-indexed field stays one.
    """
    block = tuple(fields)
    if _small(block):
        try:
            return list(_received_memo(block, tuple(map(type, block)), response, trailers))
        except TypeError:  # a field that cannot be hashed (a list): checked as it is
            pass
    return _fields_received(block, response=response, trailers=trailers)


@functools.lru_cache(maxsize=_MEMO_BLOCKS)
def _received_memo(block: _Block, _types: tuple[type, ...], response: bool, trailers: bool) -> _Block:
    return tuple(_fields_received(block, response=response, trailers=trailers))


def _fields_received(
    fields: Iterable[tuple[bytes, bytes]], *, response: bool = False, trailers: bool = False
) -> list[tuple[bytes, bytes]]:
    """A request's or response's (or trailers') fields as h2 hands them over; ProtocolError where h2 refuses.

    The inbound counterpart of :func:`fields_to_send`: what h2's normalize_inbound_headers
    and validate_headers do, in one loop with the character checks in C.
    Split ``cookie`` fields are joined into one never-indexed field at the end (RFC 9113
    8.2.3), and checked joined, as h2 does. Refused: a name that is empty or has an
    uppercase, control or non-ASCII byte or a colon past the first; a value with NUL, CR
    or LF or surrounding whitespace; a connection-specific field; ``te`` other than
    ``trailers``; a pseudo-header field unknown, repeated, after a regular field, or a
    response's; no ``:method``; ``:scheme`` and ``:path`` missing (or present on a plain
    CONNECT); ``:protocol`` without CONNECT; an empty ``:path``; no ``:authority`` nor
    ``host``, two ``host``, or the two differing; in trailers, any pseudo-header field. A
    response head (``response=True``) needs ``:status`` and no request pseudo-header field.
    """
    out: list[tuple[bytes, bytes]] = []
    cookies: list[bytes] = []
    pseudo: set[bytes] = set()
    regular = False
    method = authority = host = None
    request_head = not response and not trailers
    for field in fields:
        name, value = field
        if name == b"cookie":
            cookies.append(value)  # joined, checked and placed last, as h2 does before checking
            continue
        _check_field(name, value)
        if name[0] == _COLON:
            _check_pseudo(name, pseudo, regular=regular)
            if request_head:
                method, authority = _request_pseudo(name, value, method, authority)
        else:
            regular = True
            if name in _CONNECTION:
                msg = f"Connection-specific header field present: {name!r}."
                raise ProtocolError(msg)
            if name == b"te" and value.lower() != b"trailers":
                msg = f"Invalid value for TE header: {value!r}"
                raise ProtocolError(msg)
            if name == b"host" and request_head:
                host = _one_host(host, value)
        out.append(field)
    if cookies:
        cookie = b"; ".join(cookies)
        _check_field(b"cookie", cookie)
        out.append(NeverIndexedHeaderTuple(b"cookie", cookie))
    _check_block(pseudo, method, authority, host, request=not response, trailers=trailers)
    return out


def _check_pseudo(name: bytes, seen: set[bytes], *, regular: bool) -> None:
    """A pseudo-header field: once each, before every regular field, one of RFC 9113's."""
    if name in seen:
        msg = f"Received duplicate pseudo-header field {name!r}"
        raise ProtocolError(msg)
    seen.add(name)
    if regular:
        msg = f"Received pseudo-header field out of sequence: {name!r}"
        raise ProtocolError(msg)
    if name not in _PSEUDO:
        msg = f"Received custom pseudo-header field {name!r}"
        raise ProtocolError(msg)


def _request_pseudo(
    name: bytes, value: bytes, method: bytes | None, authority: bytes | None
) -> tuple[bytes | None, bytes | None]:
    if name == b":method":
        return value, authority
    if name == b":authority":
        return method, value
    if name == b":path" and not value:
        msg = "An empty :path header is forbidden"
        raise ProtocolError(msg)
    return method, authority


def _one_host(host: bytes | None, value: bytes) -> bytes:
    if host is not None:
        msg = "Request header block has multiple Host headers."
        raise ProtocolError(msg)
    return value


def _check_block(
    pseudo: set[bytes],
    method: bytes | None,
    authority: bytes | None,
    host: bytes | None,
    *,
    request: bool,
    trailers: bool,
) -> None:
    """The checks h2 makes once a block's fields are all seen."""
    if trailers:
        if pseudo:
            msg = f"Received pseudo-header in trailer {pseudo}"
            raise ProtocolError(msg)
        return
    if not request:
        if b":status" not in pseudo:
            msg = "Header block missing mandatory b':status' header"
            raise ProtocolError(msg)
        if pseudo & _REQUEST_ONLY:
            msg = f"Encountered request-only headers {pseudo & _REQUEST_ONLY}"
            raise ProtocolError(msg)
        return
    _check_request_pseudo(pseudo, method)
    if authority is None and host is None:
        msg = "Request header block does not have an :authority or Host header."
        raise ProtocolError(msg)
    if authority is not None and host is not None and authority != host:
        msg = f"Request header block has mismatched :authority and Host headers: {authority!r} / {host!r}"
        raise ProtocolError(msg)


def _check_field(name: bytes, value: bytes) -> None:
    if not name:
        msg = "Received header name with zero length."
        raise ProtocolError(msg)
    if _BAD_NAME.search(name) is not None or name.find(b":", 1) != -1:
        msg = f"Illegal character in header name: {name!r}"
        raise ProtocolError(msg)
    if value and _BAD_VALUE.search(value) is not None:
        msg = f"Illegal character or surrounding whitespace in header value: {value!r}"
        raise ProtocolError(msg)


def _check_request_pseudo(pseudo: set[bytes], method: bytes | None) -> None:
    if b":method" not in pseudo:
        msg = "Header block missing mandatory b':method' header"
        raise ProtocolError(msg)
    connect = method == b"CONNECT"
    if connect and b":protocol" not in pseudo:
        if b":scheme" in pseudo or b":path" in pseudo:
            msg = "Ordinary CONNECT MUST NOT include :scheme or :path"
            raise ProtocolError(msg)
    elif b":scheme" not in pseudo or b":path" not in pseudo:
        msg = "Header block missing mandatory :scheme or :path header"
        raise ProtocolError(msg)
    if b":status" in pseudo:
        msg = "Encountered response-only headers {b':status'}"
        raise ProtocolError(msg)
    if not connect and b":protocol" in pseudo:
        msg = "Encountered connect-request-only headers {b':protocol'}"
        raise ProtocolError(msg)


def fields_received_or_goaway(
    conn: Any, fields: Iterable[tuple[bytes, bytes]], *, response: bool = False, trailers: bool = False
) -> list[tuple[bytes, bytes]]:
    """:func:`fields_received`, and a block h2 would refuse ends ``conn`` as h2 ends it.

    ``conn`` is the h2 connection the block came on: GOAWAY(PROTOCOL_ERROR) is queued on
    it, then ProtocolError is raised for the read loop. Both sides (the server session and
    the upstream connection) receive blocks this way.
    """
    try:
        return fields_received(fields, response=response, trailers=trailers)
    except ProtocolError:
        with contextlib.suppress(ProtocolError):  # the connection is already over
            conn.close_connection(error_code=ErrorCodes.PROTOCOL_ERROR)
        raise
