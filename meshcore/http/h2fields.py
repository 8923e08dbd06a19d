"""HTTP/2 response and trailer fields, normalized and checked in one pass.

h2 normalizes and validates every header block it sends through a chain of nine
generators (lower-case names, strip whitespace, drop connection-specific fields, mark
credentials never-indexed, reject ``te`` other than ``trailers``, check pseudo-header
fields, ...): about 100 Python calls per response of a few fields. :func:`response_fields`
does the same in one loop, before anything is encoded, and the server session turns h2's
outbound normalization and validation off. It is held to h2's own pipeline by a
differential test (tests/test_h2fields.py): same fields out, same field types (never-indexed
or not), a ProtocolError exactly where h2 raises one.

Raising before encoding is also safer than h2's way: h2's generators raise midway through
HPACK-encoding a block, after the earlier fields have entered the encoder's dynamic table,
and the connection's compression state no longer matches the peer's.
"""

from __future__ import annotations

from collections.abc import Iterable

from h2.exceptions import ProtocolError
from hpack import NeverIndexedHeaderTuple

__all__ = ["response_fields"]

# RFC 9113 8.2.2: fields that are specific to one HTTP/1.1 connection.
_CONNECTION = frozenset([b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"])
_SECURE = frozenset([b"authorization", b"proxy-authorization"])
_PSEUDO = frozenset([b":method", b":scheme", b":authority", b":path", b":status", b":protocol"])
_REQUEST_ONLY = frozenset([b":scheme", b":path", b":authority", b":method", b":protocol"])
_SHORT_COOKIE = 20  # a cookie shorter than this is never indexed (h2 and nghttp2's rule)


def response_fields(  # noqa: PLR0912 - one pass on purpose
    fields: Iterable[tuple[bytes, bytes]], *, trailers: bool = False
) -> list[tuple[bytes, bytes]]:
    """A response's (or its trailers') fields as h2 would send them; ProtocolError if h2 would refuse.

    Names are lower-cased and both names and values stripped of surrounding whitespace,
    connection-specific fields dropped, ``authorization``, ``proxy-authorization`` and
    short ``cookie`` fields made never-indexed (HPACK 7.1.3). Refused: ``te`` other than
    ``trailers``, a pseudo-header field that is unknown, repeated or after a regular field,
    a head without ``:status`` or with a request's pseudo-header field, trailers with any.
    """
    out: list[tuple[bytes, bytes]] = []
    pseudo: set[bytes] = set()
    regular = False
    for raw_name, raw_value in fields:
        name = raw_name.lower().strip()
        if not name:
            msg = "An empty header name is forbidden"  # h2 fails here with an IndexError
            raise ProtocolError(msg)
        if name in _CONNECTION:
            continue
        value = raw_value.strip()
        if name[:1] == b":":
            if name in pseudo:
                msg = f"Received duplicate pseudo-header field {name!r}"
                raise ProtocolError(msg)
            pseudo.add(name)
            if regular:
                msg = f"Received pseudo-header field out of sequence: {name!r}"
                raise ProtocolError(msg)
            if name not in _PSEUDO:
                msg = f"Received custom pseudo-header field {name!r}"
                raise ProtocolError(msg)
        else:
            regular = True
            if name == b"te" and value.lower() != b"trailers":
                msg = f"Invalid value for TE header: {value!r}"
                raise ProtocolError(msg)
            if name in _SECURE or (name == b"cookie" and len(value) < _SHORT_COOKIE):
                out.append(NeverIndexedHeaderTuple(name, value))
                continue
        out.append((name, value))
    if trailers:
        if pseudo:
            msg = f"Received pseudo-header in trailer {pseudo}"
            raise ProtocolError(msg)
    else:
        if b":status" not in pseudo:
            msg = "Header block missing mandatory b':status' header"
            raise ProtocolError(msg)
        if pseudo & _REQUEST_ONLY:
            msg = f"Encountered request-only headers {pseudo & _REQUEST_ONLY}"
            raise ProtocolError(msg)
    return out
