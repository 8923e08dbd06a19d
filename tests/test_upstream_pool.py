"""The upstream keep-alive pool when an upstream closes kept-alive connections on its own.

Upstreams close idle connections when their keep-alive timeout fires, without telling
anyone. The next request the proxy sends on such a connection must not fail: a reused
connection that breaks before any byte of the response is retried once on a new one.
"""

from __future__ import annotations

from typing import Any

import h11
import pytest
import trio

from meshcore.testing.client import fetch
from meshcore.testing.harness import http_proxy_config, start_proxy


class ClosingUpstream:
    """Answers one request per connection, keep-alive advertised, then closes it."""

    def __init__(self) -> None:
        self.connections = 0

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[:2])
        await trio.serve_listeners(self._one, listeners)

    async def _one(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        async with stream:
            conn = h11.Connection(h11.SERVER)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.EndOfMessage):
                    break
            response = h11.Response(status_code=200, headers=[("content-length", "2")])
            await stream.send_all(
                conn.send(response) + conn.send(h11.Data(data=b"ok")) + conn.send(h11.EndOfMessage())
            )
        # Closed without "connection: close": the proxy keeps the connection and finds out later.


@pytest.mark.parametrize("codec", ["h11", "fast"])
async def test_a_kept_alive_connection_the_upstream_closed_is_retried_on_a_new_one(
    nursery: trio.Nursery, codec: str
) -> None:
    with trio.fail_after(10):
        upstream = ClosingUpstream()
        address = await nursery.start(upstream.serve)
        proxy = await start_proxy(nursery, http_proxy_config([address], cluster={"codec": codec}))
        for _ in range(5):
            response = await fetch(proxy.address("ingress"), "/")
            assert (response.status, response.body) == (200, b"ok")
        assert upstream.connections == 5
        nursery.cancel_scope.cancel()
