"""Work in a worker thread beside the event loop, without starving the loop of the interpreter.

CPU-bound Python in a worker thread (checking a Snapshot of 10,000 routes, parsing its file)
shares the interpreter lock with the loop. The loop releases it at every system call (each
``send``, ``recv``, ``epoll_wait``) and must then wait for the worker to hand it back, which
the interpreter forces only every switch interval (5 ms by default): with traffic flowing,
one loop iteration makes dozens of system calls, and bench/config_growth.py saw the loop
stall 100-500 ms while a worker checked a Snapshot. While a worker runs through
:func:`run_beside_loop`, the switch interval is 0.5 ms: the loop waits at most that long at
each system call, the worker loses a little to the extra switches.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import trio

__all__ = ["SWITCH_INTERVAL", "run_beside_loop"]

SWITCH_INTERVAL = 0.0005
"""Seconds between forced switches of the interpreter lock while a worker runs beside the loop."""

T = TypeVar("T")

_state = {"workers": 0, "saved": 0.0}


async def run_beside_loop(fn: Callable[[], T]) -> T:
    """``fn()`` in a worker thread (:func:`trio.to_thread.run_sync`), the switch interval lowered meanwhile.

    The interval is process-wide: it is lowered while any such worker runs, and restored
    when the last one ends.
    """
    if _state["workers"] == 0:
        _state["saved"] = sys.getswitchinterval()
        sys.setswitchinterval(min(SWITCH_INTERVAL, _state["saved"]))
    _state["workers"] += 1
    try:
        return await trio.to_thread.run_sync(fn)
    finally:
        _state["workers"] -= 1
        if _state["workers"] == 0:
            sys.setswitchinterval(_state["saved"])
