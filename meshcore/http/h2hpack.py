"""An HPACK encoder that remembers the header blocks it encoded without changing its table.

A proxy sends the same response head over and over on a connection (same status, same
upstream fields, the same Date for a second). Once every field of such a head is in the
dynamic table, hpack encodes it as a row of indexes, the same bytes each time, at about
25 Python calls a head. :class:`CachingEncoder` keeps those bytes, keyed by the exact
fields (and their types: a never-indexed field is not the same input as an indexable
one), and gives them back while the table has not changed since; any change to the table
(an entry added, a resize) makes the remembered blocks stale. It is held to hpack's own
Encoder by a differential test: the same bytes for any sequence of blocks and resizes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import hpack
from hpack.table import HeaderTable

__all__ = ["CachingEncoder"]

_MAX_BLOCKS = 64  # remembered blocks per connection; all forgotten when full


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
