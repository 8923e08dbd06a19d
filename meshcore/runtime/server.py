"""Run a whole proxy: config source, proxy, admin server, signals.

:func:`serve_proxy` is what ``meshcore proxy`` runs and what the test fixtures embed.
"""

from __future__ import annotations

import signal
from typing import Any, Protocol

import structlog
import trio

from meshcore.config import Snapshot
from meshcore.registry import Registry
from meshcore.runtime.proxy import Proxy

__all__ = ["ConfigSource", "serve_proxy"]

log = structlog.get_logger("meshcore.server")


class ConfigSource(Protocol):
    """What a config source plugin's factory returns."""

    async def run(self, apply: Any, *, task_status: Any = ...) -> None:
        """Call ``apply(snapshot)`` with the first Snapshot, report started, then with every update."""

    def reload(self) -> None:
        """Reload now (SIGHUP)."""


async def serve_proxy(
    source: ConfigSource,
    registry: Registry,
    *,
    admin: bool = True,
    reuse_port: bool = False,
    handle_signals: bool = False,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a proxy fed by ``source`` until it is drained.

    Reports the :class:`Proxy` through ``task_status`` once its first Snapshot is live and
    the admin server (if any) listens. The first Snapshot's ConfigError propagates.
    With ``handle_signals``: SIGTERM and SIGINT drain, SIGHUP reloads the source.
    """
    proxy = Proxy(registry, reuse_port=reuse_port)
    async with trio.open_nursery() as nursery:

        async def run_proxy(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            await proxy.run(task_status=task_status)
            nursery.cancel_scope.cancel()  # drained: stop the source, admin and signal tasks

        def apply(snapshot: Snapshot) -> None:
            # Sources keep delivering while we drain (SIGHUP, a file change); the proxy refuses
            # new Snapshots then (RuntimeError), which must not end the drain.
            if proxy.draining:
                log.info("snapshot_ignored", version=snapshot.version, reason="draining")
                return
            proxy.apply(snapshot)

        await nursery.start(run_proxy)
        await nursery.start(source.run, apply)
        snapshot: Snapshot = await proxy.wait_applied()
        if admin and snapshot.admin.enabled:
            from meshcore.runtime.admin import serve_admin  # noqa: PLC0415 - optional part

            proxy.admin_address = await nursery.start(serve_admin, proxy, snapshot.admin.address)
        if handle_signals:
            # Handlers in place before proxy_started: a signal sent on that line must not kill us.
            await nursery.start(_handle_signals, proxy, source)
        log.info("proxy_started", listeners={n: f"{h}:{p}" for n, (h, p) in _addresses(proxy).items()})
        task_status.started(proxy)


def _addresses(proxy: Proxy) -> dict[str, tuple[str, int]]:
    return {name: runtime.address for name, runtime in proxy.listeners.items()}


async def _handle_signals(
    proxy: Proxy, source: ConfigSource, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGHUP:
                log.info("reload_requested", signal="SIGHUP")
                source.reload()
            else:
                log.info("drain_started", signal=signal.Signals(signum).name)
                proxy.drain()
