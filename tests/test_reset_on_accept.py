"""Clients that reset their connection before the proxy looks at it: the listener serves on.

A connection reset (RST) between the kernel's accept and the proxy's first look at it
has no peer address any more (getpeername fails with ENOTCONN): it is dropped, counted
out of the connection limits, and never takes the listener down.
"""

from __future__ import annotations

import socket
import struct

import trio
from test_slow_peers import wait_until

from meshcore.testing.client import fetch
from meshcore.testing.harness import http_proxy_config, start_proxy
from meshcore.testing.upstreams import serve_upstream


async def test_connections_reset_at_once_leave_the_listener_serving(nursery: trio.Nursery) -> None:
    upstream = await nursery.start(serve_upstream)
    proxy = await start_proxy(nursery, http_proxy_config([upstream], listener={"max_connections": 1000}))
    address = proxy.address("ingress")
    with trio.fail_after(20):
        for _ in range(5):
            sockets = []
            for _ in range(200):
                sock = trio.socket.socket()
                await sock.connect(address)
                sockets.append(sock)
            for sock in sockets:  # all reset before the proxy's tasks run
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            assert (await fetch(address, "/")).status == 200
        await wait_until(lambda: proxy.listeners["ingress"].active == 0)
        assert proxy.overload.connections == 0
    nursery.cancel_scope.cancel()
