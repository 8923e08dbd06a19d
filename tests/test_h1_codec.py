"""The HTTP/1.1 codecs, sans-IO: bytes in, events or ProtocolError out (no sockets, no trio).

The server codec must reject what h11 alone would let through (obs-fold, bare LF, both
Content-Length and Transfer-Encoding, a head over the size limit) with the status to
answer, whatever way the bytes are split; and parse good input identically however it
is split.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import pairwise

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from meshcore.errors import ProtocolError
from meshcore.http.codec import (
    CLOSED,
    NEED_DATA,
    ClientEvent,
    Data,
    EndOfMessage,
    Informational,
    RequestHead,
    ResponseHead,
    ServerEvent,
)
from meshcore.http.h1 import H11ClientCodec, H11ServerCodec

Event = tuple[object, ...]


def norm(event: ServerEvent | ClientEvent) -> Event:
    """An event as a plain tuple, to compare."""
    if type(event) is RequestHead:
        return ("head", event.method, event.target, tuple(event.headers), event.http_version)
    if type(event) is ResponseHead:
        return ("response", event.status, tuple(event.headers), event.http_version, event.reason)
    if type(event) is Informational:
        return ("informational", event.status, tuple(event.headers))
    if type(event) is Data:
        return ("data", event.data)
    if type(event) is EndOfMessage:
        return ("end", tuple(event.trailers or ()))
    assert event is CLOSED, event
    return ("closed",)


def merge_data(events: Iterable[Event]) -> list[Event]:
    """Consecutive body chunks as one: how the body is cut up depends on the reads."""
    merged: list[Event] = []
    for event in events:
        match event, merged[-1:]:
            case ("data", bytes(more)), [("data", bytes(before))]:
                merged[-1] = ("data", before + more)
            case _:
                merged.append(event)
    return merged


def serve(pieces: Iterable[bytes], *, eof: bool = False, max_head_size: int = 60 * 1024) -> list[Event]:
    """Feed a server codec ``pieces``; answer each request with an empty 200 to go on."""
    codec = H11ServerCodec(max_head_size=max_head_size)
    events: list[Event] = []
    for piece in [*pieces, b""] if eof else pieces:
        codec.receive_data(piece)
        while (event := codec.next_event()) is not NEED_DATA:
            events.append(norm(event))
            if event is CLOSED:
                return merge_data(events)
            if type(event) is EndOfMessage:
                codec.send_response_head(200, [(b"content-length", b"0")])
                codec.send_end()
                if not codec.start_next_cycle():
                    return merge_data(events)
    return merge_data(events)


def split(data: bytes, cuts: Iterable[int] = ()) -> list[bytes]:
    """``data`` in pieces, cut at ``cuts``; never an empty piece (that would say EOF)."""
    points = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    return [data[a:b] for a, b in pairwise(points)]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


HOST = (b"host", b"example.com")
GET = b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n"
GET_EVENTS: list[Event] = [("head", b"GET", b"/a", (HOST,), b"1.1"), ("end", ())]
POST = b"POST /b HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello"
POST_EVENTS: list[Event] = [
    ("head", b"POST", b"/b", (HOST, (b"content-length", b"5")), b"1.1"),
    ("data", b"hello"),
    ("end", ()),
]
CHUNKED = (
    b"PUT /c HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nworld!\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
)
CHUNKED_EVENTS: list[Event] = [
    ("head", b"PUT", b"/c", (HOST, (b"transfer-encoding", b"chunked")), b"1.1"),
    ("data", b"hello world!"),
    ("end", ((b"x-checksum", b"abc"), (b"x-other", b"1"))),
]
VALID = [(GET, GET_EVENTS), (POST, POST_EVENTS), (CHUNKED, CHUNKED_EVENTS)]

# -- good input -----------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "expected"), VALID, ids=["get", "post", "chunked-with-trailers"])
def test_good_request_parses_whole_and_byte_by_byte(data: bytes, expected: list[Event]) -> None:
    assert serve([data]) == expected
    assert serve(bytewise(data)) == expected


def test_pipelined_requests_in_one_read() -> None:
    assert serve([GET + POST + CHUNKED + GET]) == GET_EVENTS + POST_EVENTS + CHUNKED_EVENTS + GET_EVENTS


@pytest.mark.parametrize("prefix", [b"\r\n", b"\r\n\r\n\r\n"], ids=["one", "three"])
def test_empty_lines_before_a_request_line_are_ignored(prefix: bytes) -> None:
    """RFC 9112 section 2.2: also a stray CRLF after a body, before the next request."""
    stream = prefix + GET + POST + prefix + GET
    assert serve([stream]) == GET_EVENTS + POST_EVENTS + GET_EVENTS
    assert serve(bytewise(stream)) == GET_EVENTS + POST_EVENTS + GET_EVENTS


def test_identical_content_lengths_are_one() -> None:
    data = b"POST /b HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
    assert serve([data]) == POST_EVENTS


def test_head_exactly_at_the_limit_is_accepted() -> None:
    head = b"GET /a HTTP/1.1\r\nHost: example.com\r\nx-pad: "
    data = head + b"a" * (1000 - len(head) - 4) + b"\r\n\r\n"
    assert len(data) == 1000
    assert serve([data], max_head_size=1000)[0][:3] == ("head", b"GET", b"/a")


def test_eof_between_requests_is_a_clean_close() -> None:
    assert serve([GET], eof=True) == [*GET_EVENTS, ("closed",)]
    assert serve([], eof=True) == serve([b""]) == [("closed",)]


def test_expect_100_continue() -> None:
    codec = H11ServerCodec()
    codec.receive_data(
        b"POST /b HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    assert type(codec.next_event()) is RequestHead
    assert codec.next_event() is NEED_DATA
    waiting = codec.expects_continue
    assert codec.send_informational(100, []).startswith(b"HTTP/1.1 100 ")
    assert (waiting, codec.expects_continue) == (True, False)
    codec.receive_data(b"hello")
    assert norm(codec.next_event()) == ("data", b"hello")
    assert norm(codec.next_event()) == ("end", ())
    assert codec.request_complete


def test_response_bytes_and_keep_alive_cycle() -> None:
    codec = H11ServerCodec()
    codec.receive_data(GET + GET)
    assert type(codec.next_event()) is RequestHead
    assert not codec.start_next_cycle()  # the request is not complete, nor the response
    assert type(codec.next_event()) is EndOfMessage
    assert codec.request_complete
    started = codec.response_started
    out = codec.send_response_head(200, [(b"content-length", b"2")])
    assert out == b"HTTP/1.1 200 \r\ncontent-length: 2\r\n\r\n"
    assert (started, codec.response_started) == (False, True)
    assert not codec.start_next_cycle()  # the response is not complete
    assert codec.send_data(b"ok") + codec.send_end() == b"ok"
    assert codec.start_next_cycle()
    assert norm(codec.next_event())[:3] == ("head", b"GET", b"/a")  # the pipelined one


def test_connection_close_ends_the_cycles() -> None:
    codec = H11ServerCodec()
    codec.receive_data(b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n" + GET)
    assert type(codec.next_event()) is RequestHead
    assert type(codec.next_event()) is EndOfMessage
    codec.send_response_head(200, [(b"content-length", b"0")])
    codec.send_end()
    assert not codec.start_next_cycle()


def test_response_the_codec_cannot_send_is_our_fault() -> None:
    codec = H11ServerCodec()
    codec.receive_data(GET)
    codec.next_event()
    with pytest.raises(ProtocolError) as caught:
        codec.send_response_head(200, [(b"bad header", b"x")])
    assert (caught.value.status, caught.value.remote) == (502, False)


# -- bad input ------------------------------------------------------------------------------

GOOD_HEAD = b"GET / HTTP/1.1\r\nHost: example.com\r\n"
# (id, bytes, status, words of the message); each must fail before any event for the request
BAD_HEADS = [
    ("request-line-no-version", b"GET /\r\nHost: example.com\r\n\r\n", 400, "request line"),
    ("request-line-double-space", b"GET  / HTTP/1.1\r\nHost: example.com\r\n\r\n", 400, "request line"),
    ("request-line-only-method", b"GET\r\n\r\n", 400, "request line"),
    ("request-line-binary", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400, "request line"),
    ("header-no-colon", GOOD_HEAD + b"no-colon\r\n\r\n", 400, "header line"),
    ("header-space-before-colon", GOOD_HEAD + b"x-a : 1\r\n\r\n", 400, "header line"),
    ("header-nul", GOOD_HEAD + b"x-a: a\x00b\r\n\r\n", 400, "header line"),
    ("header-bare-cr", GOOD_HEAD + b"x-a: a\rb\r\n\r\n", 400, "header line"),
    ("missing-host", b"GET / HTTP/1.1\r\n\r\n", 400, "Host"),
    (
        "content-length-and-transfer-encoding",
        b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
        "both Content-Length and Transfer-Encoding",
    ),
    (
        "transfer-encoding-and-content-length",
        b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        400,
        "both Content-Length and Transfer-Encoding",
    ),
    (
        "two-content-lengths",
        b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        400,
        "conflicting Content-Length",
    ),
    ("content-length-list", GOOD_HEAD + b"Content-Length: 5, 6\r\n\r\n", 400, "conflicting Content-Length"),
    ("content-length-negative", GOOD_HEAD + b"Content-Length: -1\r\n\r\n", 400, "bad Content-Length"),
    ("content-length-hex", GOOD_HEAD + b"Content-Length: 0x10\r\n\r\n", 400, "bad Content-Length"),
    ("obs-fold-space", GOOD_HEAD + b"x-a: 1\r\n 2\r\n\r\n", 400, "obs-fold"),
    ("obs-fold-tab", GOOD_HEAD + b"x-a: 1\r\n\t2\r\n\r\n", 400, "obs-fold"),
    ("obs-fold-first-header", b"GET / HTTP/1.1\r\n Host: example.com\r\n\r\n", 400, "obs-fold"),
    ("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: example.com\n\n", 400, "bare LF"),
    ("bare-lf-request-line", b"GET / HTTP/1.1\nHost: example.com\r\n\r\n", 400, "bare LF"),
    ("bare-lf-one-header", GOOD_HEAD + b"x-a: 1\nx-b: 2\r\n\r\n", 400, "bare LF"),
    ("bare-lf-final-blank-line", GOOD_HEAD + b"\n", 400, "bare LF"),
    ("bare-lf-then-blank-line", GOOD_HEAD + b"x-a: 1\n\r\n", 400, "bare LF"),
    ("bare-lf-before-request-line", b"\n" + GOOD_HEAD + b"\r\n", 400, "bare LF"),
    ("transfer-coding-gzip", GOOD_HEAD + b"Transfer-Encoding: gzip\r\n\r\n", 501, "chunked"),
    (
        "transfer-coding-chunked-not-last",
        GOOD_HEAD + b"Transfer-Encoding: chunked, gzip\r\n\r\n",
        501,
        "chunked",
    ),
    (
        "head-over-the-limit",
        GOOD_HEAD + b"x-big: " + b"a" * 61 * 1024 + b"\r\n\r\n",
        431,
        "larger than 61440",
    ),
    (
        "head-over-the-limit-many-lines",
        GOOD_HEAD + b"".join(b"x-%d: %s\r\n" % (i, b"a" * 1000) for i in range(62)) + b"\r\n",
        431,
        "larger than 61440",
    ),
    ("head-over-the-limit-unfinished", GOOD_HEAD + b"x-big: " + b"a" * 61 * 1024, 431, "larger than 61440"),
]
BAD_IDS = [case[0] for case in BAD_HEADS]
BAD_CASES = [case[1:] for case in BAD_HEADS]


def rejected(pieces: Iterable[bytes], *, eof: bool = False, max_head_size: int = 60 * 1024) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        serve(pieces, eof=eof, max_head_size=max_head_size)
    return caught.value


def next_request(codec: H11ServerCodec) -> list[Event]:
    """The events of the next request; answer it, so that the one after can start."""
    events: list[Event] = []
    while (event := codec.next_event()) is not NEED_DATA:
        events.append(norm(event))
        if type(event) is EndOfMessage:
            codec.send_response_head(200, [(b"content-length", b"0")])
            codec.send_end()
            assert codec.start_next_cycle()
            break
    return events


@pytest.mark.parametrize(("data", "status", "words"), BAD_CASES, ids=BAD_IDS)
def test_bad_head_is_rejected_with_its_status(data: bytes, status: int, words: str) -> None:
    for pieces in ([data], bytewise(data)):
        err = rejected(pieces)
        assert (err.status, err.remote) == (status, True)
        assert words in str(err)


@pytest.mark.parametrize(("data", "status", "words"), BAD_CASES, ids=BAD_IDS)
def test_bad_head_pipelined_behind_a_good_request_is_rejected_too(
    data: bytes, status: int, words: str
) -> None:
    codec = H11ServerCodec()
    codec.receive_data(POST + data)
    assert next_request(codec) == POST_EVENTS
    with pytest.raises(ProtocolError) as caught:
        next_request(codec)
    assert caught.value.status == status
    assert words in str(caught.value)


def test_head_size_limit_is_configurable() -> None:
    data = GOOD_HEAD + b"x-big: " + b"a" * 5000 + b"\r\n\r\n"
    assert serve([data])[0][0] == "head"
    for pieces in ([data], split(data, [10]), split(data, [len(data) - 1])):
        err = rejected(pieces, max_head_size=4096)
        assert err.status == 431
        assert "larger than 4096 bytes" in str(err)


def test_eof_in_the_middle_of_a_head_is_a_bad_request() -> None:
    err = rejected([GOOD_HEAD], eof=True)
    assert err.status == 400


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"zz\r\nhello\r\n0\r\n\r\n", "chunk header"),
        (b"-5\r\nhello\r\n0\r\n\r\n", "chunk header"),
        (b"f" * 40 + b"\r\n", "chunk header"),
        (b"5\nhello\r\n0\r\n\r\n", "chunk header"),
        (b"5\r\nhello!!\r\n0\r\n\r\n", "chunk footer"),
    ],
    ids=["not-hex", "negative", "overflow", "bare-lf-after-size", "data-longer-than-size"],
)
def test_invalid_chunk_after_a_valid_head(body: bytes, words: str) -> None:
    codec = H11ServerCodec()
    codec.receive_data(b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert type(codec.next_event()) is RequestHead
    with pytest.raises(ProtocolError) as caught:
        next_request(codec)
    assert caught.value.status == 400
    assert words in str(caught.value)


def test_body_cut_short_by_eof_is_a_bad_request() -> None:
    err = rejected([POST[:-2]], eof=True)
    assert err.status == 400


# -- Hypothesis: any bytes, any split -------------------------------------------------------

TOKENS = [
    b"GET",
    b"POST",
    b" ",
    b"/",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"\r\n",
    b"\n",
    b"\r",
    b"\t",
    b":",
    b"Host: a",
    b"Content-Length: 3",
    b"Content-Length: 1",
    b"Transfer-Encoding: chunked",
    b"Expect: 100-continue",
    b"Connection: close",
    b"0",
    b"3",
    b"abc",
    b"\x00",
    b"\xff",
]
request_like = st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join)


def serve_any(pieces: Sequence[bytes], *, eof: bool, max_head_size: int = 60 * 1024) -> Event | list[Event]:
    """The events, or the error as ("error", status, remote): anything else escapes and fails."""
    try:
        return serve(pieces, eof=eof, max_head_size=max_head_size)
    except ProtocolError as err:
        return ("error", err.status, err.remote)


@given(data=st.binary(max_size=300) | request_like, eof=st.booleans(), cuts=st.lists(st.integers(0, 300)))
# Found by Hypothesis: a bare LF before the size limit was a 400 or a 431 depending on the split.
@example(data=b"\x00" * 51 + b"\n" + b"\x00" * 100, eof=False, cuts=[52])
def test_server_codec_raises_only_protocol_error_however_split(
    data: bytes, eof: bool, cuts: list[int]
) -> None:
    whole = serve_any(split(data), eof=eof, max_head_size=128)
    assert serve_any(split(data, cuts), eof=eof, max_head_size=128) == whole
    if isinstance(whole, tuple):
        assert whole[1:] in [(400, True), (413, True), (431, True), (501, True)]


@given(
    requests=st.lists(st.sampled_from(VALID), min_size=1, max_size=4),
    blank_lines=st.lists(st.integers(0, 2), min_size=4, max_size=4),
    data=st.data(),
)
def test_splitting_valid_requests_never_changes_the_events(
    requests: list[tuple[bytes, list[Event]]], blank_lines: list[int], data: st.DataObject
) -> None:
    stream = b"".join(
        b"\r\n" * blank + request for blank, (request, _) in zip(blank_lines, requests, strict=False)
    )
    expected = [event for _, events in requests for event in events]
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    assert serve(split(stream, cuts)) == expected


@given(case=st.sampled_from(BAD_CASES), data=st.data())
def test_splitting_a_bad_head_never_changes_the_error(
    case: tuple[bytes, int, str], data: st.DataObject
) -> None:
    bad, status, words = case
    cuts = data.draw(st.lists(st.integers(0, len(bad)), max_size=30))
    err = rejected(split(bad, cuts))
    assert err.status == status
    assert words in str(err)


# -- the client codec (upstream side) -------------------------------------------------------


def fetch(
    response: Iterable[bytes], *, method: bytes = b"GET", eof: bool = False, body: bytes = b""
) -> list[Event]:
    """Send one request with a client codec, then feed it the ``response`` pieces."""
    codec = H11ClientCodec()
    headers = [(b"host", b"example.com")]
    if body:
        headers.append((b"content-length", b"%d" % len(body)))
    codec.send_request_head(method, b"/", headers)
    if body:
        codec.send_data(body)
    codec.send_end()
    events: list[Event] = []
    for piece in [*response, b""] if eof else response:
        codec.receive_data(piece)
        while (event := codec.next_event()) is not NEED_DATA:
            events.append(norm(event))
            if event is CLOSED:
                return merge_data(events)
    return merge_data(events)


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
OK_EVENTS: list[Event] = [
    ("response", 200, ((b"content-length", b"5"),), b"1.1", b"OK"),
    ("data", b"hello"),
    ("end", ()),
]


def test_client_request_bytes() -> None:
    codec = H11ClientCodec()
    head = codec.send_request_head(
        b"POST", b"/up", [(b"host", b"example.com"), (b"transfer-encoding", b"chunked")]
    )
    assert head == b"POST /up HTTP/1.1\r\nhost: example.com\r\ntransfer-encoding: chunked\r\n\r\n"
    assert codec.send_data(b"hello") == b"5\r\nhello\r\n"
    assert codec.send_end([(b"x-checksum", b"abc")]) == b"0\r\nx-checksum: abc\r\n\r\n"


def test_client_request_the_codec_cannot_send_is_our_fault() -> None:
    with pytest.raises(ProtocolError) as caught:
        H11ClientCodec().send_request_head(b"GET", b"/", [(b"host", b"a\r\nx-injected: 1")])
    assert (caught.value.status, caught.value.remote) == (400, False)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (OK, OK_EVENTS),
        (
            b"HTTP/1.1 100 Continue\r\n\r\n" + OK,
            [("informational", 100, ()), *OK_EVENTS],
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
            [
                ("response", 200, ((b"transfer-encoding", b"chunked"),), b"1.1", b"OK"),
                ("data", b"hello"),
                ("end", ((b"x-t", b"1"),)),
            ],
        ),
    ],
    ids=["content-length", "100-continue-first", "chunked-with-trailers"],
)
def test_client_parses_responses_however_split(response: bytes, expected: list[Event]) -> None:
    assert fetch([response]) == expected
    assert fetch(bytewise(response)) == expected


def test_client_response_to_head_has_no_body() -> None:
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    assert fetch([response], method=b"HEAD") == [
        ("response", 200, ((b"content-length", b"5"),), b"1.1", b"OK"),
        ("end", ()),
    ]


def test_client_body_delimited_by_close() -> None:
    response = b"HTTP/1.1 200 OK\r\n\r\nall of it"
    assert fetch([response], eof=True) == [
        ("response", 200, (), b"1.1", b"OK"),
        ("data", b"all of it"),
        ("end", ()),
        ("closed",),
    ]


def test_client_keep_alive_cycle() -> None:
    codec = H11ClientCodec()
    codec.send_request_head(b"GET", b"/", [(b"host", b"example.com")])
    assert not codec.start_next_cycle()  # the request is not even ended
    codec.send_end()
    codec.receive_data(OK)
    while type(codec.next_event()) is not EndOfMessage:
        pass
    assert codec.start_next_cycle()
    codec.send_request_head(b"GET", b"/", [(b"host", b"example.com")])
    codec.send_end()
    codec.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    while type(codec.next_event()) is not EndOfMessage:
        pass
    assert not codec.start_next_cycle()


@pytest.mark.parametrize(
    ("response", "eof"),
    [
        (b"HTTP/1.1 OK\r\n\r\n", False),
        (b"SPDY/3 200 OK\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", True),
        (b"HTTP/1.1 200 OK\r\nContent-Le", True),
    ],
    ids=[
        "no-status-code",
        "not-http",
        "two-content-lengths",
        "negative-content-length",
        "invalid-chunk-size",
        "body-cut-short",
        "head-cut-short",
    ],
)
def test_client_bad_response_is_a_502(response: bytes, eof: bool) -> None:
    with pytest.raises(ProtocolError) as caught:
        fetch([response], eof=eof)
    assert caught.value.status == 502
    assert caught.value.remote
    assert str(caught.value).startswith("upstream: ")


@given(
    data=st.binary(max_size=300)
    | st.lists(st.sampled_from([*TOKENS, b"HTTP/1.1 200 OK", b"100"])).map(b"".join),
    eof=st.booleans(),
    method=st.sampled_from([b"GET", b"HEAD"]),
    cuts=st.lists(st.integers(0, 300)),
)
def test_client_codec_raises_only_protocol_error_however_split(
    data: bytes, eof: bool, method: bytes, cuts: list[int]
) -> None:
    def outcome(pieces: list[bytes]) -> Event | list[Event]:
        try:
            return fetch(pieces, method=method, eof=eof)
        except ProtocolError as err:
            return ("error", err.status, err.remote)

    whole = outcome(split(data))
    assert outcome(split(data, cuts)) == whole
    if isinstance(whole, tuple):
        assert whole[1:] == (502, True)
