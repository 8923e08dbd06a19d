"""meshcore.http.h2hpack.CachingEncoder held to hpack's Encoder (differential, sans-IO).

Any sequence of header blocks (drawn from a few, so that they repeat, with never-indexed
and indexable variants of the same fields) and table resizes: the caching encoder emits
exactly the bytes hpack's own encoder emits, and (with no resize) a decoder reads the fields
back.
"""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.http.h2hpack import CachingDecoder, CachingEncoder

FIELDS = [
    (b":status", b"200"),
    (b":status", b"404"),
    (b"content-type", b"text/plain"),
    (b"content-length", b"98"),
    (b"date", b"Thu, 03 Dec 2026 10:00:00 GMT"),
    (b"date", b"Thu, 03 Dec 2026 10:00:01 GMT"),
    (b"server", b"nginx"),
    (b"x-long", b"v" * 300),
]
FIELD = st.sampled_from(FIELDS).flatmap(
    lambda f: st.sampled_from([f, hpack.NeverIndexedHeaderTuple(*f), hpack.HeaderTuple(*f)])
)
BLOCKS = st.lists(st.lists(FIELD, min_size=1, max_size=5), min_size=1, max_size=4)
STEPS = st.lists(
    st.tuples(st.integers(0, 3), st.sampled_from([None, None, None, 0, 64, 256, 4096])), max_size=40
)


@settings(max_examples=300, deadline=None)
@given(blocks=BLOCKS, steps=STEPS)
def test_the_same_bytes_as_hpack(
    blocks: list[list[tuple[bytes, bytes]]], steps: list[tuple[int, int | None]]
) -> None:
    plain, caching, decoder = hpack.Encoder(), CachingEncoder(), hpack.Decoder()
    resized = False
    for index, resize in steps:
        if resize is not None:
            plain.header_table_size = caching.header_table_size = resize
            resized = True
            continue
        block = list(blocks[index % len(blocks)])
        ours = caching.encode(block)
        assert ours == plain.encode(block)
        if not resized:  # (hpack signals only the last of several resizes: its decoder then disagrees)
            assert decoder.decode(ours, raw=True) == [tuple(f) for f in block]


def test_a_repeated_block_comes_from_memory() -> None:
    encoder = CachingEncoder()
    head = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"server", b"nginx")]
    first = encoder.encode(list(head))  # enters the table
    second = encoder.encode(list(head))  # all indexed: remembered
    assert encoder.encode(list(head)) is second
    assert first != second
    encoder.header_table_size = 0  # evicts everything: the remembered block is stale
    assert encoder.encode(list(head)) != second


# -- CachingDecoder held to hpack's Decoder ------------------------------------------------------

NAMES = [b":method", b":path", b"user-agent", b"accept", b"cookie", b"x-custom", b"authorization"]
VALUES = [b"GET", b"/", b"/index.html", b"h2load nghttp2/1.52.0", b"*/*", b"a=1", b"", b"v" * 200]
REQUEST_FIELD = st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)).flatmap(
    lambda f: st.sampled_from([hpack.HeaderTuple(*f), hpack.NeverIndexedHeaderTuple(*f)])
)
HEADS = st.lists(st.lists(REQUEST_FIELD, min_size=1, max_size=6), min_size=1, max_size=3)
# What happens between two blocks received: the same block again, another, a damaged one, the
# peer's table resized (a size update in its next block), or our limits changed.
EVENT = st.one_of(
    st.tuples(st.just("block"), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("mutate"), st.integers(0, 2), st.integers(0, 2**16)),
    st.tuples(st.just("truncate"), st.integers(0, 2), st.integers(1, 8)),
    st.tuples(st.just("resize"), st.sampled_from([0, 64, 256, 4096, 8192]), st.booleans()),
    st.tuples(st.just("list_limit"), st.sampled_from([30, 200, 2**16]), st.booleans()),
    st.tuples(st.just("table_limit"), st.sampled_from([0, 256, 4096]), st.booleans()),
)


def _outcome(decoder: hpack.Decoder, block: bytes) -> object:
    try:
        return ("fields", [(type(f), tuple(f)) for f in decoder.decode(block, raw=True)])
    except hpack.HPACKError as err:
        return ("error", type(err))


@settings(max_examples=400, deadline=None)
@given(heads=HEADS, events=st.lists(EVENT, max_size=40), data=st.data())
def test_decoder_the_same_fields_or_error_as_hpack(
    heads: list[list[tuple[bytes, bytes]]], events: list[tuple[str, int, object]], data: st.DataObject
) -> None:
    encoder, plain, caching = hpack.Encoder(), hpack.Decoder(), CachingDecoder()
    for kind, arg, extra in events:
        if kind == "resize":
            encoder.header_table_size = arg
            continue
        if kind == "list_limit":
            plain.max_header_list_size = caching.max_header_list_size = arg
            continue
        if kind == "table_limit":
            plain.max_allowed_table_size = caching.max_allowed_table_size = arg
            continue
        block = encoder.encode(heads[arg % len(heads)], huffman=kind != "block" or bool(extra))
        if kind == "mutate" and block:
            at = int(extra) % len(block)  # type: ignore[call-overload]
            block = block[:at] + bytes([data.draw(st.integers(0, 255))]) + block[at + 1 :]
        elif kind == "truncate":
            block = block[: max(0, len(block) - int(extra))]  # type: ignore[call-overload]
        for _ in range(2):  # the second time, the caching decoder may answer from memory
            assert _outcome(caching, block) == _outcome(plain, block)


def test_a_repeated_request_block_comes_from_memory() -> None:
    encoder, decoder = hpack.Encoder(), CachingDecoder()
    head = [(b":method", b"GET"), (b":path", b"/"), (b"user-agent", b"h2load")]
    assert decoder.decode(encoder.encode(head), raw=True) == head  # literals: the table changes
    indexed = encoder.encode(head)
    first = decoder.decode(indexed, raw=True)
    assert decoder._blocks[indexed][3] == head  # remembered
    assert decoder.decode(indexed, raw=True) == first == head
    decoder.max_header_list_size = 20  # a lower limit: decoded again, and refused as hpack does
    with pytest.raises(hpack.OversizedHeaderListError):
        decoder.decode(indexed, raw=True)


def test_the_same_bytes_mean_other_fields_once_the_table_changed() -> None:
    encoder, decoder = hpack.Encoder(), CachingDecoder()
    first, second = [(b"x-custom", b"a=1")], [(b"x-custom", b"a=2")]
    for head in (first, second):
        decoder.decode(encoder.encode(head), raw=True)  # enters the table (index 62)
        indexed = encoder.encode(head)
        assert indexed == b"\xbe"  # the newest entry: the same byte for either field
        assert decoder.decode(indexed, raw=True) == head
        assert decoder.decode(indexed, raw=True) == head
