"""The overload manager: a process-wide connection limit, and load shed in steps as memory runs out.

In the spirit of Envoy's overload manager, with one resource monitor (the process's
resident memory, read from /proc) and three actions, each with its own threshold as a
fraction of ``overload.max_memory``:

==================  ======================================================  =========
action              what it does                                            default
==================  ======================================================  =========
disable_keepalive   HTTP/1.1 responses say ``connection: close``; HTTP/2    0.8
                    connections get a graceful GOAWAY
reject_requests     new requests get 503 (flag ``OM``), before any filter   0.9
stop_accepting      listeners stop accepting connections (they wait in the  0.95
                    kernel's backlog) until memory falls back
==================  ======================================================  =========

Every change of an action is logged (``overload_action_started`` / ``..._stopped``) and
counted (``overload_actions_total{action}``; the gauge ``overload_action_active{action}``
says which are on, ``overload_memory_bytes`` what was last read). Connections past
``overload.max_connections`` (all listeners) or a listener's ``max_connections`` are
closed at once and counted (``overload_cx_overflow``, ``listener_cx_overflow``).
"""

from __future__ import annotations

import enum
import os
from typing import Any

import structlog
import trio

from meshcore.config import OverloadConfig
from meshcore.runtime.stats import Stats

__all__ = ["OverloadAction", "OverloadManager", "resident_memory"]

log = structlog.get_logger("meshcore.overload")

_PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_memory() -> int:
    """The process's resident memory (RSS) in bytes, from /proc/self/statm."""
    with open("/proc/self/statm", "rb") as statm:  # noqa: PTH123 - one read of a kernel file, per check
        return int(statm.read().split()[1]) * _PAGE


class OverloadAction(enum.Enum):
    """What the overload manager does as memory runs out, in the order it starts them."""

    DISABLE_KEEPALIVE = "disable_keepalive"
    REJECT_REQUESTS = "reject_requests"
    STOP_ACCEPTING = "stop_accepting"


class OverloadManager:
    """Watches the process's memory and the connection count of all listeners.

    The hot paths read plain attributes (:attr:`keepalive_disabled`, :attr:`rejecting`);
    :meth:`run` updates them every ``check_interval``.
    """

    def __init__(self, stats: Stats, *, memory: Any = resident_memory) -> None:
        self.config = OverloadConfig()
        self.connections = 0
        self.keepalive_disabled = False
        self.rejecting = False
        self.accepting = trio.Event()
        self.accepting.set()
        self.accept_scopes: set[trio.CancelScope] = set()  # listeners waiting in accept()
        self._memory = memory
        self._wake = trio.Event()
        self._active: set[OverloadAction] = set()
        self._stat_memory = stats.gauge("overload_memory_bytes")
        self._stat_overflow = stats.counter("overload_cx_overflow")
        self.stat_rejected = stats.counter("overload_rq_rejected")
        self._stat_active = {a: stats.gauge("overload_action_active", action=a.value) for a in OverloadAction}
        self._stat_started = {
            a: stats.counter("overload_actions_total", action=a.value) for a in OverloadAction
        }

    def configure(self, config: OverloadConfig) -> None:
        """Take a Snapshot's settings; check at once against them."""
        self.config = config
        self._wake.set()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Check memory every ``check_interval`` (and at each new config), until cancelled."""
        task_status.started()
        while True:
            self.check()
            self._wake = trio.Event()
            with trio.move_on_after(float(self.config.check_interval) or 1.0):
                await self._wake.wait()

    def check(self) -> None:
        """Read the memory and start or stop each action by its threshold."""
        config = self.config
        if not config.max_memory:
            wanted: set[OverloadAction] = set()
        else:
            memory = self._memory()
            self._stat_memory.value = memory
            ratio = memory / config.max_memory
            thresholds = {
                OverloadAction.DISABLE_KEEPALIVE: config.disable_keepalive_at,
                OverloadAction.REJECT_REQUESTS: config.reject_requests_at,
                OverloadAction.STOP_ACCEPTING: config.stop_accepting_at,
            }
            wanted = {action for action, at in thresholds.items() if ratio >= at}
        for action in OverloadAction:
            if (action in wanted) == (action in self._active):
                continue
            if action in wanted:
                self._active.add(action)
                self._stat_started[action].value += 1
                self._stat_active[action].value = 1
                log.warning(
                    "overload_action_started",
                    action=action.value,
                    memory=self._stat_memory.value,
                    max_memory=int(config.max_memory),
                )
            else:
                self._active.discard(action)
                self._stat_active[action].value = 0
                log.info("overload_action_stopped", action=action.value, memory=self._stat_memory.value)
        self.keepalive_disabled = OverloadAction.DISABLE_KEEPALIVE in self._active
        self.rejecting = OverloadAction.REJECT_REQUESTS in self._active
        if OverloadAction.STOP_ACCEPTING in self._active:
            if self.accepting.is_set():
                self.accepting = trio.Event()
                for scope in self.accept_scopes:
                    scope.cancel()
        else:
            self.accepting.set()

    @property
    def active(self) -> frozenset[OverloadAction]:
        """The actions in force now."""
        return frozenset(self._active)

    def admit(self) -> bool:
        """Whether one more connection may be served (all listeners); counted when not."""
        limit = self.config.max_connections
        if limit and self.connections >= limit:
            self._stat_overflow.value += 1
            return False
        return True
