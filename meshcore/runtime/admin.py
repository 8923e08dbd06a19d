"""The admin server: readiness, stats, config dump, clusters, listeners and log level.

A small HTTP/1.1 server on its own listener (loopback by default, ``admin.address``).
Two layers, as elsewhere: :func:`handle` answers one request from the proxy's state with
no I/O (tested with plain calls), and :func:`serve_admin` is the trio shell that reads
requests with the strict h11 codec and writes the answers, one task per connection.

Start it next to the proxy::

    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        host, port = await nursery.start(serve_admin, proxy, snapshot.admin.address)
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import structlog
import trio

from meshcore.config import Address
from meshcore.connection import join_host_port
from meshcore.errors import ConfigError, ConfigProblem, ProtocolError
from meshcore.http.codec import CLOSED, NEED_DATA, Data, EndOfMessage, RawHeaders, RequestHead
from meshcore.http.h1 import H11ServerCodec
from meshcore.runtime.configdata import to_data
from meshcore.runtime.linger import send_and_linger
from meshcore.runtime.listener import open_listener_socket
from meshcore.runtime.proxy import Proxy
from meshcore.runtime.stats import Stats
from meshcore.runtime.statsdata import stats_data

__all__ = [
    "AdminResponse",
    "Answer",
    "answer_connection",
    "handle",
    "proxy_answer",
    "serve_admin",
    "serve_admin_answers",
    "serve_admin_connection",
    "serve_admin_listener",
    "stats_response",
]

log = structlog.get_logger("meshcore.admin")

MAX_HEAD_SIZE = 16 * 1024
"""Largest request head accepted (431 beyond)."""
MAX_BODY_SIZE = 64 * 1024
"""Largest request body accepted by default (413 beyond); a proxy's endpoints read none."""
IDLE_TIMEOUT = 60.0
"""Seconds a kept-alive connection may wait for its next request."""
REQUEST_TIMEOUT = 10.0
"""Seconds a request may take to arrive whole, from its first byte."""
RECEIVE_SIZE = 16 * 1024
MAX_QUERY_FIELDS = 16

_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"
_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


@attrs.frozen
class AdminResponse:
    """An answer of the admin server: status, content type, body, extra headers."""

    status: int
    body: str
    content_type: str = _TEXT
    headers: tuple[tuple[str, str], ...] = ()


# -- endpoints (no I/O) -----------------------------------------------------------------------

Query = dict[str, list[str]]
Handler = Callable[[Proxy, Query], AdminResponse]


def _json(data: Any, status: int = 200) -> AdminResponse:
    return AdminResponse(status, json.dumps(data, indent=2) + "\n", _JSON)


def _index(_proxy: Proxy, _query: Query) -> AdminResponse:
    lines = [f"{path:<20} {' '.join(e.methods)}  {e.help}" for path, e in ENDPOINTS.items()]
    return AdminResponse(200, "meshcore admin\n\n" + "\n".join(lines) + "\n")


def _ready(proxy: Proxy, _query: Query) -> AdminResponse:
    if proxy.draining:
        return AdminResponse(503, "DRAINING\n")
    if proxy.snapshot is None:
        return AdminResponse(503, "NOT READY\n")
    return AdminResponse(200, "LIVE\n")


def _stats(proxy: Proxy, query: Query) -> AdminResponse:
    return stats_response(proxy.stats, query)


def stats_response(stats: Stats, query: Query) -> AdminResponse:
    """``/stats``: lines, or with ``?format=json`` the metrics as data; ``?filter=REGEX`` keeps matches."""
    pattern = query.get("filter", [None])[-1]
    try:
        regex = re.compile(pattern) if pattern is not None else None
    except re.error as err:
        return AdminResponse(400, f"invalid filter regex {pattern!r}: {err}\n")
    if query.get("format", [""])[-1] == "json":
        return _json([item for item in stats_data(stats) if regex is None or regex.search(item["name"])])
    text = stats.render_text()
    if regex is None:
        return AdminResponse(200, text)
    kept = [line for line in text.splitlines() if regex.search(line)]
    return AdminResponse(200, "".join(f"{line}\n" for line in kept))


def _prometheus(proxy: Proxy, _query: Query) -> AdminResponse:
    return AdminResponse(200, proxy.stats.render_prometheus(), _PROMETHEUS)


def _config_dump(proxy: Proxy, _query: Query) -> AdminResponse:
    if proxy.snapshot is None:
        return _json({"error": "no snapshot applied yet"}, status=503)
    return _json(to_data(proxy.snapshot))


def _config_status(proxy: Proxy, _query: Query) -> AdminResponse:
    return _json(proxy.health.to_data())


def _clusters(proxy: Proxy, _query: Query) -> AdminResponse:
    clusters = []
    for name, cluster in sorted(proxy.clusters.clusters.items()):
        endpoints = [
            {
                "address": host.label,
                "weight": host.weight,
                "healthy": host.healthy,
                "health_flags": host.health_flags(),
                "priority": host.priority,
                "locality": str(host.locality) if host.locality is not None else None,
                "active_requests": host.active_requests,
                "open_connections": host.open_connections,
            }
            for host in cluster.hosts
        ]
        clusters.append(
            {
                "name": name,
                "lb_policy": cluster.config.lb_policy.name,
                "panic": cluster.host_set.panic,
                "endpoints": endpoints,
            }
        )
    return _json({"clusters": clusters})


def _listeners(proxy: Proxy, _query: Query) -> AdminResponse:
    listeners = [
        {"name": name, "address": join_host_port(*runtime.address), "active_connections": runtime.active}
        for name, runtime in sorted(proxy.listeners.items())
    ]
    return _json({"listeners": listeners})


def _logging(_proxy: Proxy, query: Query) -> AdminResponse:
    from meshcore.logs import set_level  # noqa: PLC0415 - only the admin changes levels at run time

    level = query.get("level", [""])[-1]
    if not level:
        return AdminResponse(400, "missing ?level= (debug, info, warning or error)\n")
    try:
        set_level(level)
    except ValueError as err:
        return AdminResponse(400, f"{err}\n")
    level = level.lower()
    log.warning("log_level_changed", level=level)
    return AdminResponse(200, f"level set to {level}\n")


@attrs.frozen
class Endpoint:
    """An admin path: the methods it takes, what answers it, a line for the index."""

    methods: tuple[str, ...]
    handler: Handler
    help: str


_READ = ("GET", "HEAD")
ENDPOINTS: dict[str, Endpoint] = {
    "/": Endpoint(_READ, _index, "this list"),
    "/ready": Endpoint(_READ, _ready, "200 LIVE when a snapshot is applied and not draining, else 503"),
    "/stats": Endpoint(_READ, _stats, "counters, gauges, histograms as lines; ?filter=REGEX, ?format=json"),
    "/stats/prometheus": Endpoint(_READ, _prometheus, "the same in the Prometheus text format"),
    "/config_dump": Endpoint(_READ, _config_dump, "the live snapshot as JSON, secrets redacted"),
    "/config_status": Endpoint(
        _READ, _config_status, "the live version, when applied, rejections by stage, the last one (JSON)"
    ),
    "/clusters": Endpoint(_READ, _clusters, "clusters and their endpoints' health and load (JSON)"),
    "/listeners": Endpoint(_READ, _listeners, "listeners and their bound addresses (JSON)"),
    "/logging": Endpoint(("POST",), _logging, "?level=debug|info|warning|error sets the log level"),
}


def handle(proxy: Proxy, method: str, target: str) -> AdminResponse:
    """The answer to ``method target`` from the proxy's current state (no I/O).

    Args:
        proxy: the proxy whose state is reported.
        method: the request method ("GET").
        target: the request target ("/stats?filter=cluster").

    Returns:
        The response; 404 for an unknown path, 405 (with ``allow``) for a wrong method,
        400 for a query that cannot be parsed, 500 if an endpoint fails.
    """
    try:
        parts = urlsplit(target)
    except ValueError as err:  # "//[": an unclosed IPv6 bracket in an authority
        return AdminResponse(400, f"bad request target: {err}\n")
    endpoint = ENDPOINTS.get(parts.path)
    if endpoint is None:
        return AdminResponse(404, f"no admin endpoint {parts.path!r}; GET / lists them\n")
    if method not in endpoint.methods:
        allow = ", ".join(endpoint.methods)
        return AdminResponse(405, f"{parts.path} takes {allow}\n", headers=(("allow", allow),))
    try:
        query = parse_qs(parts.query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
    except ValueError as err:
        return AdminResponse(400, f"bad query string: {err}\n")
    try:
        return endpoint.handler(proxy, query)
    except Exception as err:
        log.exception("admin_request_failed", method=method, path=parts.path)
        return AdminResponse(500, f"{type(err).__name__}: {err}\n")


# -- the server (trio) ------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


Answer = Callable[[str, str, bytes], Awaitable[AdminResponse]]
"""What answers an admin request: ``await answer(method, target, body)`` (body b"" if none)."""


async def serve_admin(
    proxy: Proxy,
    address: Address,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin endpoints of ``proxy`` on ``address`` until cancelled.

    Args:
        proxy: the proxy to report on and control.
        address: where to listen; port 0 picks a free port.
        task_status: reports ``(host, bound_port)`` once the socket listens.

    Raises:
        ConfigError: the address cannot be listened on (in use, not ours), as the problem
            ``admin.address: cannot listen on HOST:PORT: REASON``.
    """
    await serve_admin_answers(proxy_answer(proxy), address, task_status=task_status)


def proxy_answer(proxy: Proxy) -> Answer:
    """The answers of :func:`handle` for ``proxy``, as an :data:`Answer`."""

    async def answer(method: str, target: str, _body: bytes) -> AdminResponse:
        return handle(proxy, method, target)

    return answer


async def serve_admin_answers(
    answer: Answer,
    address: Address,
    *,
    max_body_size: int = MAX_BODY_SIZE,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve admin requests answered by ``answer`` on TCP ``address`` (see :func:`serve_admin`).

    A request body larger than ``max_body_size`` is answered 413 without being read whole.
    """
    try:
        listener = open_listener_socket(address.host, address.port)
    except OSError as err:
        message = f"cannot listen on {address}: {err.strerror or err}"
        raise ConfigError([ConfigProblem(path="admin.address", message=message)], stage="apply") from err
    bound = (address.host, int(listener.socket.getsockname()[1]))
    log.info("admin_started", address=join_host_port(*bound))
    if not _is_loopback(address.host):
        # It answers anyone who reaches it, with no authentication: loopback is the default.
        log.warning("admin_exposed", address=join_host_port(*bound), advice="bind it to 127.0.0.1")
    await serve_admin_listener(
        answer, listener, task_status=task_status, started=bound, max_body_size=max_body_size
    )


async def serve_admin_listener(
    answer: Answer,
    listener: trio.SocketListener,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
    started: Any = None,
    max_body_size: int = MAX_BODY_SIZE,
) -> None:
    """Serve admin requests on connections accepted from ``listener`` (TCP or a unix socket)."""

    async def accepted(stream: trio.SocketStream) -> None:
        try:
            name = stream.socket.getpeername()
        except OSError:  # reset by the client before it was looked at (ENOTCONN): nothing to serve
            stream.socket.close()
            return
        peer = join_host_port(*name[:2]) if isinstance(name, tuple) else "local"
        await answer_connection(answer, stream, peer, max_body_size=max_body_size)

    async with listener, trio.open_nursery() as connections:
        task_status.started(started)
        await trio.serve_listeners(accepted, [listener], handler_nursery=connections)


async def serve_admin_connection(proxy: Proxy, stream: trio.abc.HalfCloseableStream, peer: str) -> None:
    """Answer ``proxy``'s admin requests on one connection (see :func:`answer_connection`)."""
    await answer_connection(proxy_answer(proxy), stream, peer)


async def answer_connection(
    answer: Answer, stream: trio.abc.HalfCloseableStream, peer: str, *, max_body_size: int = MAX_BODY_SIZE
) -> None:
    """Answer requests on one connection until it closes, idles out, or misbehaves; close it.

    Args:
        answer: what answers each request.
        stream: the accepted connection (a socket, or a memory stream in tests).
        peer: the client's address, for logs.
        max_body_size: the largest request body accepted (413 beyond).
    """
    codec = H11ServerCodec(max_head_size=MAX_HEAD_SIZE)
    try:
        with structlog.contextvars.bound_contextvars(peer=peer):
            while True:
                try:
                    request = await _read_request(codec, stream, max_body_size)
                except ProtocolError as err:
                    await _reject(codec, stream, err)
                    return
                if request is None:
                    return
                head, body = request
                method = head.method.decode("ascii", "replace")
                target = head.target.decode("ascii", "replace")
                response = await answer(method, target, body)
                log.debug("admin_request_served", method=method, target=target, status=response.status)
                await stream.send_all(_encode(codec, response, head_only=method == "HEAD"))
                if not codec.start_next_cycle():
                    return
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return  # the client went away
    except Exception:
        # A bug here must cost one connection, never the admin server (or the proxy
        # that shares its nursery).
        log.exception("admin_connection_failed", peer=peer)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await stream.aclose()


async def _reject(codec: H11ServerCodec, stream: trio.abc.HalfCloseableStream, err: ProtocolError) -> None:
    """Answer a bad request with its status, then linger before the caller closes (see linger)."""
    log.info("admin_request_rejected", status=err.status, reason=str(err))
    if codec.response_started:
        return
    response = AdminResponse(err.status, f"{err}\n", headers=(("connection", "close"),))
    await send_and_linger(stream, _encode(codec, response, head_only=False))


async def _receive(codec: H11ServerCodec, stream: trio.abc.HalfCloseableStream) -> None:
    codec.receive_data(bytes(await stream.receive_some(RECEIVE_SIZE)))  # no copy if bytes already


async def _read_request(
    codec: H11ServerCodec, stream: trio.abc.HalfCloseableStream, max_body_size: int
) -> tuple[RequestHead, bytes] | None:
    """The next whole request and its body; None when the client is done.

    Waiting for the first byte is bounded by IDLE_TIMEOUT, the rest by REQUEST_TIMEOUT.
    """
    event = codec.next_event()
    if event is NEED_DATA:
        with trio.move_on_after(IDLE_TIMEOUT) as idle:
            await _receive(codec, stream)
        if idle.cancelled_caught:
            return None
        event = codec.next_event()
    head: RequestHead | None = None
    body = bytearray()
    with trio.move_on_after(REQUEST_TIMEOUT):
        while True:
            if event is NEED_DATA:
                await _receive(codec, stream)
            elif event is CLOSED:
                return None
            elif type(event) is RequestHead:
                head = event
            elif type(event) is Data:
                if len(body) + len(event.data) > max_body_size:
                    msg = f"request body larger than {max_body_size} bytes"
                    raise ProtocolError(msg, status=413)
                body += event.data
            elif type(event) is EndOfMessage and head is not None:
                return head, bytes(body)
            event = codec.next_event()
    msg = f"request not received within {REQUEST_TIMEOUT:g}s"
    raise ProtocolError(msg, status=408)


def _encode(codec: H11ServerCodec, response: AdminResponse, *, head_only: bool) -> bytes:
    body = response.body.encode()
    headers: RawHeaders = [
        (b"content-type", response.content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        # Error answers quote the request (a path, a query): never sniffed into HTML.
        (b"x-content-type-options", b"nosniff"),
        *((name.encode(), value.encode()) for name, value in response.headers),
    ]
    out = codec.send_response_head(response.status, headers)
    if body and not head_only:
        out += codec.send_data(body)
    return out + codec.send_end()
