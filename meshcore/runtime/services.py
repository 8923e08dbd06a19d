"""Long-lived helpers that the proxy owns: exporters, log sinks; shared by key across Snapshots.

A filter factory asks its :class:`~meshcore.FilterContext` for a service by key
(``context.services.get(("otlp_http", endpoint), factory)``): the same key gives the same
object for as long as some filter chain uses it, so a span queue or a log buffer survives a
config reload, and two listeners that log to one file share one writer. A service that
has an ``async run()`` method runs in the proxy's nursery (structured: the proxy owns it),
starting when the Snapshot that first asked for it is applied.

Each filter chain asks through a view that records which keys it uses (its *owner*: the
listener's name, the chain's config and the listener's access logs). A chain that a new
Snapshot keeps unchanged is not rebuilt, and its services stay; a service that no chain of
the live Snapshot owns any more is *retired*: it keeps running until the connections of the
chains that the apply retired have drained (their last requests still write spans and
access-log lines to it), then its ``stop()`` is called (if it has one: a chance to flush),
and it is cancelled after a grace period. A Snapshot that asks for a retiring service
again gets it back, running. When the proxy stops, services outlive the listeners' drain,
are stopped the same way, then cancelled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any, TypeVar

import structlog
import trio

__all__ = ["STOP_GRACE", "Services", "ServicesView"]

log = structlog.get_logger("meshcore.services")

STOP_GRACE = 5.0
"""Seconds a stopped service has to finish (flush) before it is cancelled."""
T = TypeVar("T")


class _Entry:
    __slots__ = ("done", "scope", "service")

    def __init__(self, service: Any) -> None:
        self.service = service
        self.scope = trio.CancelScope()
        self.done = trio.Event()


class ServicesView:
    """What a filter chain's factories see: :meth:`get`, recorded under the chain's owner."""

    __slots__ = ("_owner", "_services")

    def __init__(self, services: Services, owner: Any) -> None:
        self._services = services
        self._owner = owner

    def get(self, key: Hashable, factory: Callable[[], T]) -> T:
        """The service called ``key``, made with ``factory()`` the first time it is asked for."""
        return self._services.get(key, factory, owner=self._owner)


class Services:
    """The proxy's services, by key. Filters use :meth:`get` (through a view); the proxy the rest."""

    def __init__(self) -> None:
        self._live: dict[Hashable, _Entry] = {}
        self._pending: dict[Hashable, _Entry] = {}
        self._retiring: dict[Hashable, _Entry] = {}
        """Services no live chain owns, running until the chains they served have drained."""
        self._owned: list[tuple[Any, set[Hashable]]] = []
        """Owners (compared with ==: chain configs need not be hashable) and the keys they use."""
        self._nursery: trio.Nursery | None = None

    def owned_by(self, owner: Any) -> ServicesView:
        """A view for the factories of one filter chain: what they get is recorded as ``owner``'s."""
        return ServicesView(self, owner)

    def get(self, key: Hashable, factory: Callable[[], T], *, owner: Any = None) -> T:
        """The service called ``key``, made with ``factory()`` the first time it is asked for."""
        for known, keys in self._owned:
            if known == owner:
                keys.add(key)
                break
        else:
            self._owned.append((owner, {key}))
        entry = self._live.get(key) or self._pending.get(key)
        if entry is None:
            entry = self._retiring.pop(key, None)
            if entry is not None:  # asked for again before it stopped: it serves on
                self._live[key] = entry
        if entry is None:
            entry = self._pending[key] = _Entry(factory())
        service: T = entry.service
        return service

    def live(self) -> list[Any]:
        """Every running service (for signals: ``reopen`` on SIGUSR1, ...)."""
        return [entry.service for entry in (*self._live.values(), *self._retiring.values())]

    def commit(
        self, live_owners: Iterable[Any], drained: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """The Snapshot was applied: start new services, retire those no live owner uses.

        ``live_owners`` are the owners of the live Snapshot's filter chains. A retired
        service is stopped once ``drained()`` returns (the chains that the apply retired
        have no connection left, or their drain timed out), or at once without it.
        """
        for key, entry in self._pending.items():
            self._live[key] = entry
            if not hasattr(entry.service, "run"):
                entry.done.set()
            elif self._nursery is not None:
                self._nursery.start_soon(self._run, key, entry)
        self._pending.clear()
        owners = list(live_owners)
        self._owned = [(owner, keys) for owner, keys in self._owned if owner in owners]
        used = set().union(*(keys for _, keys in self._owned))
        retired = [(key, self._live.pop(key)) for key in [k for k in self._live if k not in used]]
        if not retired:
            return
        if drained is None or self._nursery is None:
            for _, entry in retired:
                self._stop(entry)
            return
        self._retiring.update(retired)
        self._nursery.start_soon(self._retire, retired, drained)

    async def _retire(
        self, retired: list[tuple[Hashable, _Entry]], drained: Callable[[], Awaitable[None]]
    ) -> None:
        await drained()
        for key, entry in retired:
            if self._retiring.get(key) is entry:  # not asked for again meanwhile
                del self._retiring[key]
                self._stop(entry)

    def abort(self) -> None:
        """The Snapshot being built was rejected: close the services it made, keep the others."""
        for entry in self._pending.values():
            close = getattr(entry.service, "close", None)
            if close is not None:
                close()
        self._pending.clear()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Own the services' tasks until cancelled (the proxy starts this first)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for key, entry in self._live.items():  # committed before run: start them now
                if hasattr(entry.service, "run") and not entry.done.is_set():
                    nursery.start_soon(self._run, key, entry)
            task_status.started()
            await trio.sleep_forever()

    async def stop_all(self, grace: float = STOP_GRACE) -> None:
        """Stop every service and wait for them, each bounded by ``grace`` seconds."""
        entries = [*self._live.values(), *self._retiring.values()]
        self._live.clear()
        self._retiring.clear()
        for entry in entries:
            self._stop(entry, grace)
        for entry in entries:
            await entry.done.wait()

    def _stop(self, entry: _Entry, grace: float = STOP_GRACE) -> None:
        stop = getattr(entry.service, "stop", None)
        if stop is not None:
            stop()
        entry.scope.deadline = min(entry.scope.deadline, trio.current_time() + grace)

    async def _run(self, key: Hashable, entry: _Entry) -> None:
        try:
            with entry.scope:
                await entry.service.run()
        except Exception:
            # A broken exporter or sink costs its own output, never the proxy.
            log.exception("service_failed", service=repr(key))
        finally:
            entry.done.set()
