"""Malformed request heads and trailers against a real proxy: the connection ends as h2 ends it.

The server checks received fields itself (meshcore.http.h2fields.fields_received, h2's
validation turned off); held to h2 field by field in tests/test_h2fields.py. Here, end to
end: for each malformed block, the proxy's GOAWAY carries the error code and last stream
id that h2 itself produces for the same bytes, and the proxy serves the next client.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.exceptions
import hpack
import pytest
import trio
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, SettingsFrame
from test_http2_abuse import PREFACE, headers_frame, request_headers
from test_http2_limits import DEADLINE, RawH2, start

from meshcore.testing.client import fetch

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
