"""The HTTP/1.1 proxy end to end: loopback sockets, the test upstream, and real clients.

Every request goes through a real proxy to the real upstream server
(:mod:`meshcore.testing.upstreams`) and is sent by a client that is not ours: ``curl`` (a
process) and httpx (sync API, in a thread). The memory test runs the proxy as a separate
process (``python -m meshcore proxy``) so that its RSS is its own.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from meshcore.runtime.proxy import Proxy
from meshcore.testing.client import IncompleteResponse, fetch
from meshcore.testing.harness import http_proxy_config, start_proxy
from meshcore.testing.upstreams import serve_upstream

CURL = "/usr/bin/curl"
MB = 1024 * 1024
BIG = 10 * MB

# -- clients ----------------------------------------------------------------------------------


@attrs.frozen
class Reply:
    """One final response as curl printed it (``-i``): status, headers, body."""

    status: int
    headers: Sequence[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        return next((v for n, v in self.headers if n == name.lower()), None)

    def json(self) -> Any:
        """The body as JSON (the upstream's description of the request it got)."""
        return json.loads(self.body)


@attrs.frozen
class Curl:
    """What one curl run gave: its exit code, the final responses in order, its -v log."""

    code: int
    replies: Sequence[Reply]
    verbose: str

    @property
    def reply(self) -> Reply:
        """The only response (curl with one URL that succeeded)."""
        assert self.code == 0, f"curl exited {self.code}: {self.verbose[-500:]}"
        assert len(self.replies) == 1, self.replies
        return self.replies[0]


def _parse_replies(raw: bytes) -> list[Reply]:
    """Split curl's ``-i`` output into responses; interim 1xx heads are skipped."""
    replies = []
    while raw:
        head, sep, raw = raw.partition(b"\r\n\r\n")
        assert sep, f"no end of head in {head[:200]!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ")[1])
        if 100 <= status < 200:
            continue
        headers = [(n.strip().lower(), v.strip()) for n, _, v in (line.partition(":") for line in lines)]
        length = next((int(v) for n, v in headers if n == "content-length"), None)
        if status in (204, 304):
            body = b""  # stray bytes after the head would fail to parse as the next one
        elif length is not None:
            body, raw = raw[:length], raw[length:]
        else:
            body, raw = raw, b""
        replies.append(Reply(status, headers, body))
    return replies


async def curl(*args: str) -> Curl:
    """Run curl (no config file, no proxy from the environment, verbose), parse what it printed."""
    argv = [CURL, "-q", "--noproxy", "*", "-sS", "-v", "-i", "--max-time", "8", *args]
    done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    return Curl(done.returncode, _parse_replies(done.stdout), done.stderr.decode(errors="replace"))


async def curl_head(url: str, *args: str) -> Curl:
    """``curl -I``: a HEAD request; curl reads the head only, so any body bytes would show."""
    return await curl("-I", *args, url)


async def httpx_requests(requests: Sequence[tuple[str, str, Mapping[str, Any]]]) -> list[httpx.Response]:
    """Send ``(method, url, kwargs)`` requests one after the other on one httpx client."""

    def run() -> list[httpx.Response]:
        with httpx.Client(timeout=8, trust_env=False) as client:
            responses = []
            for method, url, kwargs in requests:
                response = client.request(method, url, **kwargs)
                response.read()
                responses.append(response)
            return responses

    return await trio.to_thread.run_sync(run)


async def httpx_request(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request with httpx."""
    (response,) = await httpx_requests([(method, url, kwargs)])
    return response


def sha256(data: bytes) -> str:
    """The hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def header_values(description: Mapping[str, Any], name: str) -> list[str]:
    """Every value of header ``name`` the upstream received, from its JSON description."""
    return [v for n, v in description["headers"] if n.lower() == name]


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- set-up -----------------------------------------------------------------------------------


@attrs.frozen
class Mesh:
    """A running upstream and a proxy in front of it."""

    proxy: Proxy

    @property
    def url(self) -> str:
        """The proxy's base URL."""
        host, port = self.proxy.address("ingress")
        return f"http://{host}:{port}"

    def stat(self, name: str, **labels: str) -> int | float:
        """A proxy metric."""
        return self.proxy.stats.value(name, **labels)


async def start_mesh(
    nursery: trio.Nursery,
    *,
    routes: Sequence[Mapping[str, Any]] | None = None,
    endpoints: Sequence[tuple[str, int] | str] | None = None,
    config: Mapping[str, Any] | None = None,
) -> Mesh:
    """Start the upstream, then a proxy routing to it (``endpoints`` overrides the cluster's)."""
    upstream: tuple[str, int] = await nursery.start(serve_upstream)
    proxy = await start_proxy(
        nursery, config or http_proxy_config([upstream] if endpoints is None else endpoints, routes=routes)
    )
    return Mesh(proxy)


@pytest.fixture
def big_file(tmp_path: Path) -> tuple[Path, bytes]:
    """10 MB of random bytes, on disk for curl and in memory for checks."""
    data = os.urandom(BIG)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    return path, data


def to_backend(**route: Any) -> dict[str, Any]:
    """A route to cluster "backend" for any path, with ``route``'s extra settings."""
    return {"name": "backend", "match": {"prefix": "/"}, "cluster": "backend", **route}


# -- methods, bodies, framing -----------------------------------------------------------------


async def test_get_with_curl_and_httpx(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        mesh = await start_mesh(nursery)
        by_curl = (await curl(f"{mesh.url}/bytes/3000")).reply
        by_httpx = await httpx_request("GET", f"{mesh.url}/bytes/3000")
        described = (await curl(f"{mesh.url}/hello?x=1")).reply.json()
    assert (by_curl.status, by_curl.body, by_curl.header("x-upstream")) == (200, b"x" * 3000, "upstream")
    assert (by_httpx.status_code, by_httpx.content, by_httpx.headers["x-upstream"]) == (
        200,
        b"x" * 3000,
        "upstream",
    )
    assert by_httpx.headers["content-length"] == "3000"
    assert (described["method"], described["path"], described["body_size"]) == ("GET", "/hello?x=1", 0)


async def test_head_has_no_body_and_keeps_the_content_length(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        mesh = await start_mesh(nursery)
        by_curl = await curl_head(f"{mesh.url}/bytes/12345")
        by_httpx = await httpx_request("HEAD", f"{mesh.url}/bytes/12345")
        # The pooled upstream connection is still in step after the bodiless replies.
        after = await httpx_request("GET", f"{mesh.url}/bytes/7")
    reply = by_curl.reply
    assert (reply.status, reply.header("content-length"), reply.body) == (200, "12345", b"")
    assert (by_httpx.status_code, by_httpx.headers["content-length"], by_httpx.content) == (200, "12345", b"")
    assert (after.status_code, after.content) == (200, b"x" * 7)
    assert mesh.stat("cluster_upstream_cx_total", cluster="backend") == 1


async def test_10_mb_post_streams_both_ways_through_curl(
    nursery: trio.Nursery, big_file: tuple[Path, bytes]
) -> None:
    path, data = big_file
    with trio.fail_after(15):
        mesh = await start_mesh(nursery)
        # /echo streams each chunk back as it arrives: the proxy must send and receive at once.
        echoed = await curl("--data-binary", f"@{path}", f"{mesh.url}/echo")
    reply = echoed.reply
    assert (reply.status, reply.header("content-length")) == (200, str(BIG))
    assert len(reply.body) == BIG
    assert sha256(reply.body) == sha256(data)


async def test_10_mb_each_way_through_httpx(nursery: trio.Nursery, big_file: tuple[Path, bytes]) -> None:
    # httpx sends a whole request before it reads the response, so it cannot take an echo of
    # 10 MB (it would fill the socket buffers against the upstream itself): one request each way.
    _, data = big_file
    with trio.fail_after(15):
        mesh = await start_mesh(nursery)
        upload, download = await httpx_requests(
            [("POST", f"{mesh.url}/upload", {"content": data}), ("GET", f"{mesh.url}/bytes/{BIG}", {})]
        )
    assert upload.status_code == 200
    assert upload.json()["body_size"] == BIG
    assert header_values(upload.json(), "content-length") == [str(BIG)]
    assert download.status_code == 200
    assert sha256(download.content) == sha256(b"x" * BIG)


async def test_chunked_upload(nursery: trio.Nursery, tmp_path: Path) -> None:
    data = os.urandom(MB + 17)
    path = tmp_path / "upload.bin"
    path.write_bytes(data)

    def chunks() -> Iterator[bytes]:
        yield from (data[i : i + 100_000] for i in range(0, len(data), 100_000))

    with trio.fail_after(10):
        mesh = await start_mesh(nursery)
        chunked = ("-H", "Transfer-Encoding: chunked", "--data-binary", f"@{path}")
        echoed = await curl(*chunked, f"{mesh.url}/echo")
        described = (await curl(*chunked, f"{mesh.url}/upload")).reply.json()
        by_httpx = await httpx_request("POST", f"{mesh.url}/upload", content=chunks())
    assert "> Transfer-Encoding: chunked" in echoed.verbose
    assert (echoed.reply.status, sha256(echoed.reply.body)) == (200, sha256(data))
    # Chunked on the upstream hop too: the length was never known.
    for seen in (described, by_httpx.json()):
        assert seen["body_size"] == len(data)
        assert header_values(seen, "transfer-encoding") == ["chunked"]
        assert header_values(seen, "content-length") == []


async def test_expect_100_continue(nursery: trio.Nursery, tmp_path: Path) -> None:
    data = os.urandom(MB)
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    with trio.fail_after(10):
        mesh = await start_mesh(nursery)
        # --expect100-timeout: without the proxy's 100, curl would wait this long and send anyway.
        expect = ("-H", "Expect: 100-continue", "--expect100-timeout", "5", "--data-binary", f"@{path}")
        start = trio.current_time()
        echoed = await curl(*expect, f"{mesh.url}/echo")
        elapsed = trio.current_time() - start
        described = (await curl(*expect, f"{mesh.url}/upload")).reply.json()
        by_httpx = await httpx_request(
            "POST", f"{mesh.url}/echo", content=b"z" * 5000, headers={"expect": "100-continue"}
        )
    assert "> Expect: 100-continue" in echoed.verbose
    assert "< HTTP/1.1 100" in echoed.verbose
    assert elapsed < 4
    assert (echoed.reply.status, sha256(echoed.reply.body)) == (200, sha256(data))
    # Expect is hop-by-hop: the upstream is not asked for a 100 of its own.
    assert header_values(described, "expect") == []
    assert described["body_size"] == MB
    assert (by_httpx.status_code, by_httpx.content) == (200, b"z" * 5000)


async def test_204_and_304_have_no_body(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        mesh = await start_mesh(nursery)
        # One connection: a stray body byte after the 204 or 304 would garble the next reply.
        run = await curl(f"{mesh.url}/status/204", f"{mesh.url}/status/304", f"{mesh.url}/bytes/5")
        by_httpx = await httpx_requests(
            [
                ("GET", f"{mesh.url}/status/204", {}),
                ("GET", f"{mesh.url}/status/304", {}),
                ("GET", f"{mesh.url}/bytes/5", {}),
            ]
        )
    assert run.code == 0, run.verbose
    assert [(r.status, r.body) for r in run.replies] == [(204, b""), (304, b""), (200, b"xxxxx")]
    assert run.verbose.count("Re-using existing connection") == 2
    assert [(r.status_code, r.content) for r in by_httpx] == [(204, b""), (304, b""), (200, b"xxxxx")]
    assert [("content-length" in r.headers, "transfer-encoding" in r.headers) for r in by_httpx[:2]] == [
        (False, False),
        (False, False),
    ]


# -- keep-alive -------------------------------------------------------------------------------


async def test_upstream_connections_are_kept_alive_and_reused(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        mesh = await start_mesh(nursery)
        for i in range(3):
            assert (await curl(f"{mesh.url}/bytes/{i + 1}")).reply.body == b"x" * (i + 1)
        responses = await httpx_requests([("GET", f"{mesh.url}/n/{i}", {}) for i in range(4)])
        posted = await httpx_request("POST", f"{mesh.url}/echo", content=b"p" * 70_000)
    assert [r.json()["path"] for r in responses] == [f"/n/{i}" for i in range(4)]
    assert posted.content == b"p" * 70_000
    # Eight requests from five client connections, one upstream connection.
    assert mesh.stat("cluster_upstream_rq_total", cluster="backend") == 8
    assert mesh.stat("cluster_upstream_cx_total", cluster="backend") == 1
    assert mesh.stat("cluster_upstream_cx_reused", cluster="backend") == 7


async def test_curl_reuses_one_downstream_connection_for_several_urls(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        mesh = await start_mesh(nursery)
        run = await curl(f"{mesh.url}/one", f"{mesh.url}/bytes/10", f"{mesh.url}/three")
    assert run.code == 0, run.verbose
    assert run.verbose.count("Re-using existing connection") == 2
    assert run.verbose.count("Connected to") == 1
    assert [r.status for r in run.replies] == [200, 200, 200]
    assert [run.replies[0].json()["path"], run.replies[1].body, run.replies[2].json()["path"]] == [
        "/one",
        b"x" * 10,
        "/three",
    ]


# -- memory -----------------------------------------------------------------------------------


def _proc_kb(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` figure in kB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    msg = f"no {field} in /proc/{pid}/status"
    raise AssertionError(msg)


class LogLines:
    """Lines of a process's stderr, read as they come."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.seen: list[str] = []

    async def next(self) -> str | None:
        """The next line, or None once the process has closed stderr."""
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        self.seen.append(line.decode(errors="replace"))
        return self.seen[-1]

    async def until(self, event: str) -> dict[str, Any]:
        """The next JSON log record whose event is ``event``."""
        while (line := await self.next()) is not None:
            if line.startswith("{"):
                record: dict[str, Any] = json.loads(line)
                if record.get("event") == event:
                    return record
        msg = f"the process ended without logging {event!r}; it said: {self.seen}"
        raise AssertionError(msg)

    async def drain(self) -> None:
        """Keep reading until the end, so that the process never blocks on a full pipe."""
        while await self.next() is not None:
            pass


async def test_proxy_rss_grows_far_less_than_a_10_mb_body_it_streams_both_ways(
    nursery: trio.Nursery, tmp_path: Path, big_file: tuple[Path, bytes]
) -> None:
    path, data = big_file
    with trio.fail_after(20):
        upstream = await nursery.start(serve_upstream)
        config = tmp_path / "cfg.yaml"
        config.write_text(json.dumps(http_proxy_config([upstream])))  # JSON is YAML
        argv = [sys.executable, "-m", "meshcore", "proxy", "-c", str(config), "--log-format", "json"]
        # Started in the nursery: should the test fail, cancelling it kills the proxy.
        run = functools.partial(trio.run_process, argv, stderr=subprocess.PIPE, check=False)
        process: trio.Process = await nursery.start(run)
        assert process.stderr is not None
        logs = LogLines(process.stderr)
        started = await logs.until("proxy_started")
        url = f"http://{started['listeners']['ingress']}"
        nursery.start_soon(logs.drain)
        # Warm up: every code path of an echo has run once before the measure.
        warm = await curl("--data-binary", "warm-up", f"{url}/echo")
        assert warm.reply.body == b"warm-up"
        before = _proc_kb(process.pid, "VmRSS")
        await trio.Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # peak (VmHWM) := now
        echoed = await curl("--data-binary", f"@{path}", f"{url}/echo")
        peak = _proc_kb(process.pid, "VmHWM")
        process.send_signal(signal.SIGTERM)
        code = await process.wait()
    assert sha256(echoed.reply.body) == sha256(data)
    assert peak - before < 5 * 1024, f"RSS {before} kB before, peak {peak} kB while streaming 10 MB"
    assert code == 0, logs.seen[-5:]


# -- routes -----------------------------------------------------------------------------------


async def test_first_matching_route_wins(nursery: trio.Nursery) -> None:
    def answer(name: str, match: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "match": match, "direct_response": {"status": 200, "body": name}}

    routes = [
        answer("canary", {"prefix": "/api/", "headers": [{"name": "x-canary", "exact": "yes"}]}),
        answer("exact", {"path": "/api/exact"}),
        answer("api", {"prefix": "/api/"}),
        answer("shadowed", {"prefix": "/api/exact"}),  # after "api": never reached
        to_backend(),
    ]
    cases: list[tuple[str, tuple[str, ...], bytes]] = [
        ("/api/exact", (), b"exact"),  # the exact path, before the later prefix
        ("/api/exactly", (), b"api"),  # an exact path is no prefix
        ("/api/exact", ("-H", "x-canary: yes"), b"canary"),  # the earlier header-matched route
        ("/api/other", ("-H", "x-canary: no"), b"api"),  # the header must match
        ("/api/exact/sub", (), b"api"),  # "api" wins over the later, longer "shadowed"
    ]
    with trio.fail_after(10):
        mesh = await start_mesh(nursery, routes=routes)
        replies = [(await curl(*extra, f"{mesh.url}{path}")).reply for path, extra, _ in cases]
        elsewhere = (await curl(f"{mesh.url}/elsewhere")).reply
    assert [reply.body for reply in replies] == [want for _, _, want in cases]
    assert {reply.header("x-meshcore-flags") for reply in replies} == {"DR"}
    assert elsewhere.json()["path"] == "/elsewhere"
    assert mesh.stat("route_rq_total", route="shadowed", virtual_host="all") == 0
    assert mesh.stat("route_rq_total", route="api", virtual_host="all") == 3


async def test_no_matching_route_is_404_nr(nursery: trio.Nursery) -> None:
    config = http_proxy_config([("127.0.0.1", closed_port())])
    config["route_configs"][0]["virtual_hosts"] = [
        {"name": "api", "domains": ["api.example"], "routes": [to_backend(match={"prefix": "/v1/"})]}
    ]
    with trio.fail_after(10):
        mesh = await start_mesh(nursery, config=config)
        other_host = await curl("-H", "Host: other.example", f"{mesh.url}/v1/x")
        other_path = await curl("-H", "Host: api.example", f"{mesh.url}/v2/x")
        # A local reply to HEAD: the head alone (its body must not reach the wire).
        head = await curl_head(f"{mesh.url}/v2/x", "-H", "Host: api.example")
        by_httpx = await httpx_request("GET", f"{mesh.url}/v2/x", headers={"host": "api.example"})
        ours = await fetch(mesh.proxy.address("ingress"), "/nothing", host="nobody.example")
    for reply in (other_host.reply, other_path.reply, head.reply):
        assert (reply.status, reply.header("x-meshcore-flags")) == (404, "NR")
    assert head.reply.body == b""
    assert (by_httpx.status_code, by_httpx.headers["x-meshcore-flags"]) == (404, "NR")
    assert (ours.status, ours.header("x-meshcore-flags")) == (404, "NR")
    assert mesh.stat("cluster_upstream_rq_total", cluster="backend") == 0


async def test_refused_connection_is_503_uf(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        mesh = await start_mesh(nursery, endpoints=[("127.0.0.1", closed_port())])
        reply = (await curl(f"{mesh.url}/x")).reply
        by_httpx = await httpx_request("GET", f"{mesh.url}/x")
    assert (reply.status, reply.header("x-meshcore-flags")) == (503, "UF")
    assert (by_httpx.status_code, by_httpx.headers["x-meshcore-flags"]) == (503, "UF")
    assert mesh.stat("cluster_upstream_cx_connect_fail", cluster="backend") == 2


async def test_cluster_without_endpoints_is_503_uh(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        mesh = await start_mesh(nursery, endpoints=[])
        reply = (await curl(f"{mesh.url}/x")).reply
    assert (reply.status, reply.header("x-meshcore-flags")) == (503, "UH")
    assert mesh.stat("cluster_upstream_cx_total", cluster="backend") == 0


async def test_route_timeout_is_504_ut(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        mesh = await start_mesh(nursery, routes=[to_backend(timeout="200ms")])
        start = trio.current_time()
        reply = (await curl(f"{mesh.url}/delay/2000")).reply
        elapsed = trio.current_time() - start
    assert (reply.status, reply.header("x-meshcore-flags")) == (504, "UT")
    assert 0.2 <= elapsed < 1.5
    assert mesh.stat("cluster_upstream_rq_timeout", cluster="backend") == 1


async def test_upstream_reset_mid_response_never_looks_complete(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        mesh = await start_mesh(nursery)
        by_curl = await curl(f"{mesh.url}/reset/1000")
        with pytest.raises(IncompleteResponse):
            await fetch(mesh.proxy.address("ingress"), "/reset/1000")
        with pytest.raises(httpx.RemoteProtocolError):
            await httpx_request("GET", f"{mesh.url}/reset/1000")
        # The proxy is fine afterwards.
        after = (await curl(f"{mesh.url}/bytes/3")).reply
    assert by_curl.code == 18, by_curl.verbose  # CURLE_PARTIAL_FILE
    assert "transfer closed with 1001 bytes remaining to read" in by_curl.verbose
    assert after.body == b"xxx"


async def test_direct_response(nursery: trio.Nursery) -> None:
    routes = [
        {
            "name": "health",
            "match": {"path": "/health"},
            "direct_response": {"status": 418, "body": '{"ok": true}', "content_type": "application/json"},
        },
        to_backend(),
    ]
    with trio.fail_after(10):
        mesh = await start_mesh(nursery, routes=routes)
        reply = (await curl(f"{mesh.url}/health")).reply
        by_httpx = await httpx_request("GET", f"{mesh.url}/health")
    assert (reply.status, reply.body, reply.header("content-type")) == (
        418,
        b'{"ok": true}',
        "application/json",
    )
    assert reply.header("content-length") == "12"
    assert by_httpx.json() == {"ok": True}
    assert mesh.stat("cluster_upstream_rq_total", cluster="backend") == 0


async def test_redirect(nursery: trio.Nursery) -> None:
    routes = [
        {"name": "moved", "match": {"path": "/old"}, "redirect": {"host": "new.example", "path": "/new"}},
        {
            "name": "docs",
            "match": {"prefix": "/docs/"},
            "redirect": {"scheme": "https", "prefix_rewrite": "/manual/", "status": 308},
        },
        to_backend(),
    ]
    with trio.fail_after(10):
        mesh = await start_mesh(nursery, routes=routes)
        moved = (await curl("-H", "Host: old.example", f"{mesh.url}/old?a=1")).reply
        docs = (await curl("-H", "Host: site.example:8080", f"{mesh.url}/docs/intro")).reply
        by_httpx = await httpx_request("GET", f"{mesh.url}/old", headers={"host": "old.example"})
    assert (moved.status, moved.header("location")) == (301, "http://new.example/new?a=1")
    assert (docs.status, docs.header("location")) == (308, "https://site.example/manual/intro")
    assert (by_httpx.status_code, by_httpx.headers["location"]) == (301, "http://new.example/new")


async def test_request_and_response_headers_added_and_removed(nursery: trio.Nursery) -> None:
    route = to_backend(
        request_headers_to_add={"x-added": "by-proxy"},
        request_headers_to_remove=["x-secret"],
        response_headers_to_add={"x-served-by": "meshcore"},
        response_headers_to_remove=["x-upstream"],
    )
    with trio.fail_after(10):
        mesh = await start_mesh(nursery, routes=[route])
        reply = (await curl("-H", "X-Secret: s3cr3t", "-H", "X-Kept: k", f"{mesh.url}/h")).reply
    seen = reply.json()
    assert header_values(seen, "x-added") == ["by-proxy"]
    assert header_values(seen, "x-secret") == []
    assert header_values(seen, "x-kept") == ["k"]
    assert reply.header("x-served-by") == "meshcore"
    assert reply.header("x-upstream") is None


async def test_prefix_rewrite(nursery: trio.Nursery) -> None:
    routes = [
        {"name": "api", "match": {"prefix": "/api/"}, "cluster": "backend", "prefix_rewrite": "/v2/"},
        to_backend(),
    ]
    with trio.fail_after(10):
        mesh = await start_mesh(nursery, routes=routes)
        rewritten = (await curl(f"{mesh.url}/api/items/7?q=1")).reply.json()
        untouched = (await curl(f"{mesh.url}/apix/items")).reply.json()
    assert rewritten["path"] == "/v2/items/7?q=1"
    assert untouched["path"] == "/apix/items"


async def test_host_rewrite(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        mesh = await start_mesh(nursery, routes=[to_backend(host_rewrite="internal.svc")])
        seen = (await curl("-H", "Host: public.example", f"{mesh.url}/h")).reply.json()
    assert header_values(seen, "host") == ["internal.svc"]


async def test_x_forwarded_for(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        mesh = await start_mesh(nursery)
        fresh = (await curl(f"{mesh.url}/h")).reply.json()
        relayed = (await curl("-H", "X-Forwarded-For: 203.0.113.9", f"{mesh.url}/h")).reply.json()
        by_httpx = (await httpx_request("GET", f"{mesh.url}/h")).json()
    assert header_values(fresh, "x-forwarded-for") == ["127.0.0.1"]
    assert header_values(fresh, "x-forwarded-proto") == ["http"]
    # A client outside the mesh cannot make up earlier hops: what it sent is dropped.
    assert header_values(relayed, "x-forwarded-for") == ["127.0.0.1"]
    assert header_values(by_httpx, "x-forwarded-for") == ["127.0.0.1"]


async def test_x_forwarded_for_with_a_trusted_hop_in_front(nursery: trio.Nursery) -> None:
    upstream: tuple[str, int] = await nursery.start(serve_upstream)
    config = http_proxy_config([upstream], manager={"trust": {"xff_trusted_hops": 1}})
    with trio.fail_after(10):
        mesh = Mesh(await start_proxy(nursery, config))
        relayed = (await curl("-H", "X-Forwarded-For: 203.0.113.9", f"{mesh.url}/h")).reply.json()
    # The client's address is appended to what the trusted hop said (as a second field line).
    assert ", ".join(header_values(relayed, "x-forwarded-for")) == "203.0.113.9, 127.0.0.1"
