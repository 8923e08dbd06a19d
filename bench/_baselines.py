"""Baselines for bench/peers.py: the least a trio proxy can do, written as plainly as possible.

- :func:`run_relay`: trio relaying bytes between a client and the backend with no HTTP
  parsing at all, one backend connection per client connection: the trio I/O floor.
- :func:`run_h11_forwarder`: trio + h11 on both sides, one request at a time per client
  connection, a kept-alive backend connection per client connection: what a bare
  trio + h11 forwarder costs.
- :func:`run_h2_forwarder`: trio + h2 toward clients (cleartext, prior knowledge), each
  stream forwarded over HTTP/1.1 (h11) on a small keep-alive pool: what a bare trio + h2
  forwarder costs.

None has timeouts, limits or error handling worth the name: they are floors to measure a
real proxy against, not proxies.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

__all__ = ["run_h2_forwarder", "run_h11_forwarder", "run_relay"]


async def _serve(port: int, handler: Callable[[trio.SocketStream], Awaitable[None]]) -> None:
    async def guarded(stream: trio.SocketStream) -> None:
        # A client that goes away mid-stream (as load generators do at the end of a run) ends
        # its connection, not the server.
        try:
            await handler(stream)
        except* Exception:  # noqa: BLE001, S110 - a floor to measure against, not a proxy
            pass

    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1", backlog=1024)
    print("ready", flush=True)
    await trio.serve_listeners(guarded, listeners)


def run_relay(port: int, backend: int) -> None:
    """Relay bytes both ways between each client and its own backend connection."""

    async def pump(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
        while data := await source.receive_some(65536):
            await sink.send_all(data)

    async def handle(client: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream("127.0.0.1", backend)
        async with upstream, client, trio.open_nursery() as nursery:
            nursery.start_soon(pump, client, upstream)
            await pump(upstream, client)
            nursery.cancel_scope.cancel()

    trio.run(_serve, port, handle)


async def _h11_exchange(
    conn: object, stream: trio.SocketStream, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    import h11

    assert isinstance(conn, h11.Connection)
    await stream.send_all(conn.send(h11.Request(method=method, target=target, headers=headers)))
    await stream.send_all(conn.send(h11.EndOfMessage()))
    status, response_headers, body = 0, [], b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            status, response_headers = event.status_code, list(event.headers)
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            conn.start_next_cycle()
            return status, response_headers, body


def run_h11_forwarder(port: int, backend: int) -> None:
    """Parse each request with h11, forward it with h11 on a kept-alive backend connection."""
    import h11

    async def handle(client: trio.SocketStream) -> None:
        downstream = h11.Connection(h11.SERVER)
        upstream = h11.Connection(h11.CLIENT)
        async with client, await trio.open_tcp_stream("127.0.0.1", backend) as backend_stream:
            while True:
                event = downstream.next_event()
                if event is h11.NEED_DATA:
                    data = await client.receive_some(65536)
                    if not data:
                        return
                    downstream.receive_data(data)
                elif isinstance(event, h11.Request):
                    headers = [(n, v) for n, v in event.headers if n != b"connection"]
                    status, response_headers, body = await _h11_exchange(
                        upstream, backend_stream, event.method, event.target, headers
                    )
                    out = downstream.send(h11.Response(status_code=status, headers=response_headers))
                    out += downstream.send(h11.Data(data=body)) + downstream.send(h11.EndOfMessage())
                    await client.send_all(out)
                elif isinstance(event, h11.EndOfMessage):
                    downstream.start_next_cycle()
                else:
                    return

    trio.run(_serve, port, handle)


def run_h2_forwarder(port: int, backend: int) -> None:
    """Serve HTTP/2 (h2c prior knowledge); forward each stream over HTTP/1.1 on a keep-alive pool."""
    import h2.config
    import h2.connection
    import h2.events
    import h11

    idle: list[tuple[h11.Connection, trio.SocketStream]] = []

    async def forward(
        conn: h2.connection.H2Connection,
        client: trio.SocketStream,
        lock: trio.StrictFIFOLock,
        stream_id: int,
        headers: list,
    ) -> None:
        pseudo = dict(headers)
        fields = [(n, v) for n, v in headers if not n.startswith(b":")]
        fields.append((b"host", pseudo.get(b":authority", b"backend")))
        backend_conn = idle.pop() if idle else None
        if backend_conn is None:
            backend_conn = (h11.Connection(h11.CLIENT), await trio.open_tcp_stream("127.0.0.1", backend))
        status, response_headers, body = await _h11_exchange(
            *backend_conn, pseudo[b":method"], pseudo[b":path"], fields
        )
        idle.append(backend_conn)
        out_headers = [(b":status", str(status).encode())]
        out_headers += [(n.lower(), v) for n, v in response_headers if n.lower() != b"connection"]
        conn.send_headers(stream_id, out_headers)
        conn.send_data(stream_id, body, end_stream=True)
        async with lock:
            await client.send_all(conn.data_to_send())

    async def handle(client: trio.SocketStream) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        conn = h2.connection.H2Connection(config=config)
        conn.initiate_connection()
        lock = trio.StrictFIFOLock()
        async with client, trio.open_nursery() as nursery:
            await client.send_all(conn.data_to_send())
            while data := await client.receive_some(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        nursery.start_soon(forward, conn, client, lock, event.stream_id, event.headers)
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if pending := conn.data_to_send():
                    async with lock:
                        await client.send_all(pending)

    trio.run(_serve, port, handle)
