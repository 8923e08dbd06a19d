"""RecordsStream: the TLS records already received come back from one receive_some.

OpenSSL decrypts one record per read; a peer's frames sent as several records but
received in one segment must not cost one trip through the reader's loop each.
"""

from __future__ import annotations

import ssl
from typing import Any

import trio
import trio.testing
import trustme

from meshcore.runtime.tls import RecordsStream


async def tls_pair() -> tuple[trio.SSLStream[Any], RecordsStream]:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    client_transport, server_transport = trio.testing.memory_stream_pair()
    client = trio.SSLStream(client_transport, client_context, server_hostname="localhost")
    server = trio.SSLStream(server_transport, server_context, server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    return client, RecordsStream(server)


async def test_records_received_together_are_returned_together() -> None:
    with trio.fail_after(10):
        client, server = await tls_pair()
        for part in (b"a" * 100, b"b" * 100, b"c" * 100):
            await client.send_all(part)  # one record each
        assert await server.receive_some() == b"a" * 100 + b"b" * 100 + b"c" * 100
        # max_bytes holds, and what is left over comes next, with the record after it.
        for part in (b"d" * 100, b"e" * 100, b"f" * 100):
            await client.send_all(part)
        assert await server.receive_some(150) == b"d" * 100 + b"e" * 50
        assert await server.receive_some(1000) == b"e" * 50 + b"f" * 100
        # Both ways, and a peer's close_notify is the end of the stream, as on the SSLStream.
        await server.send_all(b"pong")
        assert await client.receive_some() == b"pong"
        await client.send_all(b"last")
        await client.aclose()
        assert await server.receive_some() == b"last"
        assert await server.receive_some() == b""
        assert server.transport_stream is server.tls.transport_stream
        assert server.version() == "TLSv1.3"  # the TLS attributes are the SSLStream's
