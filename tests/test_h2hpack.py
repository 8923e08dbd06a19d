"""meshcore.http.h2hpack.CachingEncoder held to hpack's Encoder (differential, sans-IO).

Any sequence of header blocks (drawn from a few, so that they repeat, with never-indexed
and indexable variants of the same fields) and table resizes: the caching encoder emits
exactly the bytes hpack's own encoder emits, and (with no resize) a decoder reads the fields
back.
"""

from __future__ import annotations

import hpack
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.http.h2hpack import CachingEncoder

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
