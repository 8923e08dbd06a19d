"""Run a whole proxy: config source, proxy, admin server, signals.

:func:`serve_proxy` is what ``meshcore proxy`` runs and what the test fixtures embed. It is
public (``meshcore.serve_proxy``): an application runs a proxy from any config source
with it, chosen by name or given as an object.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from typing import Any

import structlog
import trio

from meshcore.config import Snapshot
from meshcore.registry import Registry
from meshcore.runtime.proxy import Proxy
from meshcore.runtime.sources import ConfigSink, ConfigSource, ProxySink, build_source, run_source

__all__ = ["ConfigSink", "ConfigSource", "serve_proxy"]

log = structlog.get_logger("meshcore.server")


async def serve_proxy(
    source: ConfigSource | str,
    registry: Registry,
    *,
    source_config: Mapping[str, Any] | None = None,
    admin: bool = True,
    reuse_port: bool = False,
    handle_signals: bool = False,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a proxy fed by a config source until it is drained.

    Args:
        source: a config source object, or the registered name of one (``"file"``, a
            plugin's), built from ``source_config``.
        registry: the plugin registry (filters, policies and sources are looked up here).
        source_config: the named source's config section, as plain data (structured and
            validated by the source's config class).
        admin: serve the admin server if the Snapshot enables it.
        reuse_port: bind listeners with SO_REUSEPORT (``--workers``).
        handle_signals: SIGTERM and SIGINT drain, SIGHUP reloads the source.
        task_status: reports the :class:`~meshcore.runtime.proxy.Proxy` once its first
            Snapshot is live and the admin server (if any) listens.

    Raises:
        ConfigError: the source could not be built, or its first Snapshot was rejected.
    """
    if isinstance(source, str):
        source = build_source(registry, source, source_config)
    proxy = Proxy(registry, reuse_port=reuse_port)
    async with trio.open_nursery() as nursery:

        async def run_proxy(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            await proxy.run(task_status=task_status)
            nursery.cancel_scope.cancel()  # drained: stop the source, admin and signal tasks

        sink: ConfigSink = ProxySink(proxy)
        await nursery.start(run_proxy)
        await nursery.start(run_source, source, sink)
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
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1) as signals:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGUSR1:
                log.info("logs_reopen_requested", signal="SIGUSR1")
                for service in proxy.services.live():
                    if hasattr(service, "reopen"):
                        service.reopen()  # access-log files, after logrotate moved them
            elif signum == signal.SIGHUP:
                log.info("reload_requested", signal="SIGHUP")
                try:
                    source.reload()
                except Exception:  # a source's bug must not end the proxy
                    log.exception("reload_failed", source=type(source).__name__)
            else:
                log.info("drain_started", signal=signal.Signals(signum).name)
                proxy.drain()
