"""The HTTP connection manager: the terminal L4 filter that speaks HTTP/1.1.

Per Snapshot it compiles the route table and the L7 filter chain (and a chain per route
that overrides filter settings: :mod:`meshcore.runtime.http_chains`); a Snapshot that changes only
the route table swaps it in place. Per connection it runs one loop: no task per request.
Per request: decode the head, match the route, run the chain, stream the response.
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
from meshcore.http.codec import CLOSED, NEED_DATA, Data, EndOfMessage, RequestHead
from meshcore.http.edge import EdgePolicy
from meshcore.http.grpc import grpc_local_reply, grpc_status_of, is_grpc
from meshcore.http.h1 import H11ServerCodec
from meshcore.http.h1fast import FastServerCodec
from meshcore.http.messages import Body, Headers, ParsedHeaders, Request, Response, StreamInfo
from meshcore.http.routing import CompiledRoute, RouteTable
from meshcore.http.semantics import REASONS, connection_tokens, split_absolute_form, strip_hop_by_hop
from meshcore.runtime.context import FilterContext
from meshcore.runtime.filterstate import Commit
from meshcore.runtime.h2server import PREFACE, H2ServerSession
from meshcore.runtime.http_chains import HttpChains, RouteRuntime, build_chain
from meshcore.runtime.linger import send_and_linger
from meshcore.runtime.pipe import splice
from meshcore.runtime.sockio import StreamIO
from meshcore.runtime.stats import Counter
from meshcore.runtime.tls import TLS_STREAMS
from meshcore.telemetry.request_id import RequestIds

__all__ = ["HttpConnectionManager", "build_chain", "status_text"]

log = structlog.get_logger("meshcore.http")

RECEIVE_SIZE = 64 * 1024


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


def _check_declared_length(body: Body) -> None:
    """413 for a body that announces more than its limit, before anything reaches an upstream."""
    if body.limit is not None and body.length is not None and body.length > body.limit:
        msg = f"request body of {body.length} bytes, more than the limit of {body.limit}"
        raise ProtocolError(msg, status=413)


class _HeadersTimeoutError(ProtocolError):
    """The client did not send a complete request head within the headers timeout."""


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
        return _H1Session(self, conn, None if protocol == "auto" and conn.alpn is None else b"").run()

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


class _H1Session:
    """One downstream HTTP/1.1 connection."""

    __slots__ = ("codec", "conn", "hcm", "initial", "io", "served", "stream")

    def __init__(self, hcm: HttpConnectionManager, conn: Connection, initial: bytes | None = b"") -> None:
        self.hcm = hcm
        self.conn = conn
        self.stream = conn.stream
        self.io = StreamIO(conn.stream)
        self.codec: H11ServerCodec | FastServerCodec = (
            FastServerCodec(max_head_size=hcm.max_head)
            if hcm.fast_codec
            else H11ServerCodec(max_head_size=hcm.max_head)
        )
        self.served = 0
        self.initial = initial

    async def run(self) -> None:
        hcm, codec = self.hcm, self.codec
        if self.initial is None:
            initial = await hcm._sniff(self.conn)  # noqa: SLF001 - the session's own manager
            if initial.startswith(PREFACE):
                await H2ServerSession(hcm, self.conn, initial).run()
                return
            if not initial:
                return
            self.initial = initial
        while self.served < hcm.max_requests:
            try:
                initial = self.initial
                started = bool(initial)
                if initial:
                    codec.receive_data(initial)  # bytes read while telling HTTP/1.1 from HTTP/2
                    self.initial = b""
                head = await self._read_head(started=started)
            except ProtocolError as err:
                await self._reject(err)
                return
            if head is None:
                return
            self.served += 1
            try:
                request = self._request(head)
            except ProtocolError as err:
                await self._reject(err)
                return
            # Serve it here rather than in a method of its own: one frame less for each
            # suspension of the request (the upstream's answer, the writes) to unwind.
            response = await hcm.dispatch(request)
            try:
                completed = await self._write_response(request, response)
            except ProtocolError as err:
                # Trailers the codec refuses to write (one could split the message): close
                # the connection without ending the message, so the client sees it incomplete.
                log.warning("response_invalid", listener=hcm.listener, reason=str(err))
                response.body.close()
                completed = False
            finally:
                hcm.record(request, response)
            # A request body nobody read keeps the connection out of step: close it.
            if not completed or not codec.request_complete or not codec.start_next_cycle():
                return

    async def _receive(self) -> None:
        self.codec.receive_data(await self.io.receive(RECEIVE_SIZE))

    async def _read_head(self, *, started: bool = False) -> RequestHead | None:
        """The next request head; None when the client is gone, idle too long, or we drain.

        Waiting for the first byte is bounded by the idle timeout (and cut short by a drain);
        from the first byte on, the whole head must arrive within the headers timeout.
        """
        hcm, codec = self.hcm, self.codec
        event = codec.next_event()
        if event is NEED_DATA and not started:
            if hcm.draining:
                return None
            data = await self._first_bytes()
            if data is None:
                return None
            codec.receive_data(data)
            event = codec.next_event()
        if event is NEED_DATA:
            with trio.move_on_after(hcm.headers_timeout):
                while event is NEED_DATA:
                    try:
                        await self._receive()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return None
                    event = codec.next_event()
            if event is NEED_DATA:
                msg = "request headers not received in time"
                raise _HeadersTimeoutError(msg, status=408)
        if type(event) is RequestHead:
            return event
        if event is CLOSED:
            return None
        msg = f"unexpected {type(event).__name__} before a request head"
        raise ProtocolError(msg, status=400)

    async def _first_bytes(self) -> bytes | None:
        """The first bytes of the next request; None when the client is gone, idle too long, or we drain.

        The next request is usually there already: a cancel scope (for the idle timeout, and
        for a drain to find the connection) only when waiting for it.
        """
        hcm = self.hcm
        try:
            data = await self.io.try_receive(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        if data is not None:
            return data
        if hcm.draining:  # began during try_receive's schedule point
            return None
        with trio.move_on_after(hcm.idle_timeout) as idle:
            hcm.idle_scopes[idle] = self.stream
            try:
                data = await self.io.wait_receive(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            finally:
                hcm.idle_scopes.pop(idle, None)
        return None if idle.cancelled_caught else data

    async def _reject(self, err: ProtocolError) -> None:
        """Answer a bad request with its status, log it, and close the connection."""
        hcm = self.hcm
        flag = (
            ResponseFlag.DOWNSTREAM_HEADERS_TIMEOUT
            if isinstance(err, _HeadersTimeoutError)
            else ResponseFlag.DOWNSTREAM_PROTOCOL_ERROR
        )
        hcm.stat_rejected.value += 1
        hcm.stat_classes[err.status // 100 - 1].value += 1
        log.warning(
            "request_rejected",
            listener=hcm.listener,
            peer=self.conn.peer,
            status=err.status,
            flags=flag.value,
            reason=str(err),
        )
        body = status_text(err.status).encode()  # never the reason: it quotes what the client sent
        reason = REASONS.get(err.status, b"")
        raw = (
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
            b"connection: close\r\nx-meshcore-flags: %s\r\n\r\n%s"
        ) % (err.status, reason, len(body), flag.value.encode(), body)
        await send_and_linger(self.stream, raw)

    def _request(self, head: RequestHead) -> Request:
        if head.method == b"CONNECT":
            # No tunnels over HTTP/1.1: a 2xx to CONNECT would switch the connection to a byte
            # pipe (h11 then refused the response body, and the task crashed the listener).
            msg = "CONNECT is not supported"
            raise ProtocolError(msg, status=501)
        authority = upgrade = connection = b""
        target = head.target
        headers = []
        for name, value in head.headers:
            if name == b"host":
                authority = value
                continue
            headers.append((name, value))
            if name == b"upgrade":
                upgrade = value
            elif name == b"connection":
                connection += b"," + value
        headers = strip_hop_by_hop(headers)
        if len(head.headers) > self.hcm.max_headers:
            msg = f"more than {self.hcm.max_headers} request headers"
            raise ProtocolError(msg, status=431)
        absolute = split_absolute_form(target)
        if absolute is not None:  # its authority wins over Host; the upstream gets origin form
            authority, target = absolute
        body = self._request_body(head)
        info = StreamInfo(downstream_address=self.conn.peer, connection_id=self.conn.id)
        request = Request(
            head.method.decode("ascii"),
            target.decode("latin-1"),
            authority=authority.decode("latin-1"),
            scheme=self.hcm.scheme,
            # The fast codec's parser checks every field as strictly as its writer does: the
            # upstream side need not check again those no filter changed.
            headers=ParsedHeaders.parsed_from(headers) if self.hcm.fast_codec else Headers.from_raw(headers),
            body=body,
            http_version=head.http_version.decode("ascii"),
            info=info,
            connection=self.conn,
        )
        if upgrade and b"upgrade" in connection_tokens(connection):
            protocol = upgrade.decode("latin-1").strip().lower()
            if protocol != "h2c":  # ignored, not refused: served over HTTP/1.1 (RFC 9113 section 3.1)
                request.upgrade = protocol
        return request

    def _request_body(self, head: RequestHead) -> Body:
        """The request's body, as its framing headers announce it."""
        length = None
        chunked = False
        for name, value in head.headers:
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = True
        if length == 0 or (length is None and not chunked):
            # Take the empty body's end from the codec (it needs no bytes): only then is the
            # request complete, and the connection free for the next one.
            self.codec.next_event()
            return Body.empty()
        limit = self.hcm.max_body
        if limit is not None and length is not None and length > limit:
            msg = f"request body of {length} bytes, more than the limit of {limit}"
            raise ProtocolError(msg, status=413)
        body = Body(self._read_body_chunk, length=length)
        body.limit = limit
        return body

    async def _read_body_chunk(self) -> bytes:
        codec = self.codec
        while True:
            event = codec.next_event()
            if type(event) is Data:
                return event.data
            if type(event) is EndOfMessage:
                return b""
            if event is NEED_DATA:
                if codec.expects_continue:
                    await self.stream.send_all(codec.send_informational(100, []))
                await self._receive()
                continue
            msg = "client closed the connection in the middle of the request body"
            raise ProtocolError(msg, status=400)

    async def _write_response(self, request: Request, response: Response) -> bool:
        """Stream the response; False if it could not be completed (then the connection closes)."""
        if response.status == HTTPStatus.SWITCHING_PROTOCOLS and response.upgraded is not None:
            await self._splice(request, response)
            return False
        codec, body = self.codec, response.body
        headers = response.headers.raw
        info = request.info
        if info.flags:
            headers = [*headers, (b"x-meshcore-flags", info.flag_string().encode())]
        overload = self.hcm.overload
        if self.hcm.draining or (overload is not None and overload.keepalive_disabled):
            headers = [*headers, (b"connection", b"close")]
        try:
            pending = codec.send_response_head(response.status, headers)
        except ProtocolError as err:
            log.warning("response_invalid", listener=self.hcm.listener, reason=str(err))
            body.close()
            pending = codec.send_response_head(502, [(b"content-length", b"0"), (b"connection", b"close")])
            await self._send(pending + codec.send_end())
            return False
        # A reply to HEAD, and a 204 or 304, has no body on the wire, even when the response
        # object has one (a local reply to HEAD): read it to its end, send none of it.
        no_body = request.method == "HEAD" or response.status in (204, 304)
        try:
            while True:
                try:
                    chunk = await body.read()
                except Exception as err:  # noqa: BLE001 - whatever a body reader raises ends the response alike
                    # Upstream reset or timeout mid-response: never pass off a truncated body
                    # as complete. Close without ending the message.
                    flag = getattr(err, "flag", ResponseFlag.UPSTREAM_RESET)
                    info.flags.add(flag)
                    log.warning(
                        "response_aborted", listener=self.hcm.listener, flags=flag.value, reason=str(err)
                    )
                    if pending:
                        await self._send(pending)
                    return False
                if not chunk:
                    break
                if no_body:
                    continue
                pending += codec.send_data(chunk)
                if body.length is None or body.consumed < body.length:
                    await self._send_timed(pending)
                    pending = b""
            trailers = body.trailers.raw if body.trailers is not None else None
            await self._send_timed(pending + codec.send_end(trailers))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            info.flags.add(ResponseFlag.DOWNSTREAM_CONNECTION_TERMINATION)
            body.close()
            return False
        except trio.TooSlowError:
            # The client stopped reading: disconnect it, and free the upstream side.
            info.flags.add(ResponseFlag.STREAM_IDLE_TIMEOUT)
            log.warning("stream_idle_timeout", listener=self.hcm.listener, peer=self.conn.peer)
            body.close()
            return False
        return True

    async def _send_timed(self, data: bytes) -> None:
        """Send to the client; trio.TooSlowError if it takes none of it for the stream idle timeout."""
        io = self.io
        sent = io.try_send(data)
        if sent == len(data):  # it fit the socket buffer: nothing to wait for, no cancel scope
            return
        # A bare cancel scope: trio.fail_after is a generator context manager, twice the cost
        # of the scope itself.
        with trio.CancelScope(relative_deadline=self.hcm.stream_idle_timeout) as scope:
            await io.send_rest(data, sent)
        if scope.cancelled_caught:
            raise trio.TooSlowError

    async def _splice(self, request: Request, response: Response) -> None:
        """Switch protocols: answer 101, then the connection is a byte pipe to the upstream."""
        upgraded = response.upgraded
        assert upgraded is not None  # noqa: S101 - checked by the caller
        try:
            token = (request.upgrade or "").encode("latin-1")
            headers = [*response.headers.raw, (b"connection", b"upgrade"), (b"upgrade", token)]
            head = self.codec.send_informational(101, headers)
            leftover = self.codec.trailing_data
            await self.stream.send_all(head + upgraded.leftover)
            if leftover:
                await upgraded.stream.send_all(leftover)
            await splice(self.stream, upgraded.stream, idle_timeout=self.hcm.idle_timeout)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            request.info.flags.add(ResponseFlag.DOWNSTREAM_CONNECTION_TERMINATION)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await upgraded.stream.aclose()

    async def _send(self, data: bytes) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.io.send(data)
