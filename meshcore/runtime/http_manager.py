"""The HTTP connection manager: the terminal L4 filter that speaks HTTP.

Per Snapshot it compiles the route table and the L7 filter chain (and a chain per route
that overrides filter settings: :mod:`meshcore.runtime.http_chains`); a Snapshot that changes only
the route table swaps it in place. Per connection it runs one session: HTTP/1.1
(:mod:`meshcore.runtime.h1session`, one loop, no task per request) or HTTP/2
(:mod:`meshcore.runtime.h2server`). Per request, whatever the protocol: route, run the
chain (:meth:`HttpConnectionManager.dispatch`), and record (:meth:`HttpConnectionManager.record`).
"""

from __future__ import annotations

import contextlib
import math
import socket
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import attrs
import structlog
import trio

from meshcore.config import Snapshot
from meshcore.connection import Connection
from meshcore.errors import ProtocolError
from meshcore.flags import ResponseFlag
from meshcore.http.edge import EdgePolicy
from meshcore.http.grpc import grpc_local_reply, grpc_status_of, is_grpc
from meshcore.http.messages import Body, Request, Response
from meshcore.http.routing import CompiledRoute, RouteTable
from meshcore.http.semantics import status_text
from meshcore.runtime.context import FilterContext
from meshcore.runtime.filterstate import Commit
from meshcore.runtime.h1session import RECEIVE_SIZE, H1Session
from meshcore.runtime.h2server import PREFACE, H2ServerSession
from meshcore.runtime.http_chains import HttpChains, RouteRuntime, build_chain
from meshcore.runtime.stats import Counter
from meshcore.runtime.tls import TLS_STREAMS
from meshcore.telemetry.request_id import RequestIds

__all__ = ["HttpConnectionManager", "build_chain", "status_text"]

log = structlog.get_logger("meshcore.http")


def _check_declared_length(body: Body) -> None:
    """413 for a body that announces more than its limit, before anything reaches an upstream."""
    if body.limit is not None and body.length is not None and body.length > body.limit:
        msg = f"request body of {body.length} bytes, more than the limit of {body.limit}"
        raise ProtocolError(msg, status=413)


class HttpConnectionManager:
    """The compiled HTTP side of one filter chain for one Snapshot."""

    def __init__(self, config: Any, context: FilterContext) -> None:
        self.config = config
        self.context = context
        self.listener = context.listener
        self.scheme = "https" if context.tls else "http"
        self.access_log = context.access_log
        self.access_logger = context.access_logger
        self.max_head = int(config.max_request_headers_size)
        self.fast_codec = getattr(config, "codec", "h11") == "fast"
        self.max_headers = int(config.max_request_headers)
        self.headers_timeout = float(config.request_headers_timeout) or math.inf
        self.idle_timeout = float(config.idle_timeout) or math.inf
        self.stream_idle_timeout = float(getattr(config, "stream_idle_timeout", 300)) or math.inf
        self.max_requests = int(config.max_requests_per_connection) or math.inf
        self.max_body: int | None = int(getattr(config, "max_request_body_size", 0)) or None
        self.protocol: str = getattr(config, "http_protocol", "auto")
        self.http2: Any = getattr(config, "http2", None)
        self.drain_timeout = self.idle_timeout if self.idle_timeout < math.inf else 30.0
        self.h2_sessions: set[Any] = set()
        self.request_ids = RequestIds(getattr(config, "request_id", None))
        self.chains = HttpChains(config.http_filters, config.route_config, context)
        """The filter chains and route table, replaced whole when only the route table changes
        (see prepare_snapshot); a request reads it once, when it is dispatched."""
        trusted = [name for f in self.chains.filters for name in getattr(f, "trusted_request_headers", ())]
        self.edge = EdgePolicy.from_config(config, trusted)
        """Path normalisation and header hygiene, before routing (meshcore/http/edge.py)."""
        stats = context.stats
        labels = {"listener": self.listener}
        self.stat_rq_total = stats.counter("http_downstream_rq_total", **labels)
        self.stat_rq_active = stats.gauge("http_downstream_rq_active", **labels)
        self.stat_classes = [
            stats.counter("http_downstream_rq_xx", code_class=f"{i}xx", **labels) for i in range(1, 6)
        ]
        self.stat_bytes_in = stats.counter("http_downstream_rq_rx_bytes_total", **labels)
        self.stat_bytes_out = stats.counter("http_downstream_rq_tx_bytes_total", **labels)
        self.stat_latency = stats.histogram("http_downstream_rq_time_ms", **labels)
        self.stat_rejected = stats.counter("http_downstream_rq_rejected", **labels)
        self.stat_grpc: dict[int, Counter] = {}
        self.draining = False
        # Connections waiting for a request (or their first bytes), by the scope that waits.
        self.idle_scopes: dict[trio.CancelScope, trio.abc.Stream] = {}
        self.overload: Any = getattr(context, "overload", None)

    def drain(self) -> None:
        """Finish current requests, then close.

        Idle connections close now, busy ones after their response (which says
        ``connection: close``). An idle connection's FIN goes out before this returns, not
        when its task next runs: a keep-alive client that reuses the connection right after
        the change sees it closed, instead of sending a request into a socket about to be
        reset (RFC 9112 section 9.6).
        """
        self.draining = True
        for scope, stream in self.idle_scopes.items():
            _shut_down_sending(stream)
            scope.cancel()
        for session in self.h2_sessions:
            session.goaway()
            if session.nursery is not None:
                session.nursery.start_soon(session.drain)

    # -- across Snapshots (see meshcore.runtime.filterstate) ------------------------------------------

    @property
    def routes(self) -> RouteTable:
        """The route table requests are matched against now."""
        return self.chains.routes

    def carry_over(self, previous: object) -> None:
        """Hand each HTTP filter the one it replaces in ``previous`` (the manager this one replaces)."""
        if isinstance(previous, HttpConnectionManager):
            self.chains.carry_over(previous.chains)

    def prepare_snapshot(self, snapshot: Snapshot) -> Commit | None:
        """Follow a new Snapshot in place, without being rebuilt.

        A changed route table is compiled now and swapped in by the returned function: the
        next request on every connection takes it, and nothing drains. HTTP filters that
        follow Snapshots themselves are asked too.
        """
        context = attrs.evolve(self.context, snapshot=snapshot)
        chains, commits = self.chains.prepare(snapshot, context)

        def install() -> None:
            self.context = context
            self.chains = chains
            for commit in commits:
                commit()

        return install

    def __call__(
        self, conn: Connection, _call_next: Callable[[Connection], Awaitable[None]]
    ) -> Awaitable[None]:
        """Serve HTTP on ``conn`` until it closes (terminal: ``_call_next`` is unused).

        HTTP/2 when TLS negotiated ``h2``, or when the client opens with the HTTP/2
        connection preface (prior knowledge, h2c); HTTP/1.1 otherwise.

        A plain function handing back the session's coroutine: one frame less for every
        suspension of every request on the connection to unwind and resume.
        """
        protocol = self.protocol
        if conn.alpn == "h2" or protocol == "http2":
            return H2ServerSession(self, conn).run()
        # None: the session reads the first bytes itself, to tell HTTP/1.1 from HTTP/2.
        return H1Session(self, conn, None if protocol == "auto" and conn.alpn is None else b"").run()

    async def _sniff(self, conn: Connection) -> bytes:
        """The first bytes of a connection: enough to tell the HTTP/2 preface from HTTP/1.1."""
        data = b""
        try:
            with trio.move_on_after(self.idle_timeout) as idle:
                self.idle_scopes[idle] = conn.stream  # a drain closes a connection that sent nothing yet
                try:
                    data = bytes(await conn.stream.receive_some(RECEIVE_SIZE))
                finally:
                    self.idle_scopes.pop(idle, None)
            # A prefix of the preface: read on, within the headers timeout.
            with trio.move_on_after(self.headers_timeout):
                while data and len(data) < len(PREFACE) and PREFACE.startswith(data):
                    chunk = await conn.stream.receive_some(RECEIVE_SIZE)
                    if not chunk:
                        break
                    data += chunk
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""
        return data

    # -- per request, whatever the protocol -----------------------------------------------------

    async def dispatch(self, request: Request) -> Response:
        """Match the route, run the filter chain; never raises for a bad request or filter bug."""
        self.stat_rq_total.value += 1
        self.stat_rq_active.value += 1
        refused = self.edge.prepare(request)  # path normalisation, header hygiene
        # Once the edge decided whom to trust (request.info.internal: a mesh peer). A refused
        # request gets an id too, for its access-log line.
        self.request_ids.apply(request)
        if refused is not None:
            if self.request_ids.in_response:
                self.request_ids.respond(request, refused)
            return refused
        chains = self.chains
        route: CompiledRoute | None = chains.routes.match(request)
        chain = chains.chain
        if route is not None:
            request.route = route
            request.info.route_name = route.name
            runtime: RouteRuntime | None = route.chain
            if runtime is not None:
                runtime.requests.value += 1
                if runtime.chain is not None:
                    chain = runtime.chain
        overload = self.overload
        try:
            _check_declared_length(request.body)
            if overload is not None and overload.rejecting:
                overload.stat_rejected.value += 1
                request.info.flags.add(ResponseFlag.OVERLOAD)
                response = Response.local(503, status_text(503), headers=[("connection", "close")])
            else:
                response = await chain(request)
        except ProtocolError as err:
            if err.remote:
                request.info.flags.add(ResponseFlag.DOWNSTREAM_PROTOCOL_ERROR)
            log.warning("request_failed", listener=self.listener, status=err.status, reason=str(err))
            response = Response.local(err.status, status_text(err.status), headers=[("connection", "close")])
        except Exception:
            log.exception("filter_chain_crashed", listener=self.listener, path=request.path)
            response = Response.local(500, "internal error in a filter\n", headers=[("connection", "close")])
        if request.info.flags and response.status != HTTPStatus.OK and is_grpc(request):
            response = grpc_local_reply(request, response)
        if self.request_ids.in_response:
            self.request_ids.respond(request, response)
        return response

    def record(self, request: Request, response: Response) -> None:
        """Count the finished request, tell its observers, write its access-log line (if enabled)."""
        self.stat_rq_active.value -= 1
        request.info.complete(request, response)
        self.stat_bytes_in.value += request.body.consumed
        self.stat_bytes_out.value += response.body.consumed
        self.stat_latency.observe((time.monotonic() - request.info.start) * 1000)
        route = request.route
        if response.status:  # 0: no response was sent (the client reset the stream first)
            index = min(max(response.status // 100, 1), 5) - 1
            self.stat_classes[index].value += 1
            # A filter may have set a route of its own (any MatchedRoute): only ours count.
            if isinstance(route, CompiledRoute) and route.chain is not None:
                route.chain.classes[index].value += 1
        grpc = is_grpc(request)
        grpc_status = grpc_status_of(response) if grpc else None
        if grpc_status is not None:
            counter = self.stat_grpc.get(grpc_status)
            if counter is None:  # once per status code seen
                counter = self.stat_grpc[grpc_status] = self.context.stats.counter(
                    "http_downstream_grpc_status", listener=self.listener, code=str(grpc_status)
                )
            counter.value += 1
        if self.access_logger is not None:
            self.access_logger.log_http(request, response)


def _shut_down_sending(stream: trio.abc.Stream) -> None:
    """Send FIN on ``stream``'s socket now.

    A TLS stream's too, without close_notify: the connection is idle, nothing is cut short.
    """
    if isinstance(stream, TLS_STREAMS):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        with contextlib.suppress(OSError):
            stream.socket.shutdown(socket.SHUT_WR)
