"""HTTP/2 through the proxy, end to end: curl, h2load and a raw h2 client over loopback.

Downstream HTTP/2 is reached both ways a client gets it: ALPN ``h2`` on a TLS listener
(curl ``--http2``) and the cleartext connection preface (curl ``--http2-prior-knowledge``).
Upstreams are the HTTP/1.1 test upstream and :class:`H2Upstream` below (trio + h2, prior
knowledge, every request it decodes recorded), so each pairing of protocols is crossed, with
the headers bridged between them. Flow control is proved with a client that never reads one
stream while 100 others complete on the same connection, against a proxy running as its own
process so that its memory can be read from /proc.
"""

from __future__ import annotations

import gc
import json
import socket as stdlib_socket
import struct
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

import attrs
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest
import trio
import trio.testing
import trustme
from _h2client import (
    RECEIVE_SIZE,
    H2Response,
    RawHeaders,
    frame,
    open_h2_client,
    raw_headers,
    send_flow_controlled,
    text_headers,
)
from _proxy_process import start_proxy_process
from h2.errors import ErrorCodes
from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, SettingsFrame

from meshcore.http.h2goaway import GracefulGoaway
from meshcore.testing.harness import http_proxy_config, start_proxy
from meshcore.testing.upstreams import serve_upstream

# -- an HTTP/2 upstream ----------------------------------------------------------------------


@attrs.frozen
class Received:
    """A request as the HTTP/2 upstream decoded it: header block in wire order, then the body."""

    headers: list[tuple[str, str]]
    body: bytes

    def get(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)

    def get_all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]


class H2Upstream:
    """An HTTP/2-only upstream (prior knowledge): it speaks nothing else, and records what it decodes.

    ``/echo`` answers with the request body, ``/bytes/N`` with N bytes, ``/trailers`` with a
    body and trailers (as gRPC does), anything else (``/delay/MS`` after MS milliseconds)
    with a JSON description of the request. ``/stall`` never reads its request body, nor answers.
    ``/drain`` sends GOAWAY (NO_ERROR, this stream the last) before its answer.
    """

    def __init__(self, *, window_by_settings: bool = False) -> None:
        self.received: list[Received] = []
        self.arrived = trio.Event()
        self.connections = 0
        self.window_by_settings = window_by_settings
        """Give no stream window back for the first 65535 bytes of a connection; then open the
        windows of every stream with SETTINGS_INITIAL_WINDOW_SIZE alone (RFC 9113 6.9.2)."""

    async def wait_for_requests(self, count: int) -> None:
        """Until ``count`` requests have arrived (each recorded before it is answered)."""
        while len(self.received) < count:
            await self.arrived.wait()

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port: int = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(("127.0.0.1", port))
            await trio.serve_listeners(self._session, listeners, handler_nursery=nursery)

    async def _session(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        async with stream:
            await _H2UpstreamConnection(self, stream).run()


class _H2UpstreamConnection:
    def __init__(self, upstream: H2Upstream, stream: trio.SocketStream) -> None:
        self.upstream = upstream
        self.stream = stream
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config=config)
        self.lock = trio.Lock()
        self.window = trio.Event()
        self.requests: dict[int, tuple[RawHeaders, bytearray]] = {}
        self.held = 0

    async def flush(self) -> None:
        async with self.lock:
            if data := self.h2.data_to_send():
                await self.stream.send_all(data)

    async def window_opened(self) -> None:
        await self.window.wait()

    async def run(self) -> None:
        self.h2.initiate_connection()
        if self.upstream.window_by_settings:
            self.h2.increment_flow_control_window(16 << 20)
        try:
            await self.flush()
            async with trio.open_nursery() as nursery:
                while data := await self.stream.receive_some(RECEIVE_SIZE):
                    for event in self.h2.receive_data(data):
                        self._handle(event, nursery)
                    await self.flush()
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h2.exceptions.ProtocolError):
            return

    def _handle(self, event: h2.events.Event, nursery: trio.Nursery) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self.requests[event.stream_id] = (raw_headers(event.headers), bytearray())
        elif isinstance(event, h2.events.DataReceived):
            raw, body = self.requests[event.stream_id]
            body.extend(event.data)
            flow = event.flow_controlled_length
            if (b":path", b"/stall") in raw:
                pass  # never read: the stream's window closes
            elif self.upstream.window_by_settings and self.held < 65535:
                self.held += flow  # no WINDOW_UPDATE at all: the connection's window is large
                if self.held >= 65535:
                    self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535 + (1 << 20)})
            else:
                self.h2.acknowledge_received_data(flow, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            nursery.start_soon(self._respond, event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self.requests.pop(event.stream_id, None)
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self.window.set()
            self.window = trio.Event()

    async def _respond(self, stream_id: int) -> None:
        if stream_id not in self.requests or (b":path", b"/stall") in self.requests[stream_id][0]:
            return
        raw, body = self.requests.pop(stream_id)
        headers = text_headers(raw)
        self.upstream.received.append(Received(headers, bytes(body)))
        self.upstream.arrived.set()
        self.upstream.arrived = trio.Event()
        pseudo = {n: v for n, v in headers if n.startswith(":")}
        parts = pseudo.get(":path", "/").partition("?")[0].strip("/").split("/")
        trailers: RawHeaders | None = None
        if parts[0] == "delay":
            await trio.sleep(int(parts[1]) / 1000)
        if parts[0] == "drain":
            # As a server draining does: GOAWAY NO_ERROR naming this stream as the last it will
            # process, then its response. Written by hand: h2's close_connection() would stop
            # this side from sending the response (h2 takes any GOAWAY for the end).
            goaway = b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + struct.pack(">LL", stream_id, 0)
            async with self.lock:
                await self.stream.send_all(self.h2.data_to_send() + goaway)
        if parts[0] == "echo":
            payload = bytes(body)
        elif parts[0] == "bytes":
            payload = b"x" * int(parts[1])
        elif parts[0] == "trailers":
            payload, trailers = b"with trailers\n", [(b"grpc-status", b"0"), (b"x-checksum", b"42")]
        else:
            described = {
                "pseudo": pseudo,
                "headers": [[n, v] for n, v in headers if not n.startswith(":")],
                "body_size": len(body),
            }
            payload = json.dumps(described).encode()
        head = [(b":status", b"200"), (b"x-upstream", b"h2")]
        if trailers is None:
            head.append((b"content-length", str(len(payload)).encode()))
        try:
            self.h2.send_headers(stream_id, head, end_stream=not payload and trailers is None)
            await self.flush()
            await send_flow_controlled(
                self.h2, stream_id, payload, self.flush, self.window_opened, end_stream=trailers is None
            )
            if trailers is not None:
                self.h2.send_headers(stream_id, trailers, end_stream=True)
                await self.flush()
        except h2.exceptions.StreamClosedError:
            return  # the proxy reset the stream


# -- curl ------------------------------------------------------------------------------------


@attrs.frozen
class Pki:
    ca_file: Path
    certificate_file: str
    private_key_file: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = trustme.CA()
    out = tmp_path_factory.mktemp("pki")
    ca.cert_pem.write_to_path(str(out / "ca.pem"))
    leaf = ca.issue_cert("proxy.test")
    (out / "proxy.pem").write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(out / "proxy.key"))
    return Pki(out / "ca.pem", str(out / "proxy.pem"), str(out / "proxy.key"))


@attrs.frozen
class Curl:
    http_version: str
    status: int
    body: bytes
    verbose: str


async def curl(port: int, path: str, *options: str, pki: Pki | None = None) -> Curl:
    """Run curl against the proxy on loopback as ``proxy.test``: https, checked against the test CA, with ``pki``."""
    scheme = "https" if pki is not None else "http"
    argv = [
        "curl",
        "-sS",
        "-v",
        "--max-time",
        "10",
        "-o",
        "-",
        "-w",
        "%{stderr}\n@@%{http_version} %{http_code}",
    ]
    if pki is not None:
        argv += ["--cacert", str(pki.ca_file)]
    argv += ["--resolve", f"proxy.test:{port}:127.0.0.1", *options, f"{scheme}://proxy.test:{port}{path}"]
    done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    verbose = done.stderr.decode(errors="replace")
    assert done.returncode == 0, verbose
    version, status = verbose.rpartition("@@")[2].split()
    return Curl(version, int(status), done.stdout, verbose)


UPSTREAM_KINDS = ["http1-upstream", "http2-upstream"]


async def start_upstream(
    nursery: trio.Nursery, kind: str, **options: Any
) -> tuple[tuple[str, int], H2Upstream | None]:
    if kind == "http2-upstream":
        upstream = H2Upstream(**options)
        address: tuple[str, int] = await nursery.start(upstream.serve)
        return address, upstream
    return await nursery.start(serve_upstream), None


def proxy_config(
    upstream: tuple[str, int], kind: str, pki: Pki | None = None, **manager: Any
) -> dict[str, Any]:
    cluster = {"protocol": "http2"} if kind == "http2-upstream" else {}
    config = http_proxy_config([upstream], cluster=cluster, manager=manager)
    if pki is not None:
        config["listeners"][0]["filter_chains"][0]["tls"] = {
            "certificate_file": pki.certificate_file,
            "private_key_file": pki.private_key_file,
            "alpn": ["h2", "http/1.1"],
        }
    return config


def described(kind: str, body: bytes) -> dict[str, Any]:
    """What either upstream says it received, in one shape: authority, path, method, headers."""
    data = json.loads(body)
    if kind == "http2-upstream":
        pseudo = data["pseudo"]
        return {
            "method": pseudo[":method"],
            "path": pseudo[":path"],
            "authority": pseudo[":authority"],
            "headers": [tuple(h) for h in data["headers"]],
        }
    headers = [tuple(h) for h in data["headers"]]
    return {
        "method": data["method"],
        "path": data["path"],
        "authority": dict(headers)["host"],
        "headers": [h for h in headers if h[0] != "host"],
    }


@pytest.mark.parametrize("kind", UPSTREAM_KINDS)
@pytest.mark.parametrize("transport", ["tls-alpn", "prior-knowledge"])
async def test_curl_speaks_http2_to_the_proxy_whatever_the_upstream_speaks(
    nursery: trio.Nursery, pki: Pki, tmp_path: Path, kind: str, transport: str
) -> None:
    tls = pki if transport == "tls-alpn" else None
    option = "--http2" if tls else "--http2-prior-knowledge"
    posted = bytes(range(256)) * 1024  # 256 KiB: more than any initial window, both ways
    with trio.fail_after(20):
        address, h2_upstream = await start_upstream(nursery, kind)
        proxy = await start_proxy(nursery, proxy_config(address, kind, tls))
        port = proxy.address("ingress")[1]
        got = await curl(port, "/hello?x=1", option, pki=tls)
        body_file = tmp_path / "posted"
        body_file.write_bytes(posted)
        echoed = await curl(port, "/echo", option, "--data-binary", f"@{body_file}", pki=tls)
    assert (got.http_version, got.status) == ("2", 200)
    assert "< HTTP/2 200" in got.verbose
    if tls:
        assert "ALPN: server accepted h2" in got.verbose
    seen = described(kind, got.body)
    assert (seen["method"], seen["path"], seen["authority"]) == ("GET", "/hello?x=1", f"proxy.test:{port}")
    assert (echoed.http_version, echoed.status, echoed.body) == ("2", 200, posted)
    if h2_upstream is not None:
        # The upstream decoded both requests as HTTP/2 (it speaks nothing else) on one connection.
        assert [r.get(":path") for r in h2_upstream.received] == ["/hello?x=1", "/echo"]
        assert h2_upstream.received[1].body == posted
        assert h2_upstream.received[0].get(":scheme") == ("https" if tls else "http")
        assert h2_upstream.connections == 1


async def test_a_tls_listener_offering_h2_still_serves_http1_clients(nursery: trio.Nursery, pki: Pki) -> None:
    with trio.fail_after(20):
        address, _ = await start_upstream(nursery, "http1-upstream")
        proxy = await start_proxy(nursery, proxy_config(address, "http1-upstream", pki))
        got = await curl(proxy.address("ingress")[1], "/hello", "--http1.1", pki=pki)
    assert (got.http_version, got.status) == ("1.1", 200)
    assert "ALPN: server accepted http/1.1" in got.verbose
    assert described("http1-upstream", got.body)["path"] == "/hello"


async def test_http1_client_to_http2_upstream_bridges_the_headers(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    posted = b"chunked body " * 20000  # 260 KB of unknown length: chunked downstream, DATA frames upstream
    (tmp_path / "posted").write_bytes(posted)
    with trio.fail_after(20):
        address, h2_upstream = await start_upstream(nursery, "http2-upstream")
        assert h2_upstream is not None
        proxy = await start_proxy(nursery, proxy_config(address, "http2-upstream"))
        port = proxy.address("ingress")[1]
        headers = ["connection: keep-alive, x-hop", "x-hop: hop only", "keep-alive: timeout=5"]
        headers += ["te: trailers", "cookie: a=1", "x-end-to-end: kept"]
        options = [arg for h in headers for arg in ("-H", h)]
        got = await curl(port, "/hello", "--http1.1", *options)
        echoed = await curl(
            port,
            "/echo",
            "--http1.1",
            "-H",
            "transfer-encoding: chunked",
            "--data-binary",
            f"@{tmp_path}/posted",
        )
    assert (got.http_version, got.status) == ("1.1", 200)
    assert "< HTTP/1.1 200" in got.verbose
    request = h2_upstream.received[0]
    # Host became :authority, and the pseudo-headers come first, as HTTP/2 requires.
    assert [n for n, _ in request.headers[:4]] == [":method", ":scheme", ":authority", ":path"]
    assert request.get(":authority") == f"proxy.test:{port}"
    assert request.get("host") is None
    names = {n for n, _ in request.headers}
    assert not names & {
        "connection",
        "keep-alive",
        "x-hop",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
    }
    assert request.get("te") == "trailers"
    assert request.get("x-end-to-end") == "kept"
    assert request.get("cookie") == "a=1"
    assert (echoed.status, echoed.body) == (200, posted)
    assert h2_upstream.received[1].body == posted


async def test_http2_client_to_http1_upstream_bridges_the_headers(nursery: trio.Nursery) -> None:
    with trio.fail_after(20):
        address, _ = await start_upstream(nursery, "http1-upstream")
        proxy = await start_proxy(nursery, proxy_config(address, "http1-upstream"))
        async with open_h2_client(proxy.address("ingress")) as client:
            got = await client.request(
                "/hello",
                authority="h2.example:8443",
                headers=[("cookie", "a=1"), ("te", "trailers"), ("cookie", "b=2"), ("cookie", "c=3")],
            )
            # A chunked HTTP/1.1 response (transfer-encoding is connection-specific) as DATA frames.
            chunked = await client.request("/chunks/10")
    assert got.status == 200
    data = json.loads(got.body)
    headers = [tuple(h) for h in data["headers"]]
    # :authority became Host; three cookie headers became one, joined with "; " (RFC 9113 8.2.3).
    assert dict(headers)["host"] == "h2.example:8443"
    assert [v for n, v in headers if n == "cookie"] == ["a=1; b=2; c=3"]
    assert dict(headers)["te"] == "trailers"
    assert data["method"] == "GET"
    assert data["path"] == "/hello"
    assert (chunked.status, chunked.body) == (200, b"c" * 10 * 1024)
    assert chunked.get("transfer-encoding") is None
    assert chunked.get("x-upstream") == "upstream"


# Hop-by-hop fields a route adds, and the fields their Connection header names: none crosses
# into HTTP/2 (RFC 9113 section 8.2.2), whichever side of the proxy speaks it.
HOP_BY_HOP_ADDED = {"connection": "x-internal", "x-internal": "hop only", "keep-alive": "timeout=5"}


async def test_hop_by_hop_fields_a_route_adds_to_a_response_never_reach_an_http2_client(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(20):
        address, _ = await start_upstream(nursery, "http1-upstream")
        route = {"match": {"prefix": "/"}, "cluster": "backend", "response_headers_to_add": HOP_BY_HOP_ADDED}
        config = http_proxy_config([address], routes=[route])
        proxy = await start_proxy(nursery, config)
        async with open_h2_client(proxy.address("ingress")) as client:
            got = await client.request("/hello")
    assert got.status == 200
    assert {n for n, _ in got.headers} & {"connection", "keep-alive", "x-internal"} == set()
    assert got.get("x-upstream") == "upstream"


async def test_hop_by_hop_fields_a_route_adds_to_a_request_never_reach_an_http2_upstream(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(20):
        address, h2_upstream = await start_upstream(nursery, "http2-upstream")
        assert h2_upstream is not None
        route = {"match": {"prefix": "/"}, "cluster": "backend", "request_headers_to_add": HOP_BY_HOP_ADDED}
        config = http_proxy_config([address], routes=[route], cluster={"protocol": "http2"})
        proxy = await start_proxy(nursery, config)
        got = await curl(proxy.address("ingress")[1], "/hello", "--http1.1", "-H", "x-end-to-end: kept")
    assert got.status == 200
    request = h2_upstream.received[0]
    assert {n for n, _ in request.headers} & {"connection", "keep-alive", "x-internal"} == set()
    assert request.get("x-end-to-end") == "kept"


async def test_trailers_and_status_cross_from_an_http2_upstream_to_an_http2_client(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(20):
        address, _ = await start_upstream(nursery, "http2-upstream")
        proxy = await start_proxy(nursery, proxy_config(address, "http2-upstream"))
        async with open_h2_client(proxy.address("ingress")) as client:
            got = await client.request("/trailers", headers=[("te", "trailers")])
    assert (got.status, got.body) == (200, b"with trailers\n")
    assert got.trailers == [("grpc-status", "0"), ("x-checksum", "42")]


# -- h2load ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", UPSTREAM_KINDS)
async def test_h2load_10_connections_of_10_streams_complete_without_an_error(
    nursery: trio.Nursery, kind: str
) -> None:
    with trio.fail_after(60):
        address, _ = await start_upstream(nursery, kind)
        proxy = await start_proxy(nursery, proxy_config(address, kind))
        port = proxy.address("ingress")[1]
        argv = ["h2load", "-n", "2000", "-c", "10", "-m", "10", f"http://127.0.0.1:{port}/bytes/1024"]
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    assert "Application protocol: h2c" in out
    assert (
        "requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored, 0 timeout" in out
    )
    assert "status codes: 2000 2xx, 0 3xx, 0 4xx, 0 5xx" in out


# -- flow control ----------------------------------------------------------------------------


async def test_a_stream_whose_reader_never_reads_does_not_hold_back_100_others(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    huge = 50_000_000
    with trio.fail_after(30):
        upstream = await nursery.start(serve_upstream)
        proxy = await start_proxy_process(nursery, http_proxy_config([upstream]), tmp_path)
        async with open_h2_client(proxy.address) as client:
            # Warm up: every code path the measured part takes, so that imports and caches
            # are not counted as growth.
            async with trio.open_nursery() as warm:
                for _ in range(20):
                    warm.start_soon(client.request, "/bytes/100000")
            before = proxy.rss_bytes()

            stalled_id = await client.start(f"/bytes/{huge}", acknowledge=False)
            stalled = client.streams[stalled_id]
            while len(stalled.body) < 65535:  # the stream's whole initial window, then nothing
                await stalled.progress.wait()

            responses: list[H2Response] = []
            limit = trio.CapacityLimiter(50)

            async def one(i: int) -> None:
                async with limit:
                    responses.append(await client.request(f"/bytes/{100_000 + i}"))

            async with trio.open_nursery() as others:
                for i in range(100):
                    others.start_soon(one, i)
            after = proxy.rss_bytes()
            received_on_stalled = len(stalled.body)
            stalled_open = not stalled.ended.is_set()
    assert sorted(len(r.body) for r in responses) == [100_000 + i for i in range(100)]
    assert all(r.status == 200 for r in responses)
    # The proxy sent the stalled stream its window's worth and no more (h2 would have raised a
    # FlowControlError on more), and kept it open.
    assert received_on_stalled == 65535
    assert stalled_open
    # 50 MB are waiting upstream; the proxy holds back at most a chunk or so, not the body.
    assert after - before < 16 * 1024 * 1024, f"proxy RSS grew by {(after - before) / 1e6:.1f} MB"


async def test_a_stream_blocked_on_its_window_resumes_when_settings_raise_the_initial_window(
    nursery: trio.Nursery,
) -> None:
    # RFC 9113 6.9.2: SETTINGS_INITIAL_WINDOW_SIZE changes the window of every open stream,
    # with no WINDOW_UPDATE; a sender blocked on a stream's window must look again.
    with trio.fail_after(10):
        address, _ = await start_upstream(nursery, "http1-upstream")
        proxy = await start_proxy(nursery, proxy_config(address, "http1-upstream"))
        async with open_h2_client(proxy.address("ingress")) as client:
            sid = await client.start("/bytes/300000", acknowledge=False)
            stream = client.streams[sid]
            while len(stream.body) < 65535:
                await stream.progress.wait()
            client.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535 + (1 << 20)})
            await client.flush()
            got = await client.response(sid)
    assert (got.status, len(got.body)) == (200, 300000)


async def test_a_request_body_blocked_on_the_upstream_window_resumes_when_settings_raise_it(
    nursery: trio.Nursery,
) -> None:
    posted = b"b" * 300000
    with trio.fail_after(10):
        address, h2_upstream = await start_upstream(nursery, "http2-upstream", window_by_settings=True)
        assert h2_upstream is not None
        proxy = await start_proxy(nursery, proxy_config(address, "http2-upstream"))
        async with open_h2_client(proxy.address("ingress")) as client:
            got = await client.request("/echo", method="POST", body=posted)
    assert (got.status, got.body) == (200, posted)


@pytest.mark.parametrize("kind", UPSTREAM_KINDS)
async def test_a_client_gone_mid_response_gives_back_its_upstream_connection_and_counts(
    nursery: trio.Nursery, kind: str
) -> None:
    with trio.fail_after(10):
        address, _ = await start_upstream(nursery, kind)
        config = proxy_config(address, kind)
        config["clusters"][0]["max_connections_per_endpoint"] = 1
        proxy = await start_proxy(nursery, config)
        async with open_h2_client(proxy.address("ingress")) as client:
            sid = await client.start("/bytes/50000000", acknowledge=False)
            while len(client.streams[sid].body) < 65535:
                await client.streams[sid].progress.wait()
        # The client closed its connection with the response in flight. With one upstream
        # connection allowed, the next request gets through only if that one was released.
        async with open_h2_client(proxy.address("ingress")) as client:
            got = await client.request("/bytes/10")
        await trio.testing.wait_all_tasks_blocked()
    assert (got.status, got.body) == (200, b"x" * 10)
    assert proxy.stats.value("http_downstream_rq_active", listener="ingress") == 0
    assert proxy.stats.value("cluster_upstream_rq_active", cluster="backend") == 0
    assert proxy.stats.value("http_downstream_rq_total", listener="ingress") == 2


@pytest.mark.parametrize("kind", UPSTREAM_KINDS)
async def test_a_stream_reset_while_waiting_for_the_upstream_is_counted_as_finished(
    nursery: trio.Nursery, kind: str
) -> None:
    with trio.fail_after(10):
        address, _ = await start_upstream(nursery, kind)
        proxy = await start_proxy(nursery, proxy_config(address, kind))
        async with open_h2_client(proxy.address("ingress")) as client:
            sid = await client.start("/delay/5000")
            await trio.testing.wait_all_tasks_blocked()
            active = proxy.stats.value("http_downstream_rq_active", listener="ingress")
            client.h2.reset_stream(sid, ErrorCodes.CANCEL)
            await client.flush()
            await trio.testing.wait_all_tasks_blocked()
            got = await client.request("/bytes/10")
    assert active == 1
    assert (got.status, got.body) == (200, b"x" * 10)
    assert proxy.stats.value("http_downstream_rq_active", listener="ingress") == 0
    assert proxy.stats.value("cluster_upstream_rq_active", cluster="backend") == 0


async def test_a_max_frame_size_above_the_default_is_honoured_for_incoming_frames(
    nursery: trio.Nursery,
) -> None:
    posted = bytes(range(256)) * 2048  # 512 KiB, sent in 64 KiB DATA frames
    with trio.fail_after(10):
        address, _ = await start_upstream(nursery, "http1-upstream")
        config = proxy_config(
            address, "http1-upstream", http2={"max_frame_size": 65536, "initial_stream_window_size": 1 << 20}
        )
        proxy = await start_proxy(nursery, config)
        async with open_h2_client(proxy.address("ingress")) as client:
            await client.request("/hello")  # the proxy's SETTINGS are in
            assert client.h2.max_outbound_frame_size == 65536
            got = await client.request("/echo", method="POST", body=posted)
    assert client.terminated is None
    assert (got.status, got.body) == (200, posted)


@pytest.mark.parametrize("kind", UPSTREAM_KINDS)
async def test_a_stream_reset_in_the_middle_of_its_request_body_is_cleaned_up(
    nursery: trio.Nursery, kind: str
) -> None:
    with trio.fail_after(10):
        address, _ = await start_upstream(nursery, kind)
        proxy = await start_proxy(nursery, proxy_config(address, kind))
        async with open_h2_client(proxy.address("ingress")) as client:
            sid = await client.start("/echo", method="POST", body=b"a" * 1000, end_stream=False)
            await trio.testing.wait_all_tasks_blocked()
            client.h2.reset_stream(sid, ErrorCodes.CANCEL)
            await client.flush()
            await trio.testing.wait_all_tasks_blocked()
            got = await client.request("/bytes/10")
        gc.collect()  # a body reader abandoned mid-iteration must not be left to the collector
    assert (got.status, got.body) == (200, b"x" * 10)
    assert proxy.stats.value("http_downstream_rq_active", listener="ingress") == 0
    assert proxy.stats.value("cluster_upstream_rq_active", cluster="backend") == 0


async def test_a_request_body_stuck_on_the_upstream_window_ends_in_a_timeout_cleanly(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        address, _ = await start_upstream(nursery, "http2-upstream")
        config = proxy_config(address, "http2-upstream")
        config["route_configs"][0]["virtual_hosts"][0]["routes"][0]["timeout"] = "300ms"
        proxy = await start_proxy(nursery, config)
        async with open_h2_client(proxy.address("ingress")) as client:
            sid = await client.start("/stall", method="POST", body=b"s" * 100_000, end_stream=False)
            # The body is still open: the client could send more, but the upstream takes no more.
            got = await client.response(sid)
        gc.collect()  # a body reader abandoned mid-iteration must not be left to the collector
    assert got.status == 504
    assert proxy.stats.value("cluster_upstream_rq_active", cluster="backend") == 0


async def test_a_burst_of_requests_shares_one_upstream_http2_connection(nursery: trio.Nursery) -> None:
    # 50 requests at once, with no upstream connection yet: they wait for the one being
    # opened (it has room for 100 streams), rather than each opening its own.
    with trio.fail_after(10):
        address, h2_upstream = await start_upstream(nursery, "http2-upstream")
        assert h2_upstream is not None
        proxy = await start_proxy(nursery, proxy_config(address, "http2-upstream"))
        async with open_h2_client(proxy.address("ingress")) as client:
            sids = [await client.start(f"/bytes/{i}") for i in range(50)]
            responses = [await client.response(sid) for sid in sids]
    assert [len(r.body) for r in responses] == list(range(50))
    assert h2_upstream.connections == 1
    assert len(h2_upstream.received) == 50


async def test_a_burst_to_an_http2_upstream_that_cannot_be_reached_fails_at_once(
    nursery: trio.Nursery,
) -> None:
    # An endpoint whose accept queue is full: connecting hangs until the connect timeout. The
    # requests that waited for the one connection being opened fail with it, together.
    with closing(stdlib_socket.socket()) as listener, ExitStack() as fillers:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        for _ in range(3):
            filler = fillers.enter_context(closing(stdlib_socket.socket()))
            filler.setblocking(False)  # noqa: FBT003 - the socket module's own signature
            filler.connect_ex(listener.getsockname())
        config = proxy_config(listener.getsockname(), "http2-upstream")
        config["clusters"][0]["connect_timeout"] = "500ms"
        with trio.fail_after(10):
            proxy = await start_proxy(nursery, config)
            started = trio.current_time()
            async with open_h2_client(proxy.address("ingress")) as client:
                sids = [await client.start("/hello") for _ in range(10)]
                responses = [await client.response(sid) for sid in sids]
            elapsed = trio.current_time() - started
    assert [r.status for r in responses] == [503] * 10
    assert {r.get("x-meshcore-flags") for r in responses} == {"UF"}
    assert elapsed < 2.5  # one connect timeout (0.5 s), not one per request (5 s)


@pytest.mark.parametrize("path", ["/direct", "/nowhere"], ids=["direct-response", "no-route-local-reply"])
async def test_a_reply_to_head_has_no_body_on_the_wire(nursery: trio.Nursery, path: str) -> None:
    # RFC 9110 9.3.2: a response to HEAD has no content, even when the reply a filter or a
    # route made has a body (nghttp2, in curl, resets a stream that gets DATA for HEAD).
    routes = [
        {"name": "direct", "match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": "hi\n"}}
    ]
    with trio.fail_after(10):
        proxy = await start_proxy(nursery, http_proxy_config(["127.0.0.1:1"], routes=routes))
        got = await curl(proxy.address("ingress")[1], path, "--http2-prior-knowledge", "-I")
        async with open_h2_client(proxy.address("ingress")) as client:
            raw = await client.request(path, method="HEAD")
            after = await client.request(path)  # the connection is fine after it
    status = 200 if path == "/direct" else 404
    assert (got.http_version, got.status) == ("2", status)
    assert (raw.status, raw.body) == (status, b"")
    assert after.status == status
    assert after.body


async def test_empty_replies_from_an_http1_upstream_give_its_connection_back(nursery: trio.Nursery) -> None:
    # A 204, a 304, a 200 with content-length 0, a reply to HEAD: nothing to send after the
    # head, but the upstream exchange still has to be finished for its connection to be
    # reused. With one connection allowed, the next request needs it.
    with trio.fail_after(10):
        address, _ = await start_upstream(nursery, "http1-upstream")
        config = proxy_config(address, "http1-upstream")
        config["clusters"][0]["max_connections_per_endpoint"] = 1
        proxy = await start_proxy(nursery, config)
        async with open_h2_client(proxy.address("ingress")) as client:
            replies = [
                await client.request("/status/204"),
                await client.request("/status/304"),
                await client.request("/status/200"),
                await client.request("/bytes/100", method="HEAD"),
                await client.request("/bytes/100"),
            ]
        await trio.testing.wait_all_tasks_blocked()
    assert [(r.status, len(r.body)) for r in replies] == [(204, 0), (304, 0), (200, 0), (200, 0), (200, 100)]
    assert replies[3].get("content-length") == "100"
    assert proxy.stats.value("cluster_upstream_rq_active", cluster="backend") == 0
    assert proxy.stats.value("cluster_upstream_cx_total", cluster="backend") == 1  # one, kept alive


async def test_a_drain_lets_the_http2_requests_in_flight_finish(nursery: trio.Nursery) -> None:
    # The drain's GOAWAY (NO_ERROR) stops new streams; the ones in flight still get their
    # responses. curl, a real client, reads GOAWAY and then the response.
    with trio.fail_after(10):
        address, h2_upstream = await start_upstream(nursery, "http2-upstream")
        assert h2_upstream is not None
        proxy = await start_proxy(nursery, proxy_config(address, "http2-upstream"))
        port = proxy.address("ingress")[1]
        results: list[Curl] = []

        async def in_flight() -> None:
            results.append(await curl(port, "/delay/300", "--http2-prior-knowledge"))

        async with trio.open_nursery() as clients:
            clients.start_soon(in_flight)
            await h2_upstream.wait_for_requests(1)
            proxy.drain()
    [got] = results
    assert (got.http_version, got.status) == ("2", 200)
    assert "GOAWAY, error=0" in got.verbose
    assert described("http2-upstream", got.body)["path"] == "/delay/300"


async def test_an_upstream_draining_with_goaway_still_delivers_the_streams_it_took(
    nursery: trio.Nursery,
) -> None:
    # GOAWAY NO_ERROR with last_stream_id = the stream: "I will finish this one, open no
    # more here". The response that follows is the client's; the next request goes to a
    # new connection.
    with trio.fail_after(10):
        address, h2_upstream = await start_upstream(nursery, "http2-upstream")
        assert h2_upstream is not None
        proxy = await start_proxy(nursery, proxy_config(address, "http2-upstream"))
        async with open_h2_client(proxy.address("ingress")) as client:
            drained = await client.request("/drain")
            after = await client.request("/hello")
    assert drained.status == 200
    assert json.loads(drained.body)["pseudo"][":path"] == "/drain"
    assert after.status == 200
    assert h2_upstream.connections == 2


def test_graceful_goaways_are_taken_out_of_the_upstream_bytes_however_they_are_split() -> None:
    # Sans-IO: the upstream's bytes, cut at every place, come out the same minus the GOAWAYs
    # with NO_ERROR; a GOAWAY with an error code stays in, for h2.
    graceful = frame(GoAwayFrame(0, last_stream_id=5, error_code=0))
    graceful_with_data = frame(GoAwayFrame(0, last_stream_id=3, error_code=0, additional_data=b"draining"))
    failed = frame(GoAwayFrame(0, last_stream_id=7, error_code=2))
    before = frame(SettingsFrame(0)) + frame(HeadersFrame(1, b"\x88")) + frame(DataFrame(1, b"d" * 300))
    after = frame(DataFrame(3, b"e" * 40)) + failed
    wire = before + graceful + frame(DataFrame(5, b"")) + graceful_with_data + after
    expected = before + frame(DataFrame(5, b"")) + after
    for cut in range(len(wire) + 1):
        for cut2 in (cut, min(cut + 5, len(wire)), len(wire)):
            taker = GracefulGoaway()
            out, lasts = b"", []
            for piece in (wire[:cut], wire[cut:cut2], wire[cut2:]):
                data, found = taker.feed(piece)
                out += data
                lasts += found
            assert (out, lasts) == (expected, [5, 3]), (cut, cut2)
    # Nothing to take out: the very bytes are handed on, not a copy.
    assert GracefulGoaway().feed(before)[0] is before


async def test_a_client_going_away_gracefully_still_gets_the_responses_in_flight(
    nursery: trio.Nursery,
) -> None:
    # A client closing gracefully (Node's session.close(), for one) sends GOAWAY NO_ERROR
    # and waits for its open streams; they are still answered.
    with trio.fail_after(10):
        address, h2_upstream = await start_upstream(nursery, "http2-upstream")
        assert h2_upstream is not None
        proxy = await start_proxy(nursery, proxy_config(address, "http2-upstream"))
        async with open_h2_client(proxy.address("ingress")) as client:
            sid = await client.start("/delay/200")
            await h2_upstream.wait_for_requests(1)
            async with client.lock:  # by hand: h2's close_connection() would close our side too
                await client.stream.send_all(frame(GoAwayFrame(0, last_stream_id=0, error_code=0)))
            got = await client.response(sid)
    assert got.status == 200
    assert json.loads(got.body)["pseudo"][":path"] == "/delay/200"
