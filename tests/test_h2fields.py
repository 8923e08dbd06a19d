"""meshcore.http.h2fields held to h2's own outbound pipeline (differential, sans-IO).

The server session sends response heads and trailers through response_fields with h2's
outbound normalization and validation turned off; these tests prove the two agree on
generated field lists: the same fields, the same never-indexed marks, and a refusal
exactly where h2 refuses.
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.exceptions
import hpack
import pytest
from h2.utilities import HeaderValidationFlags, normalize_outbound_headers, validate_outbound_headers
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.http.h2fields import response_fields

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
    try:
        return response_fields(headers, trailers=trailers)
    except h2.exceptions.ProtocolError:
        return None


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
        conn.send_headers(1, head if normalize else response_fields(head), end_stream=True)
        return conn.data_to_send()

    assert wire(normalize=False) == wire(normalize=True)
