"""HTTP semantics a proxy applies whatever the codec: hop-by-hop headers, reason phrases, targets.

One implementation for every hop a message crosses: a request from a client (HTTP/1.1) to
the filters, and from the router to an upstream (HTTP/1.1 or HTTP/2); a response from an
upstream, and to a client (HTTP/1.1 or HTTP/2, where RFC 9113 section 8.2.2 forbids these
connection-specific fields outright).
"""

from __future__ import annotations

import re
from http import HTTPStatus

from meshcore.errors import ProtocolError
from meshcore.http.codec import RawHeaders

__all__ = [
    "HOP_BY_HOP",
    "REASONS",
    "connection_tokens",
    "split_absolute_form",
    "status_text",
    "strip_hop_by_hop",
]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"trailer",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"expect",
        # Asks to upgrade this one connection to HTTP/2 (RFC 7540 section 3.2), which a proxy
        # ignores: never forwarded, whether or not Connection names it.
        b"http2-settings",
    }
)
# absolute-form (RFC 9112 section 3.2.2): scheme "://" authority, then path and query. No
# userinfo ("@"): it is deprecated and a classic way to make a proxy and a server disagree.
_ABSOLUTE_FORM = re.compile(rb"(?i:https?)://([^/?#@\s]+)([/?][^#\s]*)?")

# The reason phrase of a status line we write (RFC 9110 section 15); b"" for the others.
REASONS = {
    100: b"Continue", 101: b"Switching Protocols", 200: b"OK", 201: b"Created", 202: b"Accepted",
    204: b"No Content", 206: b"Partial Content", 301: b"Moved Permanently", 302: b"Found",
    303: b"See Other", 304: b"Not Modified", 307: b"Temporary Redirect", 308: b"Permanent Redirect",
    400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
    405: b"Method Not Allowed", 408: b"Request Timeout", 413: b"Content Too Large", 414: b"URI Too Long",
    429: b"Too Many Requests", 431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
    501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}  # fmt: skip


def connection_tokens(value: bytes) -> set[bytes]:
    """The options a Connection header value lists ("close", "upgrade", header names), lower-case."""
    if b"," not in value:  # one option, as most are ("keep-alive", "close")
        return {value.strip().lower()}
    return {token.strip().lower() for token in value.split(b",")}


def strip_hop_by_hop(headers: RawHeaders) -> RawHeaders:
    """Headers without those meaningful for one hop only (RFC 9110 section 7.6.1).

    Also drops any header the Connection header names. ``te`` survives only as
    ``te: trailers`` (gRPC needs it). Returns the same list when there is nothing to drop.
    """
    drop: set[bytes] | None = None
    for name, value in headers:
        if name in HOP_BY_HOP or (name == b"te" and value.strip().lower() != b"trailers"):
            drop = drop or set()
            drop.add(name)
            if name == b"connection":
                drop.update(connection_tokens(value))
    if drop is None:
        return headers
    return [
        (n, v) for n, v in headers if n not in drop and not (n == b"te" and v.strip().lower() != b"trailers")
    ]


def split_absolute_form(target: bytes) -> tuple[bytes, bytes] | None:
    """The authority and the origin-form target of an absolute-form request target.

    None if ``target`` is not in absolute form (it does not start with ``http://`` or
    ``https://``); ProtocolError(400) if it is but is malformed (no authority, userinfo, a
    fragment). RFC 9112 section 3.2.2: the authority of an absolute-form target wins over
    Host, and a proxy forwards the target in origin form.
    """
    if target[:1] == b"/" or b"://" not in target[:9]:
        return None
    match = _ABSOLUTE_FORM.fullmatch(target)
    if match is None:
        msg = "invalid absolute-form request target"
        raise ProtocolError(msg, status=400)
    path = match[2] or b"/"
    if path[:1] == b"?":
        path = b"/" + path
    return match[1], path


def status_text(status: int) -> str:
    """The body of a local error reply: the status's phrase, never the error's details.

    Error messages quote the bytes that were wrong, sent by a client or an upstream; a reply
    that reflects them is a response-splitting and cross-site-scripting vector. The details
    go to the log.
    """
    try:
        return f"{HTTPStatus(status).phrase}\n"
    except ValueError:
        return "Error\n"
