"""meshcore.http.h2frames held to h2 and hyperframe (differential, sans-IO).

- FastFrameBuffer against h2's FrameBuffer: any byte stream (frames of every type, flags,
  padding, priority, lengths, CONTINUATION sequences, garbage) in any split and with any
  maximum frame size gives the same frames, attribute for attribute, or the same error.
- Frames sent: the same bytes as hyperframe's ``serialize``.
- Whole connections: h2's H2Connection (hpack's codec) and H2FastConnection (with the
  caching HPACK encoder and decoder, as the server session runs it) fed the same
  generated client byte streams - requests whose heads repeat (indexed, from memory),
  bodies, window updates, resets, settings, pings, header blocks over CONTINUATION,
  table size updates, damaged blocks and raw malformed frames - answer every request the
  same way, and report the same events, send the same bytes, and refuse the same input
  with the same error and GOAWAY code.
- The client side, as the upstream connection runs it (H2FastConnection, the caching
  decoder, RequestHeadEncoder) against h2's H2Connection as the upstream ran it before
  (hpack's decoder), with requests open and the same generated server byte streams -
  response heads repeated (indexed, from memory) or new each time (the table changes),
  informational heads, trailers, CONTINUATION, table size updates, damaged blocks, data,
  window updates, resets, raw malformed frames, and the connection answering as its
  streams do - reports the same events, sends the same bytes, and refuses the same input
  with the same error and GOAWAY code.
"""

from __future__ import annotations

import copy
from typing import Any, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
import hyperframe.exceptions
import pytest
from h2.frame_buffer import FrameBuffer
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from test_http2_frames import FRAMES, raw_frame

from meshcore.http.h2frames import FastFrameBuffer, H2FastConnection, _serialize
from meshcore.http.h2hpack import CachingDecoder, CachingEncoder
from meshcore.http.h2quiet import SILENT
from meshcore.runtime.h2upstream import H2Connection as UpstreamConnection
from meshcore.runtime.h2upstream import RequestHeadEncoder

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
END_STREAM, END_HEADERS, PADDED, PRIORITY = 0x1, 0x4, 0x8, 0x20


def _kind(frame: Frame) -> type:
    return next(c for c in type(frame).__mro__ if c.__module__ == "hyperframe.frame")


def _describe(frame: Frame) -> tuple[Any, ...]:
    fields = {k: v for k, v in vars(frame).items() if k != "flags"}
    return (_kind(frame), sorted(frame.flags), sorted(fields.items()))


def _frames(buffer: FrameBuffer, chunks: list[bytes], max_frame_size: int) -> list[Any]:
    out: list[Any] = []
    buffer.max_frame_size = max_frame_size
    try:
        for chunk in chunks:
            buffer.add_data(chunk)
            out.extend(_describe(frame) for frame in buffer)
    except (h2.exceptions.ProtocolError, hyperframe.exceptions.HyperframeError) as err:
        out.append(("error", type(err), str(err)))
    return out


COMMON = st.one_of(
    # The frames the fast path parses, and their near misses (flags, short bodies, stream 0).
    st.builds(
        lambda sid, data, flags: raw_frame(0x0, flags, sid, data),
        st.sampled_from([0, 1, 3, 2**31 + 5]),
        st.binary(max_size=30),
        st.sampled_from([0, END_STREAM, 0xF6, 0xFF]),
    ),
    st.builds(
        lambda sid, block, flags: raw_frame(0x1, flags, sid, block),
        st.sampled_from([0, 1, 3, 2**31 + 5]),
        st.binary(max_size=30),
        st.sampled_from(
            [END_HEADERS, END_HEADERS | END_STREAM, END_HEADERS | PRIORITY, 0xFF, 0xF7, 0x25, 0, END_STREAM]
        ),
    ),
    st.builds(
        lambda sid, priority, block, flags: raw_frame(0x1, flags, sid, priority + block),
        st.sampled_from([1, 3]),
        st.sampled_from([b"\x80\0\0\x03\x10", b"\0\0\0\x03\xff", b"\xff\xff\xff\xff\0"]),
        st.binary(max_size=8),
        st.sampled_from([END_HEADERS | PRIORITY, END_HEADERS | PRIORITY | END_STREAM]),
    ),
    st.builds(
        lambda sid, body: raw_frame(0x8, 0, sid, body),
        st.sampled_from([0, 1, 2**31 + 1]),
        st.sampled_from(
            [b"", b"\0\0\0\0", b"\0\0\0\1", b"\x7f\xff\xff\xff", b"\x80\0\0\1", b"\0\0\1", b"\0\0\0\1\0"]
        ),
    ),
    st.builds(
        lambda sid, body: raw_frame(0x9, END_HEADERS, sid, body),
        st.sampled_from([1, 3]),
        st.binary(max_size=8),
    ),
)


@settings(max_examples=400, deadline=None)
@given(
    frames=st.lists(st.one_of(COMMON, FRAMES), max_size=12),
    garbage=st.binary(max_size=12),
    cuts=st.lists(st.integers(0, 2000), max_size=6),
    max_frame_size=st.sampled_from([16384, 20, 8]),
    server=st.booleans(),
)
def test_the_same_frames_or_error_as_h2s_buffer(
    frames: list[bytes], garbage: bytes, cuts: list[int], max_frame_size: int, server: bool
) -> None:
    stream = (PREFACE if server else b"") + b"".join(frames) + garbage
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    ours = _frames(FastFrameBuffer(server=server), chunks, max_frame_size)
    assert ours == _frames(FrameBuffer(server=server), chunks, max_frame_size)


SENT = st.one_of(
    st.builds(
        lambda sid, data, flags, pad: DataFrame(sid, data, flags=flags, **({"pad_length": pad} if pad else {})),
        st.integers(1, 2**31 - 1),
        st.binary(max_size=40),
        st.sampled_from([[], ["END_STREAM"], ["PADDED"], ["END_STREAM", "PADDED"]]),
        st.sampled_from([0, 0, 3]),
    ),
    st.builds(
        lambda sid, data, flags: HeadersFrame(sid, data, flags=flags),
        st.integers(1, 2**31 - 1),
        st.binary(max_size=40),
        st.sampled_from([[], ["END_HEADERS"], ["END_STREAM", "END_HEADERS"], ["PRIORITY"], ["PADDED", "END_HEADERS"]]),
    ),
    st.builds(lambda sid, inc: WindowUpdateFrame(sid, window_increment=inc), st.integers(0, 2**31 - 1), st.integers(1, 2**31 - 1)),
    st.builds(lambda sid, code: RstStreamFrame(sid, error_code=code), st.integers(1, 2**31 - 1), st.integers(0, 2**32 - 1)),
    st.builds(lambda data: PingFrame(0, opaque_data=data), st.binary(min_size=8, max_size=8)),
    st.builds(lambda: SettingsFrame(0, flags=["ACK"])),
    st.builds(lambda code: GoAwayFrame(0, last_stream_id=1, error_code=code), st.integers(0, 13)),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(frame=SENT)
def test_the_same_bytes_as_hyperframe(frame: Frame) -> None:
    theirs = copy.deepcopy(frame)
    assert _serialize(frame) == theirs.serialize()
    assert frame.body_len == theirs.body_len


# -- whole connections ----------------------------------------------------------------------------

HEADS = [
    [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"proxy.test"), (b":path", b"/")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"proxy.test"), (b":path", b"/up"), (b"content-length", b"2")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/x"), (b"user-agent", b"h2load nghttp2/1.52.0"), (b"host", b"a")],
    [(b":method", b"GET"), (b":path", b"/"), (b"X-Upper", b"1")],
    [(b":status", b"103"), (b"link", b"</a>")],  # a response head, from a client
    [(b"grpc-status", b"0"), (b"content-length", b"x")],  # trailers (and a bad length)
    [(b"grpc-status", b"0")],  # trailers
]  # fmt: skip
OPS = st.one_of(
    st.tuples(st.just("request"), st.integers(0, 6), st.integers(0, 3), st.sampled_from([END_STREAM, 0, PRIORITY | END_STREAM])),
    st.tuples(st.just("trailers"), st.integers(0, 6), st.integers(0, 3), st.sampled_from([END_STREAM, 0])),
    st.tuples(st.just("split"), st.integers(0, 3), st.integers(0, 3), st.integers(1, 6)),
    st.tuples(st.just("damaged"), st.integers(0, 3), st.integers(0, 3), st.integers(0, 255)),
    st.tuples(st.just("resize"), st.sampled_from([0, 256, 4096, 8192]), st.just(0), st.just(0)),
    st.tuples(st.just("data"), st.integers(0, 3), st.binary(max_size=10), st.sampled_from([0, END_STREAM, PADDED])),
    st.tuples(st.just("window"), st.integers(-1, 3), st.sampled_from([0, 1, 65535, 2**31 - 1]), st.just(0)),
    st.tuples(st.just("reset"), st.integers(0, 3), st.integers(0, 13), st.just(0)),
    st.tuples(st.just("raw"), FRAMES, st.just(0), st.just(0)),
)  # fmt: skip


def _client_bytes(ops: list[tuple[Any, ...]]) -> bytes:
    """The bytes a client sends for ``ops``: one encoder, so repeated heads come indexed."""
    encoder = hpack.Encoder()
    out = [PREFACE, SettingsFrame(0).serialize()]
    sid = 1
    for kind, a, b, c in ops:
        stream_id = sid + 2 * a if isinstance(a, int) and a >= 0 else 0
        if kind in {"request", "split", "damaged"}:
            block = encoder.encode(HEADS[a])
            stream_id, sid = sid, sid + 2
            if kind == "request":
                payload = (b"\x00\x00\x00\x00\x10" + block) if c & PRIORITY else block
                out.append(raw_frame(0x1, c | END_HEADERS, stream_id, payload))
            elif kind == "split":
                parts = [block[i : i + c] for i in range(0, len(block), c)] or [b""]
                out.append(
                    raw_frame(0x1, END_STREAM | (END_HEADERS if len(parts) == 1 else 0), stream_id, parts[0])
                )
                out.extend(
                    raw_frame(0x9, END_HEADERS if i == len(parts) - 1 else 0, stream_id, p)
                    for i, p in enumerate(parts[1:], 1)
                )
            else:
                at = b % max(1, len(block))
                damaged = block[:at] + bytes([c]) + block[at + 1 :]
                out.append(raw_frame(0x1, END_HEADERS | END_STREAM, stream_id, damaged))
        elif kind == "trailers":  # a header block on a stream already opened
            block = encoder.encode(HEADS[a])
            out.append(raw_frame(0x1, c | END_HEADERS, max(1, sid - 2 - 2 * b), block))
        elif kind == "resize":
            encoder.header_table_size = a
        elif kind == "data":
            payload = b"\x02" + b + b"\0\0" if c & PADDED else b
            out.append(raw_frame(0x0, c, max(1, sid - 2 - 2 * a), payload))
        elif kind == "window":
            out.append(raw_frame(0x8, 0, stream_id, b.to_bytes(4, "big")))
        elif kind == "reset":
            out.append(raw_frame(0x3, 0, max(1, sid - 2 - 2 * a), b.to_bytes(4, "big")))
        else:
            out.append(a)
    return b"".join(out)  # fmt: skip


def _server(fast: bool, max_streams: int = 3) -> h2.connection.H2Connection:
    config = h2.config.H2Configuration(
        client_side=False,
        header_encoding=None,
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
        normalize_outbound_headers=False,
        validate_outbound_headers=False,
        logger=SILENT,
    )
    if not fast:
        conn = h2.connection.H2Connection(config=config)
    else:
        conn = H2FastConnection(config=config)
        conn.encoder, conn.decoder = CachingEncoder(), CachingDecoder()
    conn.initiate_connection()
    # Few streams at once, as a session's limit (applied at once, as the session applies it).
    conn.local_settings = h2.settings.Settings(
        client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams}
    )
    conn.max_inbound_frame_size = 16384
    conn.decoder.max_header_list_size = 300
    return conn


OK, INFO = [(b":status", b"200"), (b"server", b"meshcore")], [(b":status", b"103"), (b"link", b"</a>")]
TRAILERS = [(b"grpc-status", b"0")]
# Ways to answer a request, each a list of (method, arguments): what a server session does,
# and some of what it must never do (refused the same way by both connections).
ANSWERS: list[list[tuple[str, tuple[Any, ...]]]] = [
    [("send_headers", (OK,)), ("send_data", (b"ok", True))],
    [("send_headers", (INFO,)), ("send_headers", (OK,)), ("send_data", (b"ok", False)), ("send_headers", (TRAILERS, True))],
    [("send_headers", (OK, True))],
    [("send_headers", ([*OK, (b"x-big", b"v" * 17000)], True))],
    [("send_headers", (INFO, True)), ("send_headers", (OK, True))],
    [("send_headers", (OK,)), ("send_data", (b"", False)), ("send_headers", (TRAILERS, False)), ("send_data", (b"x", True))],
    [("send_headers", ([(":status", "200")], True))],
    [("send_headers", (OK,)), ("send_data", (b"z" * 70000, True)), ("send_data", (b"z" * 16000, False)), ("end_stream", ())],
    [("send_headers", (OK,)), ("send_data", (memoryview(b"mv"), True)), ("send_data", (b"late", True))],
    [("reset_stream", ()), ("send_headers", (OK, True))],
]  # fmt: skip


def _stream_state(conn: h2.connection.H2Connection, stream_id: int) -> tuple[Any, ...]:
    """What h2 keeps of a stream and the connection once a request is answered."""
    stream = conn.streams.get(stream_id)
    kept = (
        conn.state_machine.state,
        conn.outbound_flow_control_window,
        sorted(conn.streams),
        conn.open_inbound_streams,
    )
    if stream is None:
        return kept
    return (*kept, stream.state_machine.state, stream.request_method, stream.outbound_flow_control_window)


def _event(event: h2.events.Event) -> tuple[str, ...]:
    """An event as h2 reports it, with the events it links to (its repr leaves them out)."""
    links = (getattr(event, "stream_ended", None), getattr(event, "priority_updated", None))
    return (repr(event), *map(repr, links))


def _serve(conn: h2.connection.H2Connection, chunks: list[bytes], answers: list[int]) -> list[Any]:
    """What a server does with ``chunks``: events, bytes sent, answers, and how it ends."""
    out: list[Any] = [conn.data_to_send()]
    served = 0
    for chunk in chunks:
        try:
            events = conn.receive_data(chunk)
        except h2.exceptions.ProtocolError as err:
            out.append(("refused", type(err), getattr(err, "error_code", None), conn.data_to_send()))
            return out
        out.append([_event(event) for event in events])
        for event in events:
            if not isinstance(event, h2.events.RequestReceived):
                continue
            for method, args in ANSWERS[answers[served % len(answers)] if answers else 0]:
                try:
                    getattr(conn, method)(event.stream_id, *args)
                except (
                    h2.exceptions.ProtocolError,
                    KeyError,
                ) as err:  # KeyError: h2's, on a forgotten stream
                    out.append(("answer refused", method, type(err)))
            out.append(_stream_state(conn, event.stream_id))
            served += 1
        out.append(conn.data_to_send())
    return out


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(OPS, max_size=14),
    cuts=st.lists(st.integers(0, 600), max_size=5),
    answers=st.lists(st.integers(0, len(ANSWERS) - 1), max_size=6),
)
def test_a_fast_connection_behaves_as_h2s(
    ops: list[tuple[Any, ...]], cuts: list[int], answers: list[int]
) -> None:
    stream = _client_bytes(ops)
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert _serve(_server(fast=True), chunks, answers) == _serve(_server(fast=False), chunks, answers)


def test_steady_state_requests_take_the_fast_paths() -> None:
    """A repeated request head comes from the decoder's memory and its frame from the fast parser."""
    conn = _server(fast=True)
    assert isinstance(conn.incoming_buffer, FastFrameBuffer)  # installed on this h2
    stream = _client_bytes([("request", 0, 0, END_STREAM)] * 3)
    events = conn.receive_data(stream)
    requests = [e for e in events if isinstance(e, h2.events.RequestReceived)]
    assert [e.stream_id for e in requests] == [1, 3, 5]
    assert requests[2].headers == HEADS[0]
    decoder = conn.decoder
    assert isinstance(decoder, CachingDecoder)
    assert len(decoder._blocks) == 1  # the indexed head, remembered


def test_every_answer_the_same_as_h2s() -> None:
    """Each way of answering (heads, 1xx, trailers, CONTINUATION, refusals) on its own request."""
    stream = _client_bytes([("request", 0, 0, END_STREAM)] * len(ANSWERS))
    answers = list(range(len(ANSWERS)))
    fast = _serve(_server(fast=True, max_streams=100), [stream], answers)
    assert fast == _serve(_server(fast=False, max_streams=100), [stream], answers)
    assert sum(1 for step in fast if step[0] == "answer refused") >= 4  # the refusals are in there


@pytest.mark.parametrize(
    "ops",
    [
        [("request", 0, 0, 0), ("trailers", 6, 0, 0)],  # trailers without END_STREAM: refused
        [("request", 0, 0, 0), ("trailers", 6, 0, END_STREAM)],
        [("request", 1, 0, 0), ("trailers", 5, 0, END_STREAM)],  # a bad content-length in trailers
        [("request", 0, 0, 0), ("trailers", 4, 0, END_STREAM)],  # a 1xx head as trailers
        [("request", 0, 0, END_STREAM), ("trailers", 6, 0, END_STREAM)],  # on a closed stream
        [("request", 4, 0, END_STREAM)],  # a 1xx head from a client
        [("request", 4, 0, 0)],
        [("request", 5, 0, END_STREAM)],  # no pseudo-header fields, a bad content-length
        [("request", 0, 0, PRIORITY | END_STREAM), ("request", 0, 0, END_STREAM)],
        [("request", 0, 0, 0)] * 5,  # past the limit of 3 open streams
        [("request", 0, 0, 0), ("request", 0, 0, END_STREAM), ("reset", 1, 8, 0)] * 3,
    ],
)
def test_client_heads_and_trailers_the_same_as_h2s(ops: list[tuple[Any, ...]]) -> None:
    stream = _client_bytes(ops)
    for answers in ([2], [0], [9]):
        assert _serve(_server(fast=True), [stream], answers) == _serve(_server(fast=False), [stream], answers)


# -- the client side, as the upstream connection runs it -----------------------------------------


def _upstream(fast: bool, limit: int) -> h2.connection.H2Connection:
    """The upstream connection's h2 (fast), or h2's own connection configured as it was before."""
    real = UpstreamConnection(cast(Any, None), cast(Any, None)).h2  # the sans-IO part only
    conn: h2.connection.H2Connection = real
    if not fast:
        conn = h2.connection.H2Connection(config=real.config)
        conn.encoder = RequestHeadEncoder()
        conn.local_settings = copy.deepcopy(real.local_settings)
    conn.decoder.max_header_list_size = limit
    conn.initiate_connection()
    conn.increment_flow_control_window(1 << 20)
    for i in range(UP_STREAMS):  # requests open before the server answers (a per-request field last)
        head = [*REQUEST, hpack.NeverIndexedHeaderTuple(b"x-request-id", b"%d" % i)]
        conn.send_headers(1 + 2 * i, head, end_stream=i % 2 == 0)
    return conn


UP_STREAMS = 10
FRESH = -2  # a head on the next stream no response has started on yet
REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":authority", b"up.test"),
    (b":path", b"/svc/M"),
    (b"te", b"trailers"),
]
RESPONSES = [
    [(b":status", b"200"), (b"content-type", b"application/grpc")],
    [(b":status", b"200"), (b"server", b"meshcore"), (b"date", b"Thu, 03 Dec 2026 15:00:00 GMT")],
    [(b":status", b"103"), (b"link", b"</a>")],  # informational
    [(b"grpc-status", b"0"), (b"grpc-message", b"")],  # trailers
    [(b":status", b"200"), (b"content-length", b"x")],  # a bad length
    [(b":status", b"204"), (b"x-big", b"v" * 400)],  # over the header list limit
    [(b":method", b"GET"), (b":path", b"/")],  # a request head, from a server
    [(b":status", b"200"), (b"grpc-encoding", b"gzip")],  # once indexed, the same bytes as the first
]
UP_OPS = st.one_of(  # what a server sends: whole responses, heads, resizes the client allows, windows, resets
    st.tuples(
        st.just("exchange"), st.just(FRESH), st.sampled_from([0, 1, 7, len(RESPONSES)]), st.integers(0, 3)
    ),
    st.tuples(
        st.just("exchange"), st.just(FRESH), st.sampled_from([0, 1, 7, len(RESPONSES)]), st.integers(0, 3)
    ),
    st.tuples(
        st.just("head"),
        st.just(FRESH),
        st.sampled_from([0, 1, 2, 7, len(RESPONSES)]),
        st.sampled_from([END_STREAM, 0, PRIORITY]),
    ),
    st.tuples(
        st.just("head"),
        st.integers(0, UP_STREAMS - 1),
        st.sampled_from([0, 3]),
        st.sampled_from([END_STREAM, 0]),
    ),
    st.tuples(st.just("resize"), st.sampled_from([0, 256, 4096]), st.just(0), st.just(0)),
    st.tuples(st.just("window"), st.integers(-1, UP_STREAMS - 1), st.sampled_from([1, 65535]), st.just(0)),
    st.tuples(st.just("reset"), st.integers(0, UP_STREAMS - 1), st.sampled_from([0, 7, 8]), st.just(0)),
)
UP_BAD = st.one_of(  # what a server must not send (most of it ends the connection): one among the others
    st.tuples(st.just("head"), st.integers(0, UP_STREAMS), st.integers(0, len(RESPONSES)), st.sampled_from([END_STREAM, 0, PRIORITY])),
    st.tuples(st.just("split"), st.integers(0, UP_STREAMS), st.integers(0, len(RESPONSES) - 1), st.integers(1, 6)),
    st.tuples(st.just("damaged"), st.integers(0, UP_STREAMS), st.integers(0, 255), st.integers(0, 255)),
    st.tuples(st.just("resize"), st.just(8192), st.just(0), st.just(0)),
    st.tuples(st.just("data"), st.integers(0, UP_STREAMS), st.binary(max_size=10), st.sampled_from([0, END_STREAM, PADDED])),
    st.tuples(st.just("window"), st.integers(-1, UP_STREAMS), st.sampled_from([0, 1, 65535, 2**31 - 1]), st.just(0)),
    st.tuples(st.just("reset"), st.integers(0, UP_STREAMS), st.integers(0, 13), st.just(0)),
    st.tuples(st.just("raw"), FRAMES, st.just(0), st.just(0)),
)  # fmt: skip


def _server_bytes(ops: list[tuple[Any, ...]]) -> bytes:
    """The bytes a server sends for ``ops``: one encoder, so repeated heads come indexed.

    Head number len(RESPONSES) is one with a new value each time (``x-seq``): its decoding
    always changes the table. A head on FRESH goes on the next stream not yet answered.
    """
    encoder = hpack.Encoder()
    out = [SettingsFrame(0).serialize()]
    fresh = 0
    for n, (kind, a, b, c) in enumerate(ops):
        sid = 1 + 2 * a if isinstance(a, int) and a >= 0 else 0  # UP_STREAMS: a stream never opened
        if a == FRESH:
            sid, fresh = 1 + 2 * min(fresh, UP_STREAMS), fresh + 1
        if kind in {"exchange", "head", "split", "damaged"}:
            fields = (
                RESPONSES[b]
                if kind != "damaged" and b < len(RESPONSES)
                else [*RESPONSES[0], (b"x-seq", b"%d" % n)]
            )
            out += _response_frames(encoder, kind, sid, encoder.encode(fields), b, c)
        elif kind == "resize":
            encoder.header_table_size = a
        elif kind == "data":
            payload = b"\x02" + b + b"\0\0" if c & PADDED else b
            out.append(raw_frame(0x0, c, sid, payload))
        elif kind == "window":
            out.append(raw_frame(0x8, 0, sid, b.to_bytes(4, "big")))
        elif kind == "reset":
            out.append(raw_frame(0x3, 0, sid, b.to_bytes(4, "big")))
        else:
            out.append(a)
    return b"".join(out)  # fmt: skip


def _response_frames(
    encoder: hpack.Encoder, kind: str, sid: int, block: bytes, b: int, c: int
) -> list[bytes]:
    """The frames of a head op: its block in one frame, over CONTINUATION, damaged, or a whole response."""
    # A whole response: head, body, then trailers (c: 1), or END_STREAM on the head (2) or data (0), or none (3).
    if kind == "exchange":
        out = [raw_frame(0x1, END_HEADERS | (END_STREAM if c == 2 else 0), sid, block)]
        if c != 2:
            out.append(raw_frame(0x0, END_STREAM if c == 0 else 0, sid, b"\0\0\0\0\x02ok"))
        if c == 1:
            out.append(raw_frame(0x1, END_HEADERS | END_STREAM, sid, encoder.encode(RESPONSES[3])))
        return out
    if kind == "head":
        payload = (b"\x00\x00\x00\x00\x10" + block) if c & PRIORITY else block
        return [raw_frame(0x1, c | END_HEADERS, sid, payload)]
    if kind == "split":
        parts = [block[i : i + c] for i in range(0, len(block), c)] or [b""]
        return [raw_frame(0x1, END_HEADERS if len(parts) == 1 else 0, sid, parts[0])] + [
            raw_frame(0x9, END_HEADERS if i == len(parts) - 1 else 0, sid, p)
            for i, p in enumerate(parts[1:], 1)
        ]
    at = b % max(1, len(block))
    return [raw_frame(0x1, END_HEADERS, sid, block[:at] + bytes([c]) + block[at + 1 :])]


# What the upstream connection (and its streams) may do on an event: h2request's steps, and
# some it never takes (refused the same way by both connections).
UP_ANSWERS: list[list[tuple[str, tuple[Any, ...]]]] = [
    [],
    [("send_data", (b"\0\0\0\0\x02hi", True))],
    [("send_data", (b"x" * 70000, True))],
    [("reset_stream", ())],
    [("end_stream", ())],
    [("send_headers", (TRAILERS, True))],
    [("send_data", (memoryview(b"mv"), False)), ("send_headers", ([(b"x-late", b"1")], False))],
]


def _upstream_state(conn: h2.connection.H2Connection, stream_id: int) -> tuple[Any, ...]:
    stream = conn.streams.get(stream_id)
    kept = (
        conn.state_machine.state,
        conn.outbound_flow_control_window,
        sorted(conn.streams),
        conn.open_outbound_streams,
    )
    if stream is None:
        return kept
    return (
        *kept,
        stream.state_machine.state,
        stream.outbound_flow_control_window,
        stream.inbound_flow_control_window,
    )


def _client_side(conn: h2.connection.H2Connection, chunks: list[bytes], answers: list[int]) -> list[Any]:
    """What the upstream connection does with ``chunks``: events, bytes sent, and how it ends."""
    out: list[Any] = [conn.data_to_send()]
    acted = 0
    for chunk in chunks:
        try:
            events = conn.receive_data(chunk)
        except h2.exceptions.ProtocolError as err:
            out.append(("refused", type(err), getattr(err, "error_code", None), conn.data_to_send()))
            return out
        out.append([_event(event) for event in events])
        for event in events:
            if isinstance(event, h2.events.DataReceived) and event.flow_controlled_length:
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)  # as h2request
            if not isinstance(event, h2.events.ResponseReceived | h2.events.DataReceived):
                continue
            for method, args in UP_ANSWERS[answers[acted % len(answers)] if answers else 0]:
                try:
                    getattr(conn, method)(event.stream_id, *args)
                except (h2.exceptions.ProtocolError, KeyError) as err:
                    out.append(("answer refused", method, type(err)))
            out.append(_upstream_state(conn, event.stream_id))
            acted += 1
        out.append(conn.data_to_send())
    return out


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(UP_OPS, max_size=14),
    bad=st.none() | UP_BAD,
    at=st.integers(0, 14),
    cuts=st.lists(st.integers(0, 600), max_size=5),
    answers=st.lists(st.integers(0, len(UP_ANSWERS) - 1), max_size=6),
    limit=st.sampled_from([2**16, 300]),
)
def test_the_upstream_connection_behaves_as_h2s(
    ops: list[tuple[Any, ...]],
    bad: tuple[Any, ...] | None,
    at: int,
    cuts: list[int],
    answers: list[int],
    limit: int,
) -> None:
    if bad is not None:
        ops.insert(at, bad)
    stream = _server_bytes(ops)
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    ours = _client_side(_upstream(fast=True, limit=limit), chunks, answers)
    assert ours == _client_side(_upstream(fast=False, limit=limit), chunks, answers)


def test_the_upstream_connection_takes_the_fast_paths() -> None:
    """Repeated response heads and trailers come from the decoder's memory, frames from the fast parser."""
    conn = _upstream(fast=True, limit=2**16)
    assert isinstance(conn, H2FastConnection)
    assert isinstance(conn.incoming_buffer, FastFrameBuffer)  # installed on this h2
    decoder = conn.decoder
    assert isinstance(decoder, CachingDecoder)
    assert decoder.max_header_list_size == h2.connection.H2Connection.DEFAULT_MAX_HEADER_LIST_SIZE
    ops = [("head", i, 0, 0) for i in range(UP_STREAMS)] + [
        ("head", i, 3, END_STREAM) for i in range(UP_STREAMS)
    ]
    events = conn.receive_data(_server_bytes(ops))
    heads = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    trailers = [e for e in events if isinstance(e, h2.events.TrailersReceived)]
    assert (
        [e.stream_id for e in heads]
        == [e.stream_id for e in trailers]
        == [1 + 2 * i for i in range(UP_STREAMS)]
    )
    assert heads[-1].headers == RESPONSES[0]
    assert trailers[-1].headers == RESPONSES[3]
    assert len(decoder._blocks) == 2  # the indexed head and trailers, remembered


@pytest.mark.parametrize(
    "ops",
    [
        [("head", 0, 0, 0), ("head", 0, 0, 0)],  # a second head without END_STREAM: not trailers
        [("head", 1, 0, 0), ("data", 1, b"x", 0), ("head", 1, 3, END_STREAM)],
        [("head", 1, 0, 0), ("head", 1, 3, 0)],  # trailers without END_STREAM
        [("head", 1, 2, 0), ("head", 1, 2, 0), ("head", 1, 0, END_STREAM)],  # 1xx, 1xx, final
        [("head", 1, 2, END_STREAM)],  # a 1xx with END_STREAM
        [("head", 1, 4, 0), ("head", 3, 6, 0), ("head", 5, 5, 0)],
        [("head", 0, 0, END_STREAM), ("head", 0, 0, END_STREAM)],  # on a closed stream
        [("head", UP_STREAMS, 0, 0)],  # on a stream never opened
        [("head", 1, len(RESPONSES), 0), ("head", 3, len(RESPONSES), 0), ("head", 5, 0, PRIORITY)],
        [("resize", 0, 0, 0), ("head", 1, 0, 0), ("resize", 8192, 0, 0), ("head", 3, 0, 0)],
        [("head", 1, 0, 0), ("reset", 1, 8, 0), ("head", 1, 3, END_STREAM), ("window", 1, 1, 0)],
        # The same bytes, meaning other fields once the table has changed: never from memory.
        [("head", 0, 0, 0), ("head", 1, 0, 0), ("head", 2, 7, 0), ("head", 3, 7, 0), ("head", 4, 0, 0)],
    ],
)
def test_response_heads_and_trailers_the_same_as_h2s(ops: list[tuple[Any, ...]]) -> None:
    stream = _server_bytes(ops)
    for answers in ([0], [1], [3], [5]):
        for limit in (2**16, 300):
            ours = _client_side(_upstream(fast=True, limit=limit), [stream], answers)
            assert ours == _client_side(_upstream(fast=False, limit=limit), [stream], answers)
