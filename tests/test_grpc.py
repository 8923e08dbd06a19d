"""gRPC through the proxy, end to end, with the real ``grpcio`` client and server.

A small service (``test.Echo``, raw bytes, no protoc: grpc's generic handlers) runs in
grpc's own threads on loopback. The proxy listens for HTTP/2 with prior knowledge (what
grpcio's insecure channels speak) and forwards to it over HTTP/2. Client calls block, so
they run in a thread (``trio.to_thread``), each bounded by its own gRPC timeout and by
``trio.fail_after`` around it.

Proven here: the four kinds of call (unary, server streaming, client streaming,
bidirectional) with their messages, metadata in both directions (trailing metadata
included) and statuses intact; local replies toward a gRPC client are gRPC errors
(UNAVAILABLE, UNIMPLEMENTED, DEADLINE_EXCEEDED, and the fault and rate-limit filters'
statuses); ``grpc-timeout`` is the request's deadline at the proxy; grpc-status reaches
the stats and the access log, grpc-message the access log.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from concurrent import futures
from typing import Any, TypeVar, cast

import attrs
import grpc
import pytest
import structlog
import trio
import trio.testing

from meshcore.runtime.proxy import Proxy
from meshcore.testing.client import fetch
from meshcore.testing.harness import http_proxy_config, start_proxy
from meshcore.testing.upstreams import serve_upstream

SERVICE = "test.Echo"
CALL_TIMEOUT = 5.0  # every gRPC call's own deadline, unless a test sets a shorter one
T = TypeVar("T")
Metadata = tuple[tuple[str, str | bytes], ...]
LogEntries = list[MutableMapping[str, Any]]

# -- the service ------------------------------------------------------------------------------


@attrs.define
class EchoService:
    """The handlers of ``test.Echo``; ``slow_ended`` says how each Slow call ended."""

    slow_ended: queue.Queue[str] = attrs.field(factory=queue.Queue)

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """Echo the request and the ``x-tag`` metadata; ``fail…`` ends with a non-OK status."""
        metadata = dict(context.invocation_metadata())
        context.send_initial_metadata((("x-initial", "hello"), ("x-initial-bin", b"\x00\x01")))
        if request.startswith(b"fail"):
            context.set_trailing_metadata((("x-trailing", "sorry"), ("x-reason-bin", b"\xff\x00\xfe")))
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no such thing: ü/%")
        tag, tag_bin = str(metadata["x-tag"]).encode(), metadata["x-tag-bin"]
        assert isinstance(tag_bin, bytes)
        context.set_trailing_metadata((("x-trailing", "bye"), ("x-echo-bin", tag_bin)))
        return b"echo:" + request + b":" + tag

    def server_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        """``COUNT[:SIZE]``: COUNT messages (of SIZE bytes), then trailing metadata with COUNT."""
        count, _, size = request.partition(b":")
        for i in range(int(count)):
            yield bytes([48 + i % 10]) * int(size) if size else b"item-%d" % i
        context.set_trailing_metadata((("x-count", count.decode()),))

    def client_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        """Every message joined with ``|``."""
        context.set_trailing_metadata((("x-kind", "client-stream"),))
        return b"|".join(requests)

    def bidi(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        """Answer each message as it arrives (the client may wait for it before sending more)."""
        for request in requests:
            yield b"pong:" + request
        context.set_trailing_metadata((("x-kind", "bidi"),))

    def slow(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """Answer after ``float(request)`` seconds, or as soon as the call ends (cancelled)."""
        ended = threading.Event()
        context.add_callback(ended.set)
        finished_early = ended.wait(float(request))
        self.slow_ended.put("ended early" if finished_early else "slept")
        return b"slow"

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler of ``test.Echo`` (no (de)serializers: messages are bytes)."""
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
                "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
                "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
                "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
                "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
            },
        )


@attrs.frozen
class EchoServer:
    """The running grpc server: its port and its service."""

    port: int
    service: EchoService

    @property
    def endpoint(self) -> str:
        """The endpoint for the proxy's cluster."""
        return f"127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def echo_server() -> Iterator[EchoServer]:
    """``test.Echo`` on a grpc server of its own (grpc's threads), stopped at teardown."""
    service = EchoService()
    executor = futures.ThreadPoolExecutor(max_workers=8)
    server = grpc.server(executor)
    server.add_generic_rpc_handlers((service.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield EchoServer(port, service)
    finally:
        server.stop(grace=None).wait(5)
        executor.shutdown(wait=True)


# -- the client and the proxy -----------------------------------------------------------------


async def call(proxy: Proxy, rpc: Callable[[grpc.Channel], T], options: Sequence[tuple[str, int]] = ()) -> T:
    """Run ``rpc`` on a new channel to the proxy, in a thread (grpcio's calls block)."""
    host, port = proxy.address("ingress")
    # No HTTP proxy from the environment: the channel goes straight to the listener.
    channel_options = [("grpc.enable_http_proxy", 0), *options]

    def run() -> T:
        with grpc.insecure_channel(f"{host}:{port}", options=channel_options) as channel:
            return rpc(channel)

    with trio.fail_after(CALL_TIMEOUT + 5):
        return await trio.to_thread.run_sync(run)


def rpc_error(rpc: Callable[[grpc.Channel], object]) -> Callable[[grpc.Channel], grpc.Call]:
    """``rpc``, expected to fail: returns the error, which is the call (code, details, metadata)."""

    def run(channel: grpc.Channel) -> grpc.Call:
        try:
            rpc(channel)
        except grpc.RpcError as err:
            # grpcio raises a call object that is both (the stubs cannot say so).
            return cast("grpc.Call", err)
        msg = "the call succeeded"
        raise AssertionError(msg)

    return run


def unary(
    request: bytes, *, timeout: float = CALL_TIMEOUT, metadata: Metadata = ()
) -> Callable[[grpc.Channel], tuple[bytes, grpc.Call]]:
    """A Unary call returning ``(response, call)``."""

    def run(channel: grpc.Channel) -> tuple[bytes, grpc.Call]:
        stub: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(f"/{SERVICE}/Unary")
        return stub.with_call(request, timeout=timeout, metadata=metadata)

    return run


def slow(seconds: float, *, timeout: float) -> Callable[[grpc.Channel], bytes]:
    """A Slow call (the server answers after ``seconds``)."""

    def run(channel: grpc.Channel) -> bytes:
        stub: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(f"/{SERVICE}/Slow")
        return stub(str(seconds).encode(), timeout=timeout)

    return run


def status(err: grpc.Call) -> tuple[grpc.StatusCode, str]:
    """The code and details of a failed call."""
    return err.code(), err.details() or ""


async def start(
    nursery: trio.Nursery,
    endpoints: Sequence[str],
    *,
    routes: Sequence[Mapping[str, Any]] | None = None,
    http_filters: Sequence[Any] = ("router",),
    clusters: Sequence[Mapping[str, Any]] = (),
) -> Proxy:
    """A proxy (access log on) in front of ``endpoints``, spoken to over HTTP/2 (the cluster)."""
    config = http_proxy_config(
        endpoints,
        routes=routes,
        http_filters=http_filters,
        cluster={"protocol": "http2"},
        listener={"access_log": True},
    )
    config["clusters"] += clusters
    return await start_proxy(nursery, config)


async def access_log_line(logs: LogEntries, path: str) -> MutableMapping[str, Any]:
    """The access-log line of the one request to ``path``.

    The proxy writes it right after sending the end of the response, and the client may see
    that end first: wait until every task is blocked, so the proxy has written it.
    """
    await trio.testing.wait_all_tasks_blocked()
    lines = [e for e in logs if e["event"] == "request_completed" and e["path"] == path]
    assert len(lines) == 1, logs
    return lines[0]


async def slow_ending(server: EchoServer) -> str:
    """How the next Slow call ended at the server (waits for it, up to 2 s)."""
    with trio.fail_after(3):
        return await trio.to_thread.run_sync(lambda: server.service.slow_ended.get(timeout=2))


def grpc_stat(proxy: Proxy, code: grpc.StatusCode) -> int | float:
    """How many gRPC calls the listener answered with ``code``."""
    return proxy.stats.value("http_downstream_grpc_status", listener="ingress", code=str(code.value[0]))


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- the four kinds of call -------------------------------------------------------------------


async def test_unary_carries_messages_metadata_and_trailers(
    nursery: trio.Nursery, echo_server: EchoServer
) -> None:
    proxy = await start(nursery, [echo_server.endpoint])
    metadata: Metadata = (("x-tag", "blue"), ("x-tag-bin", b"\x00\x10\xff"))
    with structlog.testing.capture_logs() as logs:
        response, done = await call(proxy, unary(b"hi", metadata=metadata))
        line = await access_log_line(logs, f"/{SERVICE}/Unary")
    assert response == b"echo:hi:blue"
    assert done.code() == grpc.StatusCode.OK
    initial = list(done.initial_metadata())
    assert ("x-initial", "hello") in initial
    assert ("x-initial-bin", b"\x00\x01") in initial
    trailing = list(done.trailing_metadata())
    assert ("x-trailing", "bye") in trailing
    assert ("x-echo-bin", b"\x00\x10\xff") in trailing  # binary metadata, in and back out
    assert (line["status"], line["grpc_status"], line["flags"]) == (200, 0, "-")
    assert not line["grpc_message"]  # none, or empty
    assert line["protocol"] == "HTTP/2"
    assert grpc_stat(proxy, grpc.StatusCode.OK) == 1


async def test_a_non_ok_status_from_the_server_arrives_intact(
    nursery: trio.Nursery, echo_server: EchoServer
) -> None:
    proxy = await start(nursery, [echo_server.endpoint])
    metadata: Metadata = (("x-tag", "red"), ("x-tag-bin", b""))
    with structlog.testing.capture_logs() as logs:
        err = await call(proxy, rpc_error(unary(b"fail", metadata=metadata)))
        line = await access_log_line(logs, f"/{SERVICE}/Unary")
    assert status(err) == (grpc.StatusCode.FAILED_PRECONDITION, "no such thing: ü/%")
    assert ("x-initial", "hello") in list(err.initial_metadata())
    trailing = list(err.trailing_metadata())
    assert ("x-trailing", "sorry") in trailing
    assert ("x-reason-bin", b"\xff\x00\xfe") in trailing
    assert line["grpc_status"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert line["grpc_message"] == "no such thing: ü/%"
    assert line["flags"] == "-"
    assert grpc_stat(proxy, grpc.StatusCode.FAILED_PRECONDITION) == 1
    assert grpc_stat(proxy, grpc.StatusCode.OK) == 0


async def test_server_streaming(nursery: trio.Nursery, echo_server: EchoServer) -> None:
    proxy = await start(nursery, [echo_server.endpoint])

    def run(channel: grpc.Channel) -> tuple[list[bytes], grpc.Call]:
        stub: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(f"/{SERVICE}/ServerStream")
        responses = stub(b"50", timeout=CALL_TIMEOUT)
        return list(responses), responses

    messages, done = await call(proxy, run)
    assert messages == [b"item-%d" % i for i in range(50)]
    assert done.code() == grpc.StatusCode.OK
    assert ("x-count", "50") in list(done.trailing_metadata())


async def test_client_streaming(nursery: trio.Nursery, echo_server: EchoServer) -> None:
    proxy = await start(nursery, [echo_server.endpoint])
    sent = [b"a", b"bb", b"x" * 100_000, b"ccc"]  # one message larger than a frame, and a window

    def run(channel: grpc.Channel) -> tuple[bytes, grpc.Call]:
        stub: grpc.StreamUnaryMultiCallable[bytes, bytes] = channel.stream_unary(f"/{SERVICE}/ClientStream")
        return stub.with_call(iter(sent), timeout=CALL_TIMEOUT)

    response, done = await call(proxy, run)
    assert response == b"|".join(sent)
    assert ("x-kind", "client-stream") in list(done.trailing_metadata())


async def test_bidirectional_streaming_answers_each_message_before_the_next_is_sent(
    nursery: trio.Nursery, echo_server: EchoServer
) -> None:
    # Ping-pong: the client sends a message only after the answer to the previous one came
    # back, so the proxy must relay both directions at once (full duplex), not the whole
    # request first.
    proxy = await start(nursery, [echo_server.endpoint])
    count = 5

    def run(channel: grpc.Channel) -> tuple[list[bytes], grpc.Call]:
        answered: queue.Queue[bytes | None] = queue.Queue()

        def requests() -> Iterator[bytes]:
            for i in range(count):
                yield b"ping-%d" % i
                if answered.get(timeout=CALL_TIMEOUT) is None:
                    return  # the call is over (failed): stop sending

        stub: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(f"/{SERVICE}/Bidi")
        responses = stub(requests(), timeout=CALL_TIMEOUT)
        received = []
        try:
            for response in responses:
                received.append(response)
                answered.put(response)
        finally:
            answered.put(None)
        return received, responses

    received, done = await call(proxy, run)
    assert received == [b"pong:ping-%d" % i for i in range(count)]
    assert done.code() == grpc.StatusCode.OK
    assert ("x-kind", "bidi") in list(done.trailing_metadata())


# -- local replies are gRPC errors ------------------------------------------------------------


async def test_an_injected_fault_is_the_configured_grpc_status(
    nursery: trio.Nursery, echo_server: EchoServer
) -> None:
    routes = [
        {
            "name": "faulty",
            "match": {"prefix": "/"},
            "cluster": "backend",
            "filters": {"fault": {"abort": {"grpc_status": 14, "percentage": 100}}},
        }
    ]
    proxy = await start(nursery, [echo_server.endpoint], routes=routes, http_filters=["fault", "router"])
    with structlog.testing.capture_logs() as logs:
        err = await call(proxy, rpc_error(unary(b"hi")))
        line = await access_log_line(logs, f"/{SERVICE}/Unary")
    assert status(err) == (grpc.StatusCode.UNAVAILABLE, "fault filter abort")
    assert (line["status"], line["grpc_status"], line["flags"]) == (200, 14, "FI")
    assert line["grpc_message"] == "fault filter abort"
    assert grpc_stat(proxy, grpc.StatusCode.UNAVAILABLE) == 1


async def test_a_rate_limited_call_is_resource_exhausted(
    nursery: trio.Nursery, echo_server: EchoServer
) -> None:
    limit = {"local_ratelimit": {"max_tokens": 1, "fill_interval": "1h"}}
    proxy = await start(nursery, [echo_server.endpoint], http_filters=[limit, "router"])
    metadata: Metadata = (("x-tag", "t"), ("x-tag-bin", b""))
    with structlog.testing.capture_logs() as logs:
        first, _ = await call(proxy, unary(b"one", metadata=metadata))
        err = await call(proxy, rpc_error(unary(b"two", metadata=metadata)))
        await trio.testing.wait_all_tasks_blocked()
    assert first == b"echo:one:t"
    assert status(err) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "local rate limited")
    lines = [e for e in logs if e["event"] == "request_completed"]
    assert [(e["grpc_status"], e["flags"]) for e in lines] == [(0, "-"), (8, "RL")]
    assert grpc_stat(proxy, grpc.StatusCode.RESOURCE_EXHAUSTED) == 1
    assert grpc_stat(proxy, grpc.StatusCode.OK) == 1


async def test_an_endpoint_that_is_down_is_unavailable(nursery: trio.Nursery) -> None:
    proxy = await start(nursery, [f"127.0.0.1:{closed_port()}"])
    with structlog.testing.capture_logs() as logs:
        err = await call(proxy, rpc_error(unary(b"hi")))
        line = await access_log_line(logs, f"/{SERVICE}/Unary")
    code, details = status(err)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "UF" in details
    assert (line["status"], line["grpc_status"], line["flags"]) == (200, 14, "UF")
    assert grpc_stat(proxy, grpc.StatusCode.UNAVAILABLE) == 1


async def test_no_route_is_unimplemented(nursery: trio.Nursery, echo_server: EchoServer) -> None:
    routes = [{"name": "other", "match": {"prefix": "/other.Service/"}, "cluster": "backend"}]
    proxy = await start(nursery, [echo_server.endpoint], routes=routes)
    with structlog.testing.capture_logs() as logs:
        err = await call(proxy, rpc_error(unary(b"hi")))
        line = await access_log_line(logs, f"/{SERVICE}/Unary")
    code, details = status(err)
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert "NR" in details
    assert (line["status"], line["grpc_status"], line["flags"]) == (200, 12, "NR")
    assert grpc_stat(proxy, grpc.StatusCode.UNIMPLEMENTED) == 1


async def test_the_route_timeout_is_deadline_exceeded(nursery: trio.Nursery, echo_server: EchoServer) -> None:
    # The route's 300 ms fire long before the client's own deadline (5 s) and the server's
    # answer (3 s): the proxy answers, and resets the upstream stream.
    routes = [{"name": "short", "match": {"prefix": "/"}, "cluster": "backend", "timeout": "300ms"}]
    proxy = await start(nursery, [echo_server.endpoint], routes=routes)
    with structlog.testing.capture_logs() as logs:
        started = time.monotonic()
        err = await call(proxy, rpc_error(slow(3, timeout=CALL_TIMEOUT)))
        elapsed = time.monotonic() - started
        line = await access_log_line(logs, f"/{SERVICE}/Slow")
    code, details = status(err)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "UT" in details  # the proxy's reply, not the client's own deadline
    assert 0.3 <= elapsed < 2
    assert (line["status"], line["grpc_status"], line["flags"]) == (200, 4, "UT")
    assert grpc_stat(proxy, grpc.StatusCode.DEADLINE_EXCEEDED) == 1
    # The upstream saw the call end: it did not sleep its 3 s.
    assert await slow_ending(echo_server) == "ended early"


# -- grpc-timeout is the request's deadline ---------------------------------------------------


async def test_a_client_deadline_shorter_than_the_route_timeout_wins(
    nursery: trio.Nursery, echo_server: EchoServer
) -> None:
    # Three timers race here for about the same instant: the client's own deadline (0.5 s),
    # the proxy's (from the grpc-timeout header: the time left when the client built it,
    # whole milliseconds, counted from when the proxy read it), and the server's (the header
    # the proxy passed on, read later still). Measured: the client sends "499m" about 2 ms
    # after the call starts, and its own timer fires 2-3 ms late, so the proxy is often first
    # (UT: its DEADLINE_EXCEEDED reaches the client), and sometimes the client (its
    # RST_STREAM ends the request at the proxy: DC, status 0, nothing sent). Which one varies
    # from run to run. Deterministic: the client sees DEADLINE_EXCEEDED at its deadline, not
    # after the route timeout (10 s) nor the server's answer (3 s); the proxy logs the call
    # with one of those two flags and counts it done; the upstream call is cut short. That
    # the proxy enforces grpc-timeout by itself is proven by the next test, with no other
    # timer in the race.
    routes = [{"name": "long", "match": {"prefix": "/"}, "cluster": "backend", "timeout": "10s"}]
    proxy = await start(nursery, [echo_server.endpoint], routes=routes)
    with structlog.testing.capture_logs() as logs:
        started = time.monotonic()
        err = await call(proxy, rpc_error(slow(3, timeout=0.5)))
        elapsed = time.monotonic() - started
        assert await slow_ending(echo_server) == "ended early"  # the upstream call was cut short
        line = await access_log_line(logs, f"/{SERVICE}/Slow")
    assert status(err)[0] == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.5 <= elapsed < 1.5
    assert (line["flags"], line["status"], line["grpc_status"]) in [("UT", 200, 4), ("DC", 0, None)], line
    assert proxy.stats.value("http_downstream_rq_active", listener="ingress") == 0


@pytest.mark.parametrize(
    ("route_timeout", "grpc_timeout", "fires_after"),
    [
        pytest.param("10s", "300m", 0.3, id="grpc-timeout-shorter"),
        pytest.param("0s", "300000u", 0.3, id="no-route-timeout"),
        pytest.param("300ms", "10S", 0.3, id="route-timeout-shorter"),
    ],
)
async def test_the_proxy_enforces_the_shorter_of_grpc_timeout_and_the_route_timeout(
    nursery: trio.Nursery, route_timeout: str, grpc_timeout: str, fires_after: float
) -> None:
    # Deterministic: this client (HTTP/1.1, ours) and this upstream (the HTTP/1.1 test
    # server, answering after 3 s) have no deadline of their own, so only the proxy can end
    # the call early.
    upstream = await nursery.start(serve_upstream)
    routes = [{"name": "slow", "match": {"prefix": "/"}, "cluster": "plain", "timeout": route_timeout}]
    plain = [{"name": "plain", "endpoints": [f"{upstream[0]}:{upstream[1]}"]}]
    proxy = await start(nursery, [f"127.0.0.1:{closed_port()}"], routes=routes, clusters=plain)
    headers = [("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", grpc_timeout)]
    with trio.fail_after(5):
        started = time.monotonic()
        reply = await fetch(proxy.address("ingress"), "/delay/3000", method="POST", headers=headers, body=b"")
        elapsed = time.monotonic() - started
    assert reply.status == 200
    assert reply.header("grpc-status") == "4"
    assert reply.header("x-meshcore-flags") == "UT"
    assert fires_after <= elapsed < fires_after + 1


async def test_a_plain_http_request_ignores_grpc_timeout(nursery: trio.Nursery) -> None:
    upstream = await nursery.start(serve_upstream)
    routes = [{"name": "slow", "match": {"prefix": "/"}, "cluster": "plain", "timeout": "10s"}]
    plain = [{"name": "plain", "endpoints": [f"{upstream[0]}:{upstream[1]}"]}]
    proxy = await start(nursery, [f"127.0.0.1:{closed_port()}"], routes=routes, clusters=plain)
    with trio.fail_after(5):
        reply = await fetch(proxy.address("ingress"), "/delay/400", headers=[("grpc-timeout", "1m")])
    assert reply.status == 200
    assert reply.header("x-meshcore-flags") is None


async def test_calls_answered_before_their_request_body_was_read_do_not_starve_the_connection(
    nursery: trio.Nursery, echo_server: EchoServer
) -> None:
    # Each client-streaming call below is aborted by the fault filter before anything reads
    # its body; the client has sent up to a stream window (64 KiB) of it by then. The proxy
    # must give that flow-control credit back to the connection: 20 such calls exceed its
    # 1 MiB window, and the call after them must still get through on the same channel.
    proxy = await start(
        nursery, [echo_server.endpoint], http_filters=[{"fault": {"header_control": True}}, "router"]
    )
    sent = [b"x" * 100_000, b"y" * 100_000]

    def run(channel: grpc.Channel) -> tuple[list[grpc.StatusCode], bytes]:
        stub: grpc.StreamUnaryMultiCallable[bytes, bytes] = channel.stream_unary(f"/{SERVICE}/ClientStream")
        codes = []
        for _ in range(20):
            try:
                stub(iter(sent), timeout=CALL_TIMEOUT, metadata=(("x-meshcore-fault-abort-grpc", "10"),))
            except grpc.RpcError as err:
                codes.append(cast("grpc.Call", err).code())
        return codes, stub(iter(sent), timeout=CALL_TIMEOUT)

    codes, response = await call(proxy, run)
    assert codes == [grpc.StatusCode.ABORTED] * 20
    assert response == b"|".join(sent)


async def test_streams_cancelled_mid_response_do_not_starve_the_upstream_connection(
    nursery: trio.Nursery, echo_server: EchoServer
) -> None:
    # The client keeps its stream windows small (64 KiB, no BDP growth), so the proxy holds
    # up to a stream window of each server-streaming response from upstream (1 MiB) when the
    # client cancels after the first message. That buffered data must be given back to the
    # upstream connection's window (about 1 MiB too), or the next calls on that connection
    # (the proxy keeps one, multiplexed) stall: the last one here needs 2 MB to get through.
    proxy = await start(nursery, [echo_server.endpoint])
    small_windows = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 65535)]

    def run(channel: grpc.Channel) -> tuple[list[int], int]:
        stub: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(f"/{SERVICE}/ServerStream")
        first = []
        for _ in range(3):
            responses = stub(b"400:100000", timeout=CALL_TIMEOUT)
            first.append(len(next(responses)))
            responses.cancel()
        return first, sum(len(m) for m in stub(b"20:100000", timeout=CALL_TIMEOUT))

    first, last = await call(proxy, run, options=small_windows)
    assert first == [100_000] * 3
    assert last == 2_000_000
    assert proxy.stats.value("cluster_upstream_cx_total", cluster="backend") == 1
