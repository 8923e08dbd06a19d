"""A drained filter chain closes its idle keep-alive connections before apply returns.

A keep-alive client (httpx, a pool of any kind) that reuses its connection right after a
config change must find it closed, not send a request into a socket that the proxy is
about to close with that request unread (a reset, and the request lost). So the FIN of an
idle connection goes out inside ``apply``, not when the connection's task next runs.
"""

from __future__ import annotations

import select
import socket
from typing import Any

import trio
import trio.testing

from meshcore.testing import ProxyFactory, UpstreamFactory, http_proxy_config

REQUEST = b"GET / HTTP/1.1\r\nhost: example.com\r\n\r\n"


def _config(endpoint: str, filters: list[Any]) -> dict[str, Any]:
    return http_proxy_config([endpoint], http_filters=filters)


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


async def test_an_idle_keep_alive_connection_is_closed_before_apply_returns(
    meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory
) -> None:
    upstream = await meshcore_upstream()
    delay = {"fault": {"delay": {"fixed": "1ms"}}}
    with trio.fail_after(10):
        proxy = await meshcore_proxy(_config(upstream.endpoint, [delay, "router"]))
        host, port = proxy.address("ingress")
        with socket.create_connection((host, port)) as sock:
            sock.sendall(REQUEST)
            head = await trio.to_thread.run_sync(_read_response, sock)
            assert head.startswith(b"HTTP/1.1 200")
            # The connection now waits for its next request. A changed chain drains it.
            await trio.testing.wait_all_tasks_blocked()  # its session is waiting for a request
            proxy.apply(_config(upstream.endpoint, ["router"]))
            # No checkpoint since apply: the connection's own task has not run. Its FIN must
            # be on the wire already.
            readable, _, _ = select.select([sock], [], [], 0)
            assert readable, "the idle connection was not closed when apply returned"
            assert sock.recv(1) == b""
