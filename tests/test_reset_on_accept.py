"""Clients that reset their connection before the proxy looks at it: listeners serve on.

A connection reset (RST) between the kernel's accept and the proxy's first look at it
has no peer address any more (getpeername fails with ENOTCONN): it is dropped, counted
out of the connection limits, and never takes the listener down.
"""

from __future__ import annotations

import socket
import struct
import types

import pytest
import trio
from structlog.testing import capture_logs
from test_slow_peers import wait_until

import meshcore
from meshcore.testing import open_proxies
from meshcore.testing.client import IncompleteResponse, fetch
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


class _Crashes:
    """A network filter with a bug: it raises on the connections it is told to."""

    crash_next = True

    def __init__(self, _config: object, _context: object) -> None:
        pass

    async def __call__(self, conn: meshcore.Connection, call_next: meshcore.NetworkHandler) -> None:
        if _Crashes.crash_next:
            _Crashes.crash_next = False
            msg = "a bug in a network filter"
            raise RuntimeError(msg)
        await call_next(conn)


@meshcore.hookimpl
def meshcore_network_filters() -> list[meshcore.NetworkFilterType]:
    return [meshcore.NetworkFilterType(name="crashes", factory=_Crashes)]


async def test_a_bug_in_a_network_filter_ends_its_connection_not_the_proxy(nursery: trio.Nursery) -> None:
    plugin = types.ModuleType("crash_plugin")
    plugin.meshcore_network_filters = meshcore_network_filters  # type: ignore[attr-defined]
    registry = meshcore.build_registry(plugins=[("crash_plugin", plugin)])
    upstream = await nursery.start(serve_upstream)
    config = http_proxy_config([upstream])
    config["listeners"][0]["filter_chains"][0]["filters"].insert(0, "crashes")
    proxy = await start_proxy(nursery, config, registry=registry)
    address = proxy.address("ingress")
    _Crashes.crash_next = True
    with trio.fail_after(10), capture_logs() as logs:
        with pytest.raises(IncompleteResponse):
            await fetch(address, "/")  # its connection ends
        assert (await fetch(address, "/")).status == 200  # and the proxy serves on
        await wait_until(lambda: proxy.listeners["ingress"].active == 0)
    [crash] = [e for e in logs if e["event"] == "connection_crashed"]
    assert crash["listener"] == "ingress"
    nursery.cancel_scope.cancel()
