"""Generated HTTP/2 frame sequences against a real proxy: it never crashes and keeps serving.

Hypothesis draws sequences of frames of every type, well-formed or not (HEADERS with and
without END_HEADERS, CONTINUATION, DATA with padding and END_STREAM, RST_STREAM,
WINDOW_UPDATE of any increment, SETTINGS, PING, PRIORITY, GOAWAY, unknown types) on
stream 0, odd streams, even streams. After each sequence, a PING: the proxy answers it
(it processed everything before) or has closed the connection with a GOAWAY whose code
is a defined one. Either way the proxy serves the next client.
"""

from __future__ import annotations

import contextlib

import hpack
import trio
from h2.errors import ErrorCodes
from hyperframe.frame import Frame, GoAwayFrame, PingFrame, RstStreamFrame, SettingsFrame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_http2_abuse import PREFACE
from test_http2_limits import RawH2

from meshcore.testing.client import fetch
from meshcore.testing.harness import http_proxy_config, start_proxy

STREAMS = st.sampled_from([0, 1, 1, 3, 3, 5, 2, 2**31 - 1])
_ENCODER_PATHS = ["/", "/up/echo", "/up/bytes/20000", "/up/status/204"]


@st.composite
def header_blocks(draw: st.DrawFn) -> bytes:
    encoder = hpack.Encoder()
    headers = [
        (b":method", draw(st.sampled_from([b"GET", b"POST", b"HEAD", b"CONNECT", b""]))),
        (b":scheme", b"http"),
        (b":authority", b"proxy.test"),
        (b":path", draw(st.sampled_from([p.encode() for p in _ENCODER_PATHS]))),
    ]
    headers = draw(st.permutations(headers)) if draw(st.booleans()) else headers
    headers += draw(st.lists(st.sampled_from([(b"content-length", b"2"), (b"te", b"trailers"), (b"connection", b"x"), (b"X-Upper", b"1"), (b"x-a", b"\x00")]), max_size=2))  # fmt: skip
    block = bytes(encoder.encode(headers))
    cut = draw(st.integers(0, len(block)))
    return block[:cut] if draw(st.integers(0, 9)) == 0 else block


def raw_frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    """A frame as bytes, with no validation (hyperframe refuses the wrong ones)."""
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + sid.to_bytes(4, "big") + payload


END_STREAM, END_HEADERS, PADDED = 0x1, 0x4, 0x8
FLAGS = st.sampled_from([0, END_STREAM, END_HEADERS, END_STREAM | END_HEADERS, PADDED | END_HEADERS, 0xFF])


def _padded(flags: int, payload: bytes) -> bytes:
    return bytes([3]) + payload + b"\0" * 3 if flags & PADDED else payload


FRAMES = st.one_of(
    st.builds(lambda sid, block, flags: raw_frame(0x1, flags, sid, _padded(flags, block)), STREAMS, header_blocks(), FLAGS),
    st.builds(lambda sid, block, flags: raw_frame(0x9, flags, sid, block), STREAMS, header_blocks(), FLAGS),
    st.builds(lambda sid, data, flags: raw_frame(0x0, flags, sid, _padded(flags, data)), STREAMS, st.binary(max_size=40), FLAGS),
    st.builds(lambda sid, code: raw_frame(0x3, 0, sid, code.to_bytes(4, "big")), STREAMS, st.integers(0, 20)),
    st.builds(lambda sid, inc: raw_frame(0x8, 0, sid, inc.to_bytes(4, "big")), STREAMS, st.sampled_from([0, 1, 100, 65535, 2**31 - 1])),
    st.builds(
        lambda values, ack: raw_frame(0x4, ack, 0, b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in values.items())),
        st.dictionaries(st.sampled_from([1, 2, 3, 4, 5, 6, 9]), st.integers(0, 2**32 - 1), max_size=3),
        st.sampled_from([0, 0, 1]),
    ),
    st.builds(lambda sid, dep: raw_frame(0x2, 0, sid, dep.to_bytes(4, "big") + b"\x10"), STREAMS, STREAMS),
    st.builds(lambda code: raw_frame(0x7, 0, 0, (1).to_bytes(4, "big") + code.to_bytes(4, "big")), st.integers(0, 20)),
    st.builds(lambda sid, payload: raw_frame(0x42, 0, sid, payload), STREAMS, st.binary(max_size=20)),
    st.builds(lambda payload: raw_frame(0x6, 0, 0, payload), st.sampled_from([b"12345678", b"1234"])),
)  # fmt: skip
FINAL_PING = b"hypothes"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(FRAMES, max_size=12))
async def test_any_frame_sequence_leaves_the_proxy_serving(sequence: list[bytes]) -> None:
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            upstream_routes = [
                {"name": "ok", "match": {"prefix": "/"}, "direct_response": {"status": 200, "body": "ok\n"}},
            ]
            proxy = await start_proxy(nursery, http_proxy_config(["127.0.0.1:9"], routes=upstream_routes))
            address = proxy.address("ingress")
            client = RawH2(await trio.open_tcp_stream(*address))
            ping = bytes(PingFrame(0, opaque_data=FINAL_PING).serialize())
            with contextlib.suppress(trio.BrokenResourceError):  # closed early: the reply says how
                await client.stream.send_all(
                    PREFACE + SettingsFrame(0).serialize() + b"".join(sequence) + ping
                )
            frames: list[Frame] = []
            try:
                while (frame := await client.next_frame()) is not None:
                    frames.append(frame)
                    if (
                        isinstance(frame, PingFrame)
                        and "ACK" in frame.flags
                        and frame.opaque_data == FINAL_PING
                    ):
                        break
            except trio.BrokenResourceError:
                pass
            await client.stream.aclose()
            for frame in frames:
                if isinstance(frame, GoAwayFrame | RstStreamFrame):
                    ErrorCodes(frame.error_code)  # a defined code
            assert (await fetch(address, "/")).status == 200
            nursery.cancel_scope.cancel()
