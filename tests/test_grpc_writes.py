"""A gRPC unary call crosses the proxy in one write each way, and costs the HPACK tables nothing.

The peers here are raw HTTP/2 (h2) on loopback sockets, so that what the proxy puts on the
wire can be counted: a client that sends a call's HEADERS and DATA in one write, and an
upstream that answers as grpcio does, HEADERS, DATA and trailers in one write. Each side
reads the kernel's count of the TCP segments with data that reached it (``TCP_INFO``'s
``tcpi_data_segs_in``; loopback, TCP_NODELAY: one segment per send of a few KiB), so the
writes the proxy made toward it are counted exactly, whatever the reads coalesced.

Per-request fields (``x-request-id``, which the proxy sets on every request, trace context,
``grpc-timeout``) must not enter the upstream's HPACK table: each would evict a field that
every request repeats, and the whole head would be re-entered with every request.
"""

from __future__ import annotations

import socket
import struct
import sys
from typing import Any

import h2.config
import h2.connection
import h2.events
import hpack
import pytest
import trio
import trio.testing
from hpack import NeverIndexedHeaderTuple

from meshcore.runtime.h2upstream import RequestHeadEncoder
from meshcore.testing.harness import http_proxy_config, start_proxy

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="TCP_INFO's data segment count is Linux's")

MESSAGE = b"\x00" + (1024).to_bytes(4, "big") + b"x" * 1024  # one length-prefixed gRPC message
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def data_segments_in(sock: trio.socket.SocketType) -> int:
    """TCP segments with data this socket has received (struct tcp_info, tcpi_data_segs_in)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("I", info, 152)[0])


class GrpcUpstream:
    """A raw HTTP/2 upstream answering every call in one write, as grpcio does.

    ``requests`` holds each request's header fields as received (never-indexed ones keep
    their type); ``data_frames`` each request's DATA frames, as (length, END_STREAM on it);
    ``table_sizes`` the number of entries in its HPACK decoder's table after each request.
    """

    def __init__(self) -> None:
        self.requests: list[list[Any]] = []
        self.data_frames: list[list[tuple[int, bool]]] = []
        self.table_sizes: list[int] = []
        self.sock: trio.socket.SocketType | None = None

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[:2])
        await trio.serve_listeners(self._serve_connection, listeners)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        self.sock = stream.socket
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        conn = h2.connection.H2Connection(config=config)
        conn.initiate_connection()
        await stream.send_all(conn.data_to_send())
        heads: dict[int, list[Any]] = {}
        frames: dict[int, list[tuple[int, bool]]] = {}
        while data := await stream.receive_some(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    heads[event.stream_id] = list(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    ended = event.stream_ended is not None
                    frames.setdefault(event.stream_id, []).append((len(event.data), ended))
                elif isinstance(event, h2.events.StreamEnded):
                    self.requests.append(heads.pop(event.stream_id))
                    self.data_frames.append(frames.pop(event.stream_id, []))
                    self.table_sizes.append(len(conn.decoder.header_table.dynamic_entries))
                    sid = event.stream_id
                    conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
                    conn.send_data(sid, MESSAGE)
                    conn.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
            if out := conn.data_to_send():
                await stream.send_all(out)


class GrpcClient:
    """A raw HTTP/2 client making unary calls one at a time, each in one write."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.h2.initiate_connection()

    async def call(self, authority: str, metadata: list[tuple[bytes, bytes]]) -> tuple[bytes, list[Any]]:
        """One call: its response message and trailers."""
        sid = self.h2.get_next_available_stream_id()
        head = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":authority", authority.encode()),
            (b":path", b"/test.Echo/Unary"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            *metadata,
        ]
        self.h2.send_headers(sid, head)
        self.h2.send_data(sid, MESSAGE, end_stream=True)
        await self.stream.send_all(self.h2.data_to_send())
        body = bytearray()
        trailers: list[Any] = []
        ended = False
        while not ended:
            data = await self.stream.receive_some(65536)
            assert data, "the proxy closed the connection"
            for event in self.h2.receive_data(data):
                if isinstance(event, h2.events.DataReceived) and event.stream_id == sid:
                    body += event.data
                    self.h2.acknowledge_received_data(event.flow_controlled_length, sid)
                elif isinstance(event, h2.events.TrailersReceived) and event.stream_id == sid:
                    trailers = list(event.headers)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == sid:
                    ended = True
            if out := self.h2.data_to_send():
                await self.stream.send_all(out)
        return bytes(body), trailers


async def test_a_unary_call_crosses_the_proxy_in_one_write_each_way(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        upstream = GrpcUpstream()
        address = await nursery.start(upstream.serve)
        proxy = await start_proxy(nursery, http_proxy_config([address], cluster={"protocol": "http2"}))
        host, port = proxy.address("ingress")
        stream = await trio.open_tcp_stream(host, port)
        client = GrpcClient(stream)
        authority = f"{host}:{port}"
        # The first call opens the upstream connection (preface, SETTINGS and their ACKs).
        assert await client.call(authority, []) == (MESSAGE, [(b"grpc-status", b"0")])
        for n in range(3):
            await trio.testing.wait_all_tasks_blocked()  # everything sent so far has arrived
            assert upstream.sock is not None
            upstream_before, client_before = data_segments_in(upstream.sock), data_segments_in(stream.socket)
            metadata = [(b"traceparent", TRACEPARENT.encode()), (b"grpc-timeout", f"{900 + n}m".encode())]
            assert await client.call(authority, metadata) == (MESSAGE, [(b"grpc-status", b"0")])
            await trio.testing.wait_all_tasks_blocked()
            # HEADERS, DATA and END_STREAM of the request in one write to the upstream (END_STREAM
            # on the message's DATA frame); the response's HEADERS, DATA and trailers in one
            # write to the client.
            assert data_segments_in(upstream.sock) - upstream_before == 1
            assert upstream.data_frames[-1] == [(len(MESSAGE), True)]
            assert data_segments_in(stream.socket) - client_before == 1
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_per_request_fields_do_not_enter_the_upstreams_hpack_table(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        upstream = GrpcUpstream()
        address = await nursery.start(upstream.serve)
        proxy = await start_proxy(nursery, http_proxy_config([address], cluster={"protocol": "http2"}))
        host, port = proxy.address("ingress")
        stream = await trio.open_tcp_stream(host, port)
        client = GrpcClient(stream)
        for n in range(5):
            metadata = [
                (b"traceparent", f"00-{n:032x}-b7ad6b7169203331-01".encode()),
                (b"grpc-timeout", f"{900 + n}m".encode()),
                (b"x-tag", b"the same every time"),
            ]
            await client.call(f"{host}:{port}", metadata)
        # The first head fills the table with what every request repeats; the rest add nothing.
        assert len(set(upstream.table_sizes)) == 1, upstream.table_sizes
        ids = set()
        for fields in upstream.requests:
            unique = {
                bytes(n): f
                for n, f in ((f[0], f) for f in fields)
                if n in (b"x-request-id", b"traceparent", b"grpc-timeout")
            }
            assert set(unique) == {b"x-request-id", b"traceparent", b"grpc-timeout"}
            assert all(isinstance(f, NeverIndexedHeaderTuple) for f in unique.values())
            ids.add(bytes(unique[b"x-request-id"][1]))
            assert (b"x-tag", b"the same every time") in [(bytes(n), bytes(v)) for n, v in fields]
        assert len(ids) == 5  # the proxy gave each request an id of its own
        await stream.aclose()
        nursery.cancel_scope.cancel()


def test_the_request_head_encoder_is_held_to_hpacks_encoder() -> None:
    """Each block decodes as hpack's own does, and leaves the peer's table as hpack's does.

    Never-indexed fields stay so marked, table resizes included; the part before the
    per-request fields is hpack's very bytes.
    """
    ours, theirs, theirs_stable = RequestHeadEncoder(), hpack.Encoder(), hpack.Encoder()
    our_decoder, their_decoder = hpack.Decoder(), hpack.Decoder()
    for n in range(8):
        if n == 5:  # a SETTINGS_HEADER_TABLE_SIZE from the peer: the update opens the next block
            ours.header_table_size = theirs.header_table_size = theirs_stable.header_table_size = 256
        head: list[Any] = [
            (b":method", b"POST"),
            (b":path", b"/test.Echo/Unary"),
            (b"content-type", b"application/grpc"),
            (b"x-tag", b"n%d" % (n // 3)),  # changes now and then: entered in the table
            NeverIndexedHeaderTuple(b"x-request-id", b"id-%d" % n),
            NeverIndexedHeaderTuple(b"grpc-timeout", b"%dm" % (900 + n)),
        ]
        block, reference = ours.encode(head), theirs.encode(head)
        assert block.startswith(theirs_stable.encode(head[:4]))
        decoded = our_decoder.decode(block, raw=True)
        assert [tuple(f) for f in decoded] == [tuple(f) for f in their_decoder.decode(reference, raw=True)]
        assert [tuple(f) for f in decoded] == [tuple(f) for f in head]
        assert [isinstance(f, NeverIndexedHeaderTuple) for f in decoded] == [False] * 4 + [True] * 2
        assert list(our_decoder.header_table.dynamic_entries) == list(
            their_decoder.header_table.dynamic_entries
        )
        assert our_decoder.header_table.maxsize == their_decoder.header_table.maxsize
