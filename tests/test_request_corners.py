"""Request framing corners, through a real proxy: lengths, absolute-form targets, h2c upgrades.

- A Content-Length no body could have, or over ``max_request_body_size``, gets 400 or 413
  before anything reaches the upstream; a streamed body past the limit is cut off (413).
- An absolute-form target (``GET http://a.test/x HTTP/1.1``, as applications behind
  ``HTTP_PROXY`` send) routes by its authority, which wins over Host (RFC 9112 section
  3.2.2); the upstream sees that one Host and the origin-form target.
- ``Upgrade: h2c`` is ignored, not refused: ``curl --http2 http://...`` gets its answer
  over HTTP/1.1, and the upstream sees neither Upgrade nor HTTP2-Settings.
"""

from __future__ import annotations

import json
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
import trio

from meshcore.runtime.proxy import Proxy
from meshcore.testing.harness import http_proxy_config, start_proxy
from meshcore.testing.upstreams import serve_upstream

DEADLINE = 10
CODECS = pytest.mark.parametrize("codec", ["h11", "fast"])


async def raw_exchange(address: tuple[str, int], *pieces: bytes) -> bytes:
    """Send ``pieces``, read until the proxy closes the connection."""
    with trio.fail_after(DEADLINE):
        stream = await trio.open_tcp_stream(*address)
        async with stream:
            for piece in pieces:
                await stream.send_all(piece)
            chunks = []
            try:
                while data := await stream.receive_some(65536):
                    chunks.append(data)
            except trio.BrokenResourceError:
                pass
            return b"".join(chunks)


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


async def start(nursery: trio.Nursery, codec: str, **manager: Any) -> Proxy:
    upstream = await nursery.start(serve_upstream)
    routes = [
        {
            "name": "a",
            "match": {"prefix": "/"},
            "cluster": "backend",
        }
    ]
    config = http_proxy_config([upstream], routes=routes, manager={"codec": codec, **manager})
    # A second virtual host, so that routing by authority shows.
    config["route_configs"][0]["virtual_hosts"] = [
        {"name": "a", "domains": ["a.test"], "routes": routes},
        {
            "name": "other",
            "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 418, "body": "other\n"}}],
        },
    ]
    return await start_proxy(nursery, config)


def forwarded(proxy: Proxy) -> int | float:
    return proxy.stats.value("cluster_upstream_rq_total", cluster="backend")


@CODECS
async def test_a_content_length_no_body_could_have_is_refused(nursery: trio.Nursery, codec: str) -> None:
    proxy = await start(nursery, codec)
    for length in (b"9" * 20, b"1" * 19, b"0" * 21):
        raw = await raw_exchange(
            proxy.address("ingress"),
            b"POST / HTTP/1.1\r\nhost: a.test\r\ncontent-length: " + length + b"\r\n\r\nabc",
        )
        assert status_of(raw) == 400, length
        assert b"\r\n\r\nBad Request\n" in raw
    assert forwarded(proxy) == 0
    nursery.cancel_scope.cancel()


@CODECS
async def test_bodies_over_the_limit_get_413(nursery: trio.Nursery, codec: str) -> None:
    proxy = await start(nursery, codec, max_request_body_size="1KiB")
    address = proxy.address("ingress")
    declared = await raw_exchange(
        address, b"POST / HTTP/1.1\r\nhost: a.test\r\ncontent-length: 1025\r\n\r\n" + b"x" * 1025
    )
    assert status_of(declared) == 413
    assert forwarded(proxy) == 0  # refused on the length alone
    chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
    streamed = await raw_exchange(
        address,
        b"POST / HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n\r\n"
        + chunk
        + chunk
        + b"0\r\n\r\n",
    )
    assert status_of(streamed) == 413
    within = await raw_exchange(
        address,
        b"POST / HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\ncontent-length: 1024\r\n\r\n" + b"x" * 1024,
    )
    assert status_of(within) == 200
    assert json.loads(within.partition(b"\r\n\r\n")[2])["body_size"] == 1024
    nursery.cancel_scope.cancel()


async def test_http2_bodies_over_the_limit_get_413(nursery: trio.Nursery) -> None:
    proxy = await start(nursery, "h11", max_request_body_size="1KiB")
    before = forwarded(proxy)
    with trio.fail_after(DEADLINE):
        stream = await trio.open_tcp_stream(*proxy.address("ingress"))
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        headers = [
            (b":method", b"POST"),
            (b":path", b"/"),
            (b":scheme", b"http"),
            (b":authority", b"a.test"),
            (b"content-length", b"5000"),
        ]
        conn.send_headers(1, headers)
        await stream.send_all(conn.data_to_send())
        status = None
        while status is None:
            for event in conn.receive_data(await stream.receive_some(65536)):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"]
            await stream.send_all(conn.data_to_send())
        await stream.aclose()
    assert status == b"413"
    assert forwarded(proxy) == before
    nursery.cancel_scope.cancel()


@CODECS
async def test_absolute_form_routes_by_its_authority(nursery: trio.Nursery, codec: str) -> None:
    proxy = await start(nursery, codec)
    address = proxy.address("ingress")
    raw = await raw_exchange(
        address,
        b"GET http://a.test/x?y=1 HTTP/1.1\r\nhost: other.test\r\nconnection: close\r\n\r\n",
    )
    assert status_of(raw) == 200  # the virtual host of a.test, not other.test's 418
    seen = json.loads(raw.partition(b"\r\n\r\n")[2])
    assert seen["path"] == "/x?y=1"  # origin form upstream
    assert [v for n, v in seen["headers"] if n == "host"] == ["a.test"]  # one consistent Host
    # No path: "/"; the scheme is case-insensitive; a target with userinfo is refused.
    bare = await raw_exchange(
        address, b"GET HTTP://a.test HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n"
    )
    assert json.loads(bare.partition(b"\r\n\r\n")[2])["path"] == "/"
    for target in (b"http://user@a.test/", b"http:///x", b"http://a.test/#frag"):
        refused = await raw_exchange(address, b"GET " + target + b" HTTP/1.1\r\nhost: a.test\r\n\r\n")
        assert status_of(refused) == 400, target
    # Host alone still routes (origin form).
    other = await raw_exchange(address, b"GET /x HTTP/1.1\r\nhost: other.test\r\nconnection: close\r\n\r\n")
    assert status_of(other) == 418
    nursery.cancel_scope.cancel()


@CODECS
async def test_curl_http2_upgrade_is_served_over_http1(nursery: trio.Nursery, codec: str) -> None:
    proxy = await start(nursery, codec)
    host, port = proxy.address("ingress")
    with trio.fail_after(DEADLINE):
        done = await trio.run_process(
            [
                "curl",
                "-sS",
                "--http2",
                "-H",
                "host: a.test",
                "-w",
                "\n%{http_code} %{http_version}",
                f"http://{host}:{port}/up",
            ],
            capture_stdout=True,
            capture_stderr=True,
        )
    body, _, summary = done.stdout.rpartition(b"\n")
    assert summary == b"200 1.1"
    seen = json.loads(body)
    names = {n for n, _ in seen["headers"]}
    assert not names & {"upgrade", "http2-settings", "connection"}
    nursery.cancel_scope.cancel()


@CODECS
async def test_connect_is_refused_and_the_proxy_serves_on(nursery: trio.Nursery, codec: str) -> None:
    # Found by the h1_server fuzz target: a 2xx answer to CONNECT switched h11 to a byte pipe,
    # the response body was refused, and the connection task took the listener down.
    proxy = await start(nursery, codec)
    address = proxy.address("ingress")
    for target in (b"a.test:443", b"other.test:80"):
        raw = await raw_exchange(
            address, b"CONNECT " + target + b" HTTP/1.1\r\nhost: " + target + b"\r\n\r\n"
        )
        assert status_of(raw) == 501
    assert forwarded(proxy) == 0
    ok = await raw_exchange(address, b"GET /x HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n")
    assert status_of(ok) == 200
    nursery.cancel_scope.cancel()
