"""Bad HTTP/1.1 input through a real proxy on loopback, sent as exact bytes on raw sockets.

Each bad request must get its status (400, or 431/501 where fitting) with the DPE flag,
a ``request_rejected`` log line, and a closed connection, and must never reach the
upstream. A client too slow with its head gets 408 (DHT); a silent one is dropped at the
idle timeout. After each abuse, the proxy still serves a good request.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping, Sequence
from typing import Any

import attrs
import h11
import pytest
import trio
from structlog.testing import capture_logs

from meshcore.runtime.proxy import Proxy
from meshcore.testing.client import fetch
from meshcore.testing.harness import http_proxy_config, start_proxy

Address = tuple[str, int]
DEADLINE = 5  # seconds any one exchange may take


class CountingUpstream:
    """A tiny HTTP/1.1 upstream that counts what reaches it, and answers ``200 ok``.

    It counts the connections it accepts, the request heads it reads and the requests it
    reads to their end.
    """

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0
        self.completed = 0
        self.address: Address = ("127.0.0.1", 0)

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        host, port = listeners[0].socket.getsockname()[:2]
        self.address = (host, port)
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(self._session, listeners, handler_nursery=nursery)

    async def _session(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                try:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                        continue
                except (h11.RemoteProtocolError, trio.BrokenResourceError):
                    return
                if isinstance(event, h11.Request):
                    self.requests += 1
                elif isinstance(event, h11.EndOfMessage):
                    self.completed += 1
                    head = h11.Response(status_code=200, headers=[("content-length", "3")])
                    out = b"".join(
                        conn.send(e) or b"" for e in (head, h11.Data(data=b"ok\n"), h11.EndOfMessage())
                    )
                    await stream.send_all(out)
                    if conn.our_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
                elif not isinstance(event, h11.Data):
                    return  # ConnectionClosed (or PAUSED, which this upstream never causes)


@attrs.frozen
class Reply:
    """A raw HTTP/1.1 reply: status, headers (lower-case names) and body."""

    status: int
    headers: dict[bytes, bytes]
    body: bytes


def parse_reply(raw: bytes) -> Reply:
    """One complete response with a Content-Length body, and nothing after it."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {raw!r}"
    status_line, *lines = head.split(b"\r\n")
    version, status, _ = status_line.split(b" ", 2)
    assert version == b"HTTP/1.1"
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    assert int(headers[b"content-length"]) == len(body), f"truncated or trailing bytes: {raw!r}"
    return Reply(int(status), headers, body)


async def read_to_eof(stream: trio.abc.ReceiveStream) -> bytes:
    chunks = []
    while data := await stream.receive_some(65536):
        chunks.append(data)
    return b"".join(chunks)


async def exchange(address: Address, *pieces: bytes) -> bytes:
    """Send ``pieces`` on a new connection, then read until the proxy closes it."""
    with trio.fail_after(DEADLINE):
        stream = await trio.open_tcp_stream(*address)
        async with stream:
            for piece in pieces:
                await stream.send_all(piece)
            return await read_to_eof(stream)


@attrs.frozen
class Setup:
    proxy: Proxy
    upstream: CountingUpstream

    @property
    def address(self) -> Address:
        return self.proxy.address("ingress")

    def forwarded(self) -> int | float:
        return self.proxy.stats.value("cluster_upstream_rq_total", cluster="backend")

    def rejected(self) -> int | float:
        return self.proxy.stats.value("http_downstream_rq_rejected", listener="ingress")

    async def assert_serves_a_good_request(self) -> None:
        """The proxy is healthy: a good request (on a new connection) gets through."""
        before = self.upstream.requests
        with trio.fail_after(DEADLINE):
            response = await fetch(self.address, "/after")
        assert (response.status, response.body) == (200, b"ok\n")
        assert self.upstream.requests == before + 1


# Every test here runs against both HTTP/1.1 codecs: the reference (h11) and the fast one.
CODEC: list[str] = ["h11"]


@pytest.fixture(autouse=True, params=["h11", "fast"])
def codec(request: pytest.FixtureRequest) -> Iterator[str]:
    CODEC[0] = request.param
    yield request.param
    CODEC[0] = "h11"


async def start(nursery: trio.Nursery, **manager: Any) -> Setup:
    upstream = CountingUpstream()
    await nursery.start(upstream.serve)
    config = http_proxy_config([upstream.address], manager={"codec": CODEC[0], **manager})
    proxy = await start_proxy(nursery, config)
    return Setup(proxy, upstream)


def rejections(logs: Sequence[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == "request_rejected"]


GOOD_HEAD = b"GET / HTTP/1.1\r\nHost: example.com\r\n"
CLOSE = b"connection: close\r\n"

# (id, the exact bytes, status, a word of the logged reason)
BAD_REQUESTS = [
    ("request-line-no-version", b"GET /\r\nHost: example.com\r\n\r\n", 400, "request line"),
    ("request-line-double-space", b"GET  / HTTP/1.1\r\nHost: example.com\r\n\r\n", 400, "request line"),
    ("request-line-garbage", b"\x00\x01\x02 junk\r\n\r\n", 400, "request line"),
    ("header-line-no-colon", GOOD_HEAD + b"no-colon-here\r\n\r\n", 400, "header line"),
    ("header-space-before-colon", GOOD_HEAD + b"x-a : 1\r\n\r\n", 400, "header line"),
    ("missing-host", b"GET / HTTP/1.1\r\n\r\n", 400, "Host"),
    (
        "content-length-and-transfer-encoding",
        b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        "both Content-Length and Transfer-Encoding",
    ),
    (
        "two-content-lengths",
        b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
        "Content-Length",
    ),
    (
        "content-length-list",
        b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5, 6\r\n\r\nhello!",
        400,
        "Content-Length",
    ),
    ("content-length-not-a-number", GOOD_HEAD + b"Content-Length: 0x10\r\n\r\n", 400, "Content-Length"),
    ("obs-fold-space", GOOD_HEAD + b"x-a: 1\r\n 2\r\n\r\n", 400, "obs-fold"),
    ("obs-fold-tab", GOOD_HEAD + b"x-a: 1\r\n\t2\r\n\r\n", 400, "obs-fold"),
    ("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: example.com\n\n", 400, "bare LF"),
    ("bare-lf-one-header", GOOD_HEAD + b"x-a: 1\nx-b: 2\r\n\r\n", 400, "bare LF"),
    ("bare-lf-final-blank-line", GOOD_HEAD + b"\n", 400, "bare LF"),
    ("bare-lf-before-request-line", b"\n" + GOOD_HEAD + b"\r\n", 400, "bare LF"),
    ("header-with-nul", GOOD_HEAD + b"x-a: a\x00b\r\n\r\n", 400, "header line"),
    ("header-with-bare-cr", GOOD_HEAD + b"x-a: a\rb\r\n\r\n", 400, "header line"),
    (
        "transfer-coding-gzip",
        b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: gzip\r\n\r\n",
        501,
        "chunked",
    ),
    (
        "transfer-coding-chunked-not-last",
        b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        501,
        "chunked",
    ),
    (
        "headers-over-60-KiB-default",
        GOOD_HEAD + b"x-big: " + b"a" * 61 * 1024 + b"\r\n\r\n",
        431,
        "larger than",
    ),
    # Far more than the proxy reads before rejecting: the 431 must still arrive, not a reset.
    ("headers-of-1-MiB", GOOD_HEAD + b"x-big: " + b"a" * 1024 * 1024 + b"\r\n\r\n", 431, "larger than"),
    (
        "headers-over-60-KiB-in-many-lines",
        GOOD_HEAD + b"".join(b"x-h%d: %s\r\n" % (i, b"a" * 1000) for i in range(62)) + b"\r\n",
        431,
        "larger than",
    ),
]


@pytest.mark.parametrize(
    ("data", "status", "reason"), [case[1:] for case in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS]
)
async def test_bad_request_is_rejected_closed_logged_and_never_forwarded(
    nursery: trio.Nursery, data: bytes, status: int, reason: str
) -> None:
    setup = await start(nursery)
    with capture_logs() as logs:
        raw = await exchange(setup.address, data)
    reply = parse_reply(raw)  # read to EOF: the proxy closed the connection
    assert reply.status == status
    assert reply.headers[b"x-meshcore-flags"] == b"DPE"
    assert reply.headers[b"connection"] == b"close"
    assert setup.upstream.connections == 0
    assert setup.forwarded() == 0
    assert setup.rejected() == 1
    [entry] = rejections(logs)
    assert entry["status"] == status
    assert entry["flags"] == "DPE"
    assert reason in entry["reason"]
    assert entry["log_level"] == "warning"
    await setup.assert_serves_a_good_request()


async def test_bad_request_sent_byte_by_byte_is_rejected_the_same(nursery: trio.Nursery) -> None:
    setup = await start(nursery)
    data = GOOD_HEAD + b"x-a: 1\r\n 2\r\n\r\n"
    with capture_logs() as logs:
        with trio.fail_after(DEADLINE):
            stream = await trio.open_tcp_stream(*setup.address)
            async with stream:
                for i in range(len(data)):
                    try:
                        await stream.send_all(data[i : i + 1])
                    except trio.BrokenResourceError:
                        break  # rejected already (it may be, once the fold starts)
                raw = await read_to_eof(stream)
    assert parse_reply(raw).status == 400
    [entry] = rejections(logs)
    assert "obs-fold" in entry["reason"]
    assert setup.upstream.connections == 0
    await setup.assert_serves_a_good_request()


async def test_configured_header_size_limit(nursery: trio.Nursery) -> None:
    setup = await start(nursery, max_request_headers_size="4KiB")
    head = GOOD_HEAD + CLOSE + b"x-big: "

    def sized(size: int) -> bytes:
        """A request head of exactly ``size`` bytes, its final CRLF CRLF included."""
        request = head + b"a" * (size - len(head) - 4) + b"\r\n\r\n"
        assert len(request) == size
        return request

    # At the limit: forwarded.
    assert parse_reply(await exchange(setup.address, sized(4096))).status == 200
    assert setup.upstream.requests == 1
    # One byte over: 431, whether it arrives whole or in parts.
    big = sized(4097)
    with capture_logs() as logs:
        whole = parse_reply(await exchange(setup.address, big))
        split = parse_reply(await exchange(setup.address, big[:100], big[100:]))
    assert whole.status == split.status == 431
    assert whole.headers[b"x-meshcore-flags"] == split.headers[b"x-meshcore-flags"] == b"DPE"
    assert [e["status"] for e in rejections(logs)] == [431, 431]
    assert "larger than 4096 bytes" in rejections(logs)[0]["reason"]
    assert setup.upstream.requests == 1
    assert setup.forwarded() == 1
    await setup.assert_serves_a_good_request()


async def test_too_many_headers(nursery: trio.Nursery) -> None:
    setup = await start(nursery, max_request_headers=5)
    five = GOOD_HEAD + CLOSE + b"".join(b"x-%d: 1\r\n" % i for i in range(3)) + b"\r\n"
    assert parse_reply(await exchange(setup.address, five)).status == 200
    six = GOOD_HEAD + CLOSE + b"".join(b"x-%d: 1\r\n" % i for i in range(4)) + b"\r\n"
    with capture_logs() as logs:
        reply = parse_reply(await exchange(setup.address, six))
    assert reply.status == 431
    assert reply.headers[b"x-meshcore-flags"] == b"DPE"
    [entry] = rejections(logs)
    assert "more than 5 request headers" in entry["reason"]
    assert setup.upstream.requests == 1
    await setup.assert_serves_a_good_request()


async def test_pipelined_bad_request_after_a_good_one(nursery: trio.Nursery) -> None:
    """The good request is answered, the bad one behind it rejected and never forwarded."""
    setup = await start(nursery)
    good = GOOD_HEAD + b"\r\n"
    bad = GOOD_HEAD + b"x-a: 1\r\n 2\r\n\r\n"
    with capture_logs() as logs:
        raw = await exchange(setup.address, good + bad)
    first, sep, rest = raw.partition(b"ok\n")
    assert sep
    assert first.startswith(b"HTTP/1.1 200 ")
    second = parse_reply(rest)
    assert second.status == 400
    assert second.headers[b"x-meshcore-flags"] == b"DPE"
    assert "obs-fold" in rejections(logs)[0]["reason"]
    assert setup.upstream.requests == 1


async def test_pipelined_good_requests_and_stray_crlf_are_all_served(nursery: trio.Nursery) -> None:
    """RFC 9112 2.2: empty lines before a request line are ignored, also between requests."""
    setup = await start(nursery)
    post = b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2\r\n\r\nhi"
    last = GOOD_HEAD + CLOSE + b"\r\n"
    raw = await exchange(setup.address, b"\r\n" + GOOD_HEAD + b"\r\n" + post + b"\r\n" + last)
    assert raw.count(b"HTTP/1.1 200 ") == 3
    assert raw.endswith(b"ok\n")
    assert setup.upstream.requests == 3


CHUNKED_HEAD = b"POST /upload HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
BAD_CHUNKS = [
    ("size-not-hex", b"zz\r\nnot hex\r\n0\r\n\r\n", "chunk header"),
    ("size-negative", b"-5\r\nhello\r\n0\r\n\r\n", "chunk header"),
    ("size-overflow", b"f" * 40 + b"\r\nhello\r\n0\r\n\r\n", "chunk header"),
    ("size-bare-lf", b"5\nhello\r\n0\r\n\r\n", "chunk header"),
    ("data-longer-than-size", b"5\r\nhello!!\r\n0\r\n\r\n", "chunk footer"),
]


@pytest.mark.parametrize("together", [True, False], ids=["with-head", "after-head"])
@pytest.mark.parametrize(("chunk", "reason"), [c[1:] for c in BAD_CHUNKS], ids=[c[0] for c in BAD_CHUNKS])
async def test_invalid_chunk_mid_body(
    nursery: trio.Nursery, chunk: bytes, reason: str, together: bool
) -> None:
    """The head was valid, so the upstream may have seen it, but never a complete request."""
    setup = await start(nursery)
    first = CHUNKED_HEAD + b"5\r\nhello\r\n"
    with capture_logs() as logs:
        raw = await (
            exchange(setup.address, first + chunk) if together else exchange(setup.address, first, chunk)
        )
    reply = parse_reply(raw)  # and closed
    assert reply.status == 400
    assert reply.headers[b"x-meshcore-flags"] == b"DPE"
    assert reply.body == b"Bad Request\n"  # the reason goes to the log: it quotes the client's bytes
    [entry] = [e for e in logs if e["event"] == "request_failed"]
    assert reason in entry["reason"]
    assert setup.upstream.requests <= 1
    assert setup.upstream.completed == 0
    await setup.assert_serves_a_good_request()


async def test_client_closing_mid_head_leaves_the_proxy_healthy(nursery: trio.Nursery) -> None:
    setup = await start(nursery)
    with trio.fail_after(DEADLINE):
        stream = await trio.open_tcp_stream(*setup.address)
        await stream.send_all(GOOD_HEAD + b"x-partial: 1")
        await stream.send_eof()
        raw = await read_to_eof(stream)
        await stream.aclose()
    if raw:  # the client may still read a 400 on its half-open connection
        assert parse_reply(raw).status == 400
    assert setup.upstream.connections == 0
    await setup.assert_serves_a_good_request()


async def test_headers_timeout_answers_408_and_closes(nursery: trio.Nursery) -> None:
    setup = await start(nursery, request_headers_timeout="300ms")
    with capture_logs() as logs:
        start_time = trio.current_time()
        raw = await exchange(setup.address, GOOD_HEAD + b"x-slow: ")  # then stall
        elapsed = trio.current_time() - start_time
    reply = parse_reply(raw)
    assert reply.status == 408
    assert reply.headers[b"x-meshcore-flags"] == b"DHT"
    assert 0.3 <= elapsed < 3
    [entry] = rejections(logs)
    assert (entry["status"], entry["flags"]) == (408, "DHT")
    assert "not received in time" in entry["reason"]
    assert setup.upstream.connections == 0
    await setup.assert_serves_a_good_request()


async def test_headers_timeout_bounds_the_whole_head_not_each_read(nursery: trio.Nursery) -> None:
    """A slowloris client trickling a byte every 50 ms is still cut off at the headers timeout."""
    setup = await start(nursery, request_headers_timeout="300ms")
    trickle = GOOD_HEAD + b"x-slow: " + b"a" * 1000

    async def send_slowly(stream: trio.SocketStream) -> None:
        try:
            for i in range(len(trickle)):
                await stream.send_all(trickle[i : i + 1])
                await trio.sleep(0.05)  # the trickle is the behaviour under test, not a sync
        except trio.BrokenResourceError:
            pass  # the proxy is done with us

    with trio.fail_after(DEADLINE):
        stream = await trio.open_tcp_stream(*setup.address)
        async with stream, trio.open_nursery() as sender:
            start_time = trio.current_time()
            sender.start_soon(send_slowly, stream)
            raw = await read_to_eof(stream)
            elapsed = trio.current_time() - start_time
            sender.cancel_scope.cancel()
    assert parse_reply(raw).status == 408
    assert 0.3 <= elapsed < 3
    assert setup.upstream.connections == 0
    await setup.assert_serves_a_good_request()


async def test_silent_client_is_closed_at_the_idle_timeout(nursery: trio.Nursery) -> None:
    setup = await start(nursery, idle_timeout="300ms", request_headers_timeout="10s")
    with capture_logs() as logs:
        start_time = trio.current_time()
        raw = await exchange(setup.address)  # sends nothing
        elapsed = trio.current_time() - start_time
    assert raw == b""  # closed without a word: there was no request to answer
    assert 0.3 <= elapsed < 3
    assert rejections(logs) == []
    assert setup.upstream.connections == 0
    await setup.assert_serves_a_good_request()


async def test_idle_keep_alive_connection_is_closed_at_the_idle_timeout(nursery: trio.Nursery) -> None:
    setup = await start(nursery, idle_timeout="300ms")
    start_time = trio.current_time()
    raw = await exchange(setup.address, GOOD_HEAD + b"\r\n")  # keep-alive, then silence
    elapsed = trio.current_time() - start_time
    assert parse_reply(raw).status == 200
    assert 0.3 <= elapsed < 3  # kept open after the response, until the idle timeout
    assert setup.upstream.requests == 1
