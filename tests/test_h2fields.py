"""meshcore.http.h2fields held to h2's own header pipelines (differential, sans-IO).

The server session sends response heads and trailers through fields_to_send, and takes
request heads and trailers through fields_received, with h2's normalization and validation
turned off both ways; these tests prove they agree with h2 on generated field lists: the
same fields, the same never-indexed marks, and a refusal exactly where h2 refuses.
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.exceptions
import hpack
import pytest
from h2.utilities import (
    HeaderValidationFlags,
    normalize_inbound_headers,
    normalize_outbound_headers,
    validate_headers,
    validate_outbound_headers,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.http.h2fields import fields_received, fields_to_send

NAMES = [
    b":status", b":path", b":method", b":authority", b":scheme", b":protocol", b":custom", b":STATUS",
    b"content-type", b"Content-Length", b"te", b"TE", b"connection", b"Keep-Alive", b"upgrade",
    b"transfer-encoding", b"proxy-connection", b"authorization", b"Proxy-Authorization", b"cookie",
    b"set-cookie", b" x-padded ", b"grpc-status", b"x-meshcore-flags", b"", b" ",
]  # fmt: skip
VALUES = [
    b"200",
    b"trailers",
    b" Trailers ",
    b"gzip",
    b"",
    b"  spaced  ",
    b"a" * 19,
    b"a" * 20,
    b"/",
    b"x\tY",
]

fields = st.lists(
    st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES) | st.binary(max_size=30)), max_size=8
)


def h2_pipeline(headers: list[tuple[bytes, bytes]], *, trailers: bool) -> list[Any] | None:
    """What h2 itself sends for ``headers`` (normalized, validated), or None where it refuses."""
    flags = HeaderValidationFlags(
        is_client=False, is_trailer=trailers, is_response_header=not trailers, is_push_promise=False
    )
    try:
        return list(validate_outbound_headers(normalize_outbound_headers(headers, flags), flags))
    except (h2.exceptions.ProtocolError, IndexError):  # IndexError: h2 on an empty name
        return None


def ours(headers: list[tuple[bytes, bytes]], *, trailers: bool) -> list[Any] | None:
    """fields_to_send's answer, twice: the second from memory (for a small block), the same."""
    answers: list[list[Any] | None] = []
    for _ in range(2):
        try:
            answers.append(fields_to_send(headers, trailers=trailers))
        except h2.exceptions.ProtocolError:
            answers.append(None)
    assert typed(answers[1]) == typed(answers[0])
    return answers[1]


def typed(out: list[Any] | None) -> list[tuple[bytes, bytes, bool]] | None:
    """Fields with their never-indexed mark (a plain tuple equals a NeverIndexedHeaderTuple)."""
    if out is None:
        return None
    return [(n, v, isinstance(f, hpack.NeverIndexedHeaderTuple)) for f in out for n, v in [f]]


@settings(max_examples=400, deadline=None)
@given(head=fields, status_first=st.booleans())
def test_response_heads_match_h2(head: list[tuple[bytes, bytes]], status_first: bool) -> None:
    headers = [(b":status", b"200"), *head] if status_first else head
    assert typed(ours(headers, trailers=False)) == typed(h2_pipeline(headers, trailers=False))


@settings(max_examples=300, deadline=None)
@given(trailers=fields)
def test_trailers_match_h2(trailers: list[tuple[bytes, bytes]]) -> None:
    assert typed(ours(trailers, trailers=True)) == typed(h2_pipeline(trailers, trailers=True))


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ([(b":status", b"200"), (b"content-type", b"text/plain")], False),
        ([(b"content-type", b"text/plain")], True),  # no :status
        ([(b":status", b"200"), (b"te", b"gzip")], True),
        ([(b":status", b"200"), (b"x", b"1"), (b":status", b"204")], True),
        ([(b":status", b"200"), (b":path", b"/")], True),
        ([(b":status", b"200"), (b"", b"1")], True),  # h2 itself crashes (IndexError) here
    ],
)
def test_known_cases(headers: list[tuple[bytes, bytes]], refused: bool) -> None:
    assert (ours(headers, trailers=False) is None) is refused


def test_the_fields_encode_as_h2_would_send_them() -> None:
    # End to end through h2 with its own pipeline off: the bytes on the wire are the same.
    def wire(normalize: bool) -> bytes:
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            normalize_outbound_headers=normalize,
            validate_outbound_headers=normalize,
        )
        conn = h2.connection.H2Connection(config=config)
        conn.initiate_connection()
        client = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        client.send_headers(
            1, [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "a")], end_stream=True
        )
        conn.receive_data(client.data_to_send())
        conn.data_to_send()
        head = [
            (b":status", b"200"),
            (b"Set-Cookie", b" a=b "),
            (b"authorization", b"secret"),
            (b"connection", b"close"),
        ]
        conn.send_headers(1, head if normalize else fields_to_send(head), end_stream=True)
        return conn.data_to_send()

    assert wire(normalize=False) == wire(normalize=True)


# -- inbound: request heads and trailers -----------------------------------------------------

REQUEST_NAMES = [
    b":method", b":scheme", b":authority", b":path", b":protocol", b":status", b":custom", b"",
    b"host", b"cookie", b"te", b"connection", b"content-length", b"X-Upper", b"x:colon", b"x y",
    b"x\x7f", b"accept", b"user-agent",
]  # fmt: skip
REQUEST_VALUES = [
    b"GET", b"CONNECT", b"POST", b"http", b"/", b"", b"a.test", b"b.test", b"trailers", b"Trailers",
    b"a=1", b" b=2", b"c=3 ", b"x\x00y", b"x\ry", b"x\ny", b"\tx", b"x\t", b"x y", b"websocket",
]  # fmt: skip
VALID_HEAD = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a.test"), (b":path", b"/")]
request_field = st.tuples(
    st.sampled_from(REQUEST_NAMES), st.sampled_from(REQUEST_VALUES) | st.binary(max_size=8)
)


def h2_inbound(headers: list[tuple[bytes, bytes]], *, trailers: bool) -> list[Any] | None:
    """What h2 hands over for a received block (normalized, validated), or None where it refuses."""
    flags = HeaderValidationFlags(
        is_client=False, is_trailer=trailers, is_response_header=False, is_push_promise=False
    )
    try:
        return list(validate_headers(normalize_inbound_headers(headers, flags), flags))
    except h2.exceptions.ProtocolError:
        return None


def ours_inbound(headers: list[tuple[bytes, bytes]], *, trailers: bool) -> list[Any] | None:
    """fields_received's answer, twice: the second from memory (for a small block), the same."""
    answers: list[list[Any] | None] = []
    for _ in range(2):
        try:
            answers.append(fields_received(headers, trailers=trailers))
        except h2.exceptions.ProtocolError:
            answers.append(None)
    assert typed(answers[1]) == typed(answers[0])
    return answers[1]


@settings(max_examples=600, deadline=None)
@given(
    head=st.permutations(VALID_HEAD) | st.lists(request_field, max_size=5),
    extra=st.lists(request_field, max_size=4),
    where=st.integers(0, 8),
)
def test_request_heads_match_h2(
    head: list[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]], where: int
) -> None:
    headers = [*head[:where], *extra, *head[where:]] if where % 2 else [*head, *extra]
    assert typed(ours_inbound(headers, trailers=False)) == typed(h2_inbound(headers, trailers=False))


@settings(max_examples=300, deadline=None)
@given(trailers=st.lists(request_field, max_size=5))
def test_request_trailers_match_h2(trailers: list[tuple[bytes, bytes]]) -> None:
    assert typed(ours_inbound(trailers, trailers=True)) == typed(h2_inbound(trailers, trailers=True))


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        (VALID_HEAD, False),
        ([*VALID_HEAD, (b"cookie", b"a=1"), (b"x", b"1"), (b"cookie", b"b=2")], False),
        ([(b"cookie", b"a=1"), *VALID_HEAD], False),  # h2 joins cookies (placed last) before checking
        ([*VALID_HEAD, (b"X-Upper", b"1")], True),
        ([*VALID_HEAD, (b"host", b"b.test")], True),  # :authority and host differ
        ([(b":method", b"CONNECT"), (b":authority", b"a.test:443")], False),
        ([(b":method", b"CONNECT"), (b":authority", b"a.test:443"), (b":path", b"/")], True),
        ([*VALID_HEAD, (b"x", b"a\x00b")], True),
        ([*VALID_HEAD, (b"te", b"gzip")], True),
        ([*VALID_HEAD, (b"host", b"a.test"), (b"host", b"a.test")], True),
        ([*VALID_HEAD[:2], VALID_HEAD[3], (b"host", b"a.test")], False),  # host, no :authority
        ([*VALID_HEAD[:3], (b":path", b"")], True),
    ],
)
def test_known_request_cases(headers: list[tuple[bytes, bytes]], refused: bool) -> None:
    assert (ours_inbound(headers, trailers=False) is None) is refused
    assert (h2_inbound(headers, trailers=False) is None) is refused
    # Sent by the upstream pool (normalized first: an uppercase name is lower-cased, say).
    sent = ours_or_none(headers, send=True, request=True, trailers=False)
    assert typed(sent) == typed(h2_outbound_request(headers, trailers=False))


# -- the upstream pool's side: requests sent, responses received ------------------------------


def h2_outbound_request(headers: list[tuple[bytes, bytes]], *, trailers: bool) -> list[Any] | None:
    flags = HeaderValidationFlags(
        is_client=True, is_trailer=trailers, is_response_header=False, is_push_promise=False
    )
    try:
        return list(validate_outbound_headers(normalize_outbound_headers(headers, flags), flags))
    except (h2.exceptions.ProtocolError, IndexError):  # IndexError: h2 on an empty name
        return None


def h2_inbound_response(headers: list[tuple[bytes, bytes]], *, trailers: bool) -> list[Any] | None:
    flags = HeaderValidationFlags(
        is_client=True, is_trailer=trailers, is_response_header=not trailers, is_push_promise=False
    )
    try:
        return list(validate_headers(normalize_inbound_headers(headers, flags), flags))
    except h2.exceptions.ProtocolError:
        return None


def ours_or_none(headers: list[tuple[bytes, bytes]], **kwargs: bool) -> list[Any] | None:
    send = kwargs.pop("send")
    try:
        return fields_to_send(headers, **kwargs) if send else fields_received(headers, **kwargs)
    except h2.exceptions.ProtocolError:
        return None


@settings(max_examples=600, deadline=None)
@given(
    head=st.permutations(VALID_HEAD) | st.lists(request_field, max_size=5),
    extra=st.lists(request_field | st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=4),
    where=st.integers(0, 8),
    trailers=st.booleans(),
)
def test_requests_sent_match_h2(
    head: list[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]], where: int, trailers: bool
) -> None:
    headers = [*head[:where], *extra, *head[where:]] if where % 2 else [*head, *extra]
    got = ours_or_none(headers, send=True, request=True, trailers=trailers)
    assert typed(got) == typed(h2_outbound_request(headers, trailers=trailers))


@settings(max_examples=600, deadline=None)
@given(
    head=fields | st.lists(request_field, max_size=5),
    status_first=st.booleans(),
    trailers=st.booleans(),
)
def test_responses_received_match_h2(
    head: list[tuple[bytes, bytes]], status_first: bool, trailers: bool
) -> None:
    headers = [(b":status", b"200"), *head] if status_first else head
    got = ours_or_none(headers, send=False, response=True, trailers=trailers)
    assert typed(got) == typed(h2_inbound_response(headers, trailers=trailers))


def test_remembered_blocks_keep_their_field_types_and_are_fresh_lists() -> None:
    head = [*VALID_HEAD, (b"x-a", b"1")]
    plain = fields_received([hpack.HeaderTuple(*f) for f in head])
    never = fields_received([hpack.NeverIndexedHeaderTuple(*f) for f in head])  # equal tuples, other types
    assert [type(f) for f in plain] == [hpack.HeaderTuple] * len(head)
    assert [type(f) for f in never] == [hpack.NeverIndexedHeaderTuple] * len(head)
    plain.clear()  # a caller's list is its own: the next answer is whole
    assert len(fields_received([hpack.HeaderTuple(*f) for f in head])) == len(head)
    sent = fields_to_send([(b":status", b"200"), (b"authorization", b"secret")])
    sent.clear()
    again = fields_to_send([(b":status", b"200"), (b"authorization", b"secret")])
    assert [type(f).__name__ for f in again] == ["tuple", "NeverIndexedHeaderTuple"]
