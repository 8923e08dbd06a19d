"""Applying a Snapshot as a diff, resource by resource, the way Envoy splits LDS/RDS/CDS/EDS.

:func:`plan` builds, against what the proxy runs now, everything a new Snapshot needs and
touches nothing live; anything that fails there rejects the Snapshot whole. What it
decides, per resource:

- a cluster whose config did not change is not touched; a changed one is updated in place
  (endpoints that stay keep their pools, an unchanged policy keeps its picker);
- a listener whose filter chains did not change keeps them, with their connections,
  keep-alives and HTTP/2 sessions; its filters that follow Snapshots (the HTTP connection
  manager swapping its route table) prepare their change now and apply it at the swap;
- a changed filter chain is rebuilt, its new filters taking over the state of the ones
  they replace (:mod:`meshcore.runtime.filterstate`), and only that chain's connections drain;
- a listener whose address changed gets a new socket, opened now (a port in use rejects
  the Snapshot);
- a TLS context whose material changed (a rotated secret, a file replaced) is built again
  and swapped into its kept chain or cluster: the next handshake takes it.

The proxy then swaps it all in at once (:meth:`~meshcore.runtime.proxy.Proxy.apply`).
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

import attrs

from meshcore.config import FilterChain, Listener, Snapshot, TlsContext
from meshcore.errors import ConfigError, ConfigProblem
from meshcore.runtime.filterstate import Commit, blame, carry_over, prepare_snapshot, successors
from meshcore.runtime.listener import CompiledChain, ListenerRuntime
from meshcore.runtime.tls import Secrets, material, secrets_of, server_context

if TYPE_CHECKING:
    from meshcore.registry import Registry
    from meshcore.runtime.proxy import Proxy

__all__ = ["Plan", "announce", "plan"]


@attrs.define
class Plan:
    """What applying one Snapshot will do, built and ready to swap in.

    Attributes:
        clusters: applies the clusters (cannot fail).
        chains: the filter chains of each listener that keeps its socket.
        opened: new listener runtimes (new or moved listeners), sockets bound, not serving.
        tls: installs new TLS contexts in kept chains (a rotated secret); before the chains
            are handed to their listeners.
        commits: installs what kept filters prepared (route tables, ...).
    """

    clusters: Commit
    chains: dict[str, list[CompiledChain]] = attrs.Factory(dict)
    opened: dict[str, ListenerRuntime] = attrs.Factory(dict)
    tls: list[Commit] = attrs.Factory(list)
    commits: list[Commit] = attrs.Factory(list)

    def abandon(self) -> None:
        """Release what was opened for a Snapshot that will not go live."""
        for runtime in self.opened.values():
            runtime.socket.socket.close()


def plan(proxy: Proxy, snapshot: Snapshot) -> Plan:
    """Build everything ``snapshot`` needs against what ``proxy`` runs now; ConfigError if it cannot."""
    secrets = secrets_of(snapshot)
    result = Plan(clusters=proxy.clusters.prepare(snapshot, secrets))
    try:
        for index, listener in enumerate(snapshot.listeners):
            _plan_listener(proxy, snapshot, secrets, index, listener, result)
    except BaseException:
        result.abandon()
        raise
    return result


def announce(registry: Registry, snapshot: Snapshot) -> None:
    """Call ``meshcore_snapshot_applied`` of every plugin, one at a time, as ``snapshot`` goes live.

    Called once everything is built, right before the swap (which cannot fail). A plugin
    whose hook raises rejects the Snapshot: ConfigError naming it; the plugins called before
    it have then seen a Snapshot that did not go live (their next call tells them so).
    """
    for impl in registry.hook.meshcore_snapshot_applied.get_hookimpls():
        try:
            impl.function(snapshot=snapshot)
        except Exception as err:
            info = registry.plugins.get(impl.plugin_name)
            who = f"plugin {impl.plugin_name!r}" + (f" ({info.origin})" if info is not None else "")
            message = f"{who}: meshcore_snapshot_applied raised {type(err).__name__}: {err}"
            raise ConfigError([ConfigProblem(path="", message=message)], stage="apply") from err


def _plan_listener(
    proxy: Proxy, snapshot: Snapshot, secrets: Secrets, index: int, listener: Listener, result: Plan
) -> None:
    current = proxy.listeners.get(listener.name)
    if current is None or current.config.address != listener.address:
        chains = [
            _build_chain(
                proxy, snapshot, secrets, index, listener, ci, config, _predecessor(current, ci, config)
            )
            for ci, config in enumerate(listener.filter_chains)
        ]
        try:
            result.opened[listener.name] = ListenerRuntime(
                listener, chains, reuse_port=proxy.reuse_port, overload=proxy.overload, stats=proxy.stats
            )
        except (OSError, ValueError, TypeError, OverflowError) as err:  # a host no socket takes
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            message = f"cannot listen on {listener.address}: {reason}"
            problem = ConfigProblem(path=f"listeners[{index}].address", message=message)
            raise ConfigError([problem], stage="apply") from err
        return
    available = list(current.chains)
    chains = []
    for ci, config in enumerate(listener.filter_chains):
        same = next(
            (c for c in available if c.access_log == listener.access_log and c.config == config),
            None,
        )
        if same is not None:
            available.remove(same)
            where = f"listeners[{index}].filter_chains[{ci}]"
            result.tls += _refresh_tls(same, secrets, where)
            result.commits += _follow(proxy, snapshot, where, same)
            chains.append(same)
        else:
            previous = _predecessor(current, ci, config)
            chains.append(_build_chain(proxy, snapshot, secrets, index, listener, ci, config, previous))
    result.chains[listener.name] = chains


def _predecessor(current: ListenerRuntime | None, index: int, config: FilterChain) -> CompiledChain | None:
    """The chain ``config`` replaces: the one of the same name, or at the same place if unnamed."""
    if current is None:
        return None
    if config.name:
        return next((c for c in current.chains if c.config.name == config.name), None)
    if index < len(current.chains) and not current.chains[index].config.name:
        return current.chains[index]
    return None


def _build_chain(
    proxy: Proxy,
    snapshot: Snapshot,
    secrets: Secrets,
    index: int,
    listener: Listener,
    chain_index: int,
    config: FilterChain,
    previous: CompiledChain | None,
) -> CompiledChain:
    """A new chain: filters from their factories, taking over from ``previous``'s."""
    registry = proxy.registry
    where = f"listeners[{index}].filter_chains[{chain_index}]"
    context = proxy.filter_context(snapshot, listener, config)
    filters: list[Any] = []
    for fi, ref in enumerate(config.filters):
        found = registry.get("network_filter", ref.name)
        if found is None:  # the Snapshot is checked first; this is a bug guard
            msg = f"unknown network filter {ref.name!r}"
            raise ValueError(msg)
        with blame(f"{where}.filters[{fi}].{ref.name}", registry, "network_filter", ref.name, "factory"):
            filters.append(found.factory(ref.config, context))
    if previous is not None:
        names = [ref.name for ref in config.filters]
        previous_names = [ref.name for ref in previous.config.filters]
        for fi, new, old in successors(names, filters, previous_names, previous.filters):
            with blame(
                f"{where}.filters[{fi}].{names[fi]}", registry, "network_filter", names[fi], "carry_over"
            ):
                carry_over(new, old)
    tls, tls_material = None, None
    if config.tls is not None:
        tls, tls_material = _server_tls(config.tls, secrets, where), material(config.tls, secrets)
    return CompiledChain(config, filters, access_log=listener.access_log, tls=tls, tls_material=tls_material)


def _server_tls(tls: TlsContext, secrets: Secrets, where: str) -> ssl.SSLContext:
    try:
        return server_context(tls, secrets)
    except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
        problem = ConfigProblem(path=f"{where}.tls", message=f"cannot build the TLS context: {err}")
        raise ConfigError([problem], stage="apply") from err


def _refresh_tls(chain: CompiledChain, secrets: Secrets, where: str) -> list[Commit]:
    """A kept chain's new TLS context, when what it is made of changed (a rotated secret)."""
    tls = chain.config.tls
    if tls is None:
        return []
    now = material(tls, secrets)
    if now == chain.tls_material:
        return []
    context = _server_tls(tls, secrets, where)

    def install() -> None:
        chain.tls, chain.tls_material = context, now

    return [install]


def _follow(proxy: Proxy, snapshot: Snapshot, where: str, chain: CompiledChain) -> list[Commit]:
    """The commits of a kept chain's filters that follow Snapshots (``prepare_snapshot``)."""
    commits = []
    for fi, (ref, instance) in enumerate(zip(chain.config.filters, chain.filters, strict=True)):
        with blame(
            f"{where}.filters[{fi}].{ref.name}",
            proxy.registry,
            "network_filter",
            ref.name,
            "prepare_snapshot",
        ):
            commit = prepare_snapshot(instance, snapshot)
        if commit is not None:
            commits.append(commit)
    return commits
