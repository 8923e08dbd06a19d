"""The proxy: applies Snapshots atomically and owns every listener task.

Applying a Snapshot is a diff (:mod:`meshcore.runtime.apply`). Everything new is built
first (changed filter chains and route tables, TLS contexts, sockets); if any of it fails,
the Snapshot is rejected whole and the last good one keeps serving. Then it is swapped in
at once: clusters update in place, listeners keep their socket and their unchanged chains,
changed chains drain, new listeners start, removed ones drain.
"""

from __future__ import annotations

import functools
import gc
import sys
from collections.abc import Callable
from typing import Any

import attrs
import structlog
import trio

from meshcore.config import Cluster as ClusterConfig
from meshcore.config import FilterChain, Listener, PluginRef, Snapshot, SnapshotChecker, SnapshotDelta
from meshcore.errors import ConfigError, ConfigProblem
from meshcore.registry import Registry
from meshcore.runtime.apply import Plan, announce, plan
from meshcore.runtime.cluster import Picker
from meshcore.runtime.cluster_manager import ClusterManager
from meshcore.runtime.config_health import ConfigHealth
from meshcore.runtime.context import FilterContext
from meshcore.runtime.health import Checker
from meshcore.runtime.http_chains import (
    HttpChains,
    Precompiled,
    precompile,
    precompiled,
    prepare_runtimes,
    release,
)
from meshcore.runtime.listener import CompiledChain, ListenerRuntime
from meshcore.runtime.offloop import run_beside_loop
from meshcore.runtime.overload import OverloadManager
from meshcore.runtime.services import Services
from meshcore.runtime.stats import Stats
from meshcore.telemetry.accesslog import build_access_logger

__all__ = ["Proxy"]

log = structlog.get_logger("meshcore.proxy")


class Proxy:
    """A running proxy: its Snapshot, clusters, listeners and stats.

    Start it with ``await nursery.start(proxy.run)``; feed it Snapshots with
    :meth:`apply_async` (or :meth:`apply`, which holds the event loop meanwhile); stop it
    with :meth:`drain`.
    """

    def __init__(self, registry: Registry, *, stats: Stats | None = None, reuse_port: bool = False) -> None:
        self.registry = registry
        self.stats = stats or Stats()
        self.reuse_port = reuse_port
        self.snapshot: Snapshot | None = None
        self.clusters = ClusterManager(
            self.stats, self._picker, catalog=registry, checker_factory=self._health_checker
        )
        self.overload = OverloadManager(self.stats)
        self.listeners: dict[str, ListenerRuntime] = {}
        self.services = Services()
        self.draining = False
        self.admin_address: tuple[str, int] | None = None
        self._nursery: trio.Nursery | None = None
        self._applied = trio.Event()
        self._config_changed = trio.Event()
        self.rejections = 0
        self._checker = SnapshotChecker(registry)
        self.health = ConfigHealth()
        """The live version, when it was applied, what was refused last (``/config_status``)."""
        self._drain_requested = trio.Event()
        self._stat_applied = self.stats.counter("config_snapshots_applied")
        self._apply_lock = trio.Lock()
        """Held by :meth:`apply_async` and :meth:`apply_delta_async`: they go live in call order."""

    def _picker(self, config: ClusterConfig) -> Picker:
        policy = self.registry.get("lb_policy", config.lb_policy.name)
        if policy is None:  # the loader checks names; this is a bug guard
            msg = f"unknown load-balancing policy {config.lb_policy.name!r}"
            raise ValueError(msg)
        picker: Picker = policy.factory(config.lb_policy.config)
        return picker

    def _health_checker(self, ref: PluginRef) -> Checker:
        found = self.registry.get("health_checker", ref.name)
        if found is None:  # the loader checks names; this is a bug guard
            msg = f"unknown health checker {ref.name!r}"
            raise ValueError(msg)
        checker: Checker = found.factory(ref.config)
        return checker

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Own the listener tasks until every listener has drained.

        Upstream HTTP/2 connections run their reader tasks in a nursery of their own, which
        outlives the listeners (in-flight requests still use them while draining) and is
        cancelled once they are done.
        """
        try:
            async with trio.open_nursery() as upstreams:
                self.clusters.nursery = upstreams
                await upstreams.start(self.overload.run)
                await upstreams.start(self.services.run)
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    task_status.started(self)
                    await self._drain_requested.wait()
                # Leaving the nursery waited for every listener to drain (each bounded by its timeout).
                await self.services.stop_all()  # exporters and log sinks flush what the last requests left
                upstreams.cancel_scope.cancel()
        finally:
            # Drained or cancelled: close the kept-alive upstream connections, or nobody will.
            self.clusters.nursery = None
            for cluster in self.clusters.clusters.values():
                for host in cluster.hosts:
                    host.close_idle()
        log.info("proxy_stopped")

    async def wait_applied(self, version: str | None = None) -> Snapshot:
        """Wait until a Snapshot is live (the one of ``version``, if given); return it."""
        await self._applied.wait()
        while version is not None and self.snapshot is not None and self.snapshot.version != version:
            await self._config_changed.wait()
        assert self.snapshot is not None  # noqa: S101 - set before _applied
        return self.snapshot

    async def wait_rejected(self, count: int) -> None:
        """Wait until ``count`` configs have been rejected since the proxy started."""
        while self.rejections < count:
            await self._config_changed.wait()

    def _notify(self) -> None:
        self._config_changed.set()
        self._config_changed = trio.Event()

    def address(self, listener: str) -> tuple[str, int]:
        """The bound address of a listener (the real port when config said 0)."""
        return self.listeners[listener].address

    # -- applying Snapshots ------------------------------------------------------------------

    def _check(self, snapshot: Snapshot) -> None:
        """The Snapshot as a whole: structure and references, then every plugin's checks."""
        problems = self._checker.check(snapshot)
        if problems:  # plugins' checks may assume a well-formed Snapshot
            raise ConfigError(problems)
        problems = self.registry.snapshot_problems(snapshot)  # with their field paths
        if problems:
            raise ConfigError(problems)

    def record_rejection(self, error: ConfigError, version: str | None = None) -> None:
        """Count a rejected config (``config_snapshots_rejected`` by ``reason``: its stage).

        It is also the last rejection shown at the admin server's ``/config_status``.
        """
        self.stats.counter("config_snapshots_rejected", reason=error.stage).value += 1
        self.rejections += 1
        rejection = self.health.record_rejected(error, version)
        log.warning(
            "snapshot_rejected",
            stage=error.stage,
            version=version,
            problems=list(rejection.problems),
            kept=self.version,
        )
        self._notify()

    @property
    def version(self) -> str | None:
        """The version of the live Snapshot (None before the first)."""
        return self.snapshot.version if self.snapshot is not None else None

    def filter_context(self, snapshot: Snapshot, listener: Listener, chain: FilterChain) -> FilterContext:
        """What the factories of ``chain``'s filters are given, for ``snapshot``.

        Raises:
            ConfigError: an access log's file cannot be opened.
        """
        services = self.services.owned_by((listener.name, chain, listener.access_log))
        access_logger = build_access_logger(listener, services, self.stats)
        return FilterContext(
            listener=listener.name,
            snapshot=snapshot,
            clusters=self.clusters,
            stats=self.stats,
            registry=self.registry,
            services=services,
            access_log=bool(listener.access_log),
            access_logger=access_logger or None,
            tls=chain.tls is not None,
            overload=self.overload,
        )

    def apply(self, snapshot: Snapshot, *, file: str | None = None) -> None:
        """Apply ``snapshot`` as a diff, all at once, or raise ConfigError and keep the current one.

        What did not change is not touched (see :mod:`meshcore.runtime.apply`). Whatever is
        raised while the Snapshot is checked and built, by meshcore or a plugin, rejects it:
        ConfigError, naming the field or the plugin, and the live Snapshot keeps serving.
        ``file`` is where the Snapshot was read from: problems that name no file name it.

        This holds the event loop until it is done: 0.4 s for 10,000 routes and 1,000
        clusters (bench/config_growth.py), when no request is served. Config sources use
        :meth:`apply_async`, which does the same without stalling traffic.

        The cyclic garbage collector is paused meanwhile: building a large Snapshot's objects
        (tens of thousands of routes) would otherwise run it again and again over them, which
        cost two thirds of the time (bench/config_growth.py); reference counting still frees.
        """
        self._ensure_running()
        collecting = gc.isenabled()
        gc.disable()
        try:
            try:
                self._check(snapshot)
            except Exception as err:
                error = self._rejected(err, snapshot, file)
                if error is err:
                    raise
                raise error from err
            self._apply(snapshot, file)
        finally:
            if collecting:
                gc.enable()

    async def apply_async(self, snapshot: Snapshot, *, file: str | None = None) -> None:
        """:meth:`apply`, without stalling the event loop: what config sources call.

        What depends on the Snapshot alone runs in a worker thread while the loop serves
        traffic: checking it (every plugin's ``meshcore_validate_snapshot`` too) and compiling
        its route tables, most of the cost of a large Snapshot. Then, on the loop in chunks
        with checkpoints between, the routes' runtimes (their stats) and the new clusters are
        made, not yet shared with anything live. What depends on the live config (the diff,
        the filters, the clusters changed in place) is then built and swapped in on the loop
        in one step, as :meth:`apply` does, so nothing is built against a config that changed
        meanwhile. The outcome is :meth:`apply`'s: applied whole, or ConfigError and the live
        Snapshot keeps serving.

        Calls are serialized: concurrent ones wait their turn and go live (or are rejected) in
        the order they were made, each whole, so a source's NACKs answer its own deliveries.
        Afterwards the objects of the live config are kept from the cyclic garbage collector
        (:func:`gc.freeze`, see :func:`_freeze_heap`): a full collection over a 10,000-route
        config stalls the loop for 0.1 s.
        """
        self._ensure_running()
        async with self._apply_lock:
            await self._apply_off_loop(snapshot, file)

    async def apply_delta_async(self, delta: SnapshotDelta) -> Snapshot:
        """:meth:`apply_delta` as :meth:`apply_async` applies: composed onto the Snapshot live when its turn comes."""
        self._ensure_running()
        async with self._apply_lock:
            snapshot = self._compose(delta)
            await self._apply_off_loop(snapshot, None)
        return snapshot

    async def _apply_off_loop(self, snapshot: Snapshot, file: str | None) -> None:
        collecting = gc.isenabled()
        gc.disable()
        try:
            try:
                tables = await run_beside_loop(functools.partial(self._check_and_compile, snapshot))
            except Exception as err:
                error = self._rejected(err, snapshot, file)
                if error is err:
                    raise
                raise error from err
            # On the loop, in chunks with checkpoints: what is new and not yet shared.
            await prepare_runtimes(tables, self.stats)
            await self.clusters.prebuild(snapshot)
            self._ensure_running()  # it may have begun draining meanwhile
            retired: list[HttpChains] = []
            with precompiled(tables, retired):
                self._apply(snapshot, file)
            await release(retired)  # what the Snapshot replaced, freed in chunks too
        finally:
            if collecting:
                gc.enable()
        _freeze_heap()

    def _check_and_compile(self, snapshot: Snapshot) -> Precompiled:
        """What needs no live object (run in a worker thread): the checks, the route tables.

        The live Snapshot is read (it is frozen): route tables equal to its own are not compiled.
        """
        self._check(snapshot)
        return precompile(snapshot, self.snapshot)

    def _ensure_running(self) -> None:
        if self._nursery is None:
            msg = "the proxy is not running: start it with nursery.start(proxy.run)"
            raise RuntimeError(msg)
        if self.draining:
            msg = "the proxy is draining"
            raise RuntimeError(msg)

    def _rejected(self, err: Exception, snapshot: Snapshot, file: str | None) -> ConfigError:
        """Record ``snapshot``'s rejection for ``err``; the ConfigError to raise (``err`` if it is one)."""
        self.services.abort()  # what this Snapshot's chains opened (access-log files, exporters)
        error = err if isinstance(err, ConfigError) else _internal_error(err, snapshot)
        if file is not None:
            problems = [p if p.file else attrs.evolve(p, file=file) for p in error.problems]
            error = ConfigError(problems, stage=error.stage)
        self.record_rejection(error, snapshot.version)
        return error

    def _apply(self, snapshot: Snapshot, file: str | None) -> None:
        """Build ``snapshot`` (checked) against the live config and swap it in; no await in here."""
        built: Plan | None = None
        try:
            built = plan(self, snapshot)
            announce(self.registry, snapshot)
        except Exception as err:
            if built is not None:
                built.abandon()
            error = self._rejected(err, snapshot, file)
            if error is err:
                raise
            raise error from err
        # Nothing can fail from here on: swap. (A step that fails all the same is a bug; it is
        # logged, and the others still run.)
        steps: list[Callable[[], None]] = [built.clusters, *built.tls]
        # Services no chain of the new Snapshot uses serve the retired chains' last requests.
        drained = functools.partial(_drained, self._retired_chains(snapshot, built))
        steps.append(functools.partial(self.services.commit, _service_owners(snapshot), drained))
        steps.append(functools.partial(self.overload.configure, snapshot.overload))
        steps.append(functools.partial(self._swap_listeners, snapshot, built))
        steps += built.commits
        for step in steps:
            try:
                step()
            except Exception:
                log.exception("snapshot_commit_failed", version=snapshot.version, step=repr(step))
        self.snapshot = snapshot
        self._stat_applied.value += 1
        self.health.record_applied(snapshot.version)
        self._applied.set()
        self._notify()
        log.info("snapshot_applied", version=snapshot.version, listeners=sorted(self.listeners))

    def _retired_chains(self, snapshot: Snapshot, built: Plan) -> list[tuple[CompiledChain, float]]:
        """The chains that applying ``snapshot`` retires (they drain), with their listener's drain timeout."""
        wanted = {listener.name for listener in snapshot.listeners}
        retired: list[tuple[CompiledChain, float]] = []
        for name, runtime in self.listeners.items():
            timeout = float(runtime.config.drain_timeout)
            kept = built.chains.get(name, []) if name in wanted and name not in built.opened else []
            retired += [(chain, timeout) for chain in runtime.chains if not any(chain is k for k in kept)]
        return retired

    def _swap_listeners(self, snapshot: Snapshot, built: Plan) -> None:
        assert self._nursery is not None  # noqa: S101 - checked by apply
        wanted = {listener.name: listener for listener in snapshot.listeners}
        for name in list(self.listeners):
            if name not in wanted or name in built.opened:
                self.listeners.pop(name).stop()
        for name, listener in wanted.items():
            if name in built.opened:
                runtime = built.opened[name]
                self.listeners[name] = runtime
                self._nursery.start_soon(runtime.serve)
            else:
                self.listeners[name].replace_chains(listener, built.chains[name])

    def apply_delta(self, delta: SnapshotDelta) -> Snapshot:
        """Compose ``delta`` onto the live Snapshot and apply the result; return it.

        Raises:
            ConfigError: the delta does not compose, or the result is rejected as a whole
                (every problem named); the live Snapshot keeps serving.
        """
        snapshot = self._compose(delta)
        self.apply(snapshot)
        return snapshot

    def _compose(self, delta: SnapshotDelta) -> Snapshot:
        """``delta`` composed onto the live Snapshot; ConfigError (recorded) if it does not compose."""
        current = self.snapshot
        if current is None:
            message = "a delta needs a live Snapshot to apply to: deliver a whole Snapshot first"
            error = ConfigError([ConfigProblem(path="", message=message)])
            self.record_rejection(error, delta.version)
            raise error
        try:
            return delta.compose(current)
        except ConfigError as err:
            self.record_rejection(err, delta.version)
            raise

    def drain(self) -> None:
        """Stop accepting; let in-flight requests finish within each listener's drain timeout."""
        self.draining = True
        for runtime in self.listeners.values():
            runtime.stop()
        self._drain_requested.set()


async def _drained(chains: list[tuple[CompiledChain, float]]) -> None:
    """Return once ``chains`` serve no connection, or the longest of their drain timeouts has passed."""
    if not chains:
        return
    with trio.move_on_after(max(timeout for _, timeout in chains)):
        for chain, _ in chains:
            await chain.wait_idle()


def _service_owners(snapshot: Snapshot) -> list[tuple[str, FilterChain, object]]:
    """The owners of services in ``snapshot``: one per filter chain, as ``filter_context`` names them.

    A chain that the diff keeps is not rebuilt (its filters never ask again): its owner,
    equal to the one recorded when it was built, keeps its services alive.
    """
    return [
        (listener.name, chain, listener.access_log)
        for listener in snapshot.listeners
        for chain in listener.filter_chains
    ]


_FREEZE = {"base": 0}
"""The interpreter's allocated blocks at the first freeze or the last thaw (0: never frozen)."""


def _freeze_heap() -> None:
    """Keep the cyclic garbage collector off the objects alive now, the live config's among them.

    A full collection walks every object: 0.1 s over a 10,000-route config, a stall of every
    request on the loop, and one that comes soon after a large apply (the new objects count
    towards the next one). :func:`gc.freeze` moves them out of its sight. The cost: reference
    cycles among them that later become garbage (the parts of a config a later Snapshot
    replaces) are not collected while frozen. So once the heap (the interpreter's allocated
    blocks, cheap to read, where counting the frozen objects walks them all) is four times
    what it was at the first freeze or the previous thaw, they are thawed
    (:func:`gc.unfreeze`), and the next full collection, which then walks them all once,
    frees what the replaced configs left: that collection comes once per fourfold growth.
    """
    gc.freeze()
    heap = sys.getallocatedblocks()
    if not _FREEZE["base"]:
        _FREEZE["base"] = heap
    elif heap > 4 * _FREEZE["base"]:
        gc.unfreeze()
        _FREEZE["base"] = heap


def _internal_error(err: Exception, snapshot: Snapshot) -> ConfigError:
    """A failure of meshcore's own code while applying: logged with its traceback, and a rejection."""
    log.error("apply_failed", version=snapshot.version, exc_info=err)
    message = f"internal error while applying the Snapshot: {type(err).__name__}: {err}"
    return ConfigError([ConfigProblem(path="", message=message)], stage="apply")
