"""Response flags: why a reply was generated locally, or why a request failed.

In the spirit of Envoy's access-log flags, so that a user never has to guess why they got
a 503. Every locally generated reply and every access-log line carries them.
"""

from __future__ import annotations

import enum

__all__ = ["ResponseFlag", "render_flag_table"]


class ResponseFlag(enum.Enum):
    """A short code in access logs and the ``x-meshcore-flags`` reply header, with its meaning."""

    description: str
    status: int

    def __new__(cls, code: str, description: str, status: int) -> ResponseFlag:
        """A member from its code, its meaning and the HTTP status of its local reply (0: none)."""
        member = object.__new__(cls)
        member._value_ = code
        member.description = description
        member.status = status
        return member

    NO_ROUTE = ("NR", "no route matched the request", 404)
    NO_CLUSTER_FOUND = ("NC", "the route names a cluster that does not exist", 503)
    NO_HEALTHY_UPSTREAM = ("UH", "the cluster has no healthy endpoint", 503)
    UPSTREAM_CONNECTION_FAILURE = ("UF", "connecting to the upstream endpoint failed", 503)
    UPSTREAM_CONNECTION_TERMINATION = ("UC", "the upstream closed the connection before responding", 503)
    UPSTREAM_RESET = ("UR", "the upstream reset the stream mid-response", 502)
    UPSTREAM_REQUEST_TIMEOUT = ("UT", "the route timeout expired before the upstream responded", 504)
    UPSTREAM_OVERFLOW = ("UO", "the connection pool or circuit breaker is full", 503)
    UPSTREAM_IDENTITY_MISMATCH = (
        "UIM",
        "the upstream's certificate does not carry the identity expected of it (secure naming)",
        503,
    )
    UPSTREAM_PROTOCOL_ERROR = ("UPE", "the upstream broke the HTTP protocol", 502)
    UPSTREAM_RETRY_LIMIT_EXCEEDED = (
        "URX",
        "the route's retries ran out; the last attempt's failure stands",
        0,
    )
    DOWNSTREAM_CONNECTION_TERMINATION = (
        "DC",
        "the client closed the connection before the response ended",
        0,
    )
    DOWNSTREAM_PROTOCOL_ERROR = ("DPE", "the client broke the HTTP protocol", 400)
    STREAM_IDLE_TIMEOUT = (
        "SI",
        "the client read none of the response for the stream idle timeout: disconnected or reset",
        0,
    )
    DOWNSTREAM_HEADERS_TIMEOUT = ("DHT", "the client did not send the request headers in time", 408)
    LOCAL_RATE_LIMITED = ("RL", "a local rate limit rejected the request", 429)
    OVERLOAD = ("OM", "the overload manager shed the request (memory past its threshold)", 503)
    FAULT_INJECTED = ("FI", "a fault filter aborted the request", 0)
    DELAY_INJECTED = ("DI", "a fault filter delayed the request", 0)
    UNAUTHORIZED = ("UAEX", "an external authorization service denied the request", 403)
    RBAC_DENIED = ("RBAC", "denied by an authorization policy", 403)
    JWT_REJECTED = ("JWT", "the request's JWT is missing, invalid or not accepted", 401)
    UPGRADE_REJECTED = ("UPG", "the route does not allow the HTTP upgrade the client asked for", 403)
    DIRECT_RESPONSE = ("DR", "the route answered directly (direct response or redirect)", 0)


def render_flag_table() -> str:
    """The Markdown table of docs/response-flags.md, generated so that it cannot drift."""
    lines = [
        "# Response flags",
        "",
        "Every locally generated reply carries an `x-meshcore-flags` header, and every access-log",
        "line a `flags` field, naming why the proxy answered as it did (in the spirit of Envoy's",
        "response flags). A reply with no flag came from the upstream untouched.",
        "",
        "| flag | name | meaning | status sent |",
        "| --- | --- | --- | --- |",
    ]
    for flag in ResponseFlag:
        status = str(flag.status) if flag.status else "(as configured / none)"
        lines.append(f"| `{flag.value}` | {flag.name.lower()} | {flag.description} | {status} |")
    lines += ["", "This table is generated from `meshcore/flags.py`; a test keeps the two in step.", ""]
    return "\n".join(lines)
