"""The fast HTTP/1.1 codec against the reference (h11) codec: same events, same rejections.

Differential, sans-IO: generated requests (valid, and mutated byte by byte) are fed to
both codecs in the same random splits; the request heads, the body bytes, the trailers
and the status of any rejection must agree. Responses each codec writes must read back
the same through an independent parser (h11's client side).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import h11
import pytest
import structlog
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import meshcore
from meshcore.errors import ProtocolError
from meshcore.http.codec import (
    NEED_DATA,
    Data,
    EndOfMessage,
    Informational,
    RequestHead,
    ResponseHead,
    ServerCodec,
)
from meshcore.http.h1 import H11ClientCodec, H11ServerCodec
from meshcore.http.h1fast import FastClientCodec, FastServerCodec
from meshcore.http.h1fast import _common as fast_common
from meshcore.http.messages import ParsedHeaders
from meshcore.testing.client import IncompleteResponse, fetch
from meshcore.testing.harness import http_proxy_config, start_proxy
from meshcore.testing.upstreams import serve_upstream

Outcome = tuple[list[Any], int | None]


def run(codec: ServerCodec, chunks: list[bytes], eof: bool) -> Outcome:
    """Feed ``chunks``; collect heads, body bytes and trailers of the first request; or the error status."""
    seen: list[Any] = []
    body = b""
    try:
        for chunk in [*chunks, *([b""] if eof else [])]:
            codec.receive_data(chunk)
            while True:
                event = codec.next_event()
                if type(event) is RequestHead:
                    seen.append(("head", event.method, event.target, event.http_version, list(event.headers)))
                elif type(event) is Data:
                    body += event.data
                elif type(event) is EndOfMessage:
                    seen.append(("body", body))
                    seen.append(("end", event.trailers or []))
                    return seen, None
                else:  # NEED_DATA or CLOSED
                    break
    except ProtocolError as err:
        return seen[:1] if seen else [], err.status
    if body:
        seen.append(("partial", body))
    return seen, None


def both(raw: bytes, splits: list[int], eof: bool = True) -> tuple[Outcome, Outcome]:
    chunks, last = [], 0
    for cut in sorted(s % (len(raw) + 1) for s in splits):
        chunks.append(raw[last:cut])
        last = cut
    chunks.append(raw[last:])
    chunks = [c for c in chunks if c]
    return run(H11ServerCodec(), chunks, eof), run(FastServerCodec(), chunks, eof)


TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789!#$%&'*+.^_`|~", min_size=1, max_size=12)
VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH"]))
    target = "/" + draw(st.text(alphabet="abcxyz/?=&%-._~0123456789", max_size=20))
    version = draw(st.sampled_from(["1.1", "1.1", "1.0"]))
    headers = (
        [("Host", draw(st.sampled_from(["a", "example.com:8080", "[::1]"])))] if version == "1.1" else []
    )
    headers += draw(st.lists(st.tuples(TOKEN, VALUE), max_size=5))
    body = draw(st.binary(max_size=50))
    framing = draw(st.sampled_from(["length", "chunked", "none"]))
    if framing == "length":
        headers.append(("Content-Length", str(len(body))))
    elif framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
    head = f"{method} {target} HTTP/{version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    raw = head.encode("latin-1")
    if framing == "length":
        raw += body
    elif framing == "chunked":
        pieces = draw(st.lists(st.binary(min_size=1, max_size=10), max_size=4))
        raw += b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n" + draw(TRAILERS)
    return raw


# A trailer section (with its blank line): none, good fields, or the bad lines a proxy must refuse.
TRAILER_LINE = st.one_of(
    st.tuples(TOKEN, VALUE).map(lambda f: f"{f[0]}: {f[1]}\r\n".encode("latin-1")),
    st.sampled_from([b" folded\r\n", b"\tfolded\r\n", b"x: bare-lf\n", b"x: nul\0\r\n", b"x: cr\r y\r\n"]),
)
TRAILERS = st.lists(TRAILER_LINE, max_size=3).map(lambda lines: b"".join(lines) + b"\r\n")


SPLITS = st.lists(st.integers(min_value=0, max_value=10_000), max_size=6)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), SPLITS)
def test_valid_requests_give_the_same_events(raw: bytes, splits: list[int]) -> None:
    reference, fast = both(raw, splits)
    assert fast == reference


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests(),
    st.lists(st.tuples(st.integers(0, 10_000), st.binary(min_size=0, max_size=3)), max_size=3),
    SPLITS,
)
def test_mutated_requests_are_accepted_or_rejected_alike(
    raw: bytes, mutations: list[tuple[int, bytes]], splits: list[int]
) -> None:
    data = bytearray(raw)
    for position, replacement in mutations:
        at = position % (len(data) + 1)
        data[at : at + 1] = replacement
    reference, fast = both(bytes(data), splits)
    assert fast == reference


TRICKY = [
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",  # obs-fold
    b"GET / HTTP/1.1\nHost: a\n\n",  # bare LF
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n",
    b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
    b"GET / HTTP/1.1\r\nHost: a",
    b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/0.1\r\nContent-Length: 5555555555555555555555555555553\r\n\r\nabc",  # fuzzer's find
    b"POST / HTTP/0.1\r\nContent-Length: 5555555555555555555\r\n\r\nabc",
    b"",
]


def test_tricky_inputs_agree() -> None:
    for raw in TRICKY:
        for splits in ([], [1], [5, 17, 30]):
            for eof in (True, False):
                reference, fast = both(raw, splits, eof)
                assert fast == reference, raw


def test_http10_with_transfer_encoding_is_rejected_by_both() -> None:
    raw = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    for codec in (H11ServerCodec(), FastServerCodec()):
        assert run(codec, [raw], eof=False) == ([], 400)


def test_oversized_heads_get_431_from_both() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 5000 + b"\r\n\r\n"
    for codec in (H11ServerCodec(max_head_size=4096), FastServerCodec(max_head_size=4096)):
        assert run(codec, [raw], eof=False)[1] == 431


# -- responses: what each codec writes reads back the same -------------------------------------


def read_back(wire: bytes, method: bytes) -> list[Any]:
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("host", "a")]))
    client.send(h11.EndOfMessage())
    client.receive_data(wire)
    client.receive_data(b"")
    out: list[Any] = []
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
            return out
        if isinstance(event, h11.Response):
            framing = {n: v for n, v in event.headers if n in (b"content-length", b"transfer-encoding")}
            others = [(n, v) for n, v in event.headers if n not in (b"content-length", b"transfer-encoding")]
            out.append(("response", event.status_code, others, framing.get(b"content-length")))
        elif isinstance(event, h11.Data):
            out.append(("data", bytes(event.data)))
        elif isinstance(event, h11.EndOfMessage):
            out.append(("end", list(event.headers)))
            return out


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([b"GET", b"HEAD", b"POST"]),
    st.sampled_from([200, 201, 204, 304, 404, 500, 503]),
    st.lists(st.tuples(TOKEN, VALUE), max_size=4),
    st.lists(st.binary(min_size=1, max_size=20), max_size=3),
    st.booleans(),
)
def test_responses_read_back_the_same(
    method: bytes, status: int, headers: list[tuple[str, str]], chunks: list[bytes], with_length: bool
) -> None:
    raw_headers = [
        (n.encode(), v.strip().encode())
        for n, v in headers
        if n.lower() not in ("content-length", "transfer-encoding", "connection")
    ]
    body = b"".join(chunks)
    if with_length:
        raw_headers.append((b"content-length", str(len(body)).encode()))
    request = b"%s / HTTP/1.1\r\nhost: a\r\n\r\n" % method
    results = []
    for codec in (H11ServerCodec(), FastServerCodec()):
        codec.receive_data(request)
        while codec.next_event() is not NEED_DATA:
            pass
        wire = codec.send_response_head(status, raw_headers)
        no_body = method == b"HEAD" or status in (204, 304)
        if not no_body:
            for chunk in chunks:
                wire += codec.send_data(chunk)
        wire += codec.send_end()
        results.append(read_back(wire, method))
    assert results[1] == results[0]


# -- the client side: responses in, requests out ------------------------------------------------


def run_client(codec: Any, method: bytes, chunks: list[bytes], eof: bool) -> Outcome:
    """Send a request with ``method``; feed response ``chunks``; collect events or the error."""
    codec.send_request_head(method, b"/", [(b"host", b"a")])
    codec.send_end()
    seen: list[Any] = []
    body = b""
    try:
        for chunk in [*chunks, *([b""] if eof else [])]:
            codec.receive_data(chunk)
            closed = not chunk  # after EOF, whether the connection "could" be reused is moot
            while True:
                event = codec.next_event()
                if type(event) is ResponseHead:
                    seen.append(("head", event.status, list(event.headers), event.http_version))
                elif type(event) is Informational:
                    seen.append(("informational", event.status, list(event.headers)))
                    if event.status == 101:
                        return seen, None
                elif type(event) is Data:
                    body += event.data
                elif type(event) is EndOfMessage:
                    seen.append(("body", body))
                    seen.append(("end", event.trailers or []))
                    if not closed:
                        seen.append(("reusable", codec.start_next_cycle()))
                    return seen, None
                else:
                    break
    except ProtocolError as err:
        return seen[:1] if seen else [], err.status
    if body:
        seen.append(("partial", body))
    return seen, None


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    status = draw(st.sampled_from([100, 101, 200, 201, 204, 301, 304, 404, 500, 503]))
    version = draw(st.sampled_from(["1.1", "1.1", "1.0"]))
    reason = draw(st.sampled_from(["", " OK", " Not Found", " x y"]))
    headers = draw(st.lists(st.tuples(TOKEN, VALUE), max_size=4))
    body = draw(st.binary(max_size=40))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    if framing == "length":
        headers.append(("Content-Length", str(len(body))))
    elif framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
    if draw(st.booleans()):
        headers.append(("Connection", draw(st.sampled_from(["close", "keep-alive"]))))
    head = f"HTTP/{version} {status}{reason}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    raw = head.encode("latin-1")
    if framing == "chunked":
        raw += (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n" + draw(TRAILERS)
    else:
        raw += body
    # Sometimes bytes nobody asked for: the connection must not be reused after them.
    return raw + draw(st.sampled_from([b"", b"", b"", b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nX"]))


def both_clients(method: bytes, raw: bytes, splits: list[int], eof: bool = True) -> tuple[Outcome, Outcome]:
    chunks, last = [], 0
    for cut in sorted(s % (len(raw) + 1) for s in splits):
        chunks.append(raw[last:cut])
        last = cut
    chunks.append(raw[last:])
    chunks = [c for c in chunks if c]
    return run_client(H11ClientCodec(), method, chunks, eof), run_client(
        FastClientCodec(), method, chunks, eof
    )


METHODS = st.sampled_from([b"GET", b"HEAD", b"POST"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(METHODS, responses(), SPLITS, st.booleans())
def test_client_valid_responses_give_the_same_events(
    method: bytes, raw: bytes, splits: list[int], eof: bool
) -> None:
    reference, fast = both_clients(method, raw, splits, eof)
    assert fast == reference


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    METHODS,
    responses(),
    st.lists(st.tuples(st.integers(0, 10_000), st.binary(min_size=0, max_size=3)), max_size=3),
    SPLITS,
)
def test_client_mutated_responses_are_accepted_or_rejected_alike(
    method: bytes, raw: bytes, mutations: list[tuple[int, bytes]], splits: list[int]
) -> None:
    data = bytearray(raw)
    for position, replacement in mutations:
        at = position % (len(data) + 1)
        data[at : at + 1] = replacement
    reference, fast = both_clients(method, bytes(data), splits)
    assert fast == reference


TRICKY_RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nX",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nX",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456789\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 000000000000000000002\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 600 Nope\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 099 Nope\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    b"HTTP/1.1 200 OK\r\nX: a\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\0\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\r\n b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\r\n\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + b"X: " + b"v" * 70_000 + b"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: " + b"v" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * 17 + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * 16 + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
    b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"\x16\x03\x01",
]


def test_tricky_responses_agree() -> None:
    for raw in TRICKY_RESPONSES:
        for method in (b"GET", b"HEAD"):
            for splits in ([], [1], [5, 17, 30], list(range(0, len(raw), max(7, len(raw) // 50)))):
                for eof in (True, False):
                    reference, fast = both_clients(method, raw, splits, eof)
                    assert fast == reference, (raw[:100], method, splits, eof)


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokX",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\r\n",
    ],
)
def test_bytes_after_a_response_make_the_connection_unusable(raw: bytes) -> None:
    for codec in (H11ClientCodec(), FastClientCodec()):
        assert run_client(codec, b"GET", [raw], eof=False)[0][-1] == ("reusable", False)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\r\n b\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: "
            + b"v" * 70_000
            + b"\r\n\r\n",
            431,
        ),
    ],
)
def test_request_framing_corners_rejected_by_both(raw: bytes, status: int) -> None:
    for splits in ([], [60], [len(raw) - 3]):
        reference, fast = both(raw, splits, eof=False)
        assert reference == fast
        assert reference[1] == status


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([b"GET", b"POST", b"PUT"]),
    st.lists(st.tuples(TOKEN, VALUE), max_size=4),
    st.lists(st.binary(min_size=1, max_size=20), max_size=3),
    st.sampled_from(["length", "chunked", "none"]),
)
def test_client_requests_read_back_the_same(
    method: bytes, headers: list[tuple[str, str]], chunks: list[bytes], framing: str
) -> None:
    raw_headers = [(b"host", b"a")]
    raw_headers += [
        (n.encode(), v.strip().encode())
        for n, v in headers
        if n.lower() not in ("content-length", "transfer-encoding", "connection", "host")
    ]
    body = b"".join(chunks)
    if framing == "length":
        raw_headers.append((b"content-length", str(len(body)).encode()))
    elif framing == "chunked":
        raw_headers.append((b"transfer-encoding", b"chunked"))
    else:
        chunks = []
    results = []
    for codec in (H11ClientCodec(), FastClientCodec()):
        wire = codec.send_request_head(method, b"/x", raw_headers)
        for chunk in chunks:
            wire += codec.send_data(chunk)
        wire += codec.send_end()
        server = h11.Connection(h11.SERVER)
        server.receive_data(wire)
        events: list[tuple[object, ...]] = []
        while (event := server.next_event()) is not h11.NEED_DATA:
            if isinstance(event, h11.Request):
                events.append(("request", event.method, event.target, list(event.headers)))
            elif isinstance(event, h11.Data):
                events.append(("data", bytes(event.data)))
            elif isinstance(event, h11.EndOfMessage):
                events.append(("end",))
                break
        results.append(events)
    assert results[1] == results[0]


# -- end to end: the fast codecs on both sides of a real proxy ----------------------------------


async def test_fast_codecs_end_to_end(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(30):
        upstream = await nursery.start(serve_upstream)
        config = http_proxy_config([upstream], manager={"codec": "fast"}, cluster={"codec": "fast"})
        proxy = await start_proxy(nursery, config)
        address = proxy.address("ingress")
        url = f"http://{address[0]}:{address[1]}"

        ok = await fetch(address, "/bytes/5")
        assert (ok.status, ok.body) == (200, b"xxxxx")
        head = await fetch(address, "/bytes/5", method="HEAD")
        assert (head.status, head.body, head.header("content-length")) == (200, b"", "5")
        for status in (204, 304):
            empty = await fetch(address, f"/status/{status}")
            assert (empty.status, empty.body) == (status, b"")
        with pytest.raises(IncompleteResponse):
            await fetch(address, "/reset/1000")

        payload = tmp_path / "payload.bin"
        data = bytes(range(256)) * 40_000  # 10 MB
        await trio.Path(payload).write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        for extra in ([], ["-H", "Transfer-Encoding: chunked"], ["-H", "Expect: 100-continue"]):
            done = await trio.run_process(
                ["curl", "-sS", "--data-binary", f"@{payload}", *extra, f"{url}/echo"],
                capture_stdout=True,
            )
            assert hashlib.sha256(done.stdout).hexdigest() == digest, extra

        # Keep-alive on both sides: curl reuses one downstream connection, the proxy one upstream.
        before = proxy.stats.value("cluster_upstream_cx_total", cluster="backend")
        done = await trio.run_process(
            ["curl", "-sS", "-v", f"{url}/bytes/1", f"{url}/bytes/2", f"{url}/bytes/3"],
            capture_stdout=True,
            capture_stderr=True,
        )
        assert done.stdout == b"x" * 6
        assert b"Re-using existing connection" in done.stderr
        assert proxy.stats.value("cluster_upstream_cx_total", cluster="backend") - before <= 1
        nursery.cancel_scope.cancel()


# -- header checks batched per block: the same verdict as field by field -----------------------

FIELD_BYTES = st.binary(max_size=6) | st.sampled_from(
    # b"1\r\nx: 1" is a value that, written as is, reads back as two valid header lines.
    [b"a", b"x-y", b"v w", b"a\nb", b"\n", b"", b" a", b"a:b", b"1\r\nx: 1", b"a\r\n"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(FIELD_BYTES, FIELD_BYTES), min_size=1, max_size=5))
def test_header_block_checks_agree_with_field_by_field(headers: list[tuple[bytes, bytes]]) -> None:
    """One regex per block (names, values joined) refuses exactly what one per field refuses."""
    token, field_value = fast_common.TOKEN, fast_common.FIELD_VALUE
    valid = all(token.fullmatch(n) and field_value.fullmatch(v) for n, v in headers)
    try:
        fast_common.write_head(b"HTTP/1.1 200 OK\r\n", headers, error="bad", status=502)
    except ProtocolError:
        written = False
    else:
        written = True
    assert written == valid
    lines = [n + b":" + v for n, v in headers]
    split = [line.partition(b":")[::2] for line in lines]
    lines_valid = all(token.fullmatch(n) and field_value.fullmatch(v.strip(b" \t")) for n, v in split)
    try:
        parsed = fast_common.field_lines(lines)
    except ProtocolError:
        assert not lines_valid
    else:
        assert lines_valid
        assert parsed == [(n.lower(), v.strip(b" \t")) for n, v in split]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(FIELD_BYTES, FIELD_BYTES), min_size=1, max_size=6), st.data())
def test_pairs_known_good_skip_only_their_own_check(headers: list[tuple[bytes, bytes]], data: Any) -> None:
    """write_head's ``checked`` range: the same verdict as a full check when the pairs in it are good."""
    token, field_value = fast_common.TOKEN, fast_common.FIELD_VALUE
    good = [bool(token.fullmatch(n) and field_value.fullmatch(v)) for n, v in headers]
    start = data.draw(st.integers(0, len(headers)))
    stop = data.draw(st.integers(start, len(headers)))
    checked = range(start, stop)
    if not all(good[i] for i in checked):
        return  # only our parser's pairs are ever passed as checked
    verdicts = []
    for known in (range(0), checked):
        try:
            fast_common.write_head(b"GET / HTTP/1.1\r\n", headers, error="bad", status=400, checked=known)
        except ProtocolError:
            verdicts.append(False)
        else:
            verdicts.append(True)
    assert verdicts == [all(good)] * 2


@pytest.mark.parametrize("side", ["server", "client"])
def test_a_trailer_that_would_split_the_message_is_refused_by_both(side: str) -> None:
    """Trailers go out checked as header lines are, by the fast codecs as by h11."""
    bad = [(b"grpc-status", b"0\r\nx-injected: 1")]
    for codec in _chunked_senders(side):
        with pytest.raises(ProtocolError):
            codec.send_end(bad)
    for codec in _chunked_senders(side):
        assert codec.send_end([(b"grpc-status", b"0")]).endswith(b"0\r\ngrpc-status: 0\r\n\r\n")


def _chunked_senders(side: str) -> list[Any]:
    """A fast and an h11 codec of ``side``, each in the middle of a chunked message it sends."""
    chunked = [(b"host", b"a"), (b"transfer-encoding", b"chunked")]
    if side == "client":
        codecs: list[Any] = [FastClientCodec(), H11ClientCodec()]
        for codec in codecs:
            codec.send_request_head(b"POST", b"/", chunked)
        return codecs
    codecs = [FastServerCodec(), H11ServerCodec()]
    for codec in codecs:
        codec.receive_data(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        assert type(codec.next_event()) is RequestHead
        codec.next_event()  # the end of the empty request body
        codec.send_response_head(200, [(b"transfer-encoding", b"chunked")])
    return codecs


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(FIELD_BYTES, FIELD_BYTES), min_size=0, max_size=5),
    st.sampled_from([b":", b": ", b":\t "]),
)
def test_header_section_regex_agrees_with_line_by_line(
    headers: list[tuple[bytes, bytes]], separator: bytes
) -> None:
    """field_block (one regex over the section, as the codecs read it) gives field_lines' fields or error."""
    block = b"".join(n + separator + v + b"\r\n" for n, v in headers)
    try:
        expected: object = fast_common.field_lines(block.split(b"\r\n")[:-1])
    except ProtocolError as err:
        expected = str(err)
    try:
        got: object = fast_common.field_block(block)
    except ProtocolError as err:
        got = str(err)
    assert got == expected


# -- header pairs our parser checked are not checked again, unless a filter changed them ---------


class _Inject:
    """Changes the request's headers as ``x-how`` says, in ways only the writer's check can refuse."""

    def __init__(self, _config: None, _context: meshcore.FilterContext) -> None:
        pass

    def __call__(self, request: meshcore.Request, call_next: meshcore.HttpHandler) -> Any:
        raw = request.headers.raw
        how = request.headers.get("x-how")
        at = next(i for i, (name, _) in enumerate(raw) if name == b"x-a")
        if how == "replace":  # a parsed pair replaced in place: the list keeps its length
            raw[at] = (b"x-a", b"1\r\nx-injected: 1")
        elif how == "name":
            raw[at] = (b"x-a\r\nx-injected", b"1")
        elif how == "value-bytes":  # the same name object, a new value
            raw[at] = (raw[at][0], b"1\x00")
        elif how == "insert":  # before the parsed pairs: the prefix no longer matches
            raw.insert(0, (b"x-b", b"2\r\nx-injected: 1"))
        elif how == "add":
            request.headers.add("x-b", "2\r\nx-injected: 1")
        elif how == "same":  # equal bytes in new objects: still good, goes out
            raw[at] = (b"x-" + b"a", b"o" + b"k")
        elif how == "trailers":  # a reply whose trailer would split the (chunked) response
            body = meshcore.Body.from_bytes(
                b"partial", trailers=meshcore.Headers([("x-t", "1\r\nx-injected: 1")])
            )
            body.length = None  # no content-length: chunked, where trailers go
            return _answered(meshcore.Response(200, body=body))
        return call_next(request)


async def _answered(response: meshcore.Response) -> meshcore.Response:
    return response


class _InjectPlugin:
    @staticmethod
    @meshcore.hookimpl
    def meshcore_http_filters() -> list[meshcore.HttpFilterType]:
        return [meshcore.HttpFilterType(name="inject", factory=_Inject)]


async def test_a_header_a_filter_broke_is_refused_though_the_parser_checked_it(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(20):
        upstream = await nursery.start(serve_upstream)
        config = http_proxy_config(
            [upstream],
            manager={"codec": "fast"},
            cluster={"codec": "fast"},
            http_filters=["inject", "router"],
        )
        registry = meshcore.build_registry(autoload=False, plugins=[("inject", _InjectPlugin())])
        proxy = await start_proxy(nursery, config, registry=registry)
        address = proxy.address("ingress")
        for how in ("replace", "name", "value-bytes", "insert", "add"):
            with structlog.testing.capture_logs() as logs:
                refused = await fetch(address, "/anything", headers=[("x-a", "ok"), ("x-how", how)])
            assert refused.status == 400, (how, refused.body)
            assert any(entry["event"] == "request_failed" for entry in logs), (how, logs)
            assert b"x-injected" not in refused.body, how
        with structlog.testing.capture_logs() as logs, pytest.raises(IncompleteResponse):
            await fetch(address, "/anything", headers=[("x-a", "ok"), ("x-how", "trailers")])
        assert any(entry["event"] == "response_invalid" for entry in logs), logs
        same = await fetch(address, "/anything", headers=[("x-a", "ok"), ("x-how", "same")])
        assert same.status == 200
        assert ["x-a", "ok"] in json.loads(same.body)["headers"]
        nursery.cancel_scope.cancel()


# -- the other direction: response pairs the upstream side's parser checked ----------------------


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(FIELD_BYTES, FIELD_BYTES), min_size=0, max_size=4),
    st.lists(st.tuples(FIELD_BYTES, FIELD_BYTES), min_size=0, max_size=3),
)
def test_response_pairs_known_good_skip_only_their_own_check(
    known: list[tuple[bytes, bytes]], others: list[tuple[bytes, bytes]]
) -> None:
    """send_response_head's ``checked``: the same bytes, or the same refusal, as a full check.

    The known pairs are as the client codec's parser gives them (lower-case, good); those
    after them (a filter's) may be anything.
    """
    token, field_value = fast_common.TOKEN, fast_common.FIELD_VALUE
    known = [(n.lower(), v) for n, v in known if token.fullmatch(n) and field_value.fullmatch(v)]
    known = [(n, v) for n, v in known if n not in (b"content-length", b"transfer-encoding", b"connection")]
    headers = [*known, *others]
    results: list[bytes | str] = []
    for checked in (range(0), range(len(known))):
        codec = FastServerCodec()
        codec.receive_data(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        assert type(codec.next_event()) is RequestHead
        codec.next_event()
        try:
            results.append(codec.send_response_head(200, headers, checked=checked))
        except ProtocolError as err:
            results.append(str(err))
    assert results[0] == results[1]


def test_pairs_we_add_count_as_parsed_only_while_the_parsed_ones_are_unchanged() -> None:
    """ParsedHeaders.add_checked: ours go out unchecked only behind an unchanged parsed prefix."""
    headers = ParsedHeaders.parsed_from([(b"x-a", b"1")])
    headers.add_checked(b"x-request-id", b"abc")
    assert headers.unchanged(headers.raw) == 2
    headers.add("x-b", "2")  # anyone's: checked
    headers.add_checked(b"x-forwarded-proto", b"http")  # behind one of anyone's: checked too
    assert headers.unchanged(headers.raw) == 2
    replaced = ParsedHeaders.parsed_from([(b"x-a", b"1")])
    replaced.raw[0] = (b"x-a", b"1\r\nx-injected: 1")
    replaced.add_checked(b"x-request-id", b"abc")
    assert replaced.unchanged(replaced.raw) == 0


class _InjectResponse:
    """Changes the upstream's response headers as ``x-how`` says: only the writer's check can refuse them."""

    def __init__(self, _config: None, _context: meshcore.FilterContext) -> None:
        pass

    async def __call__(self, request: meshcore.Request, call_next: meshcore.HttpHandler) -> meshcore.Response:
        how = request.headers.get("x-how")
        response = await call_next(request)
        raw = response.headers.raw
        if how == "replace":  # a parsed pair replaced in place: the list keeps its length
            raw[0] = (raw[0][0], b"1\r\nx-injected: 1")
        elif how == "name":
            raw[0] = (b"x-a\r\nx-injected", b"1")
        elif how == "insert":  # before the parsed pairs: the prefix no longer matches
            raw.insert(0, (b"x-b", b"2\r\nx-injected: 1"))
        elif how == "add":
            response.headers.add("x-b", "2\r\nx-injected: 1")
        elif how == "same":  # equal bytes in new objects: still good, goes out
            raw[0] = (bytes(raw[0][0]), bytes(raw[0][1]))
            response.headers.add("x-added", "fine")
        return response


class _InjectResponsePlugin:
    @staticmethod
    @meshcore.hookimpl
    def meshcore_http_filters() -> list[meshcore.HttpFilterType]:
        return [meshcore.HttpFilterType(name="inject_response", factory=_InjectResponse)]


async def test_a_response_header_a_filter_broke_is_refused_though_the_parser_checked_it(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(20):
        upstream = await nursery.start(serve_upstream)
        config = http_proxy_config(
            [upstream],
            manager={"codec": "fast"},
            cluster={"codec": "fast"},
            http_filters=["inject_response", "router"],
        )
        registry = meshcore.build_registry(
            autoload=False, plugins=[("inject_response", _InjectResponsePlugin())]
        )
        proxy = await start_proxy(nursery, config, registry=registry)
        address = proxy.address("ingress")
        for how in ("replace", "name", "insert", "add"):
            with structlog.testing.capture_logs() as logs:
                refused = await fetch(address, "/anything", headers=[("x-how", how)])
            assert refused.status == 502, (how, refused.status, refused.headers)
            assert any(entry["event"] == "response_invalid" for entry in logs), (how, logs)
            assert all(name != "x-injected" for name, _ in refused.headers), how
        same = await fetch(address, "/anything", headers=[("x-how", "same")])
        assert same.status == 200
        assert ("x-added", "fine") in [(n.lower(), v) for n, v in same.headers]
        nursery.cancel_scope.cancel()
