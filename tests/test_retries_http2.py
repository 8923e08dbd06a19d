"""Retries over HTTP/2: a refused stream was not processed, a reset one may have been.

A real HTTP/2 upstream (h2 on trio, prior knowledge) refuses streams with REFUSED_STREAM
before reading them, or resets them with INTERNAL_ERROR after reading the whole request,
and counts both on its side. A POST whose streams were refused is retried until one is
accepted (nothing reached the application); a POST whose stream was reset after it was
read is not sent again.
"""

from __future__ import annotations

from typing import Any

import attrs
import h2.config
import h2.connection
import h2.events
import pytest
import trio
from h2.errors import ErrorCodes

from meshcore.testing.client import fetch
from meshcore.testing.harness import http_proxy_config, start_proxy


@attrs.define(eq=False)
class H2Upstream:
    """Refuses the first ``refuse`` streams; resets after reading with ``reset_after_read``."""

    refuse: int = 0
    reset_after_read: bool = False
    refused: int = 0
    processed: list[int] = attrs.Factory(list)  # body sizes of the requests it read whole

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[:2])
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        await stream.send_all(conn.data_to_send())
        bodies: dict[int, int] = {}
        async with stream:
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return
                if not data:
                    return
                for event in conn.receive_data(data):
                    self._handle(conn, event, bodies)
                await stream.send_all(conn.data_to_send())

    def _handle(self, conn: h2.connection.H2Connection, event: Any, bodies: dict[int, int]) -> None:
        if isinstance(event, h2.events.RequestReceived):
            if self.refused < self.refuse:
                self.refused += 1
                conn.reset_stream(event.stream_id, ErrorCodes.REFUSED_STREAM)
            else:
                bodies[event.stream_id] = 0
        elif isinstance(event, h2.events.DataReceived):
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if event.stream_id in bodies:
                bodies[event.stream_id] += len(event.data)
        elif isinstance(event, h2.events.StreamEnded) and event.stream_id in bodies:
            self.processed.append(bodies.pop(event.stream_id))
            if self.reset_after_read:
                conn.reset_stream(event.stream_id, ErrorCodes.INTERNAL_ERROR)
            else:
                conn.send_headers(event.stream_id, [(b":status", b"200"), (b"content-length", b"2")])
                conn.send_data(event.stream_id, b"ok", end_stream=True)


def _config(address: tuple[str, int], retry_on: str) -> dict[str, Any]:
    routes = [
        {
            "name": "r",
            "match": {"prefix": "/"},
            "cluster": "backend",
            "retry_policy": {"retry_on": retry_on, "num_retries": 5},
        }
    ]
    return http_proxy_config([address], routes=routes, cluster={"protocol": "http2"})


async def test_a_post_whose_streams_were_refused_is_retried_until_one_is_accepted(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        upstream = H2Upstream(refuse=4)
        address = await nursery.start(upstream.serve)
        proxy = await start_proxy(nursery, _config(address, "refused-stream"))
        response = await fetch(proxy.address("ingress"), "/orders", method="POST", body=b"order #1" * 100)
    assert (response.status, response.body) == (200, b"ok")
    assert upstream.refused == 4
    assert upstream.processed == [800]  # processed once, the whole body


@pytest.mark.parametrize("retry_on", ["reset,5xx", "refused-stream"])
async def test_a_post_reset_after_it_was_read_is_not_sent_again(nursery: trio.Nursery, retry_on: str) -> None:
    with trio.fail_after(10):
        upstream = H2Upstream(reset_after_read=True)
        address = await nursery.start(upstream.serve)
        proxy = await start_proxy(nursery, _config(address, retry_on))
        response = await fetch(proxy.address("ingress"), "/orders", method="POST", body=b"order #2")
        assert response.status in (502, 503)
        assert upstream.processed == [8]
        # A GET reset the same way is retried under reset (it may be repeated).
        response = await fetch(proxy.address("ingress"), "/orders")
    assert response.status in (502, 503)
    expected = 1 + (6 if "reset" in retry_on else 1)
    assert len(upstream.processed) == expected
