"""WebSocket (an HTTP/1.1 upgrade) through the proxy, allowed per route, then a byte pipe."""

from __future__ import annotations

from typing import Any

import trio
from trio_websocket import WebSocketRequest, open_websocket_url, serve_websocket

from meshcore.testing.client import fetch
from meshcore.testing.harness import http_proxy_config, start_proxy


async def echo_server(request: WebSocketRequest) -> None:
    """Echo every message back with a prefix, and say hello first (server speaks first)."""
    ws = await request.accept()
    await ws.send_message("hello from upstream")
    try:
        while True:
            message = await ws.get_message()
            # Text comes back as text, binary as binary.
            await ws.send_message(b"echo: " + message if isinstance(message, bytes) else f"echo: {message}")
    except Exception:  # noqa: BLE001 - the client closed; nothing to clean up
        return


async def start(nursery: trio.Nursery, routes: list[dict[str, Any]]) -> tuple[str, int]:
    server = await nursery.start(serve_websocket, echo_server, "127.0.0.1", 0, None)
    upstream = ("127.0.0.1", server.port)
    proxy = await start_proxy(nursery, http_proxy_config([upstream], routes=routes))
    return proxy.address("ingress")


ROUTES: list[dict[str, Any]] = [
    {"name": "ws", "match": {"prefix": "/ws"}, "cluster": "backend", "upgrades": ["websocket"]},
    {"name": "plain", "match": {"prefix": "/"}, "cluster": "backend"},
]


async def test_messages_flow_both_ways_through_the_proxy(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        host, port = await start(nursery, ROUTES)
        async with open_websocket_url(f"ws://{host}:{port}/ws/chat") as ws:
            assert await ws.get_message() == "hello from upstream"
            for i in range(20):
                await ws.send_message(f"message {i}")
                assert await ws.get_message() == f"echo: message {i}"
            big = "x" * 200_000
            await ws.send_message(big)
            assert await ws.get_message() == f"echo: {big}"
        nursery.cancel_scope.cancel()


async def test_an_upgrade_on_a_route_that_does_not_allow_it_gets_403(nursery: trio.Nursery) -> None:
    # A raw client here: trio-websocket leaks its socket when a handshake is rejected.
    with trio.fail_after(10):
        host, port = await start(nursery, ROUTES)
        handshake = [
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]
        rejected = await fetch((host, port), "/not-ws", headers=handshake)
        assert rejected.status == 403
        assert rejected.header("x-meshcore-flags") == "UPG"
        nursery.cancel_scope.cancel()


async def test_plain_requests_still_work_next_to_websockets(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        host, port = await start(nursery, ROUTES)
        async with open_websocket_url(f"ws://{host}:{port}/ws") as ws:
            assert await ws.get_message() == "hello from upstream"
            # A plain GET reaches the upstream (a WebSocket-only server: it answers 400 itself).
            plain = await fetch((host, port), "/plain")
            assert plain.status == 400
            assert plain.header("x-meshcore-flags") is None
            await ws.send_message("still here")
            assert await ws.get_message() == "echo: still here"
        nursery.cancel_scope.cancel()
