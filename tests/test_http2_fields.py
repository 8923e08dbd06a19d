"""Malformed header blocks against a real proxy, from a client and from an HTTP/2 upstream.

The server checks received fields itself (meshcore.http.h2fields.fields_received, h2's
validation turned off); held to h2 field by field in tests/test_h2fields.py. Here, end to
end: for each malformed block, the proxy's GOAWAY carries the error code and last stream
id that h2 itself produces for the same bytes, and the proxy serves the next client. A
response head that h2 would refuse from an HTTP/2 upstream fails its request (5xx).
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack
import pytest
import trio
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, SettingsFrame
from test_http2_abuse import PREFACE, headers_frame, request_headers
from test_http2_limits import DEADLINE, RawH2, start

from meshcore.testing.client import fetch
from meshcore.testing.harness import http_proxy_config, start_proxy

HEAD = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"proxy.test"), (b":path", b"/up/echo")]


def malformed_head(fields: list[tuple[bytes, bytes]]) -> bytes:
    return headers_frame(1, bytes(hpack.Encoder().encode(fields)), "END_HEADERS", "END_STREAM")


def malformed_trailers(trailers: list[tuple[bytes, bytes]]) -> bytes:
    encoder = hpack.Encoder()
    return (
        headers_frame(1, request_headers(encoder, "/up/echo"), "END_HEADERS")
        + bytes(DataFrame(1, b"hi").serialize())
        + headers_frame(1, bytes(encoder.encode(trailers)), "END_HEADERS", "END_STREAM")
    )


CASES = {
    "uppercase name": malformed_head([*HEAD, (b"X-Upper", b"1")]),
    "connection field": malformed_head([*HEAD, (b"connection", b"close")]),
    "host differs": malformed_head([*HEAD, (b"host", b"other.test")]),
    "NUL in a value": malformed_head([*HEAD, (b"x-a", b"a\x00b")]),
    "no :path": malformed_head(HEAD[:3]),
    "pseudo after regular": malformed_head([*HEAD[:3], (b"x", b"1"), HEAD[3]]),
    "pseudo in trailers": malformed_trailers([(b":path", b"/")]),
    "te in trailers": malformed_trailers([(b"te", b"gzip")]),
}


def h2_goaway(frames: bytes) -> tuple[int, int]:
    """The (error code, last stream id) of the GOAWAY h2 itself sends for ``frames``."""
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    server.data_to_send()
    with pytest.raises(h2.exceptions.ProtocolError):
        server.receive_data(PREFACE + bytes(SettingsFrame(0).serialize()) + frames)
    out = server.data_to_send()
    goaway = out[out.rindex(b"\x07\x00\x00\x00\x00\x00") - 3 :]  # the last frame: GOAWAY on stream 0
    frame, length = Frame.parse_frame_header(memoryview(goaway[:9]))
    frame.parse_body(memoryview(goaway[9 : 9 + length]))
    assert isinstance(frame, GoAwayFrame)
    return frame.error_code, frame.last_stream_id


@pytest.mark.parametrize("case", list(CASES))
async def test_a_malformed_block_ends_the_connection_as_h2_would(nursery: trio.Nursery, case: str) -> None:
    frames = CASES[case]
    proxy = await start(nursery)
    with trio.fail_after(DEADLINE):
        client = await RawH2.open(proxy.address("ingress"))
        await client.stream.send_all(frames)
        goaway = None
        while (frame := await client.next_frame()) is not None:
            if isinstance(frame, GoAwayFrame):
                goaway = frame
        await client.stream.aclose()
        assert goaway is not None
        assert (goaway.error_code, goaway.last_stream_id) == h2_goaway(frames)
        assert (await fetch(proxy.address("ingress"), "/")).status == 200
    nursery.cancel_scope.cancel()


# -- the upstream pool: responses an HTTP/2 upstream sends -----------------------------------


async def serve_answering(
    head: list[tuple[bytes, bytes]], *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """An HTTP/2 upstream answering every request with ``head`` as given (its checks off) and "ok"."""

    async def connection(stream: trio.SocketStream) -> None:
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        async with stream:
            await stream.send_all(conn.data_to_send())
            while data := await stream.receive_some(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.StreamEnded):
                        conn.send_headers(event.stream_id, head)
                        conn.send_data(event.stream_id, b"ok", end_stream=True)
                await stream.send_all(conn.data_to_send())

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[:2])
    await trio.serve_listeners(connection, listeners)


UPSTREAM_HEADS = {
    "valid": ([(b":status", b"200"), (b"content-length", b"2")], 200),
    "uppercase name": ([(b":status", b"200"), (b"X-Upper", b"1")], None),
    "no :status": ([(b"content-length", b"2")], None),
    "request pseudo-header": ([(b":status", b"200"), (b":path", b"/")], None),
    "value with surrounding space": ([(b":status", b"200"), (b"x", b" v")], None),
}


@pytest.mark.parametrize("case", list(UPSTREAM_HEADS))
async def test_a_malformed_response_from_an_http2_upstream_fails_the_request(
    nursery: trio.Nursery, case: str
) -> None:
    head, status = UPSTREAM_HEADS[case]
    with trio.fail_after(DEADLINE):
        upstream = await nursery.start(serve_answering, head)
        config = http_proxy_config([upstream], cluster={"protocol": "http2"})
        proxy = await start_proxy(nursery, config)
        got = await fetch(proxy.address("ingress"), "/")
        if status is None:  # h2 refuses the head: the connection fails, the request with it
            assert got.status in (502, 503)
        else:
            assert (got.status, got.body) == (status, b"ok")
    nursery.cancel_scope.cancel()
