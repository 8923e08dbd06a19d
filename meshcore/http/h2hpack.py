"""An HPACK encoder and decoder that remember the header blocks that left their table as it was.

A proxy sends the same response head over and over on a connection (same status, same
upstream fields, the same Date for a second). Once every field of such a head is in the
dynamic table, hpack encodes it as a row of indexes, the same bytes each time, at about
25 Python calls a head. :class:`CachingEncoder` keeps those bytes, keyed by the exact
fields (and their types: a never-indexed field is not the same input as an indexable
one), and gives them back while the table has not changed since; any change to the table
(an entry added, a resize) makes the remembered blocks stale. It is held to hpack's own
Encoder by a differential test: the same bytes for any sequence of blocks and resizes.

The other direction is the same: a client sends the same request head over and over (the
same method, path, authority, user agent), and an upstream the same response head and
trailers (a gRPC service's ``:status``, ``content-type``, ``grpc-status``), and once it is
in both tables it comes as the same few bytes of indexes, which hpack decodes at about 35
Python calls a head.
:class:`CachingDecoder` remembers the fields of a block whose decoding changed nothing
(no entry added, no resize), keyed by its bytes, and gives them back while the table and
the limits it was checked against (header list size, table size) are as they were. A
block that fails is never remembered: it fails again the same way, in hpack. It is held
to hpack's own Decoder by a differential test: the same fields or the same error for any
sequence of blocks (valid, mutated, truncated), resizes and limit changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import hpack
from hpack.table import HeaderTable

__all__ = ["CachingDecoder", "CachingEncoder"]

_MAX_BLOCKS = 64  # remembered blocks per connection; all forgotten when full
_MAX_DECODED = 1024  # longer received blocks are not remembered (all indexes: a few bytes a field)


class _CountingTable(HeaderTable):
    """hpack's header table, counting its changes (entries added, size changed)."""

    changes = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.changes += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.changes += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


class CachingEncoder(hpack.Encoder):
    """hpack's Encoder; a block that left the table as it was is remembered and reused."""

    def __init__(self) -> None:
        super().__init__()
        self.header_table: _CountingTable = _CountingTable()
        self._blocks: dict[Any, tuple[int, bytes]] = {}

    def encode(self, headers: Iterable[Any], huffman: bool = True) -> bytes:
        """What hpack.Encoder.encode gives, from memory when the same block left the table unchanged."""
        table = self.header_table
        if not isinstance(headers, list) or not huffman or table.resized:
            return super().encode(headers, huffman)
        key = (tuple(headers), tuple(map(type, headers)))
        changes = table.changes
        hit = self._blocks.get(key)
        if hit is not None and hit[0] == changes:
            return hit[1]
        block = super().encode(headers, huffman)
        if table.changes == changes:
            if len(self._blocks) >= _MAX_BLOCKS:
                self._blocks.clear()
            self._blocks[key] = (changes, block)
        return block


class CachingDecoder(hpack.Decoder):
    """hpack's Decoder; a block whose decoding left the table as it was is remembered by its bytes."""

    def __init__(self, max_header_list_size: int = hpack.hpack.DEFAULT_MAX_HEADER_LIST_SIZE) -> None:
        super().__init__(max_header_list_size)
        self.header_table: _CountingTable = _CountingTable()
        self._blocks: dict[bytes, tuple[int, int, int, list[Any]]] = {}

    def decode(self, data: bytes, raw: bool = False) -> Iterable[Any]:
        """What hpack.Decoder.decode gives (or raises), from memory for a block seen with the table as it is."""
        if not raw or len(data) > _MAX_DECODED:
            return super().decode(data, raw)
        key = bytes(data)
        table = self.header_table
        changes = table.changes
        hit = self._blocks.get(key)
        if (
            hit is not None
            and hit[0] == changes
            and hit[1] == self.max_header_list_size
            and hit[2] == self.max_allowed_table_size
        ):
            return list(hit[3])
        headers = super().decode(key, raw)
        if table.changes == changes:
            if len(self._blocks) >= _MAX_BLOCKS:
                self._blocks.clear()
            fields = list(headers)
            self._blocks[key] = (changes, self.max_header_list_size, self.max_allowed_table_size, fields)
            return list(fields)
        return headers
