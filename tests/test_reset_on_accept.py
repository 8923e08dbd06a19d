"""Clients that reset their connection before the proxy looks at it: listeners serve on.

A connection reset (RST) between the kernel's accept and the proxy's first look at it
has no peer address any more (getpeername fails with ENOTCONN): it is dropped, counted
out of the connection limits, and never takes the listener down.
"""

from __future__ import annotations

import socket
import struct

import trio
from test_slow_peers import wait_until

from meshcore.testing import open_proxies
from meshcore.testing.client import fetch
from meshcore.testing.harness import http_proxy_config, start_proxy
from meshcore.testing.upstreams import serve_upstream


async def reset_at_once(address: tuple[str, int], count: int) -> None:
    """Open ``count`` connections, then reset them all (RST) before the server's tasks run."""
    sockets = []
    for _ in range(count):
        sock = trio.socket.socket()
        await sock.connect(address)
        sockets.append(sock)
    for sock in sockets:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


async def test_connections_reset_at_once_leave_the_listener_serving(nursery: trio.Nursery) -> None:
    upstream = await nursery.start(serve_upstream)
    proxy = await start_proxy(nursery, http_proxy_config([upstream], listener={"max_connections": 1000}))
    address = proxy.address("ingress")
    with trio.fail_after(20):
        for _ in range(5):
            await reset_at_once(address, 200)
            assert (await fetch(address, "/")).status == 200
        await wait_until(lambda: proxy.listeners["ingress"].active == 0)
        assert proxy.overload.connections == 0
    nursery.cancel_scope.cancel()


async def test_connections_reset_at_once_leave_the_admin_server_serving(nursery: trio.Nursery) -> None:
    upstream = await nursery.start(serve_upstream)
    config = http_proxy_config([upstream])
    config["admin"] = {"enabled": True}
    with trio.fail_after(20):
        async with open_proxies() as proxies:
            running = await proxies(config)
            admin = running.admin_address
            assert admin is not None
            for _ in range(5):
                await reset_at_once(admin, 200)
                assert (await fetch(admin, "/ready")).status == 200
    nursery.cancel_scope.cancel()
