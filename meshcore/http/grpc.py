"""gRPC over the common message model: recognising calls, deadlines, and local replies.

A locally generated reply toward a gRPC client must be a gRPC error: HTTP 200 with
``grpc-status`` (a "Trailers-Only" response), not an HTTP error status the client
cannot interpret. The status follows the response flag when there is one (a route
timeout is DEADLINE_EXCEEDED, a rate limit RESOURCE_EXHAUSTED, no upstream
UNAVAILABLE), otherwise gRPC's HTTP-to-gRPC status mapping.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from urllib.parse import quote, unquote

from meshcore.flags import ResponseFlag
from meshcore.http.messages import Request, Response

__all__ = [
    "GrpcStatus",
    "grpc_local_reply",
    "grpc_message_of",
    "grpc_response",
    "grpc_status_for_http",
    "grpc_status_of",
    "grpc_timeout",
    "is_grpc",
]


class GrpcStatus(enum.IntEnum):
    """gRPC status codes."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


_BY_FLAG = {
    ResponseFlag.UPSTREAM_REQUEST_TIMEOUT: GrpcStatus.DEADLINE_EXCEEDED,
    ResponseFlag.LOCAL_RATE_LIMITED: GrpcStatus.RESOURCE_EXHAUSTED,
    ResponseFlag.NO_ROUTE: GrpcStatus.UNIMPLEMENTED,
    ResponseFlag.NO_CLUSTER_FOUND: GrpcStatus.UNAVAILABLE,
    ResponseFlag.NO_HEALTHY_UPSTREAM: GrpcStatus.UNAVAILABLE,
    ResponseFlag.UPSTREAM_CONNECTION_FAILURE: GrpcStatus.UNAVAILABLE,
    ResponseFlag.UPSTREAM_CONNECTION_TERMINATION: GrpcStatus.UNAVAILABLE,
    ResponseFlag.UPSTREAM_RESET: GrpcStatus.UNAVAILABLE,
    ResponseFlag.UPSTREAM_OVERFLOW: GrpcStatus.UNAVAILABLE,
    ResponseFlag.UNAUTHORIZED: GrpcStatus.PERMISSION_DENIED,
}
# gRPC's "HTTP to gRPC Status Code Mapping" (doc/http-grpc-status-mapping.md).
_BY_HTTP_STATUS = {
    400: GrpcStatus.INTERNAL,
    401: GrpcStatus.UNAUTHENTICATED,
    403: GrpcStatus.PERMISSION_DENIED,
    404: GrpcStatus.UNIMPLEMENTED,
    429: GrpcStatus.UNAVAILABLE,
    502: GrpcStatus.UNAVAILABLE,
    503: GrpcStatus.UNAVAILABLE,
    504: GrpcStatus.UNAVAILABLE,
}
_TIMEOUT_RE = re.compile(rb"^(\d{1,8})([HMSmun])$")
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def is_grpc(request: Request) -> bool:
    """Whether the request is a gRPC call (content-type application/grpc[+proto|...])."""
    content_type = request.headers.get_raw(b"content-type")
    return content_type is not None and content_type.startswith(b"application/grpc")


def grpc_timeout(request: Request) -> float | None:
    """The call's deadline in seconds from its ``grpc-timeout`` header, if valid."""
    value = request.headers.get_raw(b"grpc-timeout")
    if value is None:
        return None
    match = _TIMEOUT_RE.match(value)
    if match is None:
        return None
    return int(match[1]) * _TIMEOUT_UNITS[match[2]]


def grpc_status_of(response: Response) -> int | None:
    """The response's grpc-status: from its headers (Trailers-Only) or its trailers (once read)."""
    value = response.headers.get_raw(b"grpc-status")
    if value is None and response.body.trailers is not None:
        value = response.body.trailers.get_raw(b"grpc-status")
    return int(value) if value is not None and value.isdigit() else None


def grpc_message_of(response: Response) -> str | None:
    """The response's grpc-message (headers or trailers), percent-decoded, if it has one."""
    value = response.headers.get_raw(b"grpc-message")
    if value is None and response.body.trailers is not None:
        value = response.body.trailers.get_raw(b"grpc-message")
    return unquote(value.decode("latin-1"), errors="replace") if value is not None else None


def grpc_status_for_http(status: int) -> GrpcStatus:
    """The gRPC status a client should see for an HTTP status (gRPC's mapping; else UNKNOWN)."""
    return _BY_HTTP_STATUS.get(status, GrpcStatus.UNKNOWN)


def grpc_response(status: int, message: str, *, headers: Iterable[tuple[str, str]] = ()) -> Response:
    """A gRPC error answered locally: HTTP 200, Trailers-Only (status and message in the headers)."""
    return Response.local(
        200,
        headers=[
            ("content-type", "application/grpc"),
            ("grpc-status", str(int(status))),
            ("grpc-message", quote(message, safe=" ()/:,")),
            *headers,
        ],
    )


def grpc_local_reply(request: Request, response: Response) -> Response:
    """The gRPC form of a local HTTP reply: its status from the response flag, else the HTTP status."""
    status = next(
        (_BY_FLAG[f] for f in sorted(request.info.flags, key=lambda f: f.value) if f in _BY_FLAG), None
    )
    if status is None:
        status = grpc_status_for_http(response.status)
    message = f"meshcore: HTTP {response.status}"
    if request.info.flags:
        message += f" ({request.info.flag_string()})"
    response.body.close()
    return grpc_response(status, message)
