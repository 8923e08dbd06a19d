"""10,000 idle connections against a proxy process: bounded memory, and the header timeout ends them.

Each connection sends the start of a request head and then nothing (slowloris). The
proxy's resident memory grows by at most ``MAX_BYTES_PER_CONNECTION`` per connection,
and once ``request_headers_timeout`` has passed every one of them has been answered 408
and closed. The figure is printed to the log line ``idle_connections_measured`` of this
test (run with ``-s -k idle`` to see it; ``IDLE_CONNECTIONS=50000`` for a longer run).
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

import pytest
import structlog
import trio
from _proxy_process import start_proxy_process

from meshcore.testing.client import fetch
from meshcore.testing.harness import http_proxy_config
from meshcore.testing.upstreams import serve_upstream

CONNECTIONS = int(os.environ.get("IDLE_CONNECTIONS", "10000"))
MAX_BYTES_PER_CONNECTION = 10 * 1024
HEADERS_TIMEOUT = 2.0
log = structlog.get_logger("tests.idle")


def _raise_open_files(needed: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE (the proxy child inherits it) to ``needed``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below the {needed} files this test needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def _open(address: tuple[str, int], count: int, into: list[trio.SocketStream]) -> None:
    """Open ``count`` connections, each sending the start of a request head and no more."""
    limit = trio.CapacityLimiter(256)  # the listen backlog holds 1024

    async def one() -> None:
        async with limit:
            sock = trio.socket.socket()  # not open_tcp_stream: no happy eyeballs for a literal address
            try:
                await sock.connect(address)
            except BaseException:
                sock.close()
                raise
            stream = trio.SocketStream(sock)
            await stream.send_all(b"GET / HTTP/1.1\r\nhost: a\r\n")
            into.append(stream)

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)


async def test_ten_thousand_idle_connections_fit_in_little_memory_and_time_out(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    _raise_open_files(CONNECTIONS + 1000)  # in each process: the clients here, the proxy child
    upstream = await nursery.start(serve_upstream)
    config = http_proxy_config(
        [upstream], manager={"request_headers_timeout": f"{HEADERS_TIMEOUT}s"}, listener={"access_log": False}
    )
    with trio.fail_after(20):
        proxy = await start_proxy_process(nursery, config, tmp_path)
        # Warm up: the code paths and allocator pools of a connection, then a baseline.
        warm: list[trio.SocketStream] = []
        await _open(proxy.address, 500, warm)
        for stream in warm:
            await stream.aclose()
        await fetch(proxy.address, "/")
    before = proxy.rss_bytes()
    streams: list[trio.SocketStream] = []
    with trio.fail_after(60):
        await _open(proxy.address, CONNECTIONS, streams)
        # Served in accept order: once this is answered, every idle connection was taken.
        assert (await fetch(proxy.address, "/")).status == 200
    grown = proxy.rss_bytes() - before
    per_connection = grown / CONNECTIONS
    log.info("idle_connections_measured", connections=CONNECTIONS, bytes_per_connection=round(per_connection))
    assert per_connection <= MAX_BYTES_PER_CONNECTION

    closed = 0

    async def wait_closed(stream: trio.SocketStream) -> None:
        nonlocal closed
        reply = b""
        try:
            while data := await stream.receive_some(65536):
                reply += data
        except trio.BrokenResourceError:
            pass
        await stream.aclose()
        if reply.startswith(b"HTTP/1.1 408 "):
            closed += 1

    with trio.fail_after(HEADERS_TIMEOUT + 30):
        async with trio.open_nursery() as waiting:
            for stream in streams:
                waiting.start_soon(wait_closed, stream)
    assert closed == CONNECTIONS
    assert (await fetch(proxy.address, "/")).status == 200  # and the proxy serves on
    nursery.cancel_scope.cancel()
