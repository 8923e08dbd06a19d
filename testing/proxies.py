"""Real proxies and test upstreams for trio tests: started in a nursery, stopped cleanly.

What the ``meshcore_proxy`` and ``meshcore_upstream`` fixtures are made of, usable without
pytest too:

    async with open_upstreams() as upstreams, open_proxies() as proxies:
        upstream = await upstreams(name="backend")
        proxy = await proxies(http_proxy_config([upstream.endpoint]))
        response = await proxy.client().get("/hello")

A proxy runs as ``meshcore proxy`` runs it (:func:`~meshcore.runtime.server.serve_proxy`),
fed by a config source that holds the test's Snapshot. With ``ephemeral`` (the default)
every listener and the admin server are moved to ``127.0.0.1:0`` first, so a config
written for production runs side by side with other tests.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from meshcore import (
    Address,
    ConfigError,
    ConfigSink,
    Registry,
    Snapshot,
    SnapshotDelta,
    Stats,
    build_registry,
    join_host_port,
    load_snapshot,
    serve_proxy,
    snapshot_from_data,
)
from meshcore.runtime.proxy import Proxy
from meshcore.testing.client import Client
from meshcore.testing.upstreams import serve_upstream

__all__ = [
    "TEARDOWN_GRACE",
    "ConfigLike",
    "ProxyFactory",
    "RunningProxy",
    "Upstream",
    "UpstreamFactory",
    "open_proxies",
    "open_upstreams",
    "to_snapshot",
]

ConfigLike = Snapshot | Mapping[str, Any] | str | os.PathLike[str]
"""A proxy config: a Snapshot, a dict as in a config file, or the path of a YAML/TOML/JSON file."""

TEARDOWN_GRACE = 5.0
"""Seconds a proxy is given to drain at teardown before it is cancelled."""

_LOOPBACK = Address("127.0.0.1", 0)


def to_snapshot(config: ConfigLike, registry: Registry | None = None, *, ephemeral: bool = False) -> Snapshot:
    """A validated Snapshot from a Snapshot, a config dict or a config file.

    Args:
        config: the config.
        registry: the plugin registry that knows the config's filters (default: built-ins
            and installed plugins).
        ephemeral: move every listener and the admin server to ``127.0.0.1:0``.

    Raises:
        ConfigError: the config is invalid; every problem is named, with file and line
            when it came from a file.
    """
    if isinstance(config, Snapshot):
        snapshot = config
    else:
        registry = registry or build_registry()
        if isinstance(config, Mapping):
            snapshot = snapshot_from_data(config, registry)
        else:
            snapshot = load_snapshot(Path(config), registry)
    if not ephemeral:
        return snapshot
    return attrs.evolve(
        snapshot,
        admin=attrs.evolve(snapshot.admin, address=_LOOPBACK),
        listeners=tuple(attrs.evolve(listener, address=_LOOPBACK) for listener in snapshot.listeners),
    )


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


# -- upstreams ---------------------------------------------------------------------------------


@attrs.frozen
class Upstream:
    """A running test upstream (see :mod:`meshcore.testing.upstreams` for what it answers).

    Attributes:
        host: its loopback address.
        port: its port.
        name: what it sends back in ``x-upstream``.
    """

    host: str
    port: int
    name: str

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``, for :func:`~meshcore.testing.client.fetch` or a socket."""
        return self.host, self.port

    @property
    def endpoint(self) -> str:
        """``"host:port"``, as a cluster endpoint in config."""
        return f"{self.host}:{self.port}"

    def url(self, path: str = "/") -> str:
        """``http://host:port/path``, to call the upstream directly."""
        return f"http://{self.endpoint}/{path.lstrip('/')}"


class UpstreamFactory:
    """Starts test upstreams in a nursery: ``upstream = await upstreams(name="a")``.

    Every path of :func:`~meshcore.testing.upstreams.serve_upstream` is served: ``/echo``,
    ``/status/NNN``, ``/bytes/N``, ``/delay/MS``, ``/chunks/N``, ``/reset/N`` and a JSON
    description of any other request.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    async def __call__(self, *, name: str = "upstream", host: str = "127.0.0.1") -> Upstream:
        """Start one upstream on an ephemeral port of ``host``; return it once it listens."""
        bound: tuple[str, int] = await self._nursery.start(_serve_upstream, host, name)
        return Upstream(bound[0], bound[1], name)


async def _serve_upstream(host: str, name: str, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    await serve_upstream(host, 0, name=name, task_status=task_status)


@asynccontextmanager
async def open_upstreams() -> AsyncIterator[UpstreamFactory]:
    """An :class:`UpstreamFactory` whose upstreams stop when the block ends."""
    async with trio.open_nursery() as nursery:
        yield UpstreamFactory(nursery)
        nursery.cancel_scope.cancel()


# -- proxies -----------------------------------------------------------------------------------


class _StaticSource:
    """A config source that holds one Snapshot: the test's (later ones come through apply)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    async def run(self, sink: ConfigSink, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        sink.apply(self.snapshot)
        task_status.started()
        await trio.sleep_forever()

    def reload(self) -> None:
        """Nothing to reload: tests apply new configs themselves."""


class RunningProxy:
    """A proxy running in a test: where it listens, its stats, and reload and drain.

    Made by :class:`ProxyFactory` (the ``meshcore_proxy`` fixture).

    Attributes:
        proxy: the :class:`~meshcore.runtime.proxy.Proxy` itself.
        registry: the plugin registry its configs are built with.
        ephemeral: whether configs applied to it are moved to ``127.0.0.1:0``.
    """

    def __init__(self, proxy: Proxy, stopped: trio.Event, *, registry: Registry, ephemeral: bool) -> None:
        self.proxy = proxy
        self.registry = registry
        self.ephemeral = ephemeral
        self._stopped = stopped

    @property
    def snapshot(self) -> Snapshot:
        """The Snapshot being served."""
        assert self.proxy.snapshot is not None  # the factory returns once one is live
        return self.proxy.snapshot

    @property
    def stats(self) -> Stats:
        """The proxy's metrics: ``proxy.stats.value("http_rq_total", listener="ingress")``."""
        return self.proxy.stats

    @property
    def admin_address(self) -> tuple[str, int] | None:
        """Where the admin server listens, if the config enables it."""
        return self.proxy.admin_address

    @property
    def stopped(self) -> bool:
        """Whether the proxy has stopped (drained, or cancelled)."""
        return self._stopped.is_set()

    def listener_name(self, listener: str | None = None) -> str:
        """``listener`` checked, or the proxy's only listener when None.

        Raises:
            LookupError: no such listener, or None while the proxy has several.
        """
        names = list(self.proxy.listeners)
        if listener is None and len(names) == 1:
            return names[0]
        if listener is not None and listener in self.proxy.listeners:
            return listener
        listing = ", ".join(repr(n) for n in names) or "none"
        what = f"no listener {listener!r}" if listener is not None else "several listeners: name one"
        msg = f"{what} (this proxy has {listing})"
        raise LookupError(msg)

    def address(self, listener: str | None = None) -> tuple[str, int]:
        """The bound ``(host, port)`` of ``listener`` (default: the only listener)."""
        return self.proxy.address(self.listener_name(listener))

    def endpoint(self, listener: str | None = None) -> str:
        """``"host:port"`` of ``listener``, as a cluster endpoint of another proxy's config."""
        return join_host_port(*self.address(listener))

    def url(self, path: str = "/", *, listener: str | None = None) -> str:
        """``http(s)://host:port/path`` of ``listener``: https when its filter chains use TLS."""
        name = self.listener_name(listener)
        scheme = "https" if self.proxy.listeners[name].tls else "http"
        return f"{scheme}://{self.endpoint(name)}/{path.lstrip('/')}"

    def client(
        self,
        *,
        listener: str | None = None,
        host: str | None = None,
        ssl_context: Any = None,
        server_hostname: str | None = None,
    ) -> Client:
        """A :class:`~meshcore.testing.client.Client` for ``listener`` (see its arguments)."""
        return Client(
            self.address(listener), host=host, ssl_context=ssl_context, server_hostname=server_hostname
        )

    def apply(self, config: ConfigLike) -> Snapshot:
        """Reload: apply a new config atomically, as a changed config file would be.

        Returns the Snapshot now served. Listeners whose address stays keep their socket
        (and port); with ``ephemeral`` that is every listener that keeps its name.

        Raises:
            ConfigError: the config is invalid or cannot be applied; the old one keeps serving.
        """
        snapshot = to_snapshot(config, self.registry, ephemeral=self.ephemeral)
        self.proxy.apply(snapshot)
        return snapshot

    async def apply_async(self, config: ConfigLike) -> Snapshot:
        """:meth:`apply`, as a config source applies: traffic keeps flowing meanwhile.

        The checks and route tables are built in a worker thread (see
        :meth:`meshcore.runtime.proxy.Proxy.apply_async`); concurrent calls go live in order.
        """
        snapshot = to_snapshot(config, self.registry, ephemeral=self.ephemeral)
        await self.proxy.apply_async(snapshot)
        return snapshot

    def apply_delta(self, delta: SnapshotDelta) -> Snapshot:
        """Apply a delta, as a control plane would: composed onto the live Snapshot.

        Returns the Snapshot now served. Listeners the delta adds are not moved to
        ``127.0.0.1:0`` (give them such an address yourself).

        Raises:
            ConfigError: the delta or its result is invalid or cannot be applied; the old
                Snapshot keeps serving.
        """
        return self.proxy.apply_delta(delta)

    async def drain(self) -> None:
        """Stop accepting, let in-flight requests finish, and wait until the proxy has stopped.

        Bounded by the listeners' ``drain_timeout``; wrap it in ``trio.fail_after`` for less.
        """
        if not self.proxy.draining:
            self.proxy.drain()
        await self._stopped.wait()

    async def wait_stopped(self) -> None:
        """Wait until the proxy has stopped."""
        await self._stopped.wait()

    def __repr__(self) -> str:
        listeners = " ".join(f"{name}={runtime.address}" for name, runtime in self.proxy.listeners.items())
        return f"<RunningProxy {listeners or 'no listeners'}>"


async def _serve_proxy(
    snapshot: Snapshot,
    registry: Registry,
    stopped: trio.Event,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        await serve_proxy(_StaticSource(snapshot), registry, task_status=task_status)
    finally:
        stopped.set()


class ProxyFactory:
    """Starts proxies in a nursery: ``proxy = await proxies(config)``.

    Args:
        nursery: where the proxies run.
        registry: the plugin registry configs are built with.
    """

    def __init__(self, nursery: trio.Nursery, registry: Registry) -> None:
        self.registry = registry
        self.started: list[RunningProxy] = []
        self._nursery = nursery

    async def __call__(self, config: ConfigLike, *, ephemeral: bool = True) -> RunningProxy:
        """Start a proxy serving ``config``; return it once its listeners listen.

        Args:
            config: a config dict, the path of a config file, or a Snapshot.
            ephemeral: move every listener and the admin server to ``127.0.0.1:0`` (set it
                False to bind the addresses the config names).

        Raises:
            ConfigError: the config is invalid or cannot be applied (a port in use, an
                unreadable certificate): nothing was started.
        """
        snapshot = to_snapshot(config, self.registry, ephemeral=ephemeral)
        stopped = trio.Event()
        try:
            proxy: Proxy = await self._nursery.start(_serve_proxy, snapshot, self.registry, stopped)
        except BaseExceptionGroup as group:
            # serve_proxy's nursery wraps the first Snapshot's ConfigError: hand it over bare.
            leaves = _leaves(group)
            if len(leaves) == 1 and isinstance(leaves[0], ConfigError):
                raise leaves[0] from None
            raise
        running = RunningProxy(proxy, stopped, registry=self.registry, ephemeral=ephemeral)
        self.started.append(running)
        return running

    async def drain_all(self, grace: float = TEARDOWN_GRACE) -> bool:
        """Drain every proxy still running; True if all stopped within ``grace`` seconds."""
        for running in self.started:
            if not running.proxy.draining and not running.stopped:
                running.proxy.drain()
        with trio.move_on_after(grace):
            for running in self.started:
                await running.wait_stopped()
            return True
        return False


@asynccontextmanager
async def open_proxies(registry: Registry | None = None) -> AsyncIterator[ProxyFactory]:
    """A :class:`ProxyFactory` whose proxies drain when the block ends (then are cancelled).

    Args:
        registry: the plugin registry (default: built-ins and installed plugins).
    """
    async with trio.open_nursery() as nursery:
        factory = ProxyFactory(nursery, registry or build_registry())
        yield factory
        await factory.drain_all()
        nursery.cancel_scope.cancel()
