"""Peers that stop reading: a client that reads none of its response, an upstream none of a body.

Neither may hold a connection (and what feeds it) forever: past the stream idle timeout
(clients) or the cluster's idle timeout (upstreams), the proxy gives up, logs it, and
frees both sides.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from meshcore.testing.harness import http_proxy_config, start_proxy
from meshcore.testing.upstreams import serve_upstream

DEADLINE = 15


async def wait_until(condition: Callable[[], bool]) -> None:
    """Wait, whenever every task is blocked, until ``condition()`` holds (bounded by the caller)."""
    while not condition():
        await trio.testing.wait_all_tasks_blocked(cushion=0.01)


@pytest.mark.parametrize("codec", ["h11", "fast"])
async def test_a_client_that_stops_reading_is_disconnected_and_its_upstream_freed(
    nursery: trio.Nursery, codec: str
) -> None:
    upstream = await nursery.start(serve_upstream)
    config = http_proxy_config([upstream], manager={"codec": codec, "stream_idle_timeout": "300ms"})
    proxy = await start_proxy(nursery, config)
    with trio.fail_after(DEADLINE), capture_logs() as logs:
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(proxy.address("ingress"))
        client = trio.SocketStream(sock)
        # 64 MB: far more than the socket buffers on the way hold; the client reads none of it.
        await client.send_all(b"GET /bytes/64000000 HTTP/1.1\r\nhost: a\r\n\r\n")
        await wait_until(lambda: any(e["event"] == "stream_idle_timeout" for e in logs))
        # The upstream request was released.
        await wait_until(lambda: not proxy.stats.value("cluster_upstream_rq_active", cluster="backend"))
        # The client finds the connection closed once it reads, short of the 64 MB.
        received = 0
        try:
            while data := await client.receive_some(1 << 20):
                received += len(data)
        except trio.BrokenResourceError:
            pass
        await client.aclose()
    assert received < 64_000_000
    assert proxy.stats.value("http_downstream_rq_active", listener="ingress") == 0
    nursery.cancel_scope.cancel()


class SilentUpstream:
    """Reads a request head, then nothing more: its receive buffer fills and stays full."""

    def __init__(self) -> None:
        self.address: tuple[str, int] = ("127.0.0.1", 0)

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.socket.socket() as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await listener.bind(("127.0.0.1", 0))
            listener.listen()
            self.address = listener.getsockname()[:2]
            task_status.started()
            sock, _ = await listener.accept()
            async with trio.SocketStream(sock) as stream:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += await stream.receive_some(1)
                await trio.sleep_forever()  # until the test ends


async def test_an_upstream_that_stops_reading_the_body_is_given_up_on(nursery: trio.Nursery) -> None:
    upstream = SilentUpstream()
    await nursery.start(upstream.serve)
    routes = [{"name": "all", "match": {"prefix": "/"}, "cluster": "backend", "timeout": "0s"}]
    config = http_proxy_config([upstream.address], routes=routes, cluster={"idle_timeout": "300ms"})
    proxy = await start_proxy(nursery, config)
    body = b"x" * 32_000_000
    with trio.fail_after(DEADLINE):
        client = await trio.open_tcp_stream(*proxy.address("ingress"))

        async def send() -> None:
            try:
                await client.send_all(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n" % len(body))
                await client.send_all(body)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the proxy closed the connection after its answer

        async with trio.open_nursery() as sending:
            sending.start_soon(send)
            reply = b""
            while b"\r\n\r\n" not in reply:
                data = await client.receive_some(65536)
                assert data, "closed without an answer"
                reply += data
            sending.cancel_scope.cancel()
        await client.aclose()
    assert reply.startswith(b"HTTP/1.1 504 ")
    assert b"x-meshcore-flags: UT" in reply
    assert proxy.stats.value("cluster_upstream_rq_active", cluster="backend") == 0
    nursery.cancel_scope.cancel()
