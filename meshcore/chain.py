"""Onion-shaped filter chains, L4 and L7 alike: ``await filter(item, call_next)``.

A chain is composed once per Snapshot into one handler; per connection or request it is
a plain call, with no lookup and no allocation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

__all__ = ["compose"]

T = TypeVar("T")
R = TypeVar("R")


def _bind(
    filter_: Callable[[T, Callable[[T], Awaitable[R]]], Awaitable[R]], call_next: Callable[[T], Awaitable[R]]
) -> Callable[[T], Awaitable[R]]:
    # A plain function handing back the filter's coroutine, not a coroutine awaiting it: each
    # level of the chain would otherwise add a frame that every suspension of the request (each
    # socket wait, each checkpoint) unwinds and resumes.
    def handler(item: T) -> Awaitable[R]:
        return filter_(item, call_next)

    return handler


def compose(
    filters: Sequence[Callable[[T, Callable[[T], Awaitable[R]]], Awaitable[R]]],
    end: Callable[[T], Awaitable[R]],
) -> Callable[[T], Awaitable[R]]:
    """One handler running ``filters`` in order, each calling the next; ``end`` behind the last."""
    handler = end
    for filter_ in reversed(filters):
        handler = _bind(filter_, handler)
    return handler
